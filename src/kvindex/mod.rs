//! Precise prefix-cache knowledge: which KV blocks each node really holds,
//! learnt from the engines' own KV-cache events (vLLM `--kv-events-config`,
//! ZMQ PUB, msgpack batches), and the prompt's block keys computed with the
//! model's tokenizer, so the `precise_prefix` policy can route on the
//! longest real cache hit.
//!
//! * [`wire`]: the event format (decode, and encode for the simulator);
//! * [`chain`]: the gateway's block keys over token ids;
//! * [`index`]: per node, the blocks held; lookups of a prompt's keys;
//! * [`subscriber`]: one task per node following its event stream, with
//!   sequence-gap resync through the replay socket, restart detection and
//!   reconnects;
//! * [`tokenizer`]: `tokenizer.json` through the `tokenizers` crate.
//!
//! The wire format, what is tokenized and how a mismatch shows are in
//! `docs/aware-balancing.md` ("Precise prefix-cache routing").

pub mod chain;
pub mod index;
pub mod subscriber;
pub mod template;
pub mod tokenizer;
pub mod wire;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use index::KvIndex;
pub use subscriber::NodeEndpoints;
pub use template::ChatTemplate;
pub use tokenizer::PromptTokenizer;

use crate::classify::Prompt;
use crate::config::precise::PreciseOptions;

/// Counters of one precise index (all monotonic).
#[derive(Debug, Default)]
pub struct KvStats {
    /// Event batches applied.
    pub batches: AtomicU64,
    /// Blocks added to the index.
    pub stored_blocks: AtomicU64,
    /// Blocks removed by `BlockRemoved`.
    pub removed_blocks: AtomicU64,
    /// `AllBlocksCleared` events.
    pub cleared: AtomicU64,
    /// Stored blocks whose parent was unknown (missed or earlier events).
    pub orphan_blocks: AtomicU64,
    /// Removals of blocks the index did not hold.
    pub unknown_removals: AtomicU64,
    /// Stores with another block size than configured.
    pub block_size_mismatch: AtomicU64,
    /// Events for another tier than GPU memory (not indexed).
    pub other_medium: AtomicU64,
    /// Stores refused at `max_blocks_per_node`.
    pub over_capacity: AtomicU64,
    /// Undecodable messages, batches or events.
    pub malformed: AtomicU64,
    /// Sequence gaps seen.
    pub gaps: AtomicU64,
    /// Gaps (or late joins) filled from the replay socket.
    pub replays: AtomicU64,
    /// Gaps that could not be filled: the node's blocks were forgotten.
    pub resync_clears: AtomicU64,
    /// Sequence numbers going back (engine restarts).
    pub restarts: AtomicU64,
    /// Subscriptions lost (then retried).
    pub disconnects: AtomicU64,
    /// Picks that looked the prompt up in the precise index.
    pub lookups: AtomicU64,
    /// ... of which some node held at least one leading block.
    pub hits: AtomicU64,
    /// Blocks of those prompts (tokens / block size).
    pub lookup_blocks: AtomicU64,
    /// ... held by the chosen node.
    pub hit_blocks: AtomicU64,
    /// Picks that used the approximate index instead (no tokenizer, no
    /// live event stream, no prompt text, or no precise hit).
    pub fallbacks: AtomicU64,
    /// Prompts tokenized (once per request, off the worker threads; more
    /// only where a pick had no keys made for it, e.g. the endpoint picker).
    pub tokenized: AtomicU64,
}

impl KvStats {
    /// `(name, help, value)` of every counter, for `/metrics`.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("batches", "KV event batches applied", v(&self.batches)),
            (
                "stored_blocks",
                "blocks added from BlockStored",
                v(&self.stored_blocks),
            ),
            (
                "removed_blocks",
                "blocks removed by BlockRemoved",
                v(&self.removed_blocks),
            ),
            ("cleared", "AllBlocksCleared events", v(&self.cleared)),
            (
                "orphan_blocks",
                "stored blocks with an unknown parent",
                v(&self.orphan_blocks),
            ),
            (
                "unknown_removals",
                "removals of blocks not held",
                v(&self.unknown_removals),
            ),
            (
                "block_size_mismatch",
                "stores with another block size",
                v(&self.block_size_mismatch),
            ),
            (
                "other_medium",
                "events of a tier other than GPU",
                v(&self.other_medium),
            ),
            (
                "over_capacity",
                "stores refused at max_blocks_per_node",
                v(&self.over_capacity),
            ),
            (
                "malformed",
                "undecodable messages or events",
                v(&self.malformed),
            ),
            ("gaps", "sequence gaps", v(&self.gaps)),
            ("replays", "gaps filled by replay", v(&self.replays)),
            (
                "resync_clears",
                "gaps not replayable: node forgotten",
                v(&self.resync_clears),
            ),
            (
                "restarts",
                "engine restarts (sequence reset)",
                v(&self.restarts),
            ),
            (
                "disconnects",
                "event subscriptions lost",
                v(&self.disconnects),
            ),
            (
                "lookups",
                "picks looked up in the precise index",
                v(&self.lookups),
            ),
            (
                "hits",
                "lookups where a node held a leading block",
                v(&self.hits),
            ),
            (
                "lookup_blocks",
                "prompt blocks looked up",
                v(&self.lookup_blocks),
            ),
            (
                "hit_blocks",
                "prompt blocks held by the chosen node",
                v(&self.hit_blocks),
            ),
            (
                "fallbacks",
                "picks routed on the approximate index",
                v(&self.fallbacks),
            ),
            ("tokenized", "prompts tokenized", v(&self.tokenized)),
        ]
    }
}

