//! Telemetry, admin API, alerts: real gateway, simulated nodes, real HTTP
//! receivers on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use infergate::admin::{self, AdminConfig, AdminServer};
use infergate::sim::Faults;
use infergate::telemetry::prom::{self, Sample};
use tokio::net::TcpListener;

async fn start_admin(gw: &TestGateway) -> AdminServer {
    admin::start(
        Arc::clone(&gw.gateway),
        &AdminConfig::default(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .expect("admin listener")
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    prom::parse(&reply.text()).unwrap_or_else(|e| panic!("exposition does not parse: {e}"))
}

fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_nodes_saw() {
    let nodes = start_nodes(3, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let admin = start_admin(&gw).await;
    let (plain, streamed) = (20, 10);
    for i in 0..plain + streamed {
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            chat(&format!("hello {i}"), i >= plain, 8),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let n = (plain + streamed) as f64;
    // The body tracker records when the server drops the body, just after
    // the client read its end.
    let mut samples = Vec::new();
    for _ in 0..100 {
        samples = scrape(admin.addr).await;
        if total(&samples, "infergate_request_duration_seconds_count", &[]) == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sum = 0.0;
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("n{i}");
        let seen = node.stats().requests_total as f64;
        let counted = total(&samples, "infergate_requests_total", &[("node", &name)]);
        assert_eq!(counted, seen, "node {name}");
        assert_eq!(
            total(
                &samples,
                "infergate_requests_total",
                &[("node", &name), ("code", "2xx")]
            ),
            seen
        );
        assert_eq!(
            total(
                &samples,
                "infergate_request_duration_seconds_count",
                &[("node", &name)]
            ),
            seen,
            "duration histogram count of {name}"
        );
        sum += counted;
    }
    assert_eq!(sum, n);
    let labelled = samples
        .iter()
        .find(|s| s.name == "infergate_requests_total")
        .unwrap();
    assert_eq!(labelled.label("route"), Some("r"));
    assert_eq!(labelled.label("pool"), Some("p"));
    assert_eq!(labelled.label("model"), Some(MODEL));
    assert_eq!(
        total(&samples, "infergate_time_to_first_token_seconds_count", &[]),
        n
    );
    assert!(total(&samples, "infergate_inter_token_seconds_count", &[]) > 0.0);
    let out = total(&samples, "infergate_tokens_total", &[("direction", "out")]);
    assert!(out >= 8.0 * streamed as f64, "tokens out {out}");
    assert!(total(&samples, "infergate_tokens_total", &[("direction", "in")]) > 0.0);
    assert_eq!(
        total(&samples, "infergate_node_health", &[("state", "healthy")]),
        3.0
    );
    assert_eq!(total(&samples, "infergate_pool_panic", &[]), 0.0);
    assert_eq!(total(&samples, "infergate_in_flight", &[]), 0.0);

    // The window and the API see the same traffic after a tick.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let api = get(admin.addr, "/api/v1/nodes").await.json();
    let pool = &api["pools"][0];
    assert_eq!(pool["name"], "p");
    let reqs: f64 = pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["requests"].as_f64().unwrap())
        .sum();
    assert_eq!(reqs, n);
    assert!((pool["nodes"][0]["expected_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let series = get(admin.addr, "/api/v1/series?window=60").await.json();
    assert_eq!(series["nodes"].as_array().unwrap().len(), 3);
    assert!(!series["t"].as_array().unwrap().is_empty());
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn events_stream_pushes_snapshots_every_second() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let admin = start_admin(&gw).await;
    let request = Request::get(format!("http://{}/api/v1/events", admin.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let started = Instant::now();
    let mut events = 0;
    let mut text = String::new();
    while events < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(3), body.frame())
            .await
            .expect("an event within 3 s")
            .unwrap()
            .unwrap();
        if let Some(data) = frame.data_ref() {
            let chunk = String::from_utf8_lossy(data);
            events += chunk.matches("event: snapshot").count();
            text.push_str(&chunk);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(text.contains("\"pools\""));
    let page = get(admin.addr, "/").await;
    assert!(page.text().contains("<title>infergate"));
    assert!(get(admin.addr, "/app.js")
        .await
        .text()
        .contains("EventSource"));
    admin.stop().await;
    gw.stop().await;
}

/// A test tracing subscriber writing into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn admin_security() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;

    // Off loopback without a token: refused with a clear message.
    let err = admin::start(
        Arc::clone(&gw.gateway),
        &AdminConfig::default(),
        Some("0.0.0.0:0".parse().unwrap()),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("admin.token"), "{err}");

    let secret = "tok-7f3a9c-very-secret";
    let config = AdminConfig {
        token: Some(secret.into()),
        ..AdminConfig::default()
    };
    let admin = admin::start(
        Arc::clone(&gw.gateway),
        &config,
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let post_with = |auth: Option<String>| {
        let mut r = Request::post(format!("http://{}/metrics", admin.addr));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Full::new(Bytes::new())).unwrap()
    };
    assert_eq!(send(post_with(None)).await.status, 401);
    assert_eq!(
        send(post_with(Some("Bearer wrong".into()))).await.status,
        401
    );
    // With the token the request passes the check (no POST route yet: 405).
    assert_eq!(
        send(post_with(Some(format!("Bearer {secret}"))))
            .await
            .status,
        405
    );
    assert_eq!(
        get(admin.addr, "/metrics").await.status,
        200,
        "GET needs no token"
    );
    admin.stop().await;

    // Without a token, mutating requests are refused outright.
    let open = start_admin(&gw).await;
    let r = Request::delete(format!("http://{}/api/v1/nodes", open.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(r).await.status, 403);
    open.stop().await;
    gw.stop().await;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("admin listener started"), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains(secret), "token leaked into the log");
    let debug = format!("{config:?}");
    assert!(!debug.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_200_nodes_is_small_and_fast() {
    let mut text = String::from("[[pools]]\nname = \"big\"\n");
    for i in 0..200 {
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"node-{i:03}\"\naddr = \"127.0.0.1:{}\"\nweight = {}\n",
            20000 + i,
            1 + i % 3
        ));
    }
    text.push_str("[[routes]]\nname = \"r\"\npool = \"big\"\n");
    let config = infergate::config::Config::from_toml(&text).unwrap();
    let gateway = infergate::proxy::Gateway::new(&config).unwrap();
    let t = &gateway.telemetry;
    let table = gateway.table();
    let mut worst = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        t.window.tick(t, &table.fleet_view());
        worst = worst.max(started.elapsed());
    }
    let snapshot = serde_json::to_vec(&*t.window.snapshot()).unwrap();
    let series = serde_json::to_vec(&t.window.series(900)).unwrap();
    let metrics = prom::render(t, &table.fleet_view());
    println!(
        "200 nodes: tick worst {worst:?}, snapshot {} B, series(30 s) {} B, metrics {} B",
        snapshot.len(),
        series.len(),
        metrics.len()
    );
    assert!(worst < Duration::from_millis(250), "tick took {worst:?}");
    assert!(
        snapshot.len() < 200_000,
        "snapshot {} bytes",
        snapshot.len()
    );
    let v: serde_json::Value = serde_json::from_slice(&snapshot).unwrap();
    assert_eq!(v["pools"][0]["nodes"].as_array().unwrap().len(), 200);
    prom::parse(&metrics).unwrap();
}

/// What an HTTP receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    body: serde_json::Value,
    at: Instant,
}

/// A tiny hyper server that records every POST and answers 200.
async fn start_receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        store.lock().unwrap().push(Received {
                            path,
                            body,
                            at: Instant::now(),
                        });
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got)
}

fn webhook_events(got: &Mutex<Vec<Received>>, status: &str) -> Vec<Received> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/hook" && r.body["status"] == status)
        .cloned()
        .collect()
}

async fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_alert_fires_once_and_resolves_once() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let (recv, got) = start_receiver().await;
    let mut text = config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n",
        "",
    );
    text.push_str(&format!(
        "\n[alerts]\n[[alerts.rules]]\nname = \"NodeDown\"\nkind = \"node_down\"\nfor = \"1s\"\nresolve_for = \"1s\"\nseverity = \"critical\"\n\
         [[alerts.notifiers]]\nkind = \"webhook\"\nurl = \"http://{recv}/hook\"\n\
         [[alerts.notifiers]]\nkind = \"alertmanager\"\nurl = \"http://{recv}/am\"\n\
         [[alerts.notifiers]]\nkind = \"slack\"\nurl = \"http://{recv}/slack\"\n"
    ));
    let gw = start_gateway(&text).await;
    let admin = start_admin(&gw).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(got.lock().unwrap().is_empty(), "no alert while all is well");

    let crashed = Instant::now();
    nodes[1].crash().await;
    assert!(
        wait_for(Duration::from_secs(10), || !webhook_events(&got, "firing")
            .is_empty())
        .await,
        "fired"
    );
    let fired = webhook_events(&got, "firing")[0].clone();
    let fire_latency = fired.at - crashed;
    assert_eq!(fired.body["alert"]["rule"], "NodeDown");
    assert_eq!(fired.body["alert"]["target"], "p/n1");
    assert!(
        fire_latency >= Duration::from_secs(1),
        "not before `for`: {fire_latency:?}"
    );
    let alerts = get(admin.addr, "/api/v1/alerts").await.json();
    assert_eq!(alerts["active"].as_array().unwrap().len(), 1);

    let restarted = Instant::now();
    nodes[1].restart().await.unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !webhook_events(
            &got, "resolved"
        )
        .is_empty())
        .await,
        "resolved"
    );
    let resolve_latency = webhook_events(&got, "resolved")[0].at - restarted;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        webhook_events(&got, "firing").len(),
        1,
        "fires exactly once"
    );
    assert_eq!(
        webhook_events(&got, "resolved").len(),
        1,
        "resolves exactly once"
    );
    println!(
        "ALERT|node_down|for=1s|fire {fire_latency:?}|resolve_for=1s|resolve {resolve_latency:?}"
    );

    // Alertmanager v2 shape.
    let am: Vec<Received> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/am/api/v2/alerts")
        .cloned()
        .collect();
    assert_eq!(am.len(), 2, "one fire and one resolve: {am:?}");
    for r in &am {
        let a = &r.body[0];
        assert_eq!(a["labels"]["alertname"], "NodeDown");
        assert_eq!(a["labels"]["node"], "n1");
        assert_eq!(a["labels"]["pool"], "p");
        assert_eq!(a["labels"]["severity"], "critical");
        assert!(a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("p/n1"));
        assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
        assert!(a["endsAt"].as_str().unwrap() > a["startsAt"].as_str().unwrap());
    }
    assert!(
        am[1].body[0]["endsAt"].as_str().unwrap() < am[0].body[0]["endsAt"].as_str().unwrap(),
        "resolve ends now, the firing one later"
    );
    let slack: Vec<Received> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/slack")
        .cloned()
        .collect();
    assert_eq!(slack.len(), 2);
    assert!(slack[0].body["text"]
        .as_str()
        .unwrap()
        .contains("[FIRING] NodeDown"));
    let history = get(admin.addr, "/api/v1/alerts").await.json();
    assert_eq!(history["active"].as_array().unwrap().len(), 0);
    assert_eq!(history["history"].as_array().unwrap().len(), 2);
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imbalance_alert_fires_for_a_slow_node_and_resolves() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(3, &fast_sim()).await;
    let (recv, got) = start_receiver().await;
    let mut text = config_text(&unweighted(&nodes), "least_outstanding", "");
    text.push_str(&format!(
        "\n[alerts]\n[[alerts.rules]]\nname = \"Imbalance\"\nkind = \"imbalance\"\nthreshold = 0.5\nresolve_threshold = 0.3\nfor = \"2s\"\nresolve_for = \"2s\"\n\
         [[alerts.notifiers]]\nkind = \"webhook\"\nurl = \"http://{recv}/hook\"\n"
    ));
    let gw = start_gateway(&text).await;
    let load = Load::start(gw.addr, 6, chat("hi", false, 4), 1_000_000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        webhook_events(&got, "firing").is_empty(),
        "balanced at first"
    );
    let slowed = Instant::now();
    nodes[2].set_faults(Faults {
        added_latency_ms: 200,
        ..Faults::default()
    });
    assert!(
        wait_for(Duration::from_secs(20), || !webhook_events(&got, "firing")
            .is_empty())
        .await,
        "imbalance fired"
    );
    let fired = webhook_events(&got, "firing")[0].clone();
    assert_eq!(fired.body["alert"]["target"], "p/n2");
    let fire_latency = fired.at - slowed;
    let recovered = Instant::now();
    nodes[2].set_faults(Faults::default());
    assert!(
        wait_for(Duration::from_secs(30), || !webhook_events(
            &got, "resolved"
        )
        .is_empty())
        .await,
        "imbalance resolved"
    );
    let resolve_latency = webhook_events(&got, "resolved")[0].at - recovered;
    let outcomes = load.stop().await;
    assert!(outcomes.iter().all(|o| o.ok), "no request failed");
    let fired_n2 = webhook_events(&got, "firing")
        .iter()
        .filter(|r| r.body["alert"]["target"] == "p/n2")
        .count();
    assert_eq!(fired_n2, 1);
    println!("ALERT|imbalance|for=2s|fire {fire_latency:?}|resolve_for=2s|resolve {resolve_latency:?}|{} requests", outcomes.len());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_webhook_is_retried_with_backoff_without_touching_the_data_path() {
    let nodes = start_nodes(1, &fast_sim()).await;
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut text = config_with(
        &[(nodes[0].addr(), 1), (dead, 1)],
        "round_robin",
        "[pools.health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n",
        "",
    );
    text.push_str(&format!(
        "\n[alerts]\n[[alerts.rules]]\nname = \"NodeDown\"\nkind = \"node_down\"\nfor = \"0s\"\nresolve_for = \"1s\"\n\
         [[alerts.notifiers]]\nkind = \"webhook\"\nurl = \"http://{dead}/hook\"\nretries = 3\nbackoff = \"100ms\"\ntimeout = \"500ms\"\n"
    ));
    let gw = start_gateway(&text).await;
    let admin = start_admin(&gw).await;
    let started = Instant::now();
    // Requests flow normally while the notifier keeps failing.
    let mut worst = Duration::ZERO;
    for i in 0..60 {
        let t = Instant::now();
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            chat(&format!("q{i}"), false, 2),
        )
        .await;
        assert_eq!(reply.status, 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notif = |samples: &[Sample], result: &str| {
        total(
            samples,
            "infergate_alert_notifications_total",
            &[("result", result)],
        )
    };
    let mut samples = scrape(admin.addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while notif(&samples, "failed") < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        samples = scrape(admin.addr).await;
    }
    let gave_up = started.elapsed();
    assert_eq!(notif(&samples, "failed"), 1.0, "gave up after the retries");
    assert_eq!(notif(&samples, "attempt"), 4.0, "1 try + 3 retries");
    assert_eq!(notif(&samples, "sent"), 0.0);
    // Back-off 100 + 200 + 400 ms between the 4 attempts.
    assert!(gave_up >= Duration::from_millis(700), "{gave_up:?}");
    assert!(
        worst < Duration::from_secs(1),
        "data path slowed: {worst:?}"
    );
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_line_per_request() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let path = std::env::temp_dir().join(format!("infergate-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text.push_str(&format!(
        "\n[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n",
        path.display()
    ));
    let gw = start_gateway(&text).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let reply = post(
            gw.addr,
            "/v1/chat/completions",
            chat(&format!("x{i}"), i % 2 == 0, 4),
        )
        .await;
        assert_eq!(reply.status, 200);
        ids.push(reply.headers["x-request-id"].to_str().unwrap().to_string());
    }
    // A request the gateway answers itself is logged too.
    let unknown = post(
        gw.addr,
        "/v1/chat/completions",
        r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>();
        if lines.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 6, "{lines:?}");
    for id in &ids {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .expect("line for every request id");
        assert_eq!(line["route"], "r");
        assert_eq!(line["status"], 200);
        assert_eq!(line["attempts"], 1);
        assert!(line["node"].as_str().unwrap().starts_with('n'));
        assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
        assert!(line["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(line["tokens_in"].as_u64().unwrap() > 0);
        assert!(line["tokens_out"].as_u64().unwrap() > 0);
    }
    assert!(lines.iter().any(|l| l["status"] == 404 && l["node"] == "-"));
    let _ = std::fs::remove_file(&path);
    gw.stop().await;
}

/// Alert rules and notifiers added through the config API take effect
/// without a restart.
#[tokio::test]
async fn alert_rule_and_notifier_added_through_the_api_fire() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let (recv, got) = start_receiver().await;
    let text = config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n",
        "",
    ) + "\n[alerts]\nrules = []\n";
    let (gw, _store, admin, _path) = start_with_console("alerts-api", &text, "tok").await;
    let change = |method: http::Method, path: &'static str, body: serde_json::Value| async move {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", admin.addr))
            .header("authorization", "Bearer tok")
            .header("if-match", "*")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        send(request).await
    };
    let reply = change(
        http::Method::POST,
        "/api/v1/config/alerts/rules",
        serde_json::json!({"name": "Down", "kind": "node_down", "for": "500ms", "resolve_for": "500ms"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = change(
        http::Method::PATCH,
        "/api/v1/config",
        serde_json::json!({"alerts": {"notifiers": [{"kind": "webhook", "url": format!("http://{recv}/hook")}]}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["restart_required"], serde_json::json!([]));

    nodes[1].crash().await;
    assert!(
        wait_for(Duration::from_secs(10), || !webhook_events(&got, "firing")
            .is_empty())
        .await,
        "the rule and the notifier added at runtime fired"
    );
    assert_eq!(
        webhook_events(&got, "firing")[0].body["alert"]["rule"],
        "Down"
    );
    admin.stop().await;
    gw.stop().await;
}

/// An h2c upstream answering every call with one message and the trailers
/// `grpc-status: 14` (UNAVAILABLE), as a gRPC server reports a failed call.
async fn start_failing_grpc() -> SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "14".parse().unwrap());
                    trailers.insert("grpc-message", "engine%20down".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut response =
                        hyper::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    response
                        .headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// gRPC calls are counted by their grpc-status, not by the HTTP 200 every
/// gRPC response carries: a node's failure in the trailers and the
/// gateway's own UNAVAILABLE both land in `5xx`.
#[tokio::test]
async fn grpc_errors_are_counted_by_their_status() {
    let upstream = start_failing_grpc().await;
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n[[pools]]\nname = \"g\"\nprotocol = \"h2c\"\n\
         [[pools.nodes]]\nname = \"n0\"\naddr = \"{upstream}\"\n\
         [[routes]]\nname = \"grpc\"\npool = \"g\"\nretries = 0\n[routes.match]\nfamily = \"grpc\"\n"
    );
    let gw = start_gateway(&text).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let call = || {
        Request::post(format!("http://{}/inference.Svc/Infer", gw.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let response = h2.request(call()).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(trailers["grpc-status"], "14");

    let metrics = || {
        prom::parse(&prom::render(
            &gw.gateway.telemetry,
            &gw.gateway.table().fleet_view(),
        ))
        .unwrap()
    };
    let counted = |samples: &[Sample], code: &str| {
        total(
            samples,
            "infergate_requests_total",
            &[("node", "n0"), ("code", code)],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || counted(&metrics(), "5xx") == 1.0).await,
        "{:?}",
        metrics()
            .iter()
            .filter(|s| s.name == "infergate_requests_total")
            .collect::<Vec<_>>()
    );
    assert_eq!(counted(&metrics(), "2xx"), 0.0);

    // The gateway's own gRPC error (no node available): trailers-only, 200.
    assert!(gw.gateway.set_draining("g", "n0", true));
    let response = h2.request(call()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    let _ = response.into_body().collect().await;
    let local = |code: &str| {
        total(
            &metrics(),
            "infergate_local_responses_total",
            &[("code", code)],
        )
    };
    assert!(eventually(Duration::from_secs(5), || local("5xx") == 1.0).await);
    assert_eq!(local("2xx"), 0.0);
}
