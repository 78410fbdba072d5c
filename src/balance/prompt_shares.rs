//! Each shared prompt's share of a route's recent requests: how many of
//! the pool's nodes the prompt's sessions may be spread over before its
//! copies cost the other prompts their cache.
//!
//! A prompt is known by its anchor ([`super::rendezvous::anchor`]: the
//! chain value at `anchor_blocks`, inside a shared system prompt), so a
//! conversation's later turns count for its system prompt. Counts decay
//! by request, not by time: each request weighs `2^(1/HALF_LIFE)` times
//! the one before (the weights are rescaled before they overflow), so a
//! share is over about the last [`HALF_LIFE`] requests whatever the rate.
//! At most [`MAX_TRACKED`] prompts are kept: when more arrive, the ones
//! under twice the average share are dropped (one-off prompts), which
//! bounds the memory and keeps the cost of a request O(1) amortized.
//!
//! Counted by requests rather than by the prompts in use (the rule this
//! replaced counted the recently new prompts still held): one-off
//! prompts beside a hot one no longer make its share look small, and
//! the first prompts of a run are not taken for the only ones in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::fleet::Node;

/// Requests after which a request's weight in the shares has halved.
pub const HALF_LIFE: f64 = 256.0;
/// Prompts tracked at most.
pub const MAX_TRACKED: usize = 256;
/// Requests counted before any share is given: until then every
/// prompt of the run is new, and a share of the first few requests says
/// nothing of the traffic to come.
pub const MIN_REQUESTS: u64 = 16;
/// Weights are rescaled to 1 past this, long before `f64` overflows.
const RESCALE_AT: f64 = 1e100;

/// The recent request counts of one route's shared prompts.
#[derive(Debug)]
pub struct PromptShares {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Keys are anchors, already hashes.
    counts: HashMap<u64, f64, crate::idhash::BuildIdHasher>,
    /// The sum of every request's weight (also of prompts dropped).
    total: f64,
    /// The weight of the next request.
    weight: f64,
    /// Each request's weight over the one before: `2^(1/HALF_LIFE)`.
    growth: f64,
    /// Requests counted (up to [`MIN_REQUESTS`]).
    requests: u64,
}

impl Default for PromptShares {
    fn default() -> Self {
        PromptShares {
            inner: Mutex::new(Inner {
                counts: HashMap::default(),
                total: 0.0,
                weight: 1.0,
                growth: 2f64.powf(HALF_LIFE.recip()),
                requests: 0,
            }),
        }
    }
}

impl PromptShares {
    /// Counts one request of the prompt `key`; its share of the recent
    /// requests after it, from 0 to 1, `None` until [`MIN_REQUESTS`] were
    /// counted.
    pub fn note(&self, key: u64) -> Option<f64> {
        // A poisoned lock only means a pick panicked mid-update; the
        // shares then stop moving, which only stops prompts spreading.
        let Ok(mut s) = self.inner.lock() else {
            return None;
        };
        s.weight *= s.growth;
        if s.weight > RESCALE_AT {
            let scale = s.weight.recip();
            s.counts.values_mut().for_each(|c| *c *= scale);
            s.total *= scale;
            s.weight = 1.0;
        }
        let w = s.weight;
        s.total += w;
        s.requests = (s.requests + 1).min(MIN_REQUESTS);
        let count = {
            let c = s.counts.entry(key).or_insert(0.0);
            *c += w;
            *c
        };
        if s.counts.len() > MAX_TRACKED {
            let floor = 2.0 * s.total / MAX_TRACKED as f64;
            s.counts.retain(|&k, c| *c >= floor || k == key);
        }
        (s.requests >= MIN_REQUESTS).then(|| count / s.total)
    }
}

/// How many of `nodes` candidates a prompt with this `share` of the recent
/// requests may be held by: its share of them, rounded, at least 1 (also
/// while the share is not known).
pub fn holders_allowed(share: Option<f64>, nodes: usize) -> usize {
    ((nodes as f64 * share.unwrap_or(0.0)).round() as usize).clamp(1, nodes.max(1))
}

