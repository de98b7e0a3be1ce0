//! Body wrappers. `RequestBody` streams the client's body to the backend and enforces
//! `max_body_bytes` on the way. `ResponseBody` streams the answer back and carries the
//! request's `Completion`, whose drop is the single end-of-request hook: it releases
//! the backend's in-flight count, marks the connection idle and writes the access log,
//! whether the body ended, failed or the client went away.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::client::{BackendBody, BodyError};
use super::conn::Activity;
use super::h1::H1Body;
use crate::metrics::{self, UpstreamStats};
use crate::telemetry::{self, AccessRecord};
use crate::upstream::Backend;

/// A request body as it comes from the client.
pub enum ClientBody {
    Empty,
    /// HTTP/1.x, read by sluice's own loop (h1/), over TLS or not.
    H1(H1Body),
    /// Read by hyper: HTTP/2.
    Hyper(Incoming),
}

/// The request body sent to a backend.
pub struct RequestBody {
    inner: ClientBody,
    /// Bytes still allowed; u64::MAX = unlimited.
    remaining: u64,
    /// Where to note why the body stopped, when whoever polls it cannot say (hyper,
    /// sending to an HTTP/2 backend): see `watch_stop`.
    stop: Option<Arc<AtomicU8>>,
}

/// What `RequestBody::watch_stop` notes.
pub const STOPPED_TOO_LARGE: u8 = 1;
pub const STOPPED_BY_CLIENT: u8 = 2;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body larger than max_body_bytes")]
    TooLarge,
    #[error("reading the client's request body")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RequestBody {
    /// `limit` 0 means unlimited.
    pub fn new(inner: ClientBody, limit: u64) -> RequestBody {
        RequestBody {
            inner,
            remaining: if limit == 0 { u64::MAX } else { limit },
            stop: None,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: ClientBody::Empty,
            remaining: u64::MAX,
            stop: None,
        }
    }

    /// From now on, a stop of this body (`STOPPED_TOO_LARGE`, `STOPPED_BY_CLIENT`) is
    /// noted in the returned cell, for a caller that hands the body to hyper, which
    /// only reports that the stream failed.
    pub fn watch_stop(&mut self) -> Arc<AtomicU8> {
        Arc::clone(self.stop.get_or_insert_with(Default::default))
    }

    fn note_stop(&self, why: u8) {
        if let Some(s) = &self.stop {
            s.store(why, Ordering::Relaxed);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            ClientBody::Empty => return Poll::Ready(None),
            ClientBody::H1(b) => ready!(Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(|e| RequestBodyError::Client(e.into()))),
            ClientBody::Hyper(b) => ready!(Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(|e| RequestBodyError::Client(e.into()))),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.inner = ClientBody::Empty;
                        this.note_stop(STOPPED_TOO_LARGE);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                    this.remaining -= n;
                }
            }
            Some(Err(_)) => this.note_stop(STOPPED_BY_CLIENT),
            None => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// Everything to settle when a request is over; see the module doc.
pub struct Completion {
    pub activity: Arc<Activity>,
    /// The upstream the request was routed to (its name and counters).
    pub upstream: Option<Arc<UpstreamStats>>,
    /// When the request arrived (its head was read).
    pub started: tokio::time::Instant,
    /// The status the client was answered with; 0 until one is chosen.
    pub status: u16,
    /// The backend of the request's last attempt (for the log and its counters).
    pub backend: Option<Arc<Backend>>,
    /// Does the request hold a slot of `backend`'s in-flight count?
    holding: bool,
    /// Present when the access log is on. Boxed: this struct travels inside every
    /// request's future and response body, which are moved several times.
    pub record: Option<Box<AccessRecord>>,
    /// The matched route's header rules, if it has any: its answer gets them.
    pub headers: Option<Arc<crate::upstream::RouteHeaders>>,
    /// The request's decision trace, when its client asked for one (SPEC §9).
    pub trace: Option<Box<crate::trace::Trace>>,
    /// The request's spans, while they are exported (SPEC §9 `[telemetry] otlp`).
    pub span: Option<Box<crate::otel::RequestSpan>>,
}

