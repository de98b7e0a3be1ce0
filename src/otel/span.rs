//! A request's spans, as recorded while it is served and as sent to a collector: one
//! server span for the request and a client span for each attempt at a backend, its
//! child, encoded as an OTLP `ExportTraceServiceRequest` (protobuf).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;
use tokio::time::Instant;

use super::context::TraceCtx;
use super::export::Sink;

/// A request being served, for export when it ends.
#[derive(Debug)]
pub struct RequestSpan {
    pub ctx: TraceCtx,
    /// When the request arrived, in both clocks: attempts' instants are placed on the
    /// wall clock from it, so a request reads the wall clock once.
    wall: u64,
    started: Instant,
    method: http::Method,
    path: String,
    client: IpAddr,
    pub attempts: Vec<AttemptSpan>,
    /// Where it goes when the request ends.
    sink: Option<Arc<Sink>>,
}

/// One attempt at a backend.
#[derive(Debug)]
pub struct AttemptSpan {
    pub span_id: u64,
    start: Instant,
    end: Instant,
    backend: Box<str>,
    /// A status code, or why there was none (`refused`, `timeout`…).
    outcome: Cow<'static, str>,
    status: Option<u16>,
}

/// How the request ended, told when it is exported.
#[derive(Debug, Clone, Copy)]
pub struct Ended<'a> {
    pub at: Instant,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub backend: Option<&'a str>,
}

impl RequestSpan {
    pub fn new(
        sink: &Arc<Sink>,
        ctx: TraceCtx,
        started: Instant,
        method: &http::Method,
        path: &str,
        client: IpAddr,
    ) -> RequestSpan {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let wall = wall.saturating_sub(nanos(Instant::now().saturating_duration_since(started)));
        RequestSpan {
            ctx,
            wall,
            started,
            method: method.clone(),
            path: path.to_owned(),
            client,
            attempts: Vec::new(),
            sink: Some(Arc::clone(sink)),
        }
    }

    /// The request ended at `at`, answered `status` (0: the client left first): its
    /// spans go to the exporter.
    pub fn finish(
        mut self: Box<Self>,
        at: Instant,
        status: u16,
        upstream: Option<&Arc<str>>,
        backend: Option<&str>,
    ) {
        if let Some(sink) = self.sink.take() {
            sink.send(self, at, status, upstream, backend);
        }
    }

    /// Records an attempt that began at `start` and was answered (`status`) or failed
    /// (`outcome`) now. Its span id must be the one its `traceparent` named.
    pub fn attempt(
        &mut self,
        span_id: u64,
        start: Instant,
        backend: &str,
        status: Option<u16>,
        outcome: impl Into<Cow<'static, str>>,
    ) {
        self.attempts.push(AttemptSpan {
            span_id,
            start,
            end: Instant::now(),
            backend: backend.into(),
            outcome: outcome.into(),
            status,
        });
    }

    fn unix(&self, at: Instant) -> u64 {
        self.wall
            .saturating_add(nanos(at.saturating_duration_since(self.started)))
    }

    /// The OTLP spans of this request: the request's, then its attempts'.
    pub fn to_otlp(&self, end: &Ended<'_>, out: &mut Vec<Span>) {
        let ctx = &self.ctx;
        let trace_id = ctx.trace_id();
        let mut attributes = vec![
            kv("http.request.method", self.method.as_str()),
            kv("url.path", &self.path),
            kv("client.address", &self.client.to_string()),
            int("http.response.status_code", i64::from(end.status)),
        ];
        if let Some(u) = end.upstream {
            attributes.push(kv("sluice.upstream", u));
        }
        if let Some(b) = end.backend {
            attributes.push(kv("sluice.backend", b));
        }
        out.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: ctx.span_id.to_be_bytes().to_vec(),
            parent_span_id: ctx.parent().map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(ctx.flags),
            name: self.method.as_str().to_owned(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: self.wall,
            end_time_unix_nano: self.unix(end.at),
            attributes,
            status: Some(status_of(end.status >= 500 || end.status == 0, "")),
            ..Default::default()
        });
        for (n, a) in self.attempts.iter().enumerate() {
            let mut attributes = vec![
                kv("server.address", &a.backend),
                int("sluice.attempt", n as i64 + 1),
                kv("sluice.outcome", &a.outcome),
            ];
            if let Some(s) = a.status {
                attributes.push(int("http.response.status_code", i64::from(s)));
            }
            let failed = a.status.is_none_or(|s| s >= 500);
            out.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: a.span_id.to_be_bytes().to_vec(),
                parent_span_id: ctx.span_id.to_be_bytes().to_vec(),
                flags: u32::from(ctx.flags),
                name: self.method.as_str().to_owned(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: self.unix(a.start),
                end_time_unix_nano: self.unix(a.end),
                attributes,
                status: Some(status_of(failed, &a.outcome)),
                ..Default::default()
            });
        }
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn status_of(failed: bool, message: &str) -> Status {
    Status {
        message: if failed {
            message.to_owned()
        } else {
            String::new()
        },
        code: if failed {
            status::StatusCode::Error as i32
        } else {
            status::StatusCode::Unset as i32
        },
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The protobuf body of one export: `spans` from the service `service_name`.
pub fn encode(spans: Vec<Span>, service_name: &str) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service_name)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sluice".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_and_its_attempts_encode_as_parent_and_children() {
        let given = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceCtx::new(Some(given), None, true);
        let start = Instant::now();
        let sink = Sink::closed();
        let mut r = RequestSpan::new(
            &sink,
            ctx,
            start,
            &http::Method::GET,
            "/x",
            [127, 0, 0, 1].into(),
        );
        let backend = "127.0.0.2:80";
        tokio::time::advance(std::time::Duration::from_millis(3)).await;
        r.attempt(1, start, backend, None, "refused");
        let second = Instant::now();
        tokio::time::advance(std::time::Duration::from_millis(5)).await;
        r.attempt(2, second, backend, Some(200), "200");
        let end = Ended {
            at: Instant::now(),
            status: 200,
            upstream: Some("web"),
            backend: Some("127.0.0.2:80"),
        };
        let mut spans = Vec::new();
        r.to_otlp(&end, &mut spans);
        let body = encode(spans, "edge");
        let got = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let rs = &got.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        let (req, a1, a2) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(req.trace_id, ctx.trace_id());
        assert_eq!(
            req.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(req.end_time_unix_nano - req.start_time_unix_nano, 8_000_000);
        assert_eq!(
            (a1.parent_span_id.as_slice(), a1.span_id.as_slice()),
            (&ctx.span_id.to_be_bytes()[..], &1u64.to_be_bytes()[..])
        );
        assert_eq!(a1.end_time_unix_nano - a1.start_time_unix_nano, 3_000_000);
        assert_eq!(
            a1.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert_eq!(
            a2.start_time_unix_nano - req.start_time_unix_nano,
            3_000_000
        );
        assert_eq!(
            a2.status.as_ref().unwrap().code,
            status::StatusCode::Unset as i32
        );
        assert_eq!(a2.kind, span::SpanKind::Client as i32);
    }
}
