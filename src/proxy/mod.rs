//! The data plane: listeners, connections, forwarding, and the client side.

pub mod backend_body;
pub mod body;
pub mod client;
mod client_h2;
pub mod conn;
pub mod decode;
pub mod error;
pub mod forward;
pub mod h1;
pub mod head;
pub mod headers;
pub mod memory;
pub mod park;
pub mod pool;
pub mod prepare;
pub mod server;
mod server_tls;
pub mod stream;
pub mod tls;
pub mod upgrade;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, Limits};
use crate::upstream::{self, Snapshot};

/// Changes applied to every config loaded from the file (command-line overrides).
pub type Overrides =
    Box<dyn Fn(&mut Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// State shared by listeners, the admin API and reloads.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub limits: ArcSwap<Limits>,
    /// The config the snapshot was built from.
    pub config: ArcSwap<Config>,
    /// The file to read again on reload; None when running from flags only.
    pub config_path: Option<PathBuf>,
    pub overrides: Option<Overrides>,
    /// Requests answered before any upstream was chosen, by status (`/metrics`).
    pub unrouted: crate::metrics::CodeCounts,
    /// Requests and connections sluice refused itself, by reason (`/metrics`).
    pub refused: Arc<crate::telemetry::Refusals>,
    /// The `max_connections` permits and their number, once the listeners serve: open
    /// client connections are the permits taken.
    pub connections: std::sync::OnceLock<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Permits held by accept loops waiting for a client, not by connections.
    pub accepting: std::sync::atomic::AtomicUsize,
    /// Serializes configuration changes (reloads and admin edits).
    pub edits: std::sync::Mutex<()>,
    /// Active health checkers of the current snapshot, replaced with it.
    checkers: std::sync::Mutex<Option<crate::health::Checkers>>,
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        overrides: Option<Overrides>,
    ) -> Arc<Shared> {
        let snapshot = upstream::build(&config, None);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            limits: ArcSwap::from_pointee(config.limits.clone()),
            config: ArcSwap::from_pointee(config),
            config_path,
            overrides,
            unrouted: Default::default(),
            refused: Default::default(),
            connections: std::sync::OnceLock::new(),
            accepting: Default::default(),
            edits: std::sync::Mutex::new(()),
            checkers: std::sync::Mutex::new(None),
        })
    }

    /// (Re)starts the active health checkers for the current snapshot: those of
    /// upstreams configured as before go on, the others stop or start anew. Must run
    /// inside the runtime.
    pub fn restart_health_checks(&self) {
        let mut slot = self.checkers.lock().unwrap_or_else(|p| p.into_inner());
        let previous = slot.take();
        *slot = Some(crate::health::active::start(
            &self.snapshot.load(),
            previous,
        ));
    }

    /// Stops the active health checkers (shutdown).
    pub fn stop_health_checks(&self) {
        self.checkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Makes `config` the running configuration: one store for routes, upstreams and
    /// their tables; backend stats and pools carry over by URL.
    pub fn apply(&self, config: Config) {
        let snapshot = upstream::build(&config, Some(&self.snapshot.load()));
        self.install(config, snapshot);
    }

    /// Makes `config`, edited through the admin API, the running configuration; unlike
    /// `apply`, drains set through the API stay.
    pub fn apply_edit(&self, config: Config) {
        let snapshot = upstream::build_edited(&config, &self.snapshot.load());
        self.install(config, snapshot);
    }

    fn install(&self, config: Config, snapshot: Snapshot) {
        self.limits.store(Arc::new(config.limits.clone()));
        self.snapshot.store(Arc::new(snapshot));
        self.config.store(Arc::new(config));
        self.restart_health_checks();
    }
}
