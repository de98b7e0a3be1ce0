//! SPEC §4 forwarding rules: what reaches the backend, what comes back, routes, and
//! sluice's own answers.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let req = Request::post("/a/b?x=1&y=two")
        .header("x-custom", "v1")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from("hello body")))
        .unwrap();
    let (status, _, body) = lb.send(req).await;
    assert_eq!(status, StatusCode::OK);
    let j = echoed(&body);
    assert_eq!(j["method"], "POST");
    assert_eq!(j["uri"], "/a/b?x=1&y=two");
    assert_eq!(j["body"], "hello body");
    assert_eq!(echoed_header(&j, "x-custom"), ["v1"]);
    assert_eq!(echoed_header(&j, "content-length"), ["10"]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let req = Request::get("/")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let (_, headers, body) = lb.send(req).await;
    let j = echoed(&body);
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            echoed_header(&j, h).is_empty(),
            "{h} reached the backend: {j}"
        );
    }
    assert_eq!(echoed_header(&j, "x-end-to-end"), ["kept"]);
    // The echo backend answers with Connection naming x-hop, and Keep-Alive.
    assert!(headers.get("x-hop").is_none(), "{headers:?}");
    assert!(headers.get("keep-alive").is_none(), "{headers:?}");
}

#[tokio::test]
async fn header_rules_hold_when_lines_pass_as_written() {
    // No header here is named by Connection, so both heads travel as written (h1.rs,
    // wire.rs): the SPEC's rules must hold on that path too.
    let be = TestBackend::start(|req: Request<hyper::body::Incoming>| async move {
        let seen: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        http::Response::builder()
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-request-id", "theirs")
            .header("x-backend-kept", "1")
            .body(full(seen.join("\n")))
            .unwrap()
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let got = raw_exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nKeep-Alive: 5\r\n\
          Proxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: h2c\r\nX-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Request-Id: mine\r\n\
          X-End: kept\r\n\r\n",
        DEADLINE,
    )
    .await;
    let seen: Vec<&str> = body_of(&got).lines().collect();
    for gone in [
        "connection=",
        "keep-alive=",
        "proxy-connection=",
        "te=",
        "upgrade=",
    ] {
        assert!(
            !seen.iter().any(|l| l.starts_with(gone)),
            "{gone} reached the backend: {seen:?}"
        );
    }
    for kept in [
        "host=shop.example",
        "x-forwarded-for=203.0.113.9, 127.0.0.1",
        "x-forwarded-proto=http",
        "x-forwarded-host=shop.example",
        "x-request-id=mine",
        "x-end=kept",
    ] {
        let name = &kept[..=kept.find('=').unwrap()];
        let lines: Vec<&&str> = seen.iter().filter(|l| l.starts_with(name)).collect();
        assert_eq!(lines, [&kept], "{seen:?}");
    }
    let head = got[..got.find("\r\n\r\n").unwrap()].to_ascii_lowercase();
    assert!(!head.contains("\r\nkeep-alive:"), "{head}");
    assert!(!head.contains("\r\nproxy-connection:"), "{head}");
    assert!(head.contains("\r\nx-backend-kept: 1"), "{head}");
    assert_eq!(head.matches("\r\nx-request-id:").count(), 1, "{head}");
    assert!(head.contains("\r\nx-request-id: mine"), "{head}");
}

#[tokio::test]
async fn te_trailers_is_the_one_te_that_passes() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let req = Request::get("/")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = lb.send(req).await;
    assert_eq!(echoed_header(&echoed(&body), "te"), ["trailers"]);
    // A TE line with anything else does not pass, whichever way the head travels (two
    // X-Forwarded-For lines send it through the header map).
    for extra in ["", "X-Forwarded-For: a\r\nX-Forwarded-For: b\r\n"] {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTE: gzip\r\n{extra}Connection: close\r\n\r\n"
        );
        let got = raw_exchange(lb.addr, raw.as_bytes(), DEADLINE).await;
        let body = body_of(&got);
        assert_eq!(echoed_header(&echoed(body), "te"), ["trailers"], "{extra}");
    }
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host_and_a_request_without_one_gets_the_backends() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let got = raw_exchange(
        lb.addr,
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    let j = echoed(body_of(&got));
    assert_eq!(j["uri"], "/x");
    assert_eq!(echoed_header(&j, "host"), ["a.example"]);
    assert_eq!(echoed_header(&j, "x-forwarded-host"), ["a.example"]);
    // HTTP/1.0 without Host: the backend's authority, not no Host at all.
    let got = raw_exchange(lb.addr, b"GET /y HTTP/1.0\r\n\r\n", DEADLINE).await;
    let j = echoed(body_of(&got));
    assert_eq!(
        echoed_header(&j, "host"),
        [be.url().trim_start_matches("http://")]
    );
}

