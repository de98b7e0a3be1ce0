//! A request body on its way to a backend over HTTP/1.1: streamed in its framing, with
//! a look for an early answer (an echo, a refusal) as it goes; once one comes, the rest
//! of the body is sent beside the response on the connection's writing half.

use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::RequestBody;
use super::client::SendError;
use super::head::{Framing, HEAD_READ};
use super::pool::Conn;
use super::stream::{Stream, WriteHalf};
use super::{request_head, wire};

/// Streams the request body. Ok(Some(unsent)): the backend began to answer (or
/// closed) before the body was all sent, what it sent is in `conn.buf`, and `unsent`
/// is what was taken from the body but not written yet.
pub(super) async fn send_body(
    conn: &mut Conn,
    body: &mut RequestBody,
    framing: Framing,
) -> Result<Option<Bytes>, SendError> {
    let Conn { stream, buf, out } = conn;
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            r = read_some(stream, buf) => match r {
                // "100 Continue" and the like need no answer: send on.
                Ok(n) if n > 0 && wire::skip_informational(buf) => continue,
                // An early answer, or the backend's close: read it as the response.
                Ok(_) => return Ok(Some(Bytes::new())),
                Err(e) => return Err(SendError::Read(e)),
            }
        };
        match frame {
            None => {
                finish_body(stream, framing)
                    .await
                    .map_err(SendError::Write)?;
                stream.flush().await.map_err(SendError::Write)?;
                return Ok(None);
            }
            Some(Err(e)) => return Err(SendError::Body(e)),
            Some(Ok(frame)) => {
                // Trailers are not passed on.
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                // In slices, looking for an answer between them: a backend that
                // answers early may stop reading, and a large write would then wait
                // for it forever (or fail) instead of taking the answer in.
                while !data.is_empty() {
                    let piece = data.split_to(data.len().min(UPLOAD_SLICE));
                    if let Err(e) = write_data(stream, out, &piece, framing).await {
                        // The backend stopped reading, maybe after answering: an
                        // answer already in is still the response.
                        return match answer_now(stream, buf).await {
                            Some(true) => Ok(Some(data)),
                            _ => Err(SendError::Write(e)),
                        };
                    }
                    if let Some(true) = answer_now(stream, buf).await {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Has the backend begun to answer (or closed)? Looks without waiting: Some(true) an
/// answer (or a close) is in, Some(false) only an informational one, None nothing.
async fn answer_now(stream: &mut Stream, buf: &mut BytesMut) -> Option<bool> {
    tokio::select! {
        biased;
        r = read_some(stream, buf) => match r {
            Ok(n) if n > 0 && wire::skip_informational(buf) => Some(false),
            Ok(_) => Some(true),
            Err(_) => None,
        },
        () = std::future::ready(()) => None,
    }
}

/// The most of a request body written before looking for an early answer.
const UPLOAD_SLICE: usize = 64 * 1024;

/// Reads what the backend sends while the request body is still going out. Plain TCP
/// waits for readiness before taking buffer room, so a quiet backend costs no buffer;
/// TLS reads through rustls, which needs the room first.
async fn read_some(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    match stream {
        Stream::Plain(s) => loop {
            s.readable().await?;
            buf.reserve(HEAD_READ);
            match s.try_read_buf(buf) {
                // Stale readiness, now cleared.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        },
        Stream::Tls(s) => {
            buf.reserve(HEAD_READ);
            std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut **s), cx, buf))
                .await
        }
    }
}

/// The rest of a request body, sent beside the response; aborted when the response
/// ends or is dropped.
/// `unsent`: taken from the body before the answer began, and not written yet.
pub(super) async fn upload_rest(
    mut w: WriteHalf,
    (unsent, mut body): (Bytes, RequestBody),
    framing: Framing,
    mut out: Vec<u8>,
) {
    if !unsent.is_empty()
        && write_data(&mut w, &mut out, &unsent, framing)
            .await
            .is_err()
    {
        return;
    }
    loop {
        let r = match body.frame().await {
            None => {
                if finish_body(&mut w, framing).await.is_ok() && w.flush().await.is_ok() {
                    // Dropping the half would shut the socket's sending side, which
                    // some servers take as the client going away mid-response.
                    w.forget();
                }
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body broke off during the response");
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => write_data(&mut w, &mut out, &data, framing).await,
                Err(_) => continue,
            },
        };
        if r.is_err() {
            return;
        }
    }
}

/// Writes one piece of a request body in its framing. A chunk goes out with its header
/// and trailing CRLF in one write (pieces are at most a read of the client's body, 256
/// KiB, or an HTTP/2 frame).
async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<u8>,
    data: &[u8],
    framing: Framing,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if framing != Framing::Chunked {
        return w.write_all(data).await;
    }
    out.clear();
    request_head::chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(out).await
}

/// Ends a request body in its framing.
async fn finish_body<W: AsyncWrite + Unpin>(w: &mut W, framing: Framing) -> io::Result<()> {
    match framing {
        Framing::Chunked => w.write_all(request_head::LAST_CHUNK).await,
        _ => Ok(()),
    }
}
