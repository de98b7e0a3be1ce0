//! A request's attempts: the backend each goes to (sticky, the strategy, or a wait in
//! the queue), the send, and whether a failure may be retried elsewhere (SPEC §4).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header;
use http::{Request, Response};
use tokio::time::Instant;

use super::body::{Completion, RequestBody, RequestBodyError};
use super::client::{BackendBody, Failure, How, SendError};
use super::error::ProxyError;
use super::explain;
use super::forward::ConnInfo;
use super::outcome::{attempt_of, ms_since, note_failure, note_send_failure, observe_answer};
use super::prepare::Prepared;
use super::wire::WireError;
use crate::balance::Upstream;
use crate::balance::{Admit, Tried, sticky};
use crate::config::RetryOn;
use crate::health::outlier::{self, Outcome};
use crate::upstream::Backend;
use crate::upstream::retry::idempotent;

/// Sends the request to a backend picked by the strategy, retrying as the upstream
/// allows, until a response head arrives or the request fails.
pub(super) async fn attempts(
    conn: &ConnInfo,
    p: &mut Prepared,
    done: &mut Completion,
) -> Result<Response<BackendBody>, ProxyError> {
    let (key, upgrade, backend_host, now) = (p.key, p.upgrade, p.backend_host, p.now);
    let trace_ctx = p.trace_ctx;
    let upstream = &p.upstream;
    let breq = &mut p.breq;
    let outgoing = &mut p.outgoing;
    let mut pinned = p.carried.clone();
    let policy = Policy::new(upstream, breq, upgrade);
    if upgrade && upstream.client.is_h2() {
        // Not a backend's failure: no pick, no retry, nothing counted against one.
        return Err(ProxyError::BrokeOff(SendError::UpgradeToH2));
    }
    // Raw response lines for an HTTP/1.x client (a route's header rules are applied
    // to them as they are written).
    let raw_ok = !conn.via_hyper;
    let mut tried = Tried::default();
    let (mut tries, mut retries, mut fresh, mut stale_retried) = (0u32, 0u32, false, false);
    let mut counted = 0u32;
    loop {
        let mut started = if tries == 0 { now } else { Instant::now() };
        // A retry gives back its last attempt's in-flight slot before taking another.
        done.let_go();
        // A sticky client's backend (or the one a stale connection failed on) first,
        // while it may serve (a backup only while no primary can) and has room; else
        // the strategy, or a wait in the queue when every backend is full.
        let backend = match pinned.take() {
            Some(b) if upstream.may_serve(&b, started) && b.take_slot() => b,
            _ => match upstream.admit(key, &tried, started) {
                Admit::Backend(b) => b,
                Admit::Unavailable => return Err(ProxyError::NoHealthyBackend),
                Admit::Wait => {
                    // Boxed: the request future keeps no room for a wait it rarely has.
                    let b = Box::pin(upstream.wait(key, &tried, started)).await?;
                    // The wait is not the backend's time: its timeout starts now.
                    started = Instant::now();
                    b
                }
            },
        };
        tried.insert(&backend);
        if tries == 0
            && let Some(t) = done.trace.as_mut()
        {
            explain::pick(t, upstream, key, p.carried.as_deref(), &backend, started);
        }
        if retries > counted {
            // A retry the policy allowed, now that it has a backend to go to.
            counted = retries;
            upstream.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        done.hold(&backend);
        tries += 1;
        if let Some(r) = done.record.as_mut() {
            r.attempts = tries;
        }
        if backend_host {
            match outgoing.as_mut() {
                Some(o) => o.host = Some(backend.host_value.clone()),
                None => {
                    breq.headers_mut()
                        .insert(header::HOST, backend.host_value.clone());
                }
            }
        }
        // SPEC §9: the backend's parent span is this attempt's.
        let span_id = crate::otel::context::new_span_id();
        let how = How {
            traceparent: trace_ctx.header(span_id),
            upgrade,
            fresh,
            recycle: policy.recycle,
            raw_ok,
            now: started,
        };
        let deadline = started + upstream.config.response_timeout;
        let sent = upstream
            .client
            .send(&backend, breq, outgoing.as_ref(), how, &conn.dedicated);
        let result = tokio::time::timeout_at(deadline, sent).await;
        fresh = false;
        match result {
            Ok(Ok(mut resp)) => {
                let status = observe_answer(upstream, &backend, started, &resp);
                if let Some(t) = done.trace.as_mut() {
                    t.attempt(&backend.id, status);
                }
                if let Some(r) = done.record.as_mut() {
                    r.answered = Some((status, ms_since(started)));
                }
                if let Some(s) = done.span.as_mut() {
                    s.attempt(
                        span_id,
                        started,
                        &backend.id,
                        Some(status),
                        status.to_string(),
                    );
                }
                match Outcome::of_status(status) {
                    Outcome::Success => outlier::success(&backend),
                    outcome => {
                        note_failure(upstream, &backend, outcome, || format!("answered {status}"));
                        let on = RetryOn::Status(status);
                        if policy.may_retry(on, policy.replayable, false, retries, &tried) {
                            retries += 1;
                            if let Some(t) = done.trace.as_mut() {
                                explain::retry(t, on);
                            }
                            if let Some(r) = done.record.as_mut()
                                && let Some((s, ms)) = r.answered.take()
                            {
                                r.failed.push(attempt_of(&backend, s, ms));
                            }
                            continue; // dropping `resp` closes that connection
                        }
                    }
                }
                set_sticky(upstream, &p.carried, &backend, conn.https, &mut resp);
                return Ok(resp);
            }
            Ok(Err(Failure {
                error,
                unsent,
                reused,
            })) => {
                if let Some(e) = the_clients_fault(&error) {
                    return Err(e);
                }
                if let Some(t) = done.trace.as_mut() {
                    t.attempt(&backend.id, explain::failure(&error));
                }
                if let Some(r) = done.record.as_mut() {
                    let word = explain::failure(&error);
                    r.failed.push(attempt_of(&backend, word, ms_since(started)));
                }
                if let Some(s) = done.span.as_mut() {
                    s.attempt(
                        span_id,
                        started,
                        &backend.id,
                        None,
                        explain::failure(&error),
                    );
                }
                let resendable = unsent || policy.replayable;
                // A pooled connection that failed: most likely the keep-alive race (the
                // backend closed it as our request arrived), not the backend's fault.
                // Once per request, send it again on a fresh connection to the same
                // backend, outside `attempts` and the budget (at most one extra try per
                // request, so no storm), if it can be resent.
                if reused && !stale_retried && resendable {
                    if let Some(t) = done.trace.as_mut() {
                        t.note("retry", "stale_connection");
                    }
                    stale_retried = true;
                    tried.forget(&backend);
                    pinned = Some(Arc::clone(&backend));
                    fresh = true;
                    continue;
                }
                note_send_failure(upstream, &backend, &error);
                let on = if error.is_connect() {
                    RetryOn::ConnectFailure
                } else {
                    RetryOn::Reset
                };
                if policy.may_retry(on, resendable, unsent, retries, &tried) {
                    retries += 1;
                    if let Some(t) = done.trace.as_mut() {
                        explain::retry(t, on);
                    }
                    continue;
                }
                return Err(if error.is_connect() {
                    ProxyError::Connect(error)
                } else {
                    ProxyError::BrokeOff(error)
                });
            }
            Err(_) => {
                if let Some(t) = done.trace.as_mut() {
                    t.attempt(&backend.id, "timeout");
                }
                if let Some(r) = done.record.as_mut() {
                    r.failed
                        .push(attempt_of(&backend, "timeout", ms_since(started)));
                }
                if let Some(s) = done.span.as_mut() {
                    s.attempt(span_id, started, &backend.id, None, "timeout");
                }
                note_failure(upstream, &backend, Outcome::Failure, || {
                    format!(
                        "no answer within {}",
                        humantime::format_duration(upstream.config.response_timeout)
                    )
                });
                let on = RetryOn::Timeout;
                if policy.may_retry(on, policy.replayable, false, retries, &tried) {
                    retries += 1;
                    if let Some(t) = done.trace.as_mut() {
                        explain::retry(t, on);
                    }
                    continue;
                }
                return Err(ProxyError::ResponseTimeout);
            }
        }
    }
}

/// What the upstream's retry settings allow for one request.
struct Policy<'a> {
    upstream: &'a Upstream,
    /// The request may be sent again after it reached a backend: idempotent and
    /// bodyless (SPEC §4). One that did not reach any may always be.
    replayable: bool,
    /// No status retry can happen: the request's header map may serve the response.
    recycle: bool,
}

