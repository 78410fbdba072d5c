//! Precise prefix-cache routing end to end: simulated nodes publish vLLM's
//! KV events over ZMQ, the gateway's index follows them (gaps, restarts),
//! agrees with the nodes' tokenization, and routes on the real cache.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use infergate::classify::{classify_body, classify_head, ClassifyOptions};
use infergate::config::precise::PreciseOptions;
use infergate::kvindex::Precise;
use infergate::node_groups::Groups;
use infergate::sim::{Faults, KvEventsConfig, SimConfig, SimNode};

const WAIT: Duration = Duration::from_secs(10);

/// The fleet tokenizer in a file of its own.
fn tokenizer_file() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "infergate-precise-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, infergate::workload::fleet_tokenizer_json()).unwrap();
    path.to_string_lossy().into_owned()
}

fn sim_config(tokenizer: &str, replay: bool) -> SimConfig {
    SimConfig {
        tokenizer: Some(tokenizer.to_string()),
        kv_events: KvEventsConfig {
            enable_kv_cache_events: true,
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: replay.then(|| "tcp://127.0.0.1:0".to_string()),
            ..KvEventsConfig::default()
        },
        ..fast_sim()
    }
}

async fn start(n: usize, tokenizer: &str, replay: bool) -> Vec<SimNode> {
    start_nodes(n, &sim_config(tokenizer, replay)).await
}

fn options(nodes: &[SimNode], tokenizer: &str) -> PreciseOptions {
    let mut o = PreciseOptions {
        tokenizer: Some(tokenizer.to_string()),
        ..PreciseOptions::default()
    };
    for (i, n) in nodes.iter().enumerate() {
        o.endpoints
            .insert(format!("n{i}"), n.kv_events_endpoint().unwrap().to_string());
        if let Some(r) = n.kv_replay_endpoint() {
            o.replay_endpoints.insert(format!("n{i}"), r.to_string());
        }
    }
    o
}

async fn subscribe(nodes: &[SimNode], tokenizer: &str) -> Precise {
    let names: Vec<(String, String)> = (0..nodes.len())
        .map(|i| (format!("n{i}"), "127.0.0.1".to_string()))
        .collect();
    let p = Precise::start(&names, &options(nodes, tokenizer), 256).unwrap();
    let all: Vec<usize> = (0..nodes.len()).collect();
    assert!(
        eventually(WAIT, || p.index.live_nodes() == all).await,
        "subscriptions never came up"
    );
    p
}

/// How many leading blocks of `keys` each of nodes 0 and 1 holds (of
/// those in `ask`).
fn match_lengths(
    index: &infergate::kvindex::index::KvIndex,
    keys: &[u64],
    ask: &[usize],
) -> [u32; 2] {
    let mut m = [0; 2];
    index.match_lengths(keys, &Groups::of(ask), &mut m);
    m
}

/// A prompt of `words` words from the fleet's vocabulary, distinct per `seed`.
fn prompt(seed: usize, words: usize) -> String {
    const V: [&str; 8] = [
        "cache", "prefix", "gateway", "token", "batch", "model", "node", "queue",
    ];
    // The seed comes first, so prompts differ from their first block on.
    let mut out = format!("{seed}{seed}{seed}:");
    for i in 0..words {
        out.push(' ');
        out.push_str(V[(i * 7 + seed * 3 + i / 5) % V.len()]);
    }
    out
}

