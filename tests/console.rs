//! The configuration console end to end: a gateway with its config file,
//! the admin listener with the config API, and real HTTP between them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use infergate::admin::{self, AdminConfig, AdminServer};
use infergate::config::Config;
use infergate::console::ConfigStore;
use serde_json::{json, Value};

const TOKEN: &str = "test-token-123";

struct Console {
    gw: TestGateway,
    admin: AdminServer,
    store: Arc<ConfigStore>,
    path: PathBuf,
}

/// A scratch file path for tests that run the binary themselves.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infergate-console-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.toml")
}

/// `n` fast simulated nodes behind a round-robin gateway with the console.
async fn console_over(name: &str, n: usize) -> (Vec<infergate::sim::SimNode>, Console) {
    let nodes = start_nodes(n, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let console = start_console(name, &text).await;
    (nodes, console)
}

async fn start_console(name: &str, text: &str) -> Console {
    let (gw, store, admin, path) = start_with_console(name, text, TOKEN).await;
    Console {
        gw,
        admin,
        store,
        path,
    }
}

/// One admin request; `version` goes in If-Match.
async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    version: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("x-infergate-actor", "tester");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(version) = version {
        request = request.header("if-match", format!("\"{version}\""));
    }
    let body = body.map_or(Bytes::new(), |b| Bytes::from(b.to_string()));
    send(request.body(Full::new(body)).unwrap()).await
}

async fn version(admin: SocketAddr) -> String {
    let reply = get(admin, "/api/v1/config").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()["version"].as_str().unwrap().to_string()
}

impl Console {
    async fn stop(self) {
        self.admin.stop().await;
        self.gw.stop().await;
    }
    async fn change(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let v = version(self.admin.addr).await;
        call(self.admin.addr, method, path, Some(TOKEN), Some(&v), body).await
    }
    fn file(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }
    fn file_config(&self) -> Config {
        Config::from_toml(&self.file()).unwrap()
    }
}

async fn served_by(addr: SocketAddr, n: usize, body: &str) -> Vec<String> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let reply = post(addr, "/v1/chat/completions", body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        nodes.push(reply.node());
    }
    nodes
}

