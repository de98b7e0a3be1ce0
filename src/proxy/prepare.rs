//! A request made ready for its backend: the checks hyper's heads still need, limits,
//! routing, and the head rewritten for the backend (SPEC §4), before any await.

use super::Shared;
use super::body::{ClientBody, Completion, RequestBody};
use super::error::ProxyError;
use super::forward::ConnInfo;
use super::h1::{Outgoing, RawRequest};
use super::head;
use super::headers::{self, X_REQUEST_ID};
use super::routing::Served;
use crate::balance::{hash_key, sticky};
use crate::config::{HashKey, HostHeader, StrategyKind};
use crate::upstream::{Backend, host_of, request_host};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};
use std::sync::Arc;
use tokio::time::Instant;

/// Refuses several differing Content-Length values in an HTTP/2 head (h2 itself
/// refuses Transfer-Encoding and a body longer or shorter than the one length).
fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut cls = req.headers().get_all(header::CONTENT_LENGTH).iter();
    match cls.next() {
        Some(first) if cls.any(|v| v != first) => Err(ProxyError::BadRequest(
            head::Refused::DifferingLengths.reason(),
        )),
        _ => Ok(()),
    }
}

/// RFC 9112 §3.2 for a request hyper parsed (HTTP/2): every Host
/// valid and at most one, exactly one in HTTP/1.1, a target of a form its method may
/// use, and no userinfo in its authority (h1/ checks its own heads as it parses).
fn check_hosts<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match hosts.next() {
        Some(host) => headers::check_host(host.as_bytes()).map_err(ProxyError::BadRequest)?,
        // HTTP/1.1 must name its host; HTTP/1.0 and HTTP/2 (:authority) need not.
        None if req.version() == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("missing Host"));
        }
        None => {}
    }
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Host"));
    }
    head::target_form(req.method(), req.uri()).map_err(|r| ProxyError::BadRequest(r.reason()))?;
    if let Some(a) = req.uri().authority() {
        headers::check_host(a.as_str().as_bytes())
            .map_err(|_| ProxyError::BadRequest("invalid authority in the request target"))?;
    }
    Ok(())
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    head::parse_length(req.headers().get(header::CONTENT_LENGTH)?.as_bytes())
}

/// A request routed and rewritten, ready for its backend.
pub(super) struct Prepared {
    pub(super) upstream: Arc<Served>,
    pub(super) breq: Request<RequestBody>,
    /// The head's lines in raw form (an HTTP/1.x client); `breq`'s map is then empty.
    pub(super) outgoing: Option<Outgoing>,
    /// Hash of the request's `hash_key` (consistent_hash only).
    pub(super) key: Option<u64>,
    /// The backend the client's sticky cookie names, if any.
    pub(super) carried: Option<Arc<Backend>>,
    pub(super) upgrade: bool,
    /// `host_header = "backend"`: each attempt sets its backend's Host.
    pub(super) backend_host: bool,
    pub(super) now: Instant,
    /// A rate limit the fleet shares, still to be asked (a round trip to its store).
    pub(super) shared_limit: Option<Box<SharedCheck>>,
    /// The request's trace (SPEC §9): each attempt sends a `traceparent` from it.
    pub(super) trace_ctx: crate::otel::TraceCtx,
}

/// A shared rate limit's question for one request: made while preparing, asked when the
/// request's future first runs.
pub(super) struct SharedCheck {
    limit: Arc<crate::upstream::rate::RateLimit>,
    key: Vec<u8>,
}

