//! The client side of HTTP/1.1 (sluice's own server, h1.rs), spoken byte by byte:
//! `Expect: 100-continue`, HTTP/1.0 keep-alive and framing, HEAD, pipelining behind a
//! request body, and request framing refused before routing.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tls::{connect, tls_sluice_over};
use crate::support::*;

/// Reads from `s` until `got` holds `n` complete responses with Content-Length bodies
/// (or `wait` passes); returns what arrived.
async fn read_responses<S: AsyncRead + Unpin>(s: &mut S, n: usize, wait: Duration) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        while complete_responses(&got) < n {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// How many whole responses `raw` holds (heads with a Content-Length body, or none).
fn complete_responses(raw: &[u8]) -> usize {
    let text = String::from_utf8_lossy(raw);
    let mut rest: &str = &text;
    let mut n = 0;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = rest[..end].to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
        let body_len = if head.starts_with("http/1.1 1") {
            0
        } else {
            len
        };
        if rest.len() < end + 4 + body_len {
            break;
        }
        rest = &rest[end + 4 + body_len..];
        n += 1;
    }
    n
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    expect_continue_through(TcpStream::connect(lb.addr).await.unwrap()).await;
}

/// Over TLS the `100 Continue` is written from the same loop, and must leave the TLS
/// session's buffer before the client will send its body.
#[tokio::test]
async fn expect_100_continue_is_answered_over_tls() {
    let be = TestBackend::echo().await;
    let lb = tls_sluice_over(&be.url(), "").await;
    expect_continue_through(connect(&lb, Some("a.test"), &[b"http/1.1"]).await).await;
}

/// Issue #10: the body of a request to an HTTP/2 backend is read on hyper's task, which
/// must still get the loop to send `100 Continue`.
#[tokio::test]
async fn expect_100_continue_works_towards_http2_backends() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "protocol = \"h2c\"").await;
    expect_continue_through(TcpStream::connect(lb.addr).await.unwrap()).await;
}

/// A client connected to a sluice in front of an echo backend that waits for the
/// go-ahead before it sends its body.
async fn expect_continue_through<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // A client that waits for the go-ahead before sending its body.
    let first = read_responses(&mut s, 1, DEADLINE).await;
    assert!(
        first.starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "{first}"
    );
    s.write_all(b"hello").await.unwrap();
    let rest = read_responses(&mut s, 1, DEADLINE).await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    let body = body_of(&rest);
    assert_eq!(echoed(body)["body"], "hello");
}

#[tokio::test]
async fn a_body_refused_unread_is_skipped_when_whole_and_closes_the_connection_when_not() {
    let be = TestBackend::replying("a").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[limits]\nmax_body_bytes = 10\n[upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await;
    // All of the refused body is there: the connection goes on to the next request.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n01234567890123456789\
          GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_responses(&mut s, 2, DEADLINE).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        !got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert!(
        got.contains("HTTP/1.1 200") && got.ends_with("\r\n\r\na"),
        "{got}"
    );
    // Part of it still to come: the answer says the connection closes, and it does.
    // The client asked to be told to go on; refused first, it is not told.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until_close(&mut s, DEADLINE).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{got}"
    );
    assert_eq!(be.hits(), 1);
}

