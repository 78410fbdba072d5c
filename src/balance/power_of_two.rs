//! stub
use super::{PickContext, Policy};
use crate::fleet::Node;
use std::sync::Arc;
/// stub
#[derive(Debug, Default)]
pub struct PowerOfTwo;
impl PowerOfTwo {
    /// stub
    pub fn new() -> Self {
        PowerOfTwo
    }
}
impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
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
