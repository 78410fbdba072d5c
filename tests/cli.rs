//! `infergate ctl` and `infergate check --gateway` as a user runs them: the
//! real binary against a gateway with its admin listener.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use crate::common::*;
use infergate::admin::AdminServer;
use infergate::config::Config;
use infergate::sim::Faults;

const TOKEN: &str = "cli-test-token";

struct Running {
    gw: TestGateway,
    admin: AdminServer,
    path: std::path::PathBuf,
}

async fn start(name: &str, text: &str) -> Running {
    let (gw, _store, admin, path) = start_with_console(name, text, TOKEN).await;
    Running { gw, admin, path }
}

async fn infergate(args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(args)
        .env("INFERGATE_ADMIN_TOKEN", TOKEN)
        .env_remove("INFERGATE_ADMIN")
        .output();
    tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("command finished within 60s")
        .expect("run infergate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn ctl(admin: SocketAddr, args: &[&str]) -> Output {
    let admin = admin.to_string();
    let mut all = vec!["ctl", "--admin", &admin];
    all.extend_from_slice(args);
    infergate(&all).await
}

async fn check(r: &Running, extra: &[&str]) -> Output {
    let (gateway, admin) = (r.gw.addr.to_string(), r.admin.addr.to_string());
    let mut all = vec![
        "check",
        "--gateway",
        &gateway,
        "--admin",
        &admin,
        "--requests",
        "150",
        "--concurrency",
        "6",
    ];
    all.extend_from_slice(extra);
    infergate(&all).await
}

/// Wait until the admin node view shows `node` in `state`.
async fn wait_state(admin: SocketAddr, node: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = get(admin, "/api/v1/nodes").await.json();
        let now = view["pools"][0]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .map(|n| n["state"].as_str().unwrap().to_string());
        if now.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} never became {state}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ctl_lists_drains_weighs_and_applies() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let r = start("ctl", &text).await;

    let out = ctl(r.admin.addr, &["nodes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("POOL  NODE"), "{table}");
    assert!(table.contains(&nodes[1].addr().to_string()), "{table}");

    let out = ctl(r.admin.addr, &["weight", "n1", "7"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("weight of p/n1 set to 7"),
        "{}",
        stdout(&out)
    );
    assert_eq!(Config::load(&r.path).unwrap().pools[0].nodes[1].weight, 7);

    let out = ctl(r.admin.addr, &["drain", "p/n0"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(Config::load(&r.path).unwrap().pools[0].nodes[0].draining);
    let out = ctl(r.admin.addr, &["enable", "n0"]).await;
    assert!(out.status.success());
    assert!(!Config::load(&r.path).unwrap().pools[0].nodes[0].draining);

    // Errors: unknown node, invalid weight, no token.
    let out = ctl(r.admin.addr, &["drain", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no node named nope"));
    let out = ctl(r.admin.addr, &["weight", "n0", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pools[0].nodes[0].weight"),
        "{}",
        stderr(&out)
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["ctl", "--admin", &r.admin.addr.to_string(), "drain", "n0"])
        .env_remove("INFERGATE_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // apply: the diff first; without --yes (and no terminal) nothing changes.
    let new_file = r.path.with_file_name("new.toml");
    std::fs::write(&new_file, text.replace("round_robin", "power_of_two")).unwrap();
    let new_file = new_file.to_str().unwrap();
    let out = ctl(r.admin.addr, &["apply", new_file]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("-policy = \"round_robin\"\n+policy = \"power_of_two\""),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("--yes"));
    assert_eq!(r.gw.gateway.table().routes[0].policy.name(), "round_robin");
    let out = ctl(r.admin.addr, &["apply", new_file, "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(r.gw.gateway.table().routes[0].policy.name(), "power_of_two");
    assert_eq!(
        std::fs::read_to_string(&r.path).unwrap(),
        std::fs::read_to_string(new_file).unwrap()
    );

    // The history lists what was in force; rollback goes back one step.
    let out = ctl(r.admin.addr, &["history"]).await;
    let history = stdout(&out);
    assert!(history.lines().count() >= 6, "{history}");
    assert!(history.contains("start"), "{history}");
    let out = ctl(r.admin.addr, &["rollback", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("+policy = \"round_robin\""),
        "{}",
        stdout(&out)
    );
    assert_eq!(r.gw.gateway.table().routes[0].policy.name(), "round_robin");
    let out = ctl(r.admin.addr, &["rollback", "0123456789abcdef", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not among the last"),
        "{}",
        stderr(&out)
    );

    // JSON for scripts, and the audit trail of all the above.
    let out = ctl(r.admin.addr, &["--json", "nodes"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pools"][0]["nodes"].as_array().unwrap().len(), 2);
    let out = ctl(r.admin.addr, &["audit"]).await;
    let audit = stdout(&out);
    assert!(
        audit.contains("PUT config (whole file)") && audit.contains("drain node p/n0"),
        "{audit}"
    );
    assert!(audit.contains("ctl:"), "{audit}");
    let out = ctl(r.admin.addr, &["alerts"]).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("NodeDown"));
    r.admin.stop().await;
    r.gw.stop().await;
}

#[tokio::test]
async fn check_passes_when_shares_follow_weights_and_fails_on_drained_or_slow_nodes() {
    let nodes = start_nodes(3, &fast_sim()).await;
    let weights = [
        (nodes[0].addr(), 1),
        (nodes[1].addr(), 2),
        (nodes[2].addr(), 1),
    ];
    let text = config_text(&weights, "weighted_round_robin", "");
    let r = start("check", &text).await;

    let out = check(&r, &[]).await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}{}", stderr(&out));
    assert!(report.contains("PASS"), "{report}");
    assert!(report.contains("50.0%"), "n1 expects half: {report}");

    // Drained: the check names it and fails, unless told it is intended.
    assert!(ctl(r.admin.addr, &["drain", "n2"]).await.status.success());
    wait_state(r.admin.addr, "n2", "draining").await;
    let out = check(&r, &[]).await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("n2: node is draining"), "{report}");
    let out = check(&r, &["--allow-unavailable"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(ctl(r.admin.addr, &["enable", "n2"]).await.status.success());
    wait_state(r.admin.addr, "n2", "healthy").await;

    // Slow: under least outstanding, a slow node takes less than its share.
    let reply = ctl(r.admin.addr, &["--json", "config"]).await;
    assert!(reply.status.success());
    let out = {
        let new_file = r.path.with_file_name("lor.toml");
        std::fs::write(
            &new_file,
            text.replace("weighted_round_robin", "least_outstanding"),
        )
        .unwrap();
        ctl(
            r.admin.addr,
            &["apply", new_file.to_str().unwrap(), "--yes"],
        )
        .await
    };
    assert!(out.status.success(), "{}", stderr(&out));
    nodes[0].set_faults(Faults {
        added_latency_ms: 150,
        ..Faults::default()
    });
    let out = check(&r, &[]).await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("n0: got"), "{report}");
    nodes[0].set_faults(Faults::default());
    r.admin.stop().await;
    r.gw.stop().await;
}

#[tokio::test]
async fn check_refuses_bad_arguments_and_unreachable_gateways() {
    let out = infergate(&["check", "--gateway", "127.0.0.1:1"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--admin"), "{}", stderr(&out));
    let out = infergate(&[
        "check",
        "--gateway",
        "127.0.0.1:1",
        "--admin",
        "127.0.0.1:1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    let out = infergate(&["check"]).await;
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

#[tokio::test]
async fn ctl_runs_a_change_on_every_replica() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let a = start("replica-a", &text).await;
    let b = start("replica-b", &text).await;
    let both = format!("{},{}", a.admin.addr, b.admin.addr);

    let out = infergate(&["ctl", "--admin", &both, "weight", "n1", "4"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains(&format!("== {} ==", a.admin.addr)), "{said}");
    assert!(said.contains(&format!("== {} ==", b.admin.addr)), "{said}");
    for r in [&a, &b] {
        assert_eq!(Config::load(&r.path).unwrap().pools[0].nodes[1].weight, 4);
    }

    // JSON: one document per replica and line, saying whose it is.
    let out = infergate(&["ctl", "--admin", &both, "--json", "nodes"]).await;
    let docs: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["admin"], b.admin.addr.to_string());
    assert_eq!(
        docs[1]["result"]["pools"][0]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // It stops at the first replica that refuses: b is never asked.
    let out = infergate(&["ctl", "--admin", &both, "weight", "n1", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&a.admin.addr.to_string()),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains(&format!("== {} ==", b.admin.addr)));
    a.admin.stop().await;
    b.admin.stop().await;
    a.gw.stop().await;
    b.gw.stop().await;
}
