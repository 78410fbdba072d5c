//! Paged KV cache with automatic prefix caching, as in vLLM.
//!
//! Blocks hold [`TOKENS_PER_BLOCK`] tokens. A full prompt block, once
//! computed, is registered under its chained prefix hash; later requests
//! whose prompts start with the same blocks reuse them (reference count).
//! A block whose reference count drops to zero keeps its content and hash and
//! becomes *evictable*; evictable blocks are reused least recently freed
//! first, and a referenced block is never evicted.

use std::collections::{BTreeMap, HashMap};

use crate::classify::prefix::TOKENS_PER_BLOCK;
use crate::kvindex::wire::KvEvent;

pub(crate) type BlockId = u32;

/// Blocks needed to hold `tokens` tokens.
pub(crate) fn blocks_for(tokens: u32) -> usize {
    (tokens as usize).div_ceil(TOKENS_PER_BLOCK)
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    hash: Option<u64>,
    lru: u64,
}

#[derive(Debug)]
pub(crate) struct BlockPool {
    blocks: Vec<Block>,
    /// Unreferenced blocks without cached content.
    free: Vec<BlockId>,
    /// Content hash -> the block holding it.
    cached: HashMap<u64, BlockId>,
    /// Unreferenced cached blocks by the tick they were freed (LRU first).
    evictable: BTreeMap<u64, BlockId>,
    tick: u64,
    caching: bool,
    /// KV events since the last [`BlockPool::take_events`], when published.
    events: Option<Vec<KvEvent>>,
}

impl BlockPool {
    pub fn new(n: usize, caching: bool) -> Self {
        let n = n.min(u32::MAX as usize);
        BlockPool {
            blocks: vec![Block::default(); n],
            free: (0..n as BlockId).rev().collect(),
            cached: HashMap::new(),
            evictable: BTreeMap::new(),
            tick: 0,
            caching,
            events: None,
        }
    }

