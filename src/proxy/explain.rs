//! What a decision trace (SPEC §9, `crate::trace`) says about a request's backends:
//! the candidates with the number its strategy reads, the ones out of play and why,
//! and each attempt's outcome and retry in a word. Runs only for traced requests.

use std::sync::Arc;

use tokio::time::Instant;

use super::client::SendError;
use crate::balance::Upstream;
use crate::config::{RetryOn, StrategyKind};
use crate::trace::Trace;
use crate::upstream::Backend;

/// Notes the candidates of a first pick and the pick itself: `candidates=id:load,…`
/// (in-flight requests; for `peak_ewma` its cost, latency × (in-flight + 1), in ms),
/// `skipped=id:why,…` for backends out of play, the hash of the request's key for
/// `consistent_hash`, the backend a sticky cookie named, and `picked=`.
pub(super) fn pick(
    t: &mut Trace,
    upstream: &Upstream,
    key: Option<u64>,
    carried: Option<&Backend>,
    picked: &Backend,
    now: Instant,
) {
    let mut candidates = String::new();
    let mut skipped = String::new();
    for b in upstream.all.iter() {
        if upstream.may_serve(b, now) && b.has_room() {
            let load = match upstream.config.strategy {
                StrategyKind::PeakEwma => format!("{:.3}ms", b.stats.peak_cost(now) / 1e6),
                _ => b.inflight().to_string(),
            };
            push(&mut candidates, &format!("{}:{load}", b.id));
        } else {
            let why = match b.stats.state(now) {
                crate::upstream::State::Healthy if !b.has_room() => "full",
                crate::upstream::State::Healthy => "backup",
                s => s.as_str(),
            };
            push(&mut skipped, &format!("{}:{why}", b.id));
        }
    }
    t.note("candidates", &candidates);
    if !skipped.is_empty() {
        t.note("skipped", &skipped);
    }
    match upstream.config.strategy {
        // The two backends drawn at random, of which the pick had the lower load.
        StrategyKind::P2c | StrategyKind::PeakEwma => {
            let drawn = crate::balance::p2c::last_drawn();
            let ids: Vec<&str> = drawn
                .iter()
                .filter_map(|&d| {
                    let b = upstream.all.iter().find(|b| Arc::as_ptr(b) as usize == d)?;
                    Some(&*b.id)
                })
                .collect();
            if !ids.is_empty() {
                t.note("sampled", ids.join(","));
            }
        }
        _ => {}
    }
    if let Some(k) = key {
        t.note("hash", format_args!("{k:016x}"));
        // Maglev's table slot for the key; its owner, or the next usable one, serves.
        if upstream.config.strategy == StrategyKind::ConsistentHash {
            t.note("slot", k % crate::balance::maglev::TABLE_SIZE as u64);
        }
    }
    if let Some(b) = carried {
        t.note("sticky", &b.id);
    }
    t.note("picked", &picked.id);
}

fn push(list: &mut String, item: &str) {
    if !list.is_empty() {
        list.push(',');
    }
    list.push_str(item);
}

/// An attempt that failed before an answer, in a word: `refused`, `connect_timeout`,
/// `reset`…
pub(super) fn failure(e: &SendError) -> &'static str {
    match e {
        SendError::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        SendError::Connect(_) => "connect_error",
        SendError::ConnectTimeout(_) => "connect_timeout",
        SendError::Write(_) | SendError::Read(_) => "reset",
        SendError::Closed => "closed",
        SendError::Response(_) => "bad_response",
        SendError::H2(_) => "h2_error",
        _ => "error",
    }
}

/// A retry's reason as `retry_on` names it: `connect_failure`, `reset`, `timeout`, or
/// the status.
pub(super) fn retry(t: &mut Trace, on: RetryOn) {
    match on {
        RetryOn::ConnectFailure => t.note("retry", "connect_failure"),
        RetryOn::Reset => t.note("retry", "reset"),
        RetryOn::Timeout => t.note("retry", "timeout"),
        RetryOn::Status(s) => t.note("retry", s),
    }
}
