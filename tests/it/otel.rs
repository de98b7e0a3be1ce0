//! OpenTelemetry (SPEC §9): W3C `traceparent` continued or started and passed to the
//! backend per attempt, `trace_id` in the access log, and spans exported over OTLP/HTTP
//! to a collector, here an in-test receiver that decodes what it gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::process::start_json;
use crate::support::*;

const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const GIVEN_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// An OTLP/HTTP receiver: keeps every span POSTed to `/v1/traces`.
struct Collector {
    backend: TestBackend,
    spans: Arc<Mutex<Vec<Span>>>,
    service: Arc<Mutex<Option<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = Arc::new(Mutex::new(None));
        let (s, n) = (Arc::clone(&spans), Arc::clone(&service));
        let backend = TestBackend::start(move |req: Request<hyper::body::Incoming>| {
            let (s, n) = (Arc::clone(&s), Arc::clone(&n));
            async move {
                let ok = req.method() == "POST"
                    && req.uri().path() == "/v1/traces"
                    && req.headers()["content-type"] == "application/x-protobuf";
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let Some(export) = ExportTraceServiceRequest::decode(body).ok().filter(|_| ok)
                else {
                    let mut r = Response::new(full("bad export"));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return r;
                };
                for rs in export.resource_spans {
                    let service = rs.resource.unwrap().attributes.into_iter().find_map(|kv| {
                        (kv.key == "service.name").then(|| string(kv.value.unwrap().value))
                    });
                    *n.lock().unwrap() = service;
                    for ss in rs.scope_spans {
                        s.lock().unwrap().extend(ss.spans);
                    }
                }
                Response::new(full(""))
            }
        })
        .await;
        Collector {
            backend,
            spans,
            service,
        }
    }

    /// The spans of trace `trace_id`, once `n` of them have arrived.
    async fn trace(&self, trace_id: &[u8], n: usize) -> Vec<Span> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let got: Vec<Span> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.trace_id == trace_id)
                    .cloned()
                    .collect();
                if got.len() >= n {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} spans of the trace did not arrive"))
    }
}

fn string(v: Option<Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A backend that answers with the `traceparent` it received.
async fn telling_backend() -> TestBackend {
    TestBackend::start(|req: Request<hyper::body::Incoming>| async move {
        let tp = req
            .headers()
            .get_all("traceparent")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        Response::new(full(tp))
    })
    .await
}

fn config(otlp: Option<&str>, backends: &[String]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    let telemetry = otlp.map_or(String::new(), |url| {
        format!("[telemetry]\notlp = \"{url}\"\nservice_name = \"edge\"\n")
    });
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nstrategy = \"first\"\nbackends = [{}]\n{telemetry}",
        list.join(", ")
    )
}

fn get(lb: &Sluice, path: &str, traceparent: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(lb.url(path));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    req.body(Full::default()).unwrap()
}

