//! Placement that gateway replicas agree on without talking to each other:
//! rendezvous (highest random weight) hashing of a request's prefix over
//! the candidate nodes, skipping nodes over the load bound.
//!
//! Several replicas behind a round-robin Service each see a third of the
//! traffic, so each one's own prefix index learns a different third and
//! their choices drift apart: the same conversation lands on different
//! nodes and the nodes' prefix caches miss. A pure function of the prompt
//! and the node names gives every replica the same answer: the prompt's
//! *anchor* (the block-hash chain's value after `anchor_blocks` blocks, or
//! its last block when shorter — the shared system prompt and the start of
//! a conversation, which later turns repeat) is scored against each node
//! name (weighted rendezvous: `-weight / ln(u)`, `u` uniform from a hash),
//! and the best-scored node that is not overloaded wins. A node's
//! neighbours in that order are the same everywhere too, so the requests a
//! loaded node sheds also land on one agreed node. Node names must be the
//! same on every replica (the same config, or discovered pod names).
//!
//! Load stays each replica's own view (its in-flight requests and tokens,
//! plus the nodes' scraped queue depth, which all replicas read alike).

use std::sync::Arc;

use crate::fleet::Node;

/// The key of a prompt's placement: the chain value at `anchor_blocks`
/// (or the last one of a shorter chain); `None` without a prefix.
pub fn anchor(chain: &[u64], anchor_blocks: usize) -> Option<u64> {
    anchor_depth(chain, anchor_blocks)
        .and_then(|d| chain.get(d - 1))
        .copied()
}

/// How many blocks of `chain` its [`anchor`] covers (`None`: no chain).
pub fn anchor_depth(chain: &[u64], anchor_blocks: usize) -> Option<usize> {
    Some(chain.len().min(anchor_blocks.max(1))).filter(|&d| d > 0)
}

/// Weighted rendezvous score of `node` for `key` (higher wins).
fn score(key: u64, node: &Node) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(node.name.as_bytes(), key);
    // u in (0, 1): never 0, so ln(u) is finite and negative.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(node.weight.max(1)) / u.ln()
}

/// The first of `cands` (indexes into `nodes`) in rendezvous order for
/// `key`, the agreed home: the highest score, ties to the lower index,
/// without ranking the rest.
pub fn first(
    key: u64,
    nodes: &[Arc<Node>],
    cands: impl IntoIterator<Item = usize>,
) -> Option<usize> {
    cands
        .into_iter()
        .filter_map(|i| nodes.get(i).map(|n| (score(key, n), i)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, i)| i)
}

