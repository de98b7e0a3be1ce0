//! `random`: weighted random choice over the usable backends of a tier, the classic
//! roulette wheel: one pass sums the usable weights, a draw lands in `[0, sum)`, and a
//! second pass walks the wheel to the backend under it. Nothing is precomputed, so health
//! flips and slow start (via `effective_weight`) take effect on the very next pick.
//!
//! The wheel helpers are shared: `p2c` draws its candidates with them and `round_robin`
//! falls back to them when its sequence has no usable entry nearby.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Pick, PickCtx};
use crate::upstream::Backend;

/// Weighted random over usable backends. Stateless: the RNG is `fastrand`'s thread-local.
pub struct Random;

impl Pick for Random {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        Random
    }

    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        pick_weighted(tier, ctx)
    }
}

/// A usable backend of `tier` drawn with probability proportional to its weight, or None
/// when none is usable. Two passes over the tier; reads atomics only.
pub(super) fn pick_weighted(tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
    let total = usable_weight(tier, ctx, None);
    if total == 0 {
        return None;
    }
    draw(tier, ctx, fastrand::u64(0..total), None).map(|(i, _)| i)
}

/// The weight a pick gives `b` now. Config keeps weights in 1..=MAX_WEIGHT, but slow start
/// may lower the effective weight towards 0; a usable backend must stay pickable, or a
/// tier whose only usable backend is warming up would answer None.
#[inline]
pub(super) fn weight(b: &Backend, now: Instant) -> u64 {
    u64::from(b.effective_weight(now).max(1))
}

/// Sum of `weight` over the usable backends of `tier`, leaving out index `skip`.
/// Zero exactly when no backend (other than `skip`) is usable.
#[inline]
pub(super) fn usable_weight(tier: &[Arc<Backend>], ctx: &PickCtx<'_>, skip: Option<usize>) -> u64 {
    tier.iter()
        .enumerate()
        .filter(|&(i, b)| Some(i) != skip && ctx.usable(b))
        .map(|(_, b)| weight(b, ctx.now))
        .sum()
}

/// The usable backend (other than `skip`) under point `r` of the wheel that
/// `usable_weight` measured, with its weight. `r` must be below that sum.
#[inline]
pub(super) fn draw(
    tier: &[Arc<Backend>],
    ctx: &PickCtx<'_>,
    mut r: u64,
    skip: Option<usize>,
) -> Option<(usize, u64)> {
    // A health check may mark a backend down between the two passes, shrinking the wheel
    // under `r`; the last usable backend seen then stands in, so a pick that found a
    // usable backend in the first pass still returns one if any is left.
    let mut last = None;
    for (i, b) in tier.iter().enumerate() {
        if Some(i) == skip || !ctx.usable(b) {
            continue;
        }
        let w = weight(b, ctx.now);
        if r < w {
            return Some((i, w));
        }
        r -= w;
        last = Some((i, w));
    }
    last
}

/// Builders shared by the strategy tests of this module.
#[cfg(test)]
pub(super) mod test_support {
    use std::sync::Arc;

    use crate::balance::{Pick, PickCtx, Tried};
    use crate::config::BackendUrl;
    use crate::upstream::Backend;

    /// A pick context at the current instant with `tried` already tried.
    pub fn ctx(tried: &Tried) -> PickCtx<'_> {
        PickCtx {
            key: None,
            tried,
            now: tokio::time::Instant::now(),
        }
    }

    /// Sets each backend's in-flight count.
    pub fn set_inflight(t: &[Arc<Backend>], loads: &[u32]) {
        for (b, &n) in t.iter().zip(loads) {
            b.stats
                .inflight
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A tier of fresh, healthy backends 10.0.0.i:80 with the given weights.
    pub fn tier(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let url = BackendUrl::parse(&format!("10.0.0.{i}:80")).unwrap();
                Arc::new(Backend::new(url, w, false, Arc::default()))
            })
            .collect()
    }

    /// `n` picks with nothing tried; returns how often each index won.
    pub fn counts<P: Pick>(p: &P, tier: &[Arc<Backend>], n: usize) -> Vec<usize> {
        let tried = Tried::default();
        let ctx = ctx(&tried);
        let mut out = vec![0; tier.len()];
        for _ in 0..n {
            out[p.pick(tier, &ctx).expect("a usable backend")] += 1;
        }
        out
    }

    /// Each backend's share of `counts` is within ±5% (relative) of weight / sum.
    pub fn assert_shares(counts: &[usize], weights: &[u32]) {
        let picks: usize = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let want = picks as f64 * f64::from(w) / f64::from(total);
            assert!(
                (c as f64 - want).abs() <= 0.05 * want,
                "backend {i}: {c} picks, want {want:.0} ± 5% (counts {counts:?})"
            );
        }
    }

    /// Runs `check` on each way a backend can be unavailable, on a fresh tier each time.
    pub fn for_each_unavailability(weights: &[u32], mut check: impl FnMut(&[Arc<Backend>])) {
        let make_down: [fn(&Backend); 3] = [
            |b| {
                b.stats.set_unhealthy(true);
            },
            |b| {
                b.stats.set_draining(true);
            },
            |b| {
                b.stats.eject(
                    tokio::time::Instant::now(),
                    std::time::Duration::from_secs(60),
                )
            },
        ];
        for down in make_down {
            let t = tier(weights);
            down(&t[1]);
            check(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::balance::Tried;

    #[test]
    fn shares_follow_weights() {
        fastrand::seed(7);
        let weights = [5, 3, 2];
        let t = tier(&weights);
        let r = Random::build(&t);
        assert_shares(&counts(&r, &t, 10_000), &weights);
    }

    #[test]
    fn unavailable_backend_is_never_picked() {
        fastrand::seed(8);
        for_each_unavailability(&[1, 5, 1], |t| {
            let c = counts(&Random::build(t), t, 2_000);
            assert_eq!(c[1], 0);
            assert!(c[0] > 0 && c[2] > 0);
        });
    }

    #[test]
    fn tried_backend_is_never_picked() {
        let t = tier(&[1, 1, 1]);
        let r = Random::build(&t);
        let mut tried = Tried::default();
        tried.insert(&t[0]);
        tried.insert(&t[2]);
        let ctx = PickCtx {
            key: None,
            tried: &tried,
            now: Instant::now(),
        };
        for _ in 0..200 {
            assert_eq!(r.pick(&t, &ctx), Some(1));
        }
    }

    #[test]
    fn none_when_nothing_is_usable() {
        let t = tier(&[1, 2]);
        let r = Random::build(&t);
        let tried = Tried::default();
        let ctx = PickCtx {
            key: None,
            tried: &tried,
            now: Instant::now(),
        };
        t[0].stats.set_unhealthy(true);
        t[1].stats.set_draining(true);
        assert_eq!(r.pick(&t, &ctx), None);
        assert_eq!(r.pick(&[], &ctx), None);
    }

    #[test]
    fn draw_stands_in_when_the_wheel_shrinks() {
        let t = tier(&[2, 2]);
        let tried = Tried::default();
        let ctx = PickCtx {
            key: None,
            tried: &tried,
            now: Instant::now(),
        };
        // Weights in thousandths (effective_weight's unit).
        assert_eq!(usable_weight(&t, &ctx, None), 4000);
        t[1].stats.set_unhealthy(true);
        // r was drawn against the old sum of 4000; backend 0 still answers.
        assert_eq!(draw(&t, &ctx, 3000, None), Some((0, 2000)));
        assert_eq!(draw(&t, &ctx, 3000, Some(0)), None);
    }
}
