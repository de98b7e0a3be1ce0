//! The backend side of the wire (sluice's own HTTP/1.1 client): every response framing
//! a backend may use reaches the client intact, broken answers are 502, and an early
//! answer to an upload is not stuck behind it. The backends here are raw sockets that
//! write exactly the bytes under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// What a scripted backend does with one request.
struct Reply {
    bytes: Vec<u8>,
    /// Close the connection after writing.
    close: bool,
}

fn reply(bytes: impl Into<Vec<u8>>, close: bool) -> Reply {
    Reply {
        bytes: bytes.into(),
        close,
    }
}

/// Reads one request head from `s` (bodies are not read). None when the peer closed.
async fn read_head(s: &mut TcpStream, got: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            got.drain(..end + 4);
            return Some(head);
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A raw backend answering each request head with `script(head)`; returns its URL and
/// its count of accepted connections.
async fn scripted(script: fn(&str) -> Reply) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&conns);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(head) = read_head(&mut s, &mut got).await {
                    let r = script(&head);
                    if s.write_all(&r.bytes).await.is_err() || r.close {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), conns)
}

/// A body of 2 MiB and 5 bytes, each byte telling its place.
const BIG: std::ops::Range<usize> = 0..2 * 1024 * 1024 + 5;

fn big() -> &'static str {
    static BODY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BODY.get_or_init(|| BIG.map(|i| (b'a' + (i % 26) as u8) as char).collect())
}

