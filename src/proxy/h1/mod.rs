//! HTTP/1.1 from clients, served in sluice's own loop: request heads parsed by
//! `httparse`, request bodies read as the backend side consumes them (`ClientBody`),
//! responses written head and first body bytes together. The mirror image of the
//! backend side (client.rs, wire.rs), with the same framing rules (RFC 9112).
//!
//! One connection task runs `serve`: read a head, hand the request to `forward`, write
//! the answer, and go on while the connection may be kept alive. Between requests the
//! loop waits for the next head in a state the connection task can leave at any time
//! (to park the connection or close it); `Flags` tells it when that is.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use http::header::HeaderMap;
use http::{Method, Request, Version};
use tokio::io::AsyncReadExt;

use super::Shared;
use super::body::ClientBody;
use super::client::Upgraded;
use super::forward::{After, Answered, ConnInfo, handle};
use super::head::HEAD_READ;
use crate::telemetry::Refusal;

/// Room reserved up front for writing a response head.
const OUT_GUESS: usize = 1024;
/// Response body pieces up to this size are copied behind the head or chunk header and
/// written with it; larger ones are written from where they are.
const COALESCE: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection task and the loop tell each other (within one task: the
/// atomics only make the task's future `Send`).
#[derive(Default)]
pub struct Flags {
    /// The loop waits for the first byte of a new request, holding nothing but the
    /// socket: the connection can be parked or closed now.
    idle: AtomicBool,
    /// Shutdown: finish the request under way, then close.
    closing: AtomicBool,
}

impl Flags {
    pub fn idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }
}

/// How a connection's loop ended.
pub enum End {
    /// Close the connection.
    Close,
    /// Close, but the client may still be sending a request body sluice did not read:
    /// stop sending and read for a while first, so that the answer already written is
    /// not destroyed by a reset.
    Linger,
    /// The backend switched protocols (101): join the two into a tunnel.
    Upgrade(Upgraded),
    /// Idle: park the connection (decided by the connection task, not the loop).
    Park,
    /// A response broke off mid-body: reset the connection, so that a client whose
    /// response ends with the connection (HTTP/1.0, length unknown) can tell.
    Reset,
}

/// Serves requests on `sock` until the connection should close or be upgraded. What
/// is left in `sock.buf` when it returns belongs to the connection (a tunnel's first
/// bytes).
pub async fn serve(sock: &mut Sock, shared: &Shared, info: &Arc<ConnInfo>, flags: &Flags) -> End {
    let max_head = shared.limits.load().max_header_bytes;
    // The last response's header map, emptied, to be filled by the next request.
    let mut spare: Option<HeaderMap> = None;
    let mut out: Vec<u8> = Vec::with_capacity(OUT_GUESS);
    loop {
        let head = loop {
            if !sock.buf.is_empty() {
                match parse_head(&mut sock.buf, max_head, &mut spare) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return refuse_head(sock, shared, info, &mut out, e).await,
                }
            } else if flags.closing() && info.activity.answered() {
                // Draining, between requests. (A new connection's first request is
                // still read and answered.)
                return End::Close;
            }
            if !read_more(sock, flags, info).await {
                return End::Close;
            }
        };

        let Head {
            parts,
            raw,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_only = parts.method == Method::HEAD;
        let http10 = parts.version == Version::HTTP_10;
        // A request with a body takes the reading half and the read buffer along; they
        // come back (with any pipelined bytes behind the body) when the body is done.
        let Some(body) = sock.lend(framing, expect_continue) else {
            return End::Close;
        };
        let has_body = matches!(body, ClientBody::H1(_));
        // Pinned where it is made: the future is large, and every move copies it.
        let mut answer =
            std::pin::pin!(handle(shared, info, Request::from_parts(parts, body), raw));
        let mut m = Meanwhile::new(has_body, expect_continue);
        let resp = std::future::poll_fn(|cx| {
            m.before(sock, cx);
            if let Poll::Ready(r) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            match m.after(sock, cx) {
                true => Poll::Pending,
                false => Poll::Ready(None),
            }
        })
        .await;
        let Meanwhile {
            watch,
            mut body_done,
            ..
        } = m;
        let Some(Answered { response, after }) = resp else {
            return End::Close;
        };
        if body_done.is_none() {
            body_done = sock.reclaim();
        }
        let (mut parts, mut body) = response.into_parts();
        let next = Next::of(keep_alive, flags.closing(), body_done == Some(true), after);
        let watch = match (watch && body_done == Some(true), sock.rd.as_mut()) {
            (true, Some(rd)) => Some((rd, &mut sock.buf)),
            _ => None,
        };
        let written = write_response(
            &mut sock.wr,
            &mut out,
            &parts,
            &mut body,
            Options {
                head_only,
                http10,
                keep: matches!(next, Next::KeepAlive),
                upgrade: matches!(next, Next::Tunnel(_)),
            },
            watch,
        )
        .await;
        // Emptied now: its values hold on to the backend connection's read buffer.
        parts.headers.clear();
        spare = Some(parts.headers);
        // Writing may still end the connection: the client or the backend cut it, or
        // the answer's framing ends with the connection.
        let still_keep = match written {
            Ok(keep) => keep,
            Err(Cut::Backend) => return End::Reset,
            Err(Cut::Client) => return End::Close,
        };
        match next {
            Next::Tunnel(up) => return End::Upgrade(up),
            Next::Linger => return End::Linger,
            Next::Close => return End::Close,
            Next::KeepAlive if !still_keep => return End::Close,
            Next::KeepAlive => {}
        }
    }
}

