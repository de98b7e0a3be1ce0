//! A client connection as the HTTP/1 loop holds it: the socket split in two halves (a
//! request body may read while the loop writes), plain TCP or TLS, and the bytes read
//! and not used yet.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::body::{H1Body, Link};
use crate::proxy::body::ClientBody;
use crate::proxy::head::Framing;

/// A TLS client connection once the handshake is done.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The reading half of a client connection.
pub enum Reader {
    Tcp(OwnedReadHalf),
    /// tokio's split: the TLS session is shared by both halves behind a lock, which
    /// is never contended (one task polls both, or the loop writes while another
    /// task reads a body).
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// The writing half of a client connection. Over TLS a write may leave bytes in the
/// session's buffer: the loop flushes before it waits (for a backend, or a request).
pub enum Writer {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

/// A client connection whole again, to park or to tunnel.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl AsyncRead for Reader {
    #[inline(always)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    #[inline(always)]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Writer::Tcp(w) => w.is_write_vectored(),
            Writer::Tls(w) => w.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(_) => Poll::Ready(Ok(())),
            Writer::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl Writer {
    /// Writes all of `bytes` and, over TLS, pushes them out of the session's buffer.
    #[inline]
    pub(super) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(bytes).await,
            Writer::Tls(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }

    /// Over TLS: pushes out what the session still holds (before waiting).
    #[inline]
    pub(super) async fn push(&mut self) -> io::Result<()> {
        match self {
            Writer::Tcp(_) => Ok(()),
            Writer::Tls(w) => w.flush().await,
        }
    }

    /// Writes `bytes` now if the socket takes all of them at once (a `100 Continue`
    /// from within the loop's poll). Over TLS, bytes left in the session's buffer go
    /// out with the next flush.
    pub(super) fn poll_send_now(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> bool {
        match self {
            Writer::Tcp(w) => w.try_write(bytes).ok() == Some(bytes.len()),
            Writer::Tls(w) => {
                let sent = Pin::new(&mut *w).poll_write(cx, bytes);
                let _ = Pin::new(w).poll_flush(cx);
                matches!(sent, Poll::Ready(Ok(n)) if n == bytes.len())
            }
        }
    }

    /// Over TLS: pushes out what the session still holds; true when it is all out.
    pub(super) fn poll_flushed(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Writer::Tcp(_) => true,
            Writer::Tls(w) => !matches!(Pin::new(w).poll_flush(cx), Poll::Pending),
        }
    }
}

/// A client connection as the loop holds it: the two halves of its socket and the
/// bytes read and not used yet.
pub struct Sock {
    /// None while a request body's reader holds it (see `lent`).
    pub(super) rd: Option<Reader>,
    pub(super) wr: Writer,
    pub buf: BytesMut,
    /// The link to the request body holding the reading half and the buffer.
    pub(super) lent: Option<Arc<Link>>,
}

impl Sock {
    pub fn new(stream: TcpStream, buf: BytesMut) -> Sock {
        let (rd, wr) = stream.into_split();
        Sock::of(Reader::Tcp(rd), Writer::Tcp(wr), buf)
    }

    /// A TLS connection, after its handshake.
    pub fn tls(stream: TlsStream) -> Sock {
        let (rd, wr) = tokio::io::split(stream);
        Sock::of(Reader::Tls(rd), Writer::Tls(wr), BytesMut::new())
    }

    fn of(rd: Reader, wr: Writer, buf: BytesMut) -> Sock {
        Sock {
            rd: Some(rd),
            wr,
            buf,
            lent: None,
        }
    }

    /// The request body `framing` calls for. A body takes the reading half and the
    /// read buffer along; they come back (with any pipelined bytes behind the body)
    /// when the body is done (`reclaim`). None if a body holds them already.
    #[inline(always)]
    pub(super) fn lend(&mut self, framing: Framing, expect_continue: bool) -> Option<ClientBody> {
        if framing == Framing::None {
            return Some(ClientBody::Empty);
        }
        let rd = self.rd.take()?;
        let link = Arc::new(Link::default());
        // Nothing to ask for if the body is already arriving.
        let ask = expect_continue && self.buf.is_empty();
        let buf = std::mem::take(&mut self.buf);
        let body = H1Body::new(rd, buf, framing, ask, Arc::clone(&link));
        self.lent = Some(link);
        Some(ClientBody::H1(body))
    }

    /// Takes the reading half and the buffer back from the request body they were lent
    /// to, if it has given them back. Some(true): the body was read to its end.
    pub(super) fn reclaim(&mut self) -> Option<bool> {
        let r = self.lent.as_ref()?.returned.lock().ok()?.take()?;
        self.lent = None;
        self.rd = Some(r.rd);
        self.buf = r.buf;
        Some(r.complete)
    }

    /// The socket whole again, with the bytes read and not used; None if a request
    /// body's reader still holds the reading half.
    pub fn into_stream(mut self) -> Option<(Stream, BytesMut)> {
        self.reclaim();
        let stream = match (self.rd?, self.wr) {
            (Reader::Tcp(rd), Writer::Tcp(wr)) => Stream::Tcp(rd.reunite(wr).ok()?),
            (Reader::Tls(rd), Writer::Tls(wr)) if rd.is_pair_of(&wr) => {
                Stream::Tls(Box::new(rd.unsplit(wr)))
            }
            _ => return None,
        };
        Some((stream, self.buf))
    }

    /// Closes the connection with a reset (RST), dropping whatever is still unsent.
    /// Over TLS, the connection is dropped without `close_notify`, which tells the
    /// client the same: the answer was cut.
    pub fn reset(self) {
        if let Writer::Tcp(wr) = self.wr {
            let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(Duration::ZERO));
            // No FIN first: the peer must see the reset, not an orderly end.
            wr.forget();
        }
    }

    /// Closes the connection. With `linger`, first stops sending and reads what the
    /// client still sends for a short while: closing with unread bytes would reset the
    /// connection and could destroy the answer just written (a refused upload). A
    /// request body still reading elsewhere (an upload being stopped) is waited for.
    pub async fn close(mut self, linger: bool) {
        const SHUTDOWN: Duration = Duration::from_secs(2);
        // Over TLS this sends `close_notify`, which a slow client could hold up.
        let _ = tokio::time::timeout(SHUTDOWN, self.wr.shutdown()).await;
        if !linger {
            return;
        }
        const FOR: Duration = Duration::from_secs(2);
        const AT_MOST: usize = 4 << 20;
        let _ = tokio::time::timeout(FOR, async {
            if let Some(link) = self.lent.clone()
                && self.reclaim().is_none()
            {
                link.back.notified().await;
                self.reclaim();
            }
            if let Some(rd) = self.rd.as_mut() {
                crate::proxy::conn::drain(rd, AT_MOST).await;
            }
        })
        .await;
    }
}
