//! AI-aware policies through a real gateway in front of simulated nodes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use infergate::sim::{Faults, SimConfig, SimNode};

fn small_fast() -> SimConfig {
    SimConfig {
        time_scale: 0.01,
        ..SimConfig::small()
    }
}

fn conversation(system: &str, turns: &[String], user: Option<&str>) -> String {
    let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
    for (i, t) in turns.iter().enumerate() {
        messages.push(serde_json::json!({"role": "user", "content": t}));
        if i + 1 < turns.len() {
            messages.push(serde_json::json!({"role": "assistant", "content": format!("answer {i} {}", "ok ".repeat(40))}));
        }
    }
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": messages,
        "max_tokens": 4,
    });
    if let Some(u) = user {
        body["user"] = serde_json::json!(u);
    }
    body.to_string()
}

fn hit_rate(nodes: &[SimNode]) -> f64 {
    let (mut h, mut q) = (0, 0);
    for n in nodes {
        let s = n.stats();
        h += s.prefix_hits_tokens;
        q += s.prefix_queries_tokens;
    }
    h as f64 / q.max(1) as f64
}

/// Six multi-turn sessions, interleaved, each with its own long system
/// prompt; returns the nodes each session was served by and the hit rate.
async fn run_sessions(policy: &str) -> (Vec<HashSet<String>>, f64) {
    let nodes = start_nodes(4, &small_fast()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), policy, "")).await;
    let sessions = 6;
    let systems: Vec<String> = (0..sessions)
        .map(|s| format!("system prompt {s}: {}", "rules and context ".repeat(110)))
        .collect();
    let mut turns: Vec<Vec<String>> = vec![Vec::new(); sessions];
    let mut served: Vec<HashSet<String>> = vec![HashSet::new(); sessions];
    for turn in 0..5 {
        for s in 0..sessions {
            turns[s].push(format!(
                "question {turn} of session {s} {}",
                "words ".repeat(30)
            ));
            let reply = post(
                gw.addr,
                "/v1/chat/completions",
                conversation(&systems[s], &turns[s], None),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            served[s].insert(reply.node());
        }
    }
    let rate = hit_rate(&nodes);
    let failures: Vec<u64> = gw.gateway.table().pools[0]
        .nodes
        .iter()
        .map(|n| n.load.failures())
        .collect();
    if served.iter().any(|s| s.len() > 1) {
        eprintln!("DIAG {policy}: served {served:?}, node failures {failures:?}");
    }
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
    (served, rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_aware_keeps_sessions_home_and_beats_round_robin_hit_rate() {
    let (served, aware_rate) = run_sessions("prefix_aware").await;
    for (s, nodes) in served.iter().enumerate() {
        assert_eq!(nodes.len(), 1, "session {s} served by {nodes:?}");
    }
    // Sessions spread over the fleet rather than piling on one node.
    let homes: HashSet<&String> = served.iter().flatten().collect();
    assert!(homes.len() >= 3, "{homes:?}");
    let (_, rr_rate) = run_sessions("round_robin").await;
    assert!(
        aware_rate > rr_rate + 0.15,
        "prefix_aware {aware_rate:.2} vs round_robin {rr_rate:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_user_on_one_node_and_spreads_users() {
    let nodes = start_nodes(4, &small_fast()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "consistent_hash", "")).await;
    let mut by_user: HashMap<String, HashSet<String>> = HashMap::new();
    for round in 0..3 {
        for u in 0..24 {
            let user = format!("user-{u}");
            let body = conversation("sys", &[format!("hello {round}")], Some(&user));
            let reply = post(gw.addr, "/v1/chat/completions", body).await;
            assert_eq!(reply.status, 200);
            by_user.entry(user).or_default().insert(reply.node());
        }
    }
    for (user, nodes) in &by_user {
        assert_eq!(nodes.len(), 1, "{user} on {nodes:?}");
    }
    let used: HashSet<&String> = by_user.values().flatten().collect();
    assert!(used.len() >= 3, "users all on {used:?}");
    // A header key works too.
    gw.stop().await;
    let gw = start_gateway(&config_text(
        &unweighted(&nodes),
        "consistent_hash",
        "[routes.balance]\nhash_key = \"header:x-session\"\n",
    ))
    .await;
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("content-type", "application/json")
            .header("x-session", "abc")
            .body(http_body_util::Full::new(bytes::Bytes::from(chat(
                "hi", false, 2,
            ))))
            .unwrap();
        seen.insert(send(req).await.node());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
}

/// A node whose scraped queue is over `max_queue` stops getting requests
/// from the AI-aware policies (they skip saturated nodes while others are
/// eligible) and gets them back once a scrape shows it recovered.
///
/// The proxy's own eligibility check (`Node::is_saturated`) is not wired on
/// this branch; this exercises the policies' preference and the scraper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_node_is_avoided_until_it_recovers() {
    let nodes = start_nodes(2, &small_fast()).await;
    let text = config_text(&unweighted(&nodes), "composite", "").replace(
        "\n[[routes]]",
        "[pools.capacity]\ninterval = \"50ms\"\nmax_queue = 2\n\n[[routes]]",
    );
    let gw = start_gateway(&text).await;
    // Flood node 0 directly: 40 long requests, batch limit 32, so it queues.
    nodes[0].set_faults(Faults {
        slowdown: 20.0,
        ..Faults::default()
    });
    let target = nodes[0].addr();
    let flood: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                post(target, "/v1/chat/completions", chat("busy", false, 2000)).await
            })
        })
        .collect();
    let saturated = eventually(Duration::from_secs(5), || nodes[0].stats().waiting > 2).await;
    assert!(
        saturated,
        "node 0 did not queue: {:?}",
        nodes[0].stats().waiting
    );
    // Wait for a scrape to see it.
    let node0 = gw.gateway.table().pools[0].nodes[0].clone();
    assert!(
        eventually(Duration::from_secs(2), || node0
            .is_saturated(infergate::fleet::now_ns()))
        .await,
        "scraper did not mark node 0 saturated"
    );
    for i in 0..20 {
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            chat(&format!("q{i}"), false, 2),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.node(),
            "sim-1",
            "request {i} went to the saturated node"
        );
    }
    // Recover: cancel the flood (the sim frees aborted sequences) and speed up.
    for f in &flood {
        f.abort();
    }
    nodes[0].set_faults(Faults::default());
    assert!(
        eventually(Duration::from_secs(5), || !node0
            .is_saturated(infergate::fleet::now_ns()))
        .await,
        "node 0 never recovered"
    );
    let mut back = false;
    for i in 0..40 {
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            chat(&format!("r{i}"), false, 2),
        )
        .await;
        if reply.node() == "sim-0" {
            back = true;
            break;
        }
    }
    assert!(back, "node 0 got no requests after recovering");
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_responses_feed_latency_estimates_and_tokens_are_released() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "peak_ewma", "")).await;
    for i in 0..6 {
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            chat(&format!("s{i}"), true, 8),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let table = gw.gateway.table();
    let now = infergate::fleet::now_ns();
    let sampled = table.pools[0]
        .nodes
        .iter()
        .filter(|n| n.load.ai.ttft_secs(now).is_some() && n.load.ai.tpot_secs(now).is_some())
        .count();
    assert!(sampled >= 1);
    for n in &table.pools[0].nodes {
        assert!(
            eventually(Duration::from_secs(2), || n
                .load
                .ai
                .prompt_tokens_in_flight()
                == 0
                && n.load.ai.output_tokens_in_flight() == 0
                && n.outstanding() == 0)
            .await
        );
    }
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
}