impl<'a> Policy<'a> {
    fn new(upstream: &'a Upstream, req: &Request<RequestBody>, upgrade: bool) -> Policy<'a> {
        let retry = &upstream.config.retry;
        let replayable = !upgrade
            && retry.attempts > 0
            && idempotent(req.method())
            && http_body::Body::is_end_stream(req.body());
        // Only a status retry sends a request again after a response head came back.
        let recycle = !replayable || !retry.on.iter().any(|o| matches!(o, RetryOn::Status(_)));
        Policy {
            upstream,
            replayable,
            recycle,
        }
    }

    /// May the request go to another backend after `retries` retries, for `on`?
    /// A request none of whose bytes reached a backend cost none of them anything: its
    /// retries are bounded by `attempts` and the backends not tried yet, not by the
    /// budget (SPEC §2), so a refusing backend never costs a client a 502 while
    /// another accepts.
    fn may_retry(
        &self,
        on: RetryOn,
        resendable: bool,
        unsent: bool,
        retries: u32,
        tried: &Tried,
    ) -> bool {
        let retry = &self.upstream.config.retry;
        resendable
            && retries < retry.attempts
            && retry.on.contains(&on)
            && (unsent && self.upstream.any_untried(tried, Instant::now())
                || self.upstream.budget.try_retry(Instant::now()))
    }
}

/// Pins the client to `backend` with the sticky cookie, unless its cookie named it
/// already.
fn set_sticky(
    upstream: &Upstream,
    carried: &Option<Arc<Backend>>,
    backend: &Arc<Backend>,
    https: bool,
    resp: &mut Response<BackendBody>,
) {
    let Some(sticky) = &upstream.config.sticky else {
        return;
    };
    if carried.as_ref().is_some_and(|b| Arc::ptr_eq(b, backend)) {
        return;
    }
    if let Some(v) = sticky::set_cookie(&sticky.cookie, backend, https) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The answer for a failure that was the client's, not the backend's: its body over
/// `max_body_bytes`, or its upload broken off or malformed (a malformed chunked body
/// says why). None for the backend's failures.
fn the_clients_fault(error: &SendError) -> Option<ProxyError> {
    match error {
        SendError::Body(RequestBodyError::TooLarge) => Some(ProxyError::BodyTooLarge),
        SendError::Body(RequestBodyError::Client(e)) => {
            let why = match e.downcast_ref::<super::h1::ClientBodyError>() {
                Some(super::h1::ClientBodyError::Wire(WireError::Chunked(why))) => why,
                _ => "client request body ended early",
            };
            Some(ProxyError::BadRequest(why))
        }
        _ => None,
    }
}
