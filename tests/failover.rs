//! Failover rules (docs/resilience.md): a request whose answer has not
//! started never fails while another node could serve it; connections that
//! were never made are retried for free; retries survive bursts; panic
//! mode never feeds a node known to be dead.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use infergate::health::now_ms;
use infergate::sim::Faults;

/// An address nothing listens on (bound, then closed).
async fn dead_addr() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn refused_connections_are_retried_even_without_retries() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut addrs = vec![(dead_addr().await, 1), (dead_addr().await, 1)];
    addrs.push((nodes[0].addr(), 1));
    // No budgeted retry at all: refused connections still move on.
    let route = "retries = 0\nretry_budget = { percent = 0, min_per_second = 0 }";
    let gw = start_gateway(&config_text(&addrs, "round_robin", route)).await;
    for i in 0..12 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 1)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.node(), "sim-0");
    }
}

#[tokio::test]
async fn a_burst_of_failures_is_retried_and_the_budget_still_bounds_retries() {
    let nodes = start_nodes(2, &fast_sim()).await;
    // Node 0 reads each request and closes the connection: the node may
    // have started on it, so these retries are budgeted.
    nodes[0].set_faults(Faults {
        close_after_tokens: Some(0),
        ..Faults::default()
    });
    let burst = |addr| async move {
        let requests: Vec<_> = (0..40)
            .map(|_| tokio::spawn(post(addr, "/v1/chat/completions", chat("b", false, 1))))
            .collect();
        let mut statuses = Vec::new();
        for r in requests {
            statuses.push(r.await.unwrap().status.as_u16());
        }
        statuses
    };
    // 40 at once, about 20 on the broken node: a concurrency budget of
    // max(20 % of 40, 3) would let 8 retry; the rate budget takes them all.
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let statuses = burst(gw.addr).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // An empty budget: the broken node's answers reach the clients.
    let route = "retry_budget = { percent = 0, min_per_second = 0 }";
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", route)).await;
    let statuses = burst(gw.addr).await;
    let failed = statuses.iter().filter(|s| **s == 502).count();
    assert!(failed >= 10, "{statuses:?}");
    assert_eq!(failed + statuses.iter().filter(|s| **s == 200).count(), 40);
}

#[tokio::test]
async fn server_errors_are_retried_as_configured() {
    let nodes = start_nodes(2, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        error_rate: 1.0,
        error_status: 500,
        ..Faults::default()
    });
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    for _ in 0..6 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("x", false, 1)).await;
        assert_eq!(
            reply.status,
            200,
            "500 retried by default: {}",
            reply.text()
        );
    }
    let route = "retry_on_status = [503]";
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", route)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            post(gw.addr, "/v1/chat/completions", chat("x", false, 1))
                .await
                .status,
        );
    }
    assert!(statuses.iter().any(|s| s.as_u16() == 500), "{statuses:?}");
}

#[tokio::test]
async fn panic_mode_never_feeds_a_node_that_refuses_connections() {
    let nodes = start_nodes(3, &fast_sim()).await;
    let pool = "panic_threshold = 50\n[pools.health]\ninterval = \"50ms\"\ntimeout = \"40ms\"\n\
                unhealthy_threshold = 1\nhealthy_threshold = 1\njitter = 0.0\n";
    let gw = start_gateway(&config_with(&unweighted(&nodes), "round_robin", pool, "")).await;
    let table = gw.gateway.table();
    let pool = Arc::clone(&table.pools[0]);
    nodes[0].crash().await;
    nodes[1].crash().await;
    assert!(
        eventually(Duration::from_secs(3), || pool.nodes[..2]
            .iter()
            .all(|n| !n.load.health.is_available(now_ms())))
        .await,
        "checks mark the dead nodes down"
    );
    // One node of three is up, but the other two are known dead: no panic,
    // and no request is sent to them.
    assert!(!pool.in_panic(now_ms()));
    let before: Vec<u64> = pool.nodes.iter().map(|n| n.load.failures()).collect();
    for _ in 0..30 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("p", false, 1)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.node(), "sim-2");
    }
    let after: Vec<u64> = pool.nodes.iter().map(|n| n.load.failures()).collect();
    assert_eq!(before, after, "no attempt went to a dead node");
}

#[tokio::test]
async fn a_node_cutting_streams_is_ejected() {
    let nodes = start_nodes(2, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        close_after_tokens: Some(2),
        ..Faults::default()
    });
    let pool = "[pools.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"60s\"\n";
    let gw = start_gateway(&config_with(&unweighted(&nodes), "round_robin", pool, "")).await;
    // One after the other, so each stream's head comes after the last cut:
    // a success counted at the head would reset the count every time.
    let mut cut = 0;
    for _ in 0..10 {
        let request = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(chat(
                "s", true, 8,
            ))))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let whole = http_body_util::BodyExt::collect(response.into_body()).await;
        if !whole.is_ok_and(|b| String::from_utf8_lossy(&b.to_bytes()).contains("[DONE]")) {
            cut += 1;
        }
    }
    assert_eq!(cut, 2, "ejected after 2 cut streams");
    let health = &gw.gateway.table().pools[0].nodes[0].load.health;
    assert!(!health.is_available(now_ms()));
}
