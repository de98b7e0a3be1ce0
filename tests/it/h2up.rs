//! HTTP/2 to backends (SPEC §2 `protocol = "h2c"` / `"h2"`): one multiplexed connection
//! per backend, the client's Host as `:authority`, trailers (gRPC) passed to HTTP/2
//! clients, health probes over HTTP/2, TLS with ALPN h2.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::support::*;

fn ca() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls/ca.pem")
}

/// Answers with the version it was asked in, the :authority/Host and the body length;
/// `/slow` waits for `gate`; `/healthz` fails unless asked over HTTP/2.
fn describe(
    gate: Arc<Notify>,
) -> impl Fn(
    http::Request<Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<BoxBody>> + Send>>
+ Send
+ Sync
+ 'static {
    move |req: http::Request<Incoming>| {
        let gate = gate.clone();
        Box::pin(async move {
            let version = req.version();
            if req.uri().path() == "/healthz" {
                let status = if version == http::Version::HTTP_2 {
                    200
                } else {
                    500
                };
                return http::Response::builder()
                    .status(status)
                    .body(full(""))
                    .unwrap();
            }
            if req.uri().path() == "/slow" {
                gate.notified().await;
            }
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap_or("").to_owned())
                })
                .unwrap_or_default();
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .map(|h| h.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            http::Response::new(full(format!("{version:?} {authority} {n} {xff}")))
        })
    }
}

#[tokio::test]
async fn h2c_backends_share_one_connection_and_see_the_clients_host() {
    let gate = Arc::new(Notify::new());
    let be = TestBackend::start(describe(gate.clone())).await;
    let lb = Arc::new(Sluice::over(&[be.url()], "protocol = \"h2c\"").await);

    // Four requests at once, before any connection exists: they wait for one to be
    // opened, and all go over it together.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let lb = lb.clone();
            tokio::spawn(async move { lb.get("/slow").await })
        })
        .collect();
    be.wait_hits(4, "all four are at the backend at once").await;
    gate.notify_waiters();
    for t in slow {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }

    let req = http::Request::get("/x")
        .header("host", "app.test")
        .body(Full::default())
        .unwrap();
    let (s, _, body) = lb.send(req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.starts_with("HTTP/2.0 app.test 0 127.0.0.1"), "{body}");

    // A body goes along.
    let req = http::Request::post("/up")
        .body(Full::new(Bytes::from(vec![b'z'; 300_000])))
        .unwrap();
    let (s, _, body) = lb.send(req).await;
    assert_eq!(
        (s, body.split(' ').nth(2)),
        (StatusCode::OK, Some("300000"))
    );
    assert_eq!(
        be.connections(),
        1,
        "one HTTP/2 connection carried everything"
    );
}

#[tokio::test]
async fn trailers_reach_http2_clients() {
    // A gRPC-like answer: data, then trailers.
    let be = TestBackend::start(|_req| async {
        let frames = frames_body(vec![
            http_body::Frame::data(Bytes::from_static(b"payload")),
            http_body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t
            }),
        ]);
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(frames)
            .unwrap()
    })
    .await;
    let lb = Sluice::over(&[be.url()], "protocol = \"h2c\"").await;
    let tcp = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/svc/Method", lb.addr))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "payload");
    assert_eq!(
        trailers.and_then(|t| t.get("grpc-status").cloned()),
        Some("0".parse().unwrap())
    );
}

/// A body of the given frames, in order.
fn frames_body(frames: Vec<http_body::Frame<Bytes>>) -> BoxBody {
    struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);
    impl futures_core::Stream for Frames {
        type Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
    http_body_util::StreamBody::new(Frames(frames.into()))
        .map_err(|e| match e {})
        .boxed()
}

#[tokio::test]
async fn h2_over_tls_and_health_probes_over_http2() {
    let gate = Arc::new(Notify::new());
    let be = TestBackend::start_tls("backend", describe(gate)).await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nprotocol = \"h2\"\nca_file = \"{}\"\nbackends = [{{ url = \"{}\" }}]\n\
         [upstream.web.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n",
        ca().display(),
        be.https_url()
    ))
    .await;
    let (s, _, body) = lb.get("/tls").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.starts_with("HTTP/2.0 "), "{body}");
    // Probes answer 200 only over HTTP/2: a few rounds in, the backend is still healthy.
    be.wait_hits(4, "probes reach the backend").await;
    let j = lb.status().await;
    assert_eq!(j["upstreams"][0]["backends"][0]["state"], "healthy");
}

#[tokio::test]
async fn a_protocol_switch_to_an_http2_backend_is_a_502() {
    let be = TestBackend::upgrade_echo().await;
    let lb = Sluice::over(&[be.url()], "protocol = \"h2c\"").await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(be.hits(), 0);
    // Not the backend's fault: no failure counted, no retry spent.
    let b = &lb.shared.snapshot.load().upstreams[0].all[0];
    assert_eq!(
        b.stats.failures.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        b.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_dead_http2_connection_is_replaced() {
    let gate = Arc::new(Notify::new());
    let be = TestBackend::start(describe(gate)).await;
    let (port, handler) = (be.hold_port(), be.handler());
    let lb = Sluice::over(&[be.url()], "protocol = \"h2c\"").await;
    assert_eq!(lb.get("/").await.0, StatusCode::OK);
    // The backend restarts: its connections die with it.
    be.crash().await;
    let be = port.restart(handler);
    let (s, _, body) = lb.get("/again").await;
    assert_eq!(
        (s, body.starts_with("HTTP/2.0")),
        (StatusCode::OK, true),
        "{body}"
    );
    assert_eq!(be.connections(), 1);
}

#[tokio::test]
async fn a_client_body_over_the_limit_is_a_413_not_a_backend_failure() {
    let gate = Arc::new(Notify::new());
    let be = TestBackend::start(describe(gate)).await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[limits]\nmax_body_bytes = 1000\n\
         [upstream.web]\nprotocol = \"h2c\"\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await;
    // Chunked, so the limit is found while the body streams to the backend.
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        s.write_all(b"200\r\n").await.unwrap();
        s.write_all(&[b'q'; 0x200]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let b = &lb.shared.snapshot.load().upstreams[0].all[0];
    assert_eq!(
        b.stats.failures.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the client's body, not the backend, was at fault"
    );
}

#[tokio::test]
async fn requests_waiting_for_an_http2_connection_share_its_failure() {
    // A backend that accepts and then says nothing: the TLS handshake stalls until
    // connect_timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                keep.push(s);
            }
        })
    };
    let lb = Arc::new(
        Sluice::start(&format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nprotocol = \"h2\"\n\
             ca_file = \"{}\"\nconnect_timeout = \"300ms\"\nbackends = [{{ url = \"https://{addr}\" }}]\n\
             [upstream.web.retry]\nattempts = 0\n",
            ca().display()
        ))
        .await,
    );
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let lb = lb.clone();
            tokio::spawn(async move { lb.get("/").await.0 })
        })
        .collect();
    for t in waiting {
        assert_eq!(t.await.unwrap(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one attempt to open, its failure shared, not one attempt after another"
    );
    held.abort();
}
