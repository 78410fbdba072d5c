//! Resilience through a real gateway: nodes killed, hung, failing, all down,
//! saturated; reloads and drains under load. Each scenario prints a
//! `SCENARIO|…` row; `bench/faults.sh` collects them into a table.

use std::time::Duration;

use crate::common::*;
use infergate::health::{self, HealthState};
use infergate::sim::{Faults, SimConfig, SimNode};
use tokio::time::Instant;

fn state(gw: &TestGateway, node: usize) -> HealthState {
    gw.gateway.table().pools[0].nodes[node]
        .load
        .health
        .status(health::now_ms())
        .state
}

fn requests_to(gw: &TestGateway, node: usize) -> u64 {
    gw.gateway.table().pools[0].nodes[node].load.requests()
}

fn nonstream() -> String {
    chat("steady", false, 4)
}

#[tokio::test]
async fn idle_node_killed_costs_no_client_request() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(3, &fast_sim()).await;
    let gw = start_gateway(&config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"30s\"\n",
        "retries = 2",
    ))
    .await;
    let load = Load::start(gw.addr, 1, nonstream(), 300);
    assert!(eventually(Duration::from_secs(10), || requests_to(&gw, 0) >= 20).await);
    let killed_at = Instant::now();
    nodes[0].crash().await;
    let ejected = eventually(Duration::from_secs(10), || {
        state(&gw, 0) == HealthState::Ejected
    })
    .await;
    let detection = killed_at.elapsed();
    assert!(ejected, "node 0 must be ejected");
    let sent_to_dead = requests_to(&gw, 0);
    let outcomes = load.stop().await;
    assert!(
        outcomes.iter().all(|o| o.ok),
        "client saw failures: {:?}",
        outcomes.iter().filter(|o| !o.ok).collect::<Vec<_>>()
    );
    assert_eq!(
        requests_to(&gw, 0),
        sent_to_dead,
        "no attempts after ejection"
    );
    scenario(
        "node killed while idle",
        &outcomes,
        Some(detection),
        "3 connect failures -> ejected; retries hid them",
    );
}

#[tokio::test]
async fn node_killed_mid_stream_fails_only_its_streams() {
    let _quiet = quiet_machine().await;
    let sim = SimConfig {
        time_scale: 0.5,
        ..SimConfig::default()
    };
    let nodes = start_nodes(3, &sim).await;
    let gw = start_gateway(&config_text(
        &unweighted(&nodes),
        "round_robin",
        "retries = 1",
    ))
    .await;
    let load = Load::start(gw.addr, 6, chat("long stream", true, 400), 6);
    assert!(
        eventually(Duration::from_secs(10), || nodes
            .iter()
            .all(|n| n.stats().running == 2))
        .await
    );
    let killed_at = Instant::now();
    nodes[0].crash().await;
    let outcomes = load.stop().await;
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).collect();
    assert_eq!(
        failed.len(),
        2,
        "exactly the two streams on the killed node fail: {outcomes:?}"
    );
    assert!(failed.iter().all(|o| o.node == "sim-0" && o.status == 200));
    assert!(outcomes.iter().filter(|o| o.ok).all(|o| o.node != "sim-0"));
    // The gateway keeps serving.
    let after = post(gw.addr, "/v1/chat/completions", chat("after", false, 2)).await;
    assert_eq!(after.status, 200);
    let _ = killed_at;
    scenario(
        "node killed mid-stream",
        &outcomes,
        None,
        "2 streams on it cut with an SSE error; 4 others finished",
    );
}

#[tokio::test]
async fn hung_node_is_timed_out_then_ejected() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(3, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        hang: true,
        ..Faults::default()
    });
    let gw = start_gateway(&config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"30s\"\n",
        "retries = 1\n[routes.timeouts]\nfirst_byte = \"200ms\"\n",
    ))
    .await;
    let start = Instant::now();
    let load = Load::start(gw.addr, 4, nonstream(), 200);
    let ejected = eventually(Duration::from_secs(10), || {
        state(&gw, 0) == HealthState::Ejected
    })
    .await;
    let detection = start.elapsed();
    assert!(ejected);
    let outcomes = load.stop().await;
    assert!(outcomes.iter().all(|o| o.ok), "retries cover the timeouts");
    assert!(outcomes.iter().all(|o| o.node != "sim-0"));
    assert!(
        requests_to(&gw, 0) <= 4,
        "only the timed-out attempts reached it: {}",
        requests_to(&gw, 0)
    );
    scenario(
        "hung node",
        &outcomes,
        Some(detection),
        "first_byte 200ms; 2 timeouts -> ejected; share went to the others",
    );
}

