//! Stub; replaced by the real strategy.
use std::sync::Arc;

use super::{Pick, PickCtx};
use crate::upstream::Backend;

pub struct P2c;

impl Pick for P2c {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        P2c
    }
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        tier.iter().position(|b| ctx.usable(b))
    }
}
