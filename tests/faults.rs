//! Nodes that fail: close mid-stream, refuse connections, hang, stall.
//! Asserts what the client saw and that the gateway stays up.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use infergate::sim::Faults;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Read a streaming response; returns (text received, ended cleanly).
async fn read_stream(addr: std::net::SocketAddr, body: String) -> (u16, String, bool) {
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("no stall")
        {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.extend_from_slice(data);
                }
            }
            Some(Err(_)) => return (status, String::from_utf8_lossy(&text).into_owned(), false),
            None => return (status, String::from_utf8_lossy(&text).into_owned(), true),
        }
    }
}

#[tokio::test]
async fn node_closing_mid_stream_ends_the_stream_with_an_error() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    nodes[0].set_faults(Faults {
        close_after_tokens: Some(5),
        ..Faults::default()
    });
    let (status, text, clean) = read_stream(gw.addr, chat("cut me off", true, 50)).await;
    assert_eq!(status, 200);
    assert!(
        !clean,
        "the client must see the stream break, not a clean end"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        text.contains("\"content\""),
        "tokens before the cut arrive: {text}"
    );
    assert!(
        text.contains("{\"error\""),
        "an SSE error event tells the client why: {text}"
    );

    // The gateway is still up and the node's slot was released.
    nodes[0].set_faults(Faults::default());
    let reply = post(gw.addr, "/v1/chat/completions", chat("again", false, 2)).await;
    assert_eq!(reply.status, 200);
    assert!(
        eventually(Duration::from_secs(2), || gw.gateway.table().pools[0].nodes
            [0]
        .outstanding()
            == 0)
        .await
    );
}

#[tokio::test]
async fn dead_node_is_retried_on_another() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_text(
        &unweighted(&nodes),
        "round_robin",
        "retries = 1",
    ))
    .await;
    nodes[0].crash().await;
    for _ in 0..20 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("survive", false, 1)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.node(), "sim-1");
    }
}

#[tokio::test]
async fn all_nodes_dead_is_a_fast_503_with_retry_after() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let gw = start_gateway(&config_text(
        &unweighted(&nodes),
        "round_robin",
        "retries = 1",
    ))
    .await;
    for node in &nodes {
        node.crash().await;
    }
    let start = Instant::now();
    let reply = post(gw.addr, "/v1/chat/completions", chat("anyone?", false, 1)).await;
    // No node could be reached: like HAProxy, 503 and come back later.
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn hung_node_times_out_with_504() {
    let nodes = start_nodes(1, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        hang: true,
        ..Faults::default()
    });
    let route = "retries = 0\n[routes.timeouts]\nfirst_byte = \"300ms\"\n";
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", route)).await;
    let start = Instant::now();
    let reply = post(gw.addr, "/v1/chat/completions", chat("hello?", false, 1)).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn hung_node_is_retried_on_another_before_first_byte() {
    let nodes = start_nodes(2, &fast_sim()).await;
    nodes[0].set_faults(Faults {
        hang: true,
        ..Faults::default()
    });
    let route = "retries = 1\n[routes.timeouts]\nfirst_byte = \"200ms\"\n";
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", route)).await;
    for _ in 0..4 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("hello?", false, 1)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.node(), "sim-1");
    }
}

/// An upstream that sends response headers and one SSE event, then stalls.
async fn start_stalling_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let event = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                    event.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn stream_idle_timeout_cuts_a_stalled_node() {
    let upstream = start_stalling_upstream().await;
    let route = "[routes.timeouts]\nidle = \"300ms\"\n";
    let gw = start_gateway(&config_text(&[(upstream, 1)], "round_robin", route)).await;
    let start = Instant::now();
    let (status, text, clean) = read_stream(gw.addr, chat("stall", true, 10)).await;
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(!clean);
    assert!(text.contains("\"hi\""), "{text}");
    assert!(text.contains("{\"error\""), "{text}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || gw.gateway.table().pools[0].nodes
            [0]
        .outstanding()
            == 0)
        .await
    );
}

#[tokio::test]
async fn total_timeout_bounds_a_slow_stream() {
    let nodes = start_nodes(
        1,
        &infergate::sim::SimConfig {
            time_scale: 1.0,
            ..fast_sim()
        },
    )
    .await;
    let route = "[routes.timeouts]\ntotal = \"400ms\"\n";
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", route)).await;
    let start = Instant::now();
    let (_, text, clean) = read_stream(gw.addr, chat("long", true, 2000)).await;
    assert!(!clean, "{text}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connection_limit_holds_extra_clients_in_the_backlog() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nmax_connections = 1\n",
    );
    let gw = start_gateway(&text).await;
    // First connection holds the only slot (keep-alive, idle).
    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = "GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n";
    first.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A second client is not served while the first holds the slot...
    let addr = gw.addr;
    let second = tokio::spawn(async move { get(addr, "/v1/models").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "second connection served beyond max_connections"
    );
    // ...and is served as soon as it closes.
    drop(first);
    let reply = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
}
