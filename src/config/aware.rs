//! Config of the AI-aware parts: `[routes.balance]` (options of the
//! AI-aware policies) and `[pools.capacity]` (scraping the nodes' metrics).
//!
//! ```toml
//! [[pools]]
//! name = "chat"
//! [pools.capacity]            # scrape vLLM/SGLang/TGI /metrics
//! interval = "1s"
//! timeout = "5s"              # per scrape; busy vLLM answers slowly
//! path = "/metrics"
//! max_queue = 32              # waiting requests above this: saturated
//! max_kv_usage = 0.95         # KV cache use above this: saturated
//!
//! [[routes]]
//! name = "chat"
//! pool = "chat"
//! policy = "prefix_aware"     # or consistent_hash, peak_ewma, composite
//! [routes.balance]
//! balance_abs_threshold = 64.0
//! balance_rel_threshold = 1.5
//! tokens_per_request = 4096
//! prefix_capacity = 262144
//! hash_key = "header:x-session-id"   # or "user", "cookie:session"
//! load_factor = 1.25
//! virtual_nodes = 100
//! placement = "rendezvous"    # prefix_aware: replicas agree (balance/rendezvous.rs)
//! anchor_blocks = 16             # prefix_aware: the prompt's key for rendezvous order
//! anchor_load_factor = 3.0
//! scorers = { prefix = 3.0, queue = 2.0, kv = 1.0, outstanding = 1.0, latency = 1.0 }
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// Options of the AI-aware balancing policies (`[routes.balance]`). Every
/// field has a default; a policy reads only the fields it uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceOptions {
    /// `prefix_aware`: a node whose load exceeds the least-loaded eligible
    /// node's by more than this many request-equivalents (and by the
    /// relative threshold) loses its cache affinity (SGLang's
    /// `balance_abs_threshold`, and its default 64). Requests in flight do
    /// not say whether a new one waits (a batch has room for many); the
    /// scraped queue does, and `balance::tradeoff` acts on it first.
    pub balance_abs_threshold: f64,
    /// `prefix_aware`: ... and whose load is more than this many times the
    /// least-loaded node's (SGLang's `balance_rel_threshold`).
    pub balance_rel_threshold: f64,
    /// Tokens (in flight, or prompt tokens a node would have to prefill)
    /// that count as one request of load.
    pub tokens_per_request: f64,
    /// `prefix_aware`, `composite`: most entries the prefix index keeps
    /// per route, one per prompt block and group of 64 nodes holding it
    /// (one per block on a pool of up to 64 nodes); the least recently
    /// used are evicted.
    pub prefix_capacity: usize,
    /// `consistent_hash`: where the key comes from: `user` (the body's
    /// `user` field), `header:<name>` or `cookie:<name>`.
    pub hash_key: String,
    /// `consistent_hash`: a node takes at most `ceil(load_factor × average
    /// load)` requests in flight (bounded-load consistent hashing).
    pub load_factor: f64,
    /// `consistent_hash`: ring points per unit of node weight.
    pub virtual_nodes: u32,
    /// `composite`: weights of the scorers.
    pub scorers: ScorerWeights,
    /// How `prefix_aware` places a prompt: `"index"` (this gateway's own
    /// prefix index, least-loaded for new prefixes) or `"rendezvous"`
    /// (rendezvous hashing of the prompt's anchor over the nodes not
    /// overloaded, so several replicas agree; `balance::rendezvous`; the
    /// few anchors that recur often are balanced as a set,
    /// `balance::anchor_table`).
    pub placement: String,
    /// `prefix_aware`: the prompt block whose chain value is the
    /// rendezvous key (64 bytes a block; the shared start of
    /// conversations): the placement key with `placement = "rendezvous"`,
    /// and with `"index"` the tie-break among nodes holding the longest
    /// match near the least load.
    pub anchor_blocks: usize,
    /// `placement = "rendezvous"`: a node keeps its prompts while its load
    /// is below `ceil(anchor_load_factor × (total + 1) / nodes)` (bounded
    /// loads). Looser than `consistent_hash`'s `load_factor`: each replica
    /// sees only its own share of the requests in flight, a node batches
    /// many at once, and at 1.25 one or two running requests already moved
    /// prompts off their node (docs/kubernetes.md has the figures).
    pub anchor_load_factor: f64,
    /// `precise_prefix`: KV-cache events and tokenizer (see `config::precise`).
    pub precise: super::precise::PreciseOptions,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        BalanceOptions {
            balance_abs_threshold: 64.0,
            balance_rel_threshold: 1.5,
            tokens_per_request: 4096.0,
            prefix_capacity: 262_144,
            hash_key: "user".to_string(),
            load_factor: 1.25,
            virtual_nodes: 100,
            scorers: ScorerWeights::default(),
            placement: "index".to_string(),
            anchor_blocks: 16,
            anchor_load_factor: 3.0,
            precise: super::precise::PreciseOptions::default(),
        }
    }
}

