//! End-to-end tests of simulated nodes over real HTTP on loopback.

use std::time::{Duration, Instant};

use ::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::engine::{run_engine, Core, Event, SeqRequest};
use super::*;
use crate::classify::prefix::{estimate_tokens, feed_message, seed_for_model, PrefixHasher};

type C = Client<HttpConnector, Full<Bytes>>;

fn client() -> C {
    Client::builder(TokioExecutor::new()).build_http()
}

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.01,
        kv_watermark: 0.0,
        ..SimConfig::small()
    }
}

async fn start(cfg: SimConfig) -> SimNode {
    SimNode::start("t", "127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn call(c: &C, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = c.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

async fn post_json(
    c: &C,
    addr: SocketAddr,
    path: &str,
    v: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let (s, h, b) = call(c, post(addr, path, v)).await;
    (s, h, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn get_text(c: &C, addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let (s, _, b) = call(c, get(addr, path)).await;
    (s, String::from_utf8(b.to_vec()).unwrap())
}

/// Poll `f` until it is true or `timeout` passes.
async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn chat(content: &str, max_tokens: Option<u32>, stream: bool) -> Value {
    let mut v = json!({"model": "llama-3.1-8b-instruct", "stream": stream,
                       "messages": [{"role": "user", "content": content}]});
    if let Some(n) = max_tokens {
        v["max_tokens"] = json!(n);
    }
    v
}

/// Read a streaming body: (arrival time, bytes) per frame and whether it
/// ended cleanly (`Ok`) or with an error.
async fn read_stream(body: &mut Incoming) -> (Vec<(Instant, Bytes)>, bool) {
    let mut frames = Vec::new();
    loop {
        match body.frame().await {
            None => return (frames, true),
            Some(Err(_)) => return (frames, false),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    frames.push((Instant::now(), d));
                }
            }
        }
    }
}

fn sse_events(frames: &[(Instant, Bytes)]) -> Vec<String> {
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_string())
        .collect()
}

#[tokio::test]
async fn chat_and_completions_non_streaming() {
    let node = start(fast()).await;
    let c = client();
    let (s, h, v) = post_json(
        &c,
        node.addr(),
        "/v1/chat/completions",
        &chat("hello there", Some(5), false),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-sim-node"], "t");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        5
    );
    // Prompt tokens follow the shared fingerprint.
    let mut hsh = PrefixHasher::new(seed_for_model("llama-3.1-8b-instruct"), usize::MAX);
    feed_message(&mut hsh, "user", ["hello there"]);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        estimate_tokens(hsh.total_bytes())
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 5
    );

    // No max_tokens: the configured default, finishing with "stop".
    let (_, _, v) = post_json(
        &c,
        node.addr(),
        "/v1/chat/completions",
        &chat("hi", None, false),
    )
    .await;
    assert_eq!(
        v["usage"]["completion_tokens"],
        node.config().default_max_tokens
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let body = json!({"model": "llama-3.1-8b-instruct", "prompt": ["abc", "def"], "max_completion_tokens": 3});
    let (s, _, v) = post_json(&c, node.addr(), "/v1/completions", &body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 2); // 6 bytes
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let st = node.stats();
    assert_eq!((st.requests_total, st.completed_ok), (3, 3));
    assert_eq!(st.requests_by_endpoint["/v1/chat/completions"], 2);
    node.shutdown().await;
}

#[tokio::test]
async fn errors_models_embeddings_and_control() {
    let node = start(fast()).await;
    let c = client();
    let (s, _, v) = post_json(
        &c,
        node.addr(),
        "/v1/chat/completions",
        &json!({"model": "gpt-9", "messages": []}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // vLLM's shape (engine/serving.py `_check_model`).
    assert_eq!(v["error"]["code"], 404);
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["type"], "NotFoundError");
    assert_eq!(v["error"]["message"], "The model `gpt-9` does not exist.");
    let (s, _, b) = call(
        &c,
        Request::post(format!("http://{}/v1/completions", node.addr()))
            .body(Full::new(Bytes::from("{nope")))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(serde_json::from_slice::<Value>(&b).unwrap()["error"]["message"].is_string());

    let (s, _, v) = post_json(
        &c,
        node.addr(),
        "/v1/embeddings",
        &json!({"input": ["a b c d", "x"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let (_, _, v2) = post_json(
        &c,
        node.addr(),
        "/v1/embeddings",
        &json!({"input": ["a b c d", "x"]}),
    )
    .await;
    assert_eq!(v["data"], v2["data"]);

    let (s, m) = get_text(&c, node.addr(), "/v1/models").await;
    assert_eq!(s, StatusCode::OK);
    assert!(m.contains("llama-3.1-8b-instruct"));

    // Faults over HTTP.
    let (s, _, f) = post_json(
        &c,
        node.addr(),
        "/sim/faults",
        &json!({"error_rate": 1.0, "error_status": 503}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f["error_status"], 503);
    assert_eq!(node.faults().error_rate, 1.0);
    let (s, _, v) = post_json(&c, node.addr(), "/v1/completions", &json!({"prompt": "x"})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].is_object());
    let (_, stats) = get_text(&c, node.addr(), "/sim/stats").await;
    let stats: SimStats = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats.errors_injected, 1);
    node.shutdown().await;
}

/// What vLLM refuses, the simulator refuses, with vLLM's statuses and
/// shapes: `stream_options` without streaming, missing or mistyped fields,
/// a prompt or limit past the context length; unknown paths as FastAPI.
#[tokio::test]
async fn refuses_what_vllm_refuses() {
    let node = start(SimConfig {
        max_model_len: 1000,
        ..fast()
    })
    .await;
    let c = client();
    let addr = node.addr();
    let mut body = chat("hi", Some(4), false);
    body["stream_options"] = json!({"include_usage": true});
    let (s, _, v) = post_json(&c, addr, "/v1/chat/completions", &body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "stream_options");
    assert_eq!(v["error"]["code"], 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Stream options can only be defined when `stream=True`."));
    let (s, _, _) = post_json(
        &c,
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The same with streaming on is fine.
    body["stream"] = json!(true);
    let (s, _, _) = call(&c, post(addr, "/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::OK);

    for (path, bad) in [
        (
            "/v1/chat/completions",
            json!({"model": "llama-3.1-8b-instruct"}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        ),
        ("/v1/completions", json!({"max_tokens": 3})),
        ("/v1/embeddings", json!({"inputs": "x"})),
    ] {
        let (s, _, v) = post_json(&c, addr, path, &bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
        assert_eq!(v["error"]["type"], "Bad Request", "{v}");
        assert_eq!(v["error"]["code"], 400);
    }

    // Context length: 2000 bytes ≈ 500 tokens of prompt, 1000 in all.
    let long = "x".repeat(2000);
    let (s, _, v) = post_json(
        &c,
        addr,
        "/v1/chat/completions",
        &chat(&long, Some(600), false),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["type"], "BadRequestError");
    assert_eq!(v["error"]["param"], "max_tokens");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("This model's maximum context length is 1000 tokens"));
    let (s, _, v) = post_json(
        &c,
        addr,
        "/v1/completions",
        &json!({"prompt": "x".repeat(4000)}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "input_tokens");
    // No limit given: the output fills what is left of the context.
    let (s, _, v) = post_json(
        &c,
        addr,
        "/v1/completions",
        &json!({"prompt": "x".repeat(3960)}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 64);

    let (s, _, b) = call(&c, get(addr, "/v1/nope")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["detail"],
        "Not Found"
    );
    let (s, _, _) = call(&c, get(addr, "/v1/chat/completions")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(node.stats().completed_ok, 2);
    node.shutdown().await;
}

#[tokio::test]
async fn error_rate_one_fails_everything() {
    let node = start(fast()).await;
    node.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let c = client();
    for _ in 0..5 {
        let (s, h, v) = post_json(
            &c,
            node.addr(),
            "/v1/chat/completions",
            &chat("x", Some(2), false),
        )
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(h["x-sim-node"], "t");
        assert!(v["error"]["message"].is_string());
    }
    let st = node.stats();
    assert_eq!((st.errors_injected, st.completed_ok), (5, 0));
    node.shutdown().await;
}

#[tokio::test]
async fn streaming_flows_token_by_token() {
    // 40 tokens of ~6.6 ms simulated at time_scale 0.2: ~50 ms of wall time.
    let node = start(SimConfig {
        time_scale: 0.2,
        ..fast()
    })
    .await;
    let c = client();
    let resp = c
        .request(post(
            node.addr(),
            "/v1/chat/completions",
            &chat("stream please", Some(40), true),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(resp.headers()["x-sim-node"], "t");
    let (frames, clean) = read_stream(&mut resp.into_body()).await;
    assert!(clean);
    let spread = frames.last().unwrap().0 - frames[0].0;
    assert!(
        spread > Duration::from_millis(20),
        "events arrived together: {spread:?}"
    );
    let ev = sse_events(&frames);
    assert_eq!(ev.len(), 40 + 2);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let fin: Value = serde_json::from_str(&ev[40]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert!(ev.iter().all(|e| !e.contains("\"usage\"")));

    // With include_usage: a usage chunk with empty choices right before [DONE].
    let mut body = chat("stream please", Some(3), true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = c
        .request(post(node.addr(), "/v1/chat/completions", &body))
        .await
        .unwrap();
    let (frames, clean) = read_stream(&mut resp.into_body()).await;
    assert!(clean);
    let ev = sse_events(&frames);
    assert_eq!(ev.len(), 3 + 3);
    let u: Value = serde_json::from_str(&ev[4]).unwrap();
    assert_eq!(u["choices"], json!([]));
    assert_eq!(u["usage"]["completion_tokens"], 3);
    assert_eq!(ev[5], "[DONE]");

    // Completions streaming.
    let body = json!({"prompt": "p", "max_tokens": 2, "stream": true});
    let resp = c
        .request(post(node.addr(), "/v1/completions", &body))
        .await
        .unwrap();
    let (frames, _) = read_stream(&mut resp.into_body()).await;
    let ev = sse_events(&frames);
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert!(first["choices"][0]["text"].is_string());
    node.shutdown().await;
}

#[tokio::test]
async fn close_after_tokens_cuts_streams() {
    let node = start(fast()).await;
    node.set_faults(Faults {
        close_after_tokens: Some(3),
        ..Faults::default()
    });
    let c = client();
    let resp = c
        .request(post(
            node.addr(),
            "/v1/chat/completions",
            &chat("x", Some(10), true),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (frames, clean) = read_stream(&mut resp.into_body()).await;
    assert!(!clean, "stream must end with an error");
    let ev = sse_events(&frames);
    assert_eq!(ev.len(), 3);
    assert!(!ev.iter().any(|e| e == "[DONE]"));
    // Non-streaming: the connection closes before any response.
    let r = c
        .request(post(
            node.addr(),
            "/v1/chat/completions",
            &chat("x", Some(10), false),
        ))
        .await;
    assert!(r.is_err());
    node.shutdown().await;
}

#[tokio::test]
async fn hang_never_answers_until_cleared() {
    let node = start(fast()).await;
    node.set_faults(Faults {
        hang: true,
        ..Faults::default()
    });
    let c = client();
    let r = tokio::time::timeout(
        Duration::from_millis(150),
        c.request(post(
            node.addr(),
            "/v1/chat/completions",
            &chat("x", Some(1), false),
        )),
    )
    .await;
    assert!(r.is_err(), "a hung node answered");
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        c.request(get(node.addr(), "/health")),
    )
    .await;
    assert!(r.is_err(), "a hung node answered /health");
    // Control endpoints still work.
    let (s, _, _) = post_json(&c, node.addr(), "/sim/faults", &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = get_text(&c, node.addr(), "/health").await;
    assert_eq!(s, StatusCode::OK);
    node.shutdown().await;
}

#[tokio::test]
async fn added_latency_is_wall_clock() {
    let node = start(fast()).await;
    node.set_faults(Faults {
        added_latency_ms: 60,
        ..Faults::default()
    });
    let c = client();
    let t = Instant::now();
    let (s, _) = get_text(&c, node.addr(), "/health").await;
    assert_eq!(s, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(60));
    node.shutdown().await;
}

#[tokio::test]
async fn crash_refuses_and_restart_serves_fresh() {
    let node = start(SimConfig {
        time_scale: 0.5,
        ..fast()
    })
    .await;
    let addr = node.addr();
    let c = client();
    let _ = post_json(
        &c,
        addr,
        "/v1/chat/completions",
        &chat(
            "warm the cache up with a long enough prompt to fill blocks, sixty-four bytes or more",
            Some(1),
            false,
        ),
    )
    .await;
    assert!(node.stats().kv_blocks_cached > 0);
    // An in-flight stream is aborted by the crash.
    let resp = c
        .request(post(
            addr,
            "/v1/chat/completions",
            &chat("x", Some(1000), true),
        ))
        .await
        .unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().is_ok());
    node.crash().await;
    let (_, clean) = tokio::time::timeout(Duration::from_secs(2), read_stream(&mut body))
        .await
        .expect("stream aborted");
    assert!(!clean);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "crashed node accepted"
    );
    node.restart().await.unwrap();
    let c = client();
    let (s, h, _) = post_json(&c, addr, "/v1/chat/completions", &chat("x", Some(1), false)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-sim-node"], "t");
    let st = node.stats();
    assert_eq!((st.kv_blocks_cached, st.requests_total), (0, 1));
    node.shutdown().await;
}

#[tokio::test]
async fn max_num_seqs_bounds_running_rest_wait_in_metrics() {
    let node = start(SimConfig {
        time_scale: 0.1,
        max_num_seqs: 2,
        ..fast()
    })
    .await;
    let addr = node.addr();
    let c = client();
    let mut bodies = Vec::new();
    for i in 0..5 {
        let resp = c
            .request(post(
                addr,
                "/v1/chat/completions",
                &chat(&format!("r{i}"), Some(500), true),
            ))
            .await
            .unwrap();
        bodies.push(resp.into_body());
    }
    assert!(
        eventually(Duration::from_secs(2), || {
            let s = node.stats();
            s.running == 2 && s.waiting == 3
        })
        .await,
        "{:?}",
        node.stats()
    );
    let (_, m) = get_text(&c, addr, "/metrics").await;
    assert!(
        m.contains("vllm:num_requests_running{model_name=\"llama-3.1-8b-instruct\"} 2.0"),
        "{m}"
    );
    assert!(
        m.contains("vllm:num_requests_waiting{model_name=\"llama-3.1-8b-instruct\"} 3.0"),
        "{m}"
    );
    assert!(node.stats().kv_usage > 0.0);
    // Clients leaving free their sequences and blocks.
    drop(bodies);
    assert!(
        eventually(Duration::from_secs(2), || {
            let s = node.stats();
            s.running + s.waiting == 0 && s.kv_usage == 0.0
        })
        .await,
        "{:?}",
        node.stats()
    );
    assert_eq!(node.stats().aborted, 5);
    node.shutdown().await;
}

#[tokio::test]
async fn prefix_cache_hit_makes_prefill_cheaper() {
    // 1 ms of simulated prefill per token, so prefill dominates TTFT.
    let cfg = SimConfig {
        time_scale: 0.05,
        prefill_secs_per_token: 0.001,
        ..fast()
    };
    let node = start(cfg).await;
    let c = client();
    let system = "You are a helpful assistant. ".repeat(40); // ~1160 bytes
    let req = |q: &str| {
        json!({"max_tokens": 1, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let (_, _, a) = post_json(
        &c,
        node.addr(),
        "/v1/chat/completions",
        &req("first question"),
    )
    .await;
    let s1 = node.stats();
    assert_eq!(s1.prefix_hits_tokens, 0);
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, _, b) = post_json(&c, node.addr(), "/v1/chat/completions", &req("another one")).await;
    let s2 = node.stats();
    let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 256, "cached {cached}");
    assert_eq!(s2.prefix_hits_tokens, cached);
    assert_eq!(
        s2.prefix_queries_tokens,
        a["usage"]["prompt_tokens"].as_u64().unwrap()
            + b["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let ttft1 = s1.ttft_seconds_sum;
    let ttft2 = s2.ttft_seconds_sum - s1.ttft_seconds_sum;
    assert!(ttft2 < ttft1 / 2.0, "ttft {ttft1} then {ttft2}");
    let (_, m) = get_text(&c, node.addr(), "/metrics").await;
    assert!(m.contains(&format!(
        "vllm:prefix_cache_hits_total{{model_name=\"llama-3.1-8b-instruct\"}} {cached}\n"
    )));
    node.shutdown().await;
}

#[tokio::test]
async fn half_speed_node_is_twice_as_slow() {
    let cfg = SimConfig {
        time_scale: 0.05,
        ..fast()
    };
    let nodes = start_fleet("127.0.0.1".parse().unwrap(), 0, 2, &cfg, &[1.0, 0.5])
        .await
        .unwrap();
    assert_eq!((nodes[0].name(), nodes[1].name()), ("sim-0", "sim-1"));
    let c = client();
    let run = |addr: SocketAddr| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            let (s, _, _) = post_json(
                &c,
                addr,
                "/v1/completions",
                &json!({"prompt": "same", "max_tokens": 100}),
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            t.elapsed()
        }
    };
    let (fast_t, slow_t) = tokio::join!(run(nodes[0].addr()), run(nodes[1].addr()));
    let wall = slow_t.as_secs_f64() / fast_t.as_secs_f64();
    let sim = nodes[1].stats().e2e_seconds_sum / nodes[0].stats().e2e_seconds_sum;
    assert!((1.5..2.6).contains(&wall), "wall ratio {wall}");
    assert!((1.7..2.3).contains(&sim), "simulated ratio {sim}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn batching_slows_each_decode_step() {
    // Engine-level: decode step = 10 ms + 10 ms x batch (simulated).
    let cfg = SimConfig {
        time_scale: 0.01,
        decode_base_secs: 0.01,
        decode_per_seq_secs: 0.01,
        prefill_secs_per_token: 0.0,
        ..fast()
    };
    let core = Core::new(cfg, Arc::new(Mutex::new(Faults::default())));
    let engine = tokio::spawn(run_engine(core.clone()));
    async fn finish(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) {
        while let Some(e) = rx.recv().await {
            if matches!(e, Event::Done(_)) {
                return;
            }
        }
    }
    let req = || SeqRequest {
        tokens: Arc::from(Vec::new()),
        prompt_tokens: 8,
        hashes: vec![],
        max_tokens: 30,
        finish_reason: "length",
        lora: None,
    };
    finish(core.submit(req()).unwrap()).await;
    let single = core.stats("t").e2e_seconds_sum;
    let rxs: Vec<_> = (0..8).map(|_| core.submit(req()).unwrap()).collect();
    for rx in rxs {
        finish(rx).await;
    }
    let batched = (core.stats("t").e2e_seconds_sum - single) / 8.0;
    // ~0.6 s alone vs ~2.7 s in a batch of 8.
    assert!(batched > single * 3.0, "single {single} batched {batched}");
    engine.abort();
}

#[tokio::test]
async fn metrics_parse_and_use_vllm_names() {
    let node = start(fast()).await;
    let c = client();
    let _ = post_json(
        &c,
        node.addr(),
        "/v1/chat/completions",
        &chat("hello", Some(4), false),
    )
    .await;
    let (s, m) = get_text(&c, node.addr(), "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    for line in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name_labels, value) = line.rsplit_once(' ').expect("name value");
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let name = name_labels.split('{').next().unwrap();
        assert!(
            name.starts_with("vllm:") && !name.contains(' '),
            "bad name in {line}"
        );
        if name_labels.contains('{') {
            assert!(
                name_labels.ends_with('}')
                    && name_labels.contains("model_name=\"llama-3.1-8b-instruct\""),
                "{line}"
            );
        }
    }
    for n in [
        "vllm:num_requests_running{",
        "vllm:num_requests_waiting{",
        "vllm:kv_cache_usage_perc{",
        "vllm:gpu_cache_usage_perc{",
        "vllm:prefix_cache_queries_total{",
        "vllm:prefix_cache_hits_total{",
        "vllm:time_to_first_token_seconds_bucket{",
        "vllm:e2e_request_latency_seconds_bucket{",
        "vllm:e2e_request_latency_seconds_count{",
        "vllm:prompt_tokens_total{",
        "vllm:generation_tokens_total{",
    ] {
        assert!(m.contains(n), "missing {n}");
    }
    assert!(m.contains("vllm:request_success_total{model_name=\"llama-3.1-8b-instruct\",finished_reason=\"length\"} 1\n"));
    assert!(m.contains("vllm:generation_tokens_total{model_name=\"llama-3.1-8b-instruct\"} 4\n"));
    assert!(m.contains(
        "vllm:time_to_first_token_seconds_count{model_name=\"llama-3.1-8b-instruct\"} 1\n"
    ));
    node.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let node = start(fast()).await;
    let c: C = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = c
        .request(post(
            node.addr(),
            "/v1/chat/completions",
            &chat("h2", Some(3), true),
        ))
        .await
        .unwrap();
    assert_eq!(resp.version(), ::http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-sim-node"], "t");
    let (frames, clean) = read_stream(&mut resp.into_body()).await;
    assert!(clean);
    assert_eq!(sse_events(&frames).last().unwrap(), "[DONE]");
    node.shutdown().await;
}