#[tokio::test]
async fn failing_node_is_ejected_and_returns_with_slow_start() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(2, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        ..Faults::default()
    });
    let gw = start_gateway(&config_with(
        &unweighted(&nodes),
        "round_robin",
        "slow_start = \"2s\"\n[pools.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"500ms\"\n",
        "retries = 1",
    ))
    .await;
    let load = Load::start(gw.addr, 2, nonstream(), 100_000);
    assert!(
        eventually(Duration::from_secs(10), || state(&gw, 0)
            == HealthState::Ejected)
        .await
    );
    nodes[0].set_faults(Faults::default());
    let fixed_at = Instant::now();
    let back = eventually(Duration::from_secs(10), || {
        state(&gw, 0) == HealthState::Healthy
    })
    .await;
    assert!(back, "returns after the ejection time");
    let returned_at = Instant::now();
    let before = requests_to(&gw, 0);
    assert!(eventually(Duration::from_secs(10), || requests_to(&gw, 0) > before).await);
    let recovery = fixed_at.elapsed();
    // Share in the first 400 ms of slow start vs after it ends.
    let early = share_over(&gw, Duration::from_millis(400)).await;
    tokio::time::sleep_until(returned_at + Duration::from_millis(2100)).await;
    let late = share_over(&gw, Duration::from_millis(400)).await;
    let outcomes = load.stop().await;
    assert!(
        outcomes.iter().all(|o| o.ok),
        "503s were retried on the healthy node"
    );
    assert!(early < 0.40, "slow start: early share {early:.2}");
    assert!(late > 0.40, "full share after slow start: {late:.2}");
    scenario(
        "node returning 503",
        &outcomes,
        Some(recovery),
        &format!("3x 503 -> ejected 500ms; back with slow start: share {early:.2} in first 400ms, {late:.2} after 2s"),
    );
}

/// Node 0's share of requests sent during the next `window`.
async fn share_over(gw: &TestGateway, window: Duration) -> f64 {
    let (a0, b0) = (requests_to(gw, 0), requests_to(gw, 1));
    tokio::time::sleep(window).await;
    let (a, b) = (requests_to(gw, 0) - a0, requests_to(gw, 1) - b0);
    a as f64 / (a + b).max(1) as f64
}

#[tokio::test]
async fn all_nodes_down_is_a_fast_503_and_recovers() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n",
        "",
    ))
    .await;
    assert_eq!(
        post(gw.addr, "/v1/chat/completions", nonstream())
            .await
            .status,
        200
    );
    for node in &nodes {
        node.crash().await;
    }
    assert!(
        eventually(Duration::from_secs(5), || (0..2)
            .all(|i| state(&gw, i) == HealthState::Unhealthy))
        .await
    );
    let start = Instant::now();
    let reply = post(gw.addr, "/v1/chat/completions", nonstream()).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.headers["retry-after"], "1");
    let fast = start.elapsed();
    assert!(fast < Duration::from_millis(100), "fast: {fast:?}");
    let restarted_at = Instant::now();
    for node in &nodes {
        node.restart().await.unwrap();
    }
    let mut recovered = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if post(gw.addr, "/v1/chat/completions", nonstream())
            .await
            .status
            == 200
        {
            recovered = Some(restarted_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovered = recovered.expect("serves again after the nodes return");
    println!("SCENARIO|all nodes down|1|1|{}ms|fast 503 + Retry-After in {fast:?}; served again after restart (checks every 100ms)", recovered.as_millis());
}

/// One node taking one request at a time, each 300 ms, behind a queue of
/// `queue_size` (5 s timeout); `route_extra` goes into the route.
async fn one_busy_node(queue_size: usize, route_extra: &str) -> (Vec<SimNode>, String) {
    let nodes = start_nodes(1, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        added_latency_ms: 300,
        ..Faults::default()
    });
    let text = config_with(
        &unweighted(&nodes),
        "round_robin",
        &format!("queue_size = {queue_size}\nqueue_timeout = \"5s\"\n"),
        route_extra,
    )
    .replace("weight = 1\n", "weight = 1\nmax_concurrent = 1\n");
    (nodes, text)
}

