//! `[limits]` and request framing (SPEC §2, §4): 431, 413, slow heads, idle clients,
//! max_connections, and framing a proxy must refuse.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

async fn with_limits(be: &TestBackend, limits: &str) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[limits]\n{limits}\n[upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let be = TestBackend::replying("a").await;
    // Below hyper's 8 KiB buffer floor (sluice's own check) and above it (hyper's).
    for (limit, size) in [("2KiB", 3_000), ("16KiB", 20_000)] {
        let lb = with_limits(&be, &format!("max_header_bytes = \"{limit}\"")).await;
        let req = Request::get("/")
            .header("x-big", "v".repeat(size))
            .body(Full::default())
            .unwrap();
        assert_eq!(
            lb.send(req).await.0,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "limit {limit}"
        );
        let req = Request::get("/")
            .header("x-small", "v".repeat(500))
            .body(Full::default())
            .unwrap();
        assert_eq!(lb.send(req).await.0, StatusCode::OK, "limit {limit}");
    }
    assert_eq!(be.hits(), 2, "oversized heads never reach the backend");
}

#[tokio::test]
async fn more_than_a_hundred_header_lines_get_431() {
    let be = TestBackend::replying("a").await;
    let lb = with_limits(&be, "").await;
    // 90 lines (the test backend's own limit leaves room for the X-Forwarded-* ones).
    for (lines, want) in [(90, "200"), (101, "431")] {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 2..lines {
            req.push_str(&format!("X-H{i}: v\r\n"));
        }
        req.push_str("\r\n");
        let got = raw_exchange(lb.addr, req.as_bytes(), DEADLINE).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {want}")),
            "{lines} lines: {got}"
        );
    }
    assert_eq!(be.hits(), 1, "the refused head never reached the backend");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let be = TestBackend::echo().await;
    let lb = with_limits(&be, "max_body_bytes = 1000").await;
    // Declared too large: refused before any backend is contacted.
    let req = Request::post("/")
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    assert_eq!(lb.send(req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(be.hits(), 0);
    // Chunked, no length: cut off while streaming.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        s.write_all(b"200\r\n").await.unwrap();
        s.write_all(&[b'y'; 0x200]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Within the limit: passes.
    let req = Request::post("/")
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    assert_eq!(lb.send(req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_trickled_head_is_cut_off_while_others_are_served() {
    let be = TestBackend::replying("a").await;
    let lb = with_limits(&be, "header_read_timeout = \"300ms\"").await;
    let mut slow = TcpStream::connect(lb.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Others are served meanwhile.
    assert_eq!(lb.get("/").await.0, StatusCode::OK);
    // Keep trickling a header byte by byte; the head never completes in time.
    let trickle = async {
        for b in b"X-Slow: 1234567890" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    trickle.await;
    assert!(
        closes_within(&mut slow, Duration::from_secs(3)).await,
        "slow head not cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn idle_keep_alive_clients_are_closed_after_idle_timeout() {
    let be = TestBackend::replying("a").await;
    let lb = with_limits(
        &be,
        "idle_timeout = \"400ms\"\nheader_read_timeout = \"5s\"",
    )
    .await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // The response arrives, then the idle connection is closed by sluice well before
    // the 5s header timer could have done it.
    let got = read_until_close(&mut s, Duration::from_secs(4)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let t = started.elapsed();
    assert!(
        t >= Duration::from_millis(350) && t < Duration::from_secs(3),
        "closed after {t:?}"
    );
}

// That requests a little apart inside `idle_timeout` keep a connection is a unit test
// on paused time (conn.rs): timing it here would depend on the machine's load.

#[tokio::test]
async fn over_max_connections_new_clients_wait() {
    let be = TestBackend::replying("a").await;
    let lb = with_limits(&be, "max_connections = 2").await;
    let mut c1 = TcpStream::connect(lb.addr).await.unwrap();
    c1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut c2 = TcpStream::connect(lb.addr).await.unwrap();
    c2.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Both are served and stay open (keep-alive).
    for c in [&mut c1, &mut c2] {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(c, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // A third connection is not accepted while two are open: its request waits.
    let mut c3 = TcpStream::connect(lb.addr).await.unwrap();
    c3.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = read_until_close(&mut c3, Duration::from_millis(300)).await;
    assert!(early.is_empty(), "served over max_connections: {early}");
    drop(c1);
    let late = read_until_close(&mut c3, DEADLINE).await;
    assert!(late.starts_with("HTTP/1.1 200"), "{late}");
}

#[tokio::test]
async fn conflicting_framing_is_400_and_never_forwarded() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let cases: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ];
    for raw in cases {
        let resp = raw_exchange(lb.addr, raw, Duration::from_secs(3)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{}: {resp}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(be.hits(), 0);
}
