//! Writing an answer to a client: the head, then the body in the framing it needs.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::StatusCode;
use http::header::{self};
use http_body::Body;
use tokio::io::AsyncWriteExt;

use super::sock::{Reader, Writer};
use super::splice::{self, SPLICE_MIN};

use super::*;
use crate::proxy::body::ResponseBody;
use crate::proxy::error::ProxyError;
use crate::proxy::head::Framing;
use crate::proxy::request_head;

/// How `write_response` frames the answer.
pub(super) struct Options {
    pub(super) head_only: bool,
    pub(super) http10: bool,
    pub(super) keep: bool,
    pub(super) upgrade: bool,
}

/// Writes the response head and streams its body. Ok(keep): the connection may serve
/// another request.
pub(super) async fn write_response(
    wr: &mut Writer,
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &mut ResponseBody,
    o: Options,
    mut watch: Option<(&mut Reader, &mut BytesMut)>,
) -> Result<bool, Cut> {
    let (framing, keep) = head(out, parts, body, &o);
    if framing == Framing::None {
        wr.send(out).await?;
        return Ok(keep);
    }

    // The rest of a large body may go from a plain backend socket to a plain client
    // socket without passing through here (splice.rs).
    let splice = matches!((&*wr, framing), (Writer::Tcp(_), Framing::Length(n)) if n >= SPLICE_MIN);
    let mut body = Pin::new(body);
    loop {
        if splice
            && body
                .splice_source()
                .is_some_and(|(_, left)| left >= SPLICE_MIN)
        {
            if !out.is_empty() {
                wr.write_all(out).await?;
                out.clear();
            }
            let mut moved = 0;
            let passed = match (&*wr, body.splice_source()) {
                // Boxed: its state would otherwise make every answer's future larger.
                (Writer::Tcp(to), Some((from, left))) => {
                    Box::pin(splice::pass(
                        from,
                        to.as_ref(),
                        left,
                        &mut moved,
                        &mut watch,
                    ))
                    .await
                }
                _ => None,
            };
            body.passed(moved);
            if let Some(Err(cut)) = passed {
                return Err(cut);
            }
        }
        // Whatever is ready goes out with what is already in `out`; only when the body
        // has to wait is `out` written first.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
        {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    wr.write_all(out).await?;
                    out.clear();
                }
                wr.push().await?;
                // While the body waits, a client that leaves ends the response.
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(f) = body.as_mut().poll_frame(cx) {
                        return Poll::Ready(Ok(f));
                    }
                    client_left(&mut watch, cx).map(Err)
                })
                .await?
            }
        };
        match frame {
            None => {
                if framing == Framing::Chunked {
                    out.extend_from_slice(request_head::LAST_CHUNK);
                }
                wr.send(out).await?;
                out.clear();
                return Ok(keep);
            }
            Some(Err(e)) => {
                // The backend broke off: what came is passed on, then the client must
                // see a cut, not an end (End::Reset).
                tracing::debug!(error = %e, "response body broke off");
                let _ = wr.send(out).await;
                return Err(Cut::Backend);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not passed on
                };
                if data.is_empty() {
                    continue;
                }
                if framing == Framing::Chunked {
                    request_head::chunk_header(out, data.len());
                }
                if data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                } else {
                    write_two(wr, out, &data).await?;
                    out.clear();
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                // A body that keeps coming in small pieces goes out as it comes.
                if out.len() >= COALESCE {
                    wr.write_all(out).await?;
                    out.clear();
                }
            }
        }
    }
}

/// Writes the response head into `out` and says how its body is framed and whether the
/// connection may serve another request.
#[inline(always)]
fn head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ResponseBody,
    o: &Options,
) -> (Framing, bool) {
    let status = parts.status;
    let mut keep = o.keep;
    status_line(out, status);
    // A proxied response's own lines as the backend wrote them, then the headers in
    // the map (all of them, or what sluice added to the raw lines).
    let raw = body.raw_head();
    if let Some(r) = raw {
        r.write_to(out);
    }
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_length =
        raw.is_some_and(|r| r.has_length) || parts.headers.contains_key(header::CONTENT_LENGTH);
    let has_date = raw.is_some_and(|r| r.has_date) || parts.headers.contains_key(header::DATE);
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    // How the body goes to the client: the same `Framing` every body has (head.rs);
    // `UntilClose` for an HTTP/1.0 client when the length is unknown.
    let framing = if no_body {
        Framing::None
    } else if has_length {
        if o.head_only {
            Framing::None
        } else {
            Framing::Length(exact.unwrap_or(0))
        }
    } else if o.head_only {
        // A proxied answer to HEAD says what the backend said; sluice's own tell the
        // length their GET would have.
        if let (true, Some(n)) = (body.is_local(), exact) {
            content_length_line(out, n);
        }
        Framing::None
    } else if let Some(n) = exact {
        content_length_line(out, n);
        Framing::Length(n)
    } else if !o.http10 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep = false;
        Framing::UntilClose
    };
    if !has_date {
        date_line(out);
    }
    if o.upgrade {
        // The backend's Connection: upgrade and Upgrade headers were kept for this.
    } else if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if o.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep)
}

/// Polls a client's connection while its answer waits: Ready(Cut::Client) once the
/// client has closed it. A client that sends more (a pipelined request) is not
/// watched further.
pub(super) fn client_left(
    watch: &mut Option<(&mut Reader, &mut BytesMut)>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Cut> {
    if let Some((rd, buf)) = watch.as_mut() {
        match tokio_util::io::poll_read_buf(Pin::new(&mut **rd), cx, *buf) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Cut::Client),
            Poll::Ready(Ok(_)) => *watch = None,
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// Why a response could not be written to its end.
pub(super) enum Cut {
    /// The client left, or its socket failed.
    Client,
    /// The backend broke off mid-body.
    Backend,
}

impl From<io::Error> for Cut {
    fn from(_: io::Error) -> Cut {
        Cut::Client
    }
}

/// Answers a head refused before routing, and asks for the connection to close.
pub(super) async fn refuse(wr: &mut Writer, out: &mut Vec<u8>, e: &HeadError) -> io::Result<()> {
    let err = match e {
        HeadError::TooLarge => ProxyError::HeadTooLarge,
        HeadError::Bad(why) => ProxyError::BadRequest(why),
    };
    tracing::debug!(error = %err, "request head refused");
    let status = err.status();
    let text = err.body();
    status_line(out, status);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    content_length_line(out, text.len() as u64);
    date_line(out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    wr.send(out).await
}

/// Starts `out` afresh with the status line (canonical reason phrase).
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length_line(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(n, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\n");
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `date: <now>` in IMF-fixdate, formatted once a second.
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (at, mut text) = DATE.get();
    if at != secs {
        let s = httpdate::fmt_http_date(now);
        if s.len() == text.len() {
            text.copy_from_slice(s.as_bytes());
            DATE.set((secs, text));
        }
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
}

/// Writes `a` then `b`, in one call when the socket takes it.
async fn write_two(wr: &mut Writer, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = wr
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    wr.write_all(b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_dates_are_written_plainly() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
        let mut out = Vec::new();
        date_line(&mut out);
        assert_eq!(out.len(), "date: Wed, 25 Nov 2026 10:00:00 GMT\r\n".len());
    }
}
