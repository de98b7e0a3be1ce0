//! Per-connection activity, for `idle_timeout` and `header_read_timeout`.
//!
//! hyper's own header timer also runs while a keep-alive connection waits for its next
//! request, which would cut idle clients off at `header_read_timeout` instead of
//! `idle_timeout`. So sluice keeps both itself: the IO wrapper notes when the first
//! byte of a new request head arrives, requests mark themselves active, and a watchdog
//! in the connection task closes the connection when a head takes too long or when no
//! request has been active for `idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Milliseconds since the process's first use of this clock; 0 is reserved for "none".
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    epoch.elapsed().as_millis() as u64
}

/// What a connection's watchdog needs to know.
#[derive(Debug)]
pub struct Activity {
    /// Requests whose response has not finished.
    active: AtomicU32,
    /// When the connection last became idle (ms).
    idle_since: AtomicU64,
    /// When the first byte of a pending request head arrived (ms); 0 = none pending.
    head_since: AtomicU64,
    /// The pending head has both Content-Length and Transfer-Encoding lines. hyper
    /// resolves that conflict itself (drops Content-Length, closes after), so the parsed
    /// request no longer shows it; SPEC §4 wants such requests refused with 400.
    conflicting_framing: AtomicBool,
}

/// What the watchdog should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    WaitUntil(Instant),
    /// Close the connection: no request is active and a limit ran out.
    Close(&'static str),
}

impl Activity {
    /// A new connection counts as having a head pending from its first moment, so a
    /// client that connects and sends nothing is cut off at `header_read_timeout`.
    pub fn new() -> Activity {
        let now = now_ms();
        Activity {
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            head_since: AtomicU64::new(now),
            conflicting_framing: AtomicBool::new(false),
        }
    }

    pub fn begin_request(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.idle_since.store(now_ms(), Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Bytes arrived. While no request is active they belong to a new request head.
    /// Pipelined heads (read while a request is active) are not inspected; hyper's own
    /// handling keeps those safe.
    fn on_read(&self, bytes: &[u8]) {
        if self.active.load(Ordering::Relaxed) != 0 {
            return;
        }
        if self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now_ms(), Ordering::Relaxed);
            self.conflicting_framing.store(false, Ordering::Relaxed);
        }
        if has_conflicting_framing(bytes) {
            self.conflicting_framing.store(true, Ordering::Relaxed);
        }
    }

    /// Did the head of the request now starting carry both framing headers?
    pub fn take_conflicting_framing(&self) -> bool {
        self.conflicting_framing.swap(false, Ordering::Relaxed)
    }

    /// Decides, from the two limits, whether to close now or when to look again.
    ///
    /// Requests starting and ending do not wake the watchdog (that would cost a wakeup
    /// per request), so it never sleeps longer than the shorter limit: a deadline that
    /// moved earlier while it slept is then missed by at most that much.
    pub fn check(&self, header_read_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = now_ms();
        let instant_now = Instant::now();
        let next_look = instant_now + header_read_timeout.min(idle_timeout);
        if self.active.load(Ordering::Relaxed) > 0 {
            return Verdict::WaitUntil(next_look);
        }
        let (since, limit, why) = match self.head_since.load(Ordering::Relaxed) {
            0 => (
                self.idle_since.load(Ordering::Relaxed),
                idle_timeout,
                "idle_timeout",
            ),
            t => (t, header_read_timeout, "header_read_timeout"),
        };
        let deadline = since + limit.as_millis() as u64;
        if now >= deadline {
            Verdict::Close(why)
        } else {
            Verdict::WaitUntil(next_look.min(instant_now + Duration::from_millis(deadline - now)))
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// An IO stream that reports reads to an `Activity`.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Does this start of a request head hold both a Content-Length and a
/// Transfer-Encoding header line? Looks only at line prefixes up to the blank line.
fn has_conflicting_framing(bytes: &[u8]) -> bool {
    const CL: &[u8] = b"content-length:";
    const TE: &[u8] = b"transfer-encoding:";
    let (mut cl, mut te) = (false, false);
    for line in bytes.split(|&b| b == b'\n').skip(1) {
        if line.is_empty() || line == b"\r" {
            break;
        }
        cl |= line.len() > CL.len() && line[..CL.len()].eq_ignore_ascii_case(CL);
        te |= line.len() > TE.len() && line[..TE.len()].eq_ignore_ascii_case(TE);
    }
    cl && te
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicting_framing_is_seen_in_either_order_and_only_in_the_head() {
        assert!(has_conflicting_framing(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(has_conflicting_framing(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n"
        ));
        assert!(!has_conflicting_framing(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nContent-Length: 5\r\n"
        ));
        assert!(!has_conflicting_framing(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn an_active_request_is_never_cut() {
        let a = Activity::new();
        a.begin_request();
        assert!(matches!(
            a.check(Duration::ZERO, Duration::ZERO),
            Verdict::WaitUntil(_)
        ));
        a.end_request();
        assert_eq!(
            a.check(Duration::ZERO, Duration::ZERO),
            Verdict::Close("idle_timeout")
        );
    }

    #[test]
    fn a_pending_head_uses_the_header_timer() {
        let a = Activity::new();
        assert_eq!(
            a.check(Duration::ZERO, Duration::from_secs(60)),
            Verdict::Close("header_read_timeout")
        );
        a.begin_request();
        a.end_request();
        assert!(matches!(
            a.check(Duration::ZERO, Duration::from_secs(60)),
            Verdict::WaitUntil(_)
        ));
        a.on_read(b"G");
        assert_eq!(
            a.check(Duration::ZERO, Duration::from_secs(60)),
            Verdict::Close("header_read_timeout")
        );
    }
}
