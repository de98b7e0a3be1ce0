//! Active health checks (SPEC §2 `[upstream.X.health]`), the part that talks to
//! backends (the verdicts' hysteresis is health/rise_fall.rs): one task per upstream probes
//! every backend in parallel, every `interval` (±10% jitter, and a random first offset,
//! so a fleet of sluice instances does not probe in step), each probe bounded by
//! `timeout`. A probe is a TCP connect, or with `path` an HTTP/1.1 GET on a fresh
//! connection whose status must fall in `expect_status`. Only verdict changes (rise/fall)
//! are written to the backend's state, and logged at info; single failed probes at debug.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::client::{Client, connect_tcp};
use super::routing::{Served, Snapshot};
use crate::config::HealthConfig;
use crate::health::rise_fall::RiseFall;
use crate::upstream::Backend;

/// The running checkers of one snapshot; dropping this stops them.
#[derive(Default)]
pub struct Checkers {
    /// Each with the upstream it checks.
    tasks: Vec<(Arc<Served>, AbortHandle)>,
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a checker for every upstream of `snapshot` that has health checks, keeping
/// from `previous` those whose upstream is configured exactly as before (same
/// backends, same checks): a reload or an admin edit elsewhere does not interrupt
/// their rounds or their rise/fall counts. Must run inside the runtime.
pub fn start(snapshot: &Snapshot, previous: Option<Checkers>) -> Checkers {
    let mut old = previous
        .map(|mut c| std::mem::take(&mut c.tasks))
        .unwrap_or_default();
    let tasks = snapshot
        .upstreams
        .iter()
        .filter_map(|u| {
            let cfg = u.config.health.clone()?;
            let same = old.iter().position(|(was, t)| {
                was.name == u.name && was.config == u.config && !t.is_finished()
            });
            Some(match same {
                Some(i) => old.swap_remove(i),
                None => (
                    Arc::clone(u),
                    tokio::spawn(run(Arc::clone(u), cfg)).abort_handle(),
                ),
            })
        })
        .collect();
    // The rest stop.
    for (_, t) in old {
        t.abort();
    }
    Checkers { tasks }
}

async fn run(upstream: Arc<Served>, cfg: HealthConfig) {
    // Start from what is known, so a reload does not forget a backend is down.
    let mut verdicts: Vec<RiseFall> = upstream
        .all
        .iter()
        .map(|b| RiseFall::new(cfg.rise, cfg.fall, !b.stats.is_unhealthy()))
        .collect();
    // Backends added at run time wait out of rotation for their first probe: at once.
    if upstream.all.iter().any(|b| b.stats.is_pending()) {
        round(&upstream, &cfg, &mut verdicts, true).await;
    }
    tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64())).await;
    loop {
        let start = Instant::now();
        round(&upstream, &cfg, &mut verdicts, false).await;
        let next = start + cfg.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        tokio::time::sleep_until(next).await;
    }
}

/// Probes every backend of `upstream` (only those waiting for a first probe, with
/// `pending_only`) in parallel, and publishes the verdicts that change.
async fn round(
    upstream: &Arc<Served>,
    cfg: &HealthConfig,
    verdicts: &mut [RiseFall],
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
        let b = &upstream.all[i];
        if let Err(why) = &result {
            tracing::debug!(upstream = %upstream.name, backend = %b.id, error = %why, "health probe failed");
        }
        let verdict = if b.stats.is_pending() {
            // A first probe decides alone: passed, the backend takes requests now;
            // failed, it is unhealthy and must rise like any other.
            b.stats.set_pending(false);
            if result.is_ok() {
                // Its slow start begins now that it takes requests, not when added.
                b.stats.start_warming(Instant::now());
            }
            verdicts[i] = RiseFall::new(cfg.rise, cfg.fall, result.is_ok());
            Some(result.is_ok())
        } else {
            verdicts[i].record(result.is_ok())
        };
        if let Some(healthy) = verdict {
            b.stats.set_unhealthy(!healthy);
            if healthy {
                tracing::info!(upstream = %upstream.name, backend = %b.id, "backend healthy");
            } else {
                let reason = result.err().unwrap_or_default();
                tracing::info!(upstream = %upstream.name, backend = %b.id, reason = %reason, "backend unhealthy");
            }
        }
    }
}

/// One probe of `b`; Err says why it failed.
async fn probe(b: &Backend, client: &Client, cfg: &HealthConfig) -> Result<(), String> {
    let attempt = async {
        let Some(path) = &cfg.path else {
            connect_tcp(b).await.map_err(|e| format!("connect: {e}"))?;
            return Ok(());
        };
        // TLS too for an https backend.
        let stream = client
            .connect_stream(b)
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
            Ok(())
        } else {
            Err(format!("status {status}, expected {lo}-{hi}"))
        }
    };
    tokio::time::timeout(cfg.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", cfg.timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(a_weight: u32) -> Snapshot {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\npath_prefix = \"/a\"\nupstream = \"a\"\n\
             [[route]]\npath_prefix = \"/b\"\nupstream = \"b\"\n\
             [upstream.a]\nbackends = [{{ url = \"127.0.0.1:1\", weight = {a_weight} }}]\n\
             [upstream.a.health]\ninterval = \"1h\"\n\
             [upstream.b]\nbackends = [{{ url = \"127.0.0.1:2\" }}]\n\
             [upstream.b.health]\ninterval = \"1h\"\n"
        );
        let config = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        crate::proxy::build::build(&config, None)
    }

    fn task_of(c: &Checkers, name: &str) -> tokio::task::Id {
        c.tasks
            .iter()
            .find(|(u, _)| &*u.name == name)
            .map(|(_, t)| t.id())
            .unwrap()
    }

    #[tokio::test]
    async fn only_the_checkers_of_changed_upstreams_restart() {
        let first = start(&snapshot(1), None);
        let (a, b) = (task_of(&first, "a"), task_of(&first, "b"));
        let second = start(&snapshot(2), Some(first));
        assert_ne!(
            task_of(&second, "a"),
            a,
            "upstream a changed: a new checker"
        );
        assert_eq!(
            task_of(&second, "b"),
            b,
            "upstream b did not: its checker goes on"
        );
    }
}
