//! Prefix-aware balancing: send a request to the node that most recently
//! served the longest leading part of its prompt, so the node's prefix cache
//! (vLLM automatic prefix caching, SGLang RadixAttention) skips that part of
//! prefill — unless that node is overloaded compared with the others.
//!
//! Like the SGLang router's cache-aware policy, with a flat block-hash index
//! instead of a radix tree of text (the block chain is the tree: see
//! [`PrefixIndex`]), and with the balance thresholds applied per node rather
//! than as one global switch:
//!
//! 1. Candidates: eligible nodes that are not saturated (all eligible nodes
//!    if every one is).
//! 2. Load `L` of each candidate in request-equivalents per weight: queue
//!    depth (scraped when fresh, never below the gateway's outstanding
//!    count) + tokens in flight / `tokens_per_request` (see
//!    [`signals`](super::signals)). Not scaled by node speed: a slower node
//!    holds more requests for the same traffic, which already counts.
//! 3. A node is *overloaded* when `L - L_min > balance_abs_threshold` and
//!    `L > balance_rel_threshold × L_min`. Overloaded nodes lose their
//!    cache affinity; so does a node whose scraped queue or KV use says a
//!    new request would wait there longer than its cached prefix saves,
//!    and, while the prompt has fewer holders than its share of the
//!    requests ([`may_copy`]; a prompt's share is its part of the
//!    route's recent requests, [`PromptShares`]), one with more prefill
//!    queued by this gateway than its prefix saves (see
//!    [`tradeoff`](super::tradeoff)).
//!    A session's first request of a prompt held by fewer nodes than its
//!    share allows (the index saw other chains leave the prompt where
//!    this one does, [`PrefixIndex::leaves_a_shared_prefix`]) also counts
//!    as matching on the least-loaded nodes that do not hold it, up to
//!    that share ([`prompt_shares::widen`]): a hot prompt's sessions
//!    start all over the pool, each of 8 prompts keeps one home.
//! 4. Among the others, the node with the longest matching prefix wins;
//!    equal matches go to the least prefill queued at the moment, then
//!    the lower load.
//! 5. If no candidate matches a single block: a prompt no node was sent
//!    yet (not even its first block is in the index; it is counted by its
//!    anchor, the first `anchor_blocks` blocks) goes to the candidate, within 1.5 × the least load (or 4
//!    request-equivalents more), that holds the fewest recently new
//!    prompts per weight, then the least loaded ([`NewPrompts`]): a
//!    shared system prompt's later sessions follow it, so where it lands
//!    decides a share of the traffic. Otherwise the least-loaded
//!    candidate wins, ties taken in turn (new prefixes spread evenly,
//!    also when idle).
//! 6. When several nodes hold the longest match and are near the least load (under
//!    1.25 × it, or under one request-equivalent more), the first of them
//!    in rendezvous order of the prompt's anchor (its first
//!    `anchor_blocks` blocks, the shared system prompt) wins
//!    ([`PrefixAware::shared_home`]): sessions of one system prompt gather
//!    on the same node(s) instead of copying the prompt into every cache,
//!    and replicas of the gateway make the same choice. Otherwise ties are
//!    taken in turn (a rotating start).
//!
//! The chosen node is recorded for every block of the prompt, so the next
//! turn of a conversation (same prefix plus more) follows it. Requests
//! without a prefix (not classified, or shorter than one block) go to the
//! least-loaded candidate. Cost per pick: O(nodes + prompt blocks) with
//! two short shard locks per 16 blocks of the prompt (one to match, one
//! to record; [`PrefixIndex`]), no global lock. On pools of more than 128
//! nodes the candidates of step 1 are the eligible nodes holding the
//! longest part of the prompt (and a few with a shorter part) plus 16
//! random eligible nodes
//! ([`candidates_with`]), so the cost no
//! longer grows with the pool and `L_min` is the sample's.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::anchor_table::AnchorTable;
use super::lora;
use super::new_prompts::NewPrompts;
use super::prefix_index::{BlockKey, PrefixIndex};
use super::prompt_shares::{self, Holders, PromptShares};
use super::rendezvous;
use super::signals::{candidates_with, load};
use super::tradeoff::{least_backlogged, yield_to_backlog, yield_to_queueing};
use super::{sample, PickContext, Policy};
use crate::config::BalanceOptions;
use crate::fleet::{now_ns, Node};
use crate::node_groups::Groups;

/// Blocks matched per node index (on the stack up to 128 nodes, the
/// largest pool scanned whole).
pub(crate) type Blocks = smallvec::SmallVec<[u32; 128]>;

/// How many leading blocks of a chain (`&[u64]`) each node asked about
/// holds, written per node index into the slice, which holds 0 for those
/// nodes on entry (only matches are written).
pub(crate) type Matcher<'a> = dyn Fn(&[u64], &Groups, &mut [u32]) + 'a;

