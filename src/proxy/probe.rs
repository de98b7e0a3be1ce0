//! Active health checks (SPEC §2 `[upstream.X.health]`), the part that talks to
//! backends (the verdicts' hysteresis is health/rise_fall.rs): one task per upstream probes
//! every backend in parallel, every `interval` (±10% jitter, and a random first offset,
//! so a fleet of sluice instances does not probe in step), each probe bounded by
//! `timeout`. A probe is a TCP connect, or with `path` an HTTP/1.1 GET on a fresh
//! connection whose status must fall in `expect_status`. Only verdict changes (rise/fall)
//! are written to the backend's state, and logged at info; single failed probes at debug.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::client::{Client, connect_tcp};
use super::routing::{Served, Snapshot};
use crate::config::HealthConfig;
use crate::health::rise_fall::RiseFall;
use crate::upstream::Backend;
use crate::upstream::why::{Check, Note};

/// The running checkers of one snapshot; dropping this stops them.
#[derive(Default)]
pub struct Checkers {
    tasks: Vec<Checker>,
}

/// One upstream's checker: its task, and the feed that hands it the upstream as each
/// new snapshot has it (backends come and go without stopping its rounds).
struct Checker {
    upstream: Arc<Served>,
    feed: watch::Sender<Arc<Served>>,
    task: AbortHandle,
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for c in &self.tasks {
            c.task.abort();
        }
    }
}

/// Starts a checker for every upstream of `snapshot` that has health checks, keeping
/// from `previous` those whose upstream has the same checks: a reload, an admin edit or
/// a discovered set does not interrupt their rounds or their rise/fall counts; backends
/// new to the upstream are probed at once. Must run inside the runtime.
pub fn start(snapshot: &Snapshot, previous: Option<Checkers>) -> Checkers {
    let mut old = previous
        .map(|mut c| std::mem::take(&mut c.tasks))
        .unwrap_or_default();
    let tasks = snapshot
        .upstreams
        .iter()
        .filter_map(|u| {
            let cfg = u.config.health.clone()?;
            let same = old.iter().position(|c| {
                c.upstream.name == u.name
                    && c.upstream.config.health == u.config.health
                    && !c.task.is_finished()
            });
            Some(match same {
                Some(i) => {
                    let mut c = old.swap_remove(i);
                    if !Arc::ptr_eq(&c.upstream, u) {
                        c.upstream = Arc::clone(u);
                        c.feed.send_replace(Arc::clone(u));
                    }
                    c
                }
                None => {
                    let (feed, rx) = watch::channel(Arc::clone(u));
                    Checker {
                        upstream: Arc::clone(u),
                        feed,
                        task: tokio::spawn(run(rx, cfg)).abort_handle(),
                    }
                }
            })
        })
        .collect();
    // The rest stop.
    for c in old {
        c.task.abort();
    }
    Checkers { tasks }
}

/// Rise/fall counts by backend id.
type Verdicts = HashMap<Box<str>, RiseFall>;

async fn run(mut feed: watch::Receiver<Arc<Served>>, cfg: HealthConfig) {
    let mut verdicts = Verdicts::new();
    let mut upstream = Arc::clone(&feed.borrow_and_update());
    follow(&upstream, &cfg, &mut verdicts);
    // Backends added at run time wait out of rotation for their first probe: at once.
    if upstream.all.iter().any(|b| b.stats.is_pending()) {
        round(&upstream, &cfg, &mut verdicts, true).await;
    }
    let mut next = Instant::now() + cfg.interval.mul_f64(fastrand::f64());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                let start = Instant::now();
                round(&upstream, &cfg, &mut verdicts, false).await;
                next = start + cfg.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
            }
            changed = feed.changed() => {
                if changed.is_err() {
                    return;
                }
                upstream = Arc::clone(&feed.borrow_and_update());
                follow(&upstream, &cfg, &mut verdicts);
                if upstream.all.iter().any(|b| b.stats.is_pending()) {
                    round(&upstream, &cfg, &mut verdicts, true).await;
                }
            }
        }
    }
}

/// Verdicts for the upstream's backends as they are now: a new one starts from what
/// is known of it (so a reload does not forget a backend is down), one gone is
/// forgotten.
fn follow(upstream: &Served, cfg: &HealthConfig, verdicts: &mut Verdicts) {
    verdicts.retain(|id, _| upstream.all.iter().any(|b| b.id == *id));
    for b in upstream.all.iter() {
        verdicts
            .entry(b.id.clone())
            .or_insert_with(|| RiseFall::new(cfg.rise, cfg.fall, !b.stats.is_unhealthy()));
    }
}

/// Probes every backend of `upstream` (only those waiting for a first probe, with
/// `pending_only`) in parallel, and publishes the verdicts that change.
async fn round(
    upstream: &Arc<Served>,
    cfg: &HealthConfig,
    verdicts: &mut Verdicts,
    pending_only: bool,
) {
    let mut probes = JoinSet::new();
    for (i, b) in upstream.all.iter().enumerate() {
        if pending_only && !b.stats.is_pending() {
            continue;
        }
        let (b, cfg) = (Arc::clone(b), cfg.clone());
        let served = Arc::clone(upstream);
        probes.spawn(async move { (i, probe(&b, &served.client, &cfg).await) });
    }
    while let Some(joined) = probes.join_next().await {
        let Ok((i, result)) = joined else { continue };
        let at = std::time::SystemTime::now();
        let b = &upstream.all[i];
        if let Err(why) = &result {
            tracing::debug!(upstream = %upstream.name, backend = %b.id, error = %why, "health probe failed");
        }
        let counts = verdicts
            .entry(b.id.clone())
            .or_insert_with(|| RiseFall::new(cfg.rise, cfg.fall, true));
        let first = b.stats.is_pending();
        let verdict = if first {
            // A first probe decides alone: passed, the backend takes requests now;
            // failed, it is unhealthy and must rise like any other.
            b.stats.set_pending(false);
            if result.is_ok() {
                // Its slow start begins now that it takes requests, not when added.
                b.stats.start_warming(Instant::now());
            }
            *counts = RiseFall::new(cfg.rise, cfg.fall, result.is_ok());
            Some(result.is_ok())
        } else {
            counts.record(result.is_ok())
        };
        if let Some(healthy) = verdict {
            b.stats.set_unhealthy(!healthy);
            if healthy {
                tracing::info!(upstream = %upstream.name, backend = %b.id, "backend healthy");
            } else if let Err(reason) = &result {
                tracing::info!(upstream = %upstream.name, backend = %b.id, reason = %reason, "backend unhealthy");
            }
        }
        note_probe(b, counts, &result, verdict, first, at);
    }
}

