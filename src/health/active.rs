//! Active health checks (SPEC §2 `[upstream.X.health]`): one task per upstream probes
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

use super::rise_fall::RiseFall;
use crate::config::HealthConfig;
use crate::proxy::client::{Client, connect_tcp};
use crate::upstream::{Backend, Snapshot, Upstream};

/// The running checkers of one snapshot; dropping this stops them.
#[derive(Default)]
pub struct Checkers {
    tasks: Vec<AbortHandle>,
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a checker for every upstream of `snapshot` that has health checks. Must run
/// inside the runtime.
pub fn start(snapshot: &Snapshot) -> Checkers {
    let tasks = snapshot
        .upstreams
        .iter()
        .filter_map(|u| {
            let cfg = u.config.health.clone()?;
            Some(tokio::spawn(run(Arc::clone(u), cfg)).abort_handle())
        })
        .collect();
    Checkers { tasks }
}

async fn run(upstream: Arc<Upstream>, cfg: HealthConfig) {
    // Start from what is known, so a reload does not forget a backend is down.
    let mut verdicts: Vec<RiseFall> = upstream
        .all
        .iter()
        .map(|b| RiseFall::new(cfg.rise, cfg.fall, !b.stats.is_unhealthy()))
        .collect();
    tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64())).await;
    loop {
        let round = Instant::now();
        let mut probes = JoinSet::new();
        for (i, b) in upstream.all.iter().enumerate() {
            let (b, cfg) = (Arc::clone(b), cfg.clone());
            let client = upstream.client.clone();
            probes.spawn(async move { (i, probe(&b, &client, &cfg).await) });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((i, result)) = joined else { continue };
            let b = &upstream.all[i];
            if let Err(why) = &result {
                tracing::debug!(upstream = %upstream.name, backend = %b.id, error = %why, "health probe failed");
            }
            if let Some(healthy) = verdicts[i].record(result.is_ok()) {
                b.stats.set_unhealthy(!healthy);
                if healthy {
                    tracing::info!(upstream = %upstream.name, backend = %b.id, "backend healthy");
                } else {
                    let reason = result.err().unwrap_or_default();
                    tracing::info!(upstream = %upstream.name, backend = %b.id, reason = %reason, "backend unhealthy");
                }
            }
        }
        let next = round + cfg.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        tokio::time::sleep_until(next).await;
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
