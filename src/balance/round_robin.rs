//! `round_robin`: smooth weighted round robin, the algorithm nginx introduced in 1.3.x
//! (`ngx_http_upstream_get_peer`), made lock-free. nginx runs the smoothing per request
//! under the upstream's lock; here `build` runs it once to precompute one full cycle of
//! tier indices, and `pick` only advances a shared atomic cursor through that cycle.
//! Weights 5,1,1 give `a a b a c a a`: the heavy backend's turns are interleaved with
//! the others' rather than served in one burst. Equal weights give strict rotation.
//!
//! Unavailable entries are skipped by walking forward; health flips never rebuild the
//! cycle. Slow start thins a backend's turns per pick (see `warm`), since the cycle is
//! built from configured weights.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::random::pick_weighted;
use super::{Pick, PickCtx};
use crate::upstream::Backend;

/// Longest precomputed cycle (256 KiB of indices). Config caps weights at `MAX_WEIGHT`
/// (1000), so a cycle has at most 1000 entries per backend, and building costs one pass
/// over the tier per entry. Past this length weights are scaled down to fit (each share
/// then errs by under one turn in `CYCLE_CAP`), so that a reload of an upstream with
/// hundreds of unevenly weighted backends does not stall on a quadratic build.
const CYCLE_CAP: u64 = 1 << 16;

/// Entries a pick walks before giving up on the cycle. Equal weights and small cycles are
/// walked whole; a long cycle (weights 1000:1) with its heavy backend down would
/// otherwise cost up to a thousand skipped entries per request.
const WALK_MIN: usize = 64;

/// Smooth weighted round robin over one tier. `pick` costs one atomic add and, usually,
/// one availability check.
pub struct RoundRobin {
    /// One smooth-WRR cycle of tier indices; each index appears weight/gcd times.
    cycle: Box<[u32]>,
    cursor: AtomicUsize,
    /// How far `pick` walks the cycle before falling back to weighted random.
    max_walk: usize,
}

impl Pick for RoundRobin {
    /// Runs nginx's smoothing once per cycle entry over the whole tier:
    /// O(cycle length × tier size), at most `CYCLE_CAP` × tier size.
    fn build(tier: &[Arc<Backend>]) -> Self {
        let weights = cycle_weights(tier);
        let cycle = smooth_cycle(&weights).into_boxed_slice();
        let len = cycle.len();
        // A random starting point, so that a fleet of proxies started (or reloaded)
        // together does not send its first requests to the same backend.
        let start = if len == 0 { 0 } else { fastrand::usize(0..len) };
        RoundRobin {
            max_walk: len.min(WALK_MIN.max(2 * tier.len())),
            cycle,
            cursor: AtomicUsize::new(start),
        }
    }

    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        let len = self.cycle.len();
        if len == 0 {
            return None;
        }
        let mut pos = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        for step in 0..self.max_walk {
            let i = self.cycle[pos] as usize;
            // `get`: a tier that does not match the build must not panic the request path.
            if let Some(b) = tier.get(i)
                && ctx.usable(b)
                && warm(b, ctx.now)
            {
                if step > 0 {
                    // Move the cursor past the skipped entries too. Otherwise the
                    // backend after a down one inherits all its turns: with a, b, c
                    // and b down, a plain walk would send c twice as much as a.
                    self.cursor.fetch_add(step, Ordering::Relaxed);
                }
                return Some(i);
            }
            pos += 1;
            if pos == len {
                pos = 0;
            }
        }
        // Nothing usable nearby: either nothing is usable at all, or only backends whose
        // turns are far apart. Weighted random answers both in two passes over the tier.
        pick_weighted(tier, ctx)
    }
}

/// Does a turn of `b` go to it? Always at full weight. During slow start its effective
/// weight is below the configured one that built the cycle, so it keeps each turn with
/// probability effective/configured and the turn passes on to the next entry.
#[inline]
fn warm(b: &Backend, now: Instant) -> bool {
    // effective_weight is in thousandths of the configured weight.
    let (eff, full) = (b.effective_weight(now), b.weight.saturating_mul(1000));
    eff >= full || fastrand::u32(0..full.max(1)) < eff
}

/// Configured weights divided by their gcd (so equal weights give a cycle of one turn
/// each), then scaled down if the cycle would exceed `CYCLE_CAP`. Weight 0, which config
/// rejects, counts as 1.
fn cycle_weights(tier: &[Arc<Backend>]) -> Vec<u64> {
    let mut weights: Vec<u64> = tier.iter().map(|b| u64::from(b.weight.max(1))).collect();
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    let mut sum = 0;
    for w in &mut weights {
        *w /= g;
        sum += *w;
    }
    if sum > CYCLE_CAP {
        for w in &mut weights {
            *w = (*w * CYCLE_CAP / sum).max(1);
        }
    }
    weights
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One cycle of nginx's smooth weighted round robin: each turn, every backend's current
/// weight grows by its weight, the largest (first in tier order on a tie, as nginx) wins
/// and gives back the total. After `sum(weights)` turns every current weight is 0 again,
/// so the cycle repeats exactly and holds each index `weights[i]` times.
fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        let mut best_current = i64::MIN;
        for (i, (c, &w)) in current.iter_mut().zip(weights).enumerate() {
            *c += w as i64;
            if *c > best_current {
                (best, best_current) = (i, *c);
            }
        }
        current[best] -= total as i64;
        cycle.push(best as u32);
    }
    debug_assert!(
        current.iter().all(|&c| c == 0),
        "smooth WRR cycle must close"
    );
    cycle
}

