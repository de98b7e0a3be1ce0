//! `first`: the first usable backend in list order, for active/passive failover (HAProxy's
//! `balance first`, nginx's `backup` pattern within one tier). Everything goes to the
//! first backend while it is usable; the next one takes over only when it is down,
//! draining, ejected or already tried by this request. List order is the policy, so
//! weights do not apply.

use std::sync::Arc;

use super::{Pick, PickCtx};
use crate::upstream::Backend;

/// First usable backend in list order. Stateless.
pub struct First;

impl Pick for First {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        First
    }

    /// Scans from the front; stops at the first usable backend.
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        tier.iter().position(|b| ctx.usable(b))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::random::test_support::*;
    use super::*;
    use crate::balance::Tried;

    #[test]
    fn everything_goes_to_the_first() {
        let t = tier(&[1, 100, 100]);
        assert_eq!(counts(&First, &t, 100), [100, 0, 0]);
    }

    #[test]
    fn falls_over_to_the_second_while_the_first_is_unavailable() {
        let t = tier(&[1, 1, 1]);
        let tried = Tried::default();
        t[0].stats.set_unhealthy(true);
        assert_eq!(First.pick(&t, &ctx(&tried)), Some(1));
        t[1].stats.set_draining(true);
        assert_eq!(First.pick(&t, &ctx(&tried)), Some(2));
        t[0].stats.set_unhealthy(false);
        assert_eq!(First.pick(&t, &ctx(&tried)), Some(0));
        t[0].stats
            .eject(tokio::time::Instant::now(), Duration::from_secs(60));
        assert_eq!(First.pick(&t, &ctx(&tried)), Some(2));
    }

    #[test]
    fn unavailable_backend_is_never_picked() {
        for_each_unavailability(&[1, 1, 1], |t| {
            t[0].stats.set_unhealthy(true);
            assert_eq!(counts(&First, t, 10), [0, 0, 10]);
        });
    }

    #[test]
    fn tried_backend_is_skipped() {
        let t = tier(&[1, 1]);
        let mut tried = Tried::default();
        tried.insert(&t[0]);
        assert_eq!(First.pick(&t, &ctx(&tried)), Some(1));
    }

    #[test]
    fn none_when_nothing_is_usable() {
        let t = tier(&[1, 1]);
        let mut tried = Tried::default();
        tried.insert(&t[1]);
        t[0].stats.set_draining(true);
        assert_eq!(First.pick(&t, &ctx(&tried)), None);
        assert_eq!(First.pick(&[], &ctx(&tried)), None);
    }
}
