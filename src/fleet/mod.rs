//! The fleet: runtime state of pools and their nodes.
//!
//! Configuration says which nodes exist; this module holds what the gateway
//! knows about them while it runs (in-flight requests, counters). A node's
//! [`NodeLoad`] outlives config reloads: the registry hands the same load
//! object to the new [`Node`] when a reload keeps a node of the same pool and
//! name, so requests in flight keep being counted against it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::uri::Authority;

mod ai;
pub mod capacity;
pub mod lora;
pub mod power;

pub use ai::{at_ns, expected_output, now_ns, AiLoad, PeakEwma, DEFAULT_EXPECTED_OUTPUT};

/// Live load counters of one node. Updated on every request with relaxed
/// atomics; no lock on the data path.
///
/// Laid out in declaration order (`repr(C)`): what every attempt writes
/// when it begins and ends (the counts here, then the tokens in flight
/// that open [`AiLoad`]) comes first, next to the `Arc`'s own count, so
/// an attempt writes one cache line of the node and not three. Workers on
/// other cores write the same node's counters, so each line written is a
/// line taken from the other core (callgrind of a small POST: the counts
/// at offsets 0x240, 0xe0 and 0x0 of the allocation before). One line
/// if the allocation starts one: jemalloc's size classes for this size
/// (640 B to 1 KiB) do; nothing forces it.
#[derive(Debug, Default)]
#[repr(C)]
pub struct NodeLoad {
    outstanding: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// AI-aware signals: tokens in flight, latency EWMAs, scraped capacity.
    pub ai: AiLoad,
    /// Health state (active checks, outlier ejection, draining), kept
    /// across reloads with the counters.
    pub health: crate::health::NodeHealth,
    /// Power, energy and parking state (`fleet::power`).
    pub power: power::NodePower,
}

impl NodeLoad {
    /// Requests currently in flight to the node.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }
    /// Attempts sent to the node since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Attempts that failed at the node (connect error, timeout, 5xx, broken stream).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Record a failed attempt.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// One node of a pool as the running config sees it.
#[derive(Debug)]
pub struct Node {
    /// Name, unique within its pool.
    pub name: String,
    /// `host:port` the gateway connects to.
    pub addr: Authority,
    /// Speak TLS to it (`https://` address).
    pub https: bool,
    /// Relative share of traffic for weighted policies (>= 1).
    pub weight: u32,
    /// Most requests the node may have in flight, if limited.
    pub max_concurrent: Option<u32>,
    /// Most tokens (prompt estimate + expected output) in flight, if limited.
    pub max_inflight_tokens: Option<u64>,
    /// Live counters, shared across config reloads.
    pub load: Arc<NodeLoad>,
    /// Where it came from: `None` for the config file, else the discovery
    /// source (`kubernetes:ns/service`, `dns:name`).
    pub source: Option<String>,
}

impl Node {
    /// A node with fresh counters (tests, benchmarks).
    pub fn new(name: impl Into<String>, addr: Authority, weight: u32) -> Node {
        Node {
            name: name.into(),
            addr,
            https: false,
            weight: weight.max(1),
            max_concurrent: None,
            max_inflight_tokens: None,
            load: Arc::new(NodeLoad::default()),
            source: None,
        }
    }

    /// Requests currently in flight to the node.
    #[inline]
    pub fn outstanding(&self) -> u64 {
        self.load.outstanding()
    }

    /// True when the node has reached its concurrency or token limit.
    #[inline]
    pub fn is_full(&self) -> bool {
        let requests_full = self
            .max_concurrent
            .is_some_and(|max| self.outstanding() >= u64::from(max));
        let tokens_full = self.max_inflight_tokens.is_some_and(|max| {
            let ai = &self.load.ai;
            ai.prompt_tokens_in_flight() + ai.output_tokens_in_flight() >= max
        });
        requests_full || tokens_full
    }

    /// Count a new attempt against the node; the guard ends it when dropped.
    pub fn begin_request(&self) -> InFlight {
        self.load.requests.fetch_add(1, Ordering::Relaxed);
        self.load.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: Arc::clone(&self.load),
            attempt: ai::Attempt::default(),
        }
    }
}

