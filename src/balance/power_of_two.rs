//! Power of two choices: sample two distinct eligible nodes at random and send
//! the request to the less loaded one.
//!
//! Use it for large pools, or when many gateway instances balance the same
//! nodes: it gets most of the benefit of least-outstanding (the maximum load
//! drops exponentially compared with random choice) at O(1) cost per pick
//! when most nodes are eligible, and it avoids the herd effect of every
//! instance sending to the same momentarily least-loaded node.
//!
//! Load is compared as in [`LeastOutstanding`](super::LeastOutstanding):
//! `(outstanding + 1) / weight` by cross-multiplication; a tie goes to either
//! of the two with equal probability. Indices are drawn with `fastrand`; an
//! ineligible draw is retried a few times, and if that fails (few nodes
//! eligible) the eligible set is counted and two distinct members are chosen
//! uniformly by rank, in O(n). Because the two samples are distinct, a node
//! that is strictly the most loaded is never chosen while another node is
//! eligible.

use std::cmp::Ordering;
use std::sync::Arc;

use super::least_outstanding::{cmp_score, load_score};
use super::{PickContext, Policy};
use crate::fleet::Node;

/// Random draws per sample before falling back to scanning the eligible set.
const TRIES: usize = 4;

/// Power-of-two-choices policy (stateless; randomness from `fastrand`).
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl PowerOfTwo {
    /// The policy; it keeps no state of its own.
    pub fn new() -> Self {
        PowerOfTwo
    }
}

/// Draw an eligible index uniformly from `0..n`, skipping `exclude`, with at
/// most [`TRIES`] attempts.
pub(crate) fn draw(
    n: usize,
    exclude: Option<usize>,
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    for _ in 0..TRIES {
        let i = match exclude {
            // Uniform over the other n - 1 indices.
            Some(x) => {
                let r = fastrand::usize(..n - 1);
                if r >= x {
                    r + 1
                } else {
                    r
                }
            }
            None => fastrand::usize(..n),
        };
        if eligible(i) {
            return Some(i);
        }
    }
    None
}

/// The two choices of a power-of-two pick among `n` nodes: two distinct
/// eligible indices drawn at random (by scanning when random draws keep
/// missing), or the single eligible one (`(i, None)`), or `None`.
pub(crate) fn two_choices(
    n: usize,
    eligible: &dyn Fn(usize) -> bool,
) -> Option<(usize, Option<usize>)> {
    match n {
        0 => None,
        1 => eligible(0).then_some((0, None)),
        _ => draw(n, None, eligible)
            .and_then(|a| draw(n, Some(a), eligible).map(|b| (a, Some(b))))
            .or_else(|| scan_two(n, eligible)),
    }
}

