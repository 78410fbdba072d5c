//! End to end through a real gateway to simulated nodes: chat (streaming and
//! not), completions, embeddings, models, h2c, request ids.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

#[tokio::test]
async fn chat_non_streaming_end_to_end() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let reply = post(
        gw.addr,
        "/v1/chat/completions",
        chat("hello there", false, 8),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(reply.headers["x-request-id"].len(), 32);
    assert!(reply.node().starts_with("sim-"));
}

#[tokio::test]
async fn request_id_is_propagated() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let request = Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .header("x-request-id", "trace-abc-123")
        .body(Full::new(Bytes::from(chat("hi", false, 2))))
        .unwrap();
    let reply = send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-request-id"], "trace-abc-123");
}

/// The first SSE event must reach the client while the node is still
/// generating the rest of the stream.
#[tokio::test]
async fn streaming_chat_arrives_event_by_event() {
    let sim = infergate::sim::SimConfig {
        time_scale: 1.0,
        ..infergate::sim::SimConfig::default()
    };
    let nodes = start_nodes(1, &sim).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let request = Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("stream to me", true, 60))))
        .unwrap();
    let start = Instant::now();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body();
    let mut first_event_at = None;
    let mut node_done_at_first_event = None;
    let mut text = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
    {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            if first_event_at.is_none() && data.starts_with(b"data: ") {
                first_event_at = Some(start.elapsed());
                node_done_at_first_event = Some(nodes[0].stats().completed_ok);
            }
            text.extend_from_slice(data);
        }
    }
    let total = start.elapsed();
    let first = first_event_at.expect("an event");
    assert_eq!(
        node_done_at_first_event,
        Some(0),
        "node had already finished when the first event arrived"
    );
    assert!(
        total - first > Duration::from_millis(100),
        "first {first:?} total {total:?}: stream was buffered"
    );
    let text = String::from_utf8(text).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"usage\""), "usage chunk requested");
    let content_events = text.matches("\"content\"").count();
    assert!(content_events >= 60, "{content_events} content events");
}

#[tokio::test]
async fn completions_and_embeddings_end_to_end() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let body = serde_json::json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5});
    let reply = post(gw.addr, "/v1/completions", body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["object"], "text_completion");
    assert_eq!(reply.json()["usage"]["completion_tokens"], 5);

    let body =
        serde_json::json!({"model": MODEL, "prompt": "stream me", "max_tokens": 4, "stream": true});
    let reply = post(gw.addr, "/v1/completions", body.to_string()).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().trim_end().ends_with("data: [DONE]"));

    let body = serde_json::json!({"model": MODEL, "input": ["first text", "second text"]});
    let reply = post(gw.addr, "/v1/embeddings", body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(v["data"][0]["embedding"].as_array().unwrap().len() > 8);
}

#[tokio::test]
async fn models_lists_the_union_of_routes() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text.push_str(
        "\n[[routes]]\nname = \"mistral\"\npool = \"p\"\n[routes.match]\nmodel = \"mistral-7b\"\n\
         \n[[routes]]\nname = \"globbed\"\npool = \"p\"\n[routes.match]\nmodel = \"qwen-*\"\n",
    );
    let gw = start_gateway(&text).await;
    let reply = get(gw.addr, "/v1/models").await;
    assert_eq!(reply.status, 200);
    let ids: Vec<String> = reply.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![MODEL.to_string(), "mistral-7b".to_string()]);
    assert_eq!(
        get(gw.addr, &format!("/v1/models/{MODEL}")).await.status,
        200
    );
    assert_eq!(get(gw.addr, "/v1/models/gpt-9").await.status, 404);
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("over h2", false, 3))))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn reload_swaps_routes_without_failing_requests_in_flight() {
    let nodes = start_nodes(
        2,
        &infergate::sim::SimConfig {
            time_scale: 0.2,
            ..infergate::sim::SimConfig::default()
        },
    )
    .await;
    let gw = start_gateway(&config_text(&[(nodes[0].addr(), 1)], "round_robin", "")).await;
    let addr = gw.addr;
    // A stream in flight on node 0 while the config moves traffic to node 1.
    let in_flight =
        tokio::spawn(
            async move { post(addr, "/v1/chat/completions", chat("long", true, 100)).await },
        );
    assert!(eventually(Duration::from_secs(5), || nodes[0].stats().running > 0).await);
    let moved = config_text(&[(nodes[1].addr(), 1)], "round_robin", "");
    gw.gateway
        .reload(&infergate::config::Config::from_toml(&moved).unwrap())
        .unwrap();
    let after = post(gw.addr, "/v1/chat/completions", chat("after", false, 2)).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.node(), "sim-1");
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, 200);
    assert!(finished.text().trim_end().ends_with("data: [DONE]"));
    assert_eq!(finished.node(), "sim-0");
}

/// After a wave of client connections closes, the gateway gives the heap
/// they used back to the OS (glibc keeps it otherwise: RSS stayed at its
/// peak). 1,100 connections, each answered once, then all closed.
#[tokio::test]
async fn a_wave_of_closed_connections_returns_the_heap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_gateway(&config_text(
        &[("127.0.0.1:9".parse().unwrap(), 1)],
        "round_robin",
        "",
    ))
    .await;
    let before = infergate::proxy::heap_release::releases();
    let mut open = Vec::with_capacity(1_100);
    for _ in 0..1_100 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        // Answered means accepted and counted by the gateway.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        open.push(stream);
    }
    drop(open);
    let released = eventually(Duration::from_secs(20), || {
        infergate::proxy::heap_release::releases() > before
    })
    .await;
    assert!(released, "no heap release after 1,100 connections closed");
}

/// A keep-alive connection that sits idle parks (hyper's state and
/// buffers dropped, `proxy::worker`) and serves its next request as if
/// nothing happened; the gauge and the counter say so.
#[tokio::test]
async fn an_idle_keep_alive_connection_parks_and_serves_its_next_request() {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let parked = &gw.gateway.telemetry.parked;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = chat("hi", false, 2).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    for round in 0..2 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // The reply is complete once its JSON body closes.
        while !reply.ends_with(b"}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "round {round}: closed after {:?}",
                String::from_utf8_lossy(&reply)
            );
            reply.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        assert_eq!(parked.now.load(Relaxed), 0, "busy, not parked");
        let started = Instant::now();
        let parked_in_time =
            eventually(Duration::from_secs(5), || parked.now.load(Relaxed) == 1).await;
        assert!(parked_in_time, "round {round}: not parked");
        assert!(started.elapsed() >= infergate::proxy::PARK_AFTER / 2);
        assert_eq!(parked.total.load(Relaxed), round + 1);
    }
    let metrics =
        infergate::telemetry::prom::render(&gw.gateway.telemetry, &gw.gateway.table().fleet_view());
    assert!(
        metrics.contains("\ninfergate_client_connection_parks_total 2\n"),
        "{metrics}"
    );
}
