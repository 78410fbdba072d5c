//! Every policy's distribution, measured at the nodes, through a real gateway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use infergate::sim::Faults;

/// Send `n` requests one after another; count which node served each.
async fn sequential(addr: std::net::SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = post(addr, "/v1/chat/completions", chat("count me", false, 1)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *counts.entry(reply.node()).or_insert(0) += 1;
    }
    counts
}

/// `total` requests from `workers` concurrent clients.
async fn concurrent(
    addr: std::net::SocketAddr,
    workers: usize,
    total: usize,
) -> HashMap<String, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let reply = post(addr, "/v1/chat/completions", chat("load", false, 4)).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                served.push(reply.node());
            }
            served
        }));
    }
    let mut counts = HashMap::new();
    for task in tasks {
        for node in task.await.unwrap() {
            *counts.entry(node).or_insert(0) += 1;
        }
    }
    counts
}

fn count(counts: &HashMap<String, usize>, node: &str) -> usize {
    counts.get(node).copied().unwrap_or(0)
}

#[tokio::test]
async fn round_robin_is_exactly_even() {
    let nodes = start_nodes(4, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let counts = sequential(gw.addr, 200).await;
    for i in 0..4 {
        assert_eq!(count(&counts, &format!("sim-{i}")), 50, "{counts:?}");
    }
}

#[tokio::test]
async fn weighted_round_robin_follows_weights_exactly() {
    let nodes = start_nodes(4, &fast_sim()).await;
    let weighted: Vec<_> = nodes
        .iter()
        .zip([3, 2, 1, 1])
        .map(|(n, w)| (n.addr(), w))
        .collect();
    let gw = start_gateway(&config_text(&weighted, "weighted_round_robin", "")).await;
    let counts = sequential(gw.addr, 70).await;
    let got: Vec<usize> = (0..4)
        .map(|i| count(&counts, &format!("sim-{i}")))
        .collect();
    assert_eq!(got, vec![30, 20, 10, 10], "{counts:?}");
}

#[tokio::test]
async fn least_outstanding_spreads_idle_load_evenly() {
    let nodes = start_nodes(4, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "least_outstanding", "")).await;
    let counts = sequential(gw.addr, 200).await;
    for i in 0..4 {
        let c = count(&counts, &format!("sim-{i}"));
        assert!(
            (25..=75).contains(&c),
            "ties must be broken without bias: {counts:?}"
        );
    }
}

/// A node that holds requests 300 ms gets far less than its round-robin
/// share from the load-aware policies.
async fn slow_node_gets_little(policy: &str, max_share: usize) {
    let nodes = start_nodes(4, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        added_latency_ms: 300,
        ..Faults::default()
    });
    let gw = start_gateway(&config_text(&unweighted(&nodes), policy, "")).await;
    let counts = concurrent(gw.addr, 8, 200).await;
    let slow = count(&counts, "sim-0");
    assert!(
        slow <= max_share,
        "{policy}: slow node served {slow} of 200: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 200);
}

#[tokio::test]
async fn least_outstanding_avoids_a_slow_node() {
    slow_node_gets_little("least_outstanding", 12).await;
}

#[tokio::test]
async fn power_of_two_avoids_a_slow_node() {
    slow_node_gets_little("power_of_two", 20).await;
}

#[tokio::test]
async fn power_of_two_spreads_idle_load() {
    let nodes = start_nodes(4, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "power_of_two", "")).await;
    let counts = sequential(gw.addr, 200).await;
    for i in 0..4 {
        let c = count(&counts, &format!("sim-{i}"));
        assert!((25..=75).contains(&c), "{counts:?}");
    }
}

#[tokio::test]
async fn full_nodes_are_skipped() {
    let nodes = start_nodes(2, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        hang: true,
        ..Faults::default()
    });
    let mut text = config_text(&unweighted(&nodes), "round_robin", "retries = 0");
    text = text.replacen("weight = 1\n", "weight = 1\nmax_concurrent = 1\n", 1);
    let gw = start_gateway(&text).await;
    let addr = gw.addr;
    // Occupies node 0's only slot (it hangs); everything after goes to node 1.
    let stuck =
        tokio::spawn(
            async move { post(addr, "/v1/chat/completions", chat("stuck", false, 1)).await },
        );
    assert!(
        eventually(std::time::Duration::from_secs(5), || gw
            .gateway
            .table()
            .pools[0]
            .nodes[0]
            .outstanding()
            == 1)
        .await
    );
    let counts = sequential(gw.addr, 10).await;
    assert_eq!(count(&counts, "sim-1"), 10, "{counts:?}");
    stuck.abort();
}