/// Two distinct eligible indices chosen uniformly by scanning, or the single
/// eligible one (`(i, None)`), or `None` if nothing is eligible.
pub(crate) fn scan_two(
    n: usize,
    eligible: &dyn Fn(usize) -> bool,
) -> Option<(usize, Option<usize>)> {
    let m = (0..n).filter(|&i| eligible(i)).count();
    match m {
        0 => None,
        1 => (0..n).find(|&i| eligible(i)).map(|i| (i, None)),
        _ => {
            let ra = fastrand::usize(..m);
            let mut rb = fastrand::usize(..m - 1);
            if rb >= ra {
                rb += 1;
            }
            let (mut a, mut b) = (None, None);
            // The predicate could change between passes; tolerate that.
            for (rank, i) in (0..n).filter(|&i| eligible(i)).enumerate() {
                if rank == ra {
                    a = Some(i);
                }
                if rank == rb {
                    b = Some(i);
                }
            }
            match (a, b) {
                (Some(a), b) => Some((a, b)),
                (None, Some(b)) => Some((b, None)),
                (None, None) => None,
            }
        }
    }
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let (a, b) = match two_choices(nodes.len(), eligible)? {
            (a, Some(b)) => (a, b),
            (only, None) => return Some(only),
        };
        match cmp_score(load_score(&nodes[a]), load_score(&nodes[b])) {
            Ordering::Less => Some(a),
            Ordering::Greater => Some(b),
            Ordering::Equal => Some(if fastrand::bool() { a } else { b }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::InFlight;

    use crate::balance::testing::weighted_nodes as nodes;

    fn load(ns: &[Arc<Node>], loads: &[usize]) -> Vec<InFlight> {
        ns.iter()
            .zip(loads)
            .flat_map(|(n, &k)| (0..k).map(|_| n.begin_request()))
            .collect()
    }

    fn counts(ns: &[Arc<Node>], picks: usize, el: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let p = PowerOfTwo::new();
        let mut c = vec![0; ns.len()];
        for _ in 0..picks {
            let i = p.pick(ns, el, &PickContext::EMPTY).expect("eligible node");
            assert!(el(i), "picked ineligible node {i}");
            c[i] += 1;
        }
        c
    }

    #[test]
    fn never_picks_the_strictly_most_loaded() {
        let ns = nodes(&[1, 1, 1, 1]);
        let _g = load(&ns, &[0, 1, 2, 5]);
        let c = counts(&ns, 10_000, &|_| true);
        assert_eq!(c[3], 0, "{c:?}");
        // The least loaded wins whenever sampled: 3 of the 6 pairs.
        assert!(c[0] > 4_500 && c[0] < 5_500, "{c:?}");
        // With two nodes, always the less loaded one.
        let ns = nodes(&[1, 1]);
        let _g = load(&ns, &[4, 3]);
        assert_eq!(counts(&ns, 1000, &|_| true), vec![0, 1000]);
    }

    #[test]
    fn compares_load_per_weight() {
        // (3+1)/4 = 1 < (1+1)/1 = 2: the heavy, busier node wins.
        let ns = nodes(&[4, 1]);
        let _g = load(&ns, &[3, 1]);
        assert_eq!(counts(&ns, 500, &|_| true), vec![500, 0]);
    }

    #[test]
    fn spreads_uniformly_with_equal_loads() {
        let ns = nodes(&[2, 2, 2, 2]);
        let _g = load(&ns, &[1, 1, 1, 1]);
        let c = counts(&ns, 10_000, &|_| true);
        for &k in &c {
            assert!((2250..=2750).contains(&k), "{c:?}");
        }
    }

    #[test]
    fn never_returns_ineligible() {
        let ns = nodes(&[1; 16]);
        let _g = load(&ns, &[0, 3, 1, 0, 2, 5, 0, 1, 4, 0, 0, 2, 1, 3, 0, 0]);
        for mask in [0xffffu32, 0x8001, 0x0100, 0x5555, 0x0006, 0xfffe] {
            let el = move |i: usize| mask & (1 << i) != 0;
            // `counts` asserts every pick is eligible.
            let c = counts(&ns, 2000, &el);
            assert_eq!(c.iter().sum::<usize>(), 2000);
        }
        // Only one eligible node (exercises the scanning fallback).
        assert_eq!(counts(&ns, 200, &|i| i == 9)[9], 200);
    }

    #[test]
    fn scan_fallback_is_uniform_among_few_eligible() {
        let ns = nodes(&[1; 64]);
        let c = counts(&ns, 10_000, &|i| i == 7 || i == 40);
        assert!((4_500..=5_500).contains(&c[7]), "{c:?}");
        assert_eq!(c[7] + c[40], 10_000);
    }

    #[test]
    fn single_node() {
        let ns = nodes(&[3]);
        let p = PowerOfTwo::new();
        assert_eq!(p.pick(&ns, &|_| true, &PickContext::EMPTY), Some(0));
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
    }

    #[test]
    fn none_when_nothing_eligible() {
        let ns = nodes(&[1, 2, 3, 4]);
        let p = PowerOfTwo::new();
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
    }

    #[test]
    fn empty_node_list_is_none() {
        let p = PowerOfTwo::new();
        assert_eq!(p.pick(&[], &|_| true, &PickContext::EMPTY), None);
    }
}
