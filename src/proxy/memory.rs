//! Giving freed heap memory back to the operating system.
//!
//! A burst of new connections allocates their buffers (kilobytes per connection)
//! and frees them when the connections go idle and are parked. glibc's allocator keeps
//! such freed memory resident: it only returns the top of the heap by itself, and the
//! long-lived allocations made during the burst (pooled backend connections, parked
//! slots) pin the rest. Whatever drops a connection's buffers calls `note_freed`; a
//! small thread of this module's own then asks the allocator to return every free
//! page, once the freeing has paused for `QUIET`, or `MAX_DELAY` after it began.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

use super::conn::now_ms;

/// A release waits until nothing was freed for this long...
const QUIET: Duration = Duration::from_millis(200);
/// ...or this long after the first freeing since the last release.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Something was freed since the last release.
static PENDING: AtomicBool = AtomicBool::new(false);
/// When something was last freed (`now_ms`).
static LAST_FREED: AtomicU64 = AtomicU64::new(0);

/// Notes that a connection let go of its buffers. Cheap: not called per request.
pub fn note_freed() {
    LAST_FREED.store(now_ms(), Ordering::Relaxed);
    if !PENDING.swap(true, Ordering::AcqRel)
        && let Some(t) = releaser()
    {
        t.unpark();
    }
}

/// The releasing thread, started on first use; None if it cannot be started.
fn releaser() -> Option<&'static Thread> {
    static THREAD: OnceLock<Option<Thread>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("sluice-mem".into())
                .spawn(run)
                .ok()
                .map(|h| h.thread().clone())
        })
        .as_ref()
}

fn run() {
    loop {
        while !PENDING.load(Ordering::Acquire) {
            std::thread::park();
        }
        let cap = now_ms() + MAX_DELAY.as_millis() as u64;
        loop {
            let at = (LAST_FREED.load(Ordering::Relaxed) + QUIET.as_millis() as u64).min(cap);
            let now = now_ms();
            if now >= at {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(at - now));
        }
        PENDING.store(false, Ordering::Release);
        super::pool::shed_idle_buffers();
        release_free();
    }
}

/// Returns the allocator's free pages to the OS. Costs about a millisecond on a heap
/// of tens of megabytes; pages handed back fault in again when next used.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free() {
    // SAFETY: malloc_trim has no preconditions; it only inspects and trims the
    // allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators manage this themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free() {}
