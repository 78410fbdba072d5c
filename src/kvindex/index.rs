//! Which blocks each node's KV cache really holds, from its events.
//!
//! Per node: engine block hash → (gateway key, copies), so a `BlockRemoved`
//! (which names only engine hashes) finds the key, and a `BlockStored` finds
//! its parent's key to continue the chain (see [`super::chain`]). Shared:
//! gateway key → the nodes holding it, one bitset per group of 64 nodes
//! ([`crate::node_groups`]; all groups of a key in the key's shard), so a
//! lookup walks the prompt's keys once for all nodes.
//!
//! Memory: each node holds at most `max_blocks_per_node` blocks (about 40
//! bytes each in the node map plus its share of the key map); stores past
//! that are refused and counted (the index then under-reports, which only
//! costs hits). An engine's own cache is far smaller than the default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::chain::{block_key, root};
use super::wire::KvEvent;
use super::KvStats;
use crate::node_groups::{group_key, locate, Groups, MatchWalk};

const SHARDS: usize = 16;

type FastMap<V> = HashMap<u64, V, crate::idhash::BuildIdHasher>;

#[derive(Debug, Clone, Copy)]
struct Held {
    key: u64,
    copies: u32,
}

#[derive(Default)]
struct NodeBlocks {
    by_engine: FastMap<Held>,
}

/// The precise index of one pool's nodes.
pub struct KvIndex {
    block_size: usize,
    max_blocks_per_node: usize,
    shards: Box<[Mutex<FastMap<u64>>]>,
    nodes: Box<[Mutex<NodeBlocks>]>,
    live: Box<[AtomicBool]>,
    blocks: Box<[AtomicU64]>,
    /// Counters (events, gaps, lookups, hits).
    pub stats: KvStats,
}

impl std::fmt::Debug for KvIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvIndex")
            .field("nodes", &self.nodes.len())
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shard_of(key: u64) -> usize {
    (key >> 58) as usize & (SHARDS - 1)
}