/// What the loop does while a request is being answered: tell the client to go on
/// when its body is first wanted (`100 Continue`), and watch it while the loop holds
/// its reading half (no body, or the body is done). If it leaves, the answer is
/// dropped, which abandons the backend request; bytes it sends meanwhile (pipelined
/// requests) wait in the buffer.
struct Meanwhile {
    /// Still watching: nothing has arrived from the client yet.
    watch: bool,
    /// Some(true): the request body was read to its end (or there is none).
    body_done: Option<bool>,
    /// The client may still be waiting for `100 Continue`.
    may_ask: bool,
    /// Over TLS, a `100 Continue` may wait in the session's buffer.
    unflushed: bool,
}

impl Meanwhile {
    fn new(has_body: bool, expect_continue: bool) -> Meanwhile {
        Meanwhile {
            watch: true,
            body_done: (!has_body).then_some(true),
            may_ask: has_body && expect_continue,
            unflushed: false,
        }
    }

    /// Before the answer is polled: the body's ask for `100 Continue` must wake this
    /// task, which the body may be read on or not (see `Link`).
    #[inline(always)]
    fn before(&mut self, sock: &mut Sock, cx: &mut std::task::Context<'_>) {
        if self.unflushed {
            self.unflushed = !sock.wr.poll_flushed(cx);
        }
        if let Some(link) = sock.lent.as_ref().filter(|_| self.may_ask) {
            link.wake_on_ask(cx.waker());
        }
    }

    /// While the answer is pending. False: the client is gone.
    #[inline(always)]
    fn after(&mut self, sock: &mut Sock, cx: &mut std::task::Context<'_>) -> bool {
        if let Some(link) = &sock.lent {
            if link.want_continue.swap(false, Ordering::Relaxed) {
                self.may_ask = false;
                if !sock.wr.poll_send_now(cx, CONTINUE) {
                    return false;
                }
                self.unflushed = true;
            }
            if self.body_done.is_none() {
                self.body_done = sock.reclaim();
            }
        }
        if let (true, Some(true), Some(rd)) = (self.watch, self.body_done, sock.rd.as_mut()) {
            match tokio_util::io::poll_read_buf(Pin::new(rd), cx, &mut sock.buf) {
                Poll::Ready(Ok(0) | Err(_)) => return false,
                Poll::Ready(Ok(_)) => self.watch = false,
                Poll::Pending => {}
            }
        }
        true
    }
}

/// Answers a request head refused before routing (the status its error calls for),
/// counts it, and ends the connection.
async fn refuse_head(
    sock: &mut Sock,
    shared: &Shared,
    info: &ConnInfo,
    out: &mut Vec<u8>,
    e: HeadError,
) -> End {
    let (status, reason) = match e {
        HeadError::TooLarge => (431, Refusal::HeaderTooLarge),
        HeadError::Bad(why) => (400, Refusal::BadRequest(why)),
    };
    shared.refused_request(info.client, status, reason);
    let _ = refuse(&mut sock.wr, out, &e).await;
    End::Linger
}

/// Reads more of a request head into the buffer; false when the client is gone. While
/// the buffer is empty the connection is idle (see `Flags`).
#[inline(always)]
async fn read_more(sock: &mut Sock, flags: &Flags, info: &ConnInfo) -> bool {
    let Some(rd) = sock.rd.as_mut() else {
        return false;
    };
    flags.set_idle(sock.buf.is_empty());
    sock.buf.reserve(HEAD_READ);
    let n = rd.read_buf(&mut sock.buf).await;
    flags.set_idle(false);
    match n {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            info.activity.on_read();
            true
        }
    }
}

/// What the connection does after an answer: decided here, once, from what the client
/// allowed (`keep_alive`), whether sluice is shutting down, whether the request body
/// was read to its end, and what the answer calls for (`After`, from forward.rs).
enum Next {
    KeepAlive,
    Close,
    /// Close, after reading what the client still sends of a body sluice did not read
    /// (where the next request would begin is unknown).
    Linger,
    /// The backend switched protocols: the connection becomes a tunnel.
    Tunnel(Upgraded),
}

impl Next {
    fn of(keep_alive: bool, closing: bool, body_read: bool, after: After) -> Next {
        match after {
            After::Tunnel(up) => Next::Tunnel(up),
            _ if !body_read => Next::Linger,
            After::Close => Next::Close,
            After::Reuse if keep_alive && !closing => Next::KeepAlive,
            After::Reuse => Next::Close,
        }
    }
}

mod body;
mod request;
mod respond;
mod sock;
mod splice;

pub use body::{ClientBodyError, H1Body};
pub(crate) use request::line;
pub use request::{Head, HeadError, Outgoing, RawRequest, parse_head};
use respond::{Cut, Options, refuse, write_response};
pub use sock::{Sock, Stream, TlsStream};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_an_answer_is_decided_in_one_place() {
        let next = |keep, closing, read, after| match Next::of(keep, closing, read, after) {
            Next::KeepAlive => "keep",
            Next::Close => "close",
            Next::Linger => "linger",
            Next::Tunnel(_) => "tunnel",
        };
        assert_eq!(next(true, false, true, After::Reuse), "keep");
        assert_eq!(
            next(false, false, true, After::Reuse),
            "close",
            "the client said close"
        );
        assert_eq!(
            next(true, true, true, After::Reuse),
            "close",
            "shutting down"
        );
        assert_eq!(next(true, false, true, After::Close), "close", "a refusal");
        assert_eq!(
            next(true, false, false, After::Reuse),
            "linger",
            "body left unread"
        );
        assert_eq!(next(true, false, false, After::Close), "linger");
    }
}