impl SharedCheck {
    /// Ok, or the 429 to answer. A store that does not answer is counted; the limit
    /// was then this instance's own.
    pub(super) async fn ask(self: Box<Self>, upstream: &Served) -> Result<(), ProxyError> {
        let (verdict, fell_back) = self.limit.take_shared(&self.key).await;
        if fell_back {
            upstream
                .stats
                .shared_rate_fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        verdict.map_err(|secs| {
            let denied = &upstream.stats.denied_rate;
            denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ProxyError::RateLimited(secs)
        })
    }
}

/// Checks framing and limits, routes, and rewrites the head for the backend.
pub(super) fn prepare(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<ClientBody>,
    raw: Option<RawRequest>,
    done: &mut Completion,
    request_id: &HeaderValue,
    trace_ctx: crate::otel::TraceCtx,
) -> Result<Prepared, ProxyError> {
    let max_body_bytes = check_limits(shared, conn, &req, raw.as_ref())?;
    let (upstream, rewritten, client, shared_limit) =
        route(shared, &req, raw.as_ref(), conn, done)?;
    done.upstream = Some(Arc::clone(&upstream.stats));
    let now = done.started;
    upstream.budget.record_request(now);
    let hashing = upstream.config.strategy == StrategyKind::ConsistentHash;
    let sticky_cookie = upstream.config.sticky.as_ref().map(|s| s.cookie.as_str());
    let request_rules = done
        .headers
        .as_ref()
        .filter(|h| !h.request.is_empty())
        .cloned();
    // Header rules that touch the lines sluice writes itself work on the map, like
    // upstreams that read headers; others are applied to the raw lines.
    let rules_need_map = request_rules.as_ref().is_some_and(|r| !r.request_raw_ok);
    let raw = match raw {
        Some(r) if reads_headers(&upstream) || rules_need_map => {
            r.fill_map(req.headers_mut());
            None
        }
        r => r,
    };
    let key = hashing.then(|| hash_key::of(&upstream.config.hash_key, &req, client));
    // The backend the client's sticky cookie names, if any.
    let carried: Option<Arc<Backend>> = sticky_cookie
        .and_then(|name| sticky::chosen(req.headers(), name, &upstream.all))
        .cloned();
    let upgrade = match &raw {
        Some(r) => r.upgrade,
        None => req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers()),
    };

    let (mut parts, body) = req.into_parts();
    // The host the request names: an absolute-form target's (HTTP/2's :authority, or
    // a proxy-style HTTP/1 request line), which wins over a Host line (RFC 9112
    // §3.2.2) and is the one routing used; else the Host line (or HTTP/2's
    // :authority).
    let client_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => match &raw {
            Some(r) => r.host.clone(),
            None => parts.headers.get(header::HOST).cloned(),
        },
    };
    // A request naming no host (HTTP/1.0) gets the backend's, as with `host_header =
    // "backend"`: many backends refuse an HTTP/1.1 request without Host.
    let backend_host = upstream.config.host_header == HostHeader::Backend || client_host.is_none();
    let outgoing = match raw {
        Some(raw) => Some(Outgoing {
            raw,
            host: if backend_host {
                None
            } else {
                client_host.clone()
            },
            forwarded_host: client_host,
            client_ip: conn.client_ip.clone(),
            https: conn.https,
            request_id: request_id.clone(),
            rules: request_rules,
        }),
        None => {
            rewrite_map(
                &mut parts.headers,
                conn,
                upgrade,
                request_id,
                client_host,
                backend_host,
            );
            // SPEC §8: after sluice's own rules.
            if let Some(rules) = &request_rules {
                rules.request.apply(&mut parts.headers);
            }
            None
        }
    };
    origin_form(&mut parts.uri, rewritten);
    parts.version = Version::HTTP_11;

    let breq = Request::from_parts(parts, RequestBody::new(body, max_body_bytes));
    Ok(Prepared {
        upstream,
        breq,
        outgoing,
        key,
        carried,
        upgrade,
        backend_host,
        now,
        shared_limit,
        trace_ctx,
    })
}

/// Refuses what no upstream may get: CONNECT (SPEC §4: a reverse proxy does not
/// tunnel), a head or a declared body over the limits. Gives the body limit.
#[inline(always)]
fn check_limits(
    shared: &Shared,
    conn: &ConnInfo,
    req: &Request<ClientBody>,
    raw: Option<&RawRequest>,
) -> Result<u64, ProxyError> {
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::Connect405);
    }
    // Heads sluice parsed itself were checked for framing and Host, and measured, as
    // they were parsed (head.rs, h1/); hyper's (HTTP/2) get the same rules here.
    let (max_header_bytes, max_body_bytes) = {
        let l = shared.limits.load();
        (l.max_header_bytes, l.max_body_bytes)
    };
    if conn.via_hyper {
        check_framing(req)?;
        check_hosts(req)?;
        if headers::head_size(req.method(), req.uri(), req.headers()) > max_header_bytes {
            return Err(ProxyError::HeadTooLarge);
        }
    }
    let length = match raw {
        Some(r) => r.length,
        None => content_length(req),
    };
    if max_body_bytes > 0 && length.is_some_and(|n| n > max_body_bytes) {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(max_body_bytes)
}

