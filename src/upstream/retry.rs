//! Retry policy (SPEC §2 `[upstream.X.retry]`, §4): the budget that keeps retries of
//! every kind under `budget_percent` of an upstream's requests over the last 10
//! seconds (but always allows 3 per second, so a quiet upstream can still retry), and
//! which methods may be sent again once they reached a backend.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use http::Method;
use tokio::time::Instant;

const WINDOW_SECS: u64 = 10;
/// Retries always allowed per second, whatever the ratio.
const MIN_RETRIES_PER_SEC: u32 = 3;

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Requests and retries per second over a 10-second ring, lock-free. Concurrent updates
/// at a second boundary may lose a count; a budget can afford that.
pub struct Budget {
    percent: u32,
    /// Seconds count from here.
    epoch: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl Budget {
    pub fn new(percent: u32) -> Budget {
        Budget {
            percent,
            epoch: Instant::now(),
            buckets: Default::default(),
        }
    }

    pub fn percent(&self) -> u32 {
        self.percent
    }

    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        // Second numbers start at 0, so a fresh bucket must also be reset once.
        let stored = b.second.load(Ordering::Relaxed);
        if stored != sec + 1 {
            b.second.store(sec + 1, Ordering::Relaxed);
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts one client request.
    pub fn record_request(&self, now: Instant) {
        self.bucket(self.second_of(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_retry(&self, now: Instant) -> bool {
        let sec = self.second_of(now);
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Relaxed);
            if s != 0 && s - 1 + WINDOW_SECS > sec {
                requests += u64::from(b.requests.load(Ordering::Relaxed));
                retries += u64::from(b.retries.load(Ordering::Relaxed));
            }
        }
        let current = self.bucket(sec);
        let allowed = retries * 100 < requests * u64::from(self.percent)
            || current.retries.load(Ordering::Relaxed) < MIN_RETRIES_PER_SEC;
        if allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }
}

/// Methods whose repetition the backend must tolerate (RFC 9110 §9.2.2), less those
/// (TRACE, and the rest) no proxy retries.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_quiet_upstream_may_always_retry_three_times_a_second() {
        let b = Budget::new(0);
        let now = Instant::now();
        assert!(b.try_retry(now) && b.try_retry(now) && b.try_retry(now));
        assert!(!b.try_retry(now));
        assert!(b.try_retry(now + Duration::from_secs(1)));
    }

    #[test]
    fn retries_stay_under_the_percentage_of_requests() {
        let b = Budget::new(20);
        let now = Instant::now();
        for _ in 0..100 {
            b.record_request(now);
        }
        let granted = (0..100).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the window has moved on: only the per-second floor.
        let later = now + Duration::from_secs(10);
        let granted = (0..100).filter(|_| b.try_retry(later)).count();
        assert_eq!(granted, 3);
    }

    #[test]
    fn only_idempotent_methods_are_replayable() {
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
