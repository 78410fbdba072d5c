//! What the data-plane listener answers itself: the health probe and the
//! model list (gathered from the nodes), and the request shapes clients
//! send that are not quite `/v1/...` with a model.

use std::time::Duration;

use crate::common::*;
use infergate::sim::SimConfig;

/// A route taking every request (for probes that are proxied).
const CATCH_ALL: &str = "\n[[routes]]\nname = \"all\"\npool = \"p\"\n";

#[tokio::test]
async fn health_is_answered_from_the_gateways_state() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let reply = get(gw.addr, "/health").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["nodes_available"], 2);
    assert_eq!(reply.node(), "", "answered by the gateway, not a node");
    let head = send(
        http::Request::head(format!("http://{}/health", gw.addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);

    // No node left to serve: 503 with Retry-After, so a balancer in front
    // takes this gateway out of rotation.
    assert!(gw.gateway.set_draining("p", "n0", true));
    assert_eq!(get(gw.addr, "/health").await.status, 200);
    assert!(gw.gateway.set_draining("p", "n1", true));
    let reply = get(gw.addr, "/health").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.json()["status"], "unavailable");
    assert!(gw.gateway.set_draining("p", "n1", false));
    assert_eq!(get(gw.addr, "/health").await.status, 200);
    for node in &nodes {
        assert_eq!(node.stats().requests_by_endpoint.get("/health"), None);
    }
}

#[tokio::test]
async fn health_path_is_configurable_or_proxied() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "").replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nhealth_path = \"/ready\"\n",
    );
    let gw = start_gateway(&text).await;
    assert_eq!(get(gw.addr, "/ready").await.json()["status"], "ok");
    gw.stop().await;

    let text = config_text(&unweighted(&nodes), "round_robin", "").replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nhealth_path = \"\"\n",
    ) + CATCH_ALL;
    let gw = start_gateway(&text).await;
    let reply = get(gw.addr, "/health").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.node(), "sim-0", "proxied to the node");

    // The setting is read per request: a reload applies it.
    let back = config_text(&unweighted(&nodes), "round_robin", "") + CATCH_ALL;
    gw.gateway
        .reload(&infergate::config::Config::from_toml(&back).unwrap())
        .unwrap();
    let reply = get(gw.addr, "/health").await;
    assert_eq!(reply.node(), "", "answered by the gateway again");
    assert_eq!(reply.json()["status"], "ok");
}

/// Nodes of two pools serving different models; routes by glob, by exact
/// name and a glob no node's model matches.
fn two_pool_config(a: &[SimNodeAddr], b: &[SimNodeAddr], extra: &str) -> String {
    let mut text = String::from("[listener]\naddr = \"127.0.0.1:0\"\n");
    text.push_str(extra);
    for (pool, addrs) in [("p", a), ("q", b)] {
        text.push_str(&format!("\n[[pools]]\nname = \"{pool}\"\n"));
        for (i, addr) in addrs.iter().enumerate() {
            text.push_str(&format!(
                "[[pools.nodes]]\nname = \"n{i}\"\naddr = \"{addr}\"\n"
            ));
        }
    }
    text.push_str(
        "\n[[routes]]\nname = \"llama\"\npool = \"p\"\n[routes.match]\nfamily = \"openai\"\nmodel = \"llama-3.1-*\"\n\
         \n[[routes]]\nname = \"mistral\"\npool = \"q\"\n[routes.match]\nfamily = \"openai\"\nmodel = \"mistral-*\"\n\
         \n[[routes]]\nname = \"exact\"\npool = \"q\"\n[routes.match]\nfamily = \"openai\"\nmodel = \"gpt-x\"\n",
    );
    text
}