/// The upstream a request goes to, and its path as the route rewrites it (with the
/// query), keeping no snapshot guard across an await.
#[inline(always)]
fn route(
    shared: &Shared,
    req: &Request<ClientBody>,
    raw: Option<&RawRequest>,
    conn: &ConnInfo,
    done: &mut Completion,
) -> Result<Routed, ProxyError> {
    let snap = shared.snapshot.load();
    let path = req.uri().path();
    let host = match raw {
        Some(r) => host_of(req.uri(), r.host.as_ref()),
        None => request_host(req),
    };
    // The client: the peer, or whom a trusted proxy's X-Forwarded-For names.
    let peer = conn.client.ip();
    let client = if snap.trusted.is_empty() {
        peer
    } else {
        let forwarded = match raw {
            Some(r) => r.forwarded_for.as_ref().map(HeaderValue::as_bytes),
            None => req
                .headers()
                .get(&headers::X_FORWARDED_FOR)
                .map(HeaderValue::as_bytes),
        };
        let client = snap.client(peer, forwarded);
        if let Some(r) = done.record.as_mut().filter(|_| client != peer) {
            r.client = std::net::SocketAddr::new(client, 0);
        }
        client
    };
    if !snap.debug_from.is_empty() {
        ask_trace(shared, &snap.debug_from, req, raw, client, done);
    }
    let found = snap.route(host, path);
    if let Some(t) = done.trace.as_mut() {
        match found {
            Some((r, _)) => t.note("route", r.describe()),
            None => t.note("route", "none"),
        }
    }
    let (route, upstream) = found.ok_or(ProxyError::NoRoute)?;
    let mut shared_limit = None;
    if let Some(policy) = &route.policy {
        shared_limit = apply_policy(
            policy,
            upstream,
            shared,
            (req, raw),
            host,
            (conn, client),
            done,
        )?;
    }
    let upstream = upstream.ok_or(ProxyError::NoRoute)?;
    if let Some(t) = done.trace.as_mut() {
        t.note("upstream", &upstream.name);
        t.note("strategy", upstream.config.strategy.as_str());
    }
    let rewritten = route.rewrite(path).and_then(|p| {
        let pq = match req.uri().query() {
            Some(q) => format!("{p}?{q}"),
            None => p.to_owned(),
        };
        PathAndQuery::try_from(pq).ok()
    });
    Ok((Arc::clone(upstream), rewritten, client, shared_limit))
}

/// Starts the request's decision trace if `client` may ask for one and did (SPEC §9:
/// `X-Sluice-Debug: 1` from a client in `[admin] debug_from`).
#[inline(never)]
fn ask_trace(
    shared: &Shared,
    debug_from: &[ipnet::IpNet],
    req: &Request<ClientBody>,
    raw: Option<&RawRequest>,
    client: std::net::IpAddr,
    done: &mut Completion,
) {
    let name = header::HeaderName::from_static(crate::trace::ASK);
    let asked = match raw {
        Some(r) => r.get(&name),
        None => req.headers().get(&name).map(HeaderValue::as_bytes),
    };
    if asked.is_some_and(|v| v.trim_ascii() == b"1")
        && debug_from.iter().any(|n| n.contains(&client))
    {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let t = crate::trace::Trace::new(Arc::clone(&shared.traces), req.method().as_str(), path);
        done.trace = Some(Box::new(t));
    }
}

/// Where a request goes: its upstream, its rewritten path, its client, and a shared
/// rate limit still to ask.
type Routed = (
    Arc<Served>,
    Option<PathAndQuery>,
    std::net::IpAddr,
    Option<Box<SharedCheck>>,
);