/// The candidates that hold a prompt, counted once per pick for
/// [`widen`] and the prefill-queued rule (`prefix_aware`'s `may_copy`).
#[derive(Debug, Clone, Copy)]
pub struct Holders {
    /// Candidates holding at least one block of the prompt.
    pub count: usize,
    /// The least load among them (infinite when none).
    pub least_load: f64,
    /// Whether one of them has prefill queued by this gateway.
    pub prefill_queued: bool,
}

impl Holders {
    /// Of `cands` (node indices; `loads` by position), those `held` (blocks
    /// by node) says hold the prompt.
    pub fn of(nodes: &[Arc<Node>], cands: &[usize], loads: &[f64], held: &[u32]) -> Self {
        let mut h = Holders {
            count: 0,
            least_load: f64::INFINITY,
            prefill_queued: false,
        };
        for (k, &i) in cands.iter().enumerate() {
            if held.get(i).is_some_and(|&m| m > 0) {
                h.count += 1;
                h.least_load = h.least_load.min(loads[k]);
                h.prefill_queued |= nodes[i].load.ai.pending_prefill_tokens() > 0;
            }
        }
        h
    }
}

/// For a session's first request of a prompt with this `share`: while
/// fewer candidates (`cands`, node indices; `loads` by position) hold the
/// prompt (`holders`, from `held`: blocks by node) than its share allows, the least-loaded
/// candidates that do not hold it, up to the share and less loaded than
/// every holder (no copy while the holders are as idle), count as
/// matching as far as the holders
/// (`matched`, by node, after the yields). The next steps then choose
/// among them all by backlog, load and rendezvous order, so a hot prompt
/// gets its share of homes as soon as sessions start, instead of only when
/// every holder has more prefill queued than the prompt saves (which left
/// a fast node without a request for a whole run).
///
/// `session_start` says whether the request starts a conversation rather
/// than continuing one ([`PrefixIndex::leaves_a_shared_prefix`]): moving a
/// later turn would prefill its history again. It is asked only when
/// the prompt may gain a holder.
///
/// [`PrefixIndex::leaves_a_shared_prefix`]: super::prefix_index::PrefixIndex::leaves_a_shared_prefix
pub fn widen(
    share: Option<f64>,
    holders: &Holders,
    cands: &[usize],
    loads: &[f64],
    held: &[u32],
    matched: &mut [u32],
    session_start: impl FnOnce() -> bool,
) {
    let at = |a: &[u32], i: usize| a.get(i).copied().unwrap_or(0);
    let best = cands.iter().map(|&i| at(matched, i)).max().unwrap_or(0);
    let allowed = holders_allowed(share, cands.len());
    if best == 0 || holders.count >= allowed || !session_start() {
        return;
    }
    let mut others: Vec<usize> = (0..cands.len())
        .filter(|&k| at(held, cands[k]) == 0)
        .filter(|&k| loads[k] < holders.least_load)
        .collect();
    others.sort_by(|&a, &b| loads[a].total_cmp(&loads[b]));
    for &k in others.iter().take(allowed - holders.count) {
        if let Some(m) = matched.get_mut(cands[k]) {
            *m = best;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share of `key` without counting a request.
    fn peek(shares: &PromptShares, key: u64) -> Option<f64> {
        let s = shares.inner.lock().unwrap();
        (s.requests >= MIN_REQUESTS).then(|| s.counts.get(&key).map_or(0.0, |c| c / s.total))
    }

    #[test]
    fn no_share_before_enough_requests() {
        let shares = PromptShares::default();
        for _ in 1..MIN_REQUESTS {
            assert_eq!(shares.note(1), None);
        }
        assert_eq!(holders_allowed(None, 4), 1, "one home until known");
        assert_eq!(shares.note(1), Some(1.0));
        assert_eq!(holders_allowed(Some(1.0), 4), 4);
    }

    #[test]
    fn eight_even_prompts_keep_one_home_a_hot_one_takes_the_pool() {
        let shares = PromptShares::default();
        for r in 0..800u64 {
            shares.note(r % 8);
        }
        let s = peek(&shares, 3).unwrap();
        assert!((s - 0.125).abs() < 0.01, "{s}");
        assert_eq!(holders_allowed(Some(s), 4), 1);
        // One hot prompt with one-off prompts beside it (a third of the
        // requests): it may spread over 3 of 4 nodes, not 1.
        let shares = PromptShares::default();
        for r in 0..900u64 {
            shares.note(if r % 3 == 0 { 1_000 + r } else { 7 });
        }
        assert_eq!(holders_allowed(peek(&shares, 7), 4), 3);
        assert_eq!(holders_allowed(peek(&shares, 1_003), 4), 1);
    }

    #[test]
    fn shares_follow_the_recent_requests() {
        let shares = PromptShares::default();
        for _ in 0..1_000 {
            shares.note(1);
        }
        // Prompt 2 takes all traffic from now on: after 4 half-lives
        // prompt 1 keeps 1/16 of the weight.
        for _ in 0..(4.0 * HALF_LIFE) as usize {
            shares.note(2);
        }
        let (one, two) = (peek(&shares, 1).unwrap(), peek(&shares, 2).unwrap());
        assert!((one - 1.0 / 16.0).abs() < 0.01, "{one}");
        assert!((two - 15.0 / 16.0).abs() < 0.01, "{two}");
    }

    #[test]
    fn weights_rescale_instead_of_overflowing() {
        let shares = PromptShares::default();
        // 2^(n/256) passes 1e100 after about 85,000 requests.
        for r in 0..200_000u64 {
            shares.note(r % 2);
        }
        let s = peek(&shares, 0).unwrap();
        assert!((s - 0.5).abs() < 0.01, "{s}");
        let inner = shares.inner.lock().unwrap();
        assert!(inner.weight.is_finite() && inner.total.is_finite());
    }

    #[test]
    fn one_off_prompts_are_bounded_and_a_hot_one_stays() {
        let shares = PromptShares::default();
        for r in 0..20_000u64 {
            shares.note(if r % 2 == 0 { 7 } else { 1_000_000 + r });
            assert!(shares.inner.lock().unwrap().counts.len() <= MAX_TRACKED);
        }
        let s = peek(&shares, 7).unwrap();
        assert!((s - 0.5).abs() < 0.01, "{s}");
    }

    /// Node indices 0..4, the given loads, prompt held (20 blocks) where
    /// `held` says; the nodes matching as far as the best after widening.
    fn widened(share: f64, loads: [f64; 4], holders: &[usize], start: bool) -> Vec<usize> {
        let cands = [0, 1, 2, 3];
        let mut held = [0u32; 4];
        for &i in holders {
            held[i] = 20;
        }
        let mut matched = held;
        let holders = Holders::of(&crate::balance::testing::nodes(4), &cands, &loads, &held);
        widen(
            Some(share),
            &holders,
            &cands,
            &loads,
            &held,
            &mut matched,
            || start,
        );
        let best = *matched.iter().max().unwrap();
        (0..4).filter(|&i| matched[i] == best).collect()
    }

    #[test]
    fn a_hot_prompts_session_starts_widen_to_its_share() {
        let idle_two = [3.0, 2.0, 0.0, 0.5];
        // A hot prompt on two of four nodes: both others join.
        assert_eq!(widened(1.0, idle_two, &[0, 1], true), vec![0, 1, 2, 3]);
        // Also from a single holder (node 1 is less loaded than it).
        assert_eq!(widened(1.0, idle_two, &[0], true), vec![0, 1, 2, 3]);
        // Half the requests: two homes are its share already.
        assert_eq!(widened(0.5, idle_two, &[0, 1], true), vec![0, 1]);
        // Three quarters: one more home, the least loaded.
        assert_eq!(widened(0.75, idle_two, &[0, 1], true), vec![0, 1, 2]);
        // A later turn is not moved.
        assert_eq!(widened(1.0, idle_two, &[0, 1], false), vec![0, 1]);
        // Nodes busier than the least-loaded holder do not join.
        assert_eq!(
            widened(1.0, [1.0, 2.0, 0.5, 4.0], &[0, 1], true),
            vec![0, 1, 2]
        );
    }
}
