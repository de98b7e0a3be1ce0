//! A client's request body, read from its connection as the backend side consumes it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::proxy::decode::{Broke, Chunked, Framed, Next, Piece, Refill};
use crate::proxy::head::Framing;
use crate::proxy::wire::WireError;

use super::sock::Reader;

/// Why a client's request body broke off.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client closed the connection mid-body")]
    Closed,
    #[error("reading the request body")]
    Read(#[source] io::Error),
    #[error("bad chunked request body")]
    Wire(#[source] WireError),
}

/// What a request body gives back to its connection.
pub(super) struct Returned {
    pub(super) rd: Reader,
    pub(super) buf: BytesMut,
    /// The body was read to its end: the buffer holds what follows it.
    pub(super) complete: bool,
}

/// What a request body and its connection's loop share.
#[derive(Default)]
pub struct Link {
    pub(super) returned: Mutex<Option<Returned>>,
    /// Signalled when `returned` is filled.
    pub(super) back: tokio::sync::Notify,
    /// The body is wanted and the client waits to be told to send it.
    pub(super) want_continue: AtomicBool,
    /// The connection loop's waker, while the body may still ask for `100 Continue`:
    /// the body may be read on another task (hyper's, for an HTTP/2 backend), whose
    /// wakeups the loop would not see.
    loop_waker: Mutex<Option<std::task::Waker>>,
}

impl Link {
    /// Asks the loop to send `100 Continue` and wakes it.
    fn ask_continue(&self) {
        self.want_continue.store(true, Ordering::Relaxed);
        if let Some(w) = self
            .loop_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.wake();
        }
    }

    /// Keeps the loop's waker for `ask_continue`.
    pub(super) fn wake_on_ask(&self, waker: &std::task::Waker) {
        let mut slot = self.loop_waker.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// A client's request body, read from its connection as the backend side consumes it.
/// When it ends or is dropped, the reading half and the buffer go back to the
/// connection's loop through the link.
pub struct H1Body {
    rd: Option<Reader>,
    buf: BytesMut,
    state: Framed,
    /// `Expect: 100-continue` not answered yet.
    ask: bool,
    link: Arc<Link>,
}

impl From<Broke> for ClientBodyError {
    fn from(b: Broke) -> ClientBodyError {
        match b {
            Broke::Wire(e) => ClientBodyError::Wire(e),
            Broke::Closed => ClientBodyError::Closed,
            Broke::Read(e) => ClientBodyError::Read(e),
        }
    }
}

impl H1Body {
    pub(super) fn new(
        rd: Reader,
        buf: BytesMut,
        framing: Framing,
        ask: bool,
        link: Arc<Link>,
    ) -> H1Body {
        let state = match framing {
            // (A request is never framed until close.)
            Framing::None | Framing::Length(0) | Framing::UntilClose => Framed::Done,
            Framing::Length(n) => Framed::Length(n),
            Framing::Chunked => Framed::Chunked(Chunked::Size),
        };
        H1Body {
            rd: Some(rd),
            buf,
            state,
            ask,
            link,
        }
    }

    fn give_back(&mut self, complete: bool) {
        if let Some(rd) = self.rd.take() {
            let r = Returned {
                rd,
                buf: std::mem::take(&mut self.buf),
                complete,
            };
            *self.link.returned.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            self.link.back.notify_one();
        }
    }

    fn finish(&mut self) {
        self.state = Framed::Done;
        self.give_back(true);
    }

    fn fail(&mut self, e: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.state = Framed::Done;
        self.give_back(false);
        Poll::Ready(Some(Err(e)))
    }

    /// Skips what is left of the body if all of it is already in the buffer (a small
    /// body nobody read, for a request refused or answered without it), so that the
    /// connection can go on.
    fn skip_buffered(&mut self) -> bool {
        loop {
            match self.state.next(&mut self.buf) {
                Ok(Piece::Data(_)) => {}
                Ok(Piece::End) => return true,
                Ok(Piece::More(_)) | Err(_) => return false,
            }
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        let complete = self.rd.is_some() && self.skip_buffered();
        self.give_back(complete);
    }
}

/// A request body's reading half and buffer, as the decoder reads them.
struct Src<'a> {
    /// None once given back: nothing more to read.
    rd: Option<&'a mut Reader>,
    buf: &'a mut BytesMut,
}

impl Refill for Src<'_> {
    #[inline(always)]
    fn buf(&mut self) -> &mut BytesMut {
        self.buf
    }

    #[inline(always)]
    fn poll_refill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        let Some(rd) = self.rd.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(room);
        tokio_util::io::poll_read_buf(Pin::new(&mut **rd), cx, self.buf)
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if this.ask {
            // The loop sends `100 Continue` (it holds the writing half), then polls
            // this again.
            this.ask = false;
            this.link.ask_continue();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut src = Src {
            rd: this.rd.as_mut(),
            buf: &mut this.buf,
        };
        match ready!(this.state.poll_next(&mut src, cx)) {
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
        self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.state.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a request to an HTTP/2 backend is read on hyper's task: asking for
    /// `100 Continue` must wake the connection loop, not only the task reading.
    #[test]
    fn asking_for_continue_wakes_the_connection_loop() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let loop_flag = Arc::new(Flag(AtomicBool::new(false)));
        let link = Link::default();
        link.wake_on_ask(&std::task::Waker::from(loop_flag.clone()));
        link.ask_continue();
        assert!(loop_flag.0.load(Ordering::SeqCst), "the loop was woken");
        assert!(link.want_continue.load(Ordering::SeqCst));
    }
}
