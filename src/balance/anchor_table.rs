//! Balanced homes for a few recurring prompts, which every replica
//! computes alike.
//!
//! Plain rendezvous hashing ([`super::rendezvous`]) spreads many keys
//! evenly but a few by chance: the bench's 8 system prompts over 4 nodes
//! gave one node 281 of 607 requests and another 88 (seed 42), and the
//! crowded node's batches and cache cost 10 ms of mean TTFT against one
//! gateway with its own index. So the anchors this gateway sees often
//! (a decaying count of their requests at or above [`JOIN_COUNT`]) are
//! assigned as a set: in ascending key order (the anchors are hashes, so
//! this order is arbitrary but the same everywhere), each takes the first
//! node in its rendezvous order that still has room, a node having room
//! for its weight's share of the anchors, rounded up. The result depends
//! only on the set of anchors and the nodes, so replicas that see the same
//! recurring prompts (each sees a share of every popular prompt's
//! requests) place them alike. Anchors seen now and then (one-off
//! prompts and a conversation's own turns, which each replica sees
//! differently) take no room: they keep plain
//! rendezvous, as do all anchors when there are more than
//! [`KEYS_PER_NODE`] per node (chance then balances them) or more than
//! [`MAX_NODES`] nodes. Each candidate set keeps its own assignment (up to
//! [`MAX_SETS`] at once), so picks whose candidates differ (a LoRA
//! adapter's holders, the whole pool for the base model) do not reassign
//! at every change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::rendezvous;
use crate::fleet::Node;

/// Time constant of an anchor's decaying request count.
const DECAY_NS: u64 = 30_000_000_000;
/// An anchor takes room once its decaying count reaches this: two
/// requests within a few seconds, or a steady 3 or more a minute at this
/// gateway. A conversation's own turns, a few a minute spread over the
/// replicas, stay below it on each; a system prompt shared by many
/// sessions is far above it on every replica. Joining early matters: each
/// join moves keys, and replicas join at their own pace. (Joining at 4,
/// with exact instead of rounded-up rooms, three replicas kept 72.8 % of
/// the cache on seed 42 against 77.9 % now.)
const JOIN_COUNT: f64 = 2.0;
/// ... and gives it back only below this, far under a popular prompt's
/// count (about 6 for each of the bench's prompts on each of three
/// replicas), so chance lulls do not make one replica alone reassign. A
/// dead anchor leaves about 70 s after its last request.
const LEAVE_COUNT: f64 = 0.5;
/// Anchors whose count decayed below this are forgotten.
const FORGET_COUNT: f64 = 0.05;
/// Above this many recurring anchors per candidate node, plain rendezvous.
const KEYS_PER_NODE: usize = 8;
/// Above this many nodes in the pool, plain rendezvous (and no per-pick
/// cost).
const MAX_NODES: usize = 64;
/// Candidate sets whose assignments are kept at once: picks that see
/// different candidates in turn (LoRA adapters narrow them to each
/// adapter's holders) reuse theirs instead of reassigning at every change.
const MAX_SETS: usize = 8;
/// Anchors remembered at most (memory bound); newer ones beyond it are
/// placed by plain rendezvous until old ones expire.
const MAX_TRACKED: usize = 4096;
/// How often expired anchors are swept out.
const SWEEP_NS: u64 = 1_000_000_000;

/// The recurring anchors of one route and their agreed nodes.
#[derive(Debug, Default)]
pub struct AnchorTable {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<u64, Seen>,
    /// Per candidate set ([`identity`]), its assignment.
    sets: HashMap<u64, Assignment>,
    /// Bumped whenever the set of recurring anchors changes: assignments
    /// of an older generation are stale.
    generation: u64,
    swept_at: u64,
    /// Assignments computed (tests).
    computed: u64,
}

/// The recurring anchors' homes over one candidate set.
#[derive(Debug, Default)]
struct Assignment {
    generation: u64,
    /// Recurring anchor -> index into the nodes.
    homes: HashMap<u64, usize>,
    /// When a pick last used it (the least recently used goes first).
    used_at: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Requests, each decaying with [`DECAY_NS`], as of `at`.
    count: f64,
    at: u64,
    /// Takes room (joined at [`JOIN_COUNT`], not yet below [`LEAVE_COUNT`]).
    recurring: bool,
}

impl Seen {
    fn count_at(&self, now: u64) -> f64 {
        let elapsed = now.saturating_sub(self.at) as f64;
        self.count * (-elapsed / DECAY_NS as f64).exp()
    }
}