/// A reload that keeps the pool's nodes (here: new weights) keeps the
/// prefix index, so conversations stay on the node that caches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_survives_a_reload_that_keeps_the_nodes() {
    let nodes = start_nodes(4, &small_fast()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "prefix_aware", "")).await;
    let systems = session_systems(6);
    let homes = open_sessions(gw.addr, &systems).await;
    let reweighted: Vec<_> = nodes.iter().map(|n| (n.addr(), 3)).collect();
    let config =
        infergate::config::Config::from_toml(&config_text(&reweighted, "prefix_aware", ""))
            .unwrap();
    gw.gateway.reload(&config).unwrap();
    for (s, system) in systems.iter().enumerate() {
        assert_eq!(
            second_turn(gw.addr, system, s).await,
            homes[s],
            "session {s} left its node after the reload"
        );
    }
}

/// Affinity follows nodes by name across a reload that removes one node and
/// adds another at the front (every remaining node changes position), as
/// editing the pool through the console does.
#[tokio::test]
async fn prefix_affinity_survives_nodes_added_and_removed() {
    let nodes = start_nodes(5, &small_fast()).await;
    let config = |members: &[usize]| {
        let mut text =
            String::from("[listener]\naddr = \"127.0.0.1:0\"\n\n[[pools]]\nname = \"p\"\n");
        for &i in members {
            text.push_str(&format!(
                "[[pools.nodes]]\nname = \"sim-{i}\"\naddr = \"{}\"\n",
                nodes[i].addr()
            ));
        }
        text.push_str(&format!(
            "\n[[routes]]\nname = \"r\"\npool = \"p\"\npolicy = \"prefix_aware\"\n[routes.match]\nfamily = \"openai\"\nmodel = \"{MODEL}\"\n"
        ));
        text
    };
    let gw = start_gateway(&config(&[0, 1, 2, 3])).await;
    let systems = session_systems(8);
    let homes = open_sessions(gw.addr, &systems).await;
    // sim-0 leaves, sim-4 joins in front: every remaining node changes position.
    let changed = infergate::config::Config::from_toml(&config(&[4, 3, 1, 2])).unwrap();
    gw.gateway.reload(&changed).unwrap();
    let mut kept = 0;
    for (s, system) in systems.iter().enumerate() {
        if homes[s] == "sim-0" {
            continue;
        }
        assert_eq!(
            second_turn(gw.addr, system, s).await,
            homes[s],
            "session {s} left its node after the pool changed"
        );
        kept += 1;
    }
    assert!(
        kept >= 4,
        "only {kept} sessions had a home that stayed: {homes:?}"
    );
}

