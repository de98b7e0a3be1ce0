//! A backend for one attempt of a request: the strategy's pick and a slot of that
//! backend's in-flight count. With `max_inflight_per_backend` (SPEC §8) a full backend
//! is not usable by any strategy, and when every available backend is full the request
//! waits in the upstream's queue, first come first served, up to `queue.max` waiting and
//! `queue.timeout` each; then 503.
//!
//! Without a limit this is a pick and an increment, no waiting and no queue.

use std::sync::Arc;

use tokio::time::Instant;

use super::{PickCtx, Tried, Upstream};
use crate::upstream::Backend;

/// What a request gets at once.
pub enum Admit {
    /// This backend, with a slot of its in-flight count taken.
    Backend(Arc<Backend>),
    /// Every available backend is full: wait (`Upstream::wait`).
    Wait,
    /// No backend is available.
    Unavailable,
}

/// Why a request got no backend (each is a 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    Unavailable,
    /// `queue.max` requests were already waiting.
    QueueFull,
    /// Waited `queue.timeout` without a backend freeing a slot.
    QueueTimeout,
}

impl Upstream {
    /// A backend for this request now, if one has room and nobody waits before it.
    #[inline]
    pub fn admit(&self, key: Option<u64>, tried: &Tried, now: Instant) -> Admit {
        let Some(q) = &self.queue else {
            // No limit: the pick, and a slot that is always there.
            return match self.pick_untried_first(key, tried, now) {
                Some(b) if b.take_slot() => Admit::Backend(Arc::clone(b)),
                _ => Admit::Unavailable,
            };
        };
        // Anyone waiting goes first: a new request queues behind them.
        if q.depth() > 0 {
            return Admit::Wait;
        }
        self.take(key, tried, now)
    }

    /// Waits in the queue for a backend (after `admit` said `Wait`). Dropping the
    /// future (the client left) gives up the place.
    pub async fn wait(
        &self,
        key: Option<u64>,
        tried: &Tried,
        since: Instant,
    ) -> Result<Arc<Backend>, NoBackend> {
        let Some(q) = &self.queue else {
            return Err(NoBackend::Unavailable);
        };
        let Some(place) = q.join(self.config.queue.max) else {
            return Err(NoBackend::QueueFull);
        };
        let deadline = since + self.config.queue.timeout;
        let mut first = true;
        loop {
            let woken = place.woken();
            tokio::pin!(woken);
            // Registered before looking, so a slot freed meanwhile still wakes it.
            woken.as_mut().enable();
            let now = Instant::now();
            if first && q.depth() > 1 {
                // Others were waiting first: their turn. If there is room (a backend
                // came back), wake the oldest rather than take it from them.
                if self.any_room(now) {
                    q.wake_one();
                }
            } else {
                match self.take(key, tried, now) {
                    Admit::Backend(b) => {
                        drop(place);
                        // More room (several slots freed, a backend came back): the
                        // next in line need not wait for another release.
                        if self.any_room(now) {
                            q.wake_one();
                        }
                        return Ok(b);
                    }
                    Admit::Unavailable => return Err(NoBackend::Unavailable),
                    Admit::Wait => {}
                }
            }
            first = false;
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                q.count_timeout();
                return Err(NoBackend::QueueTimeout);
            }
        }
    }

    /// A pick whose slot could be taken: a backend not tried yet by this request, or
    /// when every one was, any again. A pick whose last slot another request just took
    /// is now full, so the next pick skips it: at most one more try per backend.
    fn take(&self, key: Option<u64>, tried: &Tried, now: Instant) -> Admit {
        for _ in 0..=self.all.len() {
            let Some(b) = self.pick_untried_first(key, tried, now) else {
                break;
            };
            if b.take_slot() {
                return Admit::Backend(Arc::clone(b));
            }
        }
        if self.queue.is_some() && self.all.iter().any(|b| b.available(now) && !b.has_room()) {
            Admit::Wait
        } else {
            Admit::Unavailable
        }
    }

    #[inline]
    fn pick_untried_first(
        &self,
        key: Option<u64>,
        tried: &Tried,
        now: Instant,
    ) -> Option<&Arc<Backend>> {
        let ctx = PickCtx { key, tried, now };
        if let Some(b) = self.pick(&ctx) {
            return Some(b);
        }
        if tried.is_empty() {
            return None;
        }
        let none = Tried::default();
        self.pick(&PickCtx {
            key,
            tried: &none,
            now,
        })
    }

    /// Has an available backend room for a request?
    fn any_room(&self, now: Instant) -> bool {
        self.all.iter().any(|b| b.available(now) && b.has_room())
    }
}
