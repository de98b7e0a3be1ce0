//! Upstreams: pools of backends with their strategy, and the routes that lead to them.
//! Everything a request needs to choose a backend sits in one immutable `Snapshot`,
//! swapped whole through an `ArcSwap` when the config is reloaded or edited; the
//! numbers that change per request live in each backend's `BackendStats` atomics.

mod backend;
mod build;
pub mod retry;
mod route;

use std::sync::Arc;

use crate::balance::{PickCtx, Strategy};
use crate::config::UpstreamConfig;
use crate::proxy::client::Client;

pub use backend::{Backend, BackendStats, State};
pub use build::{build, build_edited};
pub use route::{Route, host_of, request_host};

/// Routes and upstreams as one unit; replaced, never mutated.
pub struct Snapshot {
    pub routes: Box<[Route]>,
    pub upstreams: Box<[Arc<Upstream>]>,
}

impl Snapshot {
    /// The first route matching `host` and `path`, with its upstream.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<(&Route, &Arc<Upstream>)> {
        let r = self.routes.iter().find(|r| r.matches(host, path))?;
        Some((r, &self.upstreams[r.upstream]))
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// One tier (primaries or backups) with the strategy built over it.
pub struct Tier {
    pub backends: Box<[Arc<Backend>]>,
    strategy: Strategy,
}

impl Tier {
    fn new(cfg: &UpstreamConfig, backends: Vec<Arc<Backend>>) -> Tier {
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

/// A pool of backends, its strategy and its client (connection pools).
pub struct Upstream {
    pub name: Arc<str>,
    /// Counters for `/metrics`, kept across snapshots by name (holds the name too).
    pub stats: Arc<crate::metrics::UpstreamStats>,
    pub config: UpstreamConfig,
    /// Every backend in config order (for /status).
    pub all: Box<[Arc<Backend>]>,
    pub primaries: Tier,
    pub backups: Tier,
    pub client: Client,
    /// Retries of every kind stay within this (SPEC §2 `budget_percent`).
    pub budget: Arc<crate::upstream::retry::Budget>,
}

impl Upstream {
    /// Picks a usable primary, or a backup when no primary is usable.
    #[inline]
    pub fn pick(&self, ctx: &PickCtx<'_>) -> Option<&Arc<Backend>> {
        self.primaries.pick(ctx).or_else(|| self.backups.pick(ctx))
    }

    /// Is a backend this request has not tried yet available now? Bounds the retries
    /// of requests that never reached a backend (SPEC §2).
    pub fn any_untried(&self, tried: &crate::balance::Tried, now: tokio::time::Instant) -> bool {
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
