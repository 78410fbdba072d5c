//! Shared helpers for integration tests: simulated nodes, gateways on
//! ephemeral loopback ports, and a small HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use infergate::config::Config;
use infergate::proxy::{self, Gateway};
use infergate::sim::{SimConfig, SimNode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Model the simulated nodes serve in tests.
pub const MODEL: &str = "llama-3.1-8b-instruct";

/// A simulator config that runs 100x faster than real time.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        time_scale: 0.01,
        ..SimConfig::default()
    }
}

/// Taken by the tests that load the machine (load generators, the fault
/// matrix) and by those whose result depends on timing (adapter affinity,
/// saturation), so no two of them overlap: on a 2-core CI machine a load
/// test running beside the LoRA test took its prefix_aware hit rate from
/// 65-75 % to 49 %. Other tests still run beside them.
pub async fn quiet_machine() -> tokio::sync::MutexGuard<'static, ()> {
    static QUIET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    QUIET.lock().await
}

/// Start `n` simulated nodes on ephemeral ports.
pub async fn start_nodes(n: usize, config: &SimConfig) -> Vec<SimNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = SimNode::start(
            &format!("sim-{i}"),
            "127.0.0.1:0".parse().unwrap(),
            config.clone(),
        )
        .await
        .expect("start sim node");
        nodes.push(node);
    }
    nodes
}

/// A running gateway on an ephemeral port.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Stop accepting and wait for the server task (drain up to 5 s).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Gateway config: one pool `p` with the given node addresses and weights,
/// one OpenAI route `r` for MODEL with `policy`, plus `extra` TOML appended
/// to the route table (route-level keys must come first, so `route_extra`
/// is spliced into the route).
pub fn config_text(nodes: &[(SocketAddr, u32)], policy: &str, route_extra: &str) -> String {
    config_with(nodes, policy, "", route_extra)
}

/// Like [`config_text`], with `pool_extra` TOML in the pool: scalar keys
/// first, then any `[pools.x]` tables (split and placed where TOML wants them).
pub fn config_with(
    nodes: &[(SocketAddr, u32)],
    policy: &str,
    pool_extra: &str,
    route_extra: &str,
) -> String {
    let (scalars, tables) = match pool_extra.find("[pools.") {
        Some(at) => pool_extra.split_at(at),
        None => (pool_extra, ""),
    };
    let mut text =
        format!("[listener]\naddr = \"127.0.0.1:0\"\n\n[[pools]]\nname = \"p\"\n{scalars}\n");
    for (i, (addr, weight)) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"n{i}\"\naddr = \"{addr}\"\nweight = {weight}\n"
        ));
    }
    text.push_str(tables);
    text.push_str(&format!(
        "\n[[routes]]\nname = \"r\"\npool = \"p\"\npolicy = \"{policy}\"\n{route_extra}\n[routes.match]\nfamily = \"openai\"\nmodel = \"{MODEL}\"\n"
    ));
    text
}

