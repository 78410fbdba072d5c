//! stub
use super::{PickContext, Policy};
use crate::fleet::Node;
use std::sync::Arc;
/// stub
#[derive(Debug, Default)]
pub struct RoundRobin;
impl RoundRobin {
    /// stub
    pub fn new() -> Self {
        RoundRobin
    }
}
impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
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
