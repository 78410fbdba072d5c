//! stub
use super::{PickContext, Policy};
use crate::fleet::Node;
use std::sync::Arc;
/// stub
#[derive(Debug, Default)]
pub struct WeightedRoundRobin;
impl WeightedRoundRobin {
    /// stub
    pub fn new(_nodes: &[Arc<Node>]) -> Self {
        WeightedRoundRobin
    }
}
impl Policy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }
    fn pick(
        &self,
        _nodes: &[Arc<Node>],
        _eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext<'_>,
    ) -> Option<usize> {
        todo!()
    }
}
