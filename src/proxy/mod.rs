//! The data plane: listeners, connections, forwarding, and the client side.

mod attempts;
pub mod backend_body;
pub mod body;
pub mod build;
pub mod client;
mod client_h2;
pub mod conn;
pub mod decode;
pub mod error;
mod explain;
pub mod forward;
pub mod h1;
pub mod head;
pub mod headers;
pub mod listeners;
pub mod memory;
mod outcome;
pub mod park;
pub mod pool;
pub mod prepare;
pub mod probe;
pub mod proxy_header;
pub mod request_head;
pub mod routing;
pub mod server;
mod server_tls;
mod shared_rate;
pub mod stream;
pub mod tls;
pub mod upgrade;
mod upload;
pub mod wire;
pub mod workers;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, Limits};
use routing::Snapshot;

/// What the data plane reads while it serves: the routing snapshot, the limits, the
/// running config, and the counters it keeps. Replaced piecewise only by the control
/// side (state.rs), which owns reloads, edits and health checkers.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub limits: ArcSwap<Limits>,
    /// The config the snapshot was built from.
    pub config: ArcSwap<Config>,
    /// Requests answered before any upstream was chosen, by status (`/metrics`).
    pub unrouted: crate::metrics::CodeCounts,
    /// Requests and connections sluice refused itself, by reason (`/metrics`).
    pub refused: Arc<crate::telemetry::Refusals>,
    /// The `max_connections` permits and their number, once the listeners serve: open
    /// client connections are the permits taken.
    pub connections: std::sync::OnceLock<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Permits held by accept loops waiting for a client, not by connections.
    pub accepting: std::sync::atomic::AtomicUsize,
    /// The listeners while the proxy serves (a reload changes them).
    pub listeners: listeners::Listeners,
    /// Client connections closed by drains (shutdown, upgrade, removed listeners).
    pub drains: Drains,
    /// Requests refused by the access list of a route that has no upstream.
    pub denied_acl_unrouted: std::sync::atomic::AtomicU64,
    /// The last decision traces (SPEC §9), for `GET /debug/requests`.
    pub traces: Arc<crate::trace::Ring>,
    /// The span exporter while `[telemetry] otlp` is set (SPEC §9).
    pub spans: arc_swap::ArcSwapOption<crate::otel::Sink>,
}

/// How drained client connections ended (`/metrics`).
#[derive(Default)]
pub struct Drains {
    /// Closed between requests, after an answer that said `Connection: close`, after
    /// GOAWAY once their streams finished, or a tunnel that ended by itself.
    pub clean: std::sync::atomic::AtomicU64,
    /// Still busy at `shutdown_timeout` (a request, a tunnel): cut.
    pub cut: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The data plane's state for `config`, its snapshot built afresh.
    pub fn new(config: Config) -> Arc<Shared> {
        let snapshot = build::build(&config, None);
        let spans = telemetry_sink(None, &config.telemetry);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            limits: ArcSwap::from_pointee(config.limits.clone()),
            config: ArcSwap::from_pointee(config),
            unrouted: Default::default(),
            refused: Default::default(),
            connections: std::sync::OnceLock::new(),
            accepting: Default::default(),
            listeners: Default::default(),
            drains: Default::default(),
            denied_acl_unrouted: Default::default(),
            traces: Default::default(),
            spans: arc_swap::ArcSwapOption::new(spans),
        })
    }

    /// Counts and logs a request sluice answered itself before reading it as a request
    /// it could route (a head too large or malformed, plain HTTP on a TLS port): in
    /// `sluice_requests_total` with empty labels, and as a refusal with its reason.
    pub fn refused_request(
        &self,
        client: std::net::SocketAddr,
        status: u16,
        reason: crate::telemetry::Refusal,
    ) {
        self.unrouted.add(status);
        crate::telemetry::refused_request(&self.refused, client, status, reason);
    }

    /// Makes `config` and `snapshot` the ones served, in one store each: the snapshot
    /// first, so that a request never sees limits or config newer than its routes.
    pub fn install(&self, config: Config, snapshot: Snapshot) {
        let spans = self.spans.load_full();
        let kept = telemetry_sink(spans.as_ref(), &config.telemetry);
        if !same(kept.as_ref(), spans.as_ref()) {
            self.spans.store(kept);
        }
        self.limits.store(Arc::new(config.limits.clone()));
        self.snapshot.store(Arc::new(snapshot));
        self.config.store(Arc::new(config));
    }
}

/// The span exporter for `t`: `current` when it was made for the same collector and
/// service name; a new one otherwise (the old one ends once its last spans are sent).
fn telemetry_sink(
    current: Option<&Arc<crate::otel::Sink>>,
    t: &crate::config::TelemetryConfig,
) -> Option<Arc<crate::otel::Sink>> {
    let otlp = t.otlp.as_ref()?;
    match current {
        Some(s) if s.made_for.0 == *otlp && s.made_for.1 == t.service_name => Some(Arc::clone(s)),
        _ => crate::otel::Sink::start(otlp, &t.service_name),
    }
}

fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