    /// Record KV events (vLLM `--kv-events-config`).
    pub fn enable_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Share of blocks in use (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            0.0
        } else {
            self.used() as f64 / self.total() as f64
        }
    }

    /// Blocks holding cached prefix content (referenced or evictable).
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Content hashes of the cached blocks.
    pub fn cached_hashes(&self) -> Vec<u64> {
        self.cached.keys().copied().collect()
    }

    /// Whether a block with this content hash is resident.
    #[cfg(test)]
    pub fn contains(&self, hash: u64) -> bool {
        self.cached.contains_key(&hash)
    }

    /// Length of the longest leading run of `hashes` that is cached.
    pub fn longest_prefix(&self, hashes: &[u64]) -> usize {
        if !self.caching {
            return 0;
        }
        hashes
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// Allocate `need` blocks for a new sequence whose full prompt blocks
    /// hash to `hashes`, reusing its longest cached prefix, and only if at
    /// least `reserve` blocks stay available afterwards. Returns the blocks
    /// and how many leading ones were cache hits.
    pub fn try_allocate(
        &mut self,
        hashes: &[u64],
        need: usize,
        reserve: usize,
    ) -> Option<(Vec<BlockId>, usize)> {
        let hits = self.longest_prefix(hashes).min(need);
        let hits_evictable = hashes[..hits]
            .iter()
            .filter(|h| self.blocks[self.cached[*h] as usize].refs == 0)
            .count();
        let available = self.available() - hits_evictable;
        if available < (need - hits) + reserve {
            return None;
        }
        let mut out = Vec::with_capacity(need);
        for h in &hashes[..hits] {
            let id = self.cached[h];
            let b = &mut self.blocks[id as usize];
            if b.refs == 0 {
                self.evictable.remove(&b.lru);
            }
            b.refs += 1;
            out.push(id);
        }
        for _ in hits..need {
            out.push(self.take().expect("availability checked"));
        }
        Some((out, hits))
    }

    /// One more block for a growing sequence, evicting the LRU cached block
    /// if no free one is left.
    pub fn append(&mut self) -> Option<BlockId> {
        self.take()
    }

    fn take(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                if let Some(h) = self.blocks[id as usize].hash.take() {
                    self.cached.remove(&h);
                    if let Some(events) = &mut self.events {
                        match events.last_mut() {
                            Some(KvEvent::Removed { block_hashes, .. }) => block_hashes.push(h),
                            _ => events.push(KvEvent::Removed {
                                block_hashes: vec![h],
                                medium: Some("GPU".into()),
                            }),
                        }
                    }
                }
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    /// Register computed full prompt blocks under their content hashes.
    /// `blocks[i]` holds the block hashed `hashes[i]`.
    #[cfg(test)]
    pub fn commit(&mut self, blocks: &[BlockId], hashes: &[u64]) {
        self.commit_tokens(blocks, hashes, None, &[]);
    }

    /// Register computed full prompt blocks under their content hashes
    /// (`blocks[i]` holds the block hashed `hashes[i]`), recording a
    /// `BlockStored` event (when events are on) per run of newly cached
    /// blocks: `parent` is the hash of the block before `hashes[0]`,
    /// `tokens` the token ids of these blocks.
    pub fn commit_tokens(
        &mut self,
        blocks: &[BlockId],
        hashes: &[u64],
        parent: Option<u64>,
        tokens: &[u32],
    ) {
        if !self.caching {
            return;
        }
        let mut run: Option<usize> = None;
        for (i, (&id, &h)) in blocks.iter().zip(hashes).enumerate() {
            let b = &mut self.blocks[id as usize];
            if b.hash.is_some() || self.cached.contains_key(&h) {
                if let Some(start) = run.take() {
                    self.stored(hashes, start..i, parent, tokens);
                }
                continue;
            }
            b.hash = Some(h);
            self.cached.insert(h, id);
            run.get_or_insert(i);
        }
        if let Some(start) = run {
            self.stored(
                hashes,
                start..hashes.len().min(blocks.len()),
                parent,
                tokens,
            );
        }
    }

    fn stored(
        &mut self,
        hashes: &[u64],
        run: std::ops::Range<usize>,
        parent: Option<u64>,
        tokens: &[u32],
    ) {
        let Some(events) = &mut self.events else {
            return;
        };
        let bs = TOKENS_PER_BLOCK;
        let Some(token_ids) = tokens.get(run.start * bs..run.end * bs) else {
            return;
        };
        events.push(KvEvent::Stored {
            block_hashes: hashes[run.clone()].to_vec(),
            parent: if run.start == 0 {
                parent
            } else {
                Some(hashes[run.start - 1])
            },
            token_ids: token_ids.to_vec(),
            block_size: bs as u32,
            lora_name: None,
            medium: Some("GPU".into()),
            extra: Vec::new(),
        });
    }

    /// Release a sequence's blocks. Cached ones become evictable, the tail
    /// of the sequence first (as vLLM frees in reverse order), so a shared
    /// leading prefix outlives the sequence's unique suffix.
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &id in blocks.iter().rev() {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.refs > 0);
            b.refs -= 1;
            if b.refs == 0 {
                if b.hash.is_some() {
                    self.tick += 1;
                    b.lru = self.tick;
                    self.evictable.insert(self.tick, id);
                } else {
                    self.free.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hits_share_blocks() {
        let mut p = BlockPool::new(16, true);
        let (a, hits) = p.try_allocate(&[1, 2, 3], 4, 0).unwrap();
        assert_eq!(hits, 0);
        p.commit(&a, &[1, 2, 3]);
        let (b, hits) = p.try_allocate(&[1, 2, 9], 4, 0).unwrap();
        assert_eq!(hits, 2);
        assert_eq!(a[..2], b[..2]);
        assert_eq!(p.used(), 4 + 2);
        p.free(&a);
        p.free(&b);
        assert_eq!(p.used(), 0);
        assert_eq!(p.cached_blocks(), 3);
    }

    #[test]
    fn lru_evicts_oldest_unreferenced_never_referenced() {
        // 4 blocks. Sequence A caches hashes 10,11; B caches 20,21.
        let mut p = BlockPool::new(4, true);
        let (a, _) = p.try_allocate(&[10, 11], 2, 0).unwrap();
        p.commit(&a, &[10, 11]);
        let (b, _) = p.try_allocate(&[20, 21], 2, 0).unwrap();
        p.commit(&b, &[20, 21]);
        p.free(&a); // A's blocks are now the least recently freed
        p.free(&b);
        // C reuses B's prefix (referenced again) and needs 2 fresh blocks:
        // they must come from A (oldest), not from B's referenced blocks.
        let (c, hits) = p.try_allocate(&[20, 21], 4, 0).unwrap();
        assert_eq!(hits, 2);
        assert!(!p.contains(10) && !p.contains(11));
        assert!(p.contains(20) && p.contains(21));
        assert_eq!(p.available(), 0);
        // Everything is referenced: nothing can be evicted.
        assert!(p.append().is_none());
        assert!(p.try_allocate(&[30], 1, 0).is_none());
        p.free(&c);
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn lru_order_is_by_free_time_tail_first() {
        let mut p = BlockPool::new(3, true);
        let (a, _) = p.try_allocate(&[1, 2, 3], 3, 0).unwrap();
        p.commit(&a, &[1, 2, 3]);
        p.free(&a);
        // One new block: the tail block (3) goes first, the shared head stays.
        let (_b, _) = p.try_allocate(&[7], 1, 0).unwrap();
        assert!(p.contains(1) && p.contains(2) && !p.contains(3));
    }

    #[test]
    fn events_record_new_runs_with_parents_and_evictions() {
        let mut p = BlockPool::new(3, true);
        p.enable_events();
        let tokens: Vec<u32> = (0..48).collect();
        let (a, _) = p.try_allocate(&[1, 2], 2, 0).unwrap();
        p.commit_tokens(&a, &[1, 2], None, &tokens[..32]);
        // A second sequence shares block 1 and adds block 3 after it.
        let (b, hits) = p.try_allocate(&[1, 3], 2, 0).unwrap();
        assert_eq!(hits, 1);
        p.commit_tokens(&b, &[1, 3], None, &tokens[..32]);
        let ev = p.take_events();
        assert_eq!(ev.len(), 2);
        match &ev[1] {
            KvEvent::Stored {
                block_hashes,
                parent,
                token_ids,
                ..
            } => {
                assert_eq!(block_hashes, &[3]);
                assert_eq!(*parent, Some(1));
                assert_eq!(token_ids, &tokens[16..32]);
            }
            e => panic!("{e:?}"),
        }
        p.free(&a);
        p.free(&b);
        // Reusing two blocks evicts the LRU cached ones: one Removed event.
        let _c = p.try_allocate(&[9], 2, 0).unwrap();
        let ev = p.take_events();
        assert!(
            matches!(&ev[..], [KvEvent::Removed { block_hashes, .. }] if block_hashes.len() == 2),
            "{ev:?}"
        );
    }

    #[test]
    fn reserve_and_disabled_caching() {
        let mut p = BlockPool::new(4, false);
        assert!(p.try_allocate(&[1], 4, 1).is_none());
        let (a, _) = p.try_allocate(&[1], 3, 1).unwrap();
        p.commit(&a, &[1]);
        p.free(&a);
        assert_eq!(p.cached_blocks(), 0);
        assert_eq!(p.longest_prefix(&[1]), 0);
    }
}
