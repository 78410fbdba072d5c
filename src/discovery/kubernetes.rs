//! Kubernetes discovery: the EndpointSlices of one Service
//! (`kubernetes.io/service-name=<service>`, plus an optional label
//! selector), listed and watched through the API server with kube-rs's
//! watcher, which re-lists when a watch expires and backs off (0.8 s
//! doubling to 30 s) while the API server cannot be reached; a client that
//! cannot be built yet (kubeconfig or token not mounted) is retried alike.
//!
//! Each ready endpoint address (`conditions.ready` absent or true, as
//! kube-proxy reads it) with the chosen port is a node, named after its
//! pod (`targetRef.name`) or, without one, its `ip:port`. A terminating
//! pod turns not-ready and leaves the pool; its requests in flight finish.
//! While the watch is broken nothing is reported, so the pool keeps the
//! last known set; after a re-list the complete new set replaces it.
//!
//! With `pod_annotations`, each pod's [`super::WEIGHT_ANNOTATION`] and
//! [`super::MAX_CONCURRENT_ANNOTATION`] are read once when it joins (one
//! GET per new pod, remembered while it stays); without them, or when the
//! GET fails, the pool's defaults apply.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::{FoundNode, KubernetesDiscovery, Sink};

/// The label Kubernetes puts on a Service's EndpointSlices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The nodes one EndpointSlice holds for `port_name`.
pub fn slice_nodes(slice: &EndpointSlice, port_name: Option<&str>) -> Vec<FoundNode> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = match port_name {
        Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        None => ports.first(),
    };
    let Some(port) = port
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for endpoint in &slice.endpoints {
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        if !ready {
            continue;
        }
        let pod = endpoint.target_ref.as_ref().and_then(|r| r.name.as_deref());
        for address in &endpoint.addresses {
            let Ok(ip) = address.parse::<std::net::IpAddr>() else {
                continue;
            };
            let addr = std::net::SocketAddr::new(ip, port).to_string();
            let name = match pod {
                Some(pod) if endpoint.addresses.len() == 1 => pod.to_string(),
                _ => addr.clone(),
            };
            nodes.push(FoundNode {
                name,
                addr,
                weight: None,
                max_concurrent: None,
                pod: pod.map(str::to_string),
            });
        }
    }
    nodes
}

/// The client `config` asks for: its kubeconfig file, else
/// `KUBECONFIG` / `~/.kube/config`, else in-cluster (`Config::infer`);
/// and the namespace to watch.
async fn client(config: &KubernetesDiscovery) -> Result<(Client, String), String> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes config (in-cluster or kubeconfig): {e}"))?,
    };
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    let client = Client::try_from(kube_config).map_err(|e| format!("Kubernetes client: {e}"))?;
    Ok((client, namespace))
}

/// The label selector of the Service's slices.
pub fn selector(config: &KubernetesDiscovery) -> String {
    let mut selector = format!("{SERVICE_NAME_LABEL}={}", config.service);
    if let Some(more) = &config.label_selector {
        selector.push(',');
        selector.push_str(more.trim());
    }
    selector
}

/// First wait before building the client again after it failed (the
/// kubeconfig or service account token not there yet); doubles up to
/// [`CLIENT_RETRY_MAX`], like the watcher's own back-off.
const CLIENT_RETRY_FIRST: Duration = Duration::from_millis(800);
/// Longest wait between two attempts to build the client.
const CLIENT_RETRY_MAX: Duration = Duration::from_secs(30);

/// The client, retried with back-off until it can be built.
async fn client_with_retry(config: &KubernetesDiscovery) -> (Client, String) {
    let mut wait = CLIENT_RETRY_FIRST;
    loop {
        match client(config).await {
            Ok(c) => return c,
            Err(e) => {
                tracing::error!(service = %config.service, error = %e, retry_in = ?wait,
                    "kubernetes discovery cannot start; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(CLIENT_RETRY_MAX);
            }
        }
    }
}

/// Watch the Service's EndpointSlices and report each changed set.
pub async fn run(config: KubernetesDiscovery, sink: Sink) {
    let (client, namespace) = client_with_retry(&config).await;
    let pods: Option<Api<Pod>> = config
        .pod_annotations
        .then(|| Api::namespaced(client.clone(), &namespace));
    let mut settings: HashMap<String, PodSettings> = HashMap::new();
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let watch = watcher::watcher(api, watcher::Config::default().labels(&selector(&config)))
        .default_backoff();
    let mut watch = std::pin::pin!(watch);
    let port_name = config.port_name.as_deref();
    // Slices by name: the set the watch has confirmed; `relist` collects a
    // re-list until it is complete, so a half-done list never replaces it.
    let mut slices: BTreeMap<String, Vec<FoundNode>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Vec<FoundNode>>> = None;
    let mut last: Option<Vec<FoundNode>> = None;
    let mut failing = false;
    while let Some(event) = watch.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                relist = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(slice)) => {
                if let Some(relist) = &mut relist {
                    relist.insert(slice_name(&slice), slice_nodes(&slice, port_name));
                }
                false
            }
            Ok(Event::InitDone) => {
                if let Some(done) = relist.take() {
                    slices = done;
                }
                true
            }
            Ok(Event::Apply(slice)) => {
                slices.insert(slice_name(&slice), slice_nodes(&slice, port_name));
                true
            }
            Ok(Event::Delete(slice)) => {
                slices.remove(&slice_name(&slice));
                true
            }
            Err(e) => {
                // Logged once per outage; the watcher backs off and retries.
                if !failing {
                    tracing::warn!(
                        namespace = %namespace,
                        service = %config.service,
                        error = %e,
                        kept = last.as_ref().map_or(0, Vec::len),
                        "kubernetes watch failed; retrying with back-off, keeping the last known nodes"
                    );
                }
                failing = true;
                false
            }
        };
        if !changed {
            continue;
        }
        if failing {
            tracing::info!(namespace = %namespace, service = %config.service, "kubernetes watch recovered");
            failing = false;
        }
        let mut nodes: Vec<FoundNode> = slices.values().flatten().cloned().collect();
        nodes.sort();
        nodes.dedup_by(|a, b| a.name == b.name);
        if let Some(pods) = &pods {
            annotate(pods, &mut settings, &mut nodes).await;
        }
        if last.as_ref() != Some(&nodes) {
            last = Some(nodes.clone());
            sink(nodes);
        }
    }
}