async fn ask(node: &SimNode, content: &str) {
    let r = post(node.addr(), "/v1/chat/completions", chat(content, false, 4)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The index holds exactly the blocks node `i`'s cache holds.
fn in_step(p: &Precise, nodes: &[SimNode], i: usize) -> bool {
    let cached = nodes[i].cached_block_hashes().len() as u64;
    cached > 0 && p.index.blocks_of(i) == cached
}

/// The gateway's keys for a chat body, as the policy computes them.
fn keys_for(p: &Precise, body: &str) -> Vec<u64> {
    let head = classify_head(
        &http::Method::POST,
        "/v1/chat/completions",
        (&http::HeaderMap::new()).into(),
    );
    let opts = ClassifyOptions {
        capture_prompt_bytes: 1 << 16,
        ..ClassifyOptions::default()
    };
    let class = classify_body(head, body.as_bytes(), &opts).unwrap();
    p.keys(class.prompt.as_deref().unwrap()).unwrap()
}

#[tokio::test]
async fn events_arrive_and_gateway_keys_match_the_nodes_cache() {
    let tok = tokenizer_file();
    let nodes = start(2, &tok, true).await;
    let p = subscribe(&nodes, &tok).await;
    for s in 0..3 {
        ask(&nodes[0], &prompt(s, 120)).await;
    }
    ask(&nodes[1], &prompt(7, 120)).await;
    assert!(
        eventually(WAIT, || in_step(&p, &nodes, 0) && in_step(&p, &nodes, 1)).await,
        "index {} / {} blocks, caches {} / {}",
        p.index.blocks_of(0),
        p.index.blocks_of(1),
        nodes[0].cached_block_hashes().len(),
        nodes[1].cached_block_hashes().len()
    );
    // The gateway tokenizes the request the way the node did: every full
    // block of the prompt is found on the node that served it, none on the other.
    for (s, home) in [(0, 0), (2, 0), (7, 1)] {
        let keys = keys_for(&p, &chat(&prompt(s, 120), false, 4));
        assert!(keys.len() >= 5, "{} blocks", keys.len());
        let m = match_lengths(&p.index, &keys, &[0, 1]);
        assert_eq!(m[home] as usize, keys.len(), "prompt {s}");
        assert_eq!(m[1 - home], 0, "prompt {s}");
    }
    assert_eq!(p.index.stats.orphan_blocks.load(Ordering::Relaxed), 0);
    assert_eq!(p.index.stats.gaps.load(Ordering::Relaxed), 0);
}

/// A model directory as a real model ships it: `tokenizer.json`,
/// `tokenizer_config.json` with its special tokens and, when `template`,
/// a `chat_template.jinja` (Llama 3 style: header tokens, trimmed content).
fn model_dir(template: bool) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "infergate-model-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        infergate::workload::fleet_tokenizer_json(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token":"<|begin_of_text|>","eos_token":"<|eot_id|>"}"#,
    )
    .unwrap();
    if template {
        std::fs::write(
            dir.join("chat_template.jinja"),
            "{{- bos_token }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + eos_token }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
        )
        .unwrap();
    }
    dir
}

