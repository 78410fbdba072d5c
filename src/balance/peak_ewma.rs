//! Latency-aware power of two choices on peak-EWMA cost (linkerd/Finagle
//! style), adapted to token generation.
//!
//! Use it when nodes differ in speed (mixed GPU generations, a node with a
//! noisy neighbour, a throttled card): it measures each node's latency as
//! clients see it and sends less work to slow ones, without configuration.
//!
//! The cost of sending this request to node `i` is
//!
//! ```text
//! (ttft_i + expected_tokens × tpot_i) × (outstanding_i + 1) / weight_i
//! ```
//!
//! where `ttft_i` and `tpot_i` are the node's peak-EWMA time to first token
//! and time per output token (jump up at once on a worse sample, decay
//! towards better ones; see [`crate::fleet::PeakEwma`]) and
//! `expected_tokens` is the request's output limit (256 if none). Two
//! distinct eligible nodes are sampled at random and the cheaper one wins.
//!
//! A node without samples is optimistic: it borrows the other sampled
//! node's estimates (or, when neither has samples, both use 1 s and 10 ms),
//! so new and recovering nodes get traffic and earn samples. Estimates
//! decay towards zero while a node gets no traffic, so a node that was slow
//! is retried after a while.

use std::cmp::Ordering;
use std::sync::Arc;

use super::power_of_two::two_choices;
use super::signals::{expected_tokens, latency_parts};
use super::{PickContext, Policy};
use crate::fleet::{now_ns, Node};

/// Estimates used when neither sampled node has any.
const DEFAULT_TTFT: f64 = 1.0;
const DEFAULT_TPOT: f64 = 0.01;

/// Peak-EWMA power-of-two-choices policy (state lives on the nodes).
#[derive(Debug, Default)]
pub struct PeakEwmaP2c;

impl PeakEwmaP2c {
    /// The policy.
    pub fn new() -> Self {
        PeakEwmaP2c
    }
}

/// Costs of nodes `a` and `b` for a request expecting `tokens` output tokens.
pub(crate) fn pair_costs(a: &Node, b: &Node, tokens: f64, now: u64) -> (f64, f64) {
    let (ta, pa) = latency_parts(a, now);
    let (tb, pb) = latency_parts(b, now);
    let ttft_a = ta.or(tb).unwrap_or(DEFAULT_TTFT);
    let ttft_b = tb.or(ta).unwrap_or(DEFAULT_TTFT);
    let tpot_a = pa.or(pb).unwrap_or(DEFAULT_TPOT);
    let tpot_b = pb.or(pa).unwrap_or(DEFAULT_TPOT);
    let cost = |n: &Node, ttft: f64, tpot: f64| {
        (ttft + tokens * tpot) * (n.outstanding() as f64 + 1.0) / f64::from(n.weight.max(1))
    };
    (cost(a, ttft_a, tpot_a), cost(b, ttft_b, tpot_b))
}

impl Policy for PeakEwmaP2c {
    fn name(&self) -> &'static str {
        "peak_ewma"
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let (a, b) = match two_choices(nodes.len(), eligible)? {
            (a, Some(b)) => (a, b),
            (only, None) => return Some(only),
        };
        let (ca, cb) = pair_costs(&nodes[a], &nodes[b], expected_tokens(ctx.request), now_ns());
        match ca.partial_cmp(&cb).unwrap_or(Ordering::Equal) {
            Ordering::Less => Some(a),
            Ordering::Greater => Some(b),
            Ordering::Equal => Some(if fastrand::bool() { a } else { b }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::balance::testing::nodes;

    fn counts(ns: &[Arc<Node>], picks: usize) -> Vec<usize> {
        let p = PeakEwmaP2c::new();
        let mut c = vec![0; ns.len()];
        for _ in 0..picks {
            c[p.pick(ns, &|_| true, &PickContext::EMPTY).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn slow_node_gets_less_traffic() {
        let ns = nodes(4);
        for (i, n) in ns.iter().enumerate() {
            let slow = if i == 3 { 2 } else { 1 };
            n.load.ai.observe_ttft(Duration::from_millis(100 * slow));
            n.load.ai.observe_tpot(Duration::from_millis(10 * slow));
        }
        let c = counts(&ns, 10_000);
        // The slow node loses every comparison with equal outstanding. (The
        // fast ones differ by nanoseconds of decay, so P2C orders them too.)
        assert_eq!(c[3], 0, "{c:?}");
        for &k in &c[..3] {
            assert!(k > 1_000, "{c:?}");
        }
    }

    #[test]
    fn load_can_outweigh_latency() {
        let ns = nodes(2);
        ns[0].load.ai.observe_ttft(Duration::from_millis(100));
        ns[0].load.ai.observe_tpot(Duration::from_millis(10));
        ns[1].load.ai.observe_ttft(Duration::from_millis(150));
        ns[1].load.ai.observe_tpot(Duration::from_millis(15));
        // 1.5x slower but the fast one has 2 in flight: (1+2)x1 > 1x1.5.
        let _g: Vec<_> = (0..2).map(|_| ns[0].begin_request()).collect();
        assert_eq!(counts(&ns, 200), vec![0, 200]);
    }

    #[test]
    fn node_without_samples_is_optimistic() {
        let ns = nodes(2);
        ns[0].load.ai.observe_ttft(Duration::from_millis(100));
        ns[0].load.ai.observe_tpot(Duration::from_millis(10));
        // Node 1 borrows node 0's estimates: equal cost, split traffic.
        let c = counts(&ns, 2000);
        assert!(c[0] > 800 && c[1] > 800, "{c:?}");
        // Neither sampled: still a fair split, and eligibility holds.
        let fresh = nodes(3);
        let c = counts(&fresh, 3000);
        assert!(c.iter().all(|&k| k > 800), "{c:?}");
        let p = PeakEwmaP2c::new();
        for _ in 0..100 {
            assert_eq!(p.pick(&fresh, &|i| i == 1, &PickContext::EMPTY), Some(1));
        }
        assert_eq!(p.pick(&fresh, &|_| false, &PickContext::EMPTY), None);
    }
}
