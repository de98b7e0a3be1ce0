//! Route rate limits (SPEC §8 `rate_limit`): a token bucket per key (the client's
//! address, or a header's value), `burst` tokens refilled at `rate` per second. Keys are
//! held as 64-bit hashes in a map of bounded size: when it is full, buckets that have
//! refilled (idle keys) are forgotten first, then the oldest; a flood of distinct keys
//! cannot exhaust memory.
//!
//! A limit with `shared` keeps its buckets in a store the fleet shares (Redis, reached
//! through proxy/shared_rate.rs behind `SharedBuckets`); when the store does not answer,
//! the limit falls back to this instance's own buckets for that request.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The most keys one limit remembers.
pub const MAX_KEYS: usize = 100_000;

pub use crate::config::RateKey;

/// A shared store's answer: Ok(verdict) (Ok: take; Err: seconds until a token), or
/// Err when it did not answer.
pub type StoreAnswer = Result<Result<(), u64>, ()>;

/// Where a fleet keeps a limit's buckets together.
pub trait SharedBuckets: Send + Sync + std::fmt::Debug {
    /// The store's address as configured (one store serves every limit on it).
    fn url(&self) -> &str;
    /// Takes a token for `key` in one atomic round trip: Ok(Ok) within the limit,
    /// Ok(Err(seconds until a token is there)) over it, Err when the store did not
    /// answer (it logs why).
    fn take<'a>(
        &'a self,
        key: &'a [u8],
        per_sec: f64,
        burst: u32,
    ) -> Pin<Box<dyn Future<Output = StoreAnswer> + Send + 'a>>;
}

type Shared = (Arc<dyn SharedBuckets>, Box<[u8]>);

#[derive(Debug)]
pub struct RateLimit {
    pub key: RateKey,
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<u64, Bucket>>,
    max_keys: usize,
    /// The fleet's store, and what this limit's keys start with in it.
    shared: Option<Shared>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(key: RateKey, per_sec: f64, burst: u32) -> RateLimit {
        Self::with_capacity(key, per_sec, burst, MAX_KEYS)
    }

    fn with_capacity(key: RateKey, per_sec: f64, burst: u32, max_keys: usize) -> RateLimit {
        RateLimit {
            key,
            per_sec,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            max_keys,
            shared: None,
        }
    }

    /// This limit with its buckets in `store`, under keys starting with `prefix`.
    pub fn shared_in(mut self, store: Arc<dyn SharedBuckets>, prefix: Box<[u8]>) -> RateLimit {
        self.shared = Some((store, prefix));
        self
    }

    /// Are these the settings of `cfg`?
    pub fn same_settings(&self, cfg: &crate::config::RateLimitConfig) -> bool {
        self.key == cfg.key
            && self.per_sec == cfg.per_sec
            && self.burst == f64::from(cfg.burst.max(1))
            && self.store().map(|s| s.url()) == cfg.shared.as_deref()
    }

    /// The fleet's store, for a shared limit.
    pub fn store(&self) -> Option<&Arc<dyn SharedBuckets>> {
        self.shared.as_ref().map(|(s, _)| s)
    }

    /// The key a shared limit uses in its store for a request: its prefix, then
    /// `h:` and the header's value, or `ip:` and the client's address as text (readable
    /// in Redis). None for a limit of this instance only.
    pub fn shared_key(&self, header: Option<&[u8]>, client: std::net::IpAddr) -> Option<Vec<u8>> {
        use std::io::Write;
        let (_, prefix) = self.shared.as_ref()?;
        let mut k = Vec::with_capacity(prefix.len() + 48);
        k.extend_from_slice(prefix);
        match header {
            Some(v) => {
                k.extend_from_slice(b"h:");
                k.extend_from_slice(v);
            }
            None => {
                let _ = write!(k, "ip:{client}");
            }
        }
        Some(k)
    }

    /// Takes a token for `key` (from `shared_key`) from the fleet's store, or when it
    /// does not answer, from this instance's bucket. The second value: fell back.
    pub async fn take_shared(&self, key: &[u8]) -> (Result<(), u64>, bool) {
        if let Some((store, _)) = &self.shared {
            let burst = self.burst as u32;
            if let Ok(verdict) = store.take(key, self.per_sec, burst).await {
                return (verdict, false);
            }
        }
        (self.take(key, Instant::now()), true)
    }

    /// Takes a token for `key` at `now`: Ok, or Err with the whole seconds (at least
    /// 1) until one is there again.
    pub fn take(&self, key: &[u8], now: Instant) -> Result<(), u64> {
        let mut h = fnv::FnvHasher::default();
        h.write(key);
        let id = h.finish();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&id) && buckets.len() >= self.max_keys {
            self.make_room(&mut buckets, now);
        }
        let b = buckets.entry(id).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = self.tokens_at(b, now).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.per_sec;
            Err((wait.ceil() as u64).max(1))
        }
    }

    /// Forgets the keys whose buckets have refilled (they would start full anyway),
    /// and if that is not enough, the least recently used tenth.
    fn make_room(&self, buckets: &mut HashMap<u64, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.tokens_at(b, now) < self.burst);
        if buckets.len() >= self.max_keys {
            let mut ages: Vec<(Instant, u64)> = buckets.iter().map(|(k, b)| (b.at, *k)).collect();
            ages.sort_unstable();
            for (_, k) in ages.iter().take(self.max_keys / 10 + 1) {
                buckets.remove(k);
            }
        }
    }

    /// The tokens `b` would hold at `now` without the cap at `burst`.
    fn tokens_at(&self, b: &Bucket, now: Instant) -> f64 {
        b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimit::new(RateKey::ClientIp, 2.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take(b"a", t), Ok(()));
        }
        assert_eq!(l.take(b"a", t), Err(1));
        assert_eq!(l.take(b"b", t), Ok(()), "another key has its own bucket");
        assert_eq!(
            l.take(b"a", t + Duration::from_millis(500)),
            Ok(()),
            "refilled at 2/s"
        );
        assert_eq!(l.take(b"a", t + Duration::from_millis(500)), Err(1));
        let slow = RateLimit::new(RateKey::ClientIp, 1.0 / 60.0, 1);
        assert_eq!(slow.take(b"a", t), Ok(()));
        assert_eq!(slow.take(b"a", t), Err(60), "Retry-After in whole seconds");
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_in_bounded_memory() {
        let l = RateLimit::with_capacity(RateKey::ClientIp, 1.0, 5, 1000);
        let t = Instant::now();
        for i in 0u32..50_000 {
            let _ = l.take(&i.to_be_bytes(), t + Duration::from_micros(u64::from(i)));
            assert!(l.len() <= 1000);
        }
        // A busy key survives the flood better than idle ones: it is recent.
        assert!(l.len() <= 1000);
    }
}
