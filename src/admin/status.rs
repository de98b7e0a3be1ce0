//! The `/status` document (SPEC §5, §9): every upstream and backend as it stands, read
//! from the live snapshot, its counters and the discovery status; and what the
//! dashboard shows beside them (listeners, routes, open connections).

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::state::State as Live;
use crate::upstream::State;
use crate::upstream::why::{Note, Why, rfc3339};

/// The `/status` document (SPEC §5), fields in the SPEC's order.
#[derive(serde::Serialize)]
pub struct Status<'a> {
    pub version: &'static str,
    pub upstreams: Vec<UpstreamStatus<'a>>,
    /// Open client connections (parked idle ones included).
    pub connections: usize,
    /// Mutating calls need `Authorization: Bearer` (`[admin] token` is set).
    pub token_required: bool,
    pub listeners: Vec<ListenerStatus>,
    /// In match order.
    pub routes: Vec<RouteStatus>,
}

#[derive(serde::Serialize)]
pub struct ListenerStatus {
    pub address: String,
    pub tls: bool,
    pub proxy_protocol: bool,
}

#[derive(serde::Serialize)]
pub struct RouteStatus {
    /// `*` for any host; `*.example.com` for a suffix.
    pub host: String,
    pub path_prefix: String,
    /// The upstream it sends to; empty for a redirect.
    pub upstream: String,
    pub redirect: bool,
}

/// Answers by status class, as `/status` writes them.
#[derive(serde::Serialize, Default)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1: u64,
    #[serde(rename = "2xx")]
    pub c2: u64,
    #[serde(rename = "3xx")]
    pub c3: u64,
    #[serde(rename = "4xx")]
    pub c4: u64,
    #[serde(rename = "5xx")]
    pub c5: u64,
}

impl Classes {
    fn of(c: [u64; 5]) -> Classes {
        Classes {
            c1: c[0],
            c2: c[1],
            c3: c[2],
            c4: c[3],
            c5: c[4],
        }
    }
}

/// Every answer of upstream `u` by status class (1xx…5xx): its backends' and the ones
/// it gave without a backend (503).
pub fn upstream_classes(u: &crate::proxy::routing::Served) -> [u64; 5] {
    let mut all = u.stats.unpicked.classes();
    for b in u.all.iter() {
        for (a, n) in all.iter_mut().zip(b.stats.codes.classes()) {
            *a += n;
        }
    }
    all
}

/// Open client connections: the `max_connections` permits taken, less those held by
/// accept loops waiting for a client.
pub fn open_connections(state: &Live) -> usize {
    state.shared.connections.get().map_or(0, |(permits, max)| {
        max.saturating_sub(permits.available_permits())
            .saturating_sub(state.shared.accepting.load(Ordering::Relaxed))
    })
}

#[derive(serde::Serialize)]
pub struct UpstreamStatus<'a> {
    pub name: &'a str,
    pub strategy: &'static str,
    /// Fingerprint of the backend set (SPEC §6): equal on instances that agree.
    pub members: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// Every answer of the upstream by status class, sluice's own (503) included.
    pub responses: Classes,
    pub backends: Vec<BackendStatus>,
}

/// A discovered upstream's source and how it stands (SPEC §6).
#[derive(serde::Serialize)]
pub struct DiscoveryStatus {
    pub source: &'static str,
    pub state: &'static str,
    /// RFC 3339 time of the last applied answer.
    pub updated: Option<String>,
    pub error: Option<String>,
}

fn discovery_status(state: &Live, name: &str) -> Option<DiscoveryStatus> {
    let status = state.discovered.status(name)?;
    let seen = status.seen();
    Some(DiscoveryStatus {
        source: status.source,
        state: seen.phase.as_str(),
        updated: seen
            .updated
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        error: seen.error,
    })
}

#[derive(serde::Serialize)]
pub struct BackendStatus {
    pub url: String,
    /// `host:port`: the form admin paths and metric labels use.
    pub id: String,
    pub weight: u32,
    pub backup: bool,
    pub state: &'static str,
    /// Past its failure threshold but kept in rotation by `max_ejected_percent`.
    pub failing: bool,
    pub inflight: u32,
    pub requests: u64,
    /// Answers by status class.
    pub responses: Classes,
    pub failures: u64,
    pub latency_ewma_ms: f64,
    /// The weight strategies use now: below `weight` while slow start ramps it up
    /// (to a thousandth).
    pub effective_weight: f64,
    /// Why the backend is out of rotation (SPEC §9); None (null) when it is in.
    pub reason: Option<Reason>,
    /// The last active probe, when the upstream has active checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckStatus>,
}