/// Prefix-aware policy for one route.
#[derive(Debug)]
pub struct PrefixAware {
    index: Arc<PrefixIndex>,
    abs: f64,
    rel: f64,
    tokens_per_request: f64,
    /// The route's balance options (LoRA spreading uses the thresholds).
    opts: BalanceOptions,
    /// Rotates the start of the least-load scan, so ties (idle nodes) are
    /// taken in turn and new prefixes spread evenly instead of by chance.
    next: AtomicUsize,
    /// `placement = "rendezvous"`: anchor depth and load factor ([`rendezvous`]).
    rendezvous: Option<(usize, f64)>,
    /// `placement = "rendezvous"`: balanced homes of recurring prompts.
    anchors: AnchorTable,
    /// Where prompts seen for the first time went ([`NewPrompts`]).
    new_prompts: NewPrompts,
    /// Each shared prompt's share of the requests ([`PromptShares`]).
    shares: PromptShares,
}

impl PrefixAware {
    /// A policy with an empty index.
    pub fn new(opts: &BalanceOptions) -> Self {
        PrefixAware::with_index(opts, Arc::new(PrefixIndex::new(opts.prefix_capacity)))
    }

    /// A policy using `index` (kept by the caller across config reloads, so
    /// cache affinity survives a reload that keeps the pool's nodes).
    pub fn with_index(opts: &BalanceOptions, index: Arc<PrefixIndex>) -> Self {
        PrefixAware {
            index,
            abs: opts.balance_abs_threshold,
            rel: opts.balance_rel_threshold,
            tokens_per_request: opts.tokens_per_request,
            opts: opts.clone(),
            next: AtomicUsize::new(0),
            rendezvous: (opts.placement == "rendezvous")
                .then_some((opts.anchor_blocks, opts.anchor_load_factor)),
            anchors: AnchorTable::default(),
            new_prompts: NewPrompts::default(),
            shares: PromptShares::default(),
        }
    }

    /// The prefix index (tests, memory measurement).
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }
}

impl Policy for PrefixAware {
    fn name(&self) -> &'static str {
        "prefix_aware"
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
        self.pick_matching(nodes, eligible, ctx, &|chain, ask, out| {
            self.index.match_lengths(chain, ask, out)
        })
    }
}