#[tokio::test]
async fn api_changes_apply_persist_and_are_audited() {
    let nodes = start_nodes(3, &fast_sim()).await;
    let text = format!(
        "# Our fleet: keep this comment\n{}",
        config_text(&unweighted(&nodes), "round_robin", "")
    );
    let c = start_console("crud", &text).await;
    let admin = c.admin.addr;

    // Read: version, text and a JSON view.
    let read = get(admin, "/api/v1/config").await;
    let body = read.json();
    let v0 = body["version"].as_str().unwrap().to_string();
    assert_eq!(read.headers["etag"].to_str().unwrap(), format!("\"{v0}\""));
    assert_eq!(body["config"]["pools"][0]["nodes"][1]["name"], "n1");
    assert!(body["text"].as_str().unwrap().contains("keep this comment"));

    // Weight: in force, persisted with the comment kept, version moved.
    let reply = c
        .change(
            Method::PUT,
            "/api/v1/config/pools/p/nodes/n0/weight",
            Some(json!({"weight": 5})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let v1 = reply.json()["version"].as_str().unwrap().to_string();
    assert_ne!(v0, v1);
    assert!(reply.json()["diff"]
        .as_str()
        .unwrap()
        .contains("+weight = 5"));
    assert_eq!(c.gw.gateway.table().pools[0].nodes[0].weight, 5);
    assert!(c.file().starts_with("# Our fleet: keep this comment\n"));
    assert_eq!(c.file_config().pools[0].nodes[0].weight, 5);
    assert_eq!(infergate::console::version_of(&c.file()), v1);

    // Drain: no new requests go to it; enable brings it back.
    let reply = c
        .change(Method::POST, "/api/v1/config/pools/p/nodes/n1/drain", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(c.file_config().pools[0].nodes[1].draining);
    let seen = served_by(c.gw.addr, 14, &chat("hi", false, 1)).await;
    assert!(!seen.contains(&"sim-1".to_string()), "{seen:?}");
    let reply = c
        .change(Method::POST, "/api/v1/config/pools/p/nodes/n1/enable", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!c.file_config().pools[0].nodes[1].draining);
    let seen = served_by(c.gw.addr, 14, &chat("hi", false, 1)).await;
    assert!(seen.contains(&"sim-1".to_string()), "{seen:?}");

    // A new model pool with its own policy and thresholds, and its route.
    let qwen = infergate::sim::SimNode::start(
        "qwen-0",
        "127.0.0.1:0".parse().unwrap(),
        infergate::sim::SimConfig {
            model: "qwen-7b".into(),
            ..fast_sim()
        },
    )
    .await
    .unwrap();
    let reply = c
        .change(
            Method::POST,
            "/api/v1/config/pools",
            Some(json!({
                "name": "qwen",
                "queue_size": 16,
                "outlier": {"consecutive_failures": 3},
                "nodes": [{"name": "q0", "addr": qwen.addr().to_string(), "max_concurrent": 8}],
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = c
        .change(
            Method::POST,
            "/api/v1/config/routes",
            Some(
                json!({"name": "qwen", "pool": "qwen", "policy": "least_outstanding",
                        "match": {"family": "openai", "model": "qwen-*"}}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = json!({"model": "qwen-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let seen = served_by(c.gw.addr, 3, &body.to_string()).await;
    assert_eq!(seen, ["qwen-0"; 3]);
    let file = c.file_config();
    assert_eq!(file.pools[1].name, "qwen");
    assert_eq!(file.pools[1].queue_size, 16);
    assert_eq!(file.routes[1].policy, "least_outstanding");

    // An alert rule, added next to the built-in ones and in force.
    let reply = c
        .change(
            Method::POST,
            "/api/v1/config/alerts/rules",
            Some(json!({"name": "QwenSlow", "kind": "latency_p99", "pool": "qwen", "threshold": 2.5, "for": "30s"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rules = c.gw.gateway.telemetry.alerts.rules();
    assert!(rules
        .iter()
        .any(|r| r.name == "QwenSlow" && r.threshold == 2.5));
    assert!(rules.iter().any(|r| r.name == "NodeDown"));

    // Delete: the route first (the pool is still referenced until then).
    let reply = c
        .change(Method::DELETE, "/api/v1/config/pools/qwen", None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("routes[1].pool"), "{}", reply.text());
    let reply = c
        .change(Method::DELETE, "/api/v1/config/routes/qwen", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = c
        .change(Method::DELETE, "/api/v1/config/pools/qwen", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(c.file_config().pools.len(), 1);

    // Rollback to the config the gateway started with: the file comes back
    // byte for byte, comments included, and so does the running config.
    let history = get(admin, "/api/v1/config/history").await.json();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.last().unwrap()["actor"], "start");
    assert_eq!(versions.last().unwrap()["version"], v0.as_str());
    let reply = c
        .change(
            Method::POST,
            "/api/v1/config/rollback",
            Some(json!({"version": v0})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(c.file(), text);
    assert_eq!(c.gw.gateway.table().pools[0].nodes[0].weight, 1);
    assert_eq!(
        c.gw.gateway.telemetry.alerts.rules().len(),
        infergate::alerts::default_rules().len()
    );

    // The audit log has who, what and how, newest first.
    let audit = get(admin, "/api/v1/config/audit").await.json();
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.len() >= 9, "{audit}");
    assert_eq!(entries[0]["action"], format!("rollback to {v0}"));
    assert_eq!(entries[1]["action"], "delete pool qwen");
    assert_eq!(entries[1]["outcome"], "applied");
    assert_eq!(entries[0]["actor"], "tester (127.0.0.1)");
    assert!(entries
        .iter()
        .any(|e| e["outcome"] == "refused" && e["action"] == "delete pool qwen"));
    assert!(entries.iter().any(|e| e["action"] == "drain node p/n1"
        && e["diff"].as_str().unwrap().contains("draining = true")));
    qwen.shutdown().await;
    c.stop().await;
}

#[tokio::test]
async fn concurrent_conflicting_edits_one_wins_and_the_file_matches_it() {
    let (_nodes, c) = console_over("conflict", 2).await;
    let admin = c.admin.addr;
    for round in 0..5u32 {
        let v = version(admin).await;
        let (a, b) = (10 + round * 2, 11 + round * 2);
        let path = "/api/v1/config/pools/p/nodes/n0/weight";
        let (ra, rb) = tokio::join!(
            call(
                admin,
                Method::PUT,
                path,
                Some(TOKEN),
                Some(&v),
                Some(json!({"weight": a}))
            ),
            call(
                admin,
                Method::PUT,
                path,
                Some(TOKEN),
                Some(&v),
                Some(json!({"weight": b}))
            ),
        );
        let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{} / {}", ra.text(), rb.text());
        let (winner, loser) = if ra.status == StatusCode::OK {
            (a, &rb)
        } else {
            (b, &ra)
        };
        let conflict = loser.json();
        assert_eq!(conflict["error"]["type"], "conflict");
        assert_eq!(conflict["error"]["current_version"], version(admin).await);
        assert_eq!(c.file_config().pools[0].nodes[0].weight, winner);
        assert_eq!(c.gw.gateway.table().pools[0].nodes[0].weight, winner);
    }
    c.stop().await;
}

#[tokio::test]
async fn invalid_changes_leave_config_and_file_untouched() {
    let (_nodes, c) = console_over("invalid", 2).await;
    let admin = c.admin.addr;
    let before_file = c.file();
    let before_version = version(admin).await;
    let before_generation = c.gw.gateway.config_status().version;

    let reply = c
        .change(
            Method::PATCH,
            "/api/v1/config/pools/p/nodes/n0",
            Some(json!({"weight": 0})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.json();
    assert_eq!(error["error"]["type"], "invalid");
    assert_eq!(
        error["error"]["errors"][0]["path"], "pools[0].nodes[0].weight",
        "{error}"
    );

    let reply = c
        .change(
            Method::PATCH,
            "/api/v1/config/routes/r",
            Some(json!({"policy": "fastest"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json()["error"]["errors"][0]["path"],
        "routes[0].policy"
    );

    let reply = c
        .change(
            Method::PATCH,
            "/api/v1/config/pools/p",
            Some(json!({"queue_sise": 3})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("queue_sise"), "{}", reply.text());
    assert_eq!(
        reply.json()["error"]["errors"][0]["path"],
        "pools[0].queue_sise"
    );

    // Whole-file replacement: an empty body and a TOML syntax error.
    let put = |body: &'static str| {
        let v = before_version.clone();
        async move {
            let request = Request::put(format!("http://{admin}/api/v1/config"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("if-match", v)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            send(request).await
        }
    };
    let reply = put("").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let reply = put("[[pools]\nname = 1").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("line 1"), "{}", reply.text());

    let reply = c
        .change(
            Method::PATCH,
            "/api/v1/config/pools/nope/nodes/n0",
            Some(json!({"weight": 2})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let reply = c
        .change(
            Method::POST,
            "/api/v1/config/pools/p/nodes",
            Some(json!({"name": "n0", "addr": "127.0.0.1:1"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("already exists"));
    assert_eq!(reply.json()["error"]["errors"][0]["path"], "name");

    // A dry run of a valid change shows the diff and changes nothing.
    let v = version(admin).await;
    let reply = call(
        admin,
        Method::PATCH,
        "/api/v1/config/pools/p/nodes/n1?dry_run=true",
        Some(TOKEN),
        Some(&v),
        Some(json!({"weight": 3})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json()["diff"]
        .as_str()
        .unwrap()
        .contains("+weight = 3"));

    assert_eq!(c.file(), before_file);
    assert_eq!(version(admin).await, before_version);
    assert_eq!(c.gw.gateway.config_status().version, before_generation);
    assert_eq!(c.gw.gateway.table().pools[0].nodes[1].weight, 1);
    c.stop().await;
}

#[tokio::test]
async fn changes_need_the_token_and_a_version() {
    let (_nodes, c) = console_over("auth", 1).await;
    let admin = c.admin.addr;
    let path = "/api/v1/config/pools/p/nodes/n0/drain";
    let v = version(admin).await;
    let none = call(admin, Method::POST, path, None, Some(&v), None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let wrong = call(admin, Method::POST, path, Some("nope"), Some(&v), None).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let unversioned = call(admin, Method::POST, path, Some(TOKEN), None, None).await;
    assert_eq!(unversioned.status, StatusCode::PRECONDITION_REQUIRED);
    let stale = call(
        admin,
        Method::POST,
        path,
        Some(TOKEN),
        Some("0000000000000000"),
        None,
    )
    .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert!(!c.file_config().pools[0].nodes[0].draining);
    let unknown = call(
        admin,
        Method::POST,
        "/api/v1/config/pools/p/nodes/n0/reboot",
        Some(TOKEN),
        Some("*"),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let wrong = call(
        admin,
        Method::PATCH,
        "/api/v1/config/pools",
        Some(TOKEN),
        Some("*"),
        Some(json!({})),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers["allow"], "POST");
    let any = call(admin, Method::POST, path, Some(TOKEN), Some("*"), None).await;
    assert_eq!(any.status, StatusCode::OK, "{}", any.text());
    assert!(c.file_config().pools[0].nodes[0].draining);
    // The token never shows in what the API returns.
    let text = format!(
        "{}\n{}",
        get(admin, "/api/v1/config").await.text(),
        get(admin, "/api/v1/config/audit").await.text()
    );
    assert!(!text.contains(TOKEN));
    c.stop().await;
}

#[tokio::test]
async fn file_edits_and_api_changes_do_not_overwrite_each_other() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let c = start_console("file", &text).await;
    // An invalid hand edit: refused, and the API will not write over it.
    std::fs::write(&c.path, text.replace("round_robin", "nope")).unwrap();
    c.store.poll_file(false).await;
    assert!(c.gw.gateway.config_status().last_error.is_some());
    let reply = c
        .change(
            Method::PUT,
            "/api/v1/config/pools/p/nodes/n0/weight",
            Some(json!({"weight": 4})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.text().contains("edited on disk"), "{}", reply.text());
    assert!(c.file().contains("nope"));
    // Fixed by hand: picked up, audited as the file's, and the API works again.
    std::fs::write(&c.path, text.replace("round_robin", "power_of_two")).unwrap();
    c.store.poll_file(false).await;
    assert_eq!(c.gw.gateway.table().routes[0].policy.name(), "power_of_two");
    let reply = c
        .change(
            Method::PUT,
            "/api/v1/config/pools/p/nodes/n0/weight",
            Some(json!({"weight": 4})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(c.file().contains("power_of_two"));
    let audit = get(c.admin.addr, "/api/v1/config/audit").await.json();
    let actors: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(
        actors[..3],
        ["tester (127.0.0.1)", "file", "tester (127.0.0.1)"]
    );
    c.stop().await;
}

#[tokio::test]
async fn api_changes_under_load_fail_no_request() {
    let _quiet = quiet_machine().await;
    let (_nodes, c) = console_over("load", 3).await;
    let load = Load::start(c.gw.addr, 8, chat("hello there", true, 8), 100_000);
    let policies = [
        "least_outstanding",
        "weighted_round_robin",
        "power_of_two",
        "round_robin",
    ];
    for i in 0..20usize {
        let reply = if i % 2 == 0 {
            c.change(
                Method::PUT,
                &format!("/api/v1/config/pools/p/nodes/n{}/weight", i % 3),
                Some(json!({"weight": 1 + i})),
            )
            .await
        } else {
            c.change(
                Method::PATCH,
                "/api/v1/config/routes/r",
                Some(json!({"policy": policies[i % 4]})),
            )
            .await
        };
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Hand edits of the file under the same load, picked up by the watcher.
    for i in 0..10usize {
        let text = c.file();
        let policy = policies[i % 4];
        let edited = text
            .lines()
            .map(|l| {
                if l.starts_with("policy = ") {
                    format!("policy = \"{policy}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&c.path, edited).unwrap();
        c.store.poll_file(false).await;
        assert_eq!(c.gw.gateway.table().routes[0].policy.name(), policy);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes = load.stop().await;
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    scenario(
        "20 API changes + 10 file edits under load",
        &outcomes,
        None,
        "weights and policy changed through the config API, then the policy by editing the file",
    );
    assert!(outcomes.len() > 50, "{} requests", outcomes.len());
    assert_eq!(failed, 0, "{failed} of {} requests failed", outcomes.len());
    c.stop().await;
}

#[tokio::test]
async fn kill_9_during_persisted_writes_never_tears_the_file() {
    // A large file (300 nodes), so a write takes long enough to be hit.
    let mut text = String::from(
        "# crash test\n[listener]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\n[[pools]]\nname = \"p\"\n",
    );
    for i in 0..300 {
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"n{i}\" # node {i} of the crash test fleet\naddr = \"127.0.0.1:{}\"\n",
            10_000 + i
        ));
    }
    text.push_str(
        "\n[[routes]]\nname = \"r\"\npool = \"p\"\n[routes.match]\nfamily = \"openai\"\n",
    );
    let path = scratch("kill9");
    std::fs::write(&path, &text).unwrap();
    let mut completed = 0usize;
    // A reader that looks at the file all along: with an in-place write it
    // would see empty or half-written files; with write-and-rename, never.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (Arc::clone(&stop), path.clone());
        std::thread::spawn(move || {
            let (mut reads, mut torn) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    reads += 1;
                    if !text.starts_with("# crash test\n")
                        || !text.ends_with("family = \"openai\"\n")
                    {
                        torn += 1;
                    }
                }
            }
            (reads, torn)
        })
    };
    for round in 0..6u64 {
        let (mut child, admin) = spawn_serve(&path, TOKEN, "error", None).await;
        let landed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let landed_in_writer = Arc::clone(&landed);
        let writer = tokio::spawn(async move {
            let mut done = 0usize;
            for i in 0.. {
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    client().request(
                        Request::put(format!(
                            "http://{admin}/api/v1/config/pools/p/nodes/n{}/weight",
                            i % 300
                        ))
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .header("if-match", "*")
                        .body(Full::new(Bytes::from(format!(
                            "{{\"weight\": {}}}",
                            1 + i % 50
                        ))))
                        .unwrap(),
                    ),
                )
                .await;
                match reply {
                    Ok(Ok(r)) if r.status() == StatusCode::OK => {
                        done += 1;
                        landed_in_writer.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            done
        });
        // Let some writes land (however slow the machine is to start the
        // process), then kill -9 at a moment the writes do not see coming.
        let started = std::time::Instant::now();
        while landed.load(std::sync::atomic::Ordering::Relaxed) < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: no write landed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(37 * round)).await;
        child.start_kill().unwrap();
        let _ = child.wait().await;
        completed += writer.await.unwrap_or(0);
        let after = std::fs::read_to_string(&path).unwrap();
        let config = Config::from_toml(&after)
            .unwrap_or_else(|e| panic!("round {round}: file invalid after kill -9: {e}"));
        assert_eq!(config.pools[0].nodes.len(), 300, "round {round}");
        assert!(after.starts_with("# crash test\n"));
        assert!(after.contains("# node 299 of the crash test fleet"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, torn) = reader.join().unwrap();
    println!("kill -9 test: {completed} persisted writes over 6 kills, file valid after each; a concurrent reader saw {torn} torn files in {reads} reads");
    assert_eq!(torn, 0, "a reader saw a partly written file");
    assert!(reads > 100, "the reader barely ran ({reads} reads)");
    assert!(
        completed > 6,
        "only {completed} writes completed; the test did not exercise writes"
    );
}

#[tokio::test]
async fn off_loopback_reads_need_the_token_too() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let config = AdminConfig {
        token: Some(TOKEN.into()),
        ..AdminConfig::default()
    };
    // Bound to every interface: not loopback, so reads are protected.
    let admin = admin::start(
        gw.gateway.clone(),
        &config,
        Some("0.0.0.0:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", admin.addr.port()).parse().unwrap();
    let read = |auth: Option<String>, cookie: Option<String>, path: &'static str| async move {
        let mut r = Request::get(format!("http://{addr}{path}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        send(r.body(Full::new(Bytes::new())).unwrap()).await.status
    };
    assert_eq!(read(None, None, "/metrics").await, 401);
    assert_eq!(read(None, None, "/api/v1/nodes").await, 401);
    assert_eq!(
        read(Some(format!("Bearer {TOKEN}")), None, "/metrics").await,
        200
    );
    let cookie = format!("theme=dark; {}={TOKEN}", admin::READ_COOKIE);
    assert_eq!(read(None, Some(cookie.clone()), "/api/v1/nodes").await, 200);
    assert_eq!(
        read(
            None,
            Some(format!("{}=wrong", admin::READ_COOKIE)),
            "/api/v1/nodes"
        )
        .await,
        401
    );
    // The page itself loads, to ask for the token.
    assert_eq!(read(None, None, "/").await, 200);
    // The cookie never authorizes a change.
    let r = Request::post(format!("http://{addr}/api/v1/config/pools"))
        .header("cookie", cookie)
        .header("if-match", "*")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    assert_eq!(send(r).await.status, 401);
    admin.stop().await;

    // `open_reads = true` opens them again (e.g. for a Prometheus without auth).
    let open = admin::start(
        gw.gateway.clone(),
        &AdminConfig {
            open_reads: Some(true),
            ..config
        },
        Some("0.0.0.0:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", open.addr.port()).parse().unwrap();
    assert_eq!(get(addr, "/metrics").await.status, 200);
    open.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_admin_client_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let admin = admin::start(
        gw.gateway.clone(),
        &AdminConfig {
            header_timeout: Duration::from_millis(200),
            ..AdminConfig::default()
        },
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let mut slow = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Others are served meanwhile and after.
    assert_eq!(get(admin.addr, "/metrics").await.status, StatusCode::OK);
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_change_that_cannot_be_written_changes_nothing() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let gw = start_gateway(&text).await;
    // The file's directory is a regular file: every write fails (as root,
    // permissions would not stop it).
    let blocker = scratch("unwritable");
    std::fs::write(&blocker, "not a directory").unwrap();
    let store = ConfigStore::new(
        gw.gateway.clone(),
        Some(blocker.join("gateway.toml")),
        text.clone(),
    );
    let generation = gw.gateway.config_status().version;
    let result = store
        .change(infergate::console::Change {
            actor: "tester".into(),
            action: "weight".into(),
            if_match: Some("*".into()),
            edit: infergate::console::Edit::Patch(
                infergate::console::Collection::Nodes { pool: "p".into() },
                "n0".into(),
                json!({"weight": 9}),
            ),
            dry_run: false,
        })
        .await;
    let error = result.expect_err("the write fails");
    assert!(
        matches!(error, infergate::console::ChangeError::Persist(_)),
        "{error}"
    );
    assert_eq!(gw.gateway.table().pools[0].nodes[0].weight, 1);
    assert_eq!(gw.gateway.config_status().version, generation);
    assert_eq!(
        store.current().version,
        infergate::console::version_of(&text)
    );
    assert_eq!(
        store.audit.latest(1)[0].outcome,
        infergate::console::Outcome::Failed
    );

    // Without a file, changes apply and say they were not persisted.
    let memory = ConfigStore::new(gw.gateway.clone(), None, text.clone());
    let applied = memory
        .change(infergate::console::Change {
            actor: "tester".into(),
            action: "weight".into(),
            if_match: Some(infergate::console::version_of(&text)),
            edit: infergate::console::Edit::Patch(
                infergate::console::Collection::Nodes { pool: "p".into() },
                "n0".into(),
                json!({"weight": 9}),
            ),
            dry_run: false,
        })
        .await
        .unwrap();
    assert!(applied.changed && !applied.persisted);
    assert_eq!(gw.gateway.table().pools[0].nodes[0].weight, 9);
    gw.stop().await;
}

#[tokio::test]
async fn audit_file_keeps_the_trail_across_restarts() {
    let path = scratch("audit-restart");
    let audit = path.with_file_name("audit.jsonl");
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\naudit_file = \"{}\"\n\n\
         [[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"n0\"\naddr = \"127.0.0.1:9\"\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n[routes.match]\nfamily = \"openai\"\n",
        audit.display()
    );
    std::fs::write(&path, &text).unwrap();
    let (mut child, admin) = spawn_serve(&path, TOKEN, "error", None).await;
    let reply = call(
        admin,
        Method::PUT,
        "/api/v1/config/pools/p/nodes/n0/weight",
        Some(TOKEN),
        Some("*"),
        Some(json!({"weight": 6})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let (mut child, admin) = spawn_serve(&path, TOKEN, "error", None).await;
    let entries = get(admin, "/api/v1/config/audit").await.json();
    let first = &entries["entries"][0];
    assert_eq!(first["action"], "weight 6 for node p/n0", "{entries}");
    assert_eq!(first["actor"], "tester (127.0.0.1)");
    assert!(first["diff"].as_str().unwrap().contains("+weight = 6"));
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