impl AnchorTable {
    /// Note one request for `key` at `now` and return its balanced home
    /// among `cands` (indexes into `nodes`), or `None` when it has none
    /// (seen too rarely, too many anchors or nodes): plain rendezvous.
    pub fn home(&self, key: u64, nodes: &[Arc<Node>], cands: &[usize], now: u64) -> Option<usize> {
        // A large pool's candidates are a random sample per pick (see
        // `sample`): no stable set to assign over.
        if nodes.len() > MAX_NODES || cands.len() > MAX_NODES {
            return None;
        }
        // A poisoned lock only means another pick panicked mid-update;
        // plain rendezvous is still a correct answer.
        let mut table = self.inner.lock().ok()?;
        table.note(key, now);
        table.sweep(now);
        let identity = identity(nodes, cands);
        let generation = table.generation;
        let fresh = table
            .sets
            .get(&identity)
            .is_some_and(|a| a.generation == generation);
        if !fresh {
            let homes = table.assign(nodes, cands);
            tracing::debug!(
                anchors = homes.len(),
                candidate_sets = table.sets.len(),
                "balanced homes reassigned"
            );
            if table.sets.len() >= MAX_SETS && !table.sets.contains_key(&identity) {
                let oldest = table
                    .sets
                    .iter()
                    .min_by_key(|(_, a)| a.used_at)
                    .map(|(&id, _)| id);
                if let Some(id) = oldest {
                    table.sets.remove(&id);
                }
            }
            table.computed += 1;
            table.sets.insert(
                identity,
                Assignment {
                    generation,
                    homes,
                    used_at: now,
                },
            );
        }
        let set = table.sets.get_mut(&identity)?;
        set.used_at = now;
        set.homes.get(&key).copied()
    }

    /// How many anchors have an assigned node in the newest assignment.
    #[cfg(test)]
    fn assigned(&self) -> usize {
        self.inner.lock().map_or(0, |t| {
            t.sets
                .values()
                .max_by_key(|a| (a.generation, a.used_at))
                .map_or(0, |a| a.homes.len())
        })
    }

    /// How many assignments were computed so far.
    #[cfg(test)]
    fn computed(&self) -> u64 {
        self.inner.lock().map_or(0, |t| t.computed)
    }
}

impl Inner {
    fn note(&mut self, key: u64, now: u64) {
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains_key(&key) {
            return;
        }
        let seen = self.seen.entry(key).or_insert(Seen {
            count: 0.0,
            at: now,
            recurring: false,
        });
        seen.count = seen.count_at(now) + 1.0;
        seen.at = now;
        if !seen.recurring && seen.count >= JOIN_COUNT {
            seen.recurring = true;
            self.generation += 1;
        }
    }

    fn sweep(&mut self, now: u64) {
        if now.saturating_sub(self.swept_at) < SWEEP_NS {
            return;
        }
        self.swept_at = now;
        let mut left = false;
        self.seen.retain(|_, s| {
            let count = s.count_at(now);
            if s.recurring && count < LEAVE_COUNT {
                s.recurring = false;
                left = true;
            }
            count >= FORGET_COUNT
        });
        if left {
            self.generation += 1;
        }
    }

    /// Each recurring anchor, in ascending order, to the first node in its
    /// rendezvous order with room left; a node's room is its weight's share
    /// of the anchors, rounded up.
    ///
    /// Not by measured speed: each replica reads node speed from its own
    /// requests' token gaps, which a long prefill sharing the batch
    /// stretches, and readings held for 20 s still put a full-speed node
    /// at a quarter speed on one replica now and then; that replica alone
    /// then moved prompts (3 replicas: 59 ms / 73 % against 51 / 77 % for
    /// one gateway, seed 42). Give a slower node a lower `weight`.
    fn assign(&self, nodes: &[Arc<Node>], cands: &[usize]) -> HashMap<u64, usize> {
        let mut homes = HashMap::new();
        let mut keys: Vec<u64> = self
            .seen
            .iter()
            .filter(|(_, s)| s.recurring)
            .map(|(&k, _)| k)
            .collect();
        if keys.is_empty() || cands.is_empty() || keys.len() > KEYS_PER_NODE * cands.len() {
            return homes;
        }
        keys.sort_unstable();
        let weights: Vec<f64> = cands
            .iter()
            .map(|&i| nodes.get(i).map_or(1.0, |n| f64::from(n.weight.max(1))))
            .collect();
        let mut room = rooms(keys.len(), &weights);
        for key in keys {
            let open = (0..cands.len()).filter(|&k| room[k] > 0).map(|k| cands[k]);
            if let Some(home) = rendezvous::first(key, nodes, open) {
                if let Some(k) = cands.iter().position(|&c| c == home) {
                    room[k] -= 1;
                }
                homes.insert(key, home);
            }
        }
        homes
    }
}

/// Room for `n` anchors over the candidates, in proportion to their `weights`,
/// rounded up: the rooms add up to at least `n`, and a few more anchors
/// (one more joining on one replica) mostly change no room, so fewer
/// anchors move than with an exact share-out.
fn rooms(n: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![n; weights.len()];
    }
    weights
        .iter()
        .map(|w| (n as f64 * w / total).ceil() as usize)
        .collect()
}