#[tokio::test]
async fn http10_clients_are_kept_alive_only_when_they_ask() {
    let be = TestBackend::replying("a").await;
    let lb = Sluice::over(&[be.url()], "").await;
    // Plain HTTP/1.0: one request, then sluice closes.
    let got = raw_exchange(lb.addr, b"GET / HTTP/1.0\r\n\r\n", DEADLINE).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{got}"
    );
    assert!(got.ends_with("\r\n\r\na"), "{got}");
    // With Connection: keep-alive, the connection serves again.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let got = read_responses(&mut s, 1, DEADLINE).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            got.to_ascii_lowercase()
                .contains("\r\nconnection: keep-alive\r\n"),
            "{got}"
        );
    }
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_for_http11_and_ends_with_the_connection_for_http10() {
    let be = TestBackend::start(|_req| async {
        let pieces: [&'static [u8]; 2] = [b"ab", b"cd"];
        Response::new(BodyExt::boxed(
            Pieces(pieces.into()).map_err(|e| match e {}),
        ))
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let got = raw_exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    let lower = got.to_ascii_lowercase();
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{got}"
    );
    assert!(got.ends_with("0\r\n\r\n"), "{got}");
    let got = raw_exchange(lb.addr, b"GET / HTTP/1.0\r\n\r\n", DEADLINE).await;
    let lower = got.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{got}");
    assert!(!lower.contains("content-length"), "{got}");
    assert!(got.ends_with("\r\n\r\nabcd"), "{got}");
}

/// A body of `pieces`, one frame each, whose length is not known up front.
struct Pieces(std::collections::VecDeque<&'static [u8]>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|p| Ok(Frame::data(Bytes::from_static(p)))),
        )
    }
}

#[tokio::test]
async fn head_answers_carry_the_length_but_no_body_and_the_connection_goes_on() {
    let be = TestBackend::replying("abc").await;
    let lb = Sluice::over(&[be.url()], "").await;
    let got = raw_exchange(
        lb.addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    let parts: Vec<&str> = got.split("HTTP/1.1 200").collect();
    assert_eq!(parts.len(), 3, "two answers: {got}");
    assert!(
        parts[1].to_ascii_lowercase().contains("content-length: 3"),
        "{got}"
    );
    assert!(parts[1].ends_with("\r\n\r\n"), "no body after HEAD: {got}");
    assert!(parts[2].ends_with("\r\n\r\nabc"), "{got}");
    // A backend answer of unknown length: no length is made up for it.
    let chunked = TestBackend::start(|_req| async {
        let pieces: [&'static [u8]; 1] = [b"ab"];
        Response::new(BodyExt::boxed(
            Pieces(pieces.into()).map_err(|e| match e {}),
        ))
    })
    .await;
    let lb2 = Sluice::over(&[chunked.url()], "").await;
    let got = raw_exchange(
        lb2.addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !got.to_ascii_lowercase().contains("content-length"),
        "{got}"
    );
    assert!(got.ends_with("\r\n\r\n"), "{got}");
    // sluice's own answers too (they have a body for GET).
    let dead = Sluice::over(&[format!("http://{}", dead_addr().await)], "").await;
    let got = raw_exchange(
        dead.addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    let parts: Vec<&str> = got.split("HTTP/1.1 502").collect();
    assert_eq!(parts.len(), 3, "two answers: {got}");
    assert!(parts[1].ends_with("\r\n\r\n"), "no body after HEAD: {got}");
    assert!(parts[2].ends_with("\r\n\r\n502 bad gateway\n"), "{got}");
}

#[tokio::test]
async fn requests_pipelined_behind_a_body_are_served_in_order() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_responses(&mut s, 3, DEADLINE).await;
    let bodies: Vec<serde_json::Value> = got
        .split("HTTP/1.1 200")
        .skip(1)
        .map(|r| echoed(body_of(r)))
        .collect();
    assert_eq!(bodies.len(), 3, "{got}");
    assert_eq!(
        (&bodies[0]["uri"], &bodies[0]["body"]),
        (&"/1".into(), &"hello".into())
    );
    assert_eq!(
        (&bodies[1]["uri"], &bodies[1]["body"]),
        (&"/2".into(), &"abc".into())
    );
    assert_eq!(bodies[2]["uri"], "/3");
}

#[tokio::test]
async fn a_transfer_coding_other_than_final_chunked_is_400() {
    let be = TestBackend::echo().await;
    let lb = Sluice::over(&[be.url()], "").await;
    let got = raw_exchange(
        lb.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close\r\n"), "{got}");
    assert!(lower.contains("\r\ndate: "), "{got}");
    // HTTP/1.0 has no chunked coding to frame a body with.
    let got = raw_exchange(
        lb.addr,
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert_eq!(be.hits(), 0);
}
