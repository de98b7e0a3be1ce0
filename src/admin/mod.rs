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
use crate::state::State;

mod edit;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
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
        let state = Arc::clone(&state);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, req).await) }
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

async fn route(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/status") => reply(StatusCode::OK, "application/json", status_json(state)),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(state),
        ),
        (&Method::POST, "/reload") => {
            if let Some(denied) = check_token(state, &req) {
                return denied;
            }
            match state.reload() {
                Ok(()) => text(StatusCode::OK, "reloaded\n"),
                Err(e) => text(
                    StatusCode::BAD_REQUEST,
                    format!("{}\n", crate::proxy::error::chain(&e)),
                ),
            }
        }
        (&Method::POST | &Method::DELETE, path) if path.starts_with("/upstreams/") => {
            if let Some(denied) = check_token(state, &req) {
                return denied;
            }
            match BackendCall::parse(req.method(), path) {
                Some(BackendCall::Add(name)) => match read_small_body(req).await {
                    Ok(body) => edit::add(state, &name, &body),
                    Err(e) => e,
                },
                Some(BackendCall::Remove(name, id)) => edit::remove(state, &name, &id),
                Some(BackendCall::Drain(name, id, draining)) => {
                    backend_action(state, &name, &id, draining)
                }
                None => text(StatusCode::NOT_FOUND, "not found\n"),
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

/// An admin call on an upstream's backends, with the backend named by its id.
#[derive(Debug, PartialEq, Eq)]
enum BackendCall {
    /// `POST /upstreams/{name}/backends`
    Add(String),
    /// `DELETE /upstreams/{name}/backends/{id}`
    Remove(String, String),
    /// `POST /upstreams/{name}/backends/{id}/drain` (true) or `/enable` (false)
    Drain(String, String, bool),
}

impl BackendCall {
    /// Reads the call from a path. The backend may be named by its id (`host:port`, as
    /// in metrics) or by its URL as `/status` shows it (`http://host:port`, also
    /// percent-encoded): both become the id.
    fn parse(method: &Method, path: &str) -> Option<BackendCall> {
        let rest = path.strip_prefix("/upstreams/")?;
        let (name, rest) = rest.split_once('/')?;
        let name = decode(name);
        if rest == "backends" || rest == "backends/" {
            return (method == Method::POST).then_some(BackendCall::Add(name));
        }
        let rest = rest.strip_prefix("backends/")?;
        if method == Method::DELETE {
            return Some(BackendCall::Remove(name, backend_id(rest)));
        }
        let (backend, action) = rest.rsplit_once('/')?;
        let draining = match action {
            "drain" => true,
            "enable" => false,
            _ => return None,
        };
        Some(BackendCall::Drain(name, backend_id(backend), draining))
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The id a path segment names: `host:port` as given, or the id of a backend URL.
fn backend_id(given: &str) -> String {
    let given = decode(given);
    match crate::config::BackendUrl::parse(&given) {
        Ok(url) => url.id(),
        Err(_) => given,
    }
}

/// The 404 for a backend `upstream` does not have, naming the ones it has.
pub(crate) fn no_backend<'a>(
    upstream: &str,
    id: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Response<Full<Bytes>> {
    let ids: Vec<&str> = ids.collect();
    let known = if ids.is_empty() {
        "it has none".to_owned()
    } else {
        format!("its backends are {}", ids.join(", "))
    };
    text(
        StatusCode::NOT_FOUND,
        format!("upstream \"{upstream}\" has no backend {id}; {known}\n"),
    )
}

/// `POST /upstreams/{name}/backends/{id}/{drain|enable}`.
fn backend_action(state: &State, name: &str, id: &str, draining: bool) -> Response<Full<Bytes>> {
    let snap = state.shared.snapshot.load();
    let Some(upstream) = snap.upstream(name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no upstream named \"{name}\"\n"),
        );
    };
    let Some(backend) = upstream.all.iter().find(|b| &*b.id == id) else {
        return no_backend(name, id, upstream.all.iter().map(|b| &*b.id));
    };
    let action = if draining { "drain" } else { "enable" };
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
fn check_token(state: &State, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let config = state.shared.config.load();
    let token = config.admin.as_ref()?.token.as_deref()?;
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        // Constant time: how long a wrong guess takes must not tell how much was right.
        .is_some_and(|t| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                t.as_bytes(),
                token.as_bytes(),
            ))
        });
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
    /// `host:port`: the form admin paths and metric labels use.
    pub id: String,
    pub weight: u32,
    pub backup: bool,
    pub state: &'static str,
    /// Past its failure threshold but kept in rotation by `max_ejected_percent`.
    pub failing: bool,
    pub inflight: u32,
    pub requests: u64,
    pub failures: u64,
    pub latency_ewma_ms: f64,
}

/// Renders `/status` from the live snapshot and counters.
pub fn status_json(state: &State) -> String {
    let snap = state.shared.snapshot.load();
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
                        let state = s.state(now);
                        BackendStatus {
                            url: b.url.to_string(),
                            id: b.id.to_string(),
                            weight: b.weight,
                            backup: b.backup,
                            state: state.as_str(),
                            failing: s.is_failing() && state == crate::upstream::State::Healthy,
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
pub fn metrics_text(state: &State) -> String {
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
    let open = state.shared.connections.get().map_or(0, |(permits, max)| {
        max.saturating_sub(permits.available_permits())
            .saturating_sub(state.shared.accepting.load(Ordering::Relaxed))
    });
    t.sample("sluice_client_connections", &[], open);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_named_by_id_or_by_url() {
        let call = |m: &Method, p: &str| BackendCall::parse(m, p);
        let drain = |id: &str| Some(BackendCall::Drain("web".into(), id.into(), true));
        assert_eq!(
            call(
                &Method::POST,
                "/upstreams/web/backends/127.0.0.1:9001/drain"
            ),
            drain("127.0.0.1:9001")
        );
        assert_eq!(
            call(
                &Method::POST,
                "/upstreams/web/backends/http://127.0.0.1:9001/drain"
            ),
            drain("127.0.0.1:9001")
        );
        assert_eq!(
            call(
                &Method::POST,
                "/upstreams/web/backends/https%3A%2F%2F127.0.0.1%3A9001%2F/drain"
            ),
            drain("127.0.0.1:9001")
        );
        assert_eq!(
            call(&Method::DELETE, "/upstreams/web/backends/http://[::1]:80"),
            Some(BackendCall::Remove("web".into(), "[::1]:80".into()))
        );
        assert_eq!(
            call(&Method::POST, "/upstreams/web/backends"),
            Some(BackendCall::Add("web".into()))
        );
        assert_eq!(
            call(
                &Method::POST,
                "/upstreams/web/backends/127.0.0.1:9001/pause"
            ),
            None
        );
        assert_eq!(call(&Method::DELETE, "/upstreams/web/backends"), None);
    }
}
