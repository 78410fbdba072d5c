//! Round robin: every eligible node in turn, ignoring weights and load.
//!
//! Use it for pools of identical nodes serving requests of similar cost, where
//! the simplest fair spread is wanted and load feedback adds nothing. It needs
//! one shared atomic counter and, when every node is eligible, does O(1) work
//! per pick. Ineligible nodes are skipped by scanning forward (at most `n`
//! positions), and the counter is advanced past the skipped positions so the
//! node after an ineligible one does not inherit its share: with a fixed
//! eligible set, consecutive picks cycle through exactly the eligible nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{PickContext, Policy};
use crate::fleet::Node;

/// Round-robin policy: a shared ticket counter modulo the pool size.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin policy starting at the first node.
    pub fn new() -> Self {
        RoundRobin {
            next: AtomicUsize::new(0),
        }
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let start = ticket % n;
        for skipped in 0..n {
            let i = (start + skipped) % n;
            if eligible(i) {
                if skipped > 0 {
                    // Consume the tickets of the skipped positions so the next
                    // pick continues after `i` instead of landing on `i` again.
                    self.next.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::balance::testing::nodes;

    fn counts(
        p: &RoundRobin,
        ns: &[Arc<Node>],
        picks: usize,
        el: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut c = vec![0; ns.len()];
        for _ in 0..picks {
            let i = p
                .pick(ns, el, &PickContext::EMPTY)
                .expect("some node eligible");
            assert!(el(i), "picked ineligible node {i}");
            c[i] += 1;
        }
        c
    }

    #[test]
    fn equal_counts_over_whole_cycles() {
        let ns = nodes(5);
        let p = RoundRobin::new();
        let c = counts(&p, &ns, 5 * 7, &|_| true);
        assert_eq!(c, vec![7; 5]);
    }

    #[test]
    fn consecutive_picks_cycle_in_order() {
        let ns = nodes(3);
        let p = RoundRobin::new();
        let seq: Vec<usize> = (0..6)
            .map(|_| p.pick(&ns, &|_| true, &PickContext::EMPTY).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_ineligible_and_keeps_remaining_even() {
        let ns = nodes(4);
        let p = RoundRobin::new();
        // Node 1 ineligible: its successor must not get a double share.
        let c = counts(&p, &ns, 3 * 10, &|i| i != 1);
        assert_eq!(c, vec![10, 0, 10, 10]);
        // A contiguous run of ineligible nodes.
        let p = RoundRobin::new();
        let ns = nodes(6);
        let c = counts(&p, &ns, 2 * 9, &|i| i == 0 || i == 4);
        assert_eq!(c, vec![9, 0, 0, 0, 9, 0]);
    }

    #[test]
    fn single_eligible_node_always_chosen() {
        let ns = nodes(8);
        let p = RoundRobin::new();
        for _ in 0..20 {
            assert_eq!(p.pick(&ns, &|i| i == 5, &PickContext::EMPTY), Some(5));
        }
    }

    #[test]
    fn none_when_nothing_eligible() {
        let ns = nodes(4);
        let p = RoundRobin::new();
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
    }

    #[test]
    fn empty_node_list_is_none() {
        let p = RoundRobin::new();
        assert_eq!(p.pick(&[], &|_| true, &PickContext::EMPTY), None);
    }
}
