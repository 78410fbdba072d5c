//! Discovery end to end: a fake Kubernetes API server on loopback (list
//! and watch of EndpointSlices in the shapes the API server sends) and a
//! tiny DNS server on loopback feed real gateways; nodes join, leave, flap,
//! and the sources break and come back.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use infergate::proxy::Gateway;
use serde_json::{json, Value};
use tokio::sync::mpsc;

// ---------------------------------------------------------------- fake API

#[derive(Default)]
struct ApiState {
    /// EndpointSlices by name.
    slices: BTreeMap<String, Value>,
    /// The collection's resourceVersion.
    rv: u64,
    /// Every change: (resourceVersion, watch event line).
    log: Vec<(u64, String)>,
    /// Open watches.
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    /// Answer every request with 500 (the API server blinking).
    failing: bool,
}

#[derive(Clone, Default)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    /// Requests answered with an error while failing.
    failed: Arc<AtomicU64>,
    /// List requests served.
    lists: Arc<AtomicU64>,
    /// Label selectors the client sent.
    selectors: Arc<Mutex<Vec<String>>>,
}

/// An EndpointSlice as the EndpointSlice controller writes it: one pod
/// behind the Service `vllm`, its ready condition, port `http` (and a
/// `metrics` port first, so the port name matters).
fn slice(name: &str, pod: &str, addr: SocketAddr, ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "llm",
            "generateName": "vllm-",
            "labels": {
                "kubernetes.io/service-name": "vllm",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "vllm", "uid": "3c5a"}]
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "metrics", "protocol": "TCP", "port": 9400},
            {"name": "http", "protocol": "TCP", "port": addr.port()}
        ],
        "endpoints": [{
            "addresses": [addr.ip().to_string()],
            "conditions": {"ready": ready, "serving": ready, "terminating": !ready},
            "nodeName": "gpu-node-1",
            "zone": "us-east1-b",
            "targetRef": {"kind": "Pod", "namespace": "llm", "name": pod, "uid": format!("uid-{pod}")}
        }]
    })
}

impl FakeApi {
    async fn start() -> (FakeApi, SocketAddr) {
        let api = FakeApi::default();
        let app = axum::Router::new()
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                axum::routing::get(endpointslices),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                axum::routing::get(pod),
            )
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (api, addr)
    }

    /// Create or update a slice, telling open watches.
    fn apply(&self, mut object: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if s.slices.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.slices.insert(name, object.clone());
        Self::tell(&mut s, rv, kind, object);
    }

    fn delete(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let mut object = s.slices.remove(name).expect("slice exists");
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        Self::tell(&mut s, rv, "DELETED", object);
    }

    fn tell(s: &mut ApiState, rv: u64, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        s.log.push((rv, line.clone()));
        s.watchers
            .retain(|w| w.send(Bytes::from(line.clone())).is_ok());
    }

    /// Cut every open watch (the API server restarting, a load balancer
    /// timing out the connection).
    fn drop_watches(&self) {
        self.state.lock().unwrap().watchers.clear();
    }

    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
}

async fn endpointslices(
    State(api): State<FakeApi>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    assert_eq!(ns, "llm", "the configured namespace");
    let mut s = api.state.lock().unwrap();
    if s.failing {
        api.failed.fetch_add(1, Ordering::SeqCst);
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcdserver: leader changed", "reason": "InternalError", "code": 500});
        return (http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status)).into_response();
    }
    if let Some(selector) = q.get("labelSelector") {
        api.selectors.lock().unwrap().push(selector.clone());
    }
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        api.lists.fetch_add(1, Ordering::SeqCst);
        let list = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": s.slices.values().cloned().collect::<Vec<_>>(),
        });
        return axum::Json(list).into_response();
    }
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    for (rv, line) in &s.log {
        if *rv > since {
            let _ = tx.send(Bytes::from(line.clone()));
        }
    }
    s.watchers.push(tx);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A Pod; `vllm-1` asks for weight 5 and 3 in flight by annotation.
async fn pod(Path((ns, name)): Path<(String, String)>) -> Response {
    let annotations = if name == "vllm-1" {
        json!({"infergate.io/weight": "5", "infergate.io/max-concurrent": "3"})
    } else {
        json!({"kubectl.kubernetes.io/default-container": "vllm"})
    };
    axum::Json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                     "labels": {"app": "vllm"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.9.0"}]},
        "status": {"phase": "Running"}
    }))
    .into_response()
}

