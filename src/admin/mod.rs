//! The admin API (SPEC §5): dashboard, health, status and reload, on its own listener.
//! It reads the same snapshot and atomics as the proxy, so what it shows is live.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::{AdminListener, State};

mod edit;
mod history;
mod report;
mod status;

pub use report::metrics_text;
pub use status::status_json;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves the admin API on `listener` (none: not yet) until `stop` turns true, moving
/// to the listener a reload binds (`State::admin_moves`). Connections already open
/// finish on the old one.
pub async fn serve(
    mut listener: Option<TcpListener>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let log = |l: &TcpListener| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(address = %addr, "admin listening");
        }
    };
    if let Some(l) = &listener {
        log(l);
    }
    let builder = Builder::new(TokioExecutor::new());
    let history = Arc::new(std::sync::Mutex::new(history::History::default()));
    tokio::spawn(history::keep(
        Arc::clone(&state),
        Arc::clone(&history),
        stop.clone(),
    ));
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        let (stream, _) = tokio::select! {
            r = accept => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.admin_moves.moved.notified() => {
                listener = match state.admin_moves.take() {
                    Some(AdminListener::At(l)) => match TcpListener::from_std(l) {
                        Ok(l) => {
                            log(&l);
                            if let Some(a) = &state.shared.config.load().admin {
                                state.set_admin_socket(a.address, &l);
                            }
                            Some(l)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "admin listener unusable");
                            listener
                        }
                    },
                    Some(AdminListener::Off) => {
                        tracing::info!("admin API off");
                        state.clear_admin_socket();
                        None
                    }
                    None => listener,
                };
                continue;
            }
            _ = stop.changed() => return,
        };
        let (state, history) = (Arc::clone(&state), Arc::clone(&history));
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (state, history) = (Arc::clone(&state), Arc::clone(&history));
                async move { Ok::<_, Infallible>(route(&state, &history, req).await) }
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

async fn route(
    state: &Arc<State>,
    history: &std::sync::Mutex<history::History>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/status") => reply(StatusCode::OK, "application/json", status_json(state)),
        (&Method::GET, "/status/history") => {
            let json = history.lock().unwrap_or_else(|p| p.into_inner()).json();
            reply(StatusCode::OK, "application/json", json)
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(state),
        ),
        (&Method::GET, "/debug/requests") => debug_requests(state, req.uri().query()),
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
        (
            _,
            "/" | "/healthz" | "/status" | "/status/history" | "/metrics" | "/reload"
            | "/debug/requests",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /debug/requests?limit=N` (SPEC §9): the last N decision traces (default 100, at
/// most all that are kept), oldest first.
fn debug_requests(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    const DEFAULT: usize = 100;
    let mut limit = DEFAULT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", n)) => match n.parse::<usize>() {
                Ok(n) => limit = n.min(crate::trace::KEPT),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("limit: \"{n}\" is not a number; expected e.g. limit=20\n"),
                    );
                }
            },
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter \"{pair}\"; expected limit=N\n"),
                );
            }
        }
    }
    reply(
        StatusCode::OK,
        "application/json",
        state.shared.traces.last_json(limit),
    )
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
        backend
            .stats
            .why
            .drained(draining.then_some("drained through the admin API"));
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
