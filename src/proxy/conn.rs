//! Per-connection bookkeeping: activity for `idle_timeout`, `header_read_timeout` and
//! parking, and the IO wrapper that reports reads (HTTP/2 and tunnels; the HTTP/1.1
//! loop reports its reads itself).
//!
//! The first byte of a new request head is noted, requests mark themselves active, and
//! a watchdog in the connection task acts on what `Activity::check` says: a head still
//! incomplete after `header_read_timeout`, or a connection idle for `idle_timeout`, is
//! closed.
//!
//! Parking: a keep-alive HTTP/1 client that has been idle for `PARK_AFTER` gives up
//! its task and buffers and is held as a bare socket in the parking lot (park.rs) until
//! it sends again, so 10,000 idle clients cost kilobytes each in the kernel, not in
//! sluice.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How long an HTTP/1 connection may sit idle in its task before it is parked. Short
/// enough that a burst of new idle clients never holds many buffers at once; long
/// enough that a client sending back-to-back requests never pays for a new task. The
/// watchdog of a busy connection wakes this often, which costs a timer wakeup, not a
/// syscall.
pub const PARK_AFTER: Duration = Duration::from_millis(20);

/// How long the watchdog waits after its `streak`-th check in a row that found a
/// request active: `PARK_AFTER`, doubling up to 32 times that, and never more than a
/// quarter of either client timer, so a connection that goes idle is parked or timed
/// out at most that much later.
fn busy_recheck(streak: u32, t: Timers) -> Duration {
    let backoff = PARK_AFTER * (1u32 << streak.min(5));
    backoff
        .min(t.idle / 4)
        .min(t.header_read / 4)
        .max(PARK_AFTER)
}

/// Milliseconds since the process's first use of this clock; 0 is reserved for "none".
pub(crate) fn now_ms() -> u64 {
    ms_of(Instant::now())
}

/// `now_ms` at `at`, for a caller that has read the clock already.
fn ms_of(at: Instant) -> u64 {
    // Real time, an hour back: an instant read from a paused clock (tests) before or
    // after this is first used still counts from it, never as 0 ("none").
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        let now = std::time::Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    });
    at.into_std().saturating_duration_since(epoch).as_millis() as u64
}

fn instant_of(ms: u64) -> Instant {
    let now = now_ms();
    let now_i = Instant::now();
    if ms >= now {
        now_i + Duration::from_millis(ms - now)
    } else {
        now_i - Duration::from_millis(now - ms)
    }
}

/// The two client-side timers of `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub header_read: Duration,
    pub idle: Duration,
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
    /// A request was answered (see `answered`).
    answered: std::sync::atomic::AtomicBool,
    /// Watchdog checks in a row that found a request active.
    busy_checks: AtomicU32,
    /// HTTP/2: bytes between requests are frames (WINDOW_UPDATE, PING), not the start
    /// of a request head, so they do not start `header_read_timeout`.
    multiplexed: std::sync::atomic::AtomicBool,
}

/// What the watchdog should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    WaitUntil(Instant),
    /// Idle for `PARK_AFTER`: park the connection.
    Park,
    /// Close the connection: no request is active and a limit ran out.
    Close(Expired),
}