#[tokio::test]
async fn forwarded_headers_and_request_id() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let req = Request::get("/")
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .body(Full::default())
        .unwrap();
    let (_, headers, body) = lb.send(req).await;
    let j = echoed(&body);
    assert_eq!(
        echoed_header(&j, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(echoed_header(&j, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed_header(&j, "x-forwarded-host"), ["shop.example"]);
    assert_eq!(
        echoed_header(&j, "host"),
        ["shop.example"],
        "host_header preserve is the default"
    );
    let sent = echoed_header(&j, "x-request-id");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), 32);
    assert_eq!(
        headers["x-request-id"],
        sent[0].as_str(),
        "the generated id is returned"
    );

    let req = Request::get("/")
        .header("x-request-id", "abc-123")
        .body(Full::default())
        .unwrap();
    let (_, headers, body) = lb.send(req).await;
    assert_eq!(echoed_header(&echoed(&body), "x-request-id"), ["abc-123"]);
    assert_eq!(headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn host_header_backend_sends_the_backend_authority() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "host_header = \"backend\"").await;
    let req = Request::get("/")
        .header("host", "shop.example")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = lb.send(req).await;
    let j = echoed(&body);
    assert_eq!(echoed_header(&j, "host"), [be.addr.to_string()]);
    assert_eq!(echoed_header(&j, "x-forwarded-host"), ["shop.example"]);
}

#[tokio::test]
async fn routes_by_host_wildcard_and_prefix_with_strip() {
    let api = TestBackend::echo().await;
    let wild = TestBackend::replying("wild").await;
    let web = TestBackend::replying("web").await;
    let lb = Sluice::start(&format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
host = "api.example.com"
path_prefix = "/api/"
strip_prefix = true
upstream = "api"

[[route]]
host = "*.example.com"
upstream = "wild"

[[route]]
path_prefix = "/site"
upstream = "web"

[upstream.api]
backends = [{{ url = "{}" }}]
[upstream.wild]
backends = [{{ url = "{}" }}]
[upstream.web]
backends = [{{ url = "{}" }}]
"#,
        api.url(),
        wild.url(),
        web.url()
    ))
    .await;
    let get = |host: &'static str, path: &'static str| {
        let lb = &lb;
        async move {
            let req = Request::get(path)
                .header("host", host)
                .body(Full::default())
                .unwrap();
            lb.send(req).await
        }
    };
    let (s, _, b) = get("API.example.com:8080", "/api/v1/users?id=7").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(echoed(&b)["uri"], "/v1/users?id=7");
    let (_, _, b) = get("api.example.com", "/api").await;
    assert_eq!(echoed(&b)["uri"], "/");
    // /apix is not under /api: falls to the wildcard route.
    assert_eq!(get("api.example.com", "/apix").await.2, "wild");
    assert_eq!(get("deep.sub.example.com", "/").await.2, "wild");
    // The apex is not a subdomain; /site matches whole segments only.
    assert_eq!(get("example.com", "/site/page").await.2, "web");
    assert_eq!(get("other.test", "/site").await.2, "web");
    let (s, _, b) = get("example.com", "/sitemap").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b.contains("no route"));
}

#[tokio::test]
async fn unreachable_backend_is_502_without_its_address() {
    let dead = dead_addr().await;
    let lb = Sluice::over(&[format!("http://{dead}")], "").await;
    let (s, h, b) = lb.get("/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        !b.contains(&dead.port().to_string()),
        "body names the backend: {b}"
    );
    assert!(h.contains_key("x-request-id"));
}