/// Weights of the `composite` policy's scorers; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerWeights {
    /// Share of the prompt's blocks the node was recently sent.
    pub prefix: f64,
    /// Fewer waiting + running requests (scraped when fresh, else gateway view).
    pub queue: f64,
    /// Lower scraped KV cache use.
    pub kv: f64,
    /// Fewer requests in flight from this gateway, per weight.
    pub outstanding: f64,
    /// Lower peak-EWMA expected latency.
    pub latency: f64,
}

impl Default for ScorerWeights {
    fn default() -> Self {
        ScorerWeights {
            prefix: 3.0,
            queue: 2.0,
            kv: 1.0,
            outstanding: 1.0,
            latency: 1.0,
        }
    }
}

/// Where a `consistent_hash` key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The body's `user` field.
    User,
    /// A request header (lowercase name).
    Header(String),
    /// A cookie by name.
    Cookie(String),
}

impl HashKey {
    /// Parse `user`, `header:<name>` or `cookie:<name>`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let bad = || format!("`{text}` is not `user`, `header:<name>` or `cookie:<name>`");
        if text == "user" {
            return Ok(HashKey::User);
        }
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "header" => {
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                Ok(HashKey::Header(name.to_ascii_lowercase()))
            }
            "cookie" => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl BalanceOptions {
    /// Problems with these options as `(field path, message)`, paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |field: &str, msg: &str| out.push((format!("{at}.{field}"), msg.to_string()));
        if !(self.balance_abs_threshold.is_finite() && self.balance_abs_threshold >= 0.0) {
            err("balance_abs_threshold", "must be a number >= 0");
        }
        if !(self.balance_rel_threshold.is_finite() && self.balance_rel_threshold >= 1.0) {
            err("balance_rel_threshold", "must be a number >= 1");
        }
        if !(self.tokens_per_request.is_finite() && self.tokens_per_request >= 1.0) {
            err("tokens_per_request", "must be a number >= 1");
        }
        if !(1024..=1 << 26).contains(&self.prefix_capacity) {
            err("prefix_capacity", "must be between 1024 and 67108864");
        }
        if let Err(why) = HashKey::parse(&self.hash_key) {
            err("hash_key", &why);
        }
        if !(self.load_factor.is_finite() && self.load_factor > 1.0 && self.load_factor <= 100.0) {
            err("load_factor", "must be a number above 1 and at most 100");
        }
        if !(self.anchor_load_factor.is_finite()
            && self.anchor_load_factor > 1.0
            && self.anchor_load_factor <= 100.0)
        {
            err(
                "anchor_load_factor",
                "must be a number above 1 and at most 100",
            );
        }
        if !(1..=1000).contains(&self.virtual_nodes) {
            err("virtual_nodes", "must be between 1 and 1000");
        }
        if !["index", "rendezvous"].contains(&self.placement.as_str()) {
            err("placement", "must be \"index\" or \"rendezvous\"");
        }
        if !(1..=4096).contains(&self.anchor_blocks) {
            err("anchor_blocks", "must be between 1 and 4096");
        }
        let s = &self.scorers;
        for (name, w) in [
            ("prefix", s.prefix),
            ("queue", s.queue),
            ("kv", s.kv),
            ("outstanding", s.outstanding),
            ("latency", s.latency),
        ] {
            if !(w.is_finite() && (0.0..=1000.0).contains(&w)) {
                err(
                    &format!("scorers.{name}"),
                    "must be a number from 0 to 1000",
                );
            }
        }
        if s.prefix + s.queue + s.kv + s.outstanding + s.latency <= 0.0 {
            err("scorers", "at least one scorer needs a weight above 0");
        }
        out.extend(self.precise.problems(&format!("{at}.precise")));
        out
    }
}

