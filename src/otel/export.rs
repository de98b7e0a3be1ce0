//! Spans to an OTLP/HTTP collector, off the request path: a finished request's spans go
//! into a bounded queue (never waiting); one task takes them out in batches and
//! `POST`s each batch to `{otlp}/v1/traces` as protobuf. When the queue is full (the
//! collector is slow or down), spans are dropped and counted, never requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::span::{Ended, RequestSpan, encode};

/// Finished requests waiting for export, at most.
pub const QUEUE: usize = 4096;
/// Requests per export, at most.
const BATCH: usize = 512;
/// How long the first request of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// An export not answered within this is given up (its spans are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exporters running: while none does, a request does not look for one.
static SINKS: AtomicU64 = AtomicU64::new(0);

/// Is any exporter running? One relaxed load: what a request pays when none is.
#[inline]
pub fn exporting() -> bool {
    SINKS.load(Ordering::Relaxed) != 0
}

/// Spans dropped since start: the queue was full, or their export failed.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans a collector accepted since start.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// `sluice_spans_dropped_total`.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `sluice_spans_exported_total`.
pub fn exported() -> u64 {
    EXPORTED.load(Ordering::Relaxed)
}

/// A finished request, as queued.
struct Done {
    span: Box<RequestSpan>,
    at: Instant,
    status: u16,
    upstream: Option<Arc<str>>,
    backend: Option<Box<str>>,
}

impl Done {
    fn spans(&self) -> u64 {
        1 + self.span.attempts.len() as u64
    }
}

/// Where finished requests' spans go; its exporter task ends when the last clone of it
/// is dropped (a reload that changes `[telemetry]`), after sending what it holds.
pub struct Sink {
    tx: mpsc::Sender<Done>,
    /// The collector and service name it was made for (a reload keeps an equal one).
    pub made_for: (http::Uri, String),
    /// Counted in `SINKS` (test sinks are not).
    counted: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", self.made_for.0)
    }
}

impl Sink {
    /// Starts an exporter to `otlp` on the current tokio runtime; None outside one.
    pub fn start(otlp: &http::Uri, service_name: &str) -> Option<Arc<Sink>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let target = Target::of(otlp)?;
        handle.spawn(run(rx, target, service_name.to_owned()));
        SINKS.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(Sink {
            tx,
            made_for: (otlp.clone(), service_name.to_owned()),
            counted: true,
        }))
    }

    /// A sink whose exporter is gone: what is sent to it is counted dropped (tests).
    #[cfg(test)]
    pub fn closed() -> Arc<Sink> {
        let (tx, _) = mpsc::channel(1);
        Arc::new(Sink {
            tx,
            made_for: (http::Uri::from_static("http://127.0.0.1:9"), String::new()),
            counted: false,
        })
    }

    /// Queues a finished request's spans, or counts them dropped when the queue is full.
    pub(super) fn send(
        &self,
        span: Box<RequestSpan>,
        at: Instant,
        status: u16,
        upstream: Option<&Arc<str>>,
        backend: Option<&str>,
    ) {
        let done = Done {
            span,
            at,
            status,
            upstream: upstream.cloned(),
            backend: backend.map(Into::into),
        };
        if let Err(e) = self.tx.try_send(done) {
            let done = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            DROPPED.fetch_add(done.spans(), Ordering::Relaxed);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.counted {
            SINKS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The collector's address and the path spans are posted to.
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn of(uri: &http::Uri) -> Option<Target> {
        let host = uri.host()?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let base = uri.path().trim_end_matches('/');
        Some(Target {
            host,
            port,
            authority: uri.authority()?.to_string(),
            path: format!("{base}/v1/traces"),
        })
    }
}

async fn run(mut rx: mpsc::Receiver<Done>, target: Target, service_name: String) {
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    let mut failing = false;
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(d)) => batch.push(d),
                Ok(None) | Err(_) => break,
            }
        }
        let count: u64 = batch.iter().map(Done::spans).sum();
        let mut spans = Vec::with_capacity(count as usize);
        for d in &batch {
            let ended = Ended {
                at: d.at,
                status: d.status,
                upstream: d.upstream.as_deref(),
                backend: d.backend.as_deref(),
            };
            d.span.to_otlp(&ended, &mut spans);
        }
        drop(batch);
        let body = Bytes::from(encode(spans, &service_name));
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(&mut conn, &target, body)).await;
        match sent.unwrap_or_else(|_| Err("no answer within 10s".to_owned())) {
            Ok(()) => {
                EXPORTED.fetch_add(count, Ordering::Relaxed);
                if std::mem::take(&mut failing) {
                    tracing::info!(collector = %target.authority, "span export works again");
                }
            }
            Err(e) => {
                conn = None;
                DROPPED.fetch_add(count, Ordering::Relaxed);
                // One line per failing streak, not one per batch.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        collector = %target.authority,
                        error = %e,
                        "span export failed; spans are dropped (sluice_spans_dropped_total) until it works"
                    );
                }
            }
        }
    }
}

/// One export over the kept connection (opened when there is none).
async fn post(
    conn: &mut Option<http1::SendRequest<Full<Bytes>>>,
    target: &Target,
    body: Bytes,
) -> Result<(), String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (send, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        *conn = Some(send);
    }
    let Some(send) = conn.as_mut() else {
        return Err("no connection".to_owned());
    };
    send.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::post(&target.path)
        .header(http::header::HOST, &target.authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read to the end, so the connection can carry the next export.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otel::TraceCtx;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_never_waits() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = Arc::new(Sink {
            tx,
            made_for: (http::Uri::from_static("http://127.0.0.1:9"), String::new()),
            counted: false,
        });
        let before = dropped();
        for _ in 0..3 {
            let ctx = TraceCtx::new(None, None, true);
            let mut span = Box::new(RequestSpan::new(
                &sink,
                ctx,
                Instant::now(),
                &http::Method::GET,
                "/",
                [127, 0, 0, 1].into(),
            ));
            span.attempt(7, Instant::now(), "b:1", Some(200), "200");
            span.finish(Instant::now(), 200, None, Some("b:1"));
        }
        // One queued; two requests of two spans each dropped (other tests may add more).
        assert!(dropped() >= before + 4);
        assert_eq!(rx.recv().await.map(|d| d.spans()), Some(2));
        assert!(rx.try_recv().is_err());
    }
}
