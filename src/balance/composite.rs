//! Composite scoring: filter, score, pick (as llm-d's endpoint picker).
//!
//! Each candidate (eligible, not saturated — or every eligible node when all
//! are saturated) gets a weighted sum of scorers, each normalized to 0..1
//! over the candidates (1 is best), and the highest total wins (ties at
//! random). Weights come from `[routes.balance] scorers`; 0 turns a scorer
//! off.
//!
//! | scorer | raw signal | normalized |
//! |---|---|---|
//! | `prefix` | leading prompt blocks the node was recently sent ([`PrefixIndex`]); 0 when its queue costs more than the match saves ([`tradeoff`](super::tradeoff)) | matched / prompt blocks |
//! | `queue` | running + waiting (scraped when fresh, never below outstanding) | min-max, lower is better |
//! | `kv` | scraped KV cache use (nodes without a fresh value get the mean of the others) | `1 - use` |
//! | `outstanding` | gateway requests in flight / weight | min-max, lower is better |
//! | `latency` | peak-EWMA TTFT + expected tokens × per-token time (no samples: best of the others) | min-max, lower is better |
//!
//! Min-max scaling gives 1 to every node when all are equal. The chosen
//! node is recorded in the prefix index when the `prefix` weight is above 0.
//! On pools of more than 128 nodes the candidates are the eligible nodes
//! holding the longest part of the prompt (and a few with a shorter part)
//! plus 16 random eligible nodes
//! ([`candidates_with`]), and scores are
//! normalized over them: O(1) in the pool's size.

use std::sync::Arc;

use super::lora;
use super::prefix_aware::Blocks;
use super::prefix_index::PrefixIndex;
use super::signals::{candidates_with, expected_tokens, latency_parts};
use super::tradeoff::yield_to_queueing;
use super::{sample, PickContext, Policy};
use crate::config::{BalanceOptions, ScorerWeights};
use crate::fleet::{now_ns, Node};
use crate::node_groups::Groups;

/// Composite-scoring policy for one route.
#[derive(Debug)]
pub struct Composite {
    index: Arc<PrefixIndex>,
    weights: ScorerWeights,
    /// The route's balance options (LoRA spreading uses the thresholds).
    opts: BalanceOptions,
}

impl Composite {
    /// A policy with the configured weights and an empty prefix index.
    pub fn new(opts: &BalanceOptions) -> Self {
        let capacity = if opts.scorers.prefix > 0.0 {
            opts.prefix_capacity
        } else {
            16
        };
        Composite::with_index(opts, Arc::new(PrefixIndex::new(capacity)))
    }

    /// A policy using `index` (kept by the caller across config reloads).
    pub fn with_index(opts: &BalanceOptions, index: Arc<PrefixIndex>) -> Self {
        Composite {
            index,
            weights: opts.scorers,
            opts: opts.clone(),
        }
    }
}

/// One candidate's raw signals.
struct Signals {
    /// Queue depth (see [`queue_depth`](super::signals::queue_depth)).
    queue: f64,
    /// Scraped KV cache use, when fresh.
    kv: Option<f64>,
    /// Gateway requests in flight per unit of weight.
    outstanding: f64,
    /// Peak-EWMA TTFT and per-token time, when sampled.
    latency: (Option<f64>, Option<f64>),
}

/// The span of one raw signal over the candidates, for min-max scaling.
#[derive(Clone, Copy)]
struct Range {
    min: f64,
    max: f64,
}

