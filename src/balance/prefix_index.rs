//! Which nodes were recently sent which prompt prefixes: a bounded map from
//! prefix block hash to the nodes sent it, shared by the prefix-aware
//! policies.
//!
//! Requests carry their prompt as a chain of block hashes (see
//! [`crate::classify::prefix`]): block `k`'s hash covers blocks `0..=k`, so
//! one flat map `block hash → nodes` answers "how many leading blocks of this
//! prompt did node `i` see" without a tree: node `i` matches the first `m`
//! blocks when each of them has node `i` in its set. Nodes are tracked by
//! index in the pool, in groups of 64 ([`crate::node_groups`]): a block's
//! *head* entry, under its hash, holds nodes 0–63 and says which other
//! groups hold it; each of those has its own entry. A pool of up to 64
//! nodes thus keeps one entry per block, and a lookup on a larger pool
//! reads only the groups of the nodes it asks about that still match
//! (up to [`MAX_NODES`] nodes, 16,384).
//!
//! Each block also counts the different next blocks recorded after it, so
//! [`PrefixIndex::leaves_a_shared_prefix`] tells a new conversation on a
//! shared system prompt (it leaves the prompt where others already went
//! different ways) from the next turn of one.
//!
//! # Memory and eviction
//!
//! Each entry is 8 (key) + 16 (value) bytes plus hashbrown's control
//! byte, in a table kept between 7/16 and 7/8 full: about 30–60 bytes per
//! distinct block and group holding it. The map holds at most `capacity`
//! entries; when a shard
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
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::node_groups::{each_node, group_key, locate, Groups, MatchWalk, GROUP};

/// Number of shards (a power of two).
pub const SHARDS: usize = 32;
/// Node groups an index can hold (an entry names its group in a `u8`).
pub const MAX_GROUPS: usize = 256;
/// Nodes an index can hold: requests sent to a pool's later nodes are
/// not remembered.
pub const MAX_NODES: usize = GROUP * MAX_GROUPS;

/// One block's node set for one group of 64 nodes. The block's *head*
/// (group 0, under the block's own hash) also says which other groups
/// hold it and how many ways chains went on after it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Bit `b`: node `64 × group + b` was sent the block.
    nodes: u64,
    used: u32,
    /// Head only: bit `g % 16` is set when some group `g` holds the
    /// block, so a lookup skips the groups that do not (exact up to
    /// 1,024 nodes; past that, a set bit may stand for several groups).
    folds: u16,
    /// 0 for the head; `g` for group `g`'s entry.
    group: u8,
    /// Head only: how many different next blocks were recorded after
    /// this one (saturating; only "two or more" is read). A block
    /// evicted and recorded again inside a chain counts its parent one
    /// more branch than it has; rare, and it only lets a hot prompt's
    /// later turn count as a session's start.
    branches: u8,
}

impl Entry {
    fn head(used: u32, branches: u8) -> Entry {
        Entry {
            nodes: 0,
            used,
            folds: 0,
            group: 0,
            branches,
        }
    }

    /// Group `g`'s entry (`g > 0`), no node yet.
    fn of_group(g: usize, used: u32) -> Entry {
        Entry {
            group: g as u8,
            ..Entry::head(used, 0)
        }
    }

    fn is_head(&self) -> bool {
        self.group == 0
    }

    /// Whether any node holds the block (a head's question).
    fn held(&self) -> bool {
        self.folds != 0
    }
}

/// A head's bit for group `g` ([`Entry::folds`]).
#[inline]
fn fold(g: usize) -> u16 {
    1 << (g % 16)
}

type Shard = HashMap<u64, Entry, crate::idhash::BuildIdHasher>;

/// The head of block `hash` in its shard.
#[inline]
fn head_in(shard: &Shard, hash: u64) -> Option<&Entry> {
    shard.get(&hash).filter(|e| e.is_head())
}

/// The nodes of group `g` holding block `hash`, whose head is `head`.
#[inline]
fn group_bits(shard: &Shard, hash: u64, head: &Entry, g: usize) -> u64 {
    if g == 0 {
        head.nodes
    } else if head.folds & fold(g) == 0 {
        0
    } else {
        shard
            .get(&group_key(hash, g))
            .filter(|e| usize::from(e.group) == g)
            .map_or(0, |e| e.nodes)
    }
}

