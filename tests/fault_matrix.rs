//! The fault matrix's infergate column (`infergate faults`, `bench/faults.sh`
//! runs it against nginx and HAProxy too): real node processes killed,
//! stopped, slowed and broken under load, and what the clients saw.
//! Target: no failed request while a node could serve it.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::quiet_machine;
use infergate::faultlab::{self, Outcome, ProxyKind, RunSpec, Scenario, Timeline};

const TIMELINE: Timeline = Timeline {
    total: Duration::from_secs(4),
};

fn scenario(name: &str) -> Scenario {
    faultlab::scenarios(TIMELINE)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

async fn run(name: &str) -> Outcome {
    let _quiet = quiet_machine().await;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_infergate"));
    let dir = std::env::temp_dir().join(format!(
        "infergate-fault-matrix-{}-{name}",
        std::process::id()
    ));
    let spec = RunSpec {
        exe: exe.clone(),
        dir: dir.clone(),
        connections: 8,
        rate: 400,
        timeline: TIMELINE,
    };
    let outcome = faultlab::run_one(&spec, &scenario(name), ProxyKind::Infergate, &exe)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{}", faultlab::table(std::slice::from_ref(&outcome)));
    assert!(
        outcome.requests > 800,
        "{name}: too little load to mean anything: {outcome:?}"
    );
    if outcome.failed == 0 || !outcome.one_node_serves {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs kept in {}", dir.display());
    }
    outcome
}

/// A node could serve throughout: nothing may fail.
async fn nothing_lost(name: &str) -> Outcome {
    let outcome = run(name).await;
    assert_eq!(outcome.failed, 0, "{name}: {outcome:?}");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle() {
    nothing_lost("killed-idle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load() {
    nothing_lost("killed-under-load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung() {
    let outcome = nothing_lost("hung").await;
    assert!(outcome.recover.is_some(), "the node came back: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow() {
    nothing_lost("slow-10x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_500() {
    nothing_lost("answers-500").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_503() {
    nothing_lost("answers-503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_after_reading() {
    nothing_lost("closes-after-read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_hung_at_once() {
    let outcome = nothing_lost("killed+hung").await;
    assert!(outcome.recover.is_some(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_on_the_same_address() {
    let outcome = nothing_lost("restarted-same-addr").await;
    // Back within a few check intervals (2 x 200 ms) plus the restart.
    let back = outcome.recover.expect("the node serves again");
    assert!(back < Duration::from_secs(2), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_by_a_node_are_only_those_it_started() {
    let outcome = run("resets-mid-stream").await;
    // Streams the node cut cannot be retried (their clients got tokens);
    // every other request succeeds, and outlier detection stops sending
    // streams there after 2 failures, so few are lost.
    assert!(
        outcome.by_status.keys().all(|k| k == "cut"),
        "only broken streams, no error statuses: {outcome:?}"
    );
    assert!(
        outcome.failed * 100 < outcome.requests,
        "under 1 % cut: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_is_a_fast_503_then_recovery() {
    let outcome = run("all-down-then-back").await;
    let served_503 = outcome.by_status.get("503").copied().unwrap_or(0);
    assert!(
        served_503 * 10 >= outcome.failed * 9,
        "clients are told to come back (503): {outcome:?}"
    );
    assert!(
        outcome.slowest_failure.unwrap_or_default() < Duration::from_millis(1200),
        "failures are fast: {outcome:?}"
    );
    let back = outcome.recover.expect("service returns");
    assert!(back < Duration::from_secs(2), "{outcome:?}");
}
