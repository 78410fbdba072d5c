//! Which nodes were recently sent which prompt prefixes: a bounded map from
//! prefix block hash to a node bitset, shared by the prefix-aware policies.
//!
//! Requests carry their prompt as a chain of block hashes (see
//! [`crate::classify::prefix`]): block `k`'s hash covers blocks `0..=k`, so
//! one flat map `block hash → nodes` answers "how many leading blocks of this
//! prompt did node `i` see" without a tree: node `i` matches the first `m`
//! blocks when each of them has bit `i` set. Nodes are tracked by index in
//! the pool (the first 64; later ones never match).
//!
//! Each block also counts the different next blocks recorded after it, so
//! [`PrefixIndex::leaves_a_shared_prefix`] tells a new conversation on a
//! shared system prompt (it leaves the prompt where others already went
//! different ways) from the next turn of one.
//!
//! # Memory and eviction
//!
//! Each entry is 8 (key) + 16 (value, padded) bytes plus hashbrown's control
//! byte, in a table kept between 7/16 and 7/8 full: about 30–60 bytes per
//! distinct block. The map holds at most `capacity` blocks; when a shard
//! grows past its share, the least recently used quarter of it is dropped
//! (one O(shard) pass per `capacity/4/shards` inserts, so O(1) amortized).
//!
//! # Locking
//!
//! The map is split into [`SHARDS`] `Mutex`-protected shards. A chain is
//! stored in runs of [`RUN`] consecutive blocks, each run in the shard of
//! its first block's hash, so a lookup or a record takes one short lock
//! per run (a 60-block prompt: 4 locks, where one shard per block took
//! about 27 of the 32), never one lock over the whole chain; different
//! prompts' runs spread over the shards, so workers on different threads
//! rarely meet on one, and eviction stays even. A block is therefore
//! found by its [`BlockKey`]: its hash and its run's first hash.
//! A `Mutex` rather than an `RwLock` because every pick both reads and
//! writes the same entries (lookup, then record of the chosen node), and an
//! uncontended `Mutex` is the cheaper of the two for sections this short.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Number of shards (a power of two).
pub const SHARDS: usize = 32;
/// Nodes a bitset can hold.
pub const MAX_NODES: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    nodes: u64,
    used: u32,
    /// How many different next blocks were recorded after this one
    /// (saturating; it fills the entry's padding, so costs no memory).
    /// A block evicted and recorded again inside a chain counts its
    /// parent one more branch than it has; rare, and it only lets a
    /// hot prompt's later turn count as a session's start.
    branches: u32,
}

type Shard = HashMap<u64, Entry, crate::idhash::BuildIdHasher>;

/// The index of one route (see the module docs).
#[derive(Debug)]
pub struct PrefixIndex {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    clock: AtomicU32,
}

/// Consecutive blocks of a chain stored in one shard (a power of two).
pub const RUN: usize = 16;

/// Where one block of a chain is found: its hash, and the hash of the
/// first block of its run, which picks the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    run: u64,
    hash: u64,
}

impl BlockKey {
    /// Block `k` of `chain`, if the chain is that long.
    pub fn at(chain: &[u64], k: usize) -> Option<BlockKey> {
        Some(BlockKey {
            run: *chain.get(k & !(RUN - 1))?,
            hash: *chain.get(k)?,
        })
    }
}

/// What the index holds of a chain's leading part: the entries of its
/// first block and of the deepest block some node holds (the longest
/// match). One search answers both questions a pick asks of it.
#[derive(Debug, Clone, Copy)]
pub struct HeldPrefix {
    first: Entry,
    deepest: Entry,
}

impl HeldPrefix {
    /// A bounded set of nodes likely to match the chain best (bit `i`:
    /// node `i`), for policies that look at a sample of a large pool: up
    /// to `deepest` of the nodes holding the deepest block any node
    /// holds (the longest match), and up to `others` more of those
    /// holding its first block (a shorter match, for when the best are
    /// overloaded), each chosen from a random rotation.
    pub fn likely_holders(&self, deepest: u32, others: u32) -> u64 {
        let best = some_of(self.deepest.nodes, deepest);
        best | some_of(self.first.nodes & !best, others)
    }

    /// Whether the longest leading part of the chain that any node was
    /// sent ends where recorded chains already went two or more
    /// different ways: a new conversation on a shared prompt (each
    /// session's first message departs from the system prompt's end),
    /// not the next turn of one (which continues where its own last
    /// request ended, a point no other chain left).
    pub fn leaves_a_shared_prefix(&self) -> bool {
        self.deepest.branches >= 2
    }
}

