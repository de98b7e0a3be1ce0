//! Where requests wait while every backend of an upstream is at its
//! `max_inflight_per_backend` (SPEC §8), as HAProxy's `maxconn` and `maxqueue` do. The
//! queue is only the waiting room: who is waiting, and a wake-up each time a backend
//! frees a slot. Picking, and deciding to wait, is the balancer's (balance/admit.rs).
//!
//! Order: waiters are woken first come first served (tokio's `Notify::notify_one` wakes
//! the oldest), and while anyone waits a new request joins the queue instead of taking
//! a freed slot first. A waiter whose client leaves simply drops out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// An upstream's queue; kept across snapshots by upstream name, so that a reload or a
/// discovered change does not strand its waiters.
#[derive(Debug, Default)]
pub struct Queue {
    waiting: AtomicUsize,
    timeouts: AtomicU64,
    full: AtomicU64,
    notify: Notify,
}

impl Queue {
    /// Requests waiting now (`sluice_queue_depth`).
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests that waited past `queue.timeout` (`sluice_queue_timeouts_total`).
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Requests turned away because `queue.max` were already waiting.
    pub fn turned_away(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    pub fn count_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A place in the queue, unless `max` are already waiting. The place is given up
    /// when the returned guard drops (the request got a backend, gave up or left).
    pub fn join(&self, max: usize) -> Option<Place<'_>> {
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !joined {
            self.full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Place { queue: self })
    }

    /// A slot was freed (or may be free): wakes the oldest waiter, if any waits.
    #[inline]
    pub fn wake_one(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.notify.notify_one();
        }
    }
}

/// A waiting request's place in its upstream's queue.
pub struct Place<'a> {
    queue: &'a Queue,
}

impl<'a> Place<'a> {
    /// Resolves at the next wake-up meant for this waiter (or a stored one).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'a> {
        self.queue.notify.notified()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_wait_and_leaving_frees_a_place() {
        let q = Queue::default();
        let a = q.join(2).unwrap();
        let b = q.join(2).unwrap();
        assert!(q.join(2).is_none());
        assert_eq!((q.depth(), q.turned_away()), (2, 1));
        drop(a);
        assert_eq!(q.depth(), 1);
        let _c = q.join(2).unwrap();
        drop(b);
        assert_eq!(q.depth(), 1);
        assert!(q.join(0).is_none(), "max 0: no queue");
    }
}