impl PrefixAware {
    /// [`Policy::pick`] with the matching step given: `matcher(chain, ask,
    /// out)` sets how many leading blocks each node in `ask` holds (the
    /// `precise_prefix` policy passes the engines' real caches). With the
    /// choice, the blocks the matcher said it holds (0 where no match was
    /// asked for).
    pub(crate) fn pick_matching(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
        matcher: &Matcher<'_>,
    ) -> Option<(usize, u32)> {
        let now = now_ns();
        let chain = ctx.request.map_or(&[][..], |r| r.prefix.as_slice());
        // Shares are only read past the rendezvous placement below.
        let share = rendezvous::anchor(chain, self.opts.anchor_blocks)
            .filter(|_| self.rendezvous.is_none())
            .and_then(|key| self.shares.note(key));
        // What the index holds of the prompt, searched for at most once.
        let known = OnceCell::new();
        let known = || *known.get_or_init(|| self.index.held_prefix(chain));
        // On a large pool: a random sample plus the nodes holding the prefix.
        let holders = || {
            let (deepest, others) = (sample::HOLDERS_DEEPEST, sample::HOLDERS_OTHERS);
            known().map_or_else(Vec::new, |k| k.likely_holders(&self.index, deepest, others))
        };
        let mut cands = candidates_with(nodes, eligible, now, holders);
        // LoRA: nodes holding the request's adapter first (see `lora`).
        let adapter = lora::adapter_of(nodes, &cands, ctx.request, now);
        if let Some(key) = adapter {
            cands = lora::narrow(nodes, cands, key, now, &self.opts);
        }
        if cands.len() <= 1 {
            let only = cands.first().copied();
            if let (Some(i), Some(req)) = (only, ctx.request) {
                self.index.record(&req.prefix, i);
                lora::note(&nodes[i], ctx.request, now);
            }
            return only.map(|i| (i, 0));
        }
        // Load as requests in flight (and queued), not scaled by node
        // speed: a slower node already holds more of them for the same
        // traffic (Little's law), so it gets fewer new sessions. Scaling by
        // its time per token on top counted its speed twice: on
        // bench/peers.sh's fleet (speeds 1, 1, 1, 0.5) the half-speed node
        // got 45 of 730 requests (seed 42), the fast nodes held more
        // conversations than their KV caches keep, and the fleet lost up
        // to 9 points of hit rate and 35 ms of mean TTFT to the misses
        // (docs/aware-balancing.md, "Node speed counted once").
        let loads: Vec<f64> = cands
            .iter()
            .map(|&i| load(&nodes[i], now, self.tokens_per_request))
            .collect();
        let min = loads.iter().copied().fold(f64::INFINITY, f64::min);
        if let Some((depth, factor)) = self.rendezvous {
            // A recurring prompt's balanced home while it is within the
            // load bound, else the first in plain rendezvous order within it.
            let bound = rendezvous::load_bound(&loads, factor);
            let balanced = rendezvous::anchor(chain, depth)
                .and_then(|key| self.anchors.home(key, nodes, &cands, now))
                .filter(|&h| {
                    cands
                        .iter()
                        .position(|&c| c == h)
                        .is_some_and(|k| loads[k] < bound)
                });
            let placed =
                balanced.or_else(|| rendezvous::place(chain, depth, nodes, &cands, &loads, factor));
            if let Some(home) = placed {
                self.index.record(chain, home);
                return Some((home, 0));
            }
        }

        // Per node index, up to the highest candidate (a sampled pick of a
        // large pool asks about a few dozen nodes spread over it).
        let span = cands.iter().max().map_or(0, |&i| i + 1);
        let mut matched = Blocks::from_elem(0, span);
        let mut held = Blocks::new();
        if !chain.is_empty() {
            let mut ask = Groups::default();
            for (&i, &l) in cands.iter().zip(&loads) {
                if !(l - min > self.abs && l > self.rel * min) {
                    ask.insert(i);
                }
            }
            matcher(chain, &ask, &mut matched);
            held.clone_from(&matched);
            // Cache affinity yields to real queueing (scraped waiting, KV).
            yield_to_queueing(nodes, &cands, now, &mut matched);
            // ... and to prefill queued at the holders, while the prompt
            // may be copied to another node.
            let holders = Holders::of(nodes, &cands, &loads, &held);
            if may_copy(share, &holders, cands.len()) {
                yield_to_backlog(nodes, &cands, &mut matched);
            }
            // A hot prompt's sessions start on as many nodes as its share.
            let session_start = || known().is_some_and(|k| k.leaves_a_shared_prefix());
            prompt_shares::widen(
                share,
                &holders,
                &cands,
                &loads,
                &held,
                &mut matched,
                session_start,
            );
        }
        let best_match = cands
            .iter()
            .map(|&i| matched.get(i).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        // Work on positions in `cands` so each load is an index, not a search.
        let positions: Vec<usize> = if best_match > 0 {
            (0..cands.len())
                .filter(|&k| matched.get(cands[k]).copied().unwrap_or(0) == best_match)
                .collect()
        } else {
            (0..cands.len()).collect()
        };
        // Equal matches: the least prefill queued right now first. Moving
        // among holders of the same match copies nothing into another
        // cache, so the backlog of this moment decides there; leaving
        // them (above) takes a backlog that lasts.
        let positions = if best_match > 0 {
            least_backlogged(nodes, &cands, positions)
        } else {
            positions
        };
        if positions.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % positions.len();
        let mut best = positions[start];
        for &k in positions[start..].iter().chain(&positions[..start]) {
            if loads[k] < loads[best] {
                best = k;
            }
        }
        let ranked = Ranked {
            cands: &cands,
            positions: &positions,
            loads: &loads,
            best,
        };
        let choice = if best_match > 0 {
            self.shared_home(chain, nodes, &ranked)
        } else {
            self.first_home(chain, nodes, &ranked)
        }
        .unwrap_or(cands[best]);
        self.index.record(chain, choice);
        if adapter.is_some() {
            lora::note(&nodes[choice], ctx.request, now);
        }
        Some((choice, held.get(choice).copied().unwrap_or(0)))
    }

    /// Among the `positions` (into `cands`) whose load is under
    /// [`NEAR_LEAST_LOADED`] times the least-loaded one's (`best`), the first in
    /// rendezvous order of the prompt's anchor (its first `anchor_blocks`
    /// blocks: the shared system prompt): sessions that share a prompt and
    /// find no deeper match gather on the same node(s) while the load
    /// allows, instead of each going to whichever node is least loaded at
    /// that moment, which copies every system prompt into every node's
    /// cache (8 prompts of ~1,500 tokens took a third of bench/peers.sh's
    /// 32k-token caches) and leaves less room for conversations. `None`
    /// without a prefix; with one node near the least load, that is `best`.
    fn shared_home(&self, chain: &[u64], nodes: &[Arc<Node>], r: &Ranked<'_>) -> Option<usize> {
        let key = rendezvous::anchor(chain, self.opts.anchor_blocks)?;
        let bound = r.bound(NEAR_LEAST_LOADED);
        let near = r
            .positions
            .iter()
            .filter(|&&k| r.loads[k] < bound)
            .map(|&k| r.cands[k]);
        rendezvous::first(key, nodes, near)
    }

    /// For a prompt no node was sent yet (not even its first block is in
    /// the index): among the `positions` within [`NEW_PROMPT_SLACK`] of the
    /// least load, taken from the rotating start `best`, the node holding
    /// the fewest recently new prompts per weight, then the least loaded
    /// ([`NewPrompts`]). The slack is wider than [`Self::shared_home`]'s:
    /// the prompt's later sessions follow where it lands, and at first a
    /// node is "busy" with as little as one request (with that bound,
    /// bench/peers.sh's first prompts still landed 3, 2, 1 and 2 to a
    /// node); it still keeps one-off prompts, where every request is
    /// new, off a node that queues. `None` without an anchor, or for a
    /// known prompt whose holders lost their match (overloaded, or
    /// queueing longer than it saves): those go to the least load.
    fn first_home(&self, chain: &[u64], nodes: &[Arc<Node>], r: &Ranked<'_>) -> Option<usize> {
        let depth = rendezvous::anchor_depth(chain, self.opts.anchor_blocks)?;
        let key = BlockKey::at(chain, depth - 1)?;
        // New only when no node was sent even its first block: a prompt
        // that shares a shorter prefix than the anchor with one whose
        // holders lost their match (overloaded, queueing) is not new, and
        // goes to the least load (tests/saturation.rs: by count, such
        // requests went to a KV-saturated home with few requests).
        if !NewPrompts::is_new(&self.index, BlockKey::at(chain, 0)?) {
            return None;
        }
        let bound = r.bound(NEW_PROMPT_SLACK);
        let start = r.positions.iter().position(|&k| k == r.best).unwrap_or(0);
        let near: Vec<(usize, f64, u32)> = r.positions[start..]
            .iter()
            .chain(&r.positions[..start])
            .filter(|&&k| r.loads[k] < bound)
            .map(|&k| (r.cands[k], r.loads[k], nodes[r.cands[k]].weight))
            .collect();
        self.new_prompts.place(key, &self.index, &near)
    }
}

/// Whether the prompt with this `share` of the requests (`None`: no
/// anchor, or not known yet) may be copied to one more node because its
/// holders have prefill queued: while fewer of the `cands` candidates
/// hold it (`holders`) than its share of the recent requests allows
/// ([`prompt_shares::holders_allowed`]). A hot prompt that most sessions
/// share then spreads over the pool as its holders fill, where each of
/// 8 prompts keeps one home: copying a
/// prompt into a cache that holds others evicts their conversations
/// (moving sessions to any node with less prefill queued cost
/// bench/peers.sh's 8-prompt workload 4 points of hit rate). Only the
/// prefill of the moment is weighed this way; real queueing moves a
/// session off its home at any time.
fn may_copy(share: Option<f64>, holders: &Holders, cands: usize) -> bool {
    // (At most `cands` are allowed, so this also leaves one not holding it.)
    holders.count > 0
        && holders.prefill_queued
        && holders.count < prompt_shares::holders_allowed(share, cands)
}

/// The nodes one pick chooses among: `positions` index into `cands` and
/// `loads`; `best` is the least loaded of them (found from a rotating
/// start, so ties are taken in turn).
struct Ranked<'a> {
    cands: &'a [usize],
    positions: &'a [usize],
    loads: &'a [f64],
    best: usize,
}

