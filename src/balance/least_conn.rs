//! `least_conn`: the usable backend with the fewest in-flight requests relative to its
//! weight, as nginx's and HAProxy's `leastconn` (weighted). Loads are compared
//! cross-multiplied, `inflight_a * weight_b < inflight_b * weight_a` in u64, so there is no
//! division and no rounding. One pass over the tier, reading each backend's in-flight
//! counter once.
//!
//! Ties are common, because at light load every backend sits at 0 in flight. They are
//! broken by weighted random (reservoir sampling over the tied backends in the same pass),
//! so idle picks spread over all backends in proportion to weight, rather than going
//! to the first in list order or in plain rotation, which would ignore weights below
//! saturation.

use std::sync::Arc;

use super::random::weight;
use super::{Pick, PickCtx};
use crate::upstream::Backend;

/// Fewest in-flight requests per unit of weight. Stateless: loads live in `BackendStats`.
pub struct LeastConn;

impl Pick for LeastConn {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        LeastConn
    }

    /// One pass over the tier; one RNG draw per backend tied for least loaded.
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        // (index, in-flight, weight) of the current choice.
        let mut best: Option<(usize, u64, u64)> = None;
        // Sum of the weights of the backends tied with `best` so far.
        let mut tied = 0;
        for (i, b) in tier.iter().enumerate() {
            if !ctx.usable(b) {
                continue;
            }
            let (load, w) = (u64::from(b.inflight()), weight(b, ctx.now));
            let Some((_, best_load, best_w)) = best else {
                (best, tied) = (Some((i, load, w)), w);
                continue;
            };
            // in-flight ≤ u32::MAX and weight ≤ u32::MAX: the products fit in u64.
            let (this, that) = (load * best_w, best_load * w);
            if this < that {
                (best, tied) = (Some((i, load, w)), w);
            } else if this == that {
                // Weighted reservoir sampling: the k-th tied backend replaces the choice
                // with probability w_k / (w_1 + … + w_k), which leaves each tied backend
                // chosen with probability proportional to its weight.
                tied += w;
                if fastrand::u64(0..tied) < w {
                    best = Some((i, load, w));
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {

    use super::super::random::test_support::*;
    use super::*;
    use crate::balance::Tried;

    #[test]
    fn avoids_the_busier_backend() {
        let t = tier(&[1, 1, 1]);
        set_inflight(&t, &[4, 1, 2]);
        let tried = Tried::default();
        for _ in 0..100 {
            assert_eq!(LeastConn.pick(&t, &ctx(&tried)), Some(1));
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        // 6/3 = 2 per unit of weight beats 3/1 = 3.
        let t = tier(&[3, 1]);
        set_inflight(&t, &[6, 3]);
        let tried = Tried::default();
        assert_eq!(LeastConn.pick(&t, &ctx(&tried)), Some(0));
        set_inflight(&t, &[7, 2]);
        assert_eq!(LeastConn.pick(&t, &ctx(&tried)), Some(1));
    }

    #[test]
    fn idle_picks_spread_over_all_backends() {
        fastrand::seed(11);
        let weights = [1, 1, 1, 1];
        let t = tier(&weights);
        assert_shares(&counts(&LeastConn, &t, 10_000), &weights);
    }

    #[test]
    fn idle_picks_follow_weights() {
        fastrand::seed(12);
        let weights = [5, 3, 2];
        let t = tier(&weights);
        assert_shares(&counts(&LeastConn, &t, 10_000), &weights);
    }

    #[test]
    fn ties_among_the_least_loaded_only() {
        fastrand::seed(13);
        let t = tier(&[1, 1, 1, 1]);
        set_inflight(&t, &[2, 0, 5, 0]);
        let c = counts(&LeastConn, &t, 2_000);
        assert_eq!((c[0], c[2]), (0, 0));
        assert!(c[1] > 900 && c[3] > 900, "counts {c:?}");
    }

    #[test]
    fn unavailable_backend_is_never_picked() {
        fastrand::seed(14);
        // Backend 1 is the least loaded, but down.
        for_each_unavailability(&[1, 1, 1], |t| {
            set_inflight(t, &[3, 0, 3]);
            let c = counts(&LeastConn, t, 1_000);
            assert_eq!(c[1], 0);
            assert!(c[0] > 0 && c[2] > 0, "counts {c:?}");
        });
    }

    #[test]
    fn tried_backend_is_never_picked() {
        let t = tier(&[1, 1]);
        set_inflight(&t, &[0, 9]);
        let mut tried = Tried::default();
        tried.insert(&t[0]);
        assert_eq!(LeastConn.pick(&t, &ctx(&tried)), Some(1));
    }

    #[test]
    fn none_when_nothing_is_usable() {
        let t = tier(&[1, 1]);
        let mut tried = Tried::default();
        tried.insert(&t[0]);
        t[1].stats.set_draining(true);
        assert_eq!(LeastConn.pick(&t, &ctx(&tried)), None);
        assert_eq!(LeastConn.pick(&[], &ctx(&tried)), None);
    }
}
