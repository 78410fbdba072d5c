//! The config file as the source of truth: changes on disk are applied,
//! invalid ones refused with the reason shown, and the running config stays.

use std::time::Duration;

use crate::common::*;
use infergate::admin::{self, AdminConfig};

/// Replace the file the way config tools do: write aside, then rename.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn file_changes_are_applied_and_bad_ones_refused() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let dir = std::env::temp_dir().join(format!("infergate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    let first = config_text(&[(nodes[0].addr(), 1)], "round_robin", "");
    std::fs::write(&path, &first).unwrap();
    let gw = start_gateway(&first).await;
    let store =
        infergate::console::ConfigStore::new(gw.gateway.clone(), Some(path.clone()), first.clone());
    let watcher = tokio::spawn(infergate::cli::reload::watch(
        store.clone(),
        Duration::from_millis(50),
    ));
    let admin = admin::start_with_store(
        store.clone(),
        &AdminConfig::default(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let status = || gw.gateway.config_status();
    assert_eq!(
        post(gw.addr, "/v1/chat/completions", chat("a", false, 1))
            .await
            .node(),
        "sim-0"
    );

    // A valid change is applied.
    write_atomically(
        &path,
        &config_text(&[(nodes[1].addr(), 1)], "round_robin", ""),
    );
    assert!(eventually(Duration::from_secs(5), || status().version == 2).await);
    assert_eq!(
        post(gw.addr, "/v1/chat/completions", chat("b", false, 1))
            .await
            .node(),
        "sim-1"
    );

    // An invalid one is refused with the field named; the running config stays.
    write_atomically(&path, &config_text(&[(nodes[0].addr(), 1)], "fastest", ""));
    assert!(eventually(Duration::from_secs(5), || status().last_error.is_some()).await);
    let refused = status();
    assert_eq!(refused.version, 2);
    let why = refused.last_error.unwrap();
    assert!(
        why.contains("routes[0].policy: unknown policy \"fastest\""),
        "{why}"
    );
    assert_eq!(
        post(gw.addr, "/v1/chat/completions", chat("c", false, 1))
            .await
            .node(),
        "sim-1"
    );
    let shown = get(admin.addr, "/api/v1/config/status").await.json();
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown policy"),
        "{shown}"
    );

    // Fixing the file applies it and clears the error.
    write_atomically(&path, &first);
    assert!(eventually(Duration::from_secs(5), || status().version == 3).await);
    assert!(status().last_error.is_none());
    assert_eq!(
        post(gw.addr, "/v1/chat/completions", chat("d", false, 1))
            .await
            .node(),
        "sim-0"
    );

    // Touching the file without changing it does nothing.
    std::fs::write(&path, &first).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status().version, 3);

    watcher.abort();
    admin.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker keeps a handle on the route table for its requests
/// (`proxy::table_cell`). After a reload, one that served a request and
/// then went idle must still let the old table go: here the old table's
/// metrics scraper has to stop, which it does only when the table is
/// dropped.
#[tokio::test]
async fn a_reload_lets_an_idle_worker_drop_the_old_table() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let plain = config_text(&unweighted(&nodes), "round_robin", "");
    let scraped = plain.replace(
        "\n[[routes]]",
        "[pools.capacity]\ninterval = \"20ms\"\n\n[[routes]]",
    );
    let gw = start_gateway(&scraped).await;
    let scrapes = || {
        nodes[0]
            .stats()
            .requests_by_endpoint
            .get("/metrics")
            .copied()
            .unwrap_or(0)
    };
    for _ in 0..4 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 4)).await;
        assert_eq!(reply.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(5), || scrapes() >= 3).await,
        "the node is scraped"
    );
    gw.gateway
        .reload(&infergate::config::Config::from_toml(&plain).unwrap())
        .unwrap();
    // Scraped every 20 ms while the old table lives: two counts 200 ms
    // apart are equal only once its scraper has stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut before = scrapes();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = scrapes();
        if now == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old table's scraper still runs ({now} scrapes)"
        );
        before = now;
    }
    gw.stop().await;
}
