//! The client side of a fault run: a closed loop of chat requests over a
//! fixed number of keep-alive connections, recording every request's
//! start, latency, status, which node answered (`x-sim-node`) and, for
//! streams, whether the stream ended cleanly.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// What the load looks like.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Connections, each with one request at a time.
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Requests per second over all connections (0: as fast as answers come).
    pub rate: u32,
    /// Streamed chat completions instead of plain ones.
    pub streaming: bool,
    /// Tokens each request asks for.
    pub max_tokens: u32,
    /// No new requests in this span (from the start).
    pub pause: Option<(Duration, Duration)>,
    /// Longest a client waits for a whole answer.
    pub timeout: Duration,
    /// A soak's mix instead of one kind of request: 30 % streamed, chat
    /// and completions, priorities and tenants (`x-tenant`) at random.
    pub mixed: bool,
}

/// Priorities a mixed load sends.
const PRIORITIES: [&str; 3] = ["critical", "standard", "sheddable"];
/// Tenants a mixed load sends (`x-tenant`; routes may match on it).
pub const TENANTS: [&str; 2] = ["blue", "green"];

/// One request as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Sent at, from the start of the load.
    pub start: Duration,
    /// Until the whole answer was read (or the failure).
    pub latency: Duration,
    /// HTTP status; 0 when no response came (connection error, timeout).
    pub status: u16,
    /// Index of the node that answered, from `x-sim-node`.
    pub node: Option<usize>,
    /// The whole answer arrived (a stream with its `[DONE]`).
    pub complete: bool,
    /// It was a streamed request.
    pub streaming: bool,
}

impl Record {
    /// A success: 200 and a complete answer.
    pub fn ok(&self) -> bool {
        self.status == 200 && self.complete
    }
}

/// Drive `spec` at `target` (a proxy or node) from `begin`; `nodes` names
/// the nodes so answers can be attributed. Returns every request, ordered
/// by start.
pub async fn run(
    target: SocketAddr,
    spec: &LoadSpec,
    nodes: &[String],
    begin: Instant,
) -> Vec<Record> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(spec.connections)
        .build(connector);
    let body = |chat: bool, streaming: bool| {
        let mut body = serde_json::json!({
            "model": "llama-3.1-8b-instruct",
            "max_tokens": spec.max_tokens,
            "stream": streaming,
        });
        if chat {
            body["messages"] =
                serde_json::json!([{"role": "user", "content": "Say hello to the fault lab."}]);
        } else {
            body["prompt"] = serde_json::json!("Say hello to the fault lab.");
        }
        Bytes::from(body.to_string())
    };
    // (chat?, streaming?) -> body
    let bodies = [
        body(false, false),
        body(false, true),
        body(true, false),
        body(true, true),
    ];
    let uri = |path: &str| format!("http://{target}{path}").parse::<http::Uri>();
    let (Ok(chat_uri), Ok(completions_uri)) = (uri("/v1/chat/completions"), uri("/v1/completions"))
    else {
        return Vec::new();
    };
    let workers: Vec<_> = (0..spec.connections)
        .map(|worker| {
            let client = client.clone();
            let bodies = bodies.clone();
            let (chat_uri, completions_uri) = (chat_uri.clone(), completions_uri.clone());
            let spec = spec.clone();
            let nodes = nodes.to_vec();
            tokio::spawn(async move {
                let mut records = Vec::new();
                let gap = (spec.rate > 0).then(|| {
                    Duration::from_secs_f64(spec.connections as f64 / f64::from(spec.rate))
                });
                // Spread the workers' first requests over one gap.
                let mut next = begin
                    + gap
                        .unwrap_or_default()
                        .mul_f64(worker as f64 / spec.connections as f64);
                loop {
                    if let Some(gap) = gap {
                        tokio::time::sleep_until(next).await;
                        next += gap;
                    }
                    let offset = begin.elapsed();
                    if offset >= spec.duration {
                        break;
                    }
                    if let Some((from, to)) = spec.pause {
                        if offset >= from && offset < to {
                            tokio::time::sleep_until(begin + to).await;
                            next = begin + to;
                            continue;
                        }
                    }
                    let (chat, streaming) = if spec.mixed {
                        (fastrand::f64() < 0.7, fastrand::f64() < 0.3)
                    } else {
                        (true, spec.streaming)
                    };
                    let uri = if chat { &chat_uri } else { &completions_uri };
                    let mut request =
                        Request::post(uri.clone()).header("content-type", "application/json");
                    if spec.mixed {
                        request = request
                            .header(
                                "x-infergate-priority",
                                PRIORITIES[fastrand::usize(..PRIORITIES.len())],
                            )
                            .header("x-tenant", TENANTS[fastrand::usize(..TENANTS.len())]);
                    }
                    let body = bodies[usize::from(chat) * 2 + usize::from(streaming)].clone();
                    let Ok(request) = request.body(Full::new(body)) else {
                        break;
                    };
                    let sent = Instant::now();
                    let (status, node, complete) = tokio::time::timeout(
                        spec.timeout,
                        exchange(&client, request, &nodes, streaming),
                    )
                    .await
                    .unwrap_or((0, None, false));
                    records.push(Record {
                        start: offset,
                        latency: sent.elapsed(),
                        status,
                        node,
                        complete,
                        streaming,
                    });
                }
                records
            })
        })
        .collect();
    let mut records = Vec::new();
    for worker in workers {
        if let Ok(mut part) = worker.await {
            records.append(&mut part);
        }
    }
    records.sort_by_key(|r| r.start);
    records
}

/// One request: (status, answering node, complete).
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    nodes: &[String],
    streaming: bool,
) -> (u16, Option<usize>, bool) {
    let Ok(response) = client.request(request).await else {
        return (0, None, false);
    };
    let status = response.status().as_u16();
    let node = response
        .headers()
        .get("x-sim-node")
        .and_then(|v| v.to_str().ok())
        .and_then(|name| nodes.iter().position(|n| n == name));
    let mut body = response.into_body();
    let mut tail: Vec<u8> = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    // Keep only the end: enough to see `[DONE]`.
                    tail.extend_from_slice(data);
                    if tail.len() > 256 {
                        tail.drain(..tail.len() - 256);
                    }
                }
            }
            Some(Err(_)) => return (status, node, false),
            None => break,
        }
    }
    let complete = if streaming && status == 200 {
        let tail = String::from_utf8_lossy(&tail);
        tail.contains("[DONE]") && !tail.contains("\"error\"")
    } else {
        true
    };
    (status, node, complete)
}