#[tokio::test]
async fn saturation_queues_by_priority_then_sheds_with_429() {
    // The test client is the trusted scheduler that sets priorities.
    let (_nodes, text) = one_busy_node(3, "trust_priority_header_from = [\"127.0.0.1\"]\n").await;
    let gw = start_gateway(&text).await;
    let queued = || gw.gateway.table().routes[0].queue.len();
    let addr = gw.addr;
    let send = |priority: &'static str| {
        tokio::spawn(async move {
            let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-infergate-priority", priority)
                .body(http_body_util::Full::new(bytes::Bytes::from(chat(
                    priority, false, 1,
                ))))
                .unwrap();
            let reply = send(request).await;
            (
                priority,
                reply.status.as_u16(),
                reply.headers.get("retry-after").cloned(),
                Instant::now(),
            )
        })
    };
    let busy = send("standard");
    assert!(
        eventually(Duration::from_secs(5), || gw.gateway.table().pools[0].nodes
            [0]
        .outstanding()
            == 1)
        .await
    );
    let shed1 = send("sheddable");
    assert!(eventually(Duration::from_secs(5), || queued() == 1).await);
    let shed2 = send("sheddable");
    assert!(eventually(Duration::from_secs(5), || queued() == 2).await);
    let crit1 = send("critical");
    assert!(eventually(Duration::from_secs(5), || queued() == 3).await);
    // Queue full: a critical request displaces the newest sheddable one.
    let crit2 = send("critical");
    let (_, status, retry_after, _) = shed2.await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(retry_after.unwrap(), "1");
    // A sheddable newcomer finds the queue full of higher priorities.
    let (_, status, _, _) = send("sheddable").await.unwrap();
    assert_eq!(status, 429);
    let mut done = Vec::new();
    for task in [busy, crit1, crit2, shed1] {
        let (priority, status, _, at) = task.await.unwrap();
        assert_eq!(status, 200, "{priority}");
        done.push((at, priority));
    }
    done.sort();
    let order: Vec<&str> = done.iter().map(|(_, p)| *p).collect();
    assert_eq!(order, vec!["standard", "critical", "critical", "sheddable"]);
    println!("SCENARIO|saturation|6|2|-|max_concurrent 1, queue 3: critical served before sheddable; 2 shed with 429 + Retry-After");
}

