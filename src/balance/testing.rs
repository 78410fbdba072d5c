//! Helpers shared by the policies' unit tests.

use std::sync::Arc;

use http::uri::Authority;

use crate::classify::prefix::{block_hashes, seed_for_model};
use crate::classify::{ApiFamily, Endpoint, Head, RequestClass};
use crate::fleet::Node;

/// Nodes `n0, n1, …` with the given weights (addresses are never dialled).
pub fn weighted_nodes(weights: &[u32]) -> Vec<Arc<Node>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Arc::new(Node::new(
                format!("n{i}"),
                Authority::from_static("127.0.0.1:1"),
                w,
            ))
        })
        .collect()
}

/// `n` nodes of weight 1.
pub fn nodes(n: usize) -> Vec<Arc<Node>> {
    weighted_nodes(&vec![1; n])
}

/// A chat completion request classified from its head only (no body yet).
pub fn chat_class() -> RequestClass {
    RequestClass::from_head(Head {
        family: ApiFamily::OpenAi,
        endpoint: Endpoint::ChatCompletions,
        path_model: None,
        parse_body: true,
        asked_priority: None,
    })
}

/// A classified chat request whose prompt is `text` (model "m").
pub fn chat_request(text: &str) -> RequestClass {
    let mut c = chat_class();
    c.prefix = block_hashes(seed_for_model("m"), text.as_bytes(), 256);
    c.prompt_tokens = (text.len() / 4) as u32;
    c
}

/// Routing quality measured by [`simulate`].
#[derive(Debug, Clone, Copy)]
pub struct Quality {
    /// Time average of the most loaded node's in-flight count per weight
    /// minus the mean in flight per weight.
    pub max_minus_mean: f64,
    /// Mean number of nodes strictly less loaded (per weight) than the
    /// chosen one at the time of the pick (0: always a least-loaded node).
    pub mean_rank: f64,
}

/// A closed loop over `nodes`: `in_flight` requests are always in flight,
/// each held (its `InFlight` guard alive) for an exponentially distributed
/// time of mean 1, and each one that ends is replaced by a new request
/// placed by `pick`. Runs `picks` picks (the first half, at least twice
/// `in_flight`, warms up: it fills the pool and turns it over) with
/// durations from `seed`; ranks are taken every 4th pick, the imbalance
/// every 16th.
pub fn simulate(
    nodes: &[Arc<Node>],
    pick: &dyn Fn(&[Arc<Node>]) -> usize,
    in_flight: usize,
    picks: usize,
    seed: u64,
) -> Quality {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::least_outstanding::{cmp_score, load_score};

    let mut rng = fastrand::Rng::with_seed(seed);
    let total_weight: u64 = nodes.iter().map(|n| u64::from(n.weight.max(1))).sum();
    // (end time in µs, slot in `held`)
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut held: Vec<Option<crate::fleet::InFlight>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut now = 0u64;
    let (mut gap_sum, mut gaps, mut rank_sum, mut ranks) = (0.0, 0usize, 0.0, 0usize);
    for k in 0..picks {
        if ends.len() >= in_flight {
            if let Some(Reverse((t, slot))) = ends.pop() {
                now = t;
                held[slot] = None;
                free.push(slot);
            }
        }
        let i = pick(nodes);
        let measured = k >= picks / 2;
        if measured && k % 4 == 0 {
            let chosen = load_score(&nodes[i]);
            let rank = nodes
                .iter()
                .filter(|n| cmp_score(load_score(n), chosen).is_lt())
                .count();
            rank_sum += rank as f64;
            ranks += 1;
        }
        let guard = nodes[i].begin_request();
        let slot = match free.pop() {
            Some(s) => {
                held[s] = Some(guard);
                s
            }
            None => {
                held.push(Some(guard));
                held.len() - 1
            }
        };
        let duration = -(1.0 - rng.f64()).ln() * 1e6;
        ends.push(Reverse((now + duration as u64, slot)));
        if measured && k % 16 == 0 {
            let mean = ends.len() as f64 / total_weight as f64;
            let max = nodes
                .iter()
                .map(|n| n.outstanding() as f64 / f64::from(n.weight.max(1)))
                .fold(0.0, f64::max);
            gap_sum += max - mean;
            gaps += 1;
        }
    }
    Quality {
        max_minus_mean: gap_sum / gaps.max(1) as f64,
        mean_rank: rank_sum / ranks.max(1) as f64,
    }
}
