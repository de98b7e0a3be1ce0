//! An upstream as the balancer sees it: its backends, split into tiers (primaries,
//! then backups) with the strategy built over each, its retry budget and its counters.
//! Built when membership changes (proxy/build.rs), picked from per request.

use std::sync::Arc;

use super::{PickCtx, Strategy, Tried};
use crate::config::UpstreamConfig;
use crate::upstream::Backend;
use crate::upstream::queue::Queue;
use crate::upstream::retry::Budget;

/// One tier (primaries or backups) with the strategy built over it.
pub struct Tier {
    pub backends: Box<[Arc<Backend>]>,
    strategy: Strategy,
}

impl Tier {
    pub fn new(cfg: &UpstreamConfig, backends: Vec<Arc<Backend>>) -> Tier {
        let strategy = Strategy::build(cfg.strategy, &backends);
        Tier {
            backends: backends.into_boxed_slice(),
            strategy,
        }
    }

    #[inline]
    fn pick(&self, ctx: &PickCtx<'_>) -> Option<&Arc<Backend>> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.strategy.pick(&self.backends, ctx)?;
        self.backends.get(i)
    }
}

/// A pool of backends with its strategy; its client (connections) is the proxy's.
pub struct Upstream {
    pub name: Arc<str>,
    /// Counters for `/metrics`, kept across snapshots by name (holds the name too).
    pub stats: Arc<crate::metrics::UpstreamStats>,
    pub config: UpstreamConfig,
    /// Every backend in config order (for /status).
    pub all: Box<[Arc<Backend>]>,
    pub primaries: Tier,
    pub backups: Tier,
    /// Retries of every kind stay within this (SPEC §2 `budget_percent`).
    pub budget: Arc<Budget>,
    /// Where requests wait while every backend is full; None without
    /// `max_inflight_per_backend`.
    pub queue: Option<Arc<Queue>>,
}

impl Upstream {
    /// Picks a usable primary, or a backup when no primary is usable. Backups stand in
    /// for primaries that are down, not for ones that are merely full: a request then
    /// waits for a primary.
    #[inline]
    pub fn pick(&self, ctx: &PickCtx<'_>) -> Option<&Arc<Backend>> {
        self.primaries.pick(ctx).or_else(|| {
            let full = self.queue.is_some()
                && self.primaries.backends.iter().any(|b| b.available(ctx.now));
            if full { None } else { self.backups.pick(ctx) }
        })
    }

    /// Is a backend this request has not tried yet available now? Bounds the retries
    /// of requests that never reached a backend (SPEC §2).
    pub fn any_untried(&self, tried: &Tried, now: tokio::time::Instant) -> bool {
        self.all
            .iter()
            .any(|b| !tried.contains(b) && b.available(now))
    }

    /// May `b` take a request now, outside the strategy (a sticky client's backend)?
    /// It must be available, and a backup only while no primary is (SPEC §3).
    pub fn may_serve(&self, b: &Backend, now: tokio::time::Instant) -> bool {
        b.available(now) && (!b.backup || !self.primaries.backends.iter().any(|p| p.available(now)))
    }
}
