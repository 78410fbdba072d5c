//! Weighted least outstanding requests: send the request to the eligible node
//! with the fewest requests in flight relative to its weight.
//!
//! Use it when request cost varies a lot (LLM generations of very different
//! lengths, streaming responses) so that in-flight count is a better signal of
//! a node's load than a fixed rotation. On pools of up to 128 nodes it scans
//! every node on each pick — reading one relaxed atomic per node, no lock —
//! so it is exact. On larger pools it takes the least loaded of 32 random
//! eligible nodes, O(1) per pick, which keeps every node within one request
//! of the mean (figures in [`sample`]).
//!
//! The score of node `i` is `(outstanding_i + 1) / weight_i`: the load the
//! node would have *after* taking this request, per unit of capacity (the `+1`
//! makes an idle weight-4 node preferable to an idle weight-1 node, and makes
//! a weight-2 node with 1 in flight tie with an idle weight-1 node). Scores
//! are compared by cross-multiplication in `u128`, so there is no rounding and
//! no overflow. Ties are broken uniformly at random (reservoir sampling over
//! the tied nodes), so an idle pool is not biased towards its first node.

use std::sync::Arc;

use super::{sample, PickContext, Policy};
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
        least_outstanding(nodes, eligible)
    }
}

/// The eligible node with the lowest [`load_score`]: exact on pools up to
/// [`sample::SCAN_LIMIT`] nodes, among [`sample::SAMPLES`] random eligible
/// nodes above (see [`sample`] for the routing quality kept).
pub(crate) fn least_outstanding(
    nodes: &[Arc<Node>],
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    if sample::sampled(nodes.len()) {
        let mut best = Lowest::default();
        let drawn = sample::draw_eligible(nodes.len(), sample::SAMPLES, eligible, |i| {
            best.offer(i, load_score(&nodes[i]))
        });
        if drawn.enough() {
            return best.index();
        }
    }
    scan(nodes, eligible)
}

/// The eligible node with the lowest [`load_score`] over the whole pool.
pub(crate) fn scan(nodes: &[Arc<Node>], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut best = Lowest::default();
    for (i, node) in nodes.iter().enumerate() {
        if eligible(i) {
            best.offer(i, load_score(node));
        }
    }
    best.index()
}

/// The lowest score offered so far, ties broken uniformly at random
/// (reservoir sampling over the tied nodes), so an idle pool is not biased
/// towards its first node.
#[derive(Debug, Default)]
struct Lowest {
    best: Option<(usize, (u128, u128))>,
    ties: usize,
}

impl Lowest {
    #[inline]
    fn offer(&mut self, i: usize, score: (u128, u128)) {
        match self.best {
            Some((_, b)) => match cmp_score(score, b) {
                std::cmp::Ordering::Less => {
                    self.best = Some((i, score));
                    self.ties = 1;
                }
                std::cmp::Ordering::Equal => {
                    // The k-th tied node replaces the choice with probability 1/k.
                    self.ties += 1;
                    if fastrand::usize(..self.ties) == 0 {
                        self.best = Some((i, score));
                    }
                }
                std::cmp::Ordering::Greater => {}
            },
            None => {
                self.best = Some((i, score));
                self.ties = 1;
            }
        }
    }

