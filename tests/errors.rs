//! What clients see when the request is wrong: malformed and oversize bodies,
//! unknown models, oversize headers; and the headers a node sees.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn malformed_json_is_a_400_in_openai_format_and_never_forwarded() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    for bad in [
        "{\"model\": \"x\", \"messages\": [",
        "not json at all",
        "[1, 2, 3]",
        "{\"model\": 5, \"messages\": []}",
        "",
    ] {
        let reply = post(gw.addr, "/v1/chat/completions", bad.to_string()).await;
        assert_eq!(reply.status, 400, "{bad:?} -> {}", reply.text());
        let v = reply.json();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        nodes[0].stats().requests_total,
        0,
        "nothing may reach the node"
    );
}

#[tokio::test]
async fn unknown_model_is_a_404_that_names_only_the_model() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let body =
        serde_json::json!({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(gw.addr, "/v1/chat/completions", body.to_string()).await;
    assert_eq!(reply.status, 404);
    let v = reply.json();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("gpt-17"));
    assert!(!message.contains("127.0.0.1"), "no addresses: {message}");
    assert_eq!(nodes[0].stats().requests_total, 0);
}

#[tokio::test]
async fn oversize_bodies_get_413_declared_or_streamed() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nmax_body_bytes = 2048\n",
    );
    let gw = start_gateway(&text).await;
    let big = chat(&"x".repeat(4096), false, 1);
    let reply = post(gw.addr, "/v1/chat/completions", big.clone()).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "request_too_large");

    // Chunked, no content-length: the limit holds while reading.
    let mut raw = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(512) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let head = raw_exchange(gw.addr, &raw).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    let small = post(gw.addr, "/v1/chat/completions", chat("fits", false, 1)).await;
    assert_eq!(small.status, 200);
    assert_eq!(nodes[0].stats().requests_total, 1);
}

/// Write raw bytes to the gateway and read what comes back (until close or 5 s).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversize_headers_are_refused_with_431() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let huge = "a".repeat(64 * 1024);
    let raw = format!("GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-big: {huge}\r\n\r\n");
    let head = raw_exchange(gw.addr, raw.as_bytes()).await;
    assert!(
        head.starts_with("HTTP/1.1 431"),
        "{}",
        &head[..head.len().min(200)]
    );
}

#[tokio::test]
async fn node_sees_forwarding_headers_and_no_hop_by_hop() {
    let (echo, _task) = start_echo().await;
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n[[pools]]\nname = \"web\"\n[[pools.nodes]]\nname = \"echo\"\naddr = \"{echo}\"\n\
         [[routes]]\nname = \"other\"\npool = \"web\"\n[routes.match]\nfamily = \"other\"\n"
    );
    let gw = start_gateway(&text).await;
    let request = Request::post(format!("http://{}/some/api?x=1", gw.addr))
        .header("connection", "x-hop")
        .header("x-hop", "drop me")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-keep", "keep me")
        .body(Full::new(Bytes::from_static(b"plain body")))
        .unwrap();
    let reply = send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    let h = &v["headers"];
    assert_eq!(v["path"], "/some/api?x=1");
    assert_eq!(v["body_len"], 10);
    assert_eq!(h["x-keep"], "keep me");
    assert!(h.get("x-hop").is_none(), "{h}");
    assert!(h.get("proxy-authorization").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-request-id"].as_str().unwrap(),
        reply.headers["x-request-id"].to_str().unwrap()
    );
    // The node's response headers, as an HTTP/1.1 client and an HTTP/2
    // one get them (the gateway writes the first itself, hyper the other).
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let over_h2 = h2
        .request(
            Request::get(format!("http://{}/other", gw.addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(over_h2.version(), http::Version::HTTP_2);
    for headers in [&reply.headers, over_h2.headers()] {
        assert!(
            !headers.contains_key("x-upstream-hop") && !headers.contains_key("connection"),
            "response hop-by-hop header leaked: {headers:?}"
        );
        assert_eq!(headers["content-type"], "application/json");
        let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{headers:?}");
        assert_ne!(ids[0], "the-nodes-own");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
}

#[tokio::test]
async fn request_with_no_route_is_a_404_in_family_format() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let reply = post(
        gw.addr,
        "/api/generate",
        "{\"model\":\"llama3\",\"prompt\":\"hi\"}",
    )
    .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.json()["error"].is_string(),
        "ollama format: {}",
        reply.text()
    );
}

#[test]
fn check_command_reports_field_errors() {
    let dir = std::env::temp_dir().join(format!("infergate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &good,
        config_text(&[("127.0.0.1:9".parse().unwrap(), 1)], "power_of_two", ""),
    )
    .unwrap();
    std::fs::write(
        &bad,
        config_text(&[("127.0.0.1:9".parse().unwrap(), 1)], "fastest", ""),
    )
    .unwrap();
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK (1 pools, 1 nodes, 1 routes)"));
    let refused = run(&bad);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("routes[0].policy: unknown policy \"fastest\""),
        "{stderr}"
    );
    // A prefix-aware route on a pool past the prefix memory's 16,384
    // nodes passes with a warning naming how many nodes it leaves out; a
    // pool of 70 (past one group of 64) without one.
    let pool = |n: usize| -> Vec<(std::net::SocketAddr, u32)> {
        (0..n)
            .map(|i| (format!("127.0.0.1:{}", 20000 + i).parse().unwrap(), 1))
            .collect()
    };
    let large = dir.join("large.toml");
    std::fs::write(&large, config_text(&pool(16_390), "prefix_aware", "")).unwrap();
    let warned = run(&large);
    assert!(warned.status.success());
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(
        stderr.contains("first 16384 nodes; prompts sent to the other 6 are not remembered"),
        "{stderr}"
    );
    let seventy = dir.join("seventy.toml");
    std::fs::write(&seventy, config_text(&pool(70), "prefix_aware", "")).unwrap();
    let quiet = run(&seventy);
    assert!(quiet.status.success());
    assert!(String::from_utf8_lossy(&quiet.stderr).is_empty());
    assert!(String::from_utf8_lossy(&run(&good).stderr).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