/// Scraping a pool's nodes' Prometheus metrics (`[pools.capacity]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Time between scrapes of a node. A reading keeps full weight for
    /// `max(3 × interval, interval + timeout)`, then decays (see
    /// `fleet::capacity`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Longest wait for one metrics page. Separate from the interval: a
    /// loaded vLLM can take seconds to answer, and that answer is the one
    /// that matters. Default 5 s (2–3× the slowest answers seen from a
    /// loaded vLLM).
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Path of the metrics page.
    pub path: String,
    /// A node with more waiting requests than this is saturated.
    pub max_queue: Option<u64>,
    /// A node with more KV cache use (0..1) than this is saturated.
    pub max_kv_usage: Option<f64>,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            path: "/metrics".to_string(),
            max_queue: None,
            max_kv_usage: None,
        }
    }
}

impl CapacityConfig {
    /// Problems as `(field path, message)`, paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(3600) {
            out.push((
                format!("{at}.interval"),
                "must be between 10ms and 1h".to_string(),
            ));
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(60) {
            out.push((
                format!("{at}.timeout"),
                "must be between 10ms and 60s".to_string(),
            ));
        }
        if !self.path.starts_with('/') || self.path.parse::<http::Uri>().is_err() {
            out.push((
                format!("{at}.path"),
                "must be a path starting with `/`".to_string(),
            ));
        }
        if let Some(k) = self.max_kv_usage {
            if !(k.is_finite() && (0.0..=1.0).contains(&k)) {
                out.push((
                    format!("{at}.max_kv_usage"),
                    "must be between 0 and 1".to_string(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn config(route_extra: &str, pool_extra: &str) -> String {
        format!(
            "[[pools]]\nname = \"p\"\n{pool_extra}\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\npolicy = \"prefix_aware\"\n{route_extra}\n"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid(e)) => e.iter().map(|e| e.to_string()).collect(),
            Err(e) => vec![e.to_string()],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn policy_alone_still_works_with_default_options() {
        let c = Config::from_toml(&config("", "")).unwrap();
        assert_eq!(c.routes[0].balance, BalanceOptions::default());
        assert!(c.pools[0].capacity.is_none());
    }

    #[test]
    fn balance_table_and_capacity_parse() {
        let c = Config::from_toml(&config(
            "[routes.balance]\nbalance_abs_threshold = 4\nhash_key = \"header:X-Session\"\nscorers = { prefix = 5.0, latency = 0.0 }\n",
            "[pools.capacity]\ninterval = \"250ms\"\nmax_queue = 16\nmax_kv_usage = 0.9\n",
        ))
        .unwrap();
        let b = &c.routes[0].balance;
        assert_eq!(b.balance_abs_threshold, 4.0);
        assert_eq!(b.scorers.prefix, 5.0);
        assert_eq!(b.scorers.queue, 2.0);
        assert_eq!(b.scorers.latency, 0.0);
        assert_eq!(
            HashKey::parse(&b.hash_key),
            Ok(HashKey::Header("x-session".into()))
        );
        let cap = c.pools[0].capacity.as_ref().unwrap();
        assert_eq!(cap.interval, Duration::from_millis(250));
        assert_eq!(cap.path, "/metrics");
        assert_eq!(cap.timeout, Duration::from_secs(5));
        assert_eq!((cap.max_queue, cap.max_kv_usage), (Some(16), Some(0.9)));
    }

    #[test]
    fn bad_options_name_their_field() {
        let e = errors(&config(
            "[routes.balance]\nbalance_abs_threshold = -1\nbalance_rel_threshold = 0.5\nhash_key = \"query:x\"\nload_factor = 1.0\nscorers = { prefix = -2.0 }\n",
            "[pools.capacity]\ninterval = \"1ms\"\ntimeout = \"2m\"\npath = \"metrics\"\nmax_kv_usage = 1.5\n",
        ));
        for want in [
            "routes[0].balance.balance_abs_threshold: must be a number >= 0",
            "routes[0].balance.balance_rel_threshold: must be a number >= 1",
            "routes[0].balance.hash_key:",
            "routes[0].balance.load_factor:",
            "routes[0].balance.scorers.prefix:",
            "pools[0].capacity.interval:",
            "pools[0].capacity.timeout:",
            "pools[0].capacity.path:",
            "pools[0].capacity.max_kv_usage:",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "{want} not in {e:?}");
        }
        let e = errors(&config("[routes.balance]\nbalance_abs = 3\n", ""));
        assert!(e[0].contains("unknown field `balance_abs`"), "{e:?}");
    }
}
