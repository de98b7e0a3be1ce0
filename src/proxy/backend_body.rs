//! A backend's response body, read from its connection as the client side consumes it
//! (HTTP/1.1, framed by decode.rs) or from hyper (HTTP/2). At its end the connection
//! goes back to its pool, if it may be reused; dropped before, it is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::task::AbortHandle;

use super::client::{Source, Upgraded};
use super::decode::{Broke, Framed, Next};
use super::head::Framing;
use super::pool::Pool;
use super::stream::{ReadHalf, Stream};
use super::wire::{RawHead, WireError};

/// A backend's response body, read from its connection as it is polled. At its end
/// the connection goes back to the pool, if it may be reused.
pub struct BackendBody {
    src: Option<Source>,
    state: Framed,
    reuse: Option<(Arc<Pool>, usize)>,
    /// The task still sending the request body, if the response began before its end;
    /// held to be stopped when the response ends or is dropped.
    _upload: Option<Upload>,
    /// The response's header lines as the backend wrote them, when they travel so.
    pub(super) raw: Option<RawHead>,
}

/// The task sending the rest of a request body beside its response (see `send`). It
/// is stopped when this is dropped: with the response, or with a request that failed
/// or timed out before a response head came.
pub(super) struct Upload(pub(super) AbortHandle);

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body")]
    Read(#[source] io::Error),
    #[error("the backend closed the connection mid-body")]
    Closed,
    #[error("bad response body")]
    Wire(#[source] WireError),
    #[error("reading the response body (HTTP/2)")]
    H2(#[source] hyper::Error),
}

impl From<Broke> for BodyError {
    fn from(b: Broke) -> BodyError {
        match b {
            Broke::Wire(e) => BodyError::Wire(e),
            Broke::Closed => BodyError::Closed,
            Broke::Read(e) => BodyError::Read(e),
        }
    }
}

impl BackendBody {
    pub(super) fn new(
        src: Source,
        framing: Framing,
        reuse: Option<(Arc<Pool>, usize)>,
        upload: Option<Upload>,
    ) -> BackendBody {
        let mut body = BackendBody {
            src: Some(src),
            state: Framed::of(framing),
            reuse,
            _upload: upload,
            raw: None,
        };
        // An empty body is over at once: its connection can serve the next request
        // now. One that cannot be reused stays until dropped (a 101's goes on to
        // become a tunnel).
        if body.state.is_done() && body.reuse.is_some() {
            body.finish();
        }
        body
    }

    /// An HTTP/2 backend's response body.
    pub(super) fn from_h2(body: hyper::body::Incoming) -> BackendBody {
        BackendBody {
            src: Some(Source::H2 {
                body,
                buf: BytesMut::new(),
            }),
            state: Framed::Done,
            reuse: None,
            _upload: None,
            raw: None,
        }
    }

    /// The response's header lines to pass on as they are, if they travel so (the
    /// response's header map then holds only what sluice added).
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.raw.as_ref()
    }

    /// The connection of a 101 answer, for the tunnel.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        self.reuse = None;
        match self.src.take()? {
            Source::Conn(conn) => Some(Upgraded {
                stream: conn.stream,
                read: conn.buf.freeze(),
            }),
            Source::Half { .. } | Source::H2 { .. } => None,
        }
    }

    /// The backend's plain TCP socket and the bytes of the body still to come from it,
    /// when none of them has been read yet and nothing but the socket stands between:
    /// a length-framed body on a plain connection. The bytes may then go to the client
    /// without being read here (`h1::splice`), and `passed` says how many did.
    pub(super) fn splice_source(&self) -> Option<(&tokio::net::TcpStream, u64)> {
        let Framed::Length(left) = self.state else {
            return None;
        };
        match self.src.as_ref()? {
            Source::Conn(c) if c.buf.is_empty() => match &c.stream {
                Stream::Plain(s) => Some((s, left)),
                Stream::Tls(_) => None,
            },
            Source::Half {
                read: ReadHalf::Plain(r),
                buf,
            } if buf.is_empty() => Some((r.as_ref(), left)),
            _ => None,
        }
    }

    /// `n` bytes of the body went to the client straight from the socket (see
    /// `splice_source`). At its end the connection goes back to the pool.
    pub(super) fn passed(&mut self, n: u64) {
        if let Framed::Length(left) = &mut self.state {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.finish();
            }
        }
    }

    /// The body was read to its end: the connection goes back to the pool, unless the
    /// backend sent more than the response (then it cannot be trusted).
    fn finish(&mut self) {
        self.state = Framed::Done;
        if let (Some(Source::Conn(conn)), Some((pool, max_idle))) =
            (self.src.take(), self.reuse.take())
            && conn.buf.is_empty()
        {
            pool.put(conn, max_idle);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.src = None;
        self.state = Framed::Done;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(Source::H2 { body, .. }) = this.src.as_mut() {
            return Pin::new(body).poll_frame(cx).map_err(BodyError::H2);
        }
        let Some(src) = this.src.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(this.state.poll_next(src, cx)) {
            Ok(Next::Data(data)) => {
                if this.state.is_done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(Next::End) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(broke) => this.fail(broke.into()),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.src {
            Some(Source::H2 { body, .. }) => body.is_end_stream(),
            _ => self.src.is_none() || self.state.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.src {
            Some(Source::H2 { body, .. }) => body.size_hint(),
            _ => self.state.size_hint(),
        }
    }
}