/// Call `f` with every node holding block `hash` (head `head`), over the
/// index's first `groups` groups.
fn each_holder_in(shard: &Shard, hash: u64, head: &Entry, groups: usize, mut f: impl FnMut(usize)) {
    each_node(0, head.nodes, &mut f);
    if head.folds & !1 != 0 {
        for g in 1..groups {
            each_node(g, group_bits(shard, hash, head, g), &mut f);
        }
    }
}

/// The index of one route (see the module docs).
#[derive(Debug)]
pub struct PrefixIndex {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    clock: AtomicU32,
    /// Groups recorded so far (the highest group + 1; at least 1), so a
    /// walk over a block's groups stops there.
    groups: AtomicUsize,
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

/// What the index holds of a chain's leading part: the heads of its first
/// block and of the deepest block some node holds (the longest match).
/// One search answers both questions a pick asks of it.
#[derive(Debug, Clone, Copy)]
pub struct HeldPrefix {
    first: (BlockKey, Entry),
    deepest: (BlockKey, Entry),
}

impl HeldPrefix {
    /// A bounded set of nodes likely to match the chain best, for
    /// policies that look at a sample of a large pool: up to `deepest`
    /// of the nodes holding the deepest block any node holds (the
    /// longest match), and up to `others` more of those holding its
    /// first block (a shorter match, for when the best are overloaded),
    /// each chosen from a random rotation.
    pub fn likely_holders(&self, index: &PrefixIndex, deepest: usize, others: usize) -> Vec<usize> {
        let mut best = index.some_holders(self.deepest, deepest, &[]);
        let rest = index.some_holders(self.first, others, &best);
        best.extend(rest);
        best
    }

