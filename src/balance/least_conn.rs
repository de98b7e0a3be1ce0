//! Stub; replaced by the real strategy.
use std::sync::Arc;

use super::{Pick, PickCtx};
use crate::upstream::Backend;

pub struct LeastConn;

impl Pick for LeastConn {
    fn build(_tier: &[Arc<Backend>]) -> Self {
        LeastConn
    }
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        tier.iter().position(|b| ctx.usable(b))
    }
}
