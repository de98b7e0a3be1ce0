//! OpenTelemetry (SPEC §9): W3C Trace Context on every request, and, with
//! `[telemetry] otlp`, a span per request and one per attempt exported over OTLP/HTTP.
//!
//! Every request has a `TraceCtx`: the client's `traceparent` continued, or a new trace.
//! Each attempt at a backend sends a `traceparent` naming that attempt's span. The
//! access log carries the trace id. Spans are recorded only while an exporter runs and
//! the trace is sampled; the request then holds a `RequestSpan`, and its end queues it
//! for the exporter (export.rs), which batches off the request path.

pub mod context;
pub mod export;
pub mod span;

pub use context::TraceCtx;
pub use export::Sink;
pub use span::RequestSpan;