    fn index(&self) -> Option<usize> {
        self.best.map(|(i, _)| i)
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

    /// Counts the predicate's calls: how many nodes a pick looked at.
    fn looked_at(ns: &[Arc<Node>], el: &dyn Fn(usize) -> bool) -> (Option<usize>, usize) {
        let calls = std::cell::Cell::new(0usize);
        let counting = |i: usize| {
            calls.set(calls.get() + 1);
            el(i)
        };
        let i = LeastOutstanding::new().pick(ns, &counting, &PickContext::EMPTY);
        (i, calls.get())
    }

    #[test]
    fn large_pools_are_sampled_small_ones_scanned() {
        let small = crate::balance::testing::nodes(sample::SCAN_LIMIT);
        assert_eq!(looked_at(&small, &|_| true).1, sample::SCAN_LIMIT);
        let big = crate::balance::testing::nodes(1024);
        let (i, calls) = looked_at(&big, &|_| true);
        assert!(i.is_some());
        assert_eq!(calls, sample::SAMPLES);
        // Half the pool ineligible: still a bounded number of looks.
        let (i, calls) = looked_at(&big, &|i| i % 2 == 0);
        assert!(i.is_some_and(|i| i % 2 == 0));
        assert!(calls <= 4 * sample::SAMPLES, "{calls}");
    }

    #[test]
    fn sampled_pick_never_returns_an_ineligible_node() {
        let ns = crate::balance::testing::nodes(1024);
        let loads: Vec<usize> = (0..1024).map(|i| (i * 7) % 5).collect();
        let _g = load(&ns, &loads);
        for modulus in [1usize, 2, 3, 10, 100, 1000] {
            let el = move |i: usize| i.is_multiple_of(modulus);
            let c = counts(&ns, 2000, &el);
            assert_eq!(c.iter().sum::<usize>(), 2000);
        }
        assert_eq!(
            LeastOutstanding::new().pick(&ns, &|_| false, &PickContext::EMPTY),
            None
        );
    }

    #[test]
    fn few_eligible_in_a_large_pool_are_scanned_exactly() {
        // 3 eligible nodes of 1,024: a random sample would rarely meet them,
        // so the pick scans, and the least loaded of the three always wins.
        let ns = crate::balance::testing::nodes(1024);
        let mut loads = vec![0; 1024];
        loads[10] = 3;
        loads[500] = 1;
        loads[1000] = 2;
        let _g = load(&ns, &loads);
        let el = |i: usize| i == 10 || i == 500 || i == 1000;
        assert_eq!(counts(&ns, 200, &el)[500], 200);
    }

    #[test]
    fn sampled_ties_stay_uniform() {
        // An idle pool of 1,024: every node ties, so every node gets about
        // the same share (binomial, mean 100, sd 10; bounds at 5 sd).
        let ns = crate::balance::testing::nodes(1024);
        let c = counts(&ns, 102_400, &|_| true);
        let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
        assert!(*lo >= 50 && *hi <= 150, "{lo}..{hi}");
    }

    #[test]
    fn sampled_pick_avoids_the_busy_part_of_the_pool() {
        // 1,023 nodes with 4 in flight and one idle: the idle one is found
        // (32 of 1,024 nodes per pick: once in 32 picks) and filled to the
        // others' level.
        fastrand::seed(5);
        let ns = crate::balance::testing::nodes(1024);
        let mut loads = vec![4; 1024];
        loads[777] = 0;
        let _g = load(&ns, &loads);
        let p = LeastOutstanding::new();
        let mut held = Vec::new();
        for _ in 0..512 {
            let i = p.pick(&ns, &|_| true, &PickContext::EMPTY).unwrap();
            held.push(ns[i].begin_request());
        }
        // 512 picks: the idle node was sampled about 16 times and filled
        // up; the rest went to nodes at 4, each taking at most one.
        assert!(ns[777].outstanding() >= 4, "{}", ns[777].outstanding());
        assert!(ns.iter().all(|n| n.outstanding() <= 5));
    }

    #[test]
    fn sampled_quality_at_1024_nodes() {
        use crate::balance::testing::{nodes, simulate};
        use crate::balance::PowerOfTwo;
        fastrand::seed(11);
        let p = LeastOutstanding::new();
        let p2c = PowerOfTwo::new();
        let (picks, per_node) = (10_000, 2);
        let run = |pick: &dyn Fn(&[Arc<Node>]) -> usize| {
            simulate(&nodes(1024), pick, 1024 * per_node, picks, 7)
        };
        let exact = run(&|ns| scan(ns, &|_| true).unwrap());
        let sampled = run(&|ns| p.pick(ns, &|_| true, &PickContext::EMPTY).unwrap());
        let two = run(&|ns| p2c.pick(ns, &|_| true, &PickContext::EMPTY).unwrap());
        eprintln!("1,024 nodes, {per_node} in flight per node, {picks} picks:");
        eprintln!("  exact scan:   {exact:?}");
        eprintln!("  32 samples:   {sampled:?}");
        eprintln!("  power of two: {two:?}");
        assert!(
            exact.max_minus_mean < 0.1 && exact.mean_rank < 0.1,
            "{exact:?}"
        );
        // Within one request of the mean, and the chosen node among the
        // least loaded few percent; power of two is far from both.
        assert!(sampled.max_minus_mean <= 1.1, "{sampled:?}");
        assert!(sampled.mean_rank < 20.0, "{sampled:?}");
        assert!(two.max_minus_mean > 2.0 && two.mean_rank > 100.0, "{two:?}");
        // Weights 1..=4: the same in flight per unit of weight.
        let weights: Vec<u32> = (0..1024).map(|i| i % 4 + 1).collect();
        let weighted = |pick: &dyn Fn(&[Arc<Node>]) -> usize| {
            simulate(
                &crate::balance::testing::weighted_nodes(&weights),
                pick,
                5 * 1024,
                picks,
                7,
            )
        };
        let exact = weighted(&|ns| scan(ns, &|_| true).unwrap());
        let sampled = weighted(&|ns| p.pick(ns, &|_| true, &PickContext::EMPTY).unwrap());
        eprintln!("weights 1..=4, 2 in flight per unit of weight:");
        eprintln!("  exact scan:   {exact:?}");
        eprintln!("  32 samples:   {sampled:?}");
        assert!(
            sampled.max_minus_mean <= exact.max_minus_mean + 1.0,
            "{sampled:?}"
        );
        assert!(sampled.mean_rank < 40.0, "{sampled:?}");
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let a = (u128::from(u64::MAX) + 1, u128::from(u32::MAX));
        let b = (1, 1);
        assert_eq!(cmp_score(a, b), std::cmp::Ordering::Greater);
        assert_eq!(cmp_score(b, a), std::cmp::Ordering::Less);
    }
}