    /// Whether the longest leading part of the chain that any node was
    /// sent ends where recorded chains already went two or more
    /// different ways: a new conversation on a shared prompt (each
    /// session's first message departs from the system prompt's end),
    /// not the next turn of one (which continues where its own last
    /// request ended, a point no other chain left).
    pub fn leaves_a_shared_prefix(&self) -> bool {
        self.deepest.1.branches >= 2
    }
}

#[inline]
fn shard_of(hash: u64) -> usize {
    // The top bits: hashbrown uses the low bits for the bucket and the top 7
    // for the control byte; taking bits 52.. keeps the shard choice apart.
    ((hash >> 52) as usize) & (SHARDS - 1)
}

impl PrefixIndex {
    /// An index holding at most about `capacity` entries (one per block
    /// and group of 64 nodes holding it).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(16);
        PrefixIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            clock: AtomicU32::new(1),
            groups: AtomicUsize::new(1),
        }
    }

    fn lock(&self, s: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[s].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For each node in `ask` that was sent at least the first block of
    /// `chain`, how many leading blocks it was sent (`out[i]` for node `i`).
    /// Nothing else is written: `out` holds 0 for the asked nodes on
    /// entry (zeroing them here, one by one, took a tenth of a 64-node
    /// pick). Nodes past `out`'s end are skipped.
    pub fn match_lengths(&self, chain: &[u64], ask: &Groups, out: &mut [u32]) {
        if chain.is_empty() || ask.is_empty() {
            return;
        }
        let mut walk = MatchWalk::new(ask, out);
        for (r, run) in chain.chunks(RUN).enumerate() {
            let shard = self.lock(shard_of(run[0]));
            for (j, &hash) in run.iter().enumerate() {
                let head = head_in(&shard, hash);
                let held = |g| head.map_or(0, |h| group_bits(&shard, hash, h, g));
                if !walk.step(r * RUN + j, held) {
                    return;
                }
            }
        }
        walk.finish(chain.len());
    }

    /// Whether some node was sent the block `key`. For a chain's first
    /// block: whether any node would match at least one block.
    pub fn is_held(&self, key: BlockKey) -> bool {
        self.head(key).is_some_and(|e| e.held())
    }

    /// The nodes that were sent the block `key`, in ascending order.
    #[cfg(test)]
    pub fn holders(&self, key: BlockKey) -> Vec<usize> {
        let mut out = Vec::new();
        self.each_holder(key, |i| out.push(i));
        out
    }

    /// Call `f` with each node that was sent the block `key`, in
    /// ascending order, under the block's shard lock; whether any was.
    pub fn each_holder(&self, key: BlockKey, mut f: impl FnMut(usize)) -> bool {
        let groups = self.groups.load(Ordering::Relaxed);
        let shard = self.lock(shard_of(key.run));
        let Some(head) = head_in(&shard, key.hash) else {
            return false;
        };
        each_holder_in(&shard, key.hash, head, groups, &mut f);
        head.held()
    }

    /// Up to `k` nodes holding a block whose head was read already, not
    /// in `skip`: from a random group on, each group's nodes from a random
    /// rotation. O(groups + k), whatever the number of holders (a hot
    /// system prompt may be held by every node of a large pool); no lock
    /// when only group 0 holds the block.
    fn some_holders(&self, (key, head): (BlockKey, Entry), k: usize, skip: &[usize]) -> Vec<usize> {
        let mut out = Vec::with_capacity(k);
        let wide = head.folds & !1 != 0;
        let shard = wide.then(|| self.lock(shard_of(key.run)));
        // The head read again under the lock: the copy may be older.
        let head = shard
            .as_ref()
            .and_then(|s| head_in(s, key.hash).copied())
            .unwrap_or(head);
        let groups = if wide {
            self.groups.load(Ordering::Relaxed)
        } else {
            1
        };
        let start = fastrand::usize(..groups);
        for step in 0..groups {
            if out.len() >= k {
                break;
            }
            let g = (start + step) % groups;
            let bits = match &shard {
                Some(shard) => group_bits(shard, key.hash, &head, g),
                None => head.nodes,
            };
            let turn = fastrand::u32(..64);
            let mut rotated = bits.rotate_right(turn);
            while rotated != 0 && out.len() < k {
                let b = (rotated.trailing_zeros() + turn) % 64;
                rotated &= rotated - 1;
                let i = g * GROUP + b as usize;
                if !skip.contains(&i) {
                    out.push(i);
                }
            }
        }
        out
    }

    fn head(&self, key: BlockKey) -> Option<Entry> {
        head_in(&self.lock(shard_of(key.run)), key.hash).copied()
    }

    /// The head of the deepest block of `chain` that some node holds,
    /// given the first block's (`first`, held): holders only thin out
    /// along a chain, so a binary search, O(log blocks) shard lookups.
    fn deepest_held(&self, chain: &[u64], first: (BlockKey, Entry)) -> (BlockKey, Entry) {
        // Block `len - 1` has holders for `len = found`; find the longest
        // such `len`.
        let (mut found, mut hi, mut deepest) = (1usize, chain.len(), first);
        while found < hi {
            let mid = found + (hi - found).div_ceil(2);
            match BlockKey::at(chain, mid - 1)
                .and_then(|key| Some((key, self.head(key)?)))
                .filter(|(_, e)| e.held())
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
        let key = BlockKey::at(chain, 0)?;
        let first = (key, self.head(key).filter(|e| e.held())?);
        Some(HeldPrefix {
            first,
            deepest: self.deepest_held(chain, first),
        })
    }

    /// [`HeldPrefix::likely_holders`] of `chain` (none when nothing is held).
    pub fn likely_holders(&self, chain: &[u64], deepest: usize, others: usize) -> Vec<usize> {
        self.held_prefix(chain)
            .map_or_else(Vec::new, |h| h.likely_holders(self, deepest, others))
    }

    /// Remember that `node` was sent every block of `chain`.
    pub fn record(&self, chain: &[u64], node: usize) {
        if node >= MAX_NODES || chain.is_empty() {
            return;
        }
        let (g, bit) = locate(node);
        if self.groups.load(Ordering::Relaxed) <= g {
            self.groups.fetch_max(g + 1, Ordering::Relaxed);
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        // Where the chain first goes where no recorded chain went.
        let mut first_new = chain.len();
        for (r, run) in chain.chunks(RUN).enumerate() {
            let mut shard = self.lock(shard_of(run[0]));
            for (j, &hash) in run.iter().enumerate() {
                let k = r * RUN + j;
                let head = shard.entry(hash).or_insert_with(|| {
                    first_new = first_new.min(k);
                    // New blocks are the chain's tail: each but the last
                    // goes on one way, to the next new block.
                    Entry::head(now, u8::from(k + 1 < chain.len()))
                });
                head.used = now;
                head.folds |= fold(g);
                if g == 0 {
                    head.nodes |= bit;
                    continue;
                }
                let entry = shard
                    .entry(group_key(hash, g))
                    .or_insert(Entry::of_group(g, now));
                entry.nodes |= bit;
                entry.used = now;
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
            let mut shard = self.lock(shard_of(parent.run));
            if let Some(e) = shard.get_mut(&parent.hash).filter(|e| e.is_head()) {
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
        let old_groups = self.groups.load(Ordering::Relaxed);
        let new_groups = new_position
            .iter()
            .flatten()
            .filter(|&&j| j < MAX_NODES)
            .map(|&j| j / GROUP + 1)
            .max()
            .unwrap_or(1);
        let copy = PrefixIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: self.per_shard,
            clock: AtomicU32::new(self.clock.load(Ordering::Relaxed)),
            groups: AtomicUsize::new(new_groups),
        };
        for s in 0..SHARDS {
            let old = self.lock(s);
            let mut new = Shard::with_capacity_and_hasher(old.len(), Default::default());
            for (&hash, head) in old.iter().filter(|(_, e)| e.is_head()) {
                let mut moved = Groups::default();
                each_holder_in(&old, hash, head, old_groups, |i| {
                    if let Some(Some(j)) = new_position.get(i) {
                        if *j < MAX_NODES {
                            moved.insert(*j);
                        }
                    }
                });
                let mut new_head = Entry::head(head.used, head.branches);
                for &(g, nodes) in moved.pairs() {
                    new_head.folds |= fold(g);
                    if g == 0 {
                        new_head.nodes = nodes;
                    } else {
                        let entry = Entry {
                            nodes,
                            ..Entry::of_group(g, head.used)
                        };
                        new.insert(group_key(hash, g), entry);
                    }
                }
                if new_head.held() {
                    new.insert(hash, new_head);
                }
            }
            *copy.lock(s) = new;
        }
        copy
    }

    /// Entries held: one per block and group of 64 nodes holding it.
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

    /// Match lengths of nodes `0..n` for `chain`.
    fn lengths(idx: &PrefixIndex, chain: &[u64], n: usize) -> Vec<u32> {
        let mut out = vec![0; n];
        idx.match_lengths(chain, &Groups::of(&(0..n).collect::<Vec<_>>()), &mut out);
        out
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
            assert_eq!(idx.holders(key), vec![3], "block {k}");
        }
        assert_eq!(lengths(&idx, &c, 64)[3], 64);
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
        assert!(h.contains(&50), "{h:?}");
        assert_eq!(h.len(), 9, "{h:?}");
        assert!(h.iter().all(|&i| i < 40 || i == 50), "{h:?}");
        // Many equally long matches: a bounded number of them.
        for i in 0..30 {
            idx.record(&talk, i);
        }
        let h = idx.likely_holders(&talk, 16, 8);
        let deepest = h.iter().filter(|&&i| i < 30 || i == 50).count();
        assert!(deepest >= 16, "{h:?}");
        assert_eq!(h.len(), 16 + 8, "{h:?}");
        let distinct: std::collections::HashSet<_> = h.iter().collect();
        assert_eq!(distinct.len(), h.len(), "{h:?}");
        // Nothing known, or no chain: no hint.
        assert!(idx
            .likely_holders(&chain(&"u".repeat(BLOCK_BYTES * 3)), 16, 8)
            .is_empty());
        assert!(idx.likely_holders(&[], 16, 8).is_empty());
    }

    #[test]
    fn longest_match_per_node() {
        let idx = PrefixIndex::new(4096);
        let sys = "s".repeat(BLOCK_BYTES * 4);
        let a = chain(&format!("{sys}{}", "a".repeat(BLOCK_BYTES * 3)));
        let b = chain(&format!("{sys}{}", "b".repeat(BLOCK_BYTES * 2)));
        idx.record(&a, 0);
        idx.record(&b, 1);
        assert_eq!(lengths(&idx, &a, 3), [7, 4, 0]);
        assert_eq!(lengths(&idx, &b, 3), [4, 6, 0]);
        // Nodes not asked about are left as they are.
        let mut out = [9, 9];
        idx.match_lengths(&a, &Groups::of(&[1]), &mut out);
        assert_eq!(out, [9, 4]);
        // Unknown prompt.
        let unknown = lengths(&idx, &chain(&"z".repeat(500)), 64);
        assert!(unknown.iter().all(|&m| m == 0));
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
        assert_eq!(lengths(&idx, &recent, 4)[1], 8);
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
        assert_eq!(
            lengths(&idx, &recent, 4)[1],
            8,
            "the newest chain was evicted"
        );
    }

    #[test]
    fn nodes_of_every_group_match_as_the_first_64_do() {
        // Nodes in groups 0, 1, 10, 15 and 16 (group 16 shares its head
        // bit with group 0: a set bit only says "look").
        let idx = PrefixIndex::new(1 << 16);
        let sys = "s".repeat(BLOCK_BYTES * 20);
        let talk = |n: usize, blocks: usize| {
            chain(&format!(
                "{sys}{}",
                format!("{n:04}").repeat(BLOCK_BYTES * blocks / 4)
            ))
        };
        let homes = [3, 70, 700, 1000, 1030];
        for (k, &n) in homes.iter().enumerate() {
            idx.record(&talk(n, k + 1), n);
        }
        let out = lengths(&idx, &talk(1030, 5), 1100);
        for (k, &n) in homes.iter().enumerate() {
            let want = if n == 1030 { 25 } else { 20 };
            assert_eq!(out[n], want, "node {n} (turn {k})");
        }
        assert_eq!(out.iter().filter(|&&m| m > 0).count(), homes.len());
        for (k, &n) in homes.iter().enumerate() {
            let mine = lengths(&idx, &talk(n, k + 1), 1100);
            assert_eq!(mine[n] as usize, 20 + k + 1, "node {n}");
        }
        // Asking about a few nodes reads only theirs.
        let mut few = vec![0; 1100];
        idx.match_lengths(&talk(700, 3), &Groups::of(&[700, 5, 1030]), &mut few);
        assert_eq!((few[700], few[5], few[1030], few[3]), (23, 0, 20, 0));
        // The holders of the system prompt's first block, in order; the
        // deepest of a far node's own chain is that node.
        let first = BlockKey::at(&talk(3, 1), 0).unwrap();
        assert_eq!(idx.holders(first), homes.to_vec());
        assert_eq!(idx.likely_holders(&talk(1000, 4), 1, 0), vec![1000]);
        let mut likely = idx.likely_holders(&talk(1000, 4), 1, 8);
        likely.sort_unstable();
        assert_eq!(likely, homes.to_vec());
        // Branches count whichever group records: five sessions left the
        // system prompt five ways.
        assert!(idx.leaves_a_shared_prefix(&talk(9999, 1)));
    }

    #[test]
    fn likely_holders_of_a_prompt_every_node_holds_are_a_bounded_sample() {
        // A hot system prompt on all 1,000 nodes: a bounded, distinct
        // sample from all over the pool, not a list of 1,000.
        let idx = PrefixIndex::new(1 << 16);
        let sys = chain(&"s".repeat(BLOCK_BYTES * 4));
        for n in 0..1000 {
            idx.record(&sys, n);
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let h = idx.likely_holders(&sys, 16, 8);
            let distinct: std::collections::HashSet<_> = h.iter().copied().collect();
            // The whole chain is the prompt: 16 "deepest" and 8 "others"
            // of the same holders.
            assert_eq!((h.len(), distinct.len()), (24, 24), "{h:?}");
            assert!(h.iter().all(|&i| i < 1000), "{h:?}");
            seen.extend(h);
        }
        assert!(
            seen.len() > 900,
            "{} of 1,000 nodes ever sampled",
            seen.len()
        );
    }

    #[test]
    fn remapping_moves_nodes_between_groups() {
        let index = PrefixIndex::new(1 << 12);
        let chain = |seed: u64| -> Vec<u64> { (0..4).map(|k| seed * 100 + k + 1).collect() };
        for (seed, node) in [(1, 5), (2, 70), (3, 700), (4, 5)] {
            index.record(&chain(seed), node);
        }
        index.record(&chain(4), 130);
        // 5 -> 130, 70 -> 5, 700 removed, 130 -> 64.
        let mut to = vec![None; 701];
        (to[5], to[70], to[130]) = (Some(130), Some(5), Some(64));
        let moved = index.remapped(&to);
        assert_eq!(lengths(&moved, &chain(1), 200)[130], 4);
        assert_eq!(lengths(&moved, &chain(2), 200)[5], 4);
        assert!(lengths(&moved, &chain(3), 800).iter().all(|&m| m == 0));
        let both = lengths(&moved, &chain(4), 200);
        assert_eq!((both[130], both[64], both[5]), (4, 4, 0));
        // Heads of chains 1, 2, 4, the group entries of 1 (group 2) and
        // 4 (groups 1 and 2): chain 3 is gone.
        assert_eq!(moved.len(), 4 * 6);
        assert_eq!(
            lengths(&index, &chain(3), 800)[700],
            4,
            "the old index stays"
        );
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
        let lengths = |idx: &PrefixIndex, seed: u64| lengths(idx, &chain(seed), 64);
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
