//! Stub; replaced by the real strategy.
use std::sync::Arc;

use super::{Pick, PickCtx};
use crate::upstream::Backend;

pub struct RoundRobin;

impl Pick for RoundRobin {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        RoundRobin
    }
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        tier.iter().position(|b| ctx.usable(b))
    }
}
