//! Load signals shared by the AI-aware policies.
//!
//! * **Queue depth** of a node: its scraped running + waiting requests when
//!   the scrape is fresh (the waiting count kept current with the gateway's
//!   own sends, see [`crate::fleet::capacity`]), but never less than the
//!   gateway's own outstanding count; else the outstanding count.
//! * **Load** in request-equivalents per unit of weight: queue depth plus
//!   the tokens in flight (prompt + expected output) divided by
//!   `tokens_per_request`, all over the node's weight.
//! * **Expected latency** of a request: peak-EWMA TTFT + expected output
//!   tokens × peak-EWMA time per token.

use std::sync::Arc;

use super::sample;
use crate::classify::RequestClass;
use crate::fleet::{expected_output, Node, DEFAULT_EXPECTED_OUTPUT};

/// Queue depth (requests) of a node at `now` (see the module docs).
pub fn queue_depth(node: &Node, now: u64) -> f64 {
    let out = node.outstanding();
    match node.load.ai.capacity.view(&node.load, now) {
        Some(v) => (v.running + v.waiting).max(out as f64),
        None => out as f64,
    }
}

/// Load of a node in request-equivalents per unit of weight.
pub fn load(node: &Node, now: u64, tokens_per_request: f64) -> f64 {
    let ai = &node.load.ai;
    let tokens = (ai.prompt_tokens_in_flight() + ai.output_tokens_in_flight()) as f64;
    (queue_depth(node, now) + tokens / tokens_per_request) / f64::from(node.weight.max(1))
}

/// True when the node's fresh scraped signals say it is saturated.
pub fn saturated(node: &Node, now: u64) -> bool {
    node.load.ai.capacity.is_saturated(&node.load, now)
}

/// Eligible nodes that are not saturated, or every eligible node when all
/// are saturated (the proxy decides whether to send to saturated nodes; a
/// policy only prefers the others).
///
/// On pools of more than [`sample::SCAN_LIMIT`] nodes these are taken from
/// [`sample::CANDIDATE_SAMPLES`] random eligible nodes (see
/// [`candidates_with`]).
pub fn candidates(nodes: &[Arc<Node>], eligible: &dyn Fn(usize) -> bool, now: u64) -> Vec<usize> {
    candidates_with(nodes, eligible, now, Vec::new)
}

/// [`candidates`], where on a large (sampled) pool the eligible nodes in
/// `hint()` (node indices) are always
/// among them besides the random sample: the nodes the prefix index says
/// hold the request's prefix. `hint` is called only on sampled pools. When
/// the sample finds too few eligible nodes, the whole pool is scanned.
pub fn candidates_with(
    nodes: &[Arc<Node>],
    eligible: &dyn Fn(usize) -> bool,
    now: u64,
    hint: impl FnOnce() -> Vec<usize>,
) -> Vec<usize> {
    let n = nodes.len();
    let mut all: Vec<usize> = if sample::sampled(n) {
        let hint = hint();
        let mut picked = Vec::with_capacity(sample::CANDIDATE_SAMPLES + hint.len());
        picked.extend(hint.iter().copied().filter(|&i| i < n && eligible(i)));
        // A drawn node is eligible and in the pool, so if it was hinted
        // it is among the picked already.
        let drawn = sample::draw_eligible(n, sample::CANDIDATE_SAMPLES, eligible, |i| {
            if !picked.contains(&i) {
                picked.push(i);
            }
        });
        if drawn.enough() {
            picked
        } else {
            all_eligible(n, eligible)
        }
    } else {
        all_eligible(n, eligible)
    };
    if all.len() <= 1 {
        return all;
    }
    // Keep the unsaturated ones, in order, in place; when there are none,
    // nothing was overwritten and every eligible node stays.
    let mut free = 0;
    for k in 0..all.len() {
        let i = all[k];
        if !saturated(&nodes[i], now) {
            all[free] = i;
            free += 1;
        }
    }
    if free > 0 {
        all.truncate(free);
    }
    all
}

/// The eligible nodes of a pool of `n`, in order. Sized for all of them
/// at once: collected from a filter, the vector grew four times on the
/// way to 64 nodes (0.1–0.2 µs, 6–9 % of a 64-node `prefix_aware` or
/// `composite` pick with a prompt).
fn all_eligible(n: usize, eligible: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let mut all = Vec::with_capacity(n);
    all.extend((0..n).filter(|&i| eligible(i)));
    all
}

/// Expected output tokens of the request (its limit, else the default).
pub fn expected_tokens(request: Option<&RequestClass>) -> f64 {
    f64::from(request.map_or(DEFAULT_EXPECTED_OUTPUT, expected_output))
}

/// Peak-EWMA TTFT and per-token time of a node, if it has samples.
pub fn latency_parts(node: &Node, now: u64) -> (Option<f64>, Option<f64>) {
    let ai = &node.load.ai;
    (ai.ttft_secs(now), ai.tpot_secs(now))
}

/// Index of the minimum of `score` over `items`, ties broken uniformly at
/// random; `None` for no items.
pub fn argmin_by(items: &[usize], mut score: impl FnMut(usize) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    let mut ties = 0usize;
    for &i in items {
        let s = score(i);
        match best {
            None => {
                best = Some((i, s));
                ties = 1;
            }
            Some((_, b)) if s < b => {
                best = Some((i, s));
                ties = 1;
            }
            Some((_, b)) if s == b => {
                ties += 1;
                if fastrand::usize(..ties) == 0 {
                    best = Some((i, s));
                }
            }
            _ => {}
        }
    }
    best.map(|(i, _)| i)
}
