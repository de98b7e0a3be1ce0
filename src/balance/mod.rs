//! Balancing strategies (SPEC §3). A strategy is built when an upstream's membership or
//! weights change and picks on every request. Picking reads per-backend atomics only:
//! no allocation, no lock, no blocking. Health, ejection and draining arrive through
//! `Backend::available`, so a state flip never rebuilds anything.
//!
//! Backups are a separate tier with its own strategy instance; `Upstream::pick` falls back
//! to it, so no strategy has to know what a backup is.

mod admit;
mod first;
pub mod hash_key;
mod least_conn;
pub mod maglev;
pub mod p2c;
mod peak_ewma;
mod random;
mod round_robin;
pub mod sticky;
mod upstream;

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::StrategyKind;
use crate::upstream::Backend;

pub use admit::{Admit, NoBackend};
pub use first::First;
pub use least_conn::LeastConn;
pub use maglev::Maglev;
pub use p2c::P2c;
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use upstream::{Tier, Upstream};

/// Backends already tried by this request (for retries), by stats identity. The
/// first `CAP` are held inline; more (a long retry chain over a large pool) spill to
/// the heap, so every retry still goes to a backend not tried yet while there is one.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    ptrs: [usize; Tried::CAP],
    len: usize,
    spill: Vec<usize>,
}

impl Tried {
    pub const CAP: usize = 8;

    pub fn insert(&mut self, b: &Backend) {
        let p = Arc::as_ptr(&b.stats) as usize;
        if self.len < Self::CAP {
            self.ptrs[self.len] = p;
            self.len += 1;
        } else {
            self.spill.push(p);
        }
    }

    /// Removes `b` (a stale connection to it was not its fault).
    pub fn forget(&mut self, b: &Backend) {
        let p = Arc::as_ptr(&b.stats) as usize;
        if let Some(i) = self.spill.iter().position(|&x| x == p) {
            self.spill.swap_remove(i);
        } else if let Some(i) = self.ptrs[..self.len].iter().position(|&x| x == p) {
            self.ptrs.copy_within(i + 1..self.len, i);
            self.len -= 1;
        }
    }

    #[inline]
    pub fn contains(&self, b: &Backend) -> bool {
        let p = Arc::as_ptr(&b.stats) as usize;
        self.ptrs[..self.len].contains(&p) || self.spill.contains(&p)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Per-request input to a pick.
pub struct PickCtx<'a> {
    /// Hash of the request's `hash_key` (consistent_hash only).
    pub key: Option<u64>,
    pub tried: &'a Tried,
    pub now: Instant,
}

impl PickCtx<'_> {
    /// Can `b` take this request: available, with room under its in-flight limit, and
    /// not already tried by it?
    #[inline]
    pub fn usable(&self, b: &Backend) -> bool {
        b.available(self.now) && b.has_room() && !self.tried.contains(b)
    }
}

/// One strategy over one tier (primaries or backups) of an upstream.
pub trait Pick: Send + Sync {
    /// Builds the strategy's tables for `tier`; runs when membership or weights change.
    fn build(tier: &[Arc<Backend>]) -> Self
    where
        Self: Sized;
    /// Index into `tier` of a usable backend, or None when none is usable.
    /// Runs per request: no allocation, no blocking, no lock held past the call.
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize>;
}

/// The closed set of strategies, dispatched by `match` so picks stay inlinable.
pub enum Strategy {
    RoundRobin(RoundRobin),
    Random(Random),
    LeastConn(LeastConn),
    P2c(P2c),
    PeakEwma(PeakEwma),
    ConsistentHash(Maglev),
    First(First),
}

impl Strategy {
    /// Builds `kind` over `tier`.
    pub fn build(kind: StrategyKind, tier: &[Arc<Backend>]) -> Strategy {
        match kind {
            StrategyKind::RoundRobin => Strategy::RoundRobin(RoundRobin::build(tier)),
            StrategyKind::Random => Strategy::Random(Random::build(tier)),
            StrategyKind::LeastConn => Strategy::LeastConn(LeastConn::build(tier)),
            StrategyKind::P2c => Strategy::P2c(P2c::build(tier)),
            StrategyKind::First => Strategy::First(First::build(tier)),
            StrategyKind::PeakEwma => Strategy::PeakEwma(PeakEwma::build(tier)),
            StrategyKind::ConsistentHash => Strategy::ConsistentHash(Maglev::build(tier)),
        }
    }

    #[inline]
    pub fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        match self {
            Strategy::RoundRobin(s) => s.pick(tier, ctx),
            Strategy::Random(s) => s.pick(tier, ctx),
            Strategy::LeastConn(s) => s.pick(tier, ctx),
            Strategy::P2c(s) => s.pick(tier, ctx),
            Strategy::PeakEwma(s) => s.pick(tier, ctx),
            Strategy::ConsistentHash(s) => s.pick(tier, ctx),
            Strategy::First(s) => s.pick(tier, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::random::test_support::tier;
    use super::*;

    #[test]
    fn tried_holds_more_than_its_inline_room() {
        let t = tier(&[1; 12]);
        let mut tried = Tried::default();
        for b in &t[..11] {
            tried.insert(b);
        }
        assert!(t[..11].iter().all(|b| tried.contains(b)));
        assert!(!tried.contains(&t[11]));
        tried.forget(&t[10]);
        tried.forget(&t[0]);
        assert!(!tried.contains(&t[10]) && !tried.contains(&t[0]));
        assert!(t[1..10].iter().all(|b| tried.contains(b)));
    }
}
