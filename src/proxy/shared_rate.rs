//! Rate-limit buckets a fleet keeps together in Redis (SPEC §8 `rate_limit.shared`).
//!
//! Each request is one atomic round trip: a Lua script (sent once, then run by its hash)
//! that applies GCRA, the token bucket written as one timestamp per key (the "theoretical
//! arrival time"), on Redis's own clock so that instances with skewed clocks agree. A
//! key expires once its bucket would be full again, so idle keys cost Redis nothing.
//!
//! Redis down, slow (over 100 ms) or refusing: the request is limited by this instance's
//! own buckets instead, the failure is logged (at most once a second per store) and
//! counted, and for the next second requests do not wait on Redis at all. The
//! connection manager reconnects in the background.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::upstream::rate::{SharedBuckets, StoreAnswer};

/// The longest a request waits for Redis before being limited locally.
const TIMEOUT: Duration = Duration::from_millis(100);
/// How long after a failure requests skip Redis.
const REST: Duration = Duration::from_secs(1);
/// Microseconds Lua's doubles still count exactly (2^53): longer intervals are clamped.
const MAX_MICROS: f64 = 9_007_199_254_740_992.0;

/// GCRA. KEYS[1]: the bucket; ARGV[1]: microseconds per token; ARGV[2]: the burst's
/// worth of microseconds. Returns 0 (take) or the microseconds until a token is there.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
"#;

static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_LUA));

/// One Redis, shared by every limit configured with its URL.
pub struct RedisBuckets {
    url: String,
    /// The URL without its password, for the log.
    shown: String,
    client: Option<redis::Client>,
    /// Made at the first request (inside the runtime); None if the URL was unusable.
    conn: OnceLock<Option<ConnectionManager>>,
    epoch: Instant,
    /// Microseconds since `epoch` until which requests skip Redis, after a failure.
    resting_until: AtomicU64,
    /// When a failure was last logged (microseconds since `epoch`, plus one).
    logged: AtomicU64,
}

impl std::fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBuckets")
            .field("url", &self.shown)
            .finish()
    }
}

impl RedisBuckets {
    /// A store for `url` (validated as a Redis URL); connects at its first use.
    pub fn new(url: &str) -> Arc<RedisBuckets> {
        let shown = match url.rsplit_once('@') {
            Some((_, host)) => format!("redis://{host}"),
            None => url.to_owned(),
        };
        Arc::new(RedisBuckets {
            url: url.to_owned(),
            shown,
            client: redis::Client::open(url).ok(),
            conn: OnceLock::new(),
            epoch: Instant::now(),
            resting_until: AtomicU64::new(0),
            logged: AtomicU64::new(0),
        })
    }

    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.conn
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_number_of_retries(2);
                let client = self.client.clone()?;
                ConnectionManager::new_lazy_with_config(client, config).ok()
            })
            .clone()
    }

    /// Notes a failure: requests skip Redis for `REST`; logged once a second.
    fn failed(&self, why: &dyn std::fmt::Display) {
        let now = self.micros();
        self.resting_until
            .store(now + REST.as_micros() as u64, Ordering::Relaxed);
        let last = self.logged.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + REST.as_micros() as u64;
        if due
            && self
                .logged
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(store = %self.shown, error = %why, "rate_limit: the shared store does not answer; limiting per instance");
        }
    }

    async fn ask(&self, key: &[u8], per_sec: f64, burst: u32) -> StoreAnswer {
        if self.micros() < self.resting_until.load(Ordering::Relaxed) {
            return Err(());
        }
        let Some(mut conn) = self.connection() else {
            self.failed(&"the URL cannot be used");
            return Err(());
        };
        let interval = (1e6 / per_sec).min(MAX_MICROS);
        let tolerance = (interval * f64::from(burst.max(1))).min(MAX_MICROS);
        let mut call = GCRA.key(key);
        call.arg(interval.ceil() as u64)
            .arg(tolerance.ceil() as u64);
        match tokio::time::timeout(TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(wait)) if wait <= 0 => Ok(Ok(())),
            Ok(Ok(wait)) => Ok(Err((wait as u64).div_ceil(1_000_000).max(1))),
            Ok(Err(e)) => {
                self.failed(&e);
                Err(())
            }
            Err(_) => {
                self.failed(&"no answer within 100 ms");
                Err(())
            }
        }
    }
}

impl SharedBuckets for RedisBuckets {
    fn url(&self) -> &str {
        &self.url
    }

    fn take<'a>(
        &'a self,
        key: &'a [u8],
        per_sec: f64,
        burst: u32,
    ) -> Pin<Box<dyn Future<Output = StoreAnswer> + Send + 'a>> {
        Box::pin(self.ask(key, per_sec, burst))
    }
}