/// Long shared system prompts, one per session.
fn session_systems(sessions: usize) -> Vec<String> {
    (0..sessions)
        .map(|s| format!("system prompt {s}: {}", "rules and context ".repeat(110)))
        .collect()
}

fn first_turn(s: usize) -> Vec<String> {
    vec![format!(
        "first question of session {s} {}",
        "words ".repeat(30)
    )]
}

/// Send each session's first turn; the node each landed on.
async fn open_sessions(addr: std::net::SocketAddr, systems: &[String]) -> Vec<String> {
    let mut homes = Vec::new();
    for (s, system) in systems.iter().enumerate() {
        homes.push(start_session(addr, system, s).await);
    }
    homes
}

/// Send session `s`'s second turn; the node it landed on.
async fn second_turn(addr: std::net::SocketAddr, system: &str, s: usize) -> String {
    let reply = post(addr, "/v1/chat/completions", later_turn(system, s)).await;
    assert_eq!(reply.status, 200);
    reply.node()
}

/// A hot prompt (one system prompt shared by every session) is held by
/// two nodes, each busy with one request; the other two are idle. A new
/// session of it starts on an idle node, copying the shared prompt there
/// (`prompt_shares::widen`: its share of the requests allows all four
/// nodes). With 8 prompts in use, the same prompt's new session stays
/// with its holders: copying one of many prompts evicts the others'
/// conversations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_prompts_new_sessions_start_on_idle_nodes_one_of_eight_stays() {
    for prompts in [1, 8] {
        let nodes = start_nodes(4, &small_fast()).await;
        // A request here weighs about 1.1 (1 + its ~500 tokens / 4096):
        // 3 more than the least loaded node overload a node (to make the
        // second holder below), 2 or 1 more are within the bound.
        let gw = start_gateway(&config_text(
            &unweighted(&nodes),
            "prefix_aware",
            "[routes.balance]\nbalance_abs_threshold = 2.5\n",
        ))
        .await;
        let systems = session_systems(prompts);
        let system = |s: usize| systems[s % prompts].as_str();
        let by_name = |name: &str| nodes.iter().position(|n| n.name() == name).unwrap();
        // Sessions of prompt 0 are 0, 8, 16, ...: the shares count 40
        // requests (8 prompts: 5 of prompt 0).
        let mut homes = Vec::new();
        for s in 0..40 {
            homes.push(by_name(&start_session(gw.addr, system(s), s).await));
        }
        let home = homes[0];
        assert!(
            (0..40).step_by(8).all(|s| homes[s] == home),
            "{prompts} prompt(s): sessions of one prompt start on its node while all are idle: {homes:?}"
        );
        let table = gw.gateway.table();
        let outstanding = |i: usize| table.pools[0].nodes[i].outstanding();
        // Later turns of `sessions` (homed on node `i`) held in flight there:
        // the node answers them a minute late, and new requests at once.
        let hold = |i: usize, sessions: &[usize]| {
            nodes[i].set_faults(Faults {
                added_latency_ms: 60_000,
                ..Faults::default()
            });
            sessions
                .iter()
                .map(|&s| {
                    let (addr, body) = (gw.addr, later_turn(system(s), s));
                    tokio::spawn(async move { post(addr, "/v1/chat/completions", body).await })
                })
                .collect::<Vec<_>>()
        };
        // Three later turns held at the home overload it: a new session
        // of prompt 0 then starts elsewhere, a second holder.
        let held = hold(home, &[0, 8, 16]);
        assert!(eventually(Duration::from_secs(5), || outstanding(home) == 3).await);
        nodes[home].set_faults(Faults::default());
        let second = by_name(&start_session(gw.addr, system(40), 40).await);
        assert_ne!(
            second, home,
            "{prompts} prompt(s): the overloaded home lost its match"
        );
        held.iter().for_each(|h| h.abort());
        assert!(eventually(Duration::from_secs(10), || outstanding(home) == 0).await);
        // One later turn held at each holder: both are one request busier
        // than the two idle nodes, within the overload bound.
        let mut held = Vec::new();
        for (i, s) in [(home, 0), (second, 40)] {
            held.extend(hold(i, &[s]));
            assert!(eventually(Duration::from_secs(5), || outstanding(i) == 1).await);
            nodes[i].set_faults(Faults::default());
        }
        let started = by_name(&start_session(gw.addr, system(48), 48).await);
        assert_eq!(
            started != home && started != second,
            prompts == 1,
            "{prompts} prompt(s): holders {home} and {second} (1 request each), new session on {started}"
        );
        held.iter().for_each(|h| h.abort());
        gw.stop().await;
        for n in nodes {
            n.shutdown().await;
        }
    }
}

