//! Node sets of any pool size for the block indexes (the approximate
//! prefix index and the precise KV index): a pool's nodes in groups of
//! [`GROUP`], one 64-bit set per (block, group) that holds it.
//!
//! A block's set for group 0 is stored under the block's own hash, so a
//! pool of up to 64 nodes keeps one entry per block as a single bitset
//! did; group `g > 0` is stored under [`group_key`]`(hash, g)`. A lookup
//! asks only the groups of the nodes it is interested in ([`Groups`]),
//! so matching a prompt against a 1,024-node pool's sampled candidates
//! costs one lookup per block per group still matching, not per node.

use smallvec::SmallVec;

/// Nodes per group: one bit each in a `u64`.
pub const GROUP: usize = 64;

/// The map key of `hash`'s node set for `group`: the hash itself for
/// group 0, else the hash mixed with the group number (an odd multiple
/// of it, rotated, so groups of one block and blocks of one group do not
/// meet; a collision with another block's hash is as likely as between
/// two block hashes).
#[inline]
pub fn group_key(hash: u64, group: usize) -> u64 {
    if group == 0 {
        hash
    } else {
        hash ^ (group as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29)
    }
}

/// The group of node `node` and its bit there.
#[inline]
pub fn locate(node: usize) -> (usize, u64) {
    (node / GROUP, 1u64 << (node % GROUP))
}

/// Call `f` with each node whose bit is set in `bits` of group `group`.
#[inline]
pub fn each_node(group: usize, mut bits: u64, mut f: impl FnMut(usize)) {
    while bits != 0 {
        f(group * GROUP + bits.trailing_zeros() as usize);
        bits &= bits - 1;
    }
}

/// A set of node indices as (group, bits) pairs in ascending group
/// order, groups without a node left out. Two groups inline: a pool of
/// up to 128 nodes (the largest scanned whole) needs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(SmallVec<[(usize, u64); 2]>);

impl Groups {
    /// The set of `nodes` (any order, repeats allowed).
    pub fn of(nodes: &[usize]) -> Groups {
        let mut out = Groups::default();
        for &i in nodes {
            out.insert(i);
        }
        out
    }

    /// Add node `node`.
    #[inline]
    pub fn insert(&mut self, node: usize) {
        let (g, bit) = locate(node);
        // Nodes mostly come in ascending order: the last group first.
        if let Some((last, bits)) = self.0.last_mut() {
            if *last == g {
                *bits |= bit;
                return;
            }
        }
        self.insert_new_group(g, bit);
    }

    fn insert_new_group(&mut self, g: usize, bit: u64) {
        match self.0.binary_search_by_key(&g, |&(group, _)| group) {
            Ok(k) => self.0[k].1 |= bit,
            Err(k) => self.0.insert(k, (g, bit)),
        }
    }

    /// Whether node `node` is in the set.
    #[cfg(test)]
    pub fn contains(&self, node: usize) -> bool {
        let (g, bit) = locate(node);
        self.0
            .binary_search_by_key(&g, |&(group, _)| group)
            .is_ok_and(|k| self.0[k].1 & bit != 0)
    }

    /// The set without the nodes `keep` says no to.
    pub fn filtered(&self, keep: impl Fn(usize) -> bool) -> Groups {
        let mut out = Groups::default();
        self.for_each(|i| {
            if keep(i) {
                out.insert(i);
            }
        });
        out
    }

    /// Whether no node is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&(_, bits)| bits == 0)
    }

    /// The (group, bits) pairs.
    pub fn pairs(&self) -> &[(usize, u64)] {
        &self.0
    }

    /// The (group, bits) pairs, to narrow in place while walking a chain.
    pub fn pairs_mut(&mut self) -> &mut [(usize, u64)] {
        &mut self.0
    }

    /// Call `f` with each node in the set, in ascending order.
    pub fn for_each(&self, mut f: impl FnMut(usize)) {
        for &(g, bits) in &self.0 {
            each_node(g, bits, &mut f);
        }
    }

    /// The nodes in ascending order.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.for_each(|i| out.push(i));
        out
    }
}

/// How many leading blocks of a chain each asked node holds, found block
/// by block: each group keeps the nodes still matching, and a node that
/// stops is written its length. Both block indexes walk this way.
pub struct MatchWalk<'a> {
    alive: Groups,
    out: &'a mut [u32],
}

impl<'a> MatchWalk<'a> {
    /// A walk over the nodes in `ask`, writing into `out` (by node index;
    /// it holds 0 for them on entry; nodes past its end are skipped).
    pub fn new(ask: &Groups, out: &'a mut [u32]) -> Self {
        MatchWalk {
            alive: ask.clone(),
            out,
        }
    }

    /// Block `k`: each group narrowed to its nodes that `held(group)`
    /// says hold the block; those that stop get `k` (stopping at block 0,
    /// they keep their 0). Whether any node still matches.
    #[inline]
    pub fn step(&mut self, k: usize, mut held: impl FnMut(usize) -> u64) -> bool {
        let mut any = false;
        for (g, bits) in self.alive.pairs_mut() {
            if *bits == 0 {
                continue;
            }
            let next = *bits & held(*g);
            if k > 0 {
                let out = &mut *self.out;
                each_node(*g, *bits & !next, |i| {
                    if let Some(o) = out.get_mut(i) {
                        *o = k as u32;
                    }
                });
            }
            *bits = next;
            any |= next != 0;
        }
        any
    }

    /// The chain's end, `len` blocks: the nodes still matching hold all.
    pub fn finish(self, len: usize) {
        let out = self.out;
        self.alive.for_each(|i| {
            if let Some(o) = out.get_mut(i) {
                *o = len as u32;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_hold_nodes_of_any_index_in_order() {
        let set = Groups::of(&[700, 3, 64, 63, 3, 1023, 65]);
        assert_eq!(set.to_vec(), vec![3, 63, 64, 65, 700, 1023]);
        assert!(set.contains(700) && set.contains(63) && !set.contains(0));
        assert!(!set.contains(5000));
        assert_eq!(set.0.len(), 4, "groups 0, 1, 10 and 15");
        assert!(Groups::of(&[]).is_empty());
    }

    #[test]
    fn group_keys_differ_by_group_and_keep_group_zero() {
        assert_eq!(group_key(42, 0), 42);
        let keys: std::collections::HashSet<u64> = (0..256).map(|g| group_key(42, g)).collect();
        assert_eq!(keys.len(), 256);
        assert_ne!(group_key(42, 1), group_key(43, 1));
    }
}