#[inline]
fn shard_of(hash: u64) -> usize {
    // The top bits: hashbrown uses the low bits for the bucket and the top 7
    // for the control byte; taking bits 52.. keeps the shard choice apart.
    ((hash >> 52) as usize) & (SHARDS - 1)
}

impl PrefixIndex {
    /// An index holding at most about `capacity` blocks.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(16);
        PrefixIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            clock: AtomicU32::new(1),
        }
    }

    fn lock(&self, s: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[s].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For each node index `i < 64`, how many leading blocks of `chain` it
    /// was sent (`out[i]`), considering only nodes in `mask`.
    pub fn match_lengths(&self, chain: &[u64], mask: u64, out: &mut [u32; MAX_NODES]) {
        out.fill(0);
        if chain.is_empty() || mask == 0 {
            return;
        }
        let mut alive = mask;
        for (r, run) in chain.chunks(RUN).enumerate() {
            let shard = self.lock(shard_of(run[0]));
            for (j, hash) in run.iter().enumerate() {
                let next = alive & shard.get(hash).map_or(0, |e| e.nodes);
                let mut gone = alive & !next;
                while gone != 0 {
                    let i = gone.trailing_zeros() as usize;
                    out[i] = (r * RUN + j) as u32;
                    gone &= gone - 1;
                }
                alive = next;
                if alive == 0 {
                    return;
                }
            }
        }
        while alive != 0 {
            let i = alive.trailing_zeros() as usize;
            out[i] = chain.len() as u32;
            alive &= alive - 1;
        }
    }

    /// The nodes that were sent the block `key` (bit `i`: node `i`). For a
    /// chain's first block: every node that would match at least one block.
    pub fn holders(&self, key: BlockKey) -> u64 {
        self.entry(key).map_or(0, |e| e.nodes)
    }

    fn entry(&self, key: BlockKey) -> Option<Entry> {
        self.lock(shard_of(key.run)).get(&key.hash).copied()
    }

    /// The entry of the deepest block of `chain` that some node holds,
    /// given the first block's (`first`, held): holders only thin out
    /// along a chain, so a binary search, O(log blocks) shard lookups.
    fn deepest_held(&self, chain: &[u64], first: Entry) -> Entry {
        // Block `len - 1` has holders for `len = found`; find the longest
        // such `len`.
        let (mut found, mut hi, mut deepest) = (1usize, chain.len(), first);
        while found < hi {
            let mid = found + (hi - found).div_ceil(2);
            match BlockKey::at(chain, mid - 1)
                .and_then(|key| self.entry(key))
                .filter(|e| e.nodes != 0)
            {
                Some(e) => (found, deepest) = (mid, e),
                None => hi = mid - 1,
            }
        }
        deepest
    }

    /// What the index holds of `chain`'s leading part ([`HeldPrefix`]),
    /// `None` when no node was sent its first block. A binary search over
    /// the chain: O(log blocks) shard lookups.
    pub fn held_prefix(&self, chain: &[u64]) -> Option<HeldPrefix> {
        let first = self.first_held(chain)?;
        Some(HeldPrefix {
            first,
            deepest: self.deepest_held(chain, first),
        })
    }

    /// [`HeldPrefix::likely_holders`] of `chain` (0 when nothing is held).
    pub fn likely_holders(&self, chain: &[u64], deepest: u32, others: u32) -> u64 {
        self.held_prefix(chain)
            .map_or(0, |h| h.likely_holders(deepest, others))
    }

    /// The entry of `chain`'s first block, if some node holds it.
    fn first_held(&self, chain: &[u64]) -> Option<Entry> {
        self.entry(BlockKey::at(chain, 0)?).filter(|e| e.nodes != 0)
    }

    /// Remember that `node` was sent every block of `chain`.
    pub fn record(&self, chain: &[u64], node: usize) {
        if node >= MAX_NODES || chain.is_empty() {
            return;
        }
        let bit = 1u64 << node;
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        // Where the chain first goes where no recorded chain went.
        let mut first_new = chain.len();
        for (r, run) in chain.chunks(RUN).enumerate() {
            let mut shard = self.lock(shard_of(run[0]));
            for (j, &hash) in run.iter().enumerate() {
                let k = r * RUN + j;
                let e = shard.entry(hash).or_insert_with(|| {
                    first_new = first_new.min(k);
                    // New blocks are the chain's tail: each but the last
                    // goes on one way, to the next new block.
                    Entry {
                        nodes: 0,
                        used: now,
                        branches: u32::from(k + 1 < chain.len()),
                    }
                });
                e.nodes |= bit;
                e.used = now;
            }
            if shard.len() > self.per_shard {
                evict_oldest_quarter(&mut shard, self.clock.load(Ordering::Relaxed));
            }
        }
        // The block before the first new one now goes on one more way.
        let parent = (first_new < chain.len())
            .then(|| first_new.checked_sub(1))
            .flatten()
            .and_then(|k| BlockKey::at(chain, k));
        if let Some(parent) = parent {
            if let Some(e) = self.lock(shard_of(parent.run)).get_mut(&parent.hash) {
                e.branches = e.branches.saturating_add(1);
            }
        }
    }

    /// [`HeldPrefix::leaves_a_shared_prefix`] of `chain` (false when
    /// nothing is held).
    pub fn leaves_a_shared_prefix(&self, chain: &[u64]) -> bool {
        self.held_prefix(chain)
            .is_some_and(|h| h.leaves_a_shared_prefix())
    }

    /// A copy for a new node list: `new_position[i]` is where the node at
    /// index `i` now sits (`None`: removed). Blocks only removed nodes had
    /// are dropped. The old index stays as it was, for the requests still
    /// running on the old node list.
    pub fn remapped(&self, new_position: &[Option<usize>]) -> PrefixIndex {
        let copy = PrefixIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: self.per_shard,
            clock: AtomicU32::new(self.clock.load(Ordering::Relaxed)),
        };
        for s in 0..SHARDS {
            let old = self.lock(s);
            let mut new = Shard::with_capacity_and_hasher(old.len(), Default::default());
            for (&hash, entry) in old.iter() {
                let mut nodes = 0u64;
                let mut bits = entry.nodes;
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if let Some(Some(j)) = new_position.get(i) {
                        if *j < MAX_NODES {
                            nodes |= 1 << j;
                        }
                    }
                }
                if nodes != 0 {
                    new.insert(hash, Entry { nodes, ..*entry });
                }
            }
            *copy.lock(s) = new;
        }
        copy
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).len()).sum()
    }

    /// True when no block is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the tables: buckets × (entry + control byte), where
    /// hashbrown allocates a power of two of buckets at most 7/8 usable.
    pub fn memory_bytes(&self) -> usize {
        let per = std::mem::size_of::<(u64, Entry)>() + 1;
        let buckets = |cap: usize| match cap {
            0 => 0,
            1..=3 => 4,
            4..=7 => 8,
            c => (c * 8 / 7).next_power_of_two(),
        };
        (0..SHARDS)
            .map(|s| buckets(self.lock(s).capacity()) * per)
            .sum::<usize>()
            + SHARDS * std::mem::size_of::<Mutex<Shard>>()
    }
}

