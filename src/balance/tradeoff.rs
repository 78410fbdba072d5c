//! Cache affinity against queueing: is a node's cached prefix worth the
//! wait to get into it?
//!
//! For each candidate `i` with a prefix match:
//!
//! * **prefill saved** `saved_i` = matched tokens × prefill seconds per
//!   token. The per-token cost is learned from streamed responses (TTFT /
//!   the prompt tokens the node was not expected to hold cached,
//!   `fleet::ai`), taking the lowest candidate's value (the least inflated
//!   by queueing).
//! * **queueing delay** `delay_i`, from the node's scraped reading
//!   (decayed by age, `fleet::capacity`; `waiting` that this gateway's own
//!   requests in flight could explain counts once two readings in a row
//!   show it, since a node that has room shows each new request as
//!   waiting until its next engine step): a node with nobody waiting and KV
//!   cache below [`KV_NEAR_FULL`] (its peak over the last three scrape
//!   intervals and readings: a node at full KV preempts and dips under the
//!   mark between readings) starts a new request at once (0).
//!   Otherwise the batch is full (vLLM only queues when it has no seat or
//!   no KV blocks), and the request waits for `waiting + 1` of the `running`
//!   requests to finish; they finish at a rate of `running / D`, where `D`
//!   is a request's decode time (256 expected output tokens × the
//!   node's average time per token, `fleet::ai`'s `tpot_mean_secs`: the
//!   peak EWMA jumps with one slow step and made a one-request batch look
//!   like half a minute of queue), so `delay_i = (waiting + 1) × D / running`.
//!   While fewer than half a batch wait, evidence caps that: the node's
//!   average TTFT over the last 3 s, when a streamed request got its first
//!   token there within the last second (`fleet::ai`'s `ttft_mean_after`).
//!
//! A node keeps its cache affinity only while the extra waiting costs no
//! more than the prefill its cache saves, `delay_i − min_j delay_j ≤
//! saved_i`. Otherwise its match is dropped and the policy treats it as a
//! node without the prefix (it can still win on load, as any node can).
//!
//! **Prefill queued** ([`yield_to_backlog`]): the prompt tokens this
//! gateway sent a node that still wait for prefill (streamed requests
//! without a first token, less what the policy expected cached:
//! `fleet::ai`'s `pending_prefill_tokens`). A new request shares the
//! engine's steps with that work (chunked prefill) before its first
//! token, and nobody waits in the engine's queue meanwhile, so the scrape
//! shows nothing. A match is dropped when the node's backlog beyond the
//! least-backlogged candidate's is more than the match saves (both in
//! prompt tokens). The caller decides when this may apply, since it
//! copies the prefix into another cache: `prefix_aware` does it while a
//! prompt has fewer holders than its share of the traffic (on
//! bench/peers.sh's hot-prompt workload the busiest holder served 406
//! requests at 203 ms mean TTFT and a fast node none; applied to every
//! prompt, it cost the 8-prompt workload 4 points of hit rate:
//! docs/aware-balancing.md, "Prefill queued at a hot prompt's holders").
//! Among nodes that keep the same (longest) match, the one with the least
//! prefill queued goes first ([`least_backlogged`]): moving among them
//! copies nothing.
//!
//! Node speed is not a term of its own. A slower node's delay is already
//! larger (its own time per token sets `D`), and making it also prefill
//! what it lacks at its speed (the rule until 2026-12-04) moved
//! conversations and pasted documents off a half-speed node whose cache
//! held them: on bench/peers.sh's fleet that cost 6 points of fleet hit
//! rate (docs/aware-balancing.md).
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
/// How recent a TTFT sample must be to cap the modelled delay.
const EVIDENCE_AGE_NS: u64 = 1_000_000_000;

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
        let tpot = lowest(&|n| n.load.ai.tpot_mean_secs());
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
        self.tokens(blocks) * self.prefill_per_token
    }

    /// Prompt tokens in `blocks` blocks.
    pub fn tokens(&self, blocks: u32) -> f64 {
        f64::from(blocks) * TOKENS_PER_BLOCK as f64
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
        // The waiting believed as a queue, plus what this gateway sent
        // since: a request caught between its arrival and the next engine
        // step is not a queue (`CapacityView::queued_settled`).
        let waiting = v.queued_settled + (v.waiting - v.queued).max(0.0);
        if v.queued_settled < 0.5 && !kv_full {
            return 0.0;
        }
        let tpot = node
            .load
            .ai
            .tpot_mean_secs()
            .filter(|t| *t > 0.0)
            .map_or(self.tpot, |t| t.max(self.tpot));
        let decode = f64::from(DEFAULT_EXPECTED_OUTPUT) * tpot;
        let modelled = (waiting + 1.0) * decode / v.running.max(1.0);
        // Evidence over the model, while nobody queues beyond half a
        // batch: requests that got their first token here within the last
        // second waited (and prefilled) no longer than this on average.
        // The model assumes the worst of a near-full KV cache (a whole
        // decode per seat) and read seconds where the nodes started
        // requests within ~100 ms, which moved conversations off their
        // cache for nothing. A real queue (a node saturated from
        // elsewhere) is newer than any sample this gateway has, so the
        // model stands there.
        let evidence = (v.queued_settled < v.running / 2.0)
            .then(|| {
                node.load
                    .ai
                    .ttft_mean_after(now.saturating_sub(EVIDENCE_AGE_NS))
            })
            .flatten();
        match evidence {
            Some(seen) => modelled.min(seen),
            None => modelled,
        }
    }
}

