//! Load-balancing policies: which node of a pool gets the next request.
//!
//! Every policy implements [`Policy`]. The caller (the proxy) decides which
//! nodes are *eligible* (healthy, not full, not already tried for this
//! request) and passes that as a predicate; the policy only chooses among
//! them. Policies keep their own state (counters, schedules) built for one
//! pool's node list and are rebuilt when the config changes, so the hot path
//! needs no lock.

use std::sync::Arc;

use crate::header_lines::RequestHeaders;

use crate::classify::RequestClass;
pub use crate::config::BalanceOptions;
use crate::fleet::Node;

mod anchor_table;
mod composite;
mod consistent_hash;
mod consolidate;
mod least_outstanding;
pub mod lora;
mod new_prompts;
mod peak_ewma;
mod power_of_two;
mod precise;
mod prefix_aware;
pub mod prefix_index;
mod prompt_shares;
pub mod rendezvous;
mod round_robin;
mod sample;
pub mod signals;
pub mod tradeoff;
mod weighted_round_robin;

#[cfg(test)]
pub(crate) mod testing;

pub use composite::Composite;
pub use consistent_hash::ConsistentHash;
pub use consolidate::Consolidate;
pub use least_outstanding::LeastOutstanding;
pub use peak_ewma::PeakEwmaP2c;
pub use power_of_two::PowerOfTwo;
pub use precise::PrecisePrefix;
pub use prefix_aware::PrefixAware;
pub use prefix_index::PrefixIndex;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

/// What a policy may look at besides the nodes: the classified request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The request being routed, if classified (absent in benchmarks).
    pub request: Option<&'a RequestClass>,
    /// The request headers as they will be forwarded (session keys for
    /// `consistent_hash`), if available.
    pub headers: Option<RequestHeaders<'a>>,
}

impl PickContext<'_> {
    /// A context with no request information.
    pub const EMPTY: PickContext<'static> = PickContext {
        request: None,
        headers: None,
    };
}

/// A load-balancing policy for one pool.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// The policy's config name, e.g. `"round_robin"`.
    fn name(&self) -> &'static str;

    /// Choose the index of a node in `nodes` for which `eligible(index)` is
    /// true, or `None` when no node is eligible. `nodes` is always the same
    /// list the policy was built for.
    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize>;

    /// [`Policy::pick`], with how many leading blocks of the request's
    /// prompt (see [`crate::classify::prefix`]) the policy expects the
    /// chosen node to hold in its prefix cache: 0 when it does not know.
    /// The node's prefill-cost samples count only the rest of the prompt
    /// (a mostly cached prompt's TTFT says little of what a token costs).
    fn pick_expecting(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<(usize, u32)> {
        self.pick(nodes, eligible, ctx).map(|i| (i, 0))
    }

    /// The precise prefix-cache state (`precise_prefix` only): its index,
    /// event subscriptions and counters, for `/metrics` and tests.
    fn precise(&self) -> Option<&Arc<crate::kvindex::Precise>> {
        None
    }
}

/// The policy names a config may use.
pub const POLICY_NAMES: &[&str] = &[
    "round_robin",
    "weighted_round_robin",
    "least_outstanding",
    "power_of_two",
    "prefix_aware",
    "precise_prefix",
    "consistent_hash",
    "peak_ewma",
    "composite",
];

/// How many of a pool's `nodes` the prefix memory of policy `name`
/// leaves out: the approximate prefix index (which `precise_prefix`
/// falls back to) holds [`prefix_index::MAX_NODES`] nodes, so requests
/// sent to nodes past it are not remembered and no prompt follows them
/// there. 0 for the other policies.
pub fn nodes_past_prefix_memory(name: &str, nodes: usize) -> usize {
    match name {
        "prefix_aware" | "precise_prefix" | "composite" => {
            nodes.saturating_sub(prefix_index::MAX_NODES)
        }
        _ => 0,
    }
}

/// Build the policy called `name` for `nodes` with the route's `[routes.balance]`
/// options (policies ignore the options they do not use); `None` for an
/// unknown name.
pub fn build(name: &str, nodes: &[Arc<Node>], opts: &BalanceOptions) -> Option<Arc<dyn Policy>> {
    build_with_index(name, nodes, opts, || {
        Arc::new(PrefixIndex::new(opts.prefix_capacity))
    })
}

/// Like [`build`], with the prefix index of the prefix-aware policies
/// (`prefix_aware`, `composite`) taken from `index` instead of a new empty
/// one, so the caller can keep it across config reloads. `index` is called
/// only by those policies; the index must be for the same node list.
pub fn build_with_index(
    name: &str,
    nodes: &[Arc<Node>],
    opts: &BalanceOptions,
    index: impl FnOnce() -> Arc<PrefixIndex>,
) -> Option<Arc<dyn Policy>> {
    let policy: Arc<dyn Policy> = match name {
        "round_robin" => Arc::new(RoundRobin::new()),
        "weighted_round_robin" => Arc::new(WeightedRoundRobin::new(nodes)),
        "least_outstanding" => Arc::new(LeastOutstanding::new()),
        "power_of_two" => Arc::new(PowerOfTwo::new()),
        "prefix_aware" => Arc::new(PrefixAware::with_index(opts, index())),
        // Built without its precise state here (it then routes like
        // `prefix_aware`); the route table builds it with one.
        "precise_prefix" => Arc::new(PrecisePrefix::new(opts, index(), None)),
        "consistent_hash" => Arc::new(ConsistentHash::new(nodes, opts)),
        "peak_ewma" => Arc::new(PeakEwmaP2c::new()),
        "composite" => Arc::new(Composite::with_index(opts, index())),
        _ => return None,
    };
    Some(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_past_the_prefix_memory_are_counted_for_the_prefix_policies_only() {
        // The bound is the index's: a node past it is not remembered.
        let max = prefix_index::MAX_NODES;
        let index = PrefixIndex::new(1024);
        let chain = [11, 12, 13];
        index.record(&chain, max);
        index.record(&chain, max - 1);
        let mut out = vec![0; max + 1];
        index.match_lengths(
            &chain,
            &crate::node_groups::Groups::of(&[max - 1, max]),
            &mut out,
        );
        assert_eq!(out[max - 1], 3);
        assert_eq!(out.iter().filter(|&&m| m > 0).count(), 1);

        for name in ["prefix_aware", "precise_prefix", "composite"] {
            assert_eq!(nodes_past_prefix_memory(name, max + 36), 36, "{name}");
            assert_eq!(nodes_past_prefix_memory(name, max), 0, "{name}");
            assert_eq!(nodes_past_prefix_memory(name, 1024), 0, "{name}");
        }
        for name in POLICY_NAMES
            .iter()
            .filter(|n| !n.contains("prefix") && **n != "composite")
        {
            assert_eq!(nodes_past_prefix_memory(name, 1000), 0, "{name}");
        }
    }
}