fn kubeconfig(api: SocketAddr, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("infergate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             users:\n- name: epp\n  user:\n    token: not-a-real-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: epp\n    namespace: llm\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

fn k8s_config(kubeconfig: &std::path::Path, extra: &str) -> String {
    format!(
        "[[pools]]\nname = \"p\"\nslow_start = \"60s\"\n{extra}\n[pools.discovery]\nmax_concurrent = 64\n\
         [pools.discovery.kubernetes]\nnamespace = \"llm\"\nservice = \"vllm\"\nport_name = \"http\"\n\
         kubeconfig = \"{}\"\npod_annotations = true\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n[routes.match]\nfamily = \"openai\"\nmodel = \"{MODEL}\"\n",
        kubeconfig.display()
    )
}

/// (name, addr, source) of the pool's nodes in the running table.
fn nodes_of(gateway: &Gateway) -> Vec<(String, String, String)> {
    let table = gateway.table();
    let mut nodes: Vec<_> = table.pools[0]
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.addr.to_string(),
                n.source.clone().unwrap_or_default(),
            )
        })
        .collect();
    nodes.sort();
    nodes
}

fn names_of(gateway: &Gateway) -> Vec<String> {
    nodes_of(gateway).into_iter().map(|n| n.0).collect()
}

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn kubernetes_endpoints_join_leave_flap_and_survive_a_broken_watch() {
    let sims = start_nodes(3, &infergate::sim::SimConfig::default()).await;
    let (api, api_addr) = FakeApi::start().await;
    api.apply(slice("vllm-a", "vllm-0", sims[0].addr(), true));
    let path = kubeconfig(api_addr, "k8s-discovery");
    let gw = start_gateway(&k8s_config(&path, "")).await;

    // The first list fills the pool.
    assert!(
        eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0"]).await,
        "{:?}",
        nodes_of(&gw.gateway)
    );
    let first = &nodes_of(&gw.gateway)[0];
    assert_eq!(
        first.1,
        sims[0].addr().to_string(),
        "the http port, not metrics"
    );
    assert_eq!(first.2, "kubernetes:llm/vllm");
    assert_eq!(
        gw.gateway.table().pools[0].nodes[0].max_concurrent,
        Some(64),
        "the pool's discovery default"
    );
    assert!(api
        .selectors
        .lock()
        .unwrap()
        .iter()
        .all(|s| s == "kubernetes.io/service-name=vllm"));
    let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 4)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A pod becomes ready: it joins through the watch, ramping up.
    api.apply(slice("vllm-b", "vllm-1", sims[1].addr(), true));
    assert!(eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0", "vllm-1"]).await);
    let table = gw.gateway.table();
    let joined = table.pools[0]
        .nodes
        .iter()
        .find(|n| n.name == "vllm-1")
        .unwrap();
    assert_eq!(
        (joined.weight, joined.max_concurrent),
        (5, Some(3)),
        "the pod's annotations win over the pool's defaults"
    );
    let first = table.pools[0]
        .nodes
        .iter()
        .find(|n| n.name == "vllm-0")
        .unwrap();
    assert_eq!((first.weight, first.max_concurrent), (1, Some(64)));
    assert!(
        joined
            .load
            .health
            .slow_start_factor(infergate::health::now_ms(), Duration::from_secs(60))
            < 0.5,
        "a new node starts its slow start"
    );
    drop(table);

    // A pod with a request in flight terminates: it leaves the pool at
    // once, and the request finishes.
    let request = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .header("x-session-id", "long")
        .body(http_body_util::Full::new(Bytes::from(chat(
            "a long answer",
            true,
            300,
        ))))
        .unwrap();
    // Only vllm-1 may take it: fill vllm-0 first by draining it.
    gw.gateway.set_draining("p", "vllm-0", true);
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-sim-node"], "sim-1");
    let mut body = response.into_body();
    let first_frame = body.frame().await.unwrap().unwrap();
    assert!(first_frame.is_data());
    api.apply(slice("vllm-b", "vllm-1", sims[1].addr(), false));
    assert!(eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0"]).await);
    let rest = tokio::time::timeout(WITHIN, body.collect())
        .await
        .expect("the drained request finishes")
        .expect("without an error")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&rest).contains("data: [DONE]"),
        "the stream ran to its end"
    );
    gw.gateway.set_draining("p", "vllm-0", false);

    // Flapping: ready, not ready, ready, ... ends where the last event says.
    for i in 0..6 {
        api.apply(slice("vllm-c", "vllm-2", sims[2].addr(), i % 2 == 0));
    }
    api.apply(slice("vllm-c", "vllm-2", sims[2].addr(), true));
    assert!(eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0", "vllm-2"]).await);
    api.delete("vllm-c");
    assert!(eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0"]).await);
    api.apply(slice("vllm-c", "vllm-2", sims[2].addr(), true));
    assert!(eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0", "vllm-2"]).await);

    // The watch breaks and the API server fails for a while: the pool
    // keeps its last known nodes and keeps serving.
    let lists = api.lists.load(Ordering::SeqCst);
    api.set_failing(true);
    api.drop_watches();
    assert!(
        eventually(WITHIN, || api.failed.load(Ordering::SeqCst) >= 2).await,
        "the client retried"
    );
    assert_eq!(names_of(&gw.gateway), ["vllm-0", "vllm-2"]);
    let reply = post(gw.addr, "/v1/chat/completions", chat("still", false, 4)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Changes made while the watch was down arrive once it is back.
    api.set_failing(false);
    api.delete("vllm-a");
    assert!(
        eventually(Duration::from_secs(40), || names_of(&gw.gateway)
            == ["vllm-2"])
        .await,
        "{:?}",
        nodes_of(&gw.gateway)
    );
    assert!(api.lists.load(Ordering::SeqCst) >= lists);
    gw.stop().await;
}

#[tokio::test]
async fn discovered_nodes_survive_config_reloads_and_are_not_editable() {
    let sims = start_nodes(1, &fast_sim()).await;
    let (api, api_addr) = FakeApi::start().await;
    let path = kubeconfig(api_addr, "k8s-console-kubeconfig");
    let text = k8s_config(&path, "");
    let (gw, store, admin, _file) = start_with_console("k8s-console", &text, "tok").await;

    // Nothing found yet: not ready, and requests get a clean 503.
    let ready = get(admin.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(get(admin.addr, "/livez").await.status, 200);

    api.apply(slice("vllm-a", "vllm-0", sims[0].addr(), true));
    assert!(eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0"]).await);
    assert_eq!(get(admin.addr, "/readyz").await.status, 200);

    // The API shows where the node came from.
    let snapshot = gw
        .gateway
        .telemetry
        .window
        .tick(&gw.gateway.telemetry, &gw.gateway.table().fleet_view());
    let view = serde_json::to_value(&*snapshot).unwrap();
    assert_eq!(
        view["pools"][0]["nodes"][0]["source"],
        "kubernetes:llm/vllm"
    );

    // A reload of the file keeps the discovered nodes (and their state).
    let load = Arc::clone(&gw.gateway.table().pools[0].nodes[0].load);
    let edited = text.replace("slow_start = \"60s\"", "slow_start = \"30s\"");
    gw.gateway
        .reload(&infergate::config::Config::from_toml(&edited).unwrap())
        .unwrap();
    assert_eq!(names_of(&gw.gateway), ["vllm-0"]);
    assert!(Arc::ptr_eq(
        &load,
        &gw.gateway.table().pools[0].nodes[0].load
    ));

    // The config API refuses node edits in a discovered pool, saying why.
    let version = store.current().version.clone();
    let request = http::Request::builder()
        .method("PUT")
        .uri(format!(
            "http://{}/api/v1/config/pools/p/nodes/vllm-0/weight",
            admin.addr
        ))
        .header("authorization", "Bearer tok")
        .header("if-match", version.as_str())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(r#"{"weight": 5}"#)))
        .unwrap();
    let reply = send(request).await;
    assert!(reply.status.is_client_error(), "{}", reply.status);
    assert!(
        reply
            .text()
            .contains("takes its nodes from [pools.discovery]"),
        "{}",
        reply.text()
    );
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_kubeconfig_that_appears_late_is_picked_up() {
    let sims = start_nodes(1, &fast_sim()).await;
    let (api, api_addr) = FakeApi::start().await;
    api.apply(slice("vllm-a", "vllm-0", sims[0].addr(), true));
    let path = kubeconfig(api_addr, "k8s-late-kubeconfig");
    let later = path.with_extension("later");
    std::fs::rename(&path, &later).unwrap();
    // The file is not there yet (a Secret not mounted yet): no nodes, and
    // discovery keeps trying rather than giving up.
    let gw = start_gateway(&k8s_config(&path, "")).await;
    assert!(names_of(&gw.gateway).is_empty());
    std::fs::rename(&later, &path).unwrap();
    assert!(
        eventually(WITHIN, || names_of(&gw.gateway) == ["vllm-0"]).await,
        "{:?}",
        nodes_of(&gw.gateway)
    );
    gw.stop().await;
}

/// A discovered node has no `[pools.nodes.power]` of its own: the pool's
/// `[pools.energy]` power model (or exporter) covers it like a listed node
/// without one.
#[tokio::test]
async fn discovered_nodes_get_the_pools_power_model() {
    let text = "[[pools]]\nname = \"p\"\n\
                [pools.energy]\ninterval = \"20ms\"\nidle_watts = 123.0\nmax_watts = 700.0\ngpus = 2\n\
                [pools.discovery.dns]\nnames = [\"vllm.invalid:8000\"]\n\
                [[routes]]\nname = \"r\"\npool = \"p\"\n";
    let gateway = Gateway::new(&infergate::config::Config::from_toml(text).unwrap()).unwrap();
    gateway.discovered(
        "p",
        vec![infergate::discovery::FoundNode {
            name: "vllm-0".into(),
            addr: "127.0.0.1:40000".into(),
            weight: None,
            max_concurrent: None,
            pod: None,
        }],
    );
    let estimated = || {
        let table = gateway.table();
        let summary = table.energy.first().map(|e| e.state.summary());
        summary.is_some_and(|s| {
            s.estimated_nodes == 1
                && s.nodes.len() == 1
                && s.nodes[0].name == "vllm-0"
                && s.nodes[0].watts == Some(246.0)
        })
    };
    assert!(
        eventually(WITHIN, estimated).await,
        "{:?}",
        gateway.table().energy.first().map(|e| e.state.summary())
    );
}

// ---------------------------------------------------------------- DNS

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<(u16, String)>>,
    failing: bool,
    queries: u64,
}

/// A DNS server on loopback UDP answering from `zone` (SERVFAIL while
/// failing).
async fn start_dns(zone: Arc<Mutex<Zone>>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.metadata.message_type = MessageType::Response;
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            answer.metadata.recursion_available = true;
            answer.metadata.authoritative = true;
            {
                let mut zone = zone.lock().unwrap();
                zone.queries += 1;
                for q in &query.queries {
                    answer.add_query(q.clone());
                    let name = q.name().to_ascii().to_lowercase();
                    match q.query_type() {
                        RecordType::A => {
                            for ip in zone.a.get(&name).into_iter().flatten() {
                                answer.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    1,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                        RecordType::SRV => {
                            for (port, target) in zone.srv.get(&name).into_iter().flatten() {
                                let target = Name::from_ascii(target).unwrap();
                                answer.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    1,
                                    RData::SRV(SRV::new(0, 10, *port, target)),
                                ));
                            }
                        }
                        _ => {}
                    }
                }
                if zone.failing {
                    answer.answers.clear();
                    answer.metadata.response_code = ResponseCode::ServFail;
                }
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn dns_names_and_srv_records_are_re_resolved_and_kept_through_failures() {
    let zone = Arc::new(Mutex::new(Zone::default()));
    {
        let mut z = zone.lock().unwrap();
        z.a.insert(
            "web.test.".into(),
            vec![Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)],
        );
        z.a.insert("gpu-0.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 21)]);
        z.a.insert("gpu-1.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 22)]);
        z.srv.insert(
            "_http._tcp.gpu.test.".into(),
            vec![(9001, "gpu-0.test.".into())],
        );
    }
    let dns = start_dns(Arc::clone(&zone)).await;
    let text = format!(
        "[[pools]]\nname = \"p\"\n[pools.discovery]\nweight = 2\n[pools.discovery.dns]\n\
         names = [\"web.test.:8000\"]\nsrv = [\"_http._tcp.gpu.test.\"]\ninterval = \"100ms\"\nnameservers = [\"{dns}\"]\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n"
    );
    let gw = start_gateway(&text).await;
    let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(
        eventually(WITHIN, || names_of(&gw.gateway)
            == want(&["127.0.0.11:8000", "127.0.0.12:8000", "127.0.0.21:9001"]))
        .await,
        "{:?}",
        nodes_of(&gw.gateway)
    );
    assert_eq!(nodes_of(&gw.gateway)[0].2, "dns:web.test.:8000");
    assert_eq!(gw.gateway.table().pools[0].nodes[0].weight, 2);

    // Records change: a new SRV target, an address gone.
    {
        let mut z = zone.lock().unwrap();
        z.a.insert("web.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 12)]);
        z.srv
            .get_mut("_http._tcp.gpu.test.")
            .unwrap()
            .push((9002, "gpu-1.test.".into()));
    }
    assert!(
        eventually(WITHIN, || names_of(&gw.gateway)
            == want(&["127.0.0.12:8000", "127.0.0.21:9001", "127.0.0.22:9002"]))
        .await,
        "{:?}",
        nodes_of(&gw.gateway)
    );

    // The server fails: the pool keeps the last set.
    let before = zone.lock().unwrap().queries;
    zone.lock().unwrap().failing = true;
    assert!(eventually(WITHIN, || zone.lock().unwrap().queries >= before + 6).await);
    assert_eq!(
        names_of(&gw.gateway),
        want(&["127.0.0.12:8000", "127.0.0.21:9001", "127.0.0.22:9002"])
    );
    gw.stop().await;
}
