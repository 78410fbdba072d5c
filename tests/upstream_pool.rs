//! The gateway's own HTTP/1.1 connection pool to nodes: connections are
//! reused once a response has been read to its end (whole or streamed), a
//! node that closes kept connections loses no request, one it ended is
//! closed without waiting for the next request, and chunks a node sent
//! together reach the client together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the raw node answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Content-Length answers, connection kept open.
    KeepAlive,
    /// Chunked answers of [`EVENTS`] chunks written at once, connection
    /// kept open.
    Chunked,
    /// One answer per connection, then the node closes it without saying
    /// so (as when its keep-alive timeout fires).
    CloseAfterOne,
}

/// SSE events in a [`Mode::Chunked`] answer.
const EVENTS: usize = 50;

/// A node written against the socket, counting the connections it accepts.
async fn raw_node(mode: Mode) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, mode));
        }
    });
    (addr, accepted)
}

/// Read one request off `stream` (head, then `Content-Length` bytes of
/// body; `buf` keeps what came after it) and return its head; `None` when
/// the connection ends first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = buf[..head_end].to_vec();
    let length: usize = String::from_utf8_lossy(&head)
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + length);
    Some(head)
}

async fn serve(mut stream: TcpStream, mode: Mode) {
    let mut buf = Vec::new();
    while read_request(&mut stream, &mut buf).await.is_some() {
        let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
        let answer = match mode {
            Mode::KeepAlive | Mode::CloseAfterOne => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            Mode::Chunked => {
                let mut s = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                for i in 0..EVENTS {
                    let event = format!("data: {{\"i\":{i}}}\n\n");
                    s.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
                }
                s.push_str("0\r\n\r\n");
                s
            }
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if matches!(mode, Mode::CloseAfterOne) {
            return;
        }
    }
}

async fn gateway_for(node: SocketAddr) -> TestGateway {
    // One worker thread, so one node connection can serve every request.
    let config = config_text(&[(node, 1)], "round_robin", "retries = 0").replacen(
        "[listener]\n",
        "[listener]\nworkers = 1\n",
        1,
    );
    start_gateway(&config).await
}

#[tokio::test]
async fn sequential_requests_reuse_one_node_connection() {
    let (node, accepted) = raw_node(Mode::KeepAlive).await;
    let gw = gateway_for(node).await;
    for i in 0..30 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 1)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_streamed_response_read_to_the_end_frees_its_connection() {
    let (node, accepted) = raw_node(Mode::Chunked).await;
    let gw = gateway_for(node).await;
    for i in 0..10 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("hi", true, 5)).await;
        assert_eq!(reply.status, 200, "request {i}");
        assert!(reply.text().contains("\"i\":4"), "{}", reply.text());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_node_closing_kept_connections_loses_no_request() {
    let (node, accepted) = raw_node(Mode::CloseAfterOne).await;
    let gw = gateway_for(node).await;
    // No retries at all: a request written onto a connection the node had
    // closed would fail; a closed connection must be noticed and replaced.
    for i in 0..30 {
        let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 1)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
}

/// The HTTP chunks of a chunked body, as the client receives them.
fn http_chunks(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return chunks;
        }
        let data = &body[line_end + 2..line_end + 2 + size];
        chunks.push(data.to_vec());
        body = &body[line_end + 2 + size + 2..];
    }
}

#[tokio::test]
async fn chunks_the_node_sent_together_reach_the_client_in_one_write() {
    let (node, _) = raw_node(Mode::Chunked).await;
    let gw = gateway_for(node).await;
    let body = chat("hi", true, 5);
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let chunks = http_chunks(&answer[head_end..]);
    let events: String = chunks.iter().map(|c| String::from_utf8_lossy(c)).collect();
    let expected: String = (0..EVENTS)
        .map(|i| format!("data: {{\"i\":{i}}}\n\n"))
        .collect();
    // Every event, in order, nothing lost or doubled...
    assert_eq!(events, expected);
    // ...in a few writes, not one per event: the node wrote them at once,
    // so they were all read before the first went out (at most a read
    // boundary splits them).
    assert!(
        chunks.len() <= 3,
        "{} chunks for {EVENTS} events",
        chunks.len()
    );
}