/// An attempt in flight to a node. Dropping it (response finished, client
/// went away, error) decrements the node's outstanding count exactly once.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<NodeLoad>,
    attempt: ai::Attempt,
}

impl InFlight {
    /// The load counters this attempt is counted in.
    pub fn load(&self) -> &NodeLoad {
        &self.load
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.attempt.end(&self.load);
    }
}

/// A named set of nodes serving the same models.
#[derive(Debug)]
pub struct Pool {
    /// Pool name from the config.
    pub name: String,
    /// Nodes in config order; policies address them by index.
    pub nodes: Vec<Arc<Node>>,
    /// Percent of nodes that must be available to stay out of panic mode
    /// (0: never panic).
    pub panic_threshold: u32,
    /// How long a node that refused connections or failed its last
    /// requests counts as known dead (the pool's base ejection time).
    pub failure_window_ms: u64,
    /// TLS settings for its `https://` nodes.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Pool {
    /// A pool with the default panic settings.
    pub fn new(name: impl Into<String>, nodes: Vec<Arc<Node>>) -> Pool {
        Pool {
            name: name.into(),
            nodes,
            panic_threshold: crate::health::DEFAULT_PANIC_THRESHOLD,
            failure_window_ms: crate::health::OutlierConfig::default()
                .base_ejection_time
                .as_millis() as u64,
            tls: crate::tls::default_client_config(),
        }
    }

    /// The scheme to reach `node` with.
    pub fn scheme(node: &Node) -> &'static str {
        if node.https {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the pool is in panic mode now ([`crate::health::in_panic`]).
    pub fn in_panic(&self, now_ms: u64) -> bool {
        crate::health::in_panic(
            &self.nodes,
            self.panic_threshold,
            now_ms,
            self.failure_window_ms,
        )
    }
}

/// Keeps [`NodeLoad`]s alive across reloads, keyed by (pool, node).
#[derive(Debug, Default)]
pub struct LoadRegistry {
    loads: Mutex<HashMap<(String, String), Arc<NodeLoad>>>,
}

impl LoadRegistry {
    /// The load object for `pool`/`node`, created on first use. Called only
    /// when a config is built, never on the request path.
    pub fn load_for(&self, pool: &str, node: &str) -> Arc<NodeLoad> {
        let mut map = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry((pool.to_string(), node.to_string())).or_default())
    }

    /// Forget nodes that are not in `keep` and have nothing in flight.
    pub fn retain(&self, keep: &[(String, String)]) {
        let mut map = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, v| keep.contains(k) || v.outstanding() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guard_counts_once() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let g1 = n.begin_request();
        let g2 = n.begin_request();
        assert_eq!(n.outstanding(), 2);
        drop(g1);
        assert_eq!(n.outstanding(), 1);
        drop(g2);
        assert_eq!(n.outstanding(), 0);
        assert_eq!(n.load.requests(), 2);
    }

    #[test]
    fn registry_reuses_load_across_reloads() {
        let r = LoadRegistry::default();
        let a = r.load_for("p", "n");
        let b = r.load_for("p", "n");
        assert!(Arc::ptr_eq(&a, &b));
        r.retain(&[]);
        let c = r.load_for("p", "n");
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn full_respects_limit() {
        let mut n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        n.max_concurrent = Some(1);
        assert!(!n.is_full());
        let _g = n.begin_request();
        assert!(n.is_full());
    }

    #[test]
    fn full_respects_token_limit() {
        use crate::classify::{ApiFamily, Endpoint, Head, RequestClass};
        let mut n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        n.max_inflight_tokens = Some(1000);
        let mut class = RequestClass::from_head(Head {
            family: ApiFamily::OpenAi,
            endpoint: Endpoint::ChatCompletions,
            path_model: None,
            parse_body: true,
            asked_priority: None,
        });
        class.prompt_tokens = 600;
        class.max_tokens = Some(300);
        let first = n.begin_request_for(&class);
        assert!(!n.is_full(), "900 of 1000 tokens");
        let second = n.begin_request_for(&class);
        assert!(n.is_full(), "1800 of 1000 tokens");
        drop(second);
        assert!(!n.is_full());
        drop(first);
    }
}
