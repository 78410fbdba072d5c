//! `[pools.discovery]`: where a pool's nodes come from when they are not
//! listed in the file — DNS names re-resolved on an interval, or the
//! EndpointSlices of a Kubernetes Service — and the settings every found
//! node gets.

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

/// `[pools.discovery]`: exactly one source, plus per-node defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Resolve DNS names (A/AAAA with a port, or SRV) on an interval.
    #[serde(default)]
    pub dns: Option<DnsDiscovery>,
    /// Watch a Kubernetes Service's EndpointSlices.
    #[serde(default)]
    pub kubernetes: Option<KubernetesDiscovery>,
    /// Weight of every found node (a pod annotation
    /// [`super::WEIGHT_ANNOTATION`] overrides it).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most requests in flight per found node (annotation
    /// [`super::MAX_CONCURRENT_ANNOTATION`] overrides it).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Most tokens in flight per found node.
    #[serde(default)]
    pub max_inflight_tokens: Option<u64>,
    /// Most nodes taken from the source (a bound on what a peer can make
    /// the gateway hold); found nodes past it are left out and logged.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
}

fn default_weight() -> u32 {
    1
}

fn default_max_nodes() -> usize {
    1024
}

/// `[pools.discovery.dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// `host:port` names resolved to every A and AAAA address, each a node
    /// at that port (a headless Service: `vllm.llm.svc.cluster.local:8000`).
    #[serde(default)]
    pub names: Vec<String>,
    /// SRV names (`_http._tcp.vllm.llm.svc.cluster.local`): each target
    /// and port a node, the target resolved to its addresses.
    #[serde(default)]
    pub srv: Vec<String>,
    /// How often the names are resolved again.
    #[serde(
        default = "default_dns_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub interval: Duration,
    /// Name servers to ask (`ip:port`); empty: the system's
    /// (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<String>,
}

fn default_dns_interval() -> Duration {
    Duration::from_secs(10)
}

/// `[pools.discovery.kubernetes]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Namespace of the Service (absent: the gateway's own namespace, or
    /// the kubeconfig context's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service whose EndpointSlices are watched
    /// (`kubernetes.io/service-name`).
    pub service: String,
    /// The Service port to use, by name (absent: the slice's only port,
    /// or its first).
    #[serde(default)]
    pub port_name: Option<String>,
    /// More conditions on the EndpointSlices' labels (`key=value,...`).
    #[serde(default)]
    pub label_selector: Option<String>,
    /// A kubeconfig file (absent: `KUBECONFIG` / `~/.kube/config` when
    /// there is one, else the in-cluster service account, as kube-rs's
    /// `Config::infer` does; in a pod that is the service account).
    #[serde(default)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Read each pod's `infergate.io/weight` and
    /// `infergate.io/max-concurrent` annotations when it joins (needs `get`
    /// on pods besides the EndpointSlice rights).
    #[serde(default)]
    pub pod_annotations: bool,
}

impl DiscoveryConfig {
    /// Every problem, as (field path, message) under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push((format!("{at}.{field}"), message));
        };
        match (&self.dns, &self.kubernetes) {
            (None, None) => problem(
                "dns",
                "give one source: [discovery.dns] or [discovery.kubernetes]".into(),
            ),
            (Some(_), Some(_)) => problem(
                "kubernetes",
                "give one source, not both dns and kubernetes".into(),
            ),
            _ => {}
        }
        if !(1..=10_000).contains(&self.weight) {
            problem("weight", "must be between 1 and 10000".into());
        }
        if self.max_concurrent == Some(0) {
            problem("max_concurrent", "must be at least 1".into());
        }
        if self.max_inflight_tokens == Some(0) {
            problem("max_inflight_tokens", "must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.max_nodes) {
            problem("max_nodes", "must be between 1 and 100000".into());
        }
        if let Some(dns) = &self.dns {
            if dns.names.is_empty() && dns.srv.is_empty() {
                problem("dns.names", "give at least one name or srv name".into());
            }
            for (i, name) in dns.names.iter().enumerate() {
                if let Err(why) = super::dns::split_host_port(name) {
                    problem(&format!("dns.names[{i}]"), why);
                }
            }
            for (i, name) in dns.srv.iter().enumerate() {
                if name.is_empty() || name.contains(':') || name.contains('/') {
                    problem(
                        &format!("dns.srv[{i}]"),
                        format!("`{name}` is not an SRV name (_service._proto.name)"),
                    );
                }
            }
            if dns.interval < Duration::from_millis(100) {
                problem("dns.interval", "must be at least 100ms".into());
            }
            for (i, server) in dns.nameservers.iter().enumerate() {
                if server.parse::<std::net::SocketAddr>().is_err() {
                    problem(
                        &format!("dns.nameservers[{i}]"),
                        format!("`{server}` is not an IP:port address"),
                    );
                }
            }
        }
        if let Some(k8s) = &self.kubernetes {
            if let Some(ns) = &k8s.namespace {
                if !is_dns_label(ns) {
                    problem(
                        "kubernetes.namespace",
                        format!("`{ns}` is not a Kubernetes namespace name"),
                    );
                }
            }
            if !is_dns_label(&k8s.service) {
                problem(
                    "kubernetes.service",
                    format!("`{}` is not a Kubernetes Service name", k8s.service),
                );
            }
            if k8s.port_name.as_deref().is_some_and(str::is_empty) {
                problem("kubernetes.port_name", "must not be empty".into());
            }
            if let Some(selector) = &k8s.label_selector {
                if selector.trim().is_empty() || selector.contains(char::is_control) {
                    problem(
                        "kubernetes.label_selector",
                        "must be a label selector like `key=value,tier!=canary`".into(),
                    );
                }
            }
        }
        problems
    }
}

/// An RFC 1123 label, as Kubernetes names Services and namespaces.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DiscoveryConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn one_source_is_required() {
        let none = parse("weight = 2");
        assert_eq!(none.problems("d")[0].0, "d.dns");
        let both = parse("[dns]\nnames = [\"a:1\"]\n[kubernetes]\nservice = \"vllm\"\n");
        assert_eq!(both.problems("d")[0].0, "d.kubernetes");
        let k8s = parse("[kubernetes]\nservice = \"vllm\"\nnamespace = \"llm\"\n");
        assert!(k8s.problems("d").is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = parse(
            "weight = 0\n[dns]\nnames = [\"nohost\"]\nsrv = [\"a:b\"]\nnameservers = [\"x\"]\ninterval = \"1ms\"\n",
        );
        let paths: Vec<String> = bad.problems("p").into_iter().map(|(p, _)| p).collect();
        for want in [
            "p.weight",
            "p.dns.names[0]",
            "p.dns.srv[0]",
            "p.dns.interval",
            "p.dns.nameservers[0]",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} in {paths:?}");
        }
        let bad = parse("[kubernetes]\nservice = \"Bad_Name\"\n");
        assert_eq!(bad.problems("p")[0].0, "p.kubernetes.service");
        assert!(
            toml::from_str::<DiscoveryConfig>("[kubernetes]\nservice = \"a\"\nport = 1\n").is_err()
        );
    }
}