/// Up to `k` of the bits of `set`, taken in order from a random rotation.
fn some_of(set: u64, k: u32) -> u64 {
    if set.count_ones() <= k {
        return set;
    }
    let turn = fastrand::u32(..64);
    let mut rotated = set.rotate_right(turn);
    let mut out = 0u64;
    for _ in 0..k {
        let b = rotated.trailing_zeros();
        rotated &= rotated - 1;
        out |= 1u64 << ((b + turn) % 64);
    }
    out
}

/// Ages read to choose where a shard's eviction cuts.
const AGE_SAMPLE: usize = 256;

/// Drop the least recently used quarter of a shard, `now` being the
/// index's clock read under the shard's lock (so no entry of the shard is
/// newer). Ages count back from `now` with wrapping arithmetic: the clock
/// wraps after 2^32 records (five days at 10k requests/s), and comparing
/// the stamps themselves then took the newest entries for the oldest and
/// dropped them first. The cut is chosen from a sample of the ages:
/// reading every one walked the whole table (~400 KB per shard by
/// default, past the caches) once more than the removal itself does.
fn evict_oldest_quarter(shard: &mut Shard, now: u32) {
    let step = (shard.len() / AGE_SAMPLE).max(1);
    // The table's order is its hashes', unrelated to age: every
    // `step`-th entry is a fair sample (only those entries are read).
    let mut ages: Vec<u32> = shard
        .values()
        .step_by(step)
        .map(|e| now.wrapping_sub(e.used))
        .collect();
    let cut = ages.len() / 4;
    if cut == 0 {
        return;
    }
    let youngest_dropped = ages.len() - 1 - cut;
    let (_, &mut threshold, _) = ages.select_nth_unstable(youngest_dropped);
    // Keep entries younger than the threshold (ties at the threshold go
    // too, which can drop a little more than a quarter).
    shard.retain(|_, e| now.wrapping_sub(e.used) < threshold);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::prefix::{block_hashes, seed_for_model, BLOCK_BYTES};

    fn chain(text: &str) -> Vec<u64> {
        block_hashes(seed_for_model("m"), text.as_bytes(), 256)
    }

    #[test]
    fn a_new_conversation_leaves_a_shared_prefix_a_next_turn_does_not() {
        let index = PrefixIndex::new(1 << 16);
        let sys = "s".repeat(BLOCK_BYTES * 8);
        let first = |u: usize| format!("{sys}user {u}: {}", "q".repeat(BLOCK_BYTES * 2));
        let second = |u: usize| {
            format!(
                "{}assistant: a\nuser: more {}",
                first(u),
                "r".repeat(BLOCK_BYTES)
            )
        };
        index.record(&chain(&first(1)), 0);
        // One conversation so far: the prompt's end was left one way only.
        assert!(!index.leaves_a_shared_prefix(&chain(&first(2))));
        index.record(&chain(&first(2)), 1);
        // Two sessions went different ways after the system prompt.
        assert!(index.leaves_a_shared_prefix(&chain(&first(3))));
        // A later turn continues where its own first turn ended.
        assert!(!index.leaves_a_shared_prefix(&chain(&second(1))));
        index.record(&chain(&second(1)), 0);
        // ... also the turn after it, and recording a chain again (on
        // another node) adds no branch.
        for node in [2, 3, 0] {
            index.record(&chain(&second(1)), node);
        }
        let third = format!(
            "{}assistant: b\nuser: again {}",
            second(1),
            "t".repeat(BLOCK_BYTES)
        );
        assert!(!index.leaves_a_shared_prefix(&chain(&third)));
        // Nothing seen: no shared prefix.
        assert!(!index.leaves_a_shared_prefix(&chain(&"z".repeat(BLOCK_BYTES * 4))));
    }

    #[test]
    fn a_chain_takes_one_shard_per_run_of_blocks() {
        // A pick locks one shard per run it reads or records: a 64-block
        // chain spread over the shards block by block took about 28 locks.
        let idx = PrefixIndex::new(1 << 16);
        let c = chain(&"x".repeat(BLOCK_BYTES * 64));
        assert_eq!(c.len(), 64);
        idx.record(&c, 3);
        let shards = (0..SHARDS).filter(|&s| !idx.lock(s).is_empty()).count();
        assert!(shards <= 64 / RUN, "{shards} shards");
        // Every block is found by its key, in its run's shard.
        for k in 0..c.len() {
            let key = BlockKey::at(&c, k).unwrap();
            assert_eq!(idx.holders(key), 1 << 3, "block {k}");
        }
        let mut out = [0; MAX_NODES];
        idx.match_lengths(&c, u64::MAX, &mut out);
        assert_eq!(out[3], 64);
    }

    #[test]
    fn likely_holders_are_the_longest_matches_and_a_few_others() {
        let idx = PrefixIndex::new(1 << 16);
        let sys = "s".repeat(BLOCK_BYTES * 4);
        let talk = chain(&format!("{sys}{}", "t".repeat(BLOCK_BYTES * 20)));
        // 40 nodes were sent the system prompt, node 50 the whole talk.
        for i in 0..40 {
            idx.record(&chain(&format!("{sys}{i:05}")), i);
        }
        idx.record(&talk, 50);
        let h = idx.likely_holders(&talk, 16, 8);
        assert!(h & (1 << 50) != 0, "{h:b}");
        assert_eq!(h.count_ones(), 9, "{h:b}");
        assert_eq!(h & !(((1 << 40) - 1) | (1 << 50)), 0, "{h:b}");
        // Many equally long matches: a bounded number of them.
        for i in 0..30 {
            idx.record(&talk, i);
        }
        let h = idx.likely_holders(&talk, 16, 8);
        assert!(
            (h & (((1 << 30) - 1) | (1 << 50))).count_ones() >= 16,
            "{h:b}"
        );
        assert_eq!(h.count_ones(), 16 + 8, "{h:b}");
        // Nothing known, or no chain: no hint.
        assert_eq!(
            idx.likely_holders(&chain(&"u".repeat(BLOCK_BYTES * 3)), 16, 8),
            0
        );
        assert_eq!(idx.likely_holders(&[], 16, 8), 0);
    }

    #[test]
    fn longest_match_per_node() {
        let idx = PrefixIndex::new(4096);
        let sys = "s".repeat(BLOCK_BYTES * 4);
        let a = chain(&format!("{sys}{}", "a".repeat(BLOCK_BYTES * 3)));
        let b = chain(&format!("{sys}{}", "b".repeat(BLOCK_BYTES * 2)));
        idx.record(&a, 0);
        idx.record(&b, 1);
        let mut out = [0; MAX_NODES];
        idx.match_lengths(&a, u64::MAX, &mut out);
        assert_eq!(&out[..3], &[7, 4, 0]);
        idx.match_lengths(&b, u64::MAX, &mut out);
        assert_eq!(&out[..3], &[4, 6, 0]);
        // Masked-out nodes never match.
        idx.match_lengths(&a, 0b10, &mut out);
        assert_eq!(&out[..2], &[0, 4]);
        // Unknown prompt.
        idx.match_lengths(&chain(&"z".repeat(500)), u64::MAX, &mut out);
        assert!(out.iter().all(|&m| m == 0));
    }

    #[test]
    fn capacity_bounds_memory_and_keeps_recent() {
        let idx = PrefixIndex::new(2048);
        let recent = chain(&"r".repeat(BLOCK_BYTES * 8));
        for i in 0..2000u32 {
            let c = chain(&format!("{i:08}{}", "x".repeat(BLOCK_BYTES * 4)));
            idx.record(&c, (i % 4) as usize);
            idx.record(&recent, 1);
        }
        assert!(idx.len() <= 2048 + SHARDS * 16, "{}", idx.len());
        let mut out = [0; MAX_NODES];
        idx.match_lengths(&recent, u64::MAX, &mut out);
        assert_eq!(out[1], 8);
    }

    #[test]
    fn eviction_after_the_clock_wraps_drops_the_oldest_not_the_newest() {
        let idx = PrefixIndex::new(2048);
        let filler = |i: u32| chain(&format!("{i:08}{}", "x".repeat(BLOCK_BYTES * 4)));
        // Filled up to the clock's wrap: every shard full of old entries.
        idx.clock.store(u32::MAX - 1995, Ordering::Relaxed);
        for i in 0..2000u32 {
            idx.record(&filler(i), (i % 4) as usize);
        }
        assert!(idx.clock.load(Ordering::Relaxed) < 10, "the clock wrapped");
        let recent = chain(&"r".repeat(BLOCK_BYTES * 8));
        idx.record(&recent, 1);
        // Then more new blocks into the same shard than its fullness
        // allows, fewer than its old entries: evictions must take those.
        let shard = shard_of(recent[0]);
        let mut i = 10_000;
        let mut added = 0;
        while added < 4 {
            let c = filler(i);
            if shard_of(c[0]) == shard {
                idx.record(&c, 2);
                added += 1;
            }
            i += 1;
        }
        let mut out = [0; MAX_NODES];
        idx.match_lengths(&recent, u64::MAX, &mut out);
        assert_eq!(out[1], 8, "the newest chain was evicted");
    }

    #[test]
    fn remapping_follows_nodes_by_their_new_position() {
        let index = PrefixIndex::new(1024);
        let chain = |seed: u64| -> Vec<u64> { (0..4).map(|k| seed * 100 + k + 1).collect() };
        index.record(&chain(1), 0);
        index.record(&chain(2), 1);
        index.record(&chain(3), 2);
        // Old [a, b, c] -> new [d, a, c]: a moves to 1, b is gone, c stays.
        let moved = index.remapped(&[Some(1), None, Some(2)]);
        let lengths = |idx: &PrefixIndex, seed: u64| {
            let mut out = [0u32; MAX_NODES];
            idx.match_lengths(&chain(seed), u64::MAX, &mut out);
            out
        };
        assert_eq!(lengths(&moved, 1)[1], 4);
        assert_eq!(lengths(&moved, 1)[0], 0);
        assert!(
            lengths(&moved, 2).iter().all(|&n| n == 0),
            "b's blocks are gone"
        );
        assert_eq!(lengths(&moved, 3)[2], 4);
        assert_eq!(moved.len(), 8);
        // The old index is untouched.
        assert_eq!(lengths(&index, 1)[0], 4);
        assert_eq!(index.len(), 12);
    }
}