/// One chat request with extra headers, sent in the background: (status,
/// when it finished).
fn send_with(
    addr: std::net::SocketAddr,
    headers: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<(u16, Instant)> {
    tokio::spawn(async move {
        let mut request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = http_body_util::Full::new(bytes::Bytes::from(chat("queued", false, 1)));
        let reply = send(request.body(body).unwrap()).await;
        (reply.status.as_u16(), Instant::now())
    })
}

#[tokio::test]
async fn priority_header_from_an_untrusted_client_displaces_nobody() {
    // Issue #12 finding 7: any client could send `critical` and push the
    // others out of a full queue. Now the header counts only from networks
    // the route trusts (none by default), and a route's own `priority`
    // sets its requests' place.
    let (_nodes, mut text) = one_busy_node(1, "").await;
    // A batch route in front, on the same pool (so the same queue).
    text = text.replace(
        "\n[[routes]]\nname = \"r\"",
        "\n[[routes]]\nname = \"batch\"\npool = \"p\"\npriority = \"sheddable\"\n\
         [routes.match]\nheaders = { \"x-tenant\" = \"batch\" }\n\n[[routes]]\nname = \"r\"",
    );
    let gw = start_gateway(&text).await;
    let addr = gw.addr;
    let queued = || gw.gateway.table().routes[0].queue.len();
    let busy_node = || gw.gateway.table().pools[0].nodes[0].outstanding() == 1;

    // Untrusted header: the queue is full of a standard request, and a
    // "critical" newcomer is shed instead of displacing it.
    let busy = send_with(addr, &[]);
    assert!(eventually(Duration::from_secs(5), busy_node).await);
    let waiting = send_with(addr, &[]);
    assert!(eventually(Duration::from_secs(5), || queued() == 1).await);
    let (status, _) = send_with(addr, &[("x-infergate-priority", "critical")])
        .await
        .unwrap();
    assert_eq!(
        status, 429,
        "an untrusted critical header displaced a request"
    );
    assert_eq!(busy.await.unwrap().0, 200);
    assert_eq!(waiting.await.unwrap().0, 200);

    // The route's own priority counts: a standard request displaces a
    // waiting request of the sheddable batch route.
    let busy = send_with(addr, &[]);
    assert!(eventually(Duration::from_secs(5), busy_node).await);
    let batch = send_with(
        addr,
        &[("x-tenant", "batch"), ("x-infergate-priority", "critical")],
    );
    assert!(eventually(Duration::from_secs(5), || queued() == 1).await);
    let standard = send_with(addr, &[]);
    assert_eq!(
        batch.await.unwrap().0,
        429,
        "the batch request is sheddable"
    );
    assert_eq!(busy.await.unwrap().0, 200);
    assert_eq!(standard.await.unwrap().0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn queue_timeout_sheds_with_429() {
    let nodes = start_nodes(1, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        added_latency_ms: 1000,
        ..Faults::default()
    });
    let mut text = config_with(
        &unweighted(&nodes),
        "round_robin",
        "queue_size = 8\nqueue_timeout = \"150ms\"\n",
        "",
    );
    text = text.replace("weight = 1\n", "weight = 1\nmax_concurrent = 1\n");
    let gw = start_gateway(&text).await;
    let addr = gw.addr;
    let _busy = tokio::spawn(async move { post(addr, "/v1/chat/completions", nonstream()).await });
    assert!(
        eventually(Duration::from_secs(5), || gw.gateway.table().pools[0].nodes
            [0]
        .outstanding()
            == 1)
        .await
    );
    let start = Instant::now();
    let reply = post(gw.addr, "/v1/chat/completions", nonstream()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["code"], "overloaded");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_millis(900),
        "{waited:?}"
    );
}

#[tokio::test]
async fn reload_under_steady_load_fails_nothing() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(3, &fast_sim()).await;
    let all = unweighted(&nodes);
    let gw = start_gateway(&config_text(&all, "round_robin", "")).await;
    let load = Load::start(gw.addr, 4, chat("reload", true, 8), 100_000);
    let start = Instant::now();
    for i in 0..20 {
        let subset: Vec<_> = match i % 3 {
            0 => all[..2].to_vec(),
            1 => all[1..].to_vec(),
            _ => all.iter().map(|(a, _)| (*a, 1 + i as u32 % 3)).collect(),
        };
        let policy = [
            "round_robin",
            "least_outstanding",
            "weighted_round_robin",
            "power_of_two",
        ][i % 4];
        let config =
            infergate::config::Config::from_toml(&config_text(&subset, policy, "")).unwrap();
        gw.gateway.reload(&config).unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let outcomes = load.stop().await;
    assert!(outcomes.len() > 50);
    assert!(
        outcomes.iter().all(|o| o.ok),
        "{:?}",
        outcomes.iter().filter(|o| !o.ok).collect::<Vec<_>>()
    );
    scenario(
        "20 reloads under load",
        &outcomes,
        None,
        &format!(
            "policies and node sets swapped every 25ms for {:?}",
            start.elapsed()
        ),
    );
}

#[tokio::test]
async fn draining_node_takes_nothing_new_and_finishes_its_streams() {
    let sim = SimConfig {
        time_scale: 0.3,
        ..SimConfig::default()
    };
    let nodes = start_nodes(2, &sim).await;
    let all = unweighted(&nodes);
    let gw = start_gateway(&config_text(&all, "round_robin", "")).await;
    let addr = gw.addr;
    let stream = tokio::spawn(async move {
        post(addr, "/v1/chat/completions", chat("drain me", true, 300)).await
    });
    assert!(eventually(Duration::from_secs(5), || nodes[0].stats().running == 1).await);
    assert!(gw.gateway.set_draining("p", "n0", true));
    assert_eq!(state(&gw, 0), HealthState::Draining);
    for _ in 0..6 {
        let reply = post(gw.addr, "/v1/chat/completions", nonstream()).await;
        assert_eq!(reply.node(), "sim-1");
    }
    let finished = stream.await.unwrap();
    assert_eq!(finished.status, 200);
    assert!(finished.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(
        gw.gateway.table().pools[0].nodes[0].outstanding(),
        0,
        "drained"
    );
    assert!(gw.gateway.set_draining("p", "n0", false));
    assert!(!gw.gateway.set_draining("p", "nope", true));
}

#[tokio::test]
async fn draining_from_config_survives_reload_semantics() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let all = unweighted(&nodes);
    let mut text = config_text(&all, "round_robin", "");
    text = text.replacen("weight = 1\n", "weight = 1\ndraining = true\n", 1);
    let gw = start_gateway(&text).await;
    for _ in 0..4 {
        assert_eq!(
            post(gw.addr, "/v1/chat/completions", nonstream())
                .await
                .node(),
            "sim-1"
        );
    }
    gw.gateway
        .reload(
            &infergate::config::Config::from_toml(&config_text(&all, "round_robin", "")).unwrap(),
        )
        .unwrap();
    let served: Vec<String> = futures_served(gw.addr, 4).await;
    assert!(
        served.contains(&"sim-0".to_string()),
        "undrained by the new config: {served:?}"
    );
}

async fn futures_served(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut served = Vec::new();
    for _ in 0..n {
        served.push(post(addr, "/v1/chat/completions", nonstream()).await.node());
    }
    served
}

#[tokio::test]
async fn active_checks_take_a_dead_node_out_within_its_thresholds() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\njitter = 0.0\nunhealthy_threshold = 3\nhealthy_threshold = 2\n[pools.outlier]\nenabled = false\n",
        "retries = 1",
    ))
    .await;
    // Wait for a couple of successful checks, so the node is past its first
    // check (which decides at once) and the thresholds apply.
    let first_check = health::now_ms();
    let checked_ok = || {
        let status = gw.gateway.table().pools[0].nodes[0]
            .load
            .health
            .status(health::now_ms());
        status.state == HealthState::Healthy
            && status
                .last_check
                .is_some_and(|c| c.ok && c.at_ms >= first_check + 150)
    };
    assert!(eventually(Duration::from_secs(3), checked_ok).await);
    let killed = Instant::now();
    nodes[0].crash().await;
    assert!(
        eventually(Duration::from_secs(5), || state(&gw, 0)
            == HealthState::Unhealthy)
        .await
    );
    let down_after = killed.elapsed();
    // 3 failures at 100 ms intervals: between 2 and 3 intervals plus slack.
    assert!(
        down_after >= Duration::from_millis(190),
        "thresholds honoured: {down_after:?}"
    );
    assert!(down_after <= Duration::from_millis(450), "{down_after:?}");
    let attempts = requests_to(&gw, 0);
    for _ in 0..10 {
        assert_eq!(
            post(gw.addr, "/v1/chat/completions", nonstream())
                .await
                .node(),
            "sim-1"
        );
    }
    assert_eq!(
        requests_to(&gw, 0),
        attempts,
        "a node marked down gets no new requests"
    );
    let restarted = Instant::now();
    nodes[0].restart().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || state(&gw, 0)
            == HealthState::Healthy)
        .await
    );
    let up_after = restarted.elapsed();
    println!(
        "SCENARIO|active check detection|10|0|{}ms|down after {}ms (interval 100ms x 3), up after {}ms (x 2)",
        down_after.as_millis(),
        down_after.as_millis(),
        up_after.as_millis()
    );
}

