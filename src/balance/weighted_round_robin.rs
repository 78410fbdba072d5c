//! Smooth weighted round robin (nginx's algorithm), lock-free via a
//! precomputed schedule.
//!
//! Use it for pools of nodes with different, known capacities (e.g. a mix of
//! GPU generations) when traffic should follow the configured `weight`s
//! exactly and deterministically rather than react to live load.
//!
//! nginx's smooth WRR: on each pick, every node's `current += weight`; the
//! node with the largest `current` wins and has `total` subtracted. Over any
//! `sum(weights)` consecutive picks each node is chosen exactly `weight`
//! times, and picks are interleaved (weights 5,1,1 give `a a b a c a a`, not
//! `a a a a a b c`).
//!
//! The sequence is periodic with period `sum(weights / gcd)`, so one period is
//! computed at construction (weights are read from `Node::weight` then; the
//! proxy rebuilds policies on config change) and a pick is one atomic
//! `fetch_add` plus an array read. When the scheduled node is ineligible the
//! pick walks forward in the schedule to the next eligible entry and advances
//! the shared counter past the skipped entries, so with a fixed eligible set
//! the picks are exactly the schedule with the ineligible nodes removed and
//! the remaining nodes keep their relative proportions. The walk is bounded;
//! if it finds nothing in a very long schedule, the eligible node with the
//! highest weight is chosen by a linear scan.
//!
//! If the period would exceed [`MAX_SCHEDULE`] entries (or computing it would
//! cost more than [`MAX_BUILD_WORK`] steps), the schedule is not built and the
//! classic algorithm runs under a `Mutex` instead. That costs O(n) inside the
//! lock per pick, but it only happens for pathological weight sets (huge
//! coprime weights) where a table would use too much memory or take too long
//! to build on a config reload; correctness and smoothness are preserved.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{PickContext, Policy};
use crate::fleet::Node;

/// Largest schedule (entries, 4 bytes each) built at construction.
pub const MAX_SCHEDULE: usize = 1 << 20;
/// Largest `period * nodes` step count spent building a schedule.
pub const MAX_BUILD_WORK: u64 = 1 << 26;
/// Longest forward walk through the schedule when skipping ineligible nodes
/// before falling back to a linear scan.
const MAX_WALK: usize = 4096;