/// `reason` of a backend in `/status` (SPEC §9).
#[derive(serde::Serialize)]
pub struct Reason {
    /// RFC 3339.
    pub since: String,
    pub why: String,
    /// An ejection's end (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// How many ejections in a row this one counts as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckStatus>,
}

#[derive(serde::Serialize, Clone)]
pub struct CheckStatus {
    pub at: String,
    pub ok: bool,
    pub detail: String,
    /// Between rise and fall: "1 of 3 failed checks to fall"; absent otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub progress: String,
}

/// A backend's `reason` in state `state`, from what was noted about it; `check` is
/// its last probe.
fn reason(state: State, why: Why, check: Option<CheckStatus>) -> Option<Reason> {
    let note = |n: Option<Note>, otherwise: &str| {
        n.unwrap_or_else(|| Note {
            since: std::time::SystemTime::now(),
            why: otherwise.to_owned(),
        })
    };
    let (n, ejection) = match state {
        State::Healthy => return None,
        State::Draining => (note(why.drained, "draining"), None),
        State::Unhealthy => (
            note(why.unhealthy, "found unhealthy by active checks"),
            None,
        ),
        State::Ejected => match why.ejected {
            Some(e) => (
                Note {
                    since: e.since,
                    why: e.why,
                },
                Some((e.until, e.times)),
            ),
            None => (note(None, "ejected"), None),
        },
    };
    Some(Reason {
        since: rfc3339(n.since),
        why: n.why,
        until: ejection.map(|(until, _)| rfc3339(until)),
        ejections: ejection.map(|(_, times)| times).filter(|&t| t > 0),
        check,
    })
}

/// Renders `/status` from the live snapshot and counters.
pub fn status_json(state: &Live) -> String {
    let snap = state.shared.snapshot.load();
    let config = state.shared.config.load();
    let now = Instant::now();
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        upstreams: snap
            .upstreams
            .iter()
            .map(|u| UpstreamStatus {
                name: &u.name,
                strategy: u.config.strategy.as_str(),
                members: crate::upstream::members(
                    u.all.iter().map(|b| (&*b.id, b.weight, b.backup)),
                ),
                discovery: discovery_status(state, &u.name),
                responses: Classes::of(upstream_classes(u)),
                backends: u
                    .all
                    .iter()
                    .map(|b| {
                        let s = &b.stats;
                        let state = s.state(now);
                        let why = s.why.get();
                        let check = why.check.clone().map(|c| CheckStatus {
                            at: rfc3339(c.at),
                            ok: c.ok,
                            detail: c.detail,
                            progress: c.progress,
                        });
                        BackendStatus {
                            url: b.url.to_string(),
                            id: b.id.to_string(),
                            weight: b.weight,
                            backup: b.backup,
                            state: state.as_str(),
                            failing: s.is_failing() && state == State::Healthy,
                            inflight: s.inflight.load(Ordering::Relaxed),
                            requests: s.requests.load(Ordering::Relaxed),
                            responses: Classes::of(s.codes.classes()),
                            failures: s.failures.load(Ordering::Relaxed),
                            latency_ewma_ms: (s.latency_ewma_ms() * 1000.0).round() / 1000.0,
                            effective_weight: f64::from(b.effective_weight(now)) / 1000.0,
                            reason: reason(state, why, check.clone()),
                            check,
                        }
                    })
                    .collect(),
            })
            .collect(),
        connections: open_connections(state),
        token_required: config.admin.as_ref().is_some_and(|a| a.token.is_some()),
        listeners: state
            .shared
            .listeners
            .running()
            .into_iter()
            .map(|(l, local)| ListenerStatus {
                address: local.unwrap_or(l.address).to_string(),
                tls: l.tls.is_some(),
                proxy_protocol: l.proxy_protocol,
            })
            .collect(),
        routes: config
            .routes
            .iter()
            .map(|r| RouteStatus {
                host: match &r.host {
                    None => "*".to_owned(),
                    Some(crate::config::HostPattern::Exact(h)) => h.clone(),
                    Some(crate::config::HostPattern::Suffix(s)) => format!("*{s}"),
                },
                path_prefix: r.path_prefix.clone().unwrap_or_else(|| "/".to_owned()),
                upstream: if r.redirect.is_some() {
                    String::new()
                } else {
                    r.upstream.clone()
                },
                redirect: r.redirect.is_some(),
            })
            .collect(),
    };
    serde_json::to_string(&status).unwrap_or_else(|_| "{}".to_owned())
}