/// A node whose health endpoint fails while it serves inference fine.
async fn start_health_failing_node(name: &'static str) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let (status, body) = if req.uri().path() == "/health" {
                            (503, "{}".to_string())
                        } else {
                            (200, serde_json::json!({"object": "chat.completion", "usage": {"completion_tokens": 1}}).to_string())
                        };
                        let mut response = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        response
                            .headers_mut()
                            .insert("x-sim-node", name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn panic_mode_spread(threshold: u32) -> std::collections::HashMap<String, usize> {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut addrs = unweighted(&nodes);
    for name in ["broken-1", "broken-2", "broken-3"] {
        addrs.push((start_health_failing_node(name).await, 1));
    }
    let gw = start_gateway(&config_with(
        &addrs,
        "round_robin",
        &format!("panic_threshold = {threshold}\n[pools.health]\ninterval = \"50ms\"\ntimeout = \"40ms\"\nunhealthy_threshold = 1\n"),
        "",
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || (1..4)
            .all(|i| state(&gw, i) == HealthState::Unhealthy))
        .await
    );
    let mut served = std::collections::HashMap::new();
    for _ in 0..40 {
        let reply = post(gw.addr, "/v1/chat/completions", nonstream()).await;
        assert_eq!(reply.status, 200);
        *served.entry(reply.node()).or_insert(0) += 1;
    }
    served
}

#[tokio::test]
async fn panic_mode_spreads_over_all_nodes_below_the_threshold() {
    // 1 of 4 available = 25%: below 50% the pool panics and uses every node.
    let panicked = panic_mode_spread(50).await;
    assert_eq!(panicked.len(), 4, "{panicked:?}");
    // With panic disabled, only the healthy node serves.
    let strict = panic_mode_spread(0).await;
    assert_eq!(
        strict.keys().collect::<Vec<_>>(),
        vec!["sim-0"],
        "{strict:?}"
    );
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    let _quiet = quiet_machine().await;
    let sim = SimConfig {
        time_scale: 0.3,
        ..SimConfig::default()
    };
    let nodes = start_nodes(1, &sim).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let text = config_text(&unweighted(&nodes), "round_robin", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let dir = std::env::temp_dir().join(format!("infergate-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--drain", "20s", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "gateway did not start");
    let load = Load::start(addr, 3, chat("finish me", true, 200), 3);
    assert!(eventually(Duration::from_secs(10), || nodes[0].stats().running == 3).await);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let closed = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(closed, "listener closes on SIGTERM");
    let outcomes = load.stop().await;
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    let mut exit = None;
    for _ in 0..400 {
        if let Some(code) = child.try_wait().unwrap() {
            exit = Some(code);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let exit = exit.expect("gateway exits after draining");
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
    scenario(
        "SIGTERM under load",
        &outcomes,
        None,
        "3 streams in flight all completed; exit 0",
    );
}

/// Nodes busy only by their own scraped metrics (another gateway's load)
/// free no slot here, so nothing wakes the queue: the waiter must notice
/// the node recovering on its own, well before its queue timeout.
#[tokio::test]
async fn queued_request_is_served_when_scraped_saturation_clears() {
    let sim = SimConfig {
        time_scale: 0.01,
        ..SimConfig::small()
    };
    let nodes = start_nodes(1, &sim).await;
    let text = config_with(
        &unweighted(&nodes),
        "round_robin",
        "queue_timeout = \"5s\"\n[pools.capacity]\ninterval = \"50ms\"\nmax_queue = 2\n",
        "",
    );
    let gw = start_gateway(&text).await;
    nodes[0].set_faults(Faults {
        slowdown: 20.0,
        ..Faults::default()
    });
    let target = nodes[0].addr();
    let flood: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                post(
                    target,
                    "/v1/chat/completions",
                    chat("other gateway", false, 2000),
                )
                .await
            })
        })
        .collect();
    let node = gw.gateway.table().pools[0].nodes[0].clone();
    assert!(
        eventually(Duration::from_secs(5), || node
            .is_saturated(infergate::fleet::now_ns()))
        .await
    );
    let addr = gw.addr;
    let start = Instant::now();
    let waiting =
        tokio::spawn(async move { post(addr, "/v1/chat/completions", nonstream()).await });
    assert!(
        eventually(Duration::from_secs(2), || gw.gateway.table().routes[0]
            .queue
            .len()
            == 1)
        .await
    );
    // The other gateway's load goes away.
    for task in &flood {
        task.abort();
    }
    nodes[0].set_faults(Faults::default());
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "served only after {waited:?}"
    );
    println!("SCENARIO|saturation cleared elsewhere|1|0|{}ms|queued behind scraped saturation; served after it cleared (queue timeout 5s)", waited.as_millis());
}