/// A node that answers every request with a small JSON body and sends each
/// request head it read (as bytes) to the returned channel.
async fn recording_node() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_request(&mut stream, &mut buf).await {
                    let _ = heads.send(head);
                    let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Read one response (head and `Content-Length` body) off `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(at) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if out.len() >= at + 4 + length {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => panic!("no whole response: {}", String::from_utf8_lossy(&out)),
        }
    }
}

/// A plain HTTP/1.1 client's header lines reach an HTTP/1.1 node as the
/// client wrote them (names in their case, in their order, repeated lines
/// kept), less the hop-by-hop ones and those the gateway sets itself, which
/// it writes once. (Through a header map, names arrived lowercased.)
#[tokio::test]
async fn a_clients_header_lines_reach_the_node_as_written() {
    let (node, mut heads) = recording_node().await;
    let gw = gateway_for(node).await;
    let body = format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let first = format!(
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw.example\r\nX-Custom-Case: Keep Me\r\n\
         Connection: keep-alive, X-Hop\r\nX-Hop: drop\r\nKeep-Alive: timeout=5\r\nAccept: a\r\nAccept: b\r\n\
         X-Forwarded-For: 203.0.113.7\r\nX-Request-Id: req-1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(first.as_bytes()).await.unwrap();
    let reply = read_response(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let head = String::from_utf8(heads.recv().await.unwrap()).unwrap();
    assert!(
        head.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(
            "\r\nHost: gw.example\r\nX-Custom-Case: Keep Me\r\nAccept: a\r\nAccept: b\r\nContent-Type: application/json\r\n"
        ),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    for gone in ["x-hop", "keep-alive", "connection"] {
        assert!(!lower.contains(gone), "{gone} forwarded: {head}");
    }
    let count = |name: &str| lower.matches(&format!("\r\n{name}:")).count();
    for (name, times) in [
        ("x-forwarded-for", 1),
        ("x-forwarded-proto", 1),
        ("x-request-id", 1),
        ("content-length", 1),
        ("host", 1),
    ] {
        assert_eq!(count(name), times, "{name}: {head}");
    }
    assert!(
        lower.contains("\r\nx-forwarded-for: 203.0.113.7, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(lower.contains("\r\nx-request-id: req-1\r\n"), "{head}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\nx-request-id: req-1\r\n"),
        "{reply}"
    );
    assert!(
        head.ends_with(&format!("content-length: {}\r\n\r\n", body.len())),
        "{head}"
    );

    // Lines ended by a bare LF (RFC 9112 lets a server take them) go on
    // with CRLF.
    let second = format!(
        "POST /v1/chat/completions HTTP/1.1\nHost: gw.example\nX-B: 1\ncontent-length: {}\n\n{body}",
        body.len()
    );
    client.write_all(second.as_bytes()).await.unwrap();
    let reply = read_response(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let head = String::from_utf8(heads.recv().await.unwrap()).unwrap();
    assert!(
        head.contains("\r\nHost: gw.example\r\nX-B: 1\r\n"),
        "{head}"
    );
    assert!(!head.replace("\r\n", "").contains('\n'), "{head:?}");
}

/// An h2c node that sends each request's headers (name: value lines, in
/// the order hyper gives them) to the returned channel and answers 200.
async fn h2c_recording_node() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let heads = heads.clone();
                    async move {
                        let mut seen = String::new();
                        for (name, value) in req.headers() {
                            seen.push_str(&format!(
                                "{name}: {}\n",
                                String::from_utf8_lossy(value.as_bytes())
                            ));
                        }
                        let _ = heads.send(seen);
                        let _ = req.into_body().collect().await;
                        let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
                        let mut response = http::Response::new(Full::new(bytes::Bytes::from(body)));
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// A plain HTTP/1.1 client's lines reach an h2c node (through hyper's
/// client, which takes a map) with the same cuts and additions as an
/// HTTP/1.1 node gets them.
#[tokio::test]
async fn a_clients_header_lines_reach_an_h2c_node_as_a_map() {
    let (node, mut heads) = h2c_recording_node().await;
    let config = config_text(&[(node, 1)], "round_robin", "retries = 0").replacen(
        "name = \"p\"\n",
        "name = \"p\"\nprotocol = \"h2c\"\n",
        1,
    );
    let gw = start_gateway(&config).await;
    let body = format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw.example\r\nX-Custom-Case: Keep Me\r\n\
         Connection: X-Hop\r\nX-Hop: drop\r\nKeep-Alive: timeout=5\r\nAccept: a\r\nAccept: b\r\n\
         X-Forwarded-For: 203.0.113.7\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let reply = read_response(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = heads.recv().await.unwrap();
    for line in [
        "x-custom-case: Keep Me\n",
        "accept: a\naccept: b\n",
        "content-type: application/json\n",
        "x-forwarded-for: 203.0.113.7, 127.0.0.1\n",
        "x-forwarded-proto: http\n",
    ] {
        assert!(seen.contains(line), "{line:?} not in {seen}");
    }
    for gone in ["x-hop", "keep-alive", "connection"] {
        assert!(
            !seen.contains(&format!("{gone}:")),
            "{gone} forwarded: {seen}"
        );
    }
    assert_eq!(seen.matches("x-request-id:").count(), 1, "{seen}");
    assert_eq!(seen.matches("x-forwarded-for:").count(), 1, "{seen}");
}

#[tokio::test]
async fn a_kept_connection_its_node_ended_is_closed_without_more_traffic() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut stream, &mut buf).await.unwrap();
        let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        // The node's keep-alive timeout: it ends its side, then waits for
        // the gateway to close its own (the read's end of stream).
        stream.shutdown().await.unwrap();
        let mut rest = [0u8; 64];
        let _ = closed_tx.send(stream.read(&mut rest).await.ok());
    });
    let gw = gateway_for(node).await;
    let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 1)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // No request follows: the worker must notice the end on its own, within
    // a sweep period or two (5 s each), not at the next request.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), closed_rx).await;
    assert_eq!(
        closed.ok().and_then(Result::ok).flatten(),
        Some(0),
        "the gateway still holds a connection its node ended"
    );
}