/// Smooth weighted round robin over the nodes it was built for.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// Reduced weight of each node (weights divided by their gcd, >= 1).
    weights: Vec<u64>,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// No nodes at construction.
    Empty,
    /// One period of the smooth WRR sequence.
    Schedule {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    /// Classic algorithm under a lock, for periods too long to precompute.
    Locked(Mutex<Vec<i128>>),
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedRoundRobin {
    /// Build the policy for `nodes`, reading their weights now.
    pub fn new(nodes: &[Arc<Node>]) -> Self {
        Self::with_limits(nodes, MAX_SCHEDULE, MAX_BUILD_WORK)
    }

    /// As [`new`](Self::new) with explicit schedule limits (tests use this to
    /// exercise the locked fallback).
    pub(crate) fn with_limits(nodes: &[Arc<Node>], max_schedule: usize, max_work: u64) -> Self {
        let raw: Vec<u64> = nodes.iter().map(|n| u64::from(n.weight.max(1))).collect();
        let g = raw.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<u64> = raw.iter().map(|w| w / g).collect();
        if weights.is_empty() {
            return WeightedRoundRobin {
                weights,
                mode: Mode::Empty,
            };
        }
        // u32 weights * n nodes: the sum fits u64 for any realistic n.
        let period: u64 = weights.iter().sum();
        let n = weights.len() as u64;
        let fits = period <= max_schedule as u64
            && period.saturating_mul(n) <= max_work
            && n <= u64::from(u32::MAX);
        let mode = if fits {
            let mut current = vec![0i128; weights.len()];
            let schedule = (0..period)
                .map(|_| swrr_pick(&mut current, &weights, &|_| true) as u32)
                .collect();
            Mode::Schedule {
                schedule,
                next: AtomicUsize::new(0),
            }
        } else {
            Mode::Locked(Mutex::new(vec![0i128; weights.len()]))
        };
        WeightedRoundRobin { weights, mode }
    }

    /// Whether the lock-free precomputed schedule is in use.
    pub fn is_scheduled(&self) -> bool {
        matches!(self.mode, Mode::Schedule { .. })
    }

    /// The eligible node with the highest weight (ties: lowest index).
    fn heaviest_eligible(&self, n: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate().take(n) {
            if eligible(i) && best.is_none_or(|b| w > self.weights[b]) {
                best = Some(i);
            }
        }
        best
    }
}

/// One step of smooth WRR over the eligible nodes (ineligible ones neither
/// gain weight nor count towards the total, as in nginx). Ties go to the
/// lowest index. Returns `usize::MAX` when nothing is eligible.
fn swrr_pick(current: &mut [i128], weights: &[u64], eligible: &dyn Fn(usize) -> bool) -> usize {
    let mut best = usize::MAX;
    let mut best_val = i128::MIN;
    let mut total: i128 = 0;
    for (i, (c, &w)) in current.iter_mut().zip(weights).enumerate() {
        if !eligible(i) {
            continue;
        }
        let w = i128::from(w);
        *c += w;
        total += w;
        if *c > best_val {
            best_val = *c;
            best = i;
        }
    }
    if best != usize::MAX {
        current[best] -= total;
    }
    best
}

impl Policy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext<'_>,
    ) -> Option<usize> {
        // `nodes` should be the list we were built for; never index past
        // either list if it is not.
        let n = nodes.len().min(self.weights.len());
        if n == 0 {
            return None;
        }
        match &self.mode {
            Mode::Empty => None,
            Mode::Schedule { schedule, next } => {
                let len = schedule.len();
                let ticket = next.fetch_add(1, Ordering::Relaxed);
                let start = ticket % len;
                let walk = len.min(MAX_WALK);
                for skipped in 0..walk {
                    let i = schedule[(start + skipped) % len] as usize;
                    if i < n && eligible(i) {
                        if skipped > 0 {
                            // Consume the skipped entries so the next pick
                            // continues after this one: the eligible nodes keep
                            // their relative proportions.
                            next.fetch_add(skipped, Ordering::Relaxed);
                        }
                        return Some(i);
                    }
                }
                if walk == len {
                    // Every node appears in a full period: nothing eligible.
                    return None;
                }
                self.heaviest_eligible(n, eligible)
            }
            Mode::Locked(current) => {
                let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                let i = swrr_pick(&mut current[..n], &self.weights[..n], eligible);
                (i != usize::MAX).then_some(i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::balance::testing::weighted_nodes as nodes;

    fn picks(
        p: &WeightedRoundRobin,
        ns: &[Arc<Node>],
        k: usize,
        el: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..k)
            .map(|_| {
                let i = p.pick(ns, el, &PickContext::EMPTY).expect("eligible node");
                assert!(el(i), "picked ineligible node {i}");
                i
            })
            .collect()
    }

    const WEIGHT_SETS: &[&[u32]] = &[
        &[5, 1, 1],
        &[3, 2, 1, 4],
        &[2, 4, 6],
        &[1, 1, 1, 1, 1],
        &[7, 3],
        &[1],
        &[10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ];

    fn assert_every_window_exact(weights: &[u32], seq: &[usize]) {
        let sum: usize = weights.iter().map(|&w| w as usize).sum();
        assert!(seq.len() >= 2 * sum);
        for start in 0..=seq.len() - sum {
            let mut c = vec![0u32; weights.len()];
            for &i in &seq[start..start + sum] {
                c[i] += 1;
            }
            assert_eq!(
                c, weights,
                "weights {weights:?}, window at {start}: {seq:?}"
            );
        }
    }

    #[test]
    fn exact_proportions_in_every_window() {
        for &w in WEIGHT_SETS {
            let ns = nodes(w);
            let p = WeightedRoundRobin::new(&ns);
            assert!(p.is_scheduled());
            let sum: usize = w.iter().map(|&x| x as usize).sum();
            let seq = picks(&p, &ns, 2 * sum, &|_| true);
            assert_every_window_exact(w, &seq);
        }
    }

    #[test]
    fn locked_fallback_matches_schedule() {
        for &w in WEIGHT_SETS {
            let ns = nodes(w);
            let scheduled = WeightedRoundRobin::new(&ns);
            let locked = WeightedRoundRobin::with_limits(&ns, 0, 0);
            assert!(!locked.is_scheduled());
            let sum: usize = w.iter().map(|&x| x as usize).sum();
            let a = picks(&scheduled, &ns, 3 * sum, &|_| true);
            let b = picks(&locked, &ns, 3 * sum, &|_| true);
            assert_eq!(a, b, "weights {w:?}");
            assert_every_window_exact(w, &b);
        }
    }

    #[test]
    fn smooth_interleaving_five_one_one() {
        let ns = nodes(&[5, 1, 1]);
        let p = WeightedRoundRobin::new(&ns);
        let seq = picks(&p, &ns, 14, &|_| true);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ineligible_skipping_keeps_remaining_proportions() {
        // 5,1,1 without node 2: 5:1 exactly in every 6 picks.
        let ns = nodes(&[5, 1, 1]);
        let p = WeightedRoundRobin::new(&ns);
        let seq = picks(&p, &ns, 6 * 20, &|i| i != 2);
        assert_every_window_exact(&[5, 1, 0], &seq);

        // 3,2,1,4 without node 0: 2:1:4 over every 7 picks.
        let ns = nodes(&[3, 2, 1, 4]);
        let p = WeightedRoundRobin::new(&ns);
        let seq = picks(&p, &ns, 7 * 20, &|i| i != 0);
        assert_every_window_exact(&[0, 2, 1, 4], &seq);
    }

    #[test]
    fn long_schedule_falls_back_to_heaviest_eligible() {
        // Period 10001: node 1 appears once, so the bounded walk usually misses
        // it and the linear scan must find it.
        let ns = nodes(&[10_000, 1, 3]);
        let p = WeightedRoundRobin::new(&ns);
        assert!(p.is_scheduled());
        for _ in 0..50 {
            assert_eq!(p.pick(&ns, &|i| i == 1, &PickContext::EMPTY), Some(1));
        }
        for _ in 0..50 {
            assert_eq!(
                p.pick(&ns, &|i| i != 0, &PickContext::EMPTY)
                    .map(|i| i != 0),
                Some(true)
            );
        }
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
    }

    #[test]
    fn concurrent_picks_keep_exact_totals() {
        let ns = nodes(&[5, 1, 1, 3]);
        let p = Arc::new(WeightedRoundRobin::new(&ns));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (p, ns) = (Arc::clone(&p), ns.clone());
                std::thread::spawn(move || {
                    let mut c = [0u32; 4];
                    for _ in 0..10 * 1000 {
                        c[p.pick(&ns, &|_| true, &PickContext::EMPTY).unwrap()] += 1;
                    }
                    c
                })
            })
            .collect();
        let mut total = [0u32; 4];
        for t in threads {
            for (a, b) in total.iter_mut().zip(t.join().unwrap()) {
                *a += b;
            }
        }
        // 40_000 picks = 4_000 periods of 10.
        assert_eq!(total, [20_000, 4_000, 4_000, 12_000]);
    }

    #[test]
    fn none_when_nothing_eligible() {
        for limits in [(MAX_SCHEDULE, MAX_BUILD_WORK), (0, 0)] {
            let ns = nodes(&[2, 3]);
            let p = WeightedRoundRobin::with_limits(&ns, limits.0, limits.1);
            assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
        }
    }

    #[test]
    fn empty_or_mismatched_node_list_does_not_panic() {
        let p = WeightedRoundRobin::new(&[]);
        assert_eq!(p.pick(&[], &|_| true, &PickContext::EMPTY), None);
        let ns = nodes(&[1, 2, 3]);
        assert_eq!(p.pick(&ns, &|_| true, &PickContext::EMPTY), None);
        let p = WeightedRoundRobin::new(&ns);
        assert_eq!(p.pick(&[], &|_| true, &PickContext::EMPTY), None);
        for _ in 0..10 {
            assert_eq!(p.pick(&ns[..1], &|_| true, &PickContext::EMPTY), Some(0));
        }
    }
}
