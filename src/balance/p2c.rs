//! `p2c`: power of two random choices (Mitzenmacher, "The Power of Two Choices in
//! Randomized Load Balancing", 2001; the balancer of Finagle, tower and linkerd). Two
//! distinct usable backends are drawn at random and the one with fewer in-flight
//! requests per unit of weight wins. Comparing two random backends instead of scanning
//! for the global minimum keeps a pick cheap and keeps many proxies with stale views of
//! load from all piling onto the same "least loaded" backend.
//!
//! Weights act twice: candidates are drawn by weighted random, and loads are compared
//! relative to weight. `two_choices` takes the load as a function so `peak_ewma` can reuse
//! it with latency × (in-flight + 1).

use std::cell::Cell;
use std::sync::Arc;

use super::random::{draw, usable_weight};
use super::{Pick, PickCtx};
use crate::upstream::Backend;

/// Power of two choices on in-flight requests. Stateless: loads live in `BackendStats`.
pub struct P2c;

impl Pick for P2c {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        P2c
    }

    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        two_choices(tier, ctx, |b| f64::from(b.inflight()))
    }
}

thread_local! {
    /// The backends the thread's last two-choices pick compared, by address (0: none).
    static DRAWN: Cell<[usize; 2]> = const { Cell::new([0; 2]) };
}

/// The backends (`Arc::as_ptr` addresses) the calling thread's last `p2c` or
/// `peak_ewma` pick compared, for a decision trace (SPEC §9); 0 where there was none.
/// Two stores per pick keep this; nothing else reads them.
pub fn last_drawn() -> [usize; 2] {
    DRAWN.with(Cell::get)
}

fn drawn(tier: &[Arc<Backend>], a: usize, b: Option<usize>) {
    let addr = |i: usize| tier.get(i).map_or(0, |b| Arc::as_ptr(b) as usize);
    DRAWN.with(|d| d.set([addr(a), b.map_or(0, addr)]));
}

/// Draws two distinct usable backends of `tier` by weighted random and returns the index
/// of the one with the lower `load(b) / effective weight`; with one usable backend,
/// returns it; None when none is usable.
///
/// `load` is the backend's raw load (lower is better): this routine divides by weight
/// (cross-multiplied), so `load` must not. On a tie, including NaN, the first draw wins.
///
/// Three passes over the tier and two calls to `load`; reads atomics only.
pub(crate) fn two_choices<L>(tier: &[Arc<Backend>], ctx: &PickCtx<'_>, load: L) -> Option<usize>
where
    L: Fn(&Backend) -> f64,
{
    let total = usable_weight(tier, ctx, None);
    if total == 0 {
        return None;
    }
    let (a, wa) = draw(tier, ctx, fastrand::u64(0..total), None)?;
    // Reusing the first pass's sum saves a pass. A backend that came up between passes is
    // missing from `total`; saturating keeps that race from underflowing.
    let rest = total.saturating_sub(wa);
    if rest == 0 {
        drawn(tier, a, None);
        return Some(a);
    }
    let Some((b, wb)) = draw(tier, ctx, fastrand::u64(0..rest), Some(a)) else {
        drawn(tier, a, None);
        return Some(a);
    };
    drawn(tier, a, Some(b));
    // The first draw alone is weighted random, so letting it win ties makes the split
    // exactly proportional to weight whenever loads are equal (all idle); a coin flip
    // between the two would pull weights 3:1 over two backends to 1:1.
    let (wa, wb) = (wa as f64, wb as f64);
    if load(&tier[b]) * wa < load(&tier[a]) * wb {
        Some(b)
    } else {
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::random::test_support::*;
    use super::*;
    use crate::balance::Tried;

    #[test]
    fn idle_shares_follow_weights() {
        fastrand::seed(21);
        for weights in [&[5, 3, 2][..], &[3, 1], &[1, 1, 1, 1]] {
            let t = tier(weights);
            assert_shares(&counts(&P2c, &t, 10_000), weights);
        }
    }

    #[test]
    fn most_loaded_of_three_is_never_picked() {
        fastrand::seed(22);
        let t = tier(&[1, 1, 1]);
        set_inflight(&t, &[2, 9, 0]);
        let c = counts(&P2c, &t, 3_000);
        assert_eq!(c[1], 0, "counts {c:?}");
        // Backend 2 wins every pair it is in (2 of 3 pairs), backend 0 the remaining one.
        assert!(c[2] > 1_800 && c[0] > 800, "counts {c:?}");
    }

    #[test]
    fn less_loaded_of_two_always_wins() {
        let t = tier(&[1, 1]);
        set_inflight(&t, &[3, 1]);
        assert_eq!(counts(&P2c, &t, 200), [0, 200]);
    }

    #[test]
    fn load_is_relative_to_weight() {
        // 4/3 per unit of weight beats 2/1.
        let t = tier(&[3, 1]);
        set_inflight(&t, &[4, 2]);
        assert_eq!(counts(&P2c, &t, 200), [200, 0]);
    }

    #[test]
    fn sole_usable_backend_is_returned() {
        let t = tier(&[1, 1, 1]);
        t[0].stats.set_unhealthy(true);
        let mut tried = Tried::default();
        tried.insert(&t[2]);
        for _ in 0..50 {
            assert_eq!(P2c.pick(&t, &ctx(&tried)), Some(1));
        }
    }

    #[test]
    fn unavailable_backend_is_never_picked() {
        fastrand::seed(23);
        for_each_unavailability(&[1, 1, 1], |t| {
            set_inflight(t, &[3, 0, 3]);
            let c = counts(&P2c, t, 1_000);
            assert_eq!(c[1], 0);
            assert!(c[0] > 0 && c[2] > 0, "counts {c:?}");
        });
    }

    #[test]
    fn tried_backend_is_never_picked() {
        let t = tier(&[1, 1, 1]);
        set_inflight(&t, &[0, 5, 5]);
        let mut tried = Tried::default();
        tried.insert(&t[0]);
        for _ in 0..100 {
            assert_ne!(P2c.pick(&t, &ctx(&tried)), Some(0));
        }
    }

    #[test]
    fn none_when_nothing_is_usable() {
        let t = tier(&[1, 1]);
        let tried = Tried::default();
        t[0].stats.set_unhealthy(true);
        t[1].stats
            .eject(tokio::time::Instant::now(), Duration::from_secs(60));
        assert_eq!(P2c.pick(&t, &ctx(&tried)), None);
        assert_eq!(P2c.pick(&[], &ctx(&tried)), None);
    }

    #[test]
    fn two_choices_takes_any_load() {
        let t = tier(&[1, 1]);
        t[0].stats.observe_latency(Duration::from_millis(50));
        t[1].stats.observe_latency(Duration::from_millis(5));
        let tried = Tried::default();
        for _ in 0..100 {
            let pick = two_choices(&t, &ctx(&tried), |b| b.stats.latency_ewma_ms());
            assert_eq!(pick, Some(1));
        }
    }
}
