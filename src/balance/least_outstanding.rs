//! Weighted least outstanding requests: send the request to the eligible node
//! with the fewest requests in flight relative to its weight.
//!
//! Use it when request cost varies a lot (LLM generations of very different
//! lengths, streaming responses) so that in-flight count is a better signal of
//! a node's load than a fixed rotation. It scans every node on each pick —
//! O(n), reading one relaxed atomic per node, no lock — so it is exact but
//! costs more than [`PowerOfTwo`](super::PowerOfTwo) on large pools.
//!
//! The score of node `i` is `(outstanding_i + 1) / weight_i`: the load the
//! node would have *after* taking this request, per unit of capacity (the `+1`
//! makes an idle weight-4 node preferable to an idle weight-1 node, and makes
//! a weight-2 node with 1 in flight tie with an idle weight-1 node). Scores
//! are compared by cross-multiplication in `u128`, so there is no rounding and
//! no overflow. Ties are broken uniformly at random (reservoir sampling over
//! the tied nodes), so an idle pool is not biased towards its first node.

use std::sync::Arc;

use super::{PickContext, Policy};
use crate::fleet::Node;

/// `(outstanding + 1, weight)` of a node, the fraction compared by the
/// load-aware policies.
#[inline]
pub(crate) fn load_score(node: &Node) -> (u128, u128) {
    (
        u128::from(node.outstanding()) + 1,
        u128::from(node.weight.max(1)),
    )
}

/// Compare two `(load, weight)` scores as fractions `load / weight`.
#[inline]
pub(crate) fn cmp_score(a: (u128, u128), b: (u128, u128)) -> std::cmp::Ordering {
    // load <= u64::MAX + 1 and weight <= u32::MAX: the products fit in u128.
    (a.0 * b.1).cmp(&(b.0 * a.1))
}

/// Weighted least-outstanding-requests policy (stateless).
#[derive(Debug, Default)]
pub struct LeastOutstanding;

impl LeastOutstanding {
    /// The policy; it keeps no state of its own.
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
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let mut best: Option<(usize, (u128, u128))> = None;
        let mut ties: usize = 0;
        for (i, node) in nodes.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let score = load_score(node);
            match best {
                None => {
                    best = Some((i, score));
                    ties = 1;
                }
                Some((_, b)) => match cmp_score(score, b) {
                    std::cmp::Ordering::Less => {
                        best = Some((i, score));
                        ties = 1;
                    }
                    std::cmp::Ordering::Equal => {
                        // Reservoir sampling: the k-th tied node replaces the
                        // current choice with probability 1/k.
                        ties += 1;
                        if fastrand::usize(..ties) == 0 {
                            best = Some((i, score));
                        }
                    }
                    std::cmp::Ordering::Greater => {}
                },
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::InFlight;

    use crate::balance::testing::weighted_nodes as nodes;

    /// Hold `loads[i]` requests in flight on node `i`.
    fn load(ns: &[Arc<Node>], loads: &[usize]) -> Vec<InFlight> {
        ns.iter()
            .zip(loads)
            .flat_map(|(n, &k)| (0..k).map(|_| n.begin_request()))
            .collect()
    }

    fn counts(ns: &[Arc<Node>], picks: usize, el: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let p = LeastOutstanding::new();
        let mut c = vec![0; ns.len()];
        for _ in 0..picks {
            let i = p.pick(ns, el, &PickContext::EMPTY).expect("eligible node");
            assert!(el(i));
            c[i] += 1;
        }
        c
    }

    #[test]
    fn picks_the_least_loaded() {
        let ns = nodes(&[1, 1, 1, 1]);
        let _g = load(&ns, &[3, 1, 0, 2]);
        assert_eq!(counts(&ns, 100, &|_| true), vec![0, 0, 100, 0]);
        // Excluding the minimum moves to the next least loaded.
        assert_eq!(counts(&ns, 100, &|i| i != 2), vec![0, 100, 0, 0]);
    }

    #[test]
    fn respects_weights_with_plus_one() {
        let ns = nodes(&[2, 1]);
        // Idle: (0+1)/2 < (0+1)/1 — the bigger node first.
        assert_eq!(counts(&ns, 50, &|_| true), vec![50, 0]);
        {
            // (1+1)/2 == (0+1)/1: a tie, split between both.
            let _g = load(&ns, &[1, 0]);
            let c = counts(&ns, 2000, &|_| true);
            assert!(c[0] > 800 && c[1] > 800, "{c:?}");
        }
        {
            // (2+1)/2 = 1.5 > (0+1)/1 = 1: the weight-1 node wins.
            let _g = load(&ns, &[2, 0]);
            assert_eq!(counts(&ns, 50, &|_| true), vec![0, 50]);
        }
        {
            // (1+1)/2 = 1 < (1+1)/1 = 2: the weight-2 node wins.
            let _g = load(&ns, &[1, 1]);
            assert_eq!(counts(&ns, 50, &|_| true), vec![50, 0]);
        }
    }

    #[test]
    fn fills_nodes_in_weight_proportion() {
        // Taking requests without finishing them fills nodes 3:1.
        let ns = nodes(&[3, 1]);
        let p = LeastOutstanding::new();
        let mut guards = Vec::new();
        for _ in 0..400 {
            let i = p.pick(&ns, &|_| true, &PickContext::EMPTY).unwrap();
            guards.push(ns[i].begin_request());
        }
        assert_eq!(ns[0].outstanding(), 300);
        assert_eq!(ns[1].outstanding(), 100);
    }

    #[test]
    fn ties_are_broken_uniformly() {
        let ns = nodes(&[1, 1, 1, 1, 1]);
        // Node 4 is busier; nodes 0..4 tie.
        let _g = load(&ns, &[2, 2, 2, 2, 3]);
        let c = counts(&ns, 10_000, &|_| true);
        assert_eq!(c[4], 0);
        for &k in &c[..4] {
            assert!((2250..=2750).contains(&k), "{c:?}");
        }
    }

    #[test]
    fn none_when_nothing_eligible() {
        let ns = nodes(&[1, 2, 3]);
        let p = LeastOutstanding::new();
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
    }

    #[test]
    fn empty_node_list_is_none() {
        let p = LeastOutstanding::new();
        assert_eq!(p.pick(&[], &|_| true, &PickContext::EMPTY), None);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let a = (u128::from(u64::MAX) + 1, u128::from(u32::MAX));
        let b = (1, 1);
        assert_eq!(cmp_score(a, b), std::cmp::Ordering::Greater);
        assert_eq!(cmp_score(b, a), std::cmp::Ordering::Less);
    }
}