#[tokio::test]
async fn slow_backend_is_504_after_response_timeout() {
    let be = TestBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        http::Response::new(full("late"))
    })
    .await;
    let lb = Sluice::over(&[be.url()], "response_timeout = \"200ms\"").await;
    let started = std::time::Instant::now();
    let (s, _, _) = lb.get("/").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn no_backend_is_503() {
    let lb =
        Sluice::start("[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.empty]\nbackends = []\n")
            .await;
    let (s, _, b) = lb.get("/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(b.contains("no healthy backend"));
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let be = TestBackend::replying("a").await;
    let lb = Sluice::over(&[be.url()], "").await;
    lb.get_many("/", 20).await;
    assert_eq!(be.hits(), 20);
    assert_eq!(
        be.connections(),
        1,
        "sequential requests share one pooled connection"
    );
}

#[tokio::test]
async fn response_body_streams_before_the_backend_finishes() {
    // The backend sends one chunk, then waits for the test's go-ahead before the rest.
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let be = TestBackend::start(move |_| {
        let mut go = go_rx.clone();
        async move {
            let stream = async_stream(move |tx| async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                    .await;
                let _ = go.wait_for(|g| *g).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            http::Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let resp = tokio::time::timeout(
        DEADLINE,
        client().request(Request::get(lb.url("/")).body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("first chunk arrives while the backend still holds the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    go_tx.send(true).unwrap();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.to_bytes(), "second");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let be = TestBackend::start(|req: Request<hyper::body::Incoming>| async move {
        // Echo the upload back as it arrives.
        http::Response::new(BodyExt::boxed(req.into_body()))
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = Request::put(lb.url("/"))
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload[..], "body corrupted in transit");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_same_port() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(lb.url("/over-h2?q=1"))
        .body(Full::default())
        .unwrap();
    let (s, h, body) = send_with(&h2, req).await;
    assert_eq!(s, StatusCode::OK);
    let j = echoed(&body);
    assert_eq!(j["uri"], "/over-h2?q=1");
    assert_eq!(
        j["version"], "HTTP/1.1",
        "the backend is spoken to in HTTP/1.1"
    );
    assert_eq!(echoed_header(&j, "x-forwarded-host"), [lb.addr.to_string()]);
    assert!(h.contains_key("x-request-id"));
    // The same listener still speaks HTTP/1.1.
    assert_eq!(lb.get("/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn upgrade_becomes_a_two_way_tunnel() {
    let be = TestBackend::upgrade_echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"PING");
}

/// A body stream fed by a task through a channel.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, hyper::Error>> + Send + Unpin
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Frame<Bytes>, hyper::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    ReceiverStream(rx)
}

struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Sends `()` on drop: tells the test that the backend's handler or body was abandoned.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_client_that_leaves_abandons_the_backend_request() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Receiver<()>>();
    let be = TestBackend::start(move |req: http::Request<hyper::body::Incoming>| {
        let (drop_tx, drop_rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(drop_rx);
        let guard = DropSignal(Some(drop_tx));
        async move {
            if req.uri().path() == "/stall" {
                // One piece of the body, then nothing more until the response is
                // dropped (sluice gives up its backend connection).
                let stream = async_stream(move |tx| async move {
                    let _guard = guard;
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"tick\n"))))
                        .await;
                    tx.closed().await;
                });
                return http::Response::new(BodyExt::boxed(StreamBody::new(stream)));
            }
            if req.uri().path() == "/hang" {
                // Never answers; dropping this future is the signal.
                let _guard = guard;
                loop {
                    std::future::pending::<()>().await;
                }
            }
            // /stream: a chunk every 20 ms for ever; the stream's end is the signal.
            let stream = async_stream(move |tx| async move {
                let _guard = guard;
                loop {
                    if tx
                        .send(Ok(Frame::data(Bytes::from_static(b"tick\n"))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            http::Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let mut rx = rx;
    for path in ["/stream", "/stall", "/hang", "POST /hang"] {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        // A request with a body the backend has read (then it hangs).
        let raw = match path.strip_prefix("POST ") {
            Some(p) => format!("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"),
            None => format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        };
        s.write_all(raw.as_bytes()).await.unwrap();
        let abandoned = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if path == "/stream" || path == "/stall" {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the stream started");
        }
        drop(s);
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(2), abandoned)
            .await
            .unwrap_or_else(|_| {
                panic!("{path}: backend request still running after the client left")
            })
            .ok();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_client_that_half_closes_mid_response_gets_an_orderly_end() {
    // One piece of the body, then nothing until the response is dropped.
    let be = TestBackend::start(|_req: http::Request<hyper::body::Incoming>| async move {
        let stream = async_stream(move |tx| async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"tick\n"))))
                .await;
            tx.closed().await;
        });
        http::Response::new(BodyExt::boxed(StreamBody::new(stream)))
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("tick") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the first piece");
        got.extend_from_slice(&buf[..n]);
    }
    // The client stops sending; sluice gives up the request and closes in order (a
    // reset is for a backend that breaks off).
    s.shutdown().await.unwrap();
    assert_eq!(how_it_ends(&mut s, DEADLINE).await, "orderly end");
}

#[tokio::test]
async fn a_backend_that_never_accepts_is_502_after_connect_timeout() {
    // A listener with a one-slot accept queue that nobody accepts from: once the queue
    // is full, the kernel drops further SYNs and connects hang.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let lb = Sluice::over(&[format!("http://{addr}")], "connect_timeout = \"300ms\"").await;
    let started = std::time::Instant::now();
    let (s, _, body) = lb.get("/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(!body.contains(&addr.port().to_string()));
    let t = started.elapsed();
    assert!(
        t >= Duration::from_millis(250) && t < Duration::from_secs(3),
        "took {t:?}"
    );
    drop(sock);
}

#[tokio::test]
async fn the_pool_keeps_at_most_max_idle_per_backend() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let be = {
        let gate = gate.clone();
        TestBackend::start(move |_| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                http::Response::new(full("ok"))
            }
        })
        .await
    };
    let lb = std::sync::Arc::new(Sluice::over(&[be.url()], "max_idle_per_backend = 2").await);
    let mut calls = Vec::new();
    for _ in 0..5 {
        let url = lb.url("/");
        calls.push(tokio::spawn(async move {
            let req = Request::get(url).body(Full::default()).unwrap();
            send_with(&client(), req).await.0
        }));
    }
    tokio::time::timeout(DEADLINE, async {
        while be.hits() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        be.connections(),
        5,
        "five concurrent requests, five backend connections"
    );
    gate.add_permits(5);
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    // Seen from the backend: sluice keeps two connections and closes the rest.
    be.wait_open(2, "capped at max_idle_per_backend").await;
    // And the two it kept serve the next requests.
    gate.add_permits(4);
    lb.get_many("/", 4).await;
    assert_eq!(be.connections(), 5, "no new connection");
}