/// Send session `s`'s first turn; the node that served it.
async fn start_session(addr: std::net::SocketAddr, system: &str, s: usize) -> String {
    let body = conversation(system, &first_turn(s), None);
    let reply = post(addr, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.node()
}

/// Session `s`'s second turn (its first turn and answer before it).
fn later_turn(system: &str, s: usize) -> String {
    let mut turns = first_turn(s);
    turns.push(format!("second question of session {s}"));
    conversation(system, &turns, None)
}

/// A pool of 72 nodes: every session's next turn comes back to the node
/// that served its first, also on the nodes past the 64th. The prefix
/// memory keeps nodes in groups of 64; before, only the first 64 were
/// remembered, so a session that started on a later node moved on its
/// next turn and prefilled its whole prompt again elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_come_home_on_a_pool_past_64_nodes() {
    let n = 72;
    let nodes = start_nodes(n, &small_fast()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "prefix_aware", "")).await;
    let systems = session_systems(n);
    let homes = open_sessions(gw.addr, &systems).await;
    let index = |name: &str| {
        name.strip_prefix("sim-")
            .and_then(|i| i.parse::<usize>().ok())
    };
    let far = homes
        .iter()
        .filter(|h| index(h).is_some_and(|i| i >= 64))
        .count();
    assert!(far > 0, "no session started past node 63: {homes:?}");
    // In reverse order: a pick's rotating start (ties among idle nodes)
    // is then unrelated to where the session started.
    for (s, system) in systems.iter().enumerate().rev() {
        assert_eq!(
            second_turn(gw.addr, system, s).await,
            homes[s],
            "session {s}"
        );
    }
    gw.stop().await;
    for node in nodes {
        node.shutdown().await;
    }
}