fn path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("/")
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_intact() {
    let (url, conns) = scripted(|head| match path(head) {
        "/chunked" => reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-A: 1\r\n\r\n",
            false,
        ),
        "/length" => reply("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlength", false),
        "/head" => reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
        "/no-content" => reply("HTTP/1.1 204 No Content\r\n\r\n", false),
        "/continue" => reply(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate",
            false,
        ),
        "/close" => reply("HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        // Large enough to pass through a pipe (splice) from one socket to the other.
        "/big" => {
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BIG.len())
                .into_bytes();
            r.extend_from_slice(big().as_bytes());
            reply(r, false)
        }
        _ => reply("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    })
    .await;
    let lb = Sluice::over(&[url], "").await;
    for (p, want) in [
        ("/chunked", "hello world"),
        ("/length", "length"),
        ("/no-content", ""),
        ("/continue", "late"),
        ("/close", "until the end"),
        ("/chunked", "hello world"),
        ("/big", big()),
        ("/length", "length"),
        ("/big", big()),
    ] {
        let (status, _, body) = lb.get(p).await;
        assert!(status.is_success(), "{p}: {status}");
        assert!(
            body == want,
            "{p}: {} bytes, wanted {}",
            body.len(),
            want.len()
        );
    }
    let req = Request::builder()
        .method(Method::HEAD)
        .uri(lb.url("/head"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = lb.send(req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(headers["content-length"], "5", "HEAD keeps the length");
    // Only the close-delimited answer cost a connection; the rest reused one (also
    // after a body passed through a pipe).
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn broken_backend_answers_are_502() {
    let (url, _) = scripted(|head| match path(head) {
        "/garbage" => reply("SMTP ready\r\n\r\n", true),
        "/lengths" => reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            true,
        ),
        "/huge" => reply(
            format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)),
            true,
        ),
        "/switch" => reply("HTTP/1.1 101 Switching Protocols\r\n\r\n", true),
        _ => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    })
    .await;
    let lb = Sluice::over(&[url], "[upstream.web.retry]\nattempts = 0\n").await;
    for p in ["/garbage", "/lengths", "/huge", "/switch"] {
        let (status, _, body) = lb.get(p).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{p}");
        assert!(!body.contains("127.0.0.1"), "{p}: {body}");
    }
    assert_eq!(lb.get("/").await.2, "ok");
}

#[tokio::test]
async fn a_request_retried_after_a_broken_answer_keeps_its_headers() {
    // The first backend answers with a broken head; the request goes on to the second.
    let (broken, _) =
        scripted(|_| reply("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true)).await;
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[broken, be.url()], "strategy = \"first\"").await;
    // Raw lines, and the header map (two X-Forwarded-For lines take it).
    for extra in [
        "",
        "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\n",
    ] {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: shop\r\nX-Custom: 1\r\n{extra}Connection: close\r\n\r\n"
        );
        let got = raw_exchange(lb.addr, raw.as_bytes(), DEADLINE).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        let j = echoed(body_of(&got));
        assert_eq!(echoed_header(&j, "host"), ["shop"], "{extra}");
        assert_eq!(echoed_header(&j, "x-custom"), ["1"], "{extra}");
        assert_eq!(echoed_header(&j, "x-forwarded-for").len(), 1, "{extra}");
    }
}

#[tokio::test]
async fn a_backend_cut_mid_body_cuts_the_client_off() {
    let (url, conns) = scripted(|head| match path(head) {
        "/cut" => reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
            true,
        ),
        "/big-cut" => {
            let mut r =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BIG.len()).into_bytes();
            r.extend_from_slice(&big().as_bytes()[..300 * 1024]);
            reply(r, true)
        }
        "/cut-chunked" => reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            true,
        ),
        _ => reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    })
    .await;
    let lb = Sluice::over(&[url], "").await;
    // Whether the head got out before the cut depends on timing; either way the
    // client must not see a complete answer.
    let req = Request::get(lb.url("/cut"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let complete = match client().request(req).await {
        Err(_) => false,
        Ok(resp) => tokio::time::timeout(DEADLINE, resp.into_body().collect())
            .await
            .unwrap()
            .is_ok(),
    };
    assert!(!complete, "the client must see the answer end early");
    assert_eq!(lb.get("/").await.2, "ok");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the cut connection was not reused"
    );
    // A large body (passed through a pipe) cut by its backend: the client gets what
    // came, then a reset.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /big-cut HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(how_it_ends(&mut s, DEADLINE).await, "reset");
    assert_eq!(lb.get("/").await.2, "ok");
    // An HTTP/1.0 client, whose answer of unknown length ends with the connection:
    // a cut shows as a reset, not as an orderly end.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /cut-chunked HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(how_it_ends(&mut s, DEADLINE).await, "reset");
}

#[tokio::test]
async fn an_early_answer_to_an_upload_is_not_stuck_behind_it() {
    // Refuses every upload at once, without reading it, and keeps the socket open.
    let (url, _) = scripted(|_| {
        reply(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope",
            false,
        )
    })
    .await;
    let lb = Sluice::over(&[url], "").await;
    // Far more than the socket buffers hold, so sluice cannot finish sending first.
    let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
    let req = Request::post(lb.url("/upload"))
        .body(Full::new(big))
        .unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), lb.send(req))
        .await
        .expect("the answer came while the upload was still going");
    assert_eq!((status.as_u16(), body.as_str()), (413, "nope"));
}

#[tokio::test]
async fn a_request_body_of_unknown_length_is_sent_chunked_and_arrives_whole() {
    // The backend answers with what it received, as hyper decoded it.
    let be = TestBackend::start(|req: Request<hyper::body::Incoming>| async move {
        let chunked = req
            .headers()
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(full(format!(
            "{chunked} {}",
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    // A small chunk and a large one (which hyper hands over in pieces).
    let big = "x".repeat(20 * 1024);
    let mut raw = String::from(
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
    );
    raw.push_str(&format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()));
    let got = raw_exchange(lb.addr, raw.as_bytes(), DEADLINE).await;
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(200)]
    );
    assert!(
        got.ends_with(&format!("\r\n\r\ntrue hello{big}")),
        "the body arrived whole"
    );
}

#[tokio::test]
async fn bytes_a_backend_sends_right_behind_its_101_reach_the_client() {
    let (url, _) = scripted(|_| {
        reply(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nHELLO",
            false,
        )
    })
    .await;
    let lb = Sluice::over(&[url], "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !got.ends_with(b"HELLO") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the bytes after the 101 arrive");
    assert!(got.starts_with(b"HTTP/1.1 101"));
}