/// What a pod's annotations say (`None`: absent or unreadable).
#[derive(Debug, Clone, Copy, Default)]
struct PodSettings {
    weight: Option<u32>,
    max_concurrent: Option<u32>,
}

/// A pod's settings from its annotations; values out of range are ignored
/// (the pool's defaults apply) with a warning.
fn pod_settings(pod: &Pod) -> PodSettings {
    let annotations = pod.metadata.annotations.as_ref();
    let read = |key: &str, max: u32| -> Option<u32> {
        let text = annotations?.get(key)?;
        match text.trim().parse::<u32>() {
            Ok(v) if (1..=max).contains(&v) => Some(v),
            _ => {
                tracing::warn!(pod = ?pod.metadata.name, annotation = key, value = %text, "annotation ignored: not a number in range");
                None
            }
        }
    };
    PodSettings {
        weight: read(super::WEIGHT_ANNOTATION, 10_000),
        max_concurrent: read(super::MAX_CONCURRENT_ANNOTATION, u32::MAX),
    }
}

/// Fill the nodes' settings from their pods' annotations, asking the API
/// server only for pods not seen before; forget pods that left.
async fn annotate(
    pods: &Api<Pod>,
    known: &mut HashMap<String, PodSettings>,
    nodes: &mut [FoundNode],
) {
    known.retain(|pod, _| nodes.iter().any(|n| n.pod.as_deref() == Some(pod)));
    for node in nodes.iter_mut() {
        let Some(pod) = node.pod.clone() else {
            continue;
        };
        let settings = match known.get(&pod) {
            Some(s) => *s,
            // A failed read is not remembered: the next change asks again.
            None => match pods.get(&pod).await {
                Ok(p) => {
                    let s = pod_settings(&p);
                    known.insert(pod, s);
                    s
                }
                Err(e) => {
                    tracing::warn!(%pod, error = %e, "cannot read the pod's annotations; using the pool's defaults");
                    PodSettings::default()
                }
            },
        };
        node.weight = settings.weight;
        node.max_concurrent = settings.max_concurrent;
    }
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EndpointSlice example of the Kubernetes documentation
    /// (concepts/services-networking/endpoint-slices), with a second,
    /// terminating endpoint.
    const SLICE: &str = r#"{
      "apiVersion": "discovery.k8s.io/v1",
      "kind": "EndpointSlice",
      "metadata": {"name": "example-abc", "labels": {"kubernetes.io/service-name": "example"}},
      "addressType": "IPv4",
      "ports": [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "metrics", "port": 9100}],
      "endpoints": [
        {"addresses": ["10.1.2.3"], "conditions": {"ready": true},
         "hostname": "pod-1", "nodeName": "node-1", "zone": "us-west2-a",
         "targetRef": {"kind": "Pod", "name": "pod-1", "namespace": "default"}},
        {"addresses": ["10.1.2.4"], "conditions": {"ready": false, "serving": true, "terminating": true},
         "targetRef": {"kind": "Pod", "name": "pod-2"}},
        {"addresses": ["10.1.2.5"]}
      ]
    }"#;

    #[test]
    fn ready_endpoints_with_the_named_port_are_nodes() {
        let slice: EndpointSlice = serde_json::from_str(SLICE).unwrap();
        let nodes = slice_nodes(&slice, Some("metrics"));
        let got: Vec<(&str, &str)> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.addr.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("pod-1", "10.1.2.3:9100"),
                ("10.1.2.5:9100", "10.1.2.5:9100")
            ]
        );
        assert_eq!(slice_nodes(&slice, None)[0].addr, "10.1.2.3:80");
        assert!(slice_nodes(&slice, Some("grpc")).is_empty());
    }

    #[test]
    fn selector_adds_the_service_label() {
        let config: KubernetesDiscovery =
            toml::from_str("service = \"vllm\"\nlabel_selector = \"tier=gpu\"").unwrap();
        assert_eq!(
            selector(&config),
            "kubernetes.io/service-name=vllm,tier=gpu"
        );
    }
}
