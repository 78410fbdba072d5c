//! Consolidation (`[pools.energy.consolidate]`): the route's own policy
//! picks among the nodes of the pool's *active set* only, so low load fills
//! a few nodes to an efficient batch instead of spreading thin across all.
//!
//! The active set is decided once per tick by the energy controller
//! (`crate::energy::controller`) and read here from each node's
//! [`crate::fleet::power::NodePower`] — no lock on the request path. The
//! proxy's eligibility (health, drain, `max_concurrent`, saturation,
//! parking) still applies first; this wrapper only narrows it:
//!
//! * eligible active nodes, when at least one has room (fewer than
//!   `max_batch` requests in flight);
//! * otherwise the first eligible node outside the set that has room, in
//!   config order (the order in which the controller grows the set): a
//!   burst spills over at once instead of waiting for the next tick, onto
//!   as few extra nodes as it needs — spreading it over every idle node
//!   would keep them all from ever idling long enough to be parked;
//! * when no eligible node has room, the route's policy over all of them.

use std::sync::Arc;

use super::signals::queue_depth;
use super::{PickContext, Policy};
use crate::fleet::{now_ns, Node};

/// The consolidation wrapper around a route's policy.
#[derive(Debug)]
pub struct Consolidate {
    inner: Arc<dyn Policy>,
    max_batch: f64,
}

impl Consolidate {
    /// Narrow `inner` to the active set; a node counts as full at
    /// `max_batch` requests in flight (the controller's `target_batch`).
    pub fn new(inner: Arc<dyn Policy>, max_batch: f64) -> Consolidate {
        Consolidate { inner, max_batch }
    }
}

impl Policy for Consolidate {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let now = now_ns();
        let mut room = false;
        let mut spill = None;
        for (i, node) in nodes.iter().enumerate() {
            if !eligible(i) || queue_depth(node, now) >= self.max_batch {
                continue;
            }
            if node.load.power.in_active_set() {
                room = true;
                break;
            }
            spill = spill.or(Some(i));
        }
        if room {
            let active = |i: usize| {
                eligible(i) && nodes.get(i).is_some_and(|n| n.load.power.in_active_set())
            };
            if let Some(i) = self.inner.pick(nodes, &active, ctx) {
                return Some(i);
            }
        }
        if let Some(i) = spill {
            return Some(i);
        }
        self.inner.pick(nodes, eligible, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::LeastOutstanding;
    use http::uri::Authority;

    #[test]
    fn picks_inside_the_active_set_and_spills_when_full() {
        let nodes: Vec<Arc<Node>> = (0..3)
            .map(|i| {
                Arc::new(Node::new(
                    format!("n{i}"),
                    Authority::from_static("127.0.0.1:1"),
                    1,
                ))
            })
            .collect();
        nodes[1].load.power.set_active(false);
        nodes[2].load.power.set_active(false);
        let p = Consolidate::new(Arc::new(LeastOutstanding::new()), 2.0);
        let all = |_| true;
        let mut guards = Vec::new();
        for _ in 0..2 {
            let i = p.pick(&nodes, &all, &PickContext::EMPTY).unwrap();
            assert_eq!(i, 0, "least_outstanding alone would spread");
            guards.push(nodes[i].begin_request());
        }
        // n0 holds max_batch: the next requests spill over, onto n1 until
        // it is full too (least_outstanding alone would alternate n1, n2,
        // keeping both awake).
        for _ in 0..2 {
            let i = p.pick(&nodes, &all, &PickContext::EMPTY).unwrap();
            assert_eq!(i, 1, "spill fills the next node in line first");
            guards.push(nodes[i].begin_request());
        }
        assert_eq!(p.pick(&nodes, &all, &PickContext::EMPTY), Some(2));
        guards.push(nodes[2].begin_request());
        guards.push(nodes[2].begin_request());
        // Everything full: the route's policy over all eligible nodes.
        assert!(p.pick(&nodes, &all, &PickContext::EMPTY).is_some());
        // Eligibility still rules: n0 not eligible, nothing active → others.
        drop(guards);
        let not0 = |i: usize| i != 0;
        assert_ne!(p.pick(&nodes, &not0, &PickContext::EMPTY), Some(0));
    }
}