/// Which candidate nodes (and weights) an assignment was made for: the
/// node objects' addresses, so a reload or discovery change that replaces
/// a node reassigns.
fn identity(nodes: &[Arc<Node>], cands: &[usize]) -> u64 {
    cands.iter().fold(cands.len() as u64, |acc, &i| {
        let (ptr, weight) = nodes.get(i).map_or((0, 0), |n| {
            (Arc::as_ptr(n) as usize as u64, u64::from(n.weight))
        });
        (acc ^ ptr ^ weight.rotate_left(48) ^ (i as u64).rotate_left(32))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{nodes, weighted_nodes};

    const S: u64 = 1_000_000_000;
    /// Requests that make an anchor recurring when sent at once.
    const JOIN: usize = JOIN_COUNT as usize;

    /// Every key made recurring at `now`, then each key's home.
    fn homes(table: &AnchorTable, ns: &[Arc<Node>], keys: &[u64], now: u64) -> Vec<Option<usize>> {
        let all: Vec<usize> = (0..ns.len()).collect();
        for &k in keys {
            for _ in 0..JOIN {
                table.home(k, ns, &all, now);
            }
        }
        keys.iter().map(|&k| table.home(k, ns, &all, now)).collect()
    }

    fn spread(homes: &[Option<usize>], n: usize) -> Vec<usize> {
        let mut per = vec![0; n];
        for h in homes.iter().flatten() {
            per[*h] += 1;
        }
        per
    }

    #[test]
    fn a_few_prompts_are_spread_evenly_where_hashing_alone_crowds_them() {
        let ns = nodes(4);
        let all: Vec<usize> = (0..4).collect();
        // Find 8 keys that plain rendezvous crowds (4 or more on one node).
        let crowded = (0..1_000u64)
            .map(|base| {
                (0..8)
                    .map(|j| base * 1_000 + j * 7_919)
                    .collect::<Vec<u64>>()
            })
            .find(|keys| {
                let plain: Vec<Option<usize>> = keys
                    .iter()
                    .map(|&k| rendezvous::first(k, &ns, all.iter().copied()))
                    .collect();
                spread(&plain, 4).iter().any(|&c| c >= 4)
            });
        let keys = crowded.expect("some 8 keys crowd a node under plain hashing");
        let table = AnchorTable::default();
        let h = homes(&table, &ns, &keys, S);
        assert_eq!(spread(&h, 4), vec![2, 2, 2, 2]);
    }

    #[test]
    fn weights_give_room() {
        let ns = weighted_nodes(&[1, 1, 2]);
        let keys: Vec<u64> = (0..8).map(|j| 31 + j * 104_729).collect();
        let table = AnchorTable::default();
        assert_eq!(spread(&homes(&table, &ns, &keys, S), 3), vec![2, 2, 4]);
    }

    #[test]
    fn a_prompt_seen_now_and_then_keeps_plain_rendezvous() {
        let ns = nodes(4);
        let all: Vec<usize> = (0..4).collect();
        let table = AnchorTable::default();
        // One request every 30 s: the count settles at 1.6, below the line.
        for turn in 0..30u64 {
            assert_eq!(table.home(5, &ns, &all, S + turn * 30 * S), None);
        }
        for _ in 1..JOIN {
            table.home(6, &ns, &all, 1_000 * S);
        }
        assert!(table.home(6, &ns, &all, 1_000 * S).is_some());
    }

    #[test]
    fn anchors_leave_once_their_requests_stop() {
        let ns = nodes(4);
        let all: Vec<usize> = (0..4).collect();
        let table = AnchorTable::default();
        homes(&table, &ns, &[5], S);
        assert_eq!(table.assigned(), 1);
        // Still recurring just after, gone once the count decays below
        // LEAVE_COUNT (5 requests: after about 70 s).
        table.home(7, &ns, &all, 2 * S + SWEEP_NS);
        assert_eq!(table.assigned(), 1);
        table.home(7, &ns, &all, 2 * S + DECAY_NS * 3);
        assert_eq!(table.assigned(), 0);
    }

    #[test]
    fn many_prompts_or_nodes_use_plain_rendezvous() {
        let ns = nodes(2);
        let keys: Vec<u64> = (0..(2 * KEYS_PER_NODE as u64 + 1)).collect();
        let table = AnchorTable::default();
        assert!(homes(&table, &ns, &keys, S).iter().all(Option::is_none));
        let many = nodes(MAX_NODES + 1);
        let table = AnchorTable::default();
        assert!(homes(&table, &many, &[1], S)[0].is_none());
    }

    /// Picks that alternate between two candidate sets (a LoRA adapter on
    /// two of four nodes, the base model on all four) compute one
    /// assignment per set, not one per change, and each set's homes are
    /// what a table seeing only that set computes.
    #[test]
    fn alternating_candidate_sets_keep_their_own_assignments() {
        let ns = nodes(4);
        let keys: Vec<u64> = (1..=6).map(|k| k * 0x9e37_79b9).collect();
        let all: Vec<usize> = (0..4).collect();
        let pair = [1usize, 3];
        let table = AnchorTable::default();
        homes(&table, &ns, &keys, S);
        let before = table.computed();
        let mut seen_all = Vec::new();
        let mut seen_pair = Vec::new();
        for round in 0..50 {
            for &k in &keys {
                let now = S + round * 1_000_000;
                seen_all.push(table.home(k, &ns, &all, now));
                seen_pair.push(table.home(k, &ns, &pair, now));
            }
        }
        assert!(
            table.computed() - before <= 1,
            "{} assignments for 2 alternating sets",
            table.computed() - before
        );
        let only_all = AnchorTable::default();
        let expect_all = homes(&only_all, &ns, &keys, S);
        let only_pair = AnchorTable::default();
        for &k in &keys {
            for _ in 0..JOIN {
                only_pair.home(k, &ns, &pair, S);
            }
        }
        let expect_pair: Vec<Option<usize>> = keys
            .iter()
            .map(|&k| only_pair.home(k, &ns, &pair, S))
            .collect();
        for (i, chunk) in seen_all.chunks(keys.len()).enumerate() {
            assert_eq!(chunk, &expect_all[..], "round {i}, all nodes");
        }
        for (i, chunk) in seen_pair.chunks(keys.len()).enumerate() {
            assert_eq!(chunk, &expect_pair[..], "round {i}, two nodes");
            assert!(chunk.iter().all(|h| h.is_some_and(|h| pair.contains(&h))));
        }
    }

    /// Three replicas fed in turn a mixed stream for 10 simulated minutes:
    /// 8 system prompts shared by many sessions, and conversations whose
    /// own anchors recur a few times (a new one every 2 s, 5 turns 20 s
    /// apart). Each request goes where the table (or, without a balanced
    /// home, plain rendezvous) says; a request is *followed* when it goes
    /// where its anchor's previous request went, which was usually placed
    /// by another replica.
    #[test]
    fn replicas_fed_in_turn_place_each_anchor_where_the_last_request_went() {
        let replicas: Vec<(Vec<Arc<Node>>, AnchorTable)> =
            (0..3).map(|_| (nodes(4), AnchorTable::default())).collect();
        let all: Vec<usize> = (0..4).collect();
        let mut requests: Vec<(u64, u64)> = Vec::new(); // (time ns, anchor)
        let mut rng = fastrand::Rng::with_seed(9);
        let mut t = 0.0f64;
        while t < 600.0 {
            t += -(1.0 - rng.f64()).ln() / 5.0; // 5 requests/s to the prompts
            requests.push(((t * 1e9) as u64, 1 + rng.u64(0..8)));
        }
        for c in 0..300u64 {
            for turn in 0..5u64 {
                requests.push(((c * 2 + turn * 20) * S, 1_000 + c));
            }
        }
        requests.sort_unstable();
        let mut last: HashMap<u64, usize> = HashMap::new();
        let (mut followed, mut counted) = ([0u32; 2], [0u32; 2]);
        let mut homes_of_prompts: Vec<Vec<usize>> = Vec::new();
        for (n, &(at, key)) in requests.iter().enumerate() {
            let (ns, table) = &replicas[n % 3];
            let home = table
                .home(key, ns, &all, at)
                .or_else(|| rendezvous::first(key, ns, all.iter().copied()))
                .expect("a node");
            let kind = usize::from(key >= 1_000);
            if at > 120 * S {
                if let Some(&before) = last.get(&key) {
                    counted[kind] += 1;
                    followed[kind] += u32::from(before == home);
                }
            }
            last.insert(key, home);
            if homes_of_prompts.is_empty() && at > 590 * S {
                homes_of_prompts = replicas
                    .iter()
                    .map(|(ns, t)| {
                        (1..9)
                            .map(|k| t.home(k, ns, &all, at).unwrap_or(9))
                            .collect()
                    })
                    .collect();
            }
        }
        let rate = |k: usize| f64::from(followed[k]) / f64::from(counted[k]);
        assert!(rate(0) > 0.99, "prompts: {followed:?} of {counted:?}");
        assert!(rate(1) > 0.99, "conversations: {followed:?} of {counted:?}");
        // The prompts are balanced: 2 per node on every replica.
        for homes in &homes_of_prompts {
            let some: Vec<Option<usize>> = homes.iter().map(|&h| (h < 4).then_some(h)).collect();
            assert_eq!(spread(&some, 4), vec![2, 2, 2, 2], "{homes_of_prompts:?}");
        }
    }
}