/// Writes what a probe found, and a change of verdict, into the backend's reasons
/// (SPEC §9).
fn note_probe(
    b: &Backend,
    counts: &RiseFall,
    result: &Result<String, String>,
    verdict: Option<bool>,
    first: bool,
    at: std::time::SystemTime,
) {
    let (ok, detail) = match result {
        Ok(d) => (true, d.clone()),
        Err(d) => (false, d.clone()),
    };
    b.stats.why.update(|w| {
        match verdict {
            Some(true) => w.unhealthy = None,
            Some(false) => {
                let why = if first {
                    format!("its first check failed: {detail}")
                } else {
                    format!("{} failed checks in a row: {detail}", counts.fall())
                };
                w.unhealthy = Some(Note { since: at, why });
            }
            None => {}
        }
        w.check = Some(Check {
            at,
            ok,
            detail,
            progress: counts.progress(),
        });
    });
}

/// One probe of `b`; Err says why it failed.
async fn probe(b: &Backend, client: &Client, cfg: &HealthConfig) -> Result<String, String> {
    let attempt = async {
        let Some(path) = &cfg.path else {
            connect_tcp(b).await.map_err(|e| format!("connect: {e}"))?;
            return Ok("connected".to_owned());
        };
        // TLS too for an https backend.
        let stream = client
            .connect_stream(b, client.probe_header())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = Request::get(path.as_str())
            .header(header::USER_AGENT, "sluice-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let status = if client.is_h2() {
            // The backend speaks HTTP/2 (gRPC servers often speak nothing else).
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let scheme = match b.url.scheme {
                crate::config::Scheme::Https => "https",
                crate::config::Scheme::Http => "http",
            };
            let (mut parts, body) = req.into_parts();
            parts.uri = format!("{scheme}://{}{path}", b.authority)
                .parse()
                .map_err(|e| format!("request: {e}"))?;
            sender
                .send_request(Request::from_parts(parts, body))
                .await
                .map_err(|e| format!("request: {e}"))?
                .status()
                .as_u16()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            // Ends when `sender` is dropped, after this probe.
            tokio::spawn(conn);
            let (mut parts, body) = req.into_parts();
            parts.headers.insert(header::HOST, b.host_value.clone());
            sender
                .send_request(Request::from_parts(parts, body))
                .await
                .map_err(|e| format!("request: {e}"))?
                .status()
                .as_u16()
        };
        let (lo, hi) = cfg.expect_status;
        if (lo..=hi).contains(&status) {
            Ok(format!("GET {path} answered {status}"))
        } else {
            Err(format!("GET {path} answered {status}, expected {lo}-{hi}"))
        }
    };
    tokio::time::timeout(cfg.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", cfg.timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(a_weight: u32, b_interval: &str) -> Snapshot {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\npath_prefix = \"/a\"\nupstream = \"a\"\n\
             [[route]]\npath_prefix = \"/b\"\nupstream = \"b\"\n\
             [upstream.a]\nbackends = [{{ url = \"127.0.0.1:1\", weight = {a_weight} }}]\n\
             [upstream.a.health]\ninterval = \"1h\"\n\
             [upstream.b]\nbackends = [{{ url = \"127.0.0.1:2\" }}]\n\
             [upstream.b.health]\ninterval = \"{b_interval}\"\n"
        );
        let config = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        crate::proxy::build::build(&config, None)
    }

    fn task_of(c: &Checkers, name: &str) -> tokio::task::Id {
        c.tasks
            .iter()
            .find(|c| &*c.upstream.name == name)
            .map(|c| c.task.id())
            .unwrap()
    }

    #[tokio::test]
    async fn only_a_change_of_checks_restarts_a_checker() {
        let first = start(&snapshot(1, "1h"), None);
        let (a, b) = (task_of(&first, "a"), task_of(&first, "b"));
        let second = start(&snapshot(2, "2h"), Some(first));
        assert_eq!(
            task_of(&second, "a"),
            a,
            "upstream a's backends changed, not its checks: the checker goes on"
        );
        assert_ne!(task_of(&second, "b"), b, "upstream b's checks changed");
        let fed = &second
            .tasks
            .iter()
            .find(|c| &*c.upstream.name == "a")
            .unwrap();
        assert_eq!(
            fed.feed.borrow().all[0].weight,
            2,
            "the checker sees the new upstream"
        );
    }

    #[test]
    fn verdicts_follow_the_backends() {
        let snap = snapshot(1, "1h");
        let u = &snap.upstreams[0];
        let cfg = u.config.health.clone().unwrap();
        let mut v = Verdicts::new();
        v.insert("10.9.9.9:80".into(), RiseFall::new(2, 3, true));
        follow(u, &cfg, &mut v);
        let ids: Vec<&str> = v.keys().map(|k| &**k).collect();
        assert_eq!(ids, ["127.0.0.1:1"]);
    }
}
