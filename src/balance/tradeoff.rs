//! Cache affinity against queueing: is a node's cached prefix worth the
//! wait to get into it?
//!
//! For each candidate `i` with a prefix match:
//!
//! * **prefill saved** `saved_i` = matched tokens × prefill seconds per
//!   token. The per-token cost is learned from streamed responses (TTFT /
//!   prompt tokens, `fleet::ai`), taking the lowest candidate's value (the
//!   least inflated by queueing).
//! * **queueing delay** `delay_i`, from the node's scraped reading
//!   (decayed by age, `fleet::capacity`): a node with nobody waiting and KV
//!   cache below [`KV_NEAR_FULL`] (its peak over the last fresh window: a
//!   node at full KV preempts and dips under the mark between readings)
//!   starts a new request at once (0).
//!   Otherwise the batch is full (vLLM only queues when it has no seat or
//!   no KV blocks), and the request waits for `waiting + 1` of the `running`
//!   requests to finish; they finish at a rate of `running / D`, where `D`
//!   is a request's decode time (256 expected output tokens × the
//!   node's time per token), so `delay_i = (waiting + 1) × D / running`.
//!
//! A node keeps its cache affinity only while
//! `delay_i − min_j delay_j ≤ saved_i`: going there may cost no more extra
//! waiting than the prefill it saves. Otherwise its match is dropped and
//! the policy treats it as a node without the prefix (it can still win on
//! load, as any node can).
//!
//! Before any latency sample the costs are those of Llama-3.1-8B on an
//! H100 ([`DEFAULT_PREFILL_SECS_PER_TOKEN`], [`DEFAULT_TPOT_SECS`]); when
//! only one of the two is learned the other follows it at the same ratio,
//! so the comparison stays in one time scale.
//!
//! Nodes without a usable scrape have no delay estimate (0): the policies'
//! own load thresholds still apply to them, as before.

use std::sync::Arc;

use crate::classify::prefix::TOKENS_PER_BLOCK;
use crate::fleet::{Node, DEFAULT_EXPECTED_OUTPUT};

/// Prefill seconds per prompt token before any sample (20k tokens/s).
pub const DEFAULT_PREFILL_SECS_PER_TOKEN: f64 = 0.000_05;
/// Decode seconds per output token before any sample.
pub const DEFAULT_TPOT_SECS: f64 = 0.01;
/// KV cache use from which a node cannot admit a new request at once.
pub const KV_NEAR_FULL: f64 = 0.9;

/// The learned costs the trade-off compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Prefill seconds per prompt token.
    pub prefill_per_token: f64,
    /// Decode seconds per output token (fleet's best; nodes use their own
    /// when they have one).
    pub tpot: f64,
}

impl Costs {
    /// Costs learned from the candidates' latency samples.
    pub fn learn(nodes: &[Arc<Node>], cands: &[usize]) -> Costs {
        let lowest = |f: &dyn Fn(&Node) -> Option<f64>| {
            cands
                .iter()
                .filter_map(|&i| nodes.get(i).and_then(|n| f(n)))
                .filter(|v| *v > 0.0 && v.is_finite())
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
        };
        let prefill = lowest(&|n| n.load.ai.prefill_secs_per_token());
        let tpot = lowest(&|n| n.load.ai.tpot_last_secs());
        let ratio = DEFAULT_TPOT_SECS / DEFAULT_PREFILL_SECS_PER_TOKEN;
        let (prefill_per_token, tpot) = match (prefill, tpot) {
            (Some(p), Some(t)) => (p, t),
            (Some(p), None) => (p, p * ratio),
            (None, Some(t)) => (t / ratio, t),
            (None, None) => (DEFAULT_PREFILL_SECS_PER_TOKEN, DEFAULT_TPOT_SECS),
        };
        Costs {
            prefill_per_token,
            tpot,
        }
    }

    /// Prefill seconds saved by `blocks` cached prompt blocks.
    pub fn saved_secs(&self, blocks: u32) -> f64 {
        f64::from(blocks) * TOKENS_PER_BLOCK as f64 * self.prefill_per_token
    }

    /// Estimated seconds a new request waits on `node` before it starts
    /// (module docs); 0 without a usable scrape.
    pub fn delay_secs(&self, node: &Node, now: u64) -> f64 {
        let Some(v) = node.load.ai.capacity.view(&node.load, now) else {
            return 0.0;
        };
        // The held peak: a node near full KV preempts and dips below the
        // mark between readings without having room.
        let kv_full = v
            .kv_peak
            .into_iter()
            .chain(v.kv_usage)
            .any(|k| k >= KV_NEAR_FULL);
        if v.queued < 0.5 && !kv_full {
            return 0.0;
        }
        let tpot = node
            .load
            .ai
            .tpot_last_secs()
            .filter(|t| *t > 0.0)
            .map_or(self.tpot, |t| t.max(self.tpot));
        let decode = f64::from(DEFAULT_EXPECTED_OUTPUT) * tpot;
        (v.waiting + 1.0) * decode / v.running.max(1.0)
    }
}

