//! The admin API (SPEC §5): dashboard, health, status and reload, on its own listener.
//! It reads the same snapshot and atomics as the proxy, so what it shows is live.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Text;
use crate::proxy::Shared;
use crate::reload;

mod edit;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "admin listening");
    }
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = Arc::clone(&shared);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/status") => reply(StatusCode::OK, "application/json", status_json(shared)),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(shared),
        ),
        (&Method::POST, "/reload") => {
            if let Some(denied) = check_token(shared, &req) {
                return denied;
            }
            match reload::reload(shared) {
                Ok(()) => text(StatusCode::OK, "reloaded\n"),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (&Method::POST | &Method::DELETE, path) if path.starts_with("/upstreams/") => {
            if let Some(denied) = check_token(shared, &req) {
                return denied;
            }
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match (req.method(), &parts[..]) {
                (&Method::POST, ["upstreams", name, "backends"]) => {
                    let name = (*name).to_owned();
                    match read_small_body(req).await {
                        Ok(body) => edit::add(shared, &name, &body),
                        Err(e) => e,
                    }
                }
                (&Method::DELETE, ["upstreams", name, "backends", id]) => {
                    edit::remove(shared, name, id)
                }
                (&Method::POST, ["upstreams", name, "backends", id, action]) => {
                    backend_action(shared, name, id, action)
                }
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
        (_, "/" | "/healthz" | "/status" | "/metrics" | "/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The body of an admin call, up to `MAX_ADMIN_BODY`; an answer to give instead when
/// it is larger or cannot be read.
async fn read_small_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    use http_body_util::{BodyExt, Limited};
    match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_ADMIN_BODY} bytes\n"),
        )),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "request body could not be read\n",
        )),
    }
}

/// Admin calls carry a few bytes of JSON.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// `POST /upstreams/{name}/backends/{host:port}/{drain|enable}`.
fn backend_action(shared: &Shared, name: &str, id: &str, action: &str) -> Response<Full<Bytes>> {
    let draining = match action {
        "drain" => true,
        "enable" => false,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let snap = shared.snapshot.load();
    let Some(upstream) = snap.upstream(name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no upstream named \"{name}\"\n"),
        );
    };
    let Some(backend) = upstream.all.iter().find(|b| &*b.id == id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("upstream \"{name}\" has no backend {id}\n"),
        );
    };
    if backend.stats.set_draining(draining) {
        tracing::info!(
            upstream = name,
            backend = id,
            draining,
            "backend state changed by admin"
        );
    }
    text(StatusCode::OK, format!("{action}: {id}\n"))
}

/// Mutating calls need `Authorization: Bearer TOKEN` when a token is configured.
fn check_token(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let config = shared.config.load();
    let token = config.admin.as_ref()?.token.as_deref()?;
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == token);
    (!ok).then(|| text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n"))
}

/// The `/status` document (SPEC §5), fields in the SPEC's order.
#[derive(serde::Serialize)]
pub struct Status<'a> {
    pub version: &'static str,
    pub upstreams: Vec<UpstreamStatus<'a>>,
}

#[derive(serde::Serialize)]
pub struct UpstreamStatus<'a> {
    pub name: &'a str,
    pub strategy: &'static str,
    pub backends: Vec<BackendStatus>,
}

#[derive(serde::Serialize)]
pub struct BackendStatus {
    pub url: String,
    pub weight: u32,
    pub backup: bool,
    pub state: &'static str,
    pub inflight: u32,
    pub requests: u64,
    pub failures: u64,
    pub latency_ewma_ms: f64,
}

/// Renders `/status` from the live snapshot and counters.
pub fn status_json(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let now = Instant::now();
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        upstreams: snap
            .upstreams
            .iter()
            .map(|u| UpstreamStatus {
                name: &u.name,
                strategy: u.config.strategy.as_str(),
                backends: u
                    .all
                    .iter()
                    .map(|b| {
                        let s = &b.stats;
                        BackendStatus {
                            url: b.url.to_string(),
                            weight: b.weight,
                            backup: b.backup,
                            state: s.state(now).as_str(),
                            inflight: s.inflight.load(Ordering::Relaxed),
                            requests: s.requests.load(Ordering::Relaxed),
                            failures: s.failures.load(Ordering::Relaxed),
                            latency_ewma_ms: (s.latency_ewma_ms() * 1000.0).round() / 1000.0,
                        }
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string(&status).unwrap_or_else(|_| "{}".to_owned())
}

/// Renders `/metrics` (Prometheus text format, SPEC §5) from the live snapshot and
/// counters.
pub fn metrics_text(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let now = Instant::now();
    let mut t = Text::default();

    t.family(
        "sluice_requests_total",
        "counter",
        "Client requests, by upstream, the backend that gave the final answer, and status code. \
         Empty labels: answered before a backend (or an upstream) was chosen; 499: the client left first.",
    );
    shared.unrouted.each(|code, n| {
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
        "sluice_client_connections",
        "gauge",
        "Open client connections.",
    );
    let open = shared.connections.get().map_or(0, |(permits, max)| {
        max.saturating_sub(permits.available_permits())
            .saturating_sub(shared.accepting.load(Ordering::Relaxed))
    });
    t.sample("sluice_client_connections", &[], open);
    t.finish()
}
