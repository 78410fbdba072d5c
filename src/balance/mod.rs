//! Load-balancing policies: which node of a pool gets the next request.
//!
//! Every policy implements [`Policy`]. The caller (the proxy) decides which
//! nodes are *eligible* (healthy, not full, not already tried for this
//! request) and passes that as a predicate; the policy only chooses among
//! them. Policies keep their own state (counters, schedules) built for one
//! pool's node list and are rebuilt when the config changes, so the hot path
//! needs no lock.

use std::sync::Arc;

use crate::classify::RequestClass;
use crate::fleet::Node;

mod least_outstanding;
mod power_of_two;
mod round_robin;
mod weighted_round_robin;

pub use least_outstanding::LeastOutstanding;
pub use power_of_two::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

/// What a policy may look at besides the nodes: the classified request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The request being routed, if classified (absent in benchmarks).
    pub request: Option<&'a RequestClass>,
}

impl PickContext<'_> {
    /// A context with no request information.
    pub const EMPTY: PickContext<'static> = PickContext { request: None };
}

/// A load-balancing policy for one pool.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// The policy's config name, e.g. `"round_robin"`.
    fn name(&self) -> &'static str;

    /// Choose the index of a node in `nodes` for which `eligible(index)` is
    /// true, or `None` when no node is eligible. `nodes` is always the same
    /// list the policy was built for.
    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize>;
}

/// The policy names a config may use.
pub const POLICY_NAMES: &[&str] = &[
    "round_robin",
    "weighted_round_robin",
    "least_outstanding",
    "power_of_two",
];

/// Build the policy called `name` for `nodes`; `None` for an unknown name.
pub fn build(name: &str, nodes: &[Arc<Node>]) -> Option<Arc<dyn Policy>> {
    let policy: Arc<dyn Policy> = match name {
        "round_robin" => Arc::new(RoundRobin::new()),
        "weighted_round_robin" => Arc::new(WeightedRoundRobin::new(nodes)),
        "least_outstanding" => Arc::new(LeastOutstanding::new()),
        "power_of_two" => Arc::new(PowerOfTwo::new()),
        _ => return None,
    };
    Some(policy)
}