/// Drop the prefix match (`matched`, indexed by node) of every candidate
/// whose estimated queueing delay, beyond the least-delayed candidate's,
/// exceeds the prefill its match saves (module docs). Costs nothing when no
/// candidate has a scraped reading.
pub fn yield_to_queueing(nodes: &[Arc<Node>], cands: &[usize], now: u64, matched: &mut [u32]) {
    let scraped = cands.iter().any(|&i| {
        nodes
            .get(i)
            .is_some_and(|n| n.load.ai.capacity.view(&n.load, now).is_some())
    });
    let best_match = cands
        .iter()
        .filter_map(|&i| matched.get(i).copied())
        .max()
        .unwrap_or(0);
    if !scraped || best_match == 0 {
        return;
    }
    let costs = Costs::learn(nodes, cands);
    let delays: Vec<f64> = cands
        .iter()
        .map(|&i| nodes.get(i).map_or(0.0, |n| costs.delay_secs(n, now)))
        .collect();
    let least = delays.iter().copied().fold(f64::INFINITY, f64::min);
    for (k, &i) in cands.iter().enumerate() {
        if let Some(m) = matched.get_mut(i) {
            if *m == 0 {
                continue;
            }
            let extra = delays[k] - least;
            let saved = costs.saved_secs(*m);
            // A relative margin, so rounding never flips equal costs.
            if extra > saved * (1.0 + 1e-9) {
                tracing::trace!(
                    node = i,
                    matched_tokens = costs.tokens(*m),
                    delay = delays[k],
                    least,
                    saved,
                    prefill_per_token = costs.prefill_per_token,
                    "cache affinity yields"
                );
                *m = 0;
            }
        }
    }
}

/// Drop the prefix match (`matched`, indexed by node) of every candidate
/// whose prefill queued right now
/// ([`crate::fleet::AiLoad::pending_prefill_tokens`]), beyond the least-backlogged
/// candidate's, is more than its match saves: a new request waits behind
/// that work (chunked prefill shares each engine step) before its first
/// token, wherever it goes, and elsewhere it prefills the matched tokens
/// itself. Both sides are prompt tokens at the same prefill cost, so they
/// are compared as tokens. The caller decides when a match may be dropped
/// for this (module docs): it copies the prefix into another cache.
pub fn yield_to_backlog(nodes: &[Arc<Node>], cands: &[usize], matched: &mut [u32]) {
    let backlog = |i: usize| {
        nodes
            .get(i)
            .map_or(0, |n| n.load.ai.pending_prefill_tokens())
    };
    let Some(least) = cands.iter().map(|&i| backlog(i)).min() else {
        return;
    };
    for &i in cands {
        if let Some(m) = matched.get_mut(i) {
            let extra = backlog(i) - least;
            if *m > 0 && extra > u64::from(*m) * TOKENS_PER_BLOCK as u64 {
                tracing::trace!(
                    node = i,
                    matched_blocks = *m,
                    extra,
                    "cache affinity yields to prefill queued"
                );
                *m = 0;
            }
        }
    }
}