impl Ranked<'_> {
    /// The load a node must stay under to count as near the least:
    /// `(factor, plus)` allows `factor` times the least load, or `plus`
    /// request-equivalents more when that is larger.
    fn bound(&self, (factor, plus): (f64, f64)) -> f64 {
        let floor = self.loads[self.best];
        floor + (floor * (factor - 1.0)).max(plus)
    }
}

/// How far above the least load a node may be and still be the first
/// home of a new prompt ([`PrefixAware::first_home`]): under 1.5 times
/// it, or under 4 request-equivalents more when that is larger.
const NEW_PROMPT_SLACK: (f64, f64) = (1.5, 4.0);

/// How far above the least load a node may be and still take a shared
/// prompt's sessions ([`PrefixAware::shared_home`]): under 25 % more, or
/// under one request-equivalent more when that is larger.
const NEAR_LEAST_LOADED: (f64, f64) = (1.25, 1.0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::prompt_shares::MIN_REQUESTS;
    use crate::classify::prefix::BLOCK_BYTES;
    use crate::classify::RequestClass;
    use crate::fleet::InFlight;

    use crate::balance::testing::nodes;

    fn req(text: &str) -> RequestClass {
        let mut c = crate::balance::testing::chat_request(text);
        c.max_tokens = Some(16);
        c
    }

    fn pick(p: &PrefixAware, ns: &[Arc<Node>], r: &RequestClass) -> usize {
        p.pick(
            ns,
            &|_| true,
            &PickContext {
                request: Some(r),
                headers: None,
            },
        )
        .unwrap()
    }

    /// How many of `homes` each of `N` nodes got.
    fn per_node<const N: usize>(homes: &[usize]) -> [usize; N] {
        let mut per = [0; N];
        for &h in homes {
            per[h] += 1;
        }
        per
    }

    fn hold(ns: &[Arc<Node>], i: usize, k: usize) -> Vec<InFlight> {
        (0..k).map(|_| ns[i].begin_request()).collect()
    }

    /// The pick says how much of the prompt it expects the node to hold,
    /// so the node's prefill-cost sample counts only the rest.
    #[test]
    fn a_pick_tells_how_many_blocks_it_expects_cached() {
        let ns = nodes(4);
        let p = PrefixAware::new(&BalanceOptions::default());
        let first = req(&format!("system {}", "x".repeat(BLOCK_BYTES * 20)));
        let ctx = |r| PickContext {
            request: Some(r),
            headers: None,
        };
        let (home, cached) = p.pick_expecting(&ns, &|_| true, &ctx(&first)).unwrap();
        assert_eq!(cached, 0, "nothing routed yet");
        let next = req(&format!(
            "system {}{}",
            "x".repeat(BLOCK_BYTES * 20),
            "y".repeat(BLOCK_BYTES * 5)
        ));
        let (again, cached) = p.pick_expecting(&ns, &|_| true, &ctx(&next)).unwrap();
        assert_eq!(again, home);
        assert_eq!(cached as usize, first.prefix.len());
        assert!(next.prefix.len() > first.prefix.len());
    }

    #[test]
    fn sessions_stick_to_their_node_and_spread_by_load() {
        let ns = nodes(4);
        let p = PrefixAware::new(&BalanceOptions::default());
        let mut homes = Vec::new();
        let mut guards = Vec::new();
        // 8 distinct conversations, each request held in flight: new
        // prefixes spread over the least-loaded nodes.
        for s in 0..8 {
            let r = req(&format!("{s:04}{}", "x".repeat(BLOCK_BYTES * 10)));
            let i = pick(&p, &ns, &r);
            guards.push(ns[i].begin_request_for(&r));
            homes.push(i);
        }
        assert_eq!(per_node::<4>(&homes), [2, 2, 2, 2], "{homes:?}");
        // Follow-up turns (prefix + more) go home, whatever the small load.
        for (s, &home) in homes.iter().enumerate() {
            let r = req(&format!(
                "{s:04}{}{}",
                "x".repeat(BLOCK_BYTES * 10),
                "more".repeat(100)
            ));
            assert_eq!(pick(&p, &ns, &r), home, "session {s}");
        }
    }

    /// Where a system prompt's first request lands, its later sessions
    /// follow: new prompts are spread by how many each node holds, not by
    /// the load of the moment, which at first is one request here or
    /// there. (By load alone, a node that finishes its requests first
    /// takes every new prompt.)
    #[test]
    fn new_prompts_spread_by_count_not_by_the_load_of_the_moment() {
        let ns = nodes(4);
        let p = PrefixAware::new(&BalanceOptions::default());
        let mut homes = Vec::new();
        let mut held = Vec::new();
        for s in 0..8 {
            let r = req(&format!("prompt {s} {}", "x".repeat(BLOCK_BYTES * 20)));
            let i = pick(&p, &ns, &r);
            homes.push(i);
            // Node 0 is done with its requests at once; the others still
            // run theirs (well within the balance thresholds).
            if i != 0 {
                held.push(ns[i].begin_request_for(&r));
            }
        }
        assert_eq!(per_node::<4>(&homes), [2, 2, 2, 2], "{homes:?}");
    }

    /// A prompt sharing its first blocks (fewer than the anchor's) with
    /// one whose home lost its match is not new: it goes to the least
    /// load, not to the node holding the fewest new prompts (the home,
    /// here, which a saturated home often is).
    #[test]
    fn a_prompt_whose_prefix_home_is_dropped_goes_to_the_least_load() {
        let ns = nodes(2);
        let p = PrefixAware::new(&BalanceOptions {
            balance_abs_threshold: 0.5,
            ..BalanceOptions::default()
        });
        let shared = "shared ".repeat(50);
        let first = req(&format!("{shared}{}", "a".repeat(BLOCK_BYTES * 20)));
        let home = pick(&p, &ns, &first);
        let other = 1 - home;
        // The other node holds two new prompts, home one.
        for k in [7u64, 8] {
            let key = BlockKey::at(&[k], 0).unwrap();
            let placed = p.new_prompts.place(key, p.index(), &[(other, 0.0, 1)]);
            assert_eq!(placed, Some(other));
            p.index().record(&[k], other);
        }
        // Home is overloaded by the thresholds (one request against none)
        // but within the new-prompt slack.
        let _busy = hold(&ns, home, 1);
        let next = req(&format!("{shared}{}", "b".repeat(BLOCK_BYTES * 20)));
        assert_eq!(pick(&p, &ns, &next), other);
    }

    /// ... but a node that queues beyond the slack takes no new prompt,
    /// however few it holds: where every request is a new prompt (no
    /// shared prefix), the least load still decides.
    #[test]
    fn new_prompts_stay_off_a_node_that_queues() {
        let ns = nodes(3);
        let p = PrefixAware::new(&BalanceOptions::default());
        let _queue = hold(&ns, 0, 6);
        for s in 0..12 {
            let r = req(&format!("one-off {s} {}", "x".repeat(BLOCK_BYTES * 20)));
            assert_ne!(pick(&p, &ns, &r), 0, "prompt {s}");
        }
    }

    #[test]
    fn overloaded_home_loses_affinity() {
        let ns = nodes(3);
        let p = PrefixAware::new(&BalanceOptions {
            balance_abs_threshold: 4.0,
            balance_rel_threshold: 1.5,
            ..BalanceOptions::default()
        });
        let r = req(&"shared system prompt ".repeat(40));
        let home = pick(&p, &ns, &r);
        // Home is busy but within the absolute threshold: still home.
        let _g = hold(&ns, home, 4);
        assert_eq!(pick(&p, &ns, &r), home);
        // Over both thresholds: goes to the least-loaded other node.
        let _g2 = hold(&ns, home, 2);
        let other = (home + 1) % 3;
        let _g3 = hold(&ns, other, 1);
        let chosen = pick(&p, &ns, &r);
        assert_eq!(chosen, (home + 2) % 3);
        // Now two nodes hold the prefix; ineligible ones are never chosen.
        for _ in 0..50 {
            let i = p
                .pick(
                    &ns,
                    &|i| i != chosen,
                    &PickContext {
                        request: Some(&r),
                        headers: None,
                    },
                )
                .unwrap();
            assert_ne!(i, chosen);
        }
    }

    #[test]
    fn a_busy_home_keeps_its_sessions_until_requests_wait_there() {
        use crate::fleet::capacity::Scraped;
        use std::time::Duration;
        // Default thresholds. The home node runs 24 requests, the others
        // none, and its scrape says nobody waits: its batch has room, so a
        // new turn starts at once there and skips the prefill of its
        // history. (With SGLang-like thresholds of 16 it moved: a miss and
        // a second copy of the conversation in another node's cache.)
        let ns = nodes(3);
        let p = PrefixAware::new(&BalanceOptions::default());
        let r = req(&"a long conversation so far ".repeat(60));
        let home = pick(&p, &ns, &r);
        let _busy = hold(&ns, home, 24);
        let scrape = |waiting: f64| {
            for (i, n) in ns.iter().enumerate() {
                let cap = &n.load.ai.capacity;
                cap.configure(Duration::from_secs(5), Duration::from_secs(5), None, None);
                let running = if i == home { 24.0 } else { 0.0 };
                let waiting = if i == home { waiting } else { 0.0 };
                cap.record(
                    &Scraped {
                        running: Some(running),
                        waiting: Some(waiting),
                        kv_usage: Some(0.5),
                    },
                    n.outstanding(),
                    now_ns(),
                );
            }
        };
        scrape(0.0);
        for _ in 0..10 {
            assert_eq!(pick(&p, &ns, &r), home);
        }
        // Once requests queue there (in two readings in a row: one may
        // catch requests on their way into the batch), the affinity yields
        // (`tradeoff`).
        scrape(8.0);
        assert_eq!(pick(&p, &ns, &r), home);
        scrape(8.0);
        assert_ne!(pick(&p, &ns, &r), home);
    }

    /// A half-speed node holds more requests for the same traffic; those
    /// count, its speed does not count again. With loads scaled by
    /// slowness (before), 3 requests on a 3x slower home weighed like 9 and
    /// took its conversation to an idle fast node, and a pasted document
    /// went to the fast node to prefill: the half-speed node of
    /// bench/peers.sh then served 45 of 730 requests and the fleet kept
    /// 65 % of prompts cached instead of 73-74 %.
    #[test]
    fn a_slow_home_keeps_its_conversation_while_its_requests_are_within_the_thresholds() {
        use std::time::Duration;
        let ns = nodes(2);
        let p = PrefixAware::new(&BalanceOptions {
            balance_abs_threshold: 4.0,
            balance_rel_threshold: 1.5,
            ..BalanceOptions::default()
        });
        let history = "a conversation so far ".repeat(80);
        let home = pick(&p, &ns, &req(&history));
        let other = 1 - home;
        ns[home].load.ai.observe_tpot(Duration::from_millis(30));
        ns[other].load.ai.observe_tpot(Duration::from_millis(10));
        let _g = hold(&ns, home, 3);
        let turn = req(&format!("{history}{}", "next question ".repeat(10)));
        assert_eq!(pick(&p, &ns, &turn), home);
        let doc = req(&format!("{history}{}", "pasted document text ".repeat(400)));
        assert_eq!(pick(&p, &ns, &doc), home);
        // Its requests still count: two more and it is over both thresholds.
        let _h = hold(&ns, home, 2);
        assert_eq!(pick(&p, &ns, &turn), other);
    }

    /// Two nodes hold a shared system prompt and are equally loaded: new
    /// sessions of that prompt all go to one of them (the same one for
    /// every session), not in turn to both, which would keep the prompt in
    /// both caches; once that node is loaded beyond the bound, the other
    /// takes them.
    #[test]
    fn sessions_of_a_shared_prompt_gather_on_one_holder_while_the_load_allows() {
        let ns = nodes(3);
        let p = PrefixAware::new(&BalanceOptions::default());
        let sys = "You are the support agent of a large shop. ".repeat(40);
        let session = |s: usize| req(&format!("{sys}user {s}: question"));
        // Both node 0 and node 1 have served the prompt.
        p.index().record(&session(1000).prefix, 0);
        p.index().record(&session(1001).prefix, 1);
        let _busy = hold(&ns, 2, 4);
        let picks: Vec<usize> = (0..8).map(|s| pick(&p, &ns, &session(s))).collect();
        assert!(picks.iter().all(|&i| i == picks[0] && i < 2), "{picks:?}");
        // The chosen holder runs two more than the other: the other one.
        let home = picks[0];
        let _held = hold(&ns, home, 2);
        assert_eq!(pick(&p, &ns, &session(99)), 1 - home);
    }

    /// The only prompt in use spreads as its holder queues more prefill
    /// than the prompt saves, though nobody waits in an engine queue and
    /// the loads are far within the balance thresholds (on
    /// bench/peers.sh's hot prompt a fast node got no request); one of 8
    /// prompts in use keeps its home, since a copy would evict the other
    /// prompts' conversations from another cache.
    #[test]
    fn a_hot_prompt_spreads_as_its_holder_queues_prefill_one_of_many_stays() {
        let sys = |k: usize| format!("system {k} {}", "x".repeat(BLOCK_BYTES * 20));
        let session = |k: usize, s: usize| {
            let mut r = req(&format!("{} user {s}: question", sys(k)));
            r.stream = true;
            r
        };
        // (prompts in use, whether one-off prompts come between the
        // sessions): the hot prompt spreads also with one-off prompts
        // beside it (a third of the requests), one of 8 stays.
        for (prompts, one_offs) in [(1, false), (1, true), (8, false)] {
            let ns = nodes(4);
            let p = PrefixAware::new(&BalanceOptions::default());
            for s in 0..3 * MIN_REQUESTS as usize {
                let r = if one_offs && s % 3 == 0 {
                    session(1_000 + s, 0)
                } else {
                    session(s % prompts, s)
                };
                pick(&p, &ns, &r);
            }
            let home = pick(&p, &ns, &session(0, 1));
            // 400 prompt tokens queued at the home: more than the 320 its
            // 20 blocks of the prompt save.
            let mut queued = session(0, 99);
            queued.prompt_tokens = 400;
            let _queued = ns[home].begin_request_for(&queued);
            let next = pick(&p, &ns, &session(0, 2));
            assert_eq!(
                next == home,
                prompts == 8,
                "{prompts} prompt(s) in use, one-offs {one_offs}"
            );
        }
    }

    /// Two holders of the same match: the one with less prefill queued
    /// right now takes the session, whichever rendezvous order prefers
    /// (moving among holders copies nothing into another cache).
    #[test]
    fn equal_matches_go_to_the_least_prefill_queued_now() {
        let ns = nodes(3);
        let p = PrefixAware::new(&BalanceOptions::default());
        let sys = format!("system {}", "x".repeat(BLOCK_BYTES * 20));
        let session = |s: usize| {
            let mut r = req(&format!("{sys} user {s}: question"));
            r.stream = true;
            r
        };
        for i in [0, 1] {
            p.index().record(&session(0).prefix, i);
        }
        for (busy, other) in [(0, 1), (1, 0)] {
            // The same load on both: a stream in prefill on one, a
            // request that does not stream on the other.
            let _queued = ns[busy].begin_request_for(&session(9));
            let mut plain = session(9);
            plain.stream = false;
            let _decoding = ns[other].begin_request_for(&plain);
            for s in 1..4 {
                assert_eq!(
                    pick(&p, &ns, &session(s)),
                    other,
                    "{busy} has prefill queued"
                );
            }
        }
    }

    #[test]
    fn shared_system_prompt_spreads_once_nodes_fill() {
        // Many sessions share one system prompt; with requests held in
        // flight, the thresholds spread them instead of piling on one node.
        let ns = nodes(4);
        let p = PrefixAware::new(&BalanceOptions::default());
        let sys = "You are a helpful assistant. ".repeat(60);
        let mut guards = Vec::new();
        let mut per = [0usize; 4];
        for s in 0..200 {
            let r = req(&format!("{sys}user {s}: question"));
            let i = pick(&p, &ns, &r);
            guards.push(ns[i].begin_request_for(&r));
            per[i] += 1;
        }
        let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
        assert!(*lo > 20 && hi - lo < 40, "{per:?}");
    }

    #[test]
    fn no_prefix_means_least_loaded_and_none_when_nothing_eligible() {
        let ns = nodes(3);
        let p = PrefixAware::new(&BalanceOptions::default());
        let _a = hold(&ns, 0, 2);
        let _b = hold(&ns, 2, 1);
        assert_eq!(p.pick(&ns, &|_| true, &PickContext::EMPTY), Some(1));
        assert_eq!(p.pick(&ns, &|_| false, &PickContext::EMPTY), None);
        assert_eq!(p.pick(&[], &|_| true, &PickContext::EMPTY), None);
    }

    #[test]
    fn saturated_nodes_are_avoided_while_others_remain() {
        use crate::fleet::capacity::Scraped;
        let ns = nodes(2);
        let p = PrefixAware::new(&BalanceOptions::default());
        let r = req(&"abc ".repeat(100));
        let home = pick(&p, &ns, &r);
        let cap = &ns[home].load.ai.capacity;
        cap.configure(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
            Some(2),
            None,
        );
        let full = Scraped {
            running: Some(32.0),
            waiting: Some(10.0),
            kv_usage: Some(0.99),
        };
        cap.record(&full, 0, now_ns());
        assert_eq!(pick(&p, &ns, &r), 1 - home);
        // Only the saturated node eligible: still served.
        let only = p.pick(
            &ns,
            &|i| i == home,
            &PickContext {
                request: Some(&r),
                headers: None,
            },
        );
        assert_eq!(only, Some(home));
    }

    #[test]
    fn large_pool_samples_candidates_but_keeps_the_prefix_holders() {
        // 1,024 nodes: a pick looks at 32 random nodes, not all of them,
        // yet a session still finds the node holding its prefix, in the
        // first 64 nodes or past them (node 900: 14th group of 64).
        for home in [40, 900] {
            fastrand::seed(9);
            let ns = nodes(1024);
            let p = PrefixAware::new(&BalanceOptions::default());
            let r = req(&"a long conversation ".repeat(40));
            let ctx = PickContext {
                request: Some(&r),
                headers: None,
            };
            // The first turn lands on `home` (the only eligible one).
            assert_eq!(p.pick(&ns, &|i| i == home, &ctx), Some(home));
            let calls = std::cell::Cell::new(0usize);
            let counting = |_: usize| {
                calls.set(calls.get() + 1);
                true
            };
            let _busy = hold(&ns, home, 2);
            for _ in 0..50 {
                calls.set(0);
                assert_eq!(p.pick(&ns, &counting, &ctx), Some(home));
                assert!(calls.get() <= crate::balance::sample::CANDIDATE_SAMPLES + 1);
            }
            // Overloaded: its affinity goes, to a sampled idle node.
            let _more = hold(&ns, home, 70);
            let other = p.pick(&ns, &|_| true, &ctx).unwrap();
            assert_ne!(other, home);
            assert_eq!(ns[other].outstanding(), 0);
            // New prefixes spread over the pool by load.
            let mut held = Vec::new();
            for s in 0..300 {
                let r = req(&format!("{s:04}{}", "y".repeat(BLOCK_BYTES * 4)));
                let i = pick(&p, &ns, &r);
                held.push(ns[i].begin_request_for(&r));
            }
            assert!(ns
                .iter()
                .enumerate()
                .all(|(i, n)| i == home || n.outstanding() <= 1));
        }
    }

    #[test]
    fn sessions_stick_to_nodes_past_the_first_64() {
        // A 100-node pool, scanned whole: 50 conversations, each started
        // on a node of its own from node 50 on; every next turn finds
        // its node, also while it has more requests than the others.
        let ns = nodes(100);
        let p = PrefixAware::new(&BalanceOptions::default());
        let turn = |s: usize, t: usize| {
            let start = format!("session {s:03} ").repeat(BLOCK_BYTES / 4);
            let turns: String = (0..=t)
                .map(|k| format!("turn {k} ").repeat(BLOCK_BYTES / 6))
                .collect();
            req(&format!("{start}{turns}"))
        };
        let mut held = Vec::new();
        for s in 0..50 {
            let home = 50 + s;
            let r = turn(s, 0);
            let ctx = PickContext {
                request: Some(&r),
                headers: None,
            };
            assert_eq!(p.pick(&ns, &|i| i == home, &ctx), Some(home));
            held.extend(hold(&ns, home, 1));
        }
        for s in 0..50 {
            assert_eq!(pick(&p, &ns, &turn(s, 1)), 50 + s, "session {s}");
        }
    }

    #[test]
    fn index_memory_at_100k_prefixes() {
        use xxhash_rust::xxh3::xxh3_64;
        // 100k distinct prompts of 8 blocks (128 tokens) each on 8 nodes,
        // into an index sized for them: report bytes per block held.
        let idx = PrefixIndex::new(1 << 20);
        for i in 0..100_000u64 {
            let chain: Vec<u64> = (0..8)
                .map(|k: u64| xxh3_64(&[i.to_le_bytes(), k.to_le_bytes()].concat()))
                .collect();
            idx.record(&chain, (i % 8) as usize);
        }
        let blocks = idx.len();
        let bytes = idx.memory_bytes();
        assert_eq!(blocks, 800_000);
        let per = bytes as f64 / blocks as f64;
        eprintln!("prefix index: {blocks} blocks, {bytes} bytes, {per:.1} B/block");
        assert!(per < 64.0, "{per}");
        // The default capacity bounds it whatever the traffic.
        let bounded = PrefixIndex::new(262_144);
        for i in 0..100_000u64 {
            let chain: Vec<u64> = (0..8)
                .map(|k: u64| xxh3_64(&[i.to_le_bytes(), k.to_le_bytes()].concat()))
                .collect();
            bounded.record(&chain, (i % 8) as usize);
        }
        eprintln!(
            "bounded (262144): {} blocks, {} bytes",
            bounded.len(),
            bounded.memory_bytes()
        );
        assert!(bounded.len() <= 262_144 + 32 * 16);
    }
}
