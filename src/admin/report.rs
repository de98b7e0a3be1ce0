//! The `/metrics` text (SPEC §5): Prometheus text format, read from the live snapshot
//! and its counters.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::metrics::Text;
use crate::state::State as Live;

/// Renders `/metrics` (Prometheus text format, SPEC §5) from the live snapshot and
/// counters.
pub fn metrics_text(state: &Live) -> String {
    let snap = state.shared.snapshot.load();
    let now = Instant::now();
    let mut t = Text::default();

    t.family(
        "sluice_requests_total",
        "counter",
        "Client requests, by upstream, the backend that gave the final answer, and status code. \
         Empty labels: answered before a backend (or an upstream) was chosen; 499: the client left first.",
    );
    state.shared.unrouted.each(|code, n| {
        t.sample(
            "sluice_requests_total",
            &[
                ("upstream", ""),
                ("backend", ""),
                ("code", &code.to_string()),
            ],
            n,
        );
    });
    for u in snap.upstreams.iter() {
        u.stats.unpicked.each(|code, n| {
            t.sample(
                "sluice_requests_total",
                &[
                    ("upstream", &u.name),
                    ("backend", ""),
                    ("code", &code.to_string()),
                ],
                n,
            );
        });
        for b in u.all.iter() {
            b.stats.codes.each(|code, n| {
                t.sample(
                    "sluice_requests_total",
                    &[
                        ("upstream", &u.name),
                        ("backend", &b.id),
                        ("code", &code.to_string()),
                    ],
                    n,
                );
            });
        }
    }

    t.family(
        "sluice_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its response, by upstream.",
    );
    for u in snap.upstreams.iter() {
        t.histogram(
            "sluice_request_duration_seconds",
            &[("upstream", &u.name)],
            &u.stats.duration,
        );
    }

    let backends = || {
        snap.upstreams
            .iter()
            .flat_map(|u| u.all.iter().map(move |b| (&*u.name, b)))
    };
    t.family(
        "sluice_backend_healthy",
        "gauge",
        "1 unless active checks found the backend unhealthy or passive checks ejected it.",
    );
    for (u, b) in backends() {
        let healthy = !b.stats.is_unhealthy() && !b.stats.is_ejected(now);
        t.sample(
            "sluice_backend_healthy",
            &[("upstream", u), ("backend", &b.id)],
            u8::from(healthy),
        );
    }
    t.family(
        "sluice_backend_inflight",
        "gauge",
        "Requests in flight to the backend.",
    );
    for (u, b) in backends() {
        let n = b.stats.inflight.load(Ordering::Relaxed);
        t.sample(
            "sluice_backend_inflight",
            &[("upstream", u), ("backend", &b.id)],
            n,
        );
    }
    t.family(
        "sluice_backend_failures_total",
        "counter",
        "Failed attempts on the backend: no connection, broken off, timed out, or a status counted as failure.",
    );
    for (u, b) in backends() {
        let n = b.stats.failures.load(Ordering::Relaxed);
        t.sample(
            "sluice_backend_failures_total",
            &[("upstream", u), ("backend", &b.id)],
            n,
        );
    }

    t.family(
        "sluice_retries_total",
        "counter",
        "Retries the retry policy allowed, by upstream.",
    );
    for u in snap.upstreams.iter() {
        let n = u.stats.retries.load(Ordering::Relaxed);
        t.sample("sluice_retries_total", &[("upstream", &u.name)], n);
    }

    t.family(
        "sluice_upstream_backends",
        "gauge",
        "Backends in the upstream's set now (listed, or last discovered).",
    );
    for u in snap.upstreams.iter() {
        t.sample(
            "sluice_upstream_backends",
            &[("upstream", &u.name)],
            u.all.len(),
        );
    }
    let discovered: Vec<_> = snap
        .upstreams
        .iter()
        .filter_map(|u| Some((&*u.name, state.discovered.status(&u.name)?)))
        .collect();
    t.family(
        "sluice_discovery_updates_total",
        "counter",
        "Answers from a discovered upstream's source that were applied.",
    );
    for (name, s) in &discovered {
        let n = s.updates.load(Ordering::Relaxed);
        t.sample("sluice_discovery_updates_total", &[("upstream", name)], n);
    }
    t.family(
        "sluice_discovery_errors_total",
        "counter",
        "Failed attempts to read a discovered upstream's source.",
    );
    for (name, s) in &discovered {
        let n = s.errors.load(Ordering::Relaxed);
        t.sample("sluice_discovery_errors_total", &[("upstream", name)], n);
    }
    t.family(
        "sluice_discovery_stale",
        "gauge",
        "1 while a discovered upstream runs on its last known set because its source fails.",
    );
    for (name, s) in &discovered {
        let stale = s.seen().phase == crate::state::Phase::Stale;
        t.sample(
            "sluice_discovery_stale",
            &[("upstream", name)],
            u8::from(stale),
        );
    }

    t.family(
        "sluice_denied_total",
        "counter",
        "Requests a route's policy refused, by the route's upstream and reason (acl: 403).",
    );
    let unrouted = state.shared.denied_acl_unrouted.load(Ordering::Relaxed);
    t.sample(
        "sluice_denied_total",
        &[("upstream", ""), ("reason", "acl")],
        unrouted,
    );
    for u in snap.upstreams.iter() {
        let n = u.stats.denied_acl.load(Ordering::Relaxed);
        t.sample(
            "sluice_denied_total",
            &[("upstream", &u.name), ("reason", "acl")],
            n,
        );
        let n = u.stats.denied_rate.load(Ordering::Relaxed);
        t.sample(
            "sluice_denied_total",
            &[("upstream", &u.name), ("reason", "rate_limit")],
            n,
        );
    }

    t.family(
        "sluice_rate_limit_fallbacks_total",
        "counter",
        "Requests a shared rate limit judged with this instance's own buckets because Redis did not answer, by upstream.",
    );
    for u in snap.upstreams.iter() {
        let n = u.stats.shared_rate_fallbacks.load(Ordering::Relaxed);
        t.sample(
            "sluice_rate_limit_fallbacks_total",
            &[("upstream", &u.name)],
            n,
        );
    }

    let queued: Vec<_> = snap
        .upstreams
        .iter()
        .filter_map(|u| Some((&*u.name, u.queue.as_ref()?)))
        .collect();
    type Read = fn(&crate::upstream::queue::Queue) -> u64;
    let families: [(&str, &str, &str, Read); 3] = [
        (
            "sluice_queue_depth",
            "gauge",
            "Requests waiting for a backend under max_inflight_per_backend, by upstream.",
            |q| q.depth() as u64,
        ),
        (
            "sluice_queue_timeouts_total",
            "counter",
            "Requests answered 503 after waiting queue.timeout, by upstream.",
            |q| q.timeouts(),
        ),
        (
            "sluice_queue_full_total",
            "counter",
            "Requests answered 503 at once because queue.max were already waiting, by upstream.",
            |q| q.turned_away(),
        ),
    ];
    for (family, kind, help, read) in families {
        t.family(family, kind, help);
        for (name, q) in &queued {
            t.sample(family, &[("upstream", name)], read(q));
        }
    }

    t.family(
        "sluice_drained_connections_total",
        "counter",
        "Client connections closed by a drain (shutdown, upgrade, a removed listener): \
         clean (idle, after Connection: close, after GOAWAY, a tunnel that ended) or cut (busy at shutdown_timeout).",
    );
    let d = &state.shared.drains;
    t.sample(
        "sluice_drained_connections_total",
        &[("how", "clean")],
        d.clean.load(Ordering::Relaxed),
    );
    t.sample(
        "sluice_drained_connections_total",
        &[("how", "cut")],
        d.cut.load(Ordering::Relaxed),
    );

    t.family(
        "sluice_refused_total",
        "counter",
        "Requests and connections sluice refused itself, by reason; the access or event log line of each carries the same reason.",
    );
    state.shared.refused.each(|reason, n| {
        t.sample("sluice_refused_total", &[("reason", reason)], n);
    });

    t.family(
        "sluice_client_connections",
        "gauge",
        "Open client connections.",
    );
    let open = super::status::open_connections(state);
    t.sample("sluice_client_connections", &[], open);

    t.family(
        "sluice_spans_exported_total",
        "counter",
        "Spans a collector accepted ([telemetry] otlp).",
    );
    t.sample(
        "sluice_spans_exported_total",
        &[],
        crate::otel::export::exported(),
    );
    t.family(
        "sluice_spans_dropped_total",
        "counter",
        "Spans not exported: the queue was full (the collector slow or down) or the export failed.",
    );
    t.sample(
        "sluice_spans_dropped_total",
        &[],
        crate::otel::export::dropped(),
    );

    // Only with `workers > 1`: how the connections are spread over the worker threads.
    let loads = crate::proxy::workers::loads();
    if !loads.is_empty() {
        t.family(
            "sluice_worker_connections",
            "gauge",
            "Client connections each worker thread is serving (parked idle ones are in none).",
        );
        for (i, n) in loads.into_iter().enumerate() {
            t.sample(
                "sluice_worker_connections",
                &[("worker", &i.to_string())],
                n,
            );
        }
    }
    t.finish()
}