impl Default for Range {
    fn default() -> Self {
        Range {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Range {
    fn add(&mut self, x: f64) {
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Min-max scaling where lower raw values are better: 1 for the
    /// minimum, 0 for the maximum, 1 for all when they are equal.
    fn lower_is_better(&self, x: f64) -> f64 {
        if self.max.partial_cmp(&self.min) != Some(std::cmp::Ordering::Greater) {
            return 1.0;
        }
        (self.max - x) / (self.max - self.min)
    }
}

impl Policy for Composite {
    fn name(&self) -> &'static str {
        "composite"
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        self.pick_expecting(nodes, eligible, ctx).map(|(i, _)| i)
    }

    fn pick_expecting(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<(usize, u32)> {
        let now = now_ns();
        let chain = ctx.request.map_or(&[][..], |r| r.prefix.as_slice());
        let w = &self.weights;
        // On a large pool: a random sample plus the nodes holding the prefix.
        let holders = || match w.prefix > 0.0 {
            true => {
                let (deepest, others) = (sample::HOLDERS_DEEPEST, sample::HOLDERS_OTHERS);
                self.index.likely_holders(chain, deepest, others)
            }
            false => Vec::new(),
        };
        let mut cands = candidates_with(nodes, eligible, now, holders);
        // LoRA: nodes holding the request's adapter first (see `lora`).
        let adapter = lora::adapter_of(nodes, &cands, ctx.request, now);
        if let Some(key) = adapter {
            cands = lora::narrow(nodes, cands, key, now, &self.opts);
        }
        if cands.len() <= 1 {
            let only = cands.first().copied();
            if let (Some(i), true) = (only, w.prefix > 0.0) {
                self.index.record(chain, i);
            }
            if let (Some(i), Some(_)) = (only, adapter) {
                lora::note(&nodes[i], ctx.request, now);
            }
            return only.map(|i| (i, 0));
        }
        // One pass over the candidates reads every signal once (one view
        // of the scraped capacity each); the scores are then scaled over
        // the candidates and summed.
        // Per node index, up to the highest candidate.
        let span = cands.iter().max().map_or(0, |&i| i + 1);
        let mut matched = Blocks::from_elem(0, span);
        let mut held = Blocks::new();
        let use_prefix = w.prefix > 0.0 && !chain.is_empty();
        if use_prefix {
            self.index
                .match_lengths(chain, &Groups::of(&cands), &mut matched);
            held.clone_from(&matched);
            // Cache affinity yields to real queueing (scraped waiting, KV).
            yield_to_queueing(nodes, &cands, now, &mut matched);
        }
        let tokens = expected_tokens(ctx.request);
        let mut rows: Vec<Signals> = Vec::with_capacity(cands.len());
        let (mut queue, mut outstanding) = (Range::default(), Range::default());
        let (mut best_ttft, mut best_tpot) = (f64::INFINITY, f64::INFINITY);
        let (mut kv_sum, mut kv_known) = (0.0f64, 0usize);
        for &i in &cands {
            let n = &nodes[i];
            let out = n.outstanding();
            let view = n.load.ai.capacity.view(&n.load, now);
            let row = Signals {
                queue: view.map_or(out as f64, |v| (v.running + v.waiting).max(out as f64)),
                kv: view.and_then(|v| v.kv_usage),
                outstanding: out as f64 / f64::from(n.weight.max(1)),
                latency: if w.latency > 0.0 {
                    latency_parts(n, now)
                } else {
                    (None, None)
                },
            };
            queue.add(row.queue);
            outstanding.add(row.outstanding);
            if let Some(k) = row.kv {
                kv_sum += k;
                kv_known += 1;
            }
            best_ttft = row.latency.0.map_or(best_ttft, |t| best_ttft.min(t));
            best_tpot = row.latency.1.map_or(best_tpot, |t| best_tpot.min(t));
            rows.push(row);
        }
        // A node without latency samples counts as the best of the others.
        let or_best =
            |x: Option<f64>, best: f64| x.unwrap_or(if best.is_finite() { best } else { 0.0 });
        let latency_of = |r: &Signals| {
            or_best(r.latency.0, best_ttft) + tokens * or_best(r.latency.1, best_tpot)
        };
        let mut latency = Range::default();
        if w.latency > 0.0 {
            for r in &rows {
                latency.add(latency_of(r));
            }
        }
        let kv_mean = (kv_known > 0).then(|| kv_sum / kv_known as f64);
        let total = |k: usize, i: usize| {
            let r = &rows[k];
            let mut t = 0.0;
            if use_prefix {
                t +=
                    w.prefix * f64::from(matched.get(i).copied().unwrap_or(0)) / chain.len() as f64;
            }
            if w.queue > 0.0 {
                t += w.queue * queue.lower_is_better(r.queue);
            }
            if let (true, Some(mean)) = (w.kv > 0.0, kv_mean) {
                t += w.kv * (1.0 - r.kv.unwrap_or(mean));
            }
            if w.outstanding > 0.0 {
                t += w.outstanding * outstanding.lower_is_better(r.outstanding);
            }
            if w.latency > 0.0 {
                t += w.latency * latency.lower_is_better(latency_of(r));
            }
            t
        };

        let mut best: Option<(usize, f64)> = None;
        let mut ties = 0usize;
        for (k, &i) in cands.iter().enumerate() {
            let s = total(k, i);
            match best {
                Some((_, b)) if s < b => {}
                Some((_, b)) if s == b => {
                    ties += 1;
                    if fastrand::usize(..ties) == 0 {
                        best = Some((i, s));
                    }
                }
                _ => {
                    best = Some((i, s));
                    ties = 1;
                }
            }
        }
        let choice = best.map(|(i, _)| i)?;
        if w.prefix > 0.0 {
            self.index.record(chain, choice);
        }
        if adapter.is_some() {
            lora::note(&nodes[choice], ctx.request, now);
        }
        Some((choice, held.get(choice).copied().unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::classify::RequestClass;
    use crate::fleet::capacity::Scraped;
    use crate::fleet::InFlight;

    use std::time::Duration;

    use crate::balance::testing::nodes;

    use crate::balance::testing::chat_request as req;

    fn only(prefix: f64, queue: f64, kv: f64, outstanding: f64, latency: f64) -> BalanceOptions {
        BalanceOptions {
            scorers: ScorerWeights {
                prefix,
                queue,
                kv,
                outstanding,
                latency,
            },
            ..BalanceOptions::default()
        }
    }

    /// As `prefix_aware`: the pick says how much of the prompt it expects
    /// the chosen node to hold (its prefill-cost sample counts the rest).
    #[test]
    fn a_pick_tells_how_many_blocks_it_expects_cached() {
        let ns = nodes(3);
        let p = Composite::new(&only(3.0, 0.0, 0.0, 1.0, 0.0));
        let first = req(&"conversation so far ".repeat(50));
        let ctx = |r| PickContext {
            request: Some(r),
            headers: None,
        };
        let (home, cached) = p.pick_expecting(&ns, &|_| true, &ctx(&first)).unwrap();
        assert_eq!(cached, 0);
        let next = req(&format!(
            "{}{}",
            "conversation so far ".repeat(50),
            "and more ".repeat(20)
        ));
        let (again, cached) = p.pick_expecting(&ns, &|_| true, &ctx(&next)).unwrap();
        assert_eq!(again, home);
        assert_eq!(cached as usize, first.prefix.len());
    }

    fn pick(p: &Composite, ns: &[Arc<Node>], r: Option<&RequestClass>) -> usize {
        p.pick(
            ns,
            &|_| true,
            &PickContext {
                request: r,
                headers: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn outstanding_scorer_spreads_evenly() {
        let ns = nodes(4);
        let p = Composite::new(&only(0.0, 0.0, 0.0, 1.0, 0.0));
        let mut g: Vec<InFlight> = Vec::new();
        for _ in 0..400 {
            let i = pick(&p, &ns, None);
            g.push(ns[i].begin_request());
        }
        assert!(ns.iter().all(|n| n.outstanding() == 100));
    }

    #[test]
    fn prefix_weight_trades_against_load() {
        let ns = nodes(3);
        let r = req(&"conversation so far ".repeat(50));
        let strong = Composite::new(&only(3.0, 0.0, 0.0, 1.0, 0.0));
        let home = pick(&strong, &ns, Some(&r));
        // Home has the most in flight; the prefix weight (3) beats the
        // outstanding weight (1).
        let _g: Vec<InFlight> = (0..5).map(|_| ns[home].begin_request()).collect();
        assert_eq!(pick(&strong, &ns, Some(&r)), home);
        // With the weights reversed, load wins.
        let weak = Composite::new(&only(0.5, 0.0, 0.0, 1.0, 0.0));
        let h2 = pick(&weak, &ns, Some(&r));
        let _g2: Vec<InFlight> = (0..5).map(|_| ns[h2].begin_request()).collect();
        assert_ne!(pick(&weak, &ns, Some(&r)), h2);
    }

    #[test]
    fn large_pool_samples_candidates_but_keeps_the_prefix_holders() {
        fastrand::seed(4);
        let ns = nodes(1024);
        let p = Composite::new(&only(3.0, 0.0, 0.0, 1.0, 0.0));
        let r = req(&"conversation so far ".repeat(50));
        let ctx = PickContext {
            request: Some(&r),
            headers: None,
        };
        assert_eq!(p.pick(&ns, &|i| i == 17, &ctx), Some(17));
        let calls = std::cell::Cell::new(0usize);
        let counting = |_: usize| {
            calls.set(calls.get() + 1);
            true
        };
        let _g: Vec<InFlight> = (0..3).map(|_| ns[17].begin_request()).collect();
        for _ in 0..50 {
            calls.set(0);
            assert_eq!(p.pick(&ns, &counting, &ctx), Some(17));
            assert!(calls.get() <= crate::balance::sample::CANDIDATE_SAMPLES + 1);
        }
        // Without a prefix: the outstanding scorer spreads over the pool.
        let o = Composite::new(&only(0.0, 0.0, 0.0, 1.0, 0.0));
        let mut g: Vec<InFlight> = Vec::new();
        for _ in 0..300 {
            let i = pick(&o, &ns, None);
            g.push(ns[i].begin_request());
        }
        assert!(ns
            .iter()
            .enumerate()
            .all(|(i, n)| i == 17 || n.outstanding() <= 1));
    }

    #[test]
    fn kv_and_latency_scorers_prefer_the_better_node() {
        let ns = nodes(2);
        let now = now_ns();
        let s = |kv| Scraped {
            running: Some(1.0),
            waiting: Some(0.0),
            kv_usage: Some(kv),
        };
        ns[0].load.ai.capacity.record(&s(0.9), 0, now);
        ns[1].load.ai.capacity.record(&s(0.2), 0, now);
        let p = Composite::new(&only(0.0, 0.0, 1.0, 0.0, 0.0));
        assert!((0..50).all(|_| pick(&p, &ns, None) == 1));
        let l = Composite::new(&only(0.0, 0.0, 0.0, 0.0, 1.0));
        ns[0].load.ai.observe_ttft(Duration::from_millis(50));
        ns[0].load.ai.observe_tpot(Duration::from_millis(5));
        ns[1].load.ai.observe_ttft(Duration::from_millis(500));
        ns[1].load.ai.observe_tpot(Duration::from_millis(50));
        assert!((0..50).all(|_| pick(&l, &ns, None) == 0));
    }

    #[test]
    fn queue_scorer_uses_fresh_scrapes_and_filters_saturated() {
        let ns = nodes(3);
        let now = now_ns();
        for (i, waiting) in [(0, 9.0), (1, 1.0), (2, 4.0)] {
            let cap = &ns[i].load.ai.capacity;
            cap.configure(
                Duration::from_secs(1),
                Duration::from_secs(1),
                Some(5),
                None,
            );
            cap.record(
                &Scraped {
                    running: Some(2.0),
                    waiting: Some(waiting),
                    kv_usage: None,
                },
                0,
                now,
            );
        }
        let p = Composite::new(&only(0.0, 1.0, 0.0, 0.0, 0.0));
        assert!((0..50).all(|_| pick(&p, &ns, None) == 1));
        // Node 1 ineligible: node 0 is saturated (9 > 5), so node 2.
        for _ in 0..50 {
            let i = p.pick(&ns, &|i| i != 1, &PickContext::EMPTY).unwrap();
            assert_eq!(i, 2);
        }
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
    }
}
