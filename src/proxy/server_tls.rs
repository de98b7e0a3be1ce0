//! TLS client connections: plain HTTP sent by mistake gets a 400 that says so, then the
//! handshake (bounded by `header_read_timeout`) and the protocol ALPN chose: HTTP/2
//! served by hyper, or HTTP/1.x by sluice's own loop (h1/), as on plain listeners.

use super::conn::{Activity, Tracked};
use super::forward::ConnInfo;
use super::h1;
use super::server::{ConnCtx, drive, serve_h1, service};
use crate::telemetry::{self, Refusal};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A TLS connection: the handshake (bounded by `header_read_timeout`), then the
/// protocol ALPN chose. No parking: the TLS session lives in user space.
pub(super) async fn serve_tls(stream: TcpStream, acceptor: TlsAcceptor, mut ctx: ConnCtx) {
    let timers = ctx.timers();
    // From the accept: the handshake and the first head share `header_read_timeout`.
    let activity = Arc::new(Activity::new());
    let deadline = tokio::time::Instant::now() + timers.header_read;
    let timed_out = |ctx: &ConnCtx| {
        let e = "timed out (header_read_timeout)";
        let counts = &ctx.shared.refused;
        telemetry::refused_connection(counts, ctx.client, Refusal::TlsHandshake, Some(&e));
    };
    match tokio::time::timeout_at(deadline, opening(&stream)).await {
        Ok(Opening::Tls) => {}
        Ok(Opening::PlainHttp) => return refuse_plain_http(stream, &ctx).await,
        Ok(Opening::Nothing) => return,
        Err(_) => return timed_out(&ctx),
    }
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let counts = &ctx.shared.refused;
            telemetry::refused_connection(counts, ctx.client, Refusal::TlsHandshake, Some(&e));
            return;
        }
        Err(_) => return timed_out(&ctx),
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        // HTTP/1.x: the same loop, rules and refusals as plain HTTP/1.1.
        return serve_h1(h1::Sock::tls(tls), Some(activity), ctx).await;
    }
    activity.set_multiplexed();
    let info = Arc::new(ConnInfo::new(
        (ctx.client, ctx.local),
        true,
        true,
        Arc::clone(&activity),
        Arc::clone(&ctx.shared.refused),
    ));
    let io = TokioIo::new(Tracked::new(tls, Arc::clone(&activity), Bytes::new()));
    let conn = ctx
        .protocols
        .h2
        .serve_connection(io, service(&ctx.shared, &info));
    Box::pin(drive(conn, |c| c.graceful_shutdown(), &activity, &mut ctx)).await;
}

/// What the first byte of a TLS listener's connection says.
enum Opening {
    /// A handshake record (0x16), or anything else that is not plain HTTP: rustls
    /// decides.
    Tls,
    /// A request line (a method's upper-case letter): plain HTTP on a TLS port.
    PlainHttp,
    /// Closed (or failed) before sending anything: a TCP check, nothing to refuse.
    Nothing,
}

async fn opening(stream: &TcpStream) -> Opening {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0].is_ascii_uppercase() => Opening::PlainHttp,
        Ok(1) => Opening::Tls,
        _ => Opening::Nothing,
    }
}

/// Answers plain HTTP sent to a TLS listener with a 400 that says why (as nginx does)
/// instead of a handshake error the client cannot read, then closes.
async fn refuse_plain_http(mut stream: TcpStream, ctx: &ConnCtx) {
    const BODY: &str = "400 this port speaks TLS: use https:// instead\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    ctx.shared
        .refused_request(ctx.client, 400, Refusal::PlainHttpOnTls);
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    // Read what the client sent before closing: closing with unread bytes would reset
    // the connection and could destroy the answer.
    let _ = stream.shutdown().await;
    let drain = super::conn::drain(&mut stream, 64 * 1024);
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
