//! `peak_ewma`: power of two choices on peak-EWMA latency × (in-flight + 1) (Finagle's
//! load metric, as in tower and Linkerd). A backend that turns slow is avoided from its
//! first slow answer; one that recovers wins traffic back as its old peak decays. The
//! estimate lives in `BackendStats` (updated on every response head); the two-choice
//! routine is shared with `p2c`.

use std::sync::Arc;

use super::p2c::two_choices;
use super::{Pick, PickCtx};
use crate::upstream::Backend;

pub struct PeakEwma;

impl Pick for PeakEwma {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        PeakEwma
    }

    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        two_choices(tier, ctx, |b| b.stats.peak_cost(ctx.now))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::random::test_support::*;
    use super::*;
    use crate::balance::Tried;

    #[test]
    fn a_slow_backend_loses_the_traffic() {
        let t = tier(&[1, 1]);
        let tried = Tried::default();
        let c = ctx(&tried);
        t[0].stats.observe_peak(c.now, Duration::from_millis(50));
        t[1].stats.observe_peak(c.now, Duration::from_millis(1));
        let p = PeakEwma::build(&t);
        let picks: Vec<_> = (0..200).map(|_| p.pick(&t, &c).unwrap()).collect();
        assert!(picks.iter().all(|&i| i == 1));
    }

    #[test]
    fn in_flight_requests_raise_the_cost() {
        let t = tier(&[1, 1]);
        let tried = Tried::default();
        let c = ctx(&tried);
        t[0].stats.observe_peak(c.now, Duration::from_millis(2));
        t[1].stats.observe_peak(c.now, Duration::from_millis(1));
        set_inflight(&t, &[0, 3]);
        let p = PeakEwma::build(&t);
        assert!(
            (0..100).all(|_| p.pick(&t, &c) == Some(0)),
            "2 ms × 1 beats 1 ms × 4"
        );
    }
}