impl Completion {
    pub fn new(activity: Arc<Activity>) -> Completion {
        activity.begin_request();
        Completion {
            activity,
            upstream: None,
            started: tokio::time::Instant::now(),
            status: 0,
            backend: None,
            holding: false,
            record: None,
            headers: None,
            trace: None,
            span: None,
        }
    }

    /// Holds the slot of `backend`'s in-flight count the request took
    /// (`Backend::take_slot`) until this completion drops or `let_go`.
    pub fn hold(&mut self, backend: &Arc<Backend>) {
        backend.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.let_go();
        self.backend = Some(Arc::clone(backend));
        self.holding = true;
    }

    /// Gives back the slot held (an attempt is over: before a retry takes another).
    #[inline]
    pub fn let_go(&mut self) {
        if std::mem::take(&mut self.holding)
            && let Some(b) = &self.backend
        {
            b.release_slot();
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // One clock read serves the histogram, the access log and the connection's
        // idle time.
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        if let Some(u) = &self.upstream {
            let status = match self.status {
                0 => metrics::CLIENT_CLOSED,
                s => s,
            };
            u.duration.observe(elapsed);
            match &self.backend {
                Some(b) => b.stats.codes.add(status),
                None => u.unpicked.add(status),
            }
        }
        if let Some(r) = self.record.as_mut() {
            r.duration_ms = elapsed.as_secs_f64() * 1000.0;
            telemetry::access(
                r,
                self.upstream.as_ref().map_or("-", |u| &u.name),
                self.backend.as_ref().map_or("-", |b| &b.id),
            );
        }
        if let Some(t) = self.trace.take() {
            t.finish(self.status, elapsed.as_secs_f64() * 1000.0);
        }
        if let Some(s) = self.span.take() {
            let upstream = self.upstream.as_ref().map(|u| &u.name);
            s.finish(
                now,
                self.status,
                upstream,
                self.backend.as_ref().map(|b| &*b.id),
            );
        }
        self.let_go();
        self.activity.end_request_at(now);
    }
}

// Boxing the backend's body would cost an allocation per proxied response; sluice's
// own small answers are the rare case.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Proxied(BackendBody),
    Local(Option<Bytes>),
}

/// The response body sent to the client.
pub struct ResponseBody {
    kind: Kind,
    done: Option<Completion>,
}

impl ResponseBody {
    /// A backend's response body. Its connection goes back to the pool when the body
    /// has been read to the end (see `BackendBody`).
    pub fn proxied(inner: BackendBody, done: Completion) -> ResponseBody {
        ResponseBody {
            kind: Kind::Proxied(inner),
            done: Some(done),
        }
    }

    /// A body sluice writes itself (errors, admin answers).
    pub fn local(bytes: impl Into<Bytes>, done: Option<Completion>) -> ResponseBody {
        let bytes = bytes.into();
        ResponseBody {
            kind: Kind::Local((!bytes.is_empty()).then_some(bytes)),
            done,
        }
    }

    /// A body sluice wrote itself (not a backend's).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }

    /// A proxied response's header lines to copy out as they are (see `RawHead`).
    pub fn raw_head(&self) -> Option<&super::wire::RawHead> {
        match &self.kind {
            Kind::Proxied(b) => b.raw_head(),
            Kind::Local(_) => None,
        }
    }

    /// The backend's socket and the bytes still to come from it, when the rest of the
    /// body may pass to the client without being read here (see
    /// `BackendBody::splice_source`).
    pub fn splice_source(&self) -> Option<(&tokio::net::TcpStream, u64)> {
        match &self.kind {
            Kind::Proxied(b) => b.splice_source(),
            Kind::Local(_) => None,
        }
    }

    /// `n` bytes of the body went to the client straight from the backend's socket.
    pub fn passed(&mut self, n: u64) {
        if let Kind::Proxied(b) = &mut self.kind {
            b.passed(n);
        }
        self.count(n as usize);
    }

    fn count(&mut self, n: usize) {
        if let Some(r) = self.done.as_mut().and_then(|d| d.record.as_mut()) {
            r.bytes += n as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Proxied(inner) => Pin::new(inner).poll_frame(cx),
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len();
                    this.count(n);
                }
            }
            // End of the exchange: settle now rather than when the body is dropped.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.done = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Proxied(inner) => inner.is_end_stream(),
            Kind::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Proxied(inner) => inner.size_hint(),
            Kind::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