#[cfg(test)]
mod tests {
    use super::super::random::test_support::*;
    use super::*;
    use crate::balance::Tried;

    #[test]
    fn cycle_is_nginx_order() {
        assert_eq!(
            RoundRobin::build(&tier(&[5, 1, 1])).cycle[..],
            [0, 0, 1, 0, 2, 0, 0]
        );
        // Divided by the gcd first: same order, same length.
        assert_eq!(
            RoundRobin::build(&tier(&[10, 2, 2])).cycle[..],
            [0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(
            RoundRobin::build(&tier(&[7, 7, 7, 7])).cycle[..],
            [0, 1, 2, 3]
        );
        assert_eq!(RoundRobin::build(&tier(&[])).cycle.len(), 0);
    }

    #[test]
    fn equal_weights_rotate_strictly() {
        let t = tier(&[3, 3, 3, 3]);
        let rr = RoundRobin::build(&t);
        let tried = Tried::default();
        let picks: Vec<usize> = (0..12)
            .map(|_| rr.pick(&t, &ctx(&tried)).unwrap())
            .collect();
        for w in picks.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 4, "picks {picks:?}");
        }
    }

    #[test]
    fn shares_are_exact() {
        let weights = [5, 3, 2];
        let t = tier(&weights);
        assert_eq!(
            counts(&RoundRobin::build(&t), &t, 10_000),
            [5000, 3000, 2000]
        );
        let weights = [1, 2, 3, 4, 7];
        let t = tier(&weights);
        assert_shares(&counts(&RoundRobin::build(&t), &t, 10_000), &weights);
    }

    #[test]
    fn concurrent_picks_keep_exact_shares() {
        let t = tier(&[5, 3, 2]);
        let rr = RoundRobin::build(&t);
        let mut total = [0; 3];
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| counts(&rr, &t, 2_500))).collect();
            for h in handles {
                for (sum, c) in total.iter_mut().zip(h.join().unwrap()) {
                    *sum += c;
                }
            }
        });
        assert_eq!(total, [5000, 3000, 2000]);
    }

    #[test]
    fn unavailable_backend_is_skipped_and_others_rotate() {
        for_each_unavailability(&[1, 1, 1, 1], |t| {
            let rr = RoundRobin::build(t);
            let tried = Tried::default();
            let picks: Vec<usize> = (0..12).map(|_| rr.pick(t, &ctx(&tried)).unwrap()).collect();
            assert!(!picks.contains(&1), "picks {picks:?}");
            // Backend 2 must not inherit backend 1's turns: 0, 2, 3 in strict rotation.
            for w in picks.windows(2) {
                let next = match w[0] {
                    0 => 2,
                    2 => 3,
                    _ => 0,
                };
                assert_eq!(w[1], next, "picks {picks:?}");
            }
        });
    }

    #[test]
    fn heavy_backend_down_splits_evenly_between_the_rest() {
        let t = tier(&[5, 1, 1]);
        t[0].stats.set_unhealthy(true);
        let c = counts(&RoundRobin::build(&t), &t, 1_000);
        assert_eq!(c, [0, 500, 500]);
    }

    #[test]
    fn far_apart_turns_fall_back_to_weighted_random() {
        // Backend 1 has one turn in a cycle of 1001; the walk gives up after WALK_MIN.
        let t = tier(&[1000, 1]);
        t[0].stats.set_draining(true);
        assert_eq!(counts(&RoundRobin::build(&t), &t, 100), [0, 100]);
    }

    #[test]
    fn tried_backend_is_never_picked() {
        let t = tier(&[2, 1, 1]);
        let rr = RoundRobin::build(&t);
        let mut tried = Tried::default();
        tried.insert(&t[0]);
        for _ in 0..100 {
            assert_ne!(rr.pick(&t, &ctx(&tried)), Some(0));
        }
    }

    #[test]
    fn none_when_nothing_is_usable() {
        let t = tier(&[1000, 1, 3]);
        let rr = RoundRobin::build(&t);
        let mut tried = Tried::default();
        tried.insert(&t[2]);
        t[0].stats.set_unhealthy(true);
        t[1].stats
            .eject(Instant::now(), std::time::Duration::from_secs(60));
        assert_eq!(rr.pick(&t, &ctx(&tried)), None);
        assert_eq!(RoundRobin::build(&[]).pick(&[], &ctx(&tried)), None);
    }

    #[test]
    fn oversized_weights_are_scaled_to_the_cap() {
        let rr = RoundRobin::build(&tier(&[100_000, 3, 1]));
        let len = rr.cycle.len() as u64;
        assert!(len <= CYCLE_CAP + 3, "cycle of {len}");
        assert_eq!(rr.cycle.iter().filter(|&&i| i == 1).count(), 1);
        assert_eq!(rr.cycle.iter().filter(|&&i| i == 2).count(), 1);
    }
}
