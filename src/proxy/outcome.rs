//! What an attempt's outcome does to its backend: latency, a pause it asked for, a
//! failure counted for outlier detection (with the ejection's reason), and the
//! attempt as the access log's `tries` list it.

use std::sync::atomic::Ordering;

use http::Response;
use tokio::time::Instant;

use super::client::{BackendBody, SendError};
use super::error::chain;
use crate::balance::Upstream;
use crate::config::StrategyKind;
use crate::health::outlier::{self, Outcome};
use crate::telemetry;
use crate::upstream::Backend;

/// Milliseconds since `t`, to the microsecond.
pub(super) fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1000.0
}

/// A failed attempt for the access log's `tries`.
#[cold]
pub(super) fn attempt_of(
    backend: &Backend,
    outcome: impl std::fmt::Display,
    ms: f64,
) -> telemetry::Attempt {
    telemetry::Attempt {
        backend: backend.id.to_string(),
        outcome: outcome.to_string(),
        duration_ms: ms,
    }
}

/// Notes what a response head says about its backend: latency, and a pause it asked
/// for (`Retry-After`). Returns the status.
pub(super) fn observe_answer(
    upstream: &Upstream,
    backend: &Backend,
    started: Instant,
    resp: &Response<BackendBody>,
) -> u16 {
    let stats = &backend.stats;
    let rtt = started.elapsed();
    stats.observe_latency(rtt);
    if upstream.config.strategy == StrategyKind::PeakEwma {
        // Only peak_ewma reads it; a switch by reload starts from zero, which means
        // "try it" (see BackendStats::observe_peak).
        stats.observe_peak(started + rtt, rtt);
    }
    let status = resp.status().as_u16();
    if let Some(d) = outlier::retry_after(status, resp.headers(), std::time::SystemTime::now) {
        // The backend asked to be left alone for a while: out of rotation.
        let cfg = &upstream.config.outlier;
        if outlier::pause(backend, &upstream.all, cfg, Instant::now(), d, status) {
            tracing::info!(
                upstream = %upstream.name,
                backend = %backend.id,
                status,
                out_ms = d.as_millis() as u64,
                "backend asked for a pause (Retry-After)"
            );
        }
    }
    status
}

/// Counts a failed send against `backend`, as what it was: unreachable (refused, no
/// route, TLS failed), another failure, or nothing when this machine ran out of
/// descriptors or ports.
pub(super) fn note_send_failure(upstream: &Upstream, backend: &Backend, error: &SendError) {
    if error.is_local() {
        tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %chain(error), "cannot connect: out of local resources");
    } else {
        let outcome = if error.is_unreachable() {
            Outcome::Unreachable
        } else {
            Outcome::Failure
        };
        note_failure(upstream, backend, outcome, || chain(error).to_string());
    }
}

/// Counts a failed attempt on `backend` (its `failures`, and outlier detection),
/// logging an ejection, or a backend the ejection cap keeps in rotation. `cause` says
/// what failed, for the ejection's reason (SPEC §9); it is only asked on an ejection.
pub(super) fn note_failure(
    upstream: &Upstream,
    backend: &Backend,
    outcome: Outcome,
    cause: impl FnOnce() -> String,
) {
    backend.stats.failures.fetch_add(1, Ordering::Relaxed);
    let cfg = &upstream.config.outlier;
    match outlier::record(backend, &upstream.all, cfg, Instant::now(), outcome) {
        outlier::Verdict::Ejected(d) => {
            let cause = cause();
            tracing::info!(
                upstream = %upstream.name,
                backend = %backend.id,
                ejection_ms = d.as_millis() as u64,
                unreachable = outcome == Outcome::Unreachable,
                cause = %cause,
                "backend ejected"
            );
            outlier::note_ejection(backend, cfg, d, &cause);
        }
        outlier::Verdict::Kept => tracing::warn!(
            upstream = %upstream.name,
            backend = %backend.id,
            failures = backend.stats.consecutive_failures.load(Ordering::Relaxed),
            max_ejected_percent = cfg.max_ejected_percent,
            "backend failing but kept in rotation by max_ejected_percent"
        ),
        outlier::Verdict::Nothing => {}
    }
}