/// A route's policy, before its upstream (SPEC §8): its header rules noted for the
/// answer (whatever it is: 403 and redirects included), the access list, a redirect.
/// Out of line: a route without policy does not pay for it.
#[inline(never)]
fn apply_policy(
    policy: &crate::upstream::Policy,
    upstream: Option<&Arc<Served>>,
    shared: &Shared,
    (req, raw): (&Request<ClientBody>, Option<&RawRequest>),
    host: Option<&str>,
    (conn, client): (&ConnInfo, std::net::IpAddr),
    done: &mut Completion,
) -> Result<Option<Box<SharedCheck>>, ProxyError> {
    done.headers = policy.headers.clone();
    if let Some(acl) = &policy.acl
        && !acl.permits(client)
    {
        let counts = match upstream {
            Some(u) => &u.stats.denied_acl,
            None => &shared.denied_acl_unrouted,
        };
        counts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ProxyError::Forbidden);
    }
    if let Some(r) = &policy.redirect {
        return Err(redirect(r, req, host, conn.https));
    }
    if let Some(limit) = &policy.rate {
        use crate::upstream::rate::RateKey;
        let octets = match client {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let ip = &octets[..];
        let header = match &limit.key {
            RateKey::ClientIp => None,
            RateKey::Header(name) => match raw {
                Some(r) => r.get(name),
                None => req.headers().get(name).map(HeaderValue::as_bytes),
            },
        };
        if let Some(key) = limit.shared_key(header, client) {
            let limit = Arc::clone(limit);
            return Ok(Some(Box::new(SharedCheck { limit, key })));
        }
        let key = header.unwrap_or(ip);
        if let Err(secs) = limit.take(key, std::time::Instant::now()) {
            if let Some(u) = upstream {
                u.stats
                    .denied_rate
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Err(ProxyError::RateLimited(secs));
        }
    }
    Ok(None)
}

/// A route's redirect for this request: `{host}` (without its port), `{uri}` (path and
/// query as received) and `{scheme}` filled in.
#[cold]
fn redirect(
    r: &crate::config::RedirectConfig,
    req: &Request<ClientBody>,
    host: Option<&str>,
    https: bool,
) -> ProxyError {
    let host = host.map_or("", |h| {
        h.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(h, |(h, _)| h)
    });
    let uri = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let to =
        r.to.replace("{host}", host)
            .replace("{uri}", uri)
            .replace("{scheme}", if https { "https" } else { "http" });
    match HeaderValue::try_from(to) {
        Ok(location) => ProxyError::Redirect(r.status, location),
        Err(_) => ProxyError::BadRequest("a redirect target that is not a valid URL"),
    }
}

/// An upstream that reads the request's headers gets them in the map after all; so
/// does one spoken to over HTTP/2, whose heads hyper writes from the map.
#[inline(always)]
fn reads_headers(upstream: &Served) -> bool {
    let c = &upstream.config;
    c.sticky.is_some()
        || upstream.client.is_h2()
        || (c.strategy == StrategyKind::ConsistentHash
            && matches!(c.hash_key, HashKey::Header(_) | HashKey::Cookie(_)))
}

/// The header map of a request whose lines do not travel raw, made ready for its
/// backend: hop-by-hop headers out, X-Forwarded-* and X-Request-Id in, and the Host.
fn rewrite_map(
    headers: &mut http::HeaderMap,
    conn: &ConnInfo,
    upgrade: bool,
    request_id: &HeaderValue,
    client_host: Option<HeaderValue>,
    backend_host: bool,
) {
    headers::remove_hop_by_hop(headers, upgrade);
    headers::set_forwarded(headers, &conn.client_ip, conn.https, client_host.as_ref());
    headers
        .entry(&X_REQUEST_ID)
        .or_insert_with(|| request_id.clone());
    // Each attempt writes its own (SPEC §9).
    headers.remove(&headers::TRACEPARENT);
    if let (false, Some(h)) = (backend_host, client_host) {
        headers.insert(header::HOST, h);
    }
}

/// Origin-form on the wire (the backend connection is already chosen): the route's
/// rewritten path, or the path of an absolute-form target (HTTP/2's :authority, or a
/// proxy-style HTTP/1 request line).
#[inline(always)]
fn origin_form(uri: &mut Uri, rewritten: Option<PathAndQuery>) {
    if let Some(pq) = rewritten {
        *uri = Uri::from(pq);
    } else if uri.scheme().is_some() || uri.authority().is_some() {
        let pq = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *uri = Uri::from(pq);
    }
}