/// Among `cands` (indexes into `nodes`), those `allowed` in rendezvous
/// order for `key`: the whole ranking, which the tests read to check who
/// comes after the home; the data path needs only [`first`].
#[cfg(test)]
pub fn order(
    key: u64,
    nodes: &[Arc<Node>],
    cands: &[usize],
    allowed: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut ranked: Vec<(f64, usize)> = cands
        .iter()
        .copied()
        .filter(|&i| allowed(i))
        .filter_map(|i| nodes.get(i).map(|n| (score(key, n), i)))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// The bound of consistent hashing with bounded loads over `loads`: a
/// node keeps its keys while its load is below it, which the least-loaded
/// node always is.
pub fn load_bound(loads: &[f64], factor: f64) -> f64 {
    let total: f64 = loads.iter().sum();
    (factor * (total + 1.0) / loads.len().max(1) as f64)
        .ceil()
        .max(1.0)
}

/// The agreed node for the prompt `chain` among `cands` (indexes into
/// `nodes`; `loads[k]` is the load of `cands[k]`): the first in rendezvous
/// order within the bound of consistent hashing with bounded loads
/// (Mirrokni et al.; Envoy's and HAProxy's `hash-balance-factor`): load
/// below `ceil(factor × (total + 1) / n)`, which the least-loaded
/// candidate always is (`factor`: `anchor_load_factor`). `None` without a
/// prefix.
pub fn place(
    chain: &[u64],
    anchor_blocks: usize,
    nodes: &[Arc<Node>],
    cands: &[usize],
    loads: &[f64],
    factor: f64,
) -> Option<usize> {
    let key = anchor(chain, anchor_blocks)?;
    let bound = load_bound(loads, factor);
    let within = cands
        .iter()
        .zip(loads)
        .filter(|&(_, &load)| load < bound)
        .map(|(&i, _)| i);
    first(key, nodes, within)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{nodes, weighted_nodes};

    #[test]
    fn anchor_is_stable_once_the_prompt_is_long_enough() {
        assert_eq!(anchor(&[], 4), None);
        assert_eq!(anchor(&[1, 2], 4), Some(2));
        assert_eq!(anchor(&[1, 2, 3, 4], 4), Some(4));
        assert_eq!(
            anchor(&[1, 2, 3, 4, 5, 6], 4),
            Some(4),
            "later turns keep the key"
        );
    }

    #[test]
    fn the_first_is_the_head_of_the_whole_order() {
        let ns = weighted_nodes(&[1, 2, 1, 3, 1]);
        let all: Vec<usize> = (0..ns.len()).collect();
        for key in 0..500u64 {
            let ranked = order(key, &ns, &all, |i| i != 3);
            let others = all.iter().copied().filter(|&i| i != 3);
            assert_eq!(first(key, &ns, others), ranked.first().copied());
        }
        assert_eq!(first(7, &ns, []), None);
    }

    #[test]
    fn every_replica_agrees_and_keys_spread_by_weight() {
        let a = weighted_nodes(&[1, 1, 2]);
        // Another replica: the same names and weights, fresh objects.
        let b = weighted_nodes(&[1, 1, 2]);
        let all = [0, 1, 2];
        let mut homes = [0usize; 3];
        for key in 0..30_000u64 {
            let home = order(key, &a, &all, |_| true)[0];
            assert_eq!(home, order(key, &b, &all, |_| true)[0]);
            homes[home] += 1;
        }
        let share = |i: usize| homes[i] as f64 / 30_000.0;
        assert!((share(2) - 0.5).abs() < 0.02, "{homes:?}");
        assert!((share(0) - 0.25).abs() < 0.02, "{homes:?}");
    }

    /// Conversations whose first turn one replica placed and whose second
    /// turn another replica places: the same node with `rendezvous`; with
    /// each replica's own index, the second replica knows nothing.
    fn second_turns_on_the_first_turns_node(placement: &str) -> usize {
        use crate::balance::testing::chat_request;
        use crate::balance::{build, PickContext};
        let opts = crate::config::BalanceOptions {
            placement: placement.into(),
            ..Default::default()
        };
        let (a_nodes, b_nodes) = (nodes(4), nodes(4));
        let a = build("prefix_aware", &a_nodes, &opts).unwrap();
        let b = build("prefix_aware", &b_nodes, &opts).unwrap();
        let pick = |p: &dyn crate::balance::Policy, ns: &[Arc<Node>], text: &str| {
            let r = chat_request(text);
            let ctx = PickContext {
                request: Some(&r),
                headers: None,
            };
            p.pick(ns, &|_| true, &ctx).unwrap()
        };
        (0..40)
            .filter(|c| {
                let first = format!("system prompt {c} {}", "x".repeat(1200));
                let second = format!("{first} assistant answer; user: and then?");
                let home = pick(&*a, &a_nodes, &first);
                // The second replica serves other clients in between.
                pick(
                    &*b,
                    &b_nodes,
                    &format!("another client {c} {}", "y".repeat(1200)),
                );
                home == pick(&*b, &b_nodes, &second)
            })
            .count()
    }

    #[test]
    fn replicas_agree_on_each_conversations_node() {
        assert_eq!(second_turns_on_the_first_turns_node("rendezvous"), 40);
        assert!(second_turns_on_the_first_turns_node("index") < 30);
    }

    /// A replica sees its own requests in flight only, a handful at a
    /// time: a home running one of them still takes the prompt's next
    /// turn with the default `anchor_load_factor` (at 1.25 the bound was
    /// 1 and the turn moved, which cost 7 points of fleet hit rate).
    #[test]
    fn a_home_running_one_request_keeps_its_prompts() {
        use crate::balance::testing::chat_request;
        use crate::balance::{build, PickContext};
        let ns = nodes(4);
        let opts = crate::config::BalanceOptions {
            placement: "rendezvous".into(),
            ..Default::default()
        };
        let policy = build("prefix_aware", &ns, &opts).unwrap();
        let first = chat_request(&format!("system prompt {}", "x".repeat(1200)));
        let ctx = PickContext {
            request: Some(&first),
            headers: None,
        };
        let home = policy.pick(&ns, &|_| true, &ctx).unwrap();
        let _running = ns[home].begin_request_for(&first);
        assert_eq!(policy.pick(&ns, &|_| true, &ctx), Some(home));
    }

    #[test]
    fn a_loaded_home_passes_its_keys_to_the_next_in_order() {
        let ns = nodes(4);
        let all = [0, 1, 2, 3];
        let chain = [11, 22, 33];
        let idle = [0.0; 4];
        let home = place(&chain, 16, &ns, &all, &idle, 1.25).unwrap();
        assert_eq!(home, order(33, &ns, &all, |_| true)[0]);
        let mut loads = [1.0; 4];
        loads[home] = 4.0; // bound: ceil(1.25 x 8 / 4) = 3
        let next = place(&chain, 16, &ns, &all, &loads, 1.25).unwrap();
        assert_eq!(next, order(33, &ns, &all, |_| true)[1]);
        assert_eq!(place(&[], 16, &ns, &all, &idle, 1.25), None);
    }

    #[test]
    fn a_skipped_node_moves_only_its_own_keys() {
        let ns = nodes(4);
        let all = [0, 1, 2, 3];
        for key in 0..2_000u64 {
            let full = order(key, &ns, &all, |_| true);
            let without = order(key, &ns, &all, |i| i != 1);
            if full[0] != 1 {
                assert_eq!(without[0], full[0], "keys of other nodes stay");
            } else {
                assert_eq!(without[0], full[1], "the next in order takes them");
            }
        }
    }
}