type SimNodeAddr = std::net::SocketAddr;

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no list: {v}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn models_lists_what_the_nodes_serve() {
    let llama = start_nodes(2, &fast_sim()).await;
    let qwen = start_nodes(
        1,
        &SimConfig {
            model: "qwen2.5-7b-instruct".into(),
            ..fast_sim()
        },
    )
    .await;
    let addrs =
        |nodes: &[infergate::sim::SimNode]| nodes.iter().map(|n| n.addr()).collect::<Vec<_>>();
    let gw = start_gateway(&two_pool_config(&addrs(&llama), &addrs(&qwen), "")).await;

    let reply = get(gw.addr, "/v1/models").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    // The glob route's model comes from the nodes (with their card), the
    // exact name from the route; qwen is served by a node but no route
    // would send a request for it there.
    assert_eq!(ids(&v), ["gpt-x", MODEL]);
    let card = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == MODEL)
        .unwrap();
    assert_eq!(card["max_model_len"], 131072);
    assert_eq!(ids(&get(gw.addr, "/models").await.json()), ids(&v));
    assert_eq!(
        get(gw.addr, &format!("/v1/models/{MODEL}")).await.json()["id"],
        MODEL
    );
    assert_eq!(
        get(gw.addr, "/v1/models/qwen2.5-7b-instruct").await.status,
        404
    );

    // Cached: a second listing does not ask the nodes again.
    let asked = |nodes: &[infergate::sim::SimNode]| -> u64 {
        nodes
            .iter()
            .map(|n| {
                n.stats()
                    .requests_by_endpoint
                    .get("/v1/models")
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    assert_eq!(asked(&llama), 2);
    assert_eq!(asked(&qwen), 1);
    get(gw.addr, "/v1/models").await;
    assert_eq!(asked(&llama), 2);

    // Only available nodes count: with p's nodes drained, only the exact
    // route name is left.
    gw.gateway.set_draining("p", "n0", true);
    gw.gateway.set_draining("p", "n1", true);
    assert_eq!(ids(&get(gw.addr, "/v1/models").await.json()), ["gpt-x"]);
}

#[tokio::test]
async fn models_of_routes_without_a_model_condition() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"n0\"\naddr = \"{}\"\n[[routes]]\nname = \"all\"\npool = \"p\"\n",
        nodes[0].addr()
    );
    let gw = start_gateway(&text).await;
    assert_eq!(ids(&get(gw.addr, "/v1/models").await.json()), [MODEL]);
    gw.stop().await;

    // models = "proxy": a node answers.
    let text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nmodels = \"proxy\"\n",
    );
    let gw = start_gateway(&text).await;
    let reply = get(gw.addr, "/v1/models").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.node(), "sim-0");
    assert_eq!(ids(&reply.json()), [MODEL]);
}

#[tokio::test]
async fn models_survive_a_node_that_does_not_answer() {
    let nodes = start_nodes(2, &fast_sim()).await;
    nodes[1].set_faults(infergate::sim::Faults {
        hang: true,
        ..Default::default()
    });
    let text = config_text(&unweighted(&nodes), "round_robin", "")
        .replace("model = \"llama-3.1-8b-instruct\"", "model = \"llama-*\"");
    let gw = start_gateway(&text).await;
    let started = tokio::time::Instant::now();
    let reply = get(gw.addr, "/v1/models").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "one bounded fetch"
    );
    assert_eq!(ids(&reply.json()), [MODEL]);
}

#[tokio::test]
async fn a_request_without_model_is_a_400_for_model() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let body = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
    let reply = post(gw.addr, "/v1/chat/completions", body.to_string()).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(nodes[0].stats().requests_total, 0);
    // A path no route takes is still a 404.
    let reply = post(gw.addr, "/v1/rerank", body.to_string()).await;
    assert_eq!(reply.status, 400, "rerank also needs a model here");
    let reply = post(gw.addr, "/tokenize", body.to_string()).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn unprefixed_openai_paths_are_classified() {
    let (echo, _task) = start_echo().await;
    let gw = start_gateway(&config_text(&[(echo, 1)], "round_robin", "")).await;
    for path in ["/embeddings", "/chat/completions", "/completions"] {
        let body = serde_json::json!({"model": MODEL, "input": "x", "prompt": "x",
            "messages": [{"role": "user", "content": "x"}]});
        let reply = post(gw.addr, path, body.to_string()).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.json()["path"], path, "forwarded as sent");
    }
}
