//! One request, start to finish: checks, routing and header rewriting (prepare.rs),
//! the attempts at backends (attempts.rs), and the answer handed back, streaming. Every way this can
//! fail ends in a `ProxyError` that knows its status (SPEC §4).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::Shared;
use super::attempts::attempts;
use super::body::{ClientBody, Completion, ResponseBody};
use super::client::{BackendBody, Upgraded};
use super::conn::Activity;
use super::error::{ProxyError, chain};
use super::h1::RawRequest;
use super::headers::{self, TRACEPARENT, X_REQUEST_ID};
use super::pool::Dedicated;
use super::prepare::prepare;
use crate::otel::{RequestSpan, TraceCtx};
use crate::telemetry::{self, AccessRecord};

/// What a request needs to know about the connection it came on.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// `client`'s IP as a header value, for X-Forwarded-For.
    pub client_ip: HeaderValue,
    pub https: bool,
    /// Served by hyper (HTTP/2): requests come as header maps; else by h1/, which
    /// passes header lines raw and checks framing, Host and head sizes as it parses.
    pub via_hyper: bool,
    pub activity: Arc<Activity>,
    /// Where refusals are counted (`Shared::refused`).
    pub refused: Arc<crate::telemetry::Refusals>,
    /// Backend connections made for this client alone (upstream `proxy_protocol`).
    pub dedicated: Dedicated,
}

impl ConnInfo {
    /// `(client, local)`: the client, and the address it connected to.
    pub fn new(
        (client, local): (SocketAddr, SocketAddr),
        https: bool,
        via_hyper: bool,
        activity: Arc<Activity>,
        refused: Arc<crate::telemetry::Refusals>,
    ) -> ConnInfo {
        ConnInfo {
            client,
            client_ip: headers::ip_value(client.ip()),
            https,
            via_hyper,
            activity,
            refused,
            dedicated: Dedicated::new(client, local),
        }
    }
}

/// What the client connection does after an answer, as the request decides it (the
/// connection loop combines it with what the client allowed and its own state).
pub enum After {
    /// The connection may serve another request.
    Reuse,
    /// Close the connection after this answer: sluice refused the request, and bytes
    /// it did not read (a body, a tunnel's first bytes) may follow it.
    Close,
    /// The backend switched protocols (101): join the two connections into a tunnel.
    Tunnel(Upgraded),
}

/// A request's answer and what follows it.
pub struct Answered {
    pub response: Response<ResponseBody>,
    pub after: After,
}

/// A request's whole handling, boxed, for hyper (HTTP/2), whose service future must
/// have a type to name. One allocation per request; HTTP/1 (h1.rs) needs none.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

/// `handle`, boxed (see `Answer`), for a request of an HTTP/2 connection, where what
/// follows an answer is hyper's business: the stream ends (HTTP/2 has no upgrades, and
/// closing is a connection's, not a request's).
pub fn handle_boxed(shared: &Shared, conn: &Arc<ConnInfo>, req: Request<ClientBody>) -> Answer {
    Box::pin(ForHyper {
        answer: handle(shared, conn, req, None),
    })
}

pin_project_lite::pin_project! {
    /// `handle`'s future with its answer in hyper's type. Written out, not an async
    /// block awaiting it: such a block keeps the future it captured and the one it
    /// polls in two places, twice the size, and the box and every move of it copy both
    /// (h2c: 0.7k instructions per request).
    struct ForHyper<F> {
        #[pin]
        answer: F,
    }
}

impl<F: Future<Output = Answered>> Future for ForHyper<F> {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().answer.poll(cx).map(|a| Ok(a.response))
    }
}