/// Drop the prefix match (`matched`, indexed by node) of every candidate
/// whose estimated queueing delay, beyond the least-delayed candidate's,
/// exceeds the prefill its match saves. Costs nothing when no candidate
/// has a scraped reading.
pub fn yield_to_queueing(nodes: &[Arc<Node>], cands: &[usize], now: u64, matched: &mut [u32]) {
    let scraped = cands.iter().any(|&i| {
        nodes
            .get(i)
            .is_some_and(|n| n.load.ai.capacity.view(&n.load, now).is_some())
    });
    if !scraped
        || !cands
            .iter()
            .any(|&i| matched.get(i).is_some_and(|m| *m > 0))
    {
        return;
    }
    let costs = Costs::learn(nodes, cands);
    let delays: Vec<f64> = cands
        .iter()
        .map(|&i| nodes.get(i).map_or(0.0, |n| costs.delay_secs(n, now)))
        .collect();
    let least = delays.iter().copied().fold(f64::INFINITY, f64::min);
    for (&i, delay) in cands.iter().zip(&delays) {
        if let Some(m) = matched.get_mut(i) {
            if *m > 0 && delay - least > costs.saved_secs(*m) {
                *m = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::nodes;
    use crate::fleet::capacity::Scraped;
    use crate::fleet::now_ns;
    use std::time::Duration;

    fn scrape(n: &Node, running: f64, waiting: f64, kv: f64) {
        let cap = &n.load.ai.capacity;
        cap.configure(Duration::from_secs(1), Duration::from_secs(1), None, None);
        cap.record(
            &Scraped {
                running: Some(running),
                waiting: Some(waiting),
                kv_usage: Some(kv),
            },
            0,
            now_ns(),
        );
    }

    #[test]
    fn defaults_and_learning_keep_one_time_scale() {
        let ns = nodes(2);
        let c = Costs::learn(&ns, &[0, 1]);
        assert_eq!(c.prefill_per_token, DEFAULT_PREFILL_SECS_PER_TOKEN);
        // 64 blocks = 1024 tokens = 51.2 ms of prefill by default.
        assert!((c.saved_secs(64) - 0.0512).abs() < 1e-9);
        // A simulator at 1/100 of real time: only TPOT learned so far, the
        // prefill cost follows at the default ratio.
        ns[1].load.ai.observe_tpot(Duration::from_micros(100));
        let c = Costs::learn(&ns, &[0, 1]);
        assert!((c.tpot - 0.0001).abs() < 1e-9);
        assert!((c.prefill_per_token - 0.000_000_5).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn queueing_beats_the_cache_only_when_it_costs_more() {
        let ns = nodes(3);
        let now = now_ns();
        // Node 0: running 16, waiting 24. Node 1: KV nearly full, 2 waiting.
        // Node 2: idle, batch has room.
        scrape(&ns[0], 16.0, 24.0, 0.5);
        scrape(&ns[1], 8.0, 2.0, 0.97);
        scrape(&ns[2], 3.0, 0.0, 0.3);
        let c = Costs::learn(&ns, &[0, 1, 2]);
        // D = 256 × 10 ms = 2.56 s.
        assert!((c.delay_secs(&ns[0], now) - 25.0 * 2.56 / 16.0).abs() < 1e-6);
        assert!((c.delay_secs(&ns[1], now) - 3.0 * 2.56 / 8.0).abs() < 1e-6);
        assert_eq!(c.delay_secs(&ns[2], now), 0.0);
        // A 1024-token match (51 ms) is not worth 4 s or 0.96 s of queue.
        let mut matched = [64u32, 64, 0];
        yield_to_queueing(&ns, &[0, 1, 2], now, &mut matched);
        assert_eq!(matched, [0, 0, 0]);
        // A 30k-token match (1.5 s) is worth the KV-full node's 0.96 s,
        // not node 0's 4 s.
        let mut matched = [1900u32, 1900, 0];
        yield_to_queueing(&ns, &[0, 1, 2], now, &mut matched);
        assert_eq!(matched, [0, 1900, 0]);
        // Without node 2 the least delay is node 1's: node 0 must beat
        // it by its saving, it does not.
        let mut matched = [64u32, 0, 0];
        yield_to_queueing(&ns, &[0, 1], now, &mut matched);
        assert_eq!(matched, [0, 0, 0]);
    }

    #[test]
    fn nodes_without_scrapes_are_left_alone() {
        let ns = nodes(2);
        let mut matched = [10u32, 0];
        yield_to_queueing(&ns, &[0, 1], now_ns(), &mut matched);
        assert_eq!(matched, [10, 0]);
    }
}
