//! Precise prefix-cache routing: `prefix_aware`'s load rules, but the
//! prefix match of each node is what its KV cache really holds, by the
//! engine's own events (see [`crate::kvindex`]), instead of where the
//! gateway recently sent the prompt.
//!
//! Per pick: tokenize the prompt, compute its block keys, and ask the
//! precise index how many leading blocks each non-overloaded candidate
//! holds; the longest real hit wins, weighed against load exactly as
//! `prefix_aware` does (balance thresholds, queueing trade-off). Falls back to the
//! approximate index — counted in `fallbacks` — when no tokenizer is
//! configured, no node's event stream is live, the request has no prompt
//! text, or no node holds even one block of it (a prefix just sent
//! somewhere is not cached until its prefill ends, so a burst of a new
//! prompt follows the approximate record instead of scattering). Every
//! choice is also recorded in the approximate index, so it stays warm.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::prefix_aware::PrefixAware;
use super::prefix_index::PrefixIndex;
use super::{PickContext, Policy};
use crate::config::BalanceOptions;
use crate::fleet::Node;
use crate::kvindex::Precise;

/// The `precise_prefix` policy of one route.
#[derive(Debug)]
pub struct PrecisePrefix {
    inner: PrefixAware,
    precise: Option<Arc<Precise>>,
}

impl PrecisePrefix {
    /// A policy over `precise` (`None`: always approximate), with the
    /// approximate `index` kept by the caller across reloads.
    pub fn new(
        opts: &BalanceOptions,
        index: Arc<PrefixIndex>,
        precise: Option<Arc<Precise>>,
    ) -> PrecisePrefix {
        PrecisePrefix {
            inner: PrefixAware::with_index(opts, index),
            precise,
        }
    }
}

impl Policy for PrecisePrefix {
    fn name(&self) -> &'static str {
        "precise_prefix"
    }

    fn precise(&self) -> Option<&Arc<Precise>> {
        self.precise.as_ref()
    }

    fn pick(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        self.pick_expecting(nodes, eligible, ctx).map(|(i, _)| i)
    }

    fn pick_expecting(
        &self,
        nodes: &[Arc<Node>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<(usize, u32)> {
        let Some(precise) = &self.precise else {
            return self.inner.pick_expecting(nodes, eligible, ctx);
        };
        let stats = &precise.index.stats;
        let live = precise.index.any_live();
        // Made once per request by the proxy; made here for other callers.
        let keys: Option<Arc<[u64]>> = match ctx.request {
            Some(r) if live => r.prompt_keys.clone().or_else(|| {
                r.prompt
                    .as_deref()
                    .and_then(|p| precise.keys(p))
                    .map(Arc::from)
            }),
            _ => None,
        };
        let Some(keys) = keys.filter(|k| !k.is_empty()) else {
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            return self.inner.pick_expecting(nodes, eligible, ctx);
        };
        let used_precise = Cell::new(false);
        let choice = self
            .inner
            .pick_matching(nodes, eligible, ctx, &|chain, ask, out| {
                // Nodes without a live event stream match nothing (their
                // entries stay 0).
                let live = ask.filtered(|i| precise.index.is_live(i));
                precise.index.match_lengths(&keys, &live, out);
                let mut any = false;
                live.for_each(|i| any |= out.get(i).is_some_and(|&n| n > 0));
                if any {
                    used_precise.set(true);
                } else {
                    self.inner.index().match_lengths(chain, ask, out);
                }
            });
        stats.lookups.fetch_add(1, Ordering::Relaxed);
        stats
            .lookup_blocks
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        if used_precise.get() {
            stats.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        // The blocks the engines' caches hold on the chosen node: what the
        // pick expected, when it matched on them.
        if let (Some((_, held)), true) = (choice, used_precise.get()) {
            stats
                .hit_blocks
                .fetch_add(u64::from(held), Ordering::Relaxed);
        }
        choice
    }
}
