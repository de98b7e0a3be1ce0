//! Idle connections are parked outside hyper (memory) and must behave exactly like
//! connections that never were: same socket, same answers, pipelined bytes kept.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads one response with a Content-Length body from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(DEADLINE, s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        buf.push(b[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn a_parked_client_connection_serves_again_with_pipelined_requests() {
    let be = TestBackend::start(|req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(full(req.uri().path().to_owned()))
    })
    .await;
    let lb = Sluice::over(&[be.url()], "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("/one"));
    // Idle well past the 20 ms parking delay, then two requests in one write.
    tokio::time::sleep(Duration::from_millis(120)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("/two"));
    assert!(read_response(&mut s).await.ends_with("/three"));
    tokio::time::sleep(Duration::from_millis(120)).await;
    s.write_all(b"GET /four HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("/four"));
}

#[tokio::test]
async fn an_idle_backend_connection_is_reused_after_a_pause() {
    let be = TestBackend::replying("a").await;
    let lb = Sluice::over(&[be.url()], "").await;
    lb.get_many("/", 3).await;
    be.wait_open(1, "one pooled connection").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lb.get_many("/", 3).await;
    assert_eq!(
        be.connections(),
        1,
        "the idle socket was reused, not reopened"
    );
    be.wait_open(1, "still one").await;
}

#[tokio::test]
async fn an_idle_backend_connection_the_backend_closed_is_not_used() {
    // A raw backend: answers one request per connection, then closes the socket once
    // told to (while it idles in sluice's pool), without any Connection: close.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut close_rx = close_rx.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = close_rx.wait_for(|c| *c).await;
                drop(s);
                let _ = closed_tx.send(()).await;
            });
        }
    });
    let lb = Sluice::over(&[format!("http://{addr}")], "").await;
    // The backend connection goes back to the pool as its response body ends, before
    // the last bytes are written to the client: it is pooled once this returns.
    assert_eq!(lb.get("/").await.0, 200);
    close_tx.send(true).unwrap();
    tokio::time::timeout(DEADLINE, closed_rx.recv())
        .await
        .unwrap();
    let (status, _, body) = lb.get("/").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "ok"),
        "a dead pooled socket was used"
    );
}
