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

    #[tokio::test(start_paused = true)]
    async fn a_recovered_backend_wins_traffic_back_as_its_peak_decays() {
        let t = tier(&[1, 1]);
        let p = PeakEwma::build(&t);
        let tried = Tried::default();
        t[0].stats
            .observe_peak(tokio::time::Instant::now(), Duration::from_millis(50));
        let mut won_back_after = None;
        for step in 1..=40 {
            tokio::time::advance(Duration::from_millis(500)).await;
            let c = ctx(&tried);
            // The fast backend keeps answering in 1 ms; the slow one gets no samples
            // while it loses every pick, so only its decay can bring it back.
            t[1].stats.observe_peak(c.now, Duration::from_millis(1));
            if p.pick(&t, &c) == Some(0) {
                won_back_after = Some(step);
                break;
            }
        }
        let step = won_back_after.expect("never picked again");
        // 50 ms decays below 1 ms after ln(50) × 2 s ≈ 7.8 s.
        assert!((14..=18).contains(&step), "after {step} half-seconds");
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