/// Of `positions` (into `cands`), those whose node has the least prefill
/// queued right now ([`AiLoad::pending_prefill_tokens`]); all of them
/// when they are equal (for example none queued).
///
/// [`AiLoad::pending_prefill_tokens`]: crate::fleet::AiLoad::pending_prefill_tokens
pub fn least_backlogged(
    nodes: &[Arc<Node>],
    cands: &[usize],
    mut positions: Vec<usize>,
) -> Vec<usize> {
    if positions.len() <= 1 {
        return positions;
    }
    let backlog = |k: usize| {
        cands
            .get(k)
            .and_then(|&i| nodes.get(i))
            .map_or(u64::MAX, |n| n.load.ai.pending_prefill_tokens())
    };
    let least = positions.iter().map(|&k| backlog(k)).min().unwrap_or(0);
    // In place: this runs on every pick with a match.
    positions.retain(|&k| backlog(k) == least);
    positions
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

    /// A node with room shows a request as waiting until its next engine
    /// step admits it; one scrape that lands then is not a queue (in
    /// tests/saturation.rs on a loaded machine such a reading, waiting 1
    /// and running 1 with this gateway's one request in flight, gave an
    /// idle node a 5 s delay, so a KV-saturated home kept its cache
    /// affinity). Two readings in a row are; so is more waiting than this
    /// gateway has in flight there, at once.
    #[test]
    fn a_waiting_request_of_our_own_counts_only_once_two_readings_show_it() {
        let ns = nodes(1);
        let c = Costs::learn(&ns, &[0]);
        let cap = &ns[0].load.ai.capacity;
        cap.configure(Duration::from_secs(1), Duration::from_secs(1), None, None);
        let read = |waiting: f64, in_flight: u64| {
            let s = Scraped {
                running: Some(1.0),
                waiting: Some(waiting),
                kv_usage: Some(0.1),
            };
            cap.record(&s, in_flight, now_ns());
        };
        read(0.0, 1);
        read(1.0, 1);
        assert_eq!(c.delay_secs(&ns[0], now_ns()), 0.0);
        read(1.0, 1);
        let decode = f64::from(DEFAULT_EXPECTED_OUTPUT) * c.tpot;
        let queued = c.delay_secs(&ns[0], now_ns());
        assert!((queued - 2.0 * decode).abs() < 1e-9, "{queued}");
        // Two waiting where this gateway had one in flight: someone
        // else's queue, believed at once.
        read(0.0, 1);
        read(2.0, 1);
        let queued = c.delay_secs(&ns[0], now_ns());
        assert!((queued - 3.0 * decode).abs() < 1e-9, "{queued}");
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
    fn one_slow_step_does_not_turn_a_short_queue_into_a_long_one() {
        let ns = nodes(1);
        let now = now_ns();
        // KV nearly full, 4 running, 1 waiting; tokens come every 10 ms
        // but one step took a second (the peak EWMA jumps to it).
        scrape(&ns[0], 4.0, 1.0, 0.95);
        ns[0].load.ai.observe_tpot(Duration::from_millis(10));
        ns[0].load.ai.observe_tpot(Duration::from_secs(1));
        let c = Costs::learn(&ns, &[0]);
        // D = 256 × 10 ms, not 256 × 1 s: 2 × 2.56 s / 4.
        let delay = c.delay_secs(&ns[0], now);
        assert!((delay - 2.0 * 2.56 / 4.0).abs() < 0.01, "{delay}");
    }

    /// A node at the KV mark with nobody waiting: the model says a new
    /// request waits for a seat, but requests sent there just now got their
    /// first token in 80 ms, and that is what a conversation weighs its
    /// cache against. A real queue keeps the model's answer.
    #[test]
    fn recent_first_tokens_cap_a_modelled_kv_wait_but_not_a_queue() {
        let ns = nodes(3);
        scrape(&ns[0], 4.0, 0.0, 0.95);
        scrape(&ns[1], 4.0, 3.0, 0.95);
        scrape(&ns[2], 3.0, 0.0, 0.3);
        let c = Costs::learn(&ns, &[0, 1, 2]);
        let now = now_ns();
        // D = 2.56 s: one seat frees in 0.64 s; the queue of 3 in 2.56 s.
        assert!((c.delay_secs(&ns[0], now) - 2.56 / 4.0).abs() < 1e-6);
        // A 2000-token conversation (0.1 s of prefill) yields to the 0.64 s.
        let mut matched = [125u32, 0, 0];
        yield_to_queueing(&ns, &[0, 1, 2], now, &mut matched);
        assert_eq!(matched, [0, 0, 0]);
        for n in &ns[..2] {
            n.load.ai.observe_ttft(Duration::from_millis(80));
        }
        let now = now_ns();
        let c = Costs::learn(&ns, &[0, 1, 2]);
        assert!((c.delay_secs(&ns[0], now) - 0.08).abs() < 1e-3);
        assert!((c.delay_secs(&ns[1], now) - 4.0 * 2.56 / 4.0).abs() < 1e-6);
        let mut matched = [125u32, 125, 0];
        yield_to_queueing(&ns, &[0, 1, 2], now, &mut matched);
        assert_eq!(
            matched,
            [125, 0, 0],
            "stays on node 0, not behind node 1's queue"
        );
    }

    /// Prefill queued at a node beyond the least-backlogged candidate's
    /// drops its match when it is more than the match saves, in tokens.
    #[test]
    fn prefill_queued_beyond_what_a_match_saves_drops_it() {
        let ns = nodes(3);
        let stream = |prompt_tokens| {
            let mut c = crate::balance::testing::chat_class();
            c.stream = true;
            c.prompt_tokens = prompt_tokens;
            c
        };
        let mut queued = ns[0].begin_request_for(&stream(1000));
        queued.expect_cached(25); // 400 of the 1000 cached: 600 queued.
        let _small = ns[1].begin_request_for(&stream(100));
        // Node 0 has 600 tokens queued more than node 2: a 31-block match
        // (496 tokens) is not worth them, a 38-block one (608) is. Node
        // 1's 100 are less than its 31 blocks save.
        let mut matched = [31u32, 31, 0];
        yield_to_backlog(&ns, &[0, 1, 2], &mut matched);
        assert_eq!(matched, [0, 31, 0]);
        let mut matched = [38u32, 0, 0];
        yield_to_backlog(&ns, &[0, 1, 2], &mut matched);
        assert_eq!(matched, [38, 0, 0]);
        // Against node 1 alone (100 queued) node 0 is 500 over: 31 blocks
        // still yield, 32 (512 tokens) do not.
        let mut matched = [31u32, 0, 0];
        yield_to_backlog(&ns, &[0, 1], &mut matched);
        assert_eq!(matched, [0, 0, 0]);
        let mut matched = [32u32, 0, 0];
        yield_to_backlog(&ns, &[0, 1], &mut matched);
        assert_eq!(matched, [32, 0, 0]);
        // A first token ends the wait.
        queued.on_data_frame(std::time::Instant::now());
        let mut matched = [1u32, 0, 0];
        yield_to_backlog(&ns, &[0, 1, 2], &mut matched);
        assert_eq!(matched, [1, 0, 0]);
    }

    #[test]
    fn nodes_without_scrapes_are_left_alone() {
        let ns = nodes(2);
        let mut matched = [10u32, 0];
        yield_to_queueing(&ns, &[0, 1], now_ns(), &mut matched);
        assert_eq!(matched, [10, 0]);
    }
}