#[tokio::test]
async fn chat_prompts_match_through_the_models_chat_template() {
    // The nodes render chat with the model's template, as vLLM does.
    let model = model_dir(true);
    let tok = model.join("tokenizer.json").to_string_lossy().into_owned();
    let nodes = start(2, &tok, false).await;
    let system = prompt(3, 60);
    let body = |question: &str| {
        serde_json::json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": format!("  {system}  ")},
                {"role": "user", "content": [{"type": "text", "text": question}, {"type": "text", "text": "thanks"}]},
            ],
            "max_tokens": 4,
        })
        .to_string()
    };
    // One gateway finds the same template beside the tokenizer; the other
    // has the tokenizer alone.
    let p = subscribe(&nodes, &tok).await;
    assert!(p.has_chat_template());
    let bare = model_dir(false);
    let bare_tok = bare.join("tokenizer.json").to_string_lossy().into_owned();
    let q = subscribe(&nodes, &bare_tok).await;
    assert!(!q.has_chat_template());
    let r = post(
        nodes[0].addr(),
        "/v1/chat/completions",
        body(&prompt(4, 60)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // With the template the gateway computes the blocks the node cached:
    // all on node 0, none on node 1.
    assert!(eventually(WAIT, || in_step(&p, &nodes, 0) && in_step(&q, &nodes, 0)).await);
    let keys = keys_for(&p, &body(&prompt(4, 60)));
    assert!(keys.len() >= 8, "{} blocks", keys.len());
    let m = match_lengths(&p.index, &keys, &[0, 1]);
    assert_eq!((m[0] as usize, m[1]), (keys.len(), 0));
    // Another question after the same system prompt shares its leading blocks.
    let other = keys_for(&p, &body(&prompt(5, 60)));
    let m = match_lengths(&p.index, &other, &[0, 1]);
    assert!(
        m[0] >= 4 && (m[0] as usize) < other.len(),
        "{} of {}",
        m[0],
        other.len()
    );
    // A prompt cut at the capture limit gives a prefix of the whole, still
    // all on node 0.
    let head = infergate::classify::classify_head(
        &http::Method::POST,
        "/v1/chat/completions",
        (&http::HeaderMap::new()).into(),
    );
    let opts = ClassifyOptions {
        capture_prompt_bytes: 400,
        ..ClassifyOptions::default()
    };
    let class = classify_body(head, body(&prompt(4, 60)).as_bytes(), &opts).unwrap();
    let cut = p.keys(class.prompt.as_deref().unwrap()).unwrap();
    assert!(
        !cut.is_empty() && cut.len() < keys.len(),
        "{} of {}",
        cut.len(),
        keys.len()
    );
    assert_eq!(cut[..], keys[..cut.len()]);
    // Without the template (`role: text` lines) not one block matches.
    let keys = keys_for(&q, &body(&prompt(4, 60)));
    let m = match_lengths(&q.index, &keys, &[0, 1]);
    assert_eq!((m[0], m[1]), (0, 0));
    // Named explicitly, the template is used all the same.
    let mut o = options(&nodes, &bare_tok);
    o.chat_template = Some(
        model
            .join("chat_template.jinja")
            .to_string_lossy()
            .into_owned(),
    );
    let names = [
        ("n0".to_string(), "127.0.0.1".to_string()),
        ("n1".into(), "127.0.0.1".into()),
    ];
    assert!(Precise::start(&names, &o, 256).unwrap().has_chat_template());
    o.chat_template = Some("/nonexistent/chat_template.jinja".into());
    let e = Precise::start(&names, &o, 256).unwrap_err();
    assert_eq!(e.0, "chat_template", "{e:?}");
    for d in [model, bare] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[tokio::test]
async fn a_gap_is_replayed_and_without_replay_the_node_is_forgotten() {
    let tok = tokenizer_file();
    let mut nodes = start(1, &tok, true).await;
    nodes.extend(start(1, &tok, false).await);
    let p = subscribe(&nodes, &tok).await;
    for (i, n) in nodes.iter().enumerate() {
        ask(n, &prompt(10 + i, 100)).await;
    }
    assert!(eventually(WAIT, || in_step(&p, &nodes, 0) && in_step(&p, &nodes, 1)).await);
    // The next two batches of each node are lost on the PUB socket.
    for n in &nodes {
        n.drop_kv_batches(2);
    }
    for s in 0..3 {
        for (i, n) in nodes.iter().enumerate() {
            ask(n, &prompt(20 + 10 * i + s, 100)).await;
        }
    }
    let s = &p.index.stats;
    assert!(eventually(WAIT, || s.gaps.load(Ordering::Relaxed) == 2).await);
    // With a replay socket the missing batches are fetched: in step again.
    assert!(
        eventually(WAIT, || in_step(&p, &nodes, 0)).await,
        "index {} cache {}",
        p.index.blocks_of(0),
        nodes[0].cached_block_hashes().len()
    );
    assert_eq!(s.replays.load(Ordering::Relaxed), 1);
    // Without one the node's old blocks are dropped: the index holds only
    // what was stored after the gap, less than the node's cache.
    assert_eq!(s.resync_clears.load(Ordering::Relaxed), 1);
    let (held, cached) = (
        p.index.blocks_of(1),
        nodes[1].cached_block_hashes().len() as u64,
    );
    assert!(held > 0 && held < cached, "held {held} of {cached}");
}

#[tokio::test]
async fn a_restarted_node_is_cleared() {
    let tok = tokenizer_file();
    let nodes = start(1, &tok, false).await;
    let p = subscribe(&nodes, &tok).await;
    ask(&nodes[0], &prompt(1, 100)).await;
    ask(&nodes[0], &prompt(2, 100)).await;
    assert!(eventually(WAIT, || in_step(&p, &nodes, 0)).await);
    let before = p.index.blocks_of(0);
    nodes[0].restart().await.unwrap();
    // The new process numbers its batches from 0 again: its first batch
    // tells the subscriber, which forgets the old process's blocks.
    ask(&nodes[0], &prompt(3, 40)).await;
    let s = &p.index.stats;
    assert!(eventually(WAIT, || s.restarts.load(Ordering::Relaxed) == 1).await);
    assert!(eventually(WAIT, || in_step(&p, &nodes, 0)).await);
    assert!(p.index.blocks_of(0) < before);
    let old = keys_for(&p, &chat(&prompt(1, 100), false, 4));
    let m = match_lengths(&p.index, &old, &[0]);
    assert_eq!(m[0], 0, "a block of the old process is still indexed");
}

#[tokio::test]
async fn the_gateway_routes_to_the_node_that_really_holds_the_prefix() {
    let tok = tokenizer_file();
    let nodes = start(3, &tok, true).await;
    let mut endpoints = String::new();
    for (i, n) in nodes.iter().enumerate() {
        endpoints.push_str(&format!("n{i} = \"{}\", ", n.kv_events_endpoint().unwrap()));
    }
    let route_extra = format!(
        "[routes.balance.precise]\ntokenizer = \"{tok}\"\nendpoints = {{ {} }}\n",
        endpoints.trim_end_matches(", ")
    );
    let gw = start_gateway(&config_text(
        &unweighted(&nodes),
        "precise_prefix",
        &route_extra,
    ))
    .await;
    let table = gw.gateway.table();
    let precise = Arc::clone(table.routes[0].policy.precise().expect("precise state"));
    assert!(eventually(WAIT, || precise.index.live_nodes() == [0, 1, 2]).await);
    // Warm the prefixes on node 2 only, behind the gateway's back: the
    // approximate index has never seen them.
    let prompts: Vec<String> = (0..4).map(|s| prompt(40 + s, 150)).collect();
    for p in &prompts {
        ask(&nodes[2], p).await;
    }
    assert!(eventually(WAIT, || in_step(&precise, &nodes, 2)).await);
    for (k, p) in prompts.iter().enumerate() {
        // A follow-up turn: the cached prompt plus more.
        let body = chat(&format!("{p} and one more question {k}"), false, 4);
        let r = post(gw.addr, "/v1/chat/completions", body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.node(), nodes[2].name(), "prompt {k}");
    }
    let s = &precise.index.stats;
    assert_eq!(s.hits.load(Ordering::Relaxed), 4);
    assert!(s.hit_blocks.load(Ordering::Relaxed) >= 4 * 5);
    // The same counters and per-node states in /metrics.
    let text = infergate::telemetry::prom::render(&gw.gateway.telemetry, &table.fleet_view());
    assert!(
        text.contains("infergate_kv_index_hits_total{route=\"r\"} 4"),
        "{text}"
    );
    assert!(text.contains("infergate_kv_index_live{route=\"r\",node=\"n2\"} 1"));
    assert!(text.contains("infergate_kv_index_tokenizer{route=\"r\"} 1"));
}

#[tokio::test]
async fn a_request_is_tokenized_once_however_often_it_is_picked() {
    let tok = tokenizer_file();
    let nodes = start(1, &tok, false).await;
    nodes[0].set_faults(Faults {
        added_latency_ms: 600,
        ..Faults::default()
    });
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n\n[[pools]]\nname = \"p\"\nqueue_size = 8\nqueue_timeout = \"20s\"\n\
         [[pools.nodes]]\nname = \"n0\"\naddr = \"{}\"\nmax_concurrent = 1\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\npolicy = \"precise_prefix\"\n\
         [routes.balance.precise]\ntokenizer = \"{tok}\"\nendpoints = {{ n0 = \"{}\" }}\n\
         [routes.match]\nfamily = \"openai\"\nmodel = \"{MODEL}\"\n",
        nodes[0].addr(),
        nodes[0].kv_events_endpoint().unwrap()
    );
    let gw = start_gateway(&text).await;
    let table = gw.gateway.table();
    let precise = Arc::clone(table.routes[0].policy.precise().expect("precise state"));
    assert!(eventually(WAIT, || precise.index.live_nodes() == [0]).await);
    let addr = gw.addr;
    let first = tokio::spawn(async move {
        post(
            addr,
            "/v1/chat/completions",
            chat(&prompt(1, 100), false, 4),
        )
        .await
    });
    let node = Arc::clone(&table.routes[0].pool.nodes[0]);
    assert!(eventually(WAIT, || node.outstanding() == 1).await);
    // The node is at its limit: the second request waits in the queue and
    // is picked again at every recheck (50 ms) until the first is done.
    let second = post(
        addr,
        "/v1/chat/completions",
        chat(&prompt(2, 100), false, 4),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(first.await.unwrap().status, 200);
    let s = &precise.index.stats;
    let picks = s.lookups.load(Ordering::Relaxed);
    assert!(
        picks >= 4,
        "the second request was picked {picks} times in all"
    );
    // Yet each prompt was tokenized once.
    assert_eq!(s.tokenized.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn without_a_tokenizer_the_policy_falls_back_and_counts_it() {
    let tok = tokenizer_file();
    let nodes = start(2, &tok, false).await;
    let route_extra = format!(
        "[routes.balance.precise]\nendpoints = {{ n0 = \"{}\", n1 = \"{}\" }}\n",
        nodes[0].kv_events_endpoint().unwrap(),
        nodes[1].kv_events_endpoint().unwrap()
    );
    let gw = start_gateway(&config_text(
        &unweighted(&nodes),
        "precise_prefix",
        &route_extra,
    ))
    .await;
    let table = gw.gateway.table();
    let precise = Arc::clone(table.routes[0].policy.precise().unwrap());
    assert!(!precise.has_tokenizer());
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        chat(&prompt(1, 50), false, 4),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(precise.index.stats.fallbacks.load(Ordering::Relaxed), 1);
    assert_eq!(precise.index.stats.lookups.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_bad_tokenizer_path_or_unknown_node_is_refused_with_its_field() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = config_text(
        &unweighted(&nodes),
        "precise_prefix",
        "[routes.balance.precise]\ntokenizer = \"/nonexistent/tokenizer.json\"\n",
    );
    let config = infergate::config::Config::from_toml(&text).unwrap();
    let Err(err) = infergate::proxy::Gateway::new(&config) else {
        panic!("accepted")
    };
    let err = err.to_string();
    assert!(err.contains("routes[0].balance.precise.tokenizer"), "{err}");
    let text = config_text(
        &unweighted(&nodes),
        "precise_prefix",
        "[routes.balance.precise]\nendpoints = { nx = \"tcp://127.0.0.1:5557\" }\n",
    );
    let config = infergate::config::Config::from_toml(&text).unwrap();
    let Err(err) = infergate::proxy::Gateway::new(&config) else {
        panic!("accepted")
    };
    let err = err.to_string();
    assert!(
        err.contains("routes[0].balance.precise.endpoints.nx"),
        "{err}"
    );
}

#[tokio::test]
async fn the_simulator_serves_tokenize_and_render_as_vllm_does() {
    let tok = tokenizer_file();
    let nodes = start(1, &tok, false).await;
    let t = infergate::kvindex::PromptTokenizer::from_file(std::path::Path::new(&tok)).unwrap();
    let content = prompt(3, 30);
    let want = t.encode(&format!("user: {content}\n")).unwrap();
    let body =
        serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    let r = post(nodes[0].addr(), "/tokenize", body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["count"], want.len());
    assert_eq!(v["tokens"], serde_json::json!(want));
    let r = post(
        nodes[0].addr(),
        "/v1/chat/completions/render",
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_ids"], serde_json::json!(want));
    let r = post(
        nodes[0].addr(),
        "/v1/completions/render",
        serde_json::json!({"model": MODEL, "prompt": [5, 6, 7]}).to_string(),
    )
    .await;
    assert_eq!(r.json()[0]["token_ids"], serde_json::json!([5, 6, 7]));
    // Rendering is not inference: nothing reached the engine.
    assert_eq!(nodes[0].cached_block_hashes().len(), 0);
}