/// Start a gateway for `config_text`.
pub async fn start_gateway(config_text: &str) -> TestGateway {
    let config = Config::from_toml(config_text).expect("valid test config");
    let gateway = Gateway::new(&config).expect("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy::serve(
        Arc::clone(&gateway),
        listener,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    TestGateway {
        addr,
        gateway,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Addresses of nodes with weight 1.
pub fn unweighted(nodes: &[SimNode]) -> Vec<(SocketAddr, u32)> {
    nodes.iter().map(|n| (n.addr(), 1)).collect()
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A complete response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The simulated node that served the request.
    pub fn node(&self) -> String {
        self.headers
            .get("x-sim-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// POST `body` as JSON to `path` and read the whole response.
pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    let request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    send(request).await
}

/// GET `path`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(
        Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// Send a request and read the whole response (10 s limit).
pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .expect("response within 10s")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body within 10s")
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A chat request body (with `stream_options` only when streaming, as
/// vLLM and the OpenAI API require).
pub fn chat(content: &str, stream: bool, max_tokens: u32) -> String {
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

/// Poll `condition` every 10 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `text` (a gateway config) with `listener.send_timeout` set to `timeout`.
pub fn with_send_timeout(text: &str, timeout: &str) -> String {
    text.replacen(
        "addr = \"127.0.0.1:0\"\n",
        &format!("addr = \"127.0.0.1:0\"\nsend_timeout = \"{timeout}\"\n"),
        1,
    )
}

/// A node that answers every request with the head of a chunked SSE
/// response, then hands the socket to `body` to write the chunks.
pub async fn raw_node<F, Fut>(body: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                if socket.read(&mut head).await.unwrap_or(0) == 0 {
                    return;
                }
                let start = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(start).await.is_ok() {
                    body(socket).await;
                }
            });
        }
    });
    addr
}

/// A node that answers every request with an endless chunked stream,
/// written as fast as the connection takes it.
pub async fn endless_stream_node() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_node(|mut socket| async move {
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        while socket.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await
}

/// Over `stream` to `gw` (whose one node is an [`endless_stream_node`]):
/// a streamed chat request whose response head is read, then nothing
/// more. Once every buffer on the way is full the gateway's writes wait,
/// and after its `send_timeout` it must let go: the node is free again
/// and the client's connection ends.
pub async fn assert_a_client_that_stops_reading_is_let_go<S>(mut stream: S, gw: &TestGateway)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = chat("stalled", true, 1);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&first[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let node = &gw.gateway.table().pools[0].nodes[0];
    assert_eq!(node.outstanding(), 1);
    assert!(
        eventually(Duration::from_secs(10), || node.outstanding() == 0).await,
        "a client that stopped reading still holds the node"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sink = vec![0u8; 1 << 16];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed");
}

/// A plain upstream that answers every request with a JSON echo of what it
/// received: method, path, headers and body length. For header tests.
pub async fn start_echo() -> (SocketAddr, JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let method = req.method().to_string();
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let echo = serde_json::json!({
                        "method": method, "path": path, "headers": headers, "body_len": body.len(),
                    });
                    let mut response =
                        hyper::Response::new(Full::new(Bytes::from(echo.to_string())));
                    response
                        .headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    response
                        .headers_mut()
                        .insert("connection", "x-upstream-hop".parse().unwrap());
                    response
                        .headers_mut()
                        .insert("x-upstream-hop", "secret".parse().unwrap());
                    // The gateway's request id replaces a node's own.
                    response
                        .headers_mut()
                        .insert("x-request-id", "the-nodes-own".parse().unwrap());
                    for cookie in ["a=1", "b=2"] {
                        response
                            .headers_mut()
                            .append("set-cookie", cookie.parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// One request of a [`Load`] as the client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it finished, since the load started.
    pub at: Duration,
    /// HTTP status (0: no response).
    pub status: u16,
    /// Whether the body arrived intact (streams end with `[DONE]`).
    pub ok: bool,
    /// Node that served it (`x-sim-node`).
    pub node: String,
}

/// Steady client load: `workers` clients sending `body` back to back until
/// stopped (bounded by `max` requests in all, so it always ends).
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Outcome>>>,
    pub started: tokio::time::Instant,
}

impl Load {
    pub fn start(addr: SocketAddr, workers: usize, body: String, max: usize) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let streaming = body.contains("\"stream\":true");
        let tasks = (0..workers)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let sent = Arc::clone(&sent);
                let body = body.clone();
                tokio::spawn(async move {
                    let client = client();
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed)
                        && sent.fetch_add(1, Ordering::Relaxed) < max
                    {
                        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.clone())))
                            .unwrap();
                        let outcome = match tokio::time::timeout(Duration::from_secs(20), async {
                            let response = client.request(request).await.ok()?;
                            let status = response.status().as_u16();
                            let node = response
                                .headers()
                                .get("x-sim-node")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = response.into_body().collect().await.map(|b| b.to_bytes());
                            let ok = match &body {
                                Ok(bytes) => {
                                    status == 200
                                        && (!streaming || bytes.ends_with(b"data: [DONE]\n\n"))
                                }
                                Err(_) => false,
                            };
                            Some((status, ok, node))
                        })
                        .await
                        {
                            Ok(Some((status, ok, node))) => Outcome {
                                at: started.elapsed(),
                                status,
                                ok,
                                node,
                            },
                            _ => Outcome {
                                at: started.elapsed(),
                                status: 0,
                                ok: false,
                                node: String::new(),
                            },
                        };
                        outcomes.push(outcome);
                    }
                    outcomes
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            started,
        }
    }

    /// Stop sending and collect every outcome, in finishing order.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all.sort_by_key(|o| o.at);
        all
    }
}

/// Print one row of the fault-scenario table (collected by bench/faults.sh).
pub fn scenario(name: &str, outcomes: &[Outcome], recovery: Option<Duration>, note: &str) {
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    let recovery = recovery.map_or("-".to_string(), |d| format!("{}ms", d.as_millis()));
    println!(
        "SCENARIO|{name}|{}|{failed}|{recovery}|{note}",
        outcomes.len()
    );
}

/// A gateway started from `text` written to a fresh file under the temp
/// directory (`name` keeps tests apart), with the config store and an
/// admin listener (config API) on an ephemeral loopback port whose token
/// is `token`.
pub async fn start_with_console(
    name: &str,
    text: &str,
    token: &str,
) -> (
    TestGateway,
    Arc<infergate::console::ConfigStore>,
    infergate::admin::AdminServer,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(format!("infergate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let gw = start_gateway(text).await;
    let store = infergate::console::ConfigStore::new(
        gw.gateway.clone(),
        Some(path.clone()),
        text.to_string(),
    );
    let admin = infergate::admin::start_with_store(
        store.clone(),
        &infergate::admin::AdminConfig {
            token: Some(token.into()),
            ..infergate::admin::AdminConfig::default()
        },
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    (gw, store, admin, path)
}

/// `infergate serve --config config` as a child process with `token` as its
/// admin token, logging at `rust_log` to `log` (None: discarded); returns
/// the child and the admin address read from its output.
pub async fn spawn_serve(
    config: &std::path::Path,
    token: &str,
    rust_log: &str,
    log: Option<&std::path::Path>,
) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let stderr = match log {
        Some(path) => std::process::Stdio::from(std::fs::File::create(path).unwrap()),
        None => std::process::Stdio::null(),
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("INFERGATE_ADMIN_TOKEN", token)
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn infergate serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("admin: dashboard and metrics on http://") {
                return rest.trim_end_matches('/').parse::<SocketAddr>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("admin address printed");
    (child, addr)
}
