//! Where a prompt seen for the first time goes: to the node, among those
//! near the least load, that holds the fewest of the recently new prompts
//! per unit of weight.
//!
//! Once a shared system prompt has a home, its sessions follow it (their
//! prefix matches there), so where its *first* request lands decides a
//! whole share of the traffic for as long as the prompt is in use. Sent to
//! the least-loaded node of the moment, as before, the first requests of
//! bench/peers.sh's 8 system prompts landed 3, 2, 1 and 2 to a node (seed
//! 42, and the SGLang router's smallest-tree rule did the same): one node
//! then took 867k prompt tokens and another 313k, the crowded node's cache
//! kept 69 % against 83 %, and its TTFT was 134 ms against 55 ms
//! (docs/aware-balancing.md, "Where a prompt's first request goes").
//! Counting the prompts each node holds spreads them evenly from the start.
//!
//! A prompt is known by its anchor ([`super::rendezvous::anchor`]: the
//! chain value at `anchor_blocks`, inside a shared system prompt), and
//! counts for a node while the prefix index still says the node was sent
//! it, so prompts that fell out of use (evicted from the index) stop
//! counting. Only the last [`RECENT`] new anchors are kept: the count is
//! over them, which bounds the cost of a placement to that many index
//! lookups (a workload of unique prompts places every request this way).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::prefix_index::{BlockKey, PrefixIndex};

/// New anchors remembered (the newest ones).
pub const RECENT: usize = 16;

/// The recently new prompts of one route.
#[derive(Debug, Default)]
pub struct NewPrompts {
    recent: Mutex<VecDeque<BlockKey>>,
}

impl NewPrompts {
    /// Whether no node was sent the block `key` yet (per the index).
    pub fn is_new(index: &PrefixIndex, key: BlockKey) -> bool {
        !index.is_held(key)
    }

    /// The node for the new prompt `key` among `near` (node index, its
    /// load and its weight, in the order ties are to be taken): the fewest
    /// recent new prompts held per unit of weight, then the lowest load.
    /// Remembers `key` as placed. `None` for an empty `near`.
    pub fn place(
        &self,
        key: BlockKey,
        index: &PrefixIndex,
        near: &[(usize, f64, u32)],
    ) -> Option<usize> {
        // Recent new prompts each node up to the last in `near` holds.
        let span = near.iter().map(|&(i, _, _)| i + 1).max().unwrap_or(0);
        let mut held: smallvec::SmallVec<[u32; 128]> = smallvec::smallvec![0; span];
        // A poisoned lock only means a pick panicked mid-update; the
        // lowest load is still a correct answer.
        let mut recent = self.recent.lock().ok();
        if let Some(recent) = recent.as_deref_mut() {
            // Prompts no node holds any more leave the count.
            recent.retain(|&k| {
                let held_by_any = index.each_holder(k, |i| {
                    if let Some(count) = held.get_mut(i) {
                        *count += 1;
                    }
                });
                held_by_any && k != key
            });
        }
        let mut best: Option<(usize, f64, f64)> = None;
        for &(i, load, weight) in near {
            let c = f64::from(held.get(i).copied().unwrap_or(0)) / f64::from(weight.max(1));
            if best.is_none_or(|(_, bc, bl)| c < bc || (c == bc && load < bl)) {
                best = Some((i, c, load));
            }
        }
        let (choice, _, _) = best?;
        if let Some(recent) = recent.as_deref_mut() {
            if recent.len() >= RECENT {
                recent.pop_front();
            }
            recent.push_back(key);
        }
        Some(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of a one-block prompt.
    fn one(hash: u64) -> BlockKey {
        BlockKey::at(&[hash], 0).unwrap()
    }

    #[test]
    fn new_prompts_spread_by_count_then_load() {
        let index = PrefixIndex::new(1 << 16);
        let spread = NewPrompts::default();
        let near: Vec<(usize, f64, u32)> = (0..4).map(|i| (i, 0.0, 1)).collect();
        // Eight prompts over four idle nodes: two each, whatever the order.
        let mut per = [0; 4];
        for p in 0..8u64 {
            let key = 1000 + p;
            assert!(NewPrompts::is_new(&index, one(key)));
            let i = spread.place(one(key), &index, &near).unwrap();
            index.record(&[key], i);
            assert!(!NewPrompts::is_new(&index, one(key)));
            per[i] += 1;
        }
        assert_eq!(per, [2, 2, 2, 2]);
        // Equal counts: the lower load wins, not the first in order.
        let loaded = [(0, 3.0, 1), (1, 2.0, 1), (2, 0.5, 1), (3, 1.0, 1)];
        assert_eq!(spread.place(one(2000), &index, &loaded), Some(2));
    }

    #[test]
    fn a_heavier_node_takes_more_prompts() {
        let index = PrefixIndex::new(1 << 16);
        let spread = NewPrompts::default();
        let near = [(0, 0.0, 1), (1, 0.0, 2)];
        let mut per = [0; 2];
        for key in 0..6u64 {
            let i = spread.place(one(key), &index, &near).unwrap();
            index.record(&[key], i);
            per[i] += 1;
        }
        assert_eq!(per, [2, 4]);
    }

    #[test]
    fn prompts_the_index_forgot_stop_counting() {
        // An index of 32 blocks (one per shard): old prompts are evicted.
        let index = PrefixIndex::new(32);
        let spread = NewPrompts::default();
        let both = [(0, 0.0, 1), (1, 0.0, 1)];
        let first = spread.place(one(1), &index, &both).unwrap();
        index.record(&[1], first);
        // Node `first` holds one prompt: the next goes to the other.
        let second = spread.place(one(2), &index, &both).unwrap();
        assert_ne!(first, second);
        // Without recording the second, the first alone counts.
        assert_ne!(spread.place(one(3), &index, &both), Some(first));
        // Flood the index until prompt 1 is gone: it no longer counts.
        for k in 100..10_000u64 {
            index.record(&[k.wrapping_mul(0x9e37_79b9_7f4a_7c15)], 1 - first);
        }
        assert!(NewPrompts::is_new(&index, one(1)));
        let near_first_loaded = [(first, 0.0, 1), (1 - first, 0.1, 1)];
        assert_eq!(
            spread.place(one(4), &index, &near_first_loaded),
            Some(first)
        );
    }

    #[test]
    fn nodes_past_the_first_64_count_their_prompts() {
        // Before node groups, counts were 0 past node 63: the lower load
        // took every new prompt.
        let index = PrefixIndex::new(1 << 16);
        let spread = NewPrompts::default();
        let far = [(100, 0.5, 1), (1000, 0.0, 1)];
        let mut per = [0; 2];
        for k in 0..6u64 {
            let i = spread.place(one(k), &index, &far).unwrap();
            index.record(&[k], i);
            per[usize::from(i == 1000)] += 1;
        }
        assert_eq!(per, [3, 3]);
        // Placed again, a prompt is not listed twice.
        spread.place(one(3), &index, &far);
        assert_eq!(spread.recent.lock().unwrap().len(), 6);
    }

    #[test]
    fn only_the_newest_prompts_are_kept() {
        let index = PrefixIndex::new(1 << 16);
        let spread = NewPrompts::default();
        for k in 0..(RECENT as u64 * 3) {
            let i = spread
                .place(one(k), &index, &[(0, 0.0, 1), (1, 0.0, 1)])
                .unwrap();
            index.record(&[k], i);
        }
        assert_eq!(spread.recent.lock().unwrap().len(), RECENT);
    }
}
