//! LoRA-adapter affinity for the AI-aware policies: a request naming an
//! adapter goes to a node that already holds it, without piling a hot
//! adapter onto one node or pushing a node past its adapter slots.
//!
//! The request's `model` is taken as an adapter only once some node's
//! `vllm:lora_requests_info` named it (base model names never appear
//! there); until then nothing changes. Then, among the policy's
//! candidates:
//!
//! 1. **holders**: nodes that ran the adapter lately or were sent it by
//!    the gateway (`fleet::lora`): no load cost, no slot taken;
//! 2. **free**: other nodes with an adapter slot free (fewer distinct
//!    adapters running than their `max_lora`): one load;
//! 3. the rest would have to wait for a slot.
//!
//! The policy chooses among the holders — unless they are overloaded
//! compared with the free nodes by the route's balance thresholds
//! (`balance_abs_threshold` and `balance_rel_threshold`, as for prefix
//! affinity), in which case the free nodes join them: a hot adapter
//! spreads to more nodes while one node stays enough for a quiet one.
//! Without holders, the free nodes; without those, every candidate.

use std::sync::Arc;

use super::signals::load;
use crate::classify::RequestClass;
use crate::config::BalanceOptions;
use crate::fleet::lora::adapter_key;
use crate::fleet::Node;

/// The adapter key of a request, when some candidate knows the name as
/// an adapter.
pub fn adapter_of(
    nodes: &[Arc<Node>],
    cands: &[usize],
    request: Option<&RequestClass>,
    now: u64,
) -> Option<u64> {
    let key = adapter_key(request?.model.as_deref()?);
    cands
        .iter()
        .any(|&i| nodes.get(i).is_some_and(|n| n.load.ai.lora.knows(key, now)))
        .then_some(key)
}

/// Narrow `cands` for a request of adapter `key` (module docs).
pub fn narrow(
    nodes: &[Arc<Node>],
    cands: Vec<usize>,
    key: u64,
    now: u64,
    opts: &BalanceOptions,
) -> Vec<usize> {
    if cands.len() <= 1 {
        return cands;
    }
    let node = |i: usize| nodes.get(i);
    let (holders, others): (Vec<usize>, Vec<usize>) = cands
        .iter()
        .partition(|&&i| node(i).is_some_and(|n| n.load.ai.lora.holds(key, now)));
    let free: Vec<usize> = others
        .into_iter()
        .filter(|&i| node(i).is_some_and(|n| n.load.ai.lora.slot_free()))
        .collect();
    let least = |set: &[usize]| {
        set.iter()
            .filter_map(|&i| node(i).map(|n| load(n, now, opts.tokens_per_request)))
            .fold(f64::INFINITY, f64::min)
    };
    match (holders.is_empty(), free.is_empty()) {
        (false, true) => holders,
        (false, false) => {
            let (h, f) = (least(&holders), least(&free));
            let hot = h - f > opts.balance_abs_threshold && h > opts.balance_rel_threshold * f;
            if hot {
                let mut both = holders;
                both.extend(free);
                both
            } else {
                holders
            }
        }
        (true, false) => free,
        (true, true) => cands,
    }
}

/// Remember that the request's adapter went to `node`.
pub fn note(node: &Node, request: Option<&RequestClass>, now: u64) {
    if let Some(model) = request.and_then(|r| r.model.as_deref()) {
        node.load.ai.lora.note_sent(adapter_key(model), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::nodes;
    use crate::fleet::lora::LoraInfo;
    use crate::fleet::now_ns;

    fn scrape(n: &Node, running: &[&str], max: u32, now: u64) {
        n.load.ai.lora.record(
            &LoraInfo {
                running: running.iter().map(|s| s.to_string()).collect(),
                waiting: vec![],
                max_lora: Some(max),
            },
            now,
        );
    }

    #[test]
    fn holders_first_then_free_slots_and_hot_adapters_spread() {
        let ns = nodes(3);
        let now = now_ns();
        let opts = BalanceOptions {
            balance_abs_threshold: 2.0,
            balance_rel_threshold: 1.5,
            ..BalanceOptions::default()
        };
        scrape(&ns[0], &["sql"], 2, now);
        scrape(&ns[1], &["chat", "math"], 2, now);
        scrape(&ns[2], &[], 2, now);
        let mut req = crate::balance::testing::chat_class();
        req.model = Some("sql".into());
        let key = adapter_of(&ns, &[0, 1, 2], Some(&req), now).unwrap();
        assert_eq!(narrow(&ns, vec![0, 1, 2], key, now, &opts), [0]);
        // A base-model name never seen in lora info: no narrowing.
        req.model = Some("llama".into());
        assert_eq!(adapter_of(&ns, &[0, 1, 2], Some(&req), now), None);
        // No holder: nodes with a free slot (node 1 runs 2 of 2).
        let other = adapter_key("chat2");
        assert_eq!(narrow(&ns, vec![0, 1, 2], other, now, &opts), [0, 2]);
        // The holder is busy beyond the thresholds: node 2 joins.
        let _busy: Vec<_> = (0..5).map(|_| ns[0].begin_request()).collect();
        assert_eq!(narrow(&ns, vec![0, 1, 2], key, now, &opts), [0, 2]);
        // Sent by the gateway counts as held.
        note(
            &ns[2],
            Some(&{
                let mut r = crate::balance::testing::chat_class();
                r.model = Some("chat2".into());
                r
            }),
            now,
        );
        assert_eq!(narrow(&ns, vec![0, 1, 2], other, now, &opts), [2]);
    }
}