/// The precise state of one route: index, tokenizer and the subscription
/// tasks (aborted when the state is dropped).
pub struct Precise {
    /// The index.
    pub index: Arc<KvIndex>,
    tokenizer: Option<Arc<PromptTokenizer>>,
    /// Prompts tokenized at once off the workers (one per core): more wait.
    tokenizing: tokio::sync::Semaphore,
    max_blocks: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Precise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precise")
            .field("index", &self.index)
            .field("tokenizer", &self.tokenizer.is_some())
            .field("subscriptions", &self.tasks.len())
            .finish()
    }
}

impl Drop for Precise {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Where node `name` (at `host`) publishes by `opts`, if anywhere.
pub fn endpoints_of(name: &str, host: &str, opts: &PreciseOptions) -> Option<NodeEndpoints> {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let events = opts
        .endpoints
        .get(name)
        .cloned()
        .or_else(|| opts.events_port.map(|p| format!("tcp://{host}:{p}")))?;
    let replay = opts
        .replay_endpoints
        .get(name)
        .cloned()
        .or_else(|| opts.replay_port.map(|p| format!("tcp://{host}:{p}")));
    Some(NodeEndpoints {
        events,
        replay,
        topic: opts.topic.clone(),
    })
}

impl Precise {
    /// Load the tokenizer and, inside a Tokio runtime, subscribe to every
    /// node of `nodes` (`(name, host)`) that has an endpoint. `max_blocks`:
    /// most prompt blocks looked up. Errors name the field.
    pub fn start(
        nodes: &[(String, String)],
        opts: &PreciseOptions,
        max_blocks: usize,
    ) -> Result<Precise, (String, String)> {
        for name in opts.endpoints.keys().chain(opts.replay_endpoints.keys()) {
            if !nodes.iter().any(|(n, _)| n == name) {
                return Err((
                    format!("endpoints.{name}"),
                    format!("no node \"{name}\" in the route's pool"),
                ));
            }
        }
        let tokenizer = match &opts.tokenizer {
            Some(path) => {
                let path = Path::new(path);
                let template =
                    ChatTemplate::configured(opts.chat_template.as_deref().map(Path::new), path)
                        .map_err(|e| ("chat_template".to_string(), e))?;
                match &template {
                    Some(t) => tracing::info!(
                        "precise_prefix: chat prompts rendered with the chat template of {}",
                        t.origin()
                    ),
                    None => tracing::warn!(
                        "precise_prefix: no chat template beside {} and none configured; chat prompts are tokenized as `role: text` lines, which finds no precise hit on a real engine",
                        path.display()
                    ),
                }
                let tokenizer =
                    PromptTokenizer::from_file(path).map_err(|e| ("tokenizer".to_string(), e))?;
                Some(Arc::new(tokenizer.with_chat_template(template)))
            }
            None => None,
        };
        let index = Arc::new(KvIndex::new(
            nodes.len(),
            opts.block_size as usize,
            opts.max_blocks_per_node,
        ));
        let mut tasks = Vec::new();
        let runtime = tokio::runtime::Handle::try_current().ok();
        for (i, (name, host)) in nodes.iter().enumerate().take(index.nodes()) {
            let (Some(ep), Some(rt)) = (endpoints_of(name, host, opts), &runtime) else {
                continue;
            };
            tasks.push(rt.spawn(subscriber::run(Arc::clone(&index), i, ep)));
        }
        if tokenizer.is_none() {
            tracing::warn!(
                "precise_prefix: no tokenizer configured; routing on the approximate prefix index"
            );
        } else if tasks.is_empty() {
            tracing::warn!("precise_prefix: no node has a KV events endpoint; routing on the approximate prefix index");
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Precise {
            index,
            tokenizer,
            tokenizing: tokio::sync::Semaphore::new(cores),
            max_blocks,
            tasks,
        })
    }

    /// Whether a tokenizer is loaded (else every pick falls back).
    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// Whether chat prompts are rendered with the model's chat template.
    pub fn has_chat_template(&self) -> bool {
        self.tokenizer
            .as_ref()
            .is_some_and(|t| t.chat_template().is_some())
    }

    /// [`Precise::keys`] for the proxy, once per request before any pick:
    /// tokenizing a few kilobytes of prompt takes about a millisecond, so
    /// it runs on Tokio's blocking pool (at most one prompt per core at a
    /// time) instead of stalling the worker's other connections. `None`
    /// when no keys are needed (no tokenizer, no live event stream) or
    /// they cannot be computed; the pick then falls back as it would.
    pub async fn keys_off_worker(self: &Arc<Self>, prompt: &Arc<Prompt>) -> Option<Vec<u64>> {
        if self.tokenizer.is_none() || !self.index.any_live() {
            return None;
        }
        if matches!(**prompt, Prompt::Ids(_)) {
            return self.keys(prompt);
        }
        let _permit = self.tokenizing.acquire().await.ok()?;
        let (me, prompt) = (Arc::clone(self), Arc::clone(prompt));
        tokio::task::spawn_blocking(move || me.keys(&prompt))
            .await
            .ok()
            .flatten()
    }

    /// The prompt's block keys, or `None` when they cannot be computed.
    pub fn keys(&self, prompt: &Prompt) -> Option<Vec<u64>> {
        let tokenizer = self.tokenizer.as_ref()?;
        if !matches!(prompt, Prompt::Ids(_)) {
            self.index.stats.tokenized.fetch_add(1, Ordering::Relaxed);
        }
        let (tokens, truncated) = tokenizer.tokens(prompt)?;
        let bs = self.index.block_size();
        let mut keys = chain::prompt_keys(chain::root(None), &tokens, bs, self.max_blocks);
        if truncated {
            // The cut may have split the last token: its block is unreliable.
            keys.pop();
        }
        Some(keys)
    }
}