/// Frequent config changes (e.g. weights set through the console every
/// 150 ms, faster than the checks reach their threshold) must not keep
/// restarting the active checks: a dead node is still taken out.
#[tokio::test]
async fn frequent_reloads_do_not_reset_active_checks() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let text = |weight: u32| {
        config_with(
            &[(nodes[0].addr(), weight), (nodes[1].addr(), 1)],
            "round_robin",
            "[pools.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\njitter = 0.0\nunhealthy_threshold = 3\nhealthy_threshold = 2\n[pools.outlier]\nenabled = false\n",
            "",
        )
    };
    let gw = start_gateway(&text(1)).await;
    let checked = || {
        gw.gateway.table().pools[0].nodes[0]
            .load
            .health
            .status(health::now_ms())
            .last_check
            .is_some()
    };
    assert!(eventually(Duration::from_secs(3), checked).await);
    nodes[0].crash().await;
    let killed = Instant::now();
    let mut weight = 1;
    while state(&gw, 0) == HealthState::Healthy && killed.elapsed() < Duration::from_secs(3) {
        weight = weight % 9 + 1;
        let config = infergate::config::Config::from_toml(&text(weight)).unwrap();
        gw.gateway.reload(&config).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        state(&gw, 0),
        HealthState::Unhealthy,
        "the dead node was never marked down while reloads kept coming"
    );
    println!(
        "dead node marked down {:?} after the kill, with a reload every 150 ms",
        killed.elapsed()
    );
}
