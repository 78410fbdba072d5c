//! stub
use super::{PickContext, Policy};
use crate::fleet::Node;
use std::sync::Arc;
/// stub
#[derive(Debug, Default)]
pub struct LeastOutstanding;
impl LeastOutstanding {
    /// stub
    pub fn new() -> Self {
        LeastOutstanding
    }
}
impl Policy for LeastOutstanding {
    fn name(&self) -> &'static str {
        "least_outstanding"
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
