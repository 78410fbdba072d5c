//! LoRA adapters (issue #16, item 3): the simulator serves them as vLLM
//! does, and the AI-aware policies send an adapter's requests to nodes
//! that hold it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use infergate::sim::SimConfig;
use tokio::sync::Mutex;

const ADAPTERS: usize = 8;

fn lora_sim() -> SimConfig {
    SimConfig {
        time_scale: 0.01,
        enable_lora: true,
        lora_modules: (0..ADAPTERS).map(|i| format!("adapter-{i}")).collect(),
        max_loras: 2,
        // Loading an adapter into a GPU slot: 50 ms (simulated).
        lora_load_secs: 0.05,
        ..SimConfig::small()
    }
}

fn body(model: &str, text: &str) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_serves_loads_and_refuses_adapters_as_vllm() {
    let nodes = start_nodes(1, &lora_sim()).await;
    let addr = nodes[0].addr();
    let ok = post(addr, "/v1/chat/completions", body("adapter-3", "hi")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["model"], "adapter-3");
    let unknown = post(addr, "/v1/chat/completions", body("nope", "hi")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "NotFoundError");
    // Runtime loading and unloading.
    let load =
        serde_json::json!({"lora_name": "fresh", "lora_path": "/adapters/fresh"}).to_string();
    let r = post(addr, "/v1/load_lora_adapter", load.clone()).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("added successfully"), "{}", r.text());
    assert_eq!(post(addr, "/v1/load_lora_adapter", load).await.status, 400);
    let models = get(addr, "/v1/models").await.json();
    let fresh = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "fresh")
        .cloned()
        .unwrap();
    assert_eq!(fresh["parent"], MODEL);
    assert_eq!(
        post(addr, "/v1/chat/completions", body("fresh", "x"))
            .await
            .status,
        200
    );
    let unload = serde_json::json!({"lora_name": "fresh"}).to_string();
    assert_eq!(
        post(addr, "/v1/unload_lora_adapter", unload.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        post(addr, "/v1/unload_lora_adapter", unload).await.status,
        404
    );
    assert_eq!(
        post(addr, "/v1/chat/completions", body("fresh", "x"))
            .await
            .status,
        404
    );
    // The metric vLLM exports, with max_lora.
    let metrics = get(addr, "/metrics").await.text();
    assert!(
        metrics.contains("vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\""),
        "{metrics}"
    );
    let s = nodes[0].stats();
    assert_eq!((s.lora_loads, s.lora_hits), (2, 0));
    for n in nodes {
        n.shutdown().await;
    }
}

/// Requests served, per adapter and node.
type Served = HashMap<String, HashMap<String, usize>>;

/// Requests each of the 8 clients sends, one after another.
const REQUESTS_PER_WORKER: usize = 80;

/// 8 adapters on 4 nodes with 2 adapter slots each, one adapter hot (40 %
/// of requests). Returns the LoRA hit rate (requests whose adapter was
/// resident) and, per adapter, how many requests each node served.
async fn run(policy: &str) -> (f64, Served) {
    let nodes = start_nodes(4, &lora_sim()).await;
    let mut text = config_with(
        &unweighted(&nodes),
        policy,
        "[pools.capacity]\ninterval = \"50ms\"\ntimeout = \"1s\"\n",
        "[routes.balance]\nbalance_abs_threshold = 4\n",
    );
    // The route takes any model: the adapters' names too.
    text = text.replace(&format!("model = \"{MODEL}\"\n"), "");
    let gw = start_gateway(&text).await;
    let served: Arc<Mutex<Served>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let served = served.clone();
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w);
                for i in 0..REQUESTS_PER_WORKER {
                    let adapter = if rng.f64() < 0.4 {
                        0
                    } else {
                        rng.usize(1..ADAPTERS)
                    };
                    let model = format!("adapter-{adapter}");
                    let reply = post(
                        addr,
                        "/v1/chat/completions",
                        body(&model, &format!("w{w} q{i}")),
                    )
                    .await;
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    served
                        .lock()
                        .await
                        .entry(model)
                        .or_default()
                        .entry(reply.node())
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let (mut hits, mut loads) = (0, 0);
    for n in &nodes {
        let s = n.stats();
        hits += s.lora_hits;
        loads += s.lora_loads;
    }
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
    let served = Arc::try_unwrap(served).unwrap().into_inner();
    (hits as f64 / (hits + loads).max(1) as f64, served)
}

/// The share of a quiet adapter's requests served by the node that served
/// it most, averaged over the quiet adapters (1..ADAPTERS). With 8
/// adapters on 8 slots the adapters churn, so over a whole run a quiet
/// adapter may visit every node; what affinity keeps is that most of its
/// requests go to one place.
fn quiet_concentration(served: &Served) -> f64 {
    let shares: Vec<f64> = (1..ADAPTERS)
        .filter_map(|i| served.get(&format!("adapter-{i}")))
        .map(|per_node| {
            let total: usize = per_node.values().sum();
            let top = per_node.values().copied().max().unwrap_or(0);
            top as f64 / total.max(1) as f64
        })
        .collect();
    shares.iter().sum::<f64>() / shares.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_affinity_raises_the_lora_hit_rate() {
    let _quiet = quiet_machine().await;
    let (baseline, baseline_served) = run("least_outstanding").await;
    let (aware, served) = run("prefix_aware").await;
    let (composite, _) = run("composite").await;
    let (base_conc, aware_conc) = (
        quiet_concentration(&baseline_served),
        quiet_concentration(&served),
    );
    eprintln!(
        "LORA hit rate: least_outstanding {:.1} %, prefix_aware {:.1} %, composite {:.1} %; \
         quiet adapters' top-node share: least_outstanding {:.2}, prefix_aware {:.2}",
        baseline * 100.0,
        aware * 100.0,
        composite * 100.0,
        base_conc,
        aware_conc
    );
    eprintln!("LORA requests per adapter and node (prefix_aware): {served:?}");
    // The gap moves from run to run (8 clients interleaving on 8 adapter
    // slots): over 320 requests it measured 11 to 39 points, so a
    // 20-point margin failed now and then; over 640, 23 to 35 points (4
    // runs). Without affinity the gap is noise around 0.
    assert!(aware > baseline + 0.1, "{aware} vs {baseline}");
    assert!(composite > baseline + 0.1, "{composite} vs {baseline}");
    // Quiet adapters keep to one node for most of their requests...
    assert!(
        aware_conc > base_conc + 0.15,
        "{aware_conc:.2} vs {base_conc:.2}"
    );
    // ...while the hot one (40 % of the load, more than one node can take
    // alongside its share of the rest) is spread.
    let hot_nodes = served.get("adapter-0").map_or(0, |m| m.len());
    assert!(hot_nodes >= 2, "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_model_is_not_treated_as_an_adapter() {
    // Base-model requests never appear in vllm:lora_requests_info, so they
    // spread by load as before: over all nodes.
    let nodes = start_nodes(3, &lora_sim()).await;
    let text = config_with(
        &unweighted(&nodes),
        "prefix_aware",
        "[pools.capacity]\ninterval = \"50ms\"\n",
        "",
    );
    let gw = start_gateway(&text).await;
    let mut seen = HashSet::new();
    for i in 0..12 {
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            body(MODEL, &format!("distinct {i} {}", "x".repeat(200))),
        )
        .await;
        assert_eq!(reply.status, 200);
        seen.insert(reply.node());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
}