#[tokio::test]
async fn a_clients_trace_is_continued_and_exported_with_a_span_per_attempt() {
    let collector = Collector::start().await;
    let dead = dead_addr().await;
    let live = telling_backend().await;
    let lb = Sluice::start(&config(
        Some(&collector.backend.url()),
        &[format!("http://{dead}"), live.url()],
    ))
    .await;
    let (status, _, seen) = lb.send(get(&lb, "/orders/7?x=1", Some(GIVEN))).await;
    assert_eq!(status, StatusCode::OK);
    // One traceparent, the client's trace, a parent that is not the client's span.
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", GIVEN_TRACE, "01"));
    assert_ne!(parts[2], "00f067aa0ba902b7");

    let spans = collector.trace(&unhex(GIVEN_TRACE), 3).await;
    assert_eq!(collector.service.lock().unwrap().as_deref(), Some("edge"));
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(server.parent_span_id, unhex("00f067aa0ba902b7"));
    assert_eq!(
        attribute(server, "url.path")
            .map(|v| string(Some(v)))
            .as_deref(),
        Some("/orders/7")
    );
    assert_eq!(
        attribute(server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    let attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(
            a.parent_span_id, server.span_id,
            "an attempt is the request's child"
        );
        assert!(a.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(a.end_time_unix_nano <= server.end_time_unix_nano);
    }
    let outcome = |a: &Span| string(attribute(a, "sluice.outcome"));
    let refused = attempts
        .iter()
        .find(|a| outcome(a) == "refused")
        .expect("refused");
    assert_eq!(refused.status.as_ref().unwrap().code, 2, "an error");
    assert_eq!(
        string(attribute(refused, "server.address")),
        dead.to_string()
    );
    let answered = attempts
        .iter()
        .find(|a| outcome(a) == "200")
        .expect("answered");
    // The backend's parent is the span of the attempt that reached it.
    assert_eq!(answered.span_id, unhex(parts[2]));
}

#[tokio::test]
async fn without_one_a_trace_is_started_and_a_bad_one_is_not_passed_on() {
    let live = telling_backend().await;
    let lb = Sluice::start(&config(None, &[live.url()])).await;
    let mut traces = Vec::new();
    for given in [
        None,
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
    ] {
        let (_, headers, seen) = lb.send(get(&lb, "/", given)).await;
        let parts: Vec<&str> = seen.split('-').collect();
        assert_eq!(parts.len(), 4, "{seen}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_ne!(parts[1], "0".repeat(32));
        assert_ne!(parts[1], GIVEN_TRACE);
        // Not sampled: nothing records it here.
        assert_eq!(parts[3], "00");
        // The new trace's id is the request id sluice made: one id for logs and traces.
        assert_eq!(parts[1], headers["x-request-id"], "{seen}");
        traces.push(parts[1].to_owned());
    }
    assert_ne!(traces[0], traces[1]);
    // A client's own request id is no trace id: a random one then.
    let req = Request::get(lb.url("/"))
        .header("x-request-id", "0123456789abcdef0123456789abcdef")
        .body(Full::default())
        .unwrap();
    let (_, _, seen) = lb.send(req).await;
    assert!(!seen.contains("0123456789abcdef0123456789abcdef"), "{seen}");
    // HTTP/2 clients (the header map's path): continued too, one line to the backend.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let (_, _, seen) = send_with(&h2, get(&lb, "/", Some(GIVEN))).await;
    assert!(seen.starts_with(&format!("00-{GIVEN_TRACE}-")), "{seen}");
    assert!(
        !seen.contains('|') && !seen.contains("00f067aa0ba902b7"),
        "{seen}"
    );
}

#[tokio::test]
async fn unsampled_traces_are_continued_but_not_exported() {
    let collector = Collector::start().await;
    let live = telling_backend().await;
    let lb = Sluice::start(&config(Some(&collector.backend.url()), &[live.url()])).await;
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let (_, _, seen) = lb.send(get(&lb, "/", Some(unsampled))).await;
    assert!(seen.starts_with("00-11111111111111111111111111111111-") && seen.ends_with("-00"));
    // A sampled request after it: once its spans are in, the unsampled one's would be.
    lb.send(get(&lb, "/", Some(GIVEN))).await;
    collector.trace(&unhex(GIVEN_TRACE), 2).await;
    let unsampled_spans = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == unhex("11111111111111111111111111111111"))
        .count();
    assert_eq!(unsampled_spans, 0);
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let down = dead_addr().await;
    let live = TestBackend::replying("ok").await;
    let lb = Sluice::start(&config(Some(&format!("http://{down}")), &[live.url()])).await;
    let before = lb.metric("sluice_spans_dropped_total").await.unwrap();
    for _ in 0..20 {
        let (status, _, body) = lb.send(get(&lb, "/", Some(GIVEN))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    // 20 requests of one attempt each: 40 spans, dropped when the export fails.
    tokio::time::timeout(DEADLINE, async {
        while lb.metric("sluice_spans_dropped_total").await.unwrap() < before + 40.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("dropped spans counted");
}

#[tokio::test]
async fn access_lines_carry_the_trace_id() {
    let live = TestBackend::replying("a").await;
    let (p, addr) = start_json(&["-l", "127.0.0.1:0", "-b", &live.url()]).await;
    let req = Request::get(format!("http://{addr}/t"))
        .header("traceparent", GIVEN)
        .header("x-request-id", "rid-otel")
        .body(Full::default())
        .unwrap();
    assert_eq!(send_with(&client(), req).await.0, StatusCode::OK);
    let (line, _) = p.line_then_stop("rid-otel").await;
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["trace_id"], GIVEN_TRACE, "{line}");
}

#[tokio::test]
async fn an_http2_backend_gets_one_traceparent_too() {
    let live = telling_backend().await;
    let toml = config(None, &[live.url()]).replace(
        "strategy = \"first\"",
        "strategy = \"first\"\nprotocol = \"h2c\"",
    );
    let lb = Sluice::start(&toml).await;
    let (status, _, seen) = lb.send(get(&lb, "/", Some(GIVEN))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.starts_with(&format!("00-{GIVEN_TRACE}-")), "{seen}");
    assert!(
        !seen.contains('|') && !seen.contains("00f067aa0ba902b7"),
        "{seen}"
    );
}

/// SPEC §9: `tracestate` is continued with the trace, unchanged, over both client paths.
#[tokio::test]
async fn tracestate_passes_on_unchanged() {
    let live = TestBackend::start(|req: Request<hyper::body::Incoming>| async move {
        let state = req
            .headers()
            .get("tracestate")
            .map(|v| v.to_str().unwrap().to_owned());
        Response::new(full(state.unwrap_or_default()))
    })
    .await;
    let lb = Sluice::start(&config(None, &[live.url()])).await;
    let with_state = || {
        Request::get(lb.url("/"))
            .header("traceparent", GIVEN)
            .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
            .body(Full::default())
            .unwrap()
    };
    let (_, _, seen) = lb.send(with_state()).await;
    assert_eq!(seen, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let (_, _, seen) = send_with(&h2, with_state()).await;
    assert_eq!(seen, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
}
