//! Discovery: where a pool's nodes come from. Apart from selection
//! (`balance`) and health (`health`), as in Pingora's load-balancing crate:
//! a source only says which nodes exist; the gateway turns each set it
//! reports into a new route table through the same swap a config reload
//! uses, so node state (load, health, slow start, prefix affinity) carries
//! over by (pool, node) name.
//!
//! Sources, one file each: the config file itself (`[[pools.nodes]]`, no
//! code here), [`dns`] (A/AAAA and SRV re-resolved on an interval) and
//! [`kubernetes`] (a Service's EndpointSlices, watched). A source that
//! fails keeps its last reported set: a pool never empties because a
//! resolver or the API server blinked. A node that appears ramps up with
//! the pool's slow start (its state is new); one that disappears gets no
//! new requests while those in flight finish on the table they started
//! with.

mod config;
pub mod dns;
pub mod kubernetes;

use std::collections::HashMap;
use std::sync::Arc;

pub use config::{DiscoveryConfig, DnsDiscovery, KubernetesDiscovery};

use crate::config::{Config, NodeConfig};

/// Pod annotation that sets a discovered node's weight.
pub const WEIGHT_ANNOTATION: &str = "infergate.io/weight";

/// Pod annotation that sets a discovered node's `max_concurrent`.
pub const MAX_CONCURRENT_ANNOTATION: &str = "infergate.io/max-concurrent";

/// A node a source found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FoundNode {
    /// Name, unique within the pool (a pod's name, or `ip:port`).
    pub name: String,
    /// `ip:port` to connect to.
    pub addr: String,
    /// Weight from the node itself (a pod annotation), over the pool's.
    pub weight: Option<u32>,
    /// `max_concurrent` from the node itself, over the pool's.
    pub max_concurrent: Option<u32>,
    /// The pod behind it (Kubernetes), for its annotations.
    pub pod: Option<String>,
}

/// Where a source reports the node set it sees now (the whole set, each
/// time it changes).
pub type Sink = Arc<dyn Fn(Vec<FoundNode>) + Send + Sync>;

/// A running source; dropping it stops it.
pub struct SourceHandle(tokio::task::JoinHandle<()>);

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the dashboard, API and console show as a node's origin.
pub fn source_label(config: &DiscoveryConfig) -> String {
    match (&config.dns, &config.kubernetes) {
        (_, Some(k8s)) => format!(
            "kubernetes:{}/{}",
            k8s.namespace.as_deref().unwrap_or("-"),
            k8s.service
        ),
        (Some(dns), None) => {
            let first = dns.names.first().or(dns.srv.first());
            format!("dns:{}", first.map(String::as_str).unwrap_or("-"))
        }
        (None, None) => "discovery".into(),
    }
}

/// Start the source `config` names for `pool`, reporting to `sink`. Needs a
/// Tokio runtime.
pub fn spawn(pool: &str, config: &DiscoveryConfig, sink: Sink) -> SourceHandle {
    let pool = pool.to_string();
    let max = config.max_nodes;
    let bounded: Sink = Arc::new(move |mut nodes: Vec<FoundNode>| {
        nodes.sort();
        nodes.dedup_by(|a, b| a.name == b.name);
        if nodes.len() > max {
            tracing::warn!(pool = %pool, found = nodes.len(), max, "discovery found more nodes than discovery.max_nodes; the rest are left out");
            nodes.truncate(max);
        }
        sink(nodes)
    });
    let task = match (&config.dns, &config.kubernetes) {
        (_, Some(k8s)) => tokio::spawn(kubernetes::run(k8s.clone(), bounded)),
        (Some(dns), None) => tokio::spawn(dns::run(dns.clone(), bounded)),
        (None, None) => tokio::spawn(async {}),
    };
    SourceHandle(task)
}

/// The nodes of `found` as config entries, with the pool's defaults where
/// the node says nothing.
pub fn node_configs(found: &[FoundNode], config: &DiscoveryConfig) -> Vec<NodeConfig> {
    let source = source_label(config);
    found
        .iter()
        .map(|f| NodeConfig {
            name: f.name.clone(),
            addr: f.addr.clone(),
            weight: f.weight.unwrap_or(config.weight),
            max_concurrent: f.max_concurrent.or(config.max_concurrent),
            max_inflight_tokens: config.max_inflight_tokens,
            draining: false,
            source: Some(source.clone()),
            // A per-node power model is file-only; discovered nodes use the
            // pool's `[pools.energy]` exporter or model.
            power: None,
        })
        .collect()
}

/// `base` with the found nodes of its discovered pools filled in (pools
/// nothing was found for yet stay empty).
pub fn effective(base: &Config, found: &HashMap<String, Vec<FoundNode>>) -> Config {
    let mut config = base.clone();
    for pool in &mut config.pools {
        if let (Some(discovery), Some(nodes)) = (&pool.discovery, found.get(&pool.name)) {
            pool.nodes = node_configs(nodes, discovery);
        }
    }
    config
}

/// How a node set changed, for the log.
pub fn difference(old: &[FoundNode], new: &[FoundNode]) -> (Vec<String>, Vec<String>) {
    let added = new
        .iter()
        .filter(|n| !old.iter().any(|o| o.name == n.name))
        .map(|n| n.name.clone())
        .collect();
    let removed = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "[[pools]]\nname = \"p\"\n[pools.discovery]\nweight = 3\nmax_concurrent = 8\n\
        [pools.discovery.kubernetes]\nservice = \"vllm\"\nnamespace = \"llm\"\n\
        [[routes]]\nname = \"r\"\npool = \"p\"\n";

    fn found(name: &str, addr: &str) -> FoundNode {
        FoundNode {
            name: name.into(),
            addr: addr.into(),
            weight: None,
            max_concurrent: None,
            pod: None,
        }
    }

    #[test]
    fn discovered_pool_may_start_empty_and_fills_with_defaults() {
        let base = Config::from_toml(BASE).unwrap();
        assert!(base.pools[0].nodes.is_empty());
        let mut map = HashMap::new();
        let mut b = found("b", "10.0.0.2:8000");
        b.weight = Some(7);
        map.insert("p".to_string(), vec![found("a", "10.0.0.1:8000"), b]);
        let config = effective(&base, &map);
        config.validate().unwrap();
        let nodes = &config.pools[0].nodes;
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[0].weight, nodes[0].max_concurrent), (3, Some(8)));
        assert_eq!(nodes[1].weight, 7, "the annotation wins over the default");
        assert_eq!(nodes[0].source.as_deref(), Some("kubernetes:llm/vllm"));
    }

    #[test]
    fn listed_nodes_and_discovery_exclude_each_other() {
        let text = BASE.replace(
            "[[routes]]",
            "[[pools.nodes]]\nname = \"x\"\naddr = \"127.0.0.1:1\"\n[[routes]]",
        );
        let e = Config::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("pools[0].nodes"), "{e}");
    }

    #[test]
    fn difference_names_added_and_removed() {
        let (added, removed) = difference(
            &[found("a", "1.1.1.1:1"), found("b", "1.1.1.2:1")],
            &[found("b", "1.1.1.2:1"), found("c", "1.1.1.3:1")],
        );
        assert_eq!((added, removed), (vec!["c".into()], vec!["a".into()]));
    }
}