impl KvIndex {
    /// An empty index for `nodes` nodes.
    pub fn new(nodes: usize, block_size: usize, max_blocks_per_node: usize) -> KvIndex {
        KvIndex {
            block_size: block_size.max(1),
            max_blocks_per_node,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            nodes: (0..nodes).map(|_| Mutex::default()).collect(),
            live: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
            blocks: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            stats: KvStats::default(),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Nodes tracked.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Blocks node `node` holds by its events.
    pub fn blocks_of(&self, node: usize) -> u64 {
        self.blocks
            .get(node)
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Whether node `node`'s event stream is connected and in sequence.
    pub fn is_live(&self, node: usize) -> bool {
        self.live
            .get(node)
            .is_some_and(|l| l.load(Ordering::Relaxed))
    }

    /// Whether some node's event stream is live.
    pub fn any_live(&self) -> bool {
        (0..self.live.len()).any(|i| self.is_live(i))
    }

    /// The nodes whose event streams are live, in order.
    pub fn live_nodes(&self) -> Vec<usize> {
        (0..self.live.len()).filter(|&i| self.is_live(i)).collect()
    }

    pub(crate) fn set_live(&self, node: usize, live: bool) {
        if let Some(l) = self.live.get(node) {
            l.store(live, Ordering::Relaxed);
        }
    }

    /// Whether node `node` holds the block with gateway key `key`.
    pub fn holds(&self, node: usize, key: u64) -> bool {
        let (g, bit) = locate(node);
        lock(&self.shards[shard_of(key)])
            .get(&group_key(key, g))
            .is_some_and(|bits| bits & bit != 0)
    }

    fn set_bit(&self, key: u64, node: usize, on: bool) {
        let (g, bit) = locate(node);
        let mut shard = lock(&self.shards[shard_of(key)]);
        let entry = group_key(key, g);
        if on {
            *shard.entry(entry).or_insert(0) |= bit;
        } else if let Some(bits) = shard.get_mut(&entry) {
            *bits &= !bit;
            if *bits == 0 {
                shard.remove(&entry);
            }
        }
    }

    /// Apply one event of node `node`.
    pub fn apply(&self, node: usize, event: &KvEvent) {
        let Some(slot) = self.nodes.get(node) else {
            return;
        };
        let s = &self.stats;
        match event {
            KvEvent::Stored {
                block_hashes,
                parent,
                token_ids,
                block_size,
                lora_name,
                medium,
                extra,
            } => {
                if medium
                    .as_deref()
                    .is_some_and(|m| !m.eq_ignore_ascii_case("gpu"))
                {
                    s.other_medium.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let bs = *block_size as usize;
                if bs != self.block_size {
                    s.block_size_mismatch.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if token_ids.len() < block_hashes.len() * bs {
                    s.malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut blocks = lock(slot);
                let mut prev = match parent {
                    None => root(lora_name.as_deref()),
                    Some(p) => match blocks.by_engine.get(p) {
                        Some(h) => h.key,
                        None => {
                            // Its parent was stored before we listened or
                            // in a batch we missed: no key can be made.
                            s.orphan_blocks
                                .fetch_add(block_hashes.len() as u64, Ordering::Relaxed);
                            return;
                        }
                    },
                };
                for (i, h) in block_hashes.iter().enumerate() {
                    let key = block_key(
                        prev,
                        &token_ids[i * bs..(i + 1) * bs],
                        extra.get(i).copied().flatten(),
                    );
                    prev = key;
                    if let Some(held) = blocks.by_engine.get_mut(h) {
                        held.copies = held.copies.saturating_add(1);
                        continue;
                    }
                    if blocks.by_engine.len() >= self.max_blocks_per_node {
                        s.over_capacity.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    blocks.by_engine.insert(*h, Held { key, copies: 1 });
                    self.set_bit(key, node, true);
                    s.stored_blocks.fetch_add(1, Ordering::Relaxed);
                }
                self.blocks[node].store(blocks.by_engine.len() as u64, Ordering::Relaxed);
            }
            KvEvent::Removed {
                block_hashes,
                medium,
            } => {
                if medium
                    .as_deref()
                    .is_some_and(|m| !m.eq_ignore_ascii_case("gpu"))
                {
                    return;
                }
                let mut blocks = lock(slot);
                for h in block_hashes {
                    let gone = match blocks.by_engine.get_mut(h) {
                        Some(held) if held.copies > 1 => {
                            held.copies -= 1;
                            None
                        }
                        Some(held) => Some(held.key),
                        None => {
                            s.unknown_removals.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    };
                    if let Some(key) = gone {
                        blocks.by_engine.remove(h);
                        self.set_bit(key, node, false);
                        s.removed_blocks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.blocks[node].store(blocks.by_engine.len() as u64, Ordering::Relaxed);
            }
            KvEvent::AllCleared => {
                s.cleared.fetch_add(1, Ordering::Relaxed);
                self.clear_node(node);
            }
        }
    }

    /// Forget everything node `node` holds (restart, lost events).
    pub fn clear_node(&self, node: usize) {
        let Some(slot) = self.nodes.get(node) else {
            return;
        };
        let old = std::mem::take(&mut *lock(slot));
        for held in old.by_engine.values() {
            self.set_bit(held.key, node, false);
        }
        self.blocks[node].store(0, Ordering::Relaxed);
    }

    /// For each node in `ask` holding at least the first block of `keys`,
    /// how many leading blocks it holds (`out[i]` for node `i`). As the
    /// approximate index's: nothing else is written, so `out` holds 0 for
    /// the asked nodes on entry; nodes past its end are skipped.
    pub fn match_lengths(&self, keys: &[u64], ask: &Groups, out: &mut [u32]) {
        let mut walk = MatchWalk::new(ask, out);
        for (k, key) in keys.iter().enumerate() {
            let shard = lock(&self.shards[shard_of(*key)]);
            let held = |g| shard.get(&group_key(*key, g)).copied().unwrap_or(0);
            if !walk.step(k, held) {
                return;
            }
        }
        walk.finish(keys.len());
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::prompt_keys;
    use super::*;

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: std::ops::Range<u32>) -> KvEvent {
        KvEvent::Stored {
            block_hashes: hashes.to_vec(),
            parent,
            token_ids: tokens.collect(),
            block_size: 4,
            lora_name: None,
            medium: None,
            extra: Vec::new(),
        }
    }

    #[test]
    fn stores_chain_by_tokens_and_removals_use_engine_hashes() {
        let idx = KvIndex::new(2, 4, 1000);
        // Node 0 caches 3 blocks in two events (the second continues the first).
        idx.apply(0, &stored(&[100, 101], None, 0..8));
        idx.apply(0, &stored(&[102], Some(101), 8..12));
        // Node 1 caches the first block only, under other engine hashes.
        idx.apply(1, &stored(&[900], None, 0..4));
        let tokens: Vec<u32> = (0..14).collect();
        let keys = prompt_keys(root(None), &tokens, 4, 64);
        assert_eq!(keys.len(), 3);
        let mut out = [0; 2];
        idx.match_lengths(&keys, &Groups::of(&[0, 1]), &mut out);
        assert_eq!(out, [3, 1]);
        let mut out = [0; 2];
        idx.match_lengths(&keys, &Groups::of(&[1]), &mut out);
        assert_eq!(out, [0, 1]);
        // Evicting node 0's middle block cuts its run at 1.
        idx.apply(
            0,
            &KvEvent::Removed {
                block_hashes: vec![101],
                medium: None,
            },
        );
        let mut out = [0; 2];
        idx.match_lengths(&keys, &Groups::of(&[0, 1]), &mut out);
        assert_eq!(out, [1, 1]);
        assert_eq!(idx.blocks_of(0), 2);
        idx.apply(1, &KvEvent::AllCleared);
        let mut out = [0; 2];
        idx.match_lengths(&keys, &Groups::of(&[0, 1]), &mut out);
        assert_eq!(out, [1, 0]);
        assert_eq!(idx.blocks_of(1), 0);
    }

    #[test]
    fn nodes_past_the_first_64_are_indexed() {
        // Before node groups, nodes past 63 had no slot: their events
        // were dropped and they never matched.
        let idx = KvIndex::new(200, 4, 1000);
        idx.apply(150, &stored(&[7, 8], None, 0..8));
        idx.apply(3, &stored(&[9], None, 0..4));
        idx.apply(130, &stored(&[9], None, 0..4));
        let keys = prompt_keys(root(None), &(0..12).collect::<Vec<u32>>(), 4, 64);
        assert!(idx.holds(150, keys[1]) && !idx.holds(86, keys[1]));
        let mut out = vec![0; 200];
        idx.match_lengths(&keys, &Groups::of(&[3, 130, 150, 199]), &mut out);
        assert_eq!((out[3], out[130], out[150], out[199]), (1, 1, 2, 0));
        assert_eq!(idx.blocks_of(150), 2);
        idx.apply(150, &KvEvent::AllCleared);
        let mut out = vec![0; 200];
        idx.match_lengths(&keys, &Groups::of(&[150]), &mut out);
        assert_eq!(out[150], 0);
    }

    #[test]
    fn orphans_mismatches_and_capacity_are_counted_not_indexed() {
        let idx = KvIndex::new(1, 4, 2);
        idx.apply(0, &stored(&[5], Some(4), 0..4));
        assert_eq!(idx.stats.orphan_blocks.load(Ordering::Relaxed), 1);
        let mut wrong = stored(&[6], None, 0..8);
        if let KvEvent::Stored { block_size, .. } = &mut wrong {
            *block_size = 8;
        }
        idx.apply(0, &wrong);
        assert_eq!(idx.stats.block_size_mismatch.load(Ordering::Relaxed), 1);
        idx.apply(0, &stored(&[1, 2, 3], None, 0..12));
        assert_eq!(idx.blocks_of(0), 2);
        assert_eq!(idx.stats.over_capacity.load(Ordering::Relaxed), 1);
        // A second copy of a block survives one removal.
        idx.apply(0, &stored(&[1], None, 0..4));
        idx.apply(
            0,
            &KvEvent::Removed {
                block_hashes: vec![1],
                medium: Some("GPU".into()),
            },
        );
        assert_eq!(idx.blocks_of(0), 2);
        idx.clear_node(0);
        assert_eq!(idx.blocks_of(0), 0);
        let keys = prompt_keys(root(None), &(0..8).collect::<Vec<u32>>(), 4, 64);
        let mut out = [0; 1];
        idx.match_lengths(&keys, &Groups::of(&[0]), &mut out);
        assert_eq!(out[0], 0);
    }
}