/// The limit that closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head (or the TLS handshake) took longer than `header_read_timeout`:
    /// a refusal.
    HeaderRead,
    /// Idle between requests for `idle_timeout`: an ordinary end.
    Idle,
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
            answered: std::sync::atomic::AtomicBool::new(false),
            busy_checks: AtomicU32::new(0),
            multiplexed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The connection speaks HTTP/2 (see `multiplexed`).
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    pub fn begin_request(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.end_request_at(Instant::now());
    }

    /// `end_request`, with the clock read by the caller.
    pub fn end_request_at(&self, now: Instant) {
        self.idle_since.store(ms_of(now), Ordering::Relaxed);
        self.answered.store(true, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Has the connection answered a request? Idle after that means between requests,
    /// where a drain may close it: a client sends a request again when a reused
    /// connection closes, not when a new one does.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Bytes arrived. While no request is active they belong to a new request head.
    pub fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.multiplexed.load(Ordering::Relaxed)
        {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// When a parked connection is closed for being idle, in `now_ms` terms.
    pub fn idle_deadline_ms(&self, t: Timers) -> u64 {
        self.idle_since.load(Ordering::Relaxed) + t.idle.as_millis() as u64
    }

    /// Decides whether to close or park now, or when to look again. Requests starting
    /// and ending do not wake the watchdog (that would cost a wakeup per request), so
    /// it looks at least every `PARK_AFTER`; `can_park` is false for HTTP/2.
    pub fn check(&self, t: Timers, can_park: bool) -> Verdict {
        if self.active.load(Ordering::Relaxed) > 0 {
            // A connection that stays busy is looked at less and less often (a long
            // download or a steady stream of requests needs no watching); it is looked
            // at again soon after it goes idle, within `busy_recheck`.
            let streak = self.busy_checks.fetch_add(1, Ordering::Relaxed);
            return Verdict::WaitUntil(Instant::now() + busy_recheck(streak, t));
        }
        self.busy_checks.store(0, Ordering::Relaxed);
        let now = now_ms();
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            let deadline = head + t.header_read.as_millis() as u64;
            return if now >= deadline {
                Verdict::Close(Expired::HeaderRead)
            } else {
                Verdict::WaitUntil((Instant::now() + PARK_AFTER).min(instant_of(deadline)))
            };
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        let deadline = idle + t.idle.as_millis() as u64;
        if now >= deadline {
            Verdict::Close(Expired::Idle)
        } else if can_park && now >= idle + PARK_AFTER.as_millis() as u64 {
            Verdict::Park
        } else if can_park {
            Verdict::WaitUntil(instant_of(idle + PARK_AFTER.as_millis() as u64))
        } else {
            Verdict::WaitUntil(instant_of(deadline))
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// An IO stream that reports reads to an `Activity`, and first replays `prefix`: bytes
/// already read from the socket that belong to what comes next (a tunnel's first bytes).
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    prefix: Bytes,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>, prefix: Bytes) -> Self {
        Tracked {
            inner,
            activity,
            prefix,
        }
    }

    /// The stream and the replay bytes not read yet.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            self.activity.on_read();
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
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

/// Reads and drops what a client still sends, until it stops (EOF, an error) or
/// `at_most` bytes came: before closing a connection whose answer is written, so that
/// unread bytes do not turn the close into a reset that destroys the answer. The caller
/// bounds the time.
pub async fn drain<R: tokio::io::AsyncRead + Unpin>(r: &mut R, at_most: usize) {
    use tokio::io::AsyncReadExt;
    // On the heap: in a future it would make every connection task this much larger.
    let mut scratch = vec![0u8; 16 * 1024];
    let mut total = 0;
    while total < at_most {
        match r.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timers = Timers {
        header_read: Duration::ZERO,
        idle: Duration::ZERO,
    };

    /// Requests 100 ms apart never leave a connection idle for its 300 ms
    /// `idle_timeout`; once they stop, it is closed on time.
    #[tokio::test(start_paused = true)]
    async fn requests_within_idle_timeout_keep_the_connection() {
        let t = Timers {
            header_read: Duration::from_secs(5),
            idle: Duration::from_millis(300),
        };
        let a = Activity::new();
        for _ in 0..10 {
            a.on_read();
            a.begin_request();
            tokio::time::advance(Duration::from_millis(5)).await;
            a.end_request();
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(matches!(a.check(t, false), Verdict::WaitUntil(_)));
        }
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(a.check(t, false), Verdict::Close(Expired::Idle));
    }

    #[test]
    fn http2_frames_between_requests_do_not_start_a_head_timeout() {
        let t = Timers {
            header_read: Duration::ZERO,
            idle: Duration::from_secs(60),
        };
        let a = Activity::new();
        a.set_multiplexed();
        a.begin_request();
        a.end_request();
        a.on_read(); // a WINDOW_UPDATE after the response
        assert!(matches!(a.check(t, false), Verdict::WaitUntil(_)));
    }

    #[test]
    fn an_active_request_is_never_cut() {
        let a = Activity::new();
        a.begin_request();
        assert!(matches!(a.check(T0, true), Verdict::WaitUntil(_)));
        a.end_request();
        assert_eq!(a.check(T0, true), Verdict::Close(Expired::Idle));
    }

    #[test]
    fn a_busy_connection_is_looked_at_less_often_within_its_timers() {
        let t = Timers {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        assert_eq!(busy_recheck(0, t), PARK_AFTER);
        assert_eq!(busy_recheck(1, t), PARK_AFTER * 2);
        assert_eq!(busy_recheck(50, t), PARK_AFTER * 32);
        let short = Timers {
            header_read: Duration::from_millis(200),
            idle: Duration::from_millis(400),
        };
        assert_eq!(busy_recheck(50, short), Duration::from_millis(50));
        let tiny = Timers {
            header_read: Duration::from_millis(10),
            idle: Duration::from_millis(10),
        };
        assert_eq!(busy_recheck(50, tiny), PARK_AFTER);
        // The streak ends when a check finds the connection idle.
        let a = Activity::new();
        a.begin_request();
        for _ in 0..10 {
            let _ = a.check(t, true);
        }
        let Verdict::WaitUntil(at) = a.check(t, true) else {
            panic!("a busy connection is not cut");
        };
        assert!(at >= Instant::now() + PARK_AFTER * 16);
        a.end_request();
        let _ = a.check(t, true);
        a.begin_request();
        let Verdict::WaitUntil(at) = a.check(t, true) else {
            panic!("a busy connection is not cut");
        };
        assert!(at <= Instant::now() + PARK_AFTER);
    }

    #[test]
    fn a_pending_head_uses_the_header_timer() {
        let long = Timers {
            header_read: Duration::ZERO,
            idle: Duration::from_secs(60),
        };
        let a = Activity::new();
        assert_eq!(a.check(long, true), Verdict::Close(Expired::HeaderRead));
        a.begin_request();
        a.end_request();
        assert!(matches!(a.check(long, true), Verdict::WaitUntil(_)));
        a.on_read();
        assert_eq!(a.check(long, true), Verdict::Close(Expired::HeaderRead));
    }

    #[test]
    fn an_idle_http1_connection_parks_after_a_while() {
        let t = Timers {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let a = Activity::new();
        a.begin_request();
        a.end_request();
        assert!(matches!(a.check(t, true), Verdict::WaitUntil(_)));
        std::thread::sleep(PARK_AFTER + Duration::from_millis(5));
        assert_eq!(a.check(t, true), Verdict::Park);
        assert!(
            matches!(a.check(t, false), Verdict::WaitUntil(_)),
            "HTTP/2 never parks"
        );
    }
}
