//! Retries (SPEC §2 `[upstream.X.retry]`, §4): what is retried, where, and what never is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Reads one request head (and a Content-Length body) from `s`; None when the peer
/// closed first.
async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if got.len() >= end + 4 + len {
                return Some(got);
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A backend that reads each request whole, then closes the connection without
/// answering (after the bytes reached it: only idempotent requests may be retried).
async fn resetter(requests: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    requests.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    format!("http://{addr}")
}

fn first_over(backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nstrategy = \"first\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

async fn post(lb: &Sluice, body: &'static str) -> (StatusCode, String) {
    let req = Request::post("/")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (s, _, b) = lb.send(req).await;
    (s, b)
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_another_backend_whatever_the_method() {
    let dead = dead_addr().await;
    let good = TestBackend::echo().await;
    let lb = Sluice::start(&first_over(&[format!("http://{dead}"), good.url()], "")).await;
    assert_eq!(lb.get("/").await.0, StatusCode::OK);
    let (s, body) = post(&lb, "payload").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        echoed(&body)["body"],
        "payload",
        "the unsent body went to the other backend"
    );
}

#[tokio::test]
async fn after_bytes_reached_a_backend_only_idempotent_requests_are_retried() {
    let seen = Arc::new(AtomicUsize::new(0));
    let bad = resetter(seen.clone()).await;
    let good = TestBackend::replying("good").await;
    let lb = Sluice::start(&first_over(&[bad, good.url()], "")).await;

    let (s, _, body) = lb.get("/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "good"));
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    let (s, _) = post(&lb, "once only").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "POST is never replayed");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the backend saw the POST exactly once"
    );
    assert_eq!(good.hits(), 1, "only the GET reached the other backend");
}

#[tokio::test]
async fn statuses_are_retried_only_when_listed_and_never_for_post() {
    let unavailable = TestBackend::status(503).await;
    let good = TestBackend::replying("good").await;
    let backends = [unavailable.url(), good.url()];

    let default = Sluice::start(&first_over(&backends, "")).await;
    assert_eq!(default.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);

    let listed = Sluice::start(&first_over(
        &backends,
        "[upstream.web.retry]\non = [\"503\"]",
    ))
    .await;
    let (s, _, body) = listed.get("/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "good"));
    assert_eq!(post(&listed, "x").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn attempts_bounds_the_tries() {
    let seen = Arc::new(AtomicUsize::new(0));
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(resetter(seen.clone()).await);
    }
    let lb = Sluice::start(&first_over(
        &backends,
        "[upstream.web.retry]\nattempts = 2\non = [\"reset\"]",
    ))
    .await;
    assert_eq!(lb.get("/").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(seen.load(Ordering::SeqCst), 3, "one try and two retries");
}

#[tokio::test]
async fn stale_keep_alive_connections_never_surface_as_errors() {
    // A backend whose keep-alive timer always fires just as the next request arrives:
    // it answers the first request of each connection, and closes the connection
    // unanswered when another request comes on it. Every reuse of a pooled connection
    // meets that race.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    {
        let closed = closed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let closed = closed.clone();
                tokio::spawn(async move {
                    if read_request(&mut s).await.is_none() {
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    if read_request(&mut s).await.is_some() {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
    }
    let lb = Sluice::over(&[format!("http://{addr}")], "").await;
    for i in 0..40 {
        let (s, _, body) = lb.get(&format!("/{i}")).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok"), "request {i}");
    }
    assert!(closed.load(Ordering::SeqCst) >= 10, "the race was met");
}

#[tokio::test]
async fn a_backend_killed_and_restarted_under_steady_load_fails_no_get() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let c = TestBackend::replying("c").await;
    let lb = Arc::new(
        Sluice::over(
            &[a.url(), b.url(), c.url()],
            "[upstream.web.outlier]\nejection = \"100ms\"",
        )
        .await,
    );
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (lb, done) = (lb.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..150 {
                let (s, _, body) = lb.get("/").await;
                if s != StatusCode::OK {
                    failures.push(format!("{i}: {s} {body}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            failures
        }));
    }
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            tokio::time::timeout(DEADLINE, async {
                while done.load(Ordering::SeqCst) < n {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            })
            .await
            .unwrap()
        }
    };
    wait_for(100).await;
    let (port, handler) = (b.hold_port(), b.handler());
    b.crash().await; // listener and every connection closed
    wait_for(300).await;
    let b = port.restart(handler);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "failed GETs: {failures:?}");
    }
    assert!(b.hits() > 0, "the restarted backend got traffic again");
}