/// Serves one client request. Never fails: errors become sluice's own answers.
///
/// The checks, routing and header rewriting run here, before the future exists, so
/// the future holds only what the exchange with the backend needs across its awaits.
/// `raw`: the request's header lines as an HTTP/1.x client wrote them, when they
/// travel so (its header map is then empty; see `h1::RawRequest`).
pub fn handle(
    shared: &Shared,
    conn: &Arc<ConnInfo>,
    req: Request<ClientBody>,
    raw: Option<RawRequest>,
) -> impl Future<Output = Answered> + Send + 'static {
    let mut done = Completion::new(Arc::clone(&conn.activity));
    let given = match &raw {
        Some(r) => r.request_id.as_ref(),
        None => req.headers().get(&X_REQUEST_ID),
    };
    let (request_id, made) = match given {
        Some(id) => {
            let mut id = id.clone();
            headers::unique(&mut id);
            (id, false)
        }
        None => (headers::new_request_id(), true),
    };
    // SPEC §9: the client's trace continued, or a new one; spans only while exported.
    let given = match &raw {
        Some(r) => r.trace_parent.as_ref(),
        None => headers::single(req.headers(), &TRACEPARENT),
    };
    let sink = match crate::otel::export::exporting() {
        true => shared.spans.load_full(),
        false => None,
    };
    let given = given.map(HeaderValue::as_bytes);
    let made_id = made.then(|| request_id.as_bytes());
    let trace_ctx = TraceCtx::new(given, made_id, sink.is_some());
    if let Some(sink) = sink.as_ref().filter(|_| trace_ctx.sampled()) {
        let (method, path) = (req.method(), req.uri().path());
        let span = RequestSpan::new(
            sink,
            trace_ctx,
            done.started,
            method,
            path,
            conn.client.ip(),
        );
        done.span = Some(Box::new(span));
    }
    if telemetry::access_log_enabled() {
        let mut r = AccessRecord::start(conn.client, req.method(), req.uri());
        r.request_id = Some(request_id.clone());
        r.trace_id = Some(*trace_ctx.trace_id_hex());
        done.record = Some(Box::new(r));
    }
    // Worked on where it lies in this future: moving it into one of its own would
    // copy some hundreds of bytes.
    let mut prepared = prepare(shared, conn, req, raw, &mut done, &request_id, trace_ctx);
    if let (Err(e), None) = (&prepared, &done.upstream) {
        // Refused before routing (no route, framing, limits): counted apart.
        shared.unrouted.add(e.status().as_u16());
    }
    let conn = Arc::clone(conn);
    async move {
        let result = match prepared {
            Ok(ref mut p) => {
                // Boxed: only routes with a shared rate limit wait on one.
                let allowed = match p.shared_limit.take() {
                    Some(check) => Box::pin(check.ask(&p.upstream)).await,
                    None => Ok(()),
                };
                match allowed {
                    Ok(()) => attempts(&conn, p, &mut done).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        respond(result, done, request_id, &conn.refused)
    }
}

/// The client's answer: the backend's response, or sluice's own for an error; and what
/// the connection does after it, decided here from the answer alone.
fn respond(
    result: Result<Response<BackendBody>, ProxyError>,
    mut done: Completion,
    request_id: HeaderValue,
    refused: &crate::telemetry::Refusals,
) -> Answered {
    match result {
        Ok(resp) => {
            // Hop-by-hop headers were dropped as the head was parsed (wire.rs).
            let (mut parts, mut body) = resp.into_parts();
            // A 101 ends HTTP on the connection: a tunnel, or (no socket to join) a close.
            let after = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                body.take_upgraded().map_or(After::Close, After::Tunnel)
            } else {
                After::Reuse
            };
            parts.headers.insert(&X_REQUEST_ID, request_id);
            if let Some(t) = &done.trace {
                trace_header(&mut parts.headers, t.header_value());
            }
            if let Some(rules) = done.headers.as_ref().filter(|r| !r.response.is_empty()) {
                // Raw lines (HTTP/1.x): those the rules remove or replace are left
                // out as they are written; the map takes what they set or add.
                if let Some(raw) = body.raw.as_mut() {
                    raw.rules = Some(Arc::clone(rules));
                }
                rules.response.apply(&mut parts.headers);
            }
            done.status = parts.status.as_u16();
            if let Some(r) = done.record.as_mut() {
                r.status = done.status;
            }
            Answered {
                response: Response::from_parts(parts, ResponseBody::proxied(body, done)),
                after,
            }
        }
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::warn!(
                    status = status.as_u16(),
                    upstream = done.upstream.as_ref().map(|u| &*u.name),
                    backend = done.backend.as_ref().map(|b| &*b.id),
                    error = %chain(&e),
                    "request failed"
                );
            } else {
                tracing::debug!(status = status.as_u16(), error = %e, "request refused");
            }
            let refusal = e.refusal();
            if let Some(r) = refusal {
                refused.add(r);
            }
            done.status = status.as_u16();
            if let Some(r) = done.record.as_mut() {
                r.status = done.status;
                r.reason = refusal;
            }
            let rules = done.headers.clone();
            if let Some(t) = done.trace.as_mut() {
                t.note("error", &e);
            }
            let trace_line = done.trace.as_ref().map(|t| t.header_value());
            let mut resp = Response::new(ResponseBody::local(e.body(), Some(done)));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(&X_REQUEST_ID, request_id);
            if let Some(line) = trace_line {
                trace_header(h, line);
            }
            if let ProxyError::Redirect(_, location) = &e {
                h.insert(header::LOCATION, location.clone());
            }
            if let ProxyError::RateLimited(secs) = &e {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            if let Some(rules) = &rules {
                rules.response.apply(h);
            }
            if matches!(e, ProxyError::Connect405) {
                // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
                h.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
                );
            }
            // Framing we refused (or a tunnel's first bytes) may leave unread bytes
            // behind: the connection is not reused.
            let after = match e {
                ProxyError::BadRequest(_) | ProxyError::Connect405 => After::Close,
                _ => After::Reuse,
            };
            Answered {
                response: resp,
                after,
            }
        }
    }
}

/// Adds the `X-Sluice-Trace` line (SPEC §9).
#[inline(never)]
fn trace_header(headers: &mut http::HeaderMap, line: String) {
    if let Ok(v) = HeaderValue::try_from(line) {
        headers.insert(crate::trace::HEADER, v);
    }
}
