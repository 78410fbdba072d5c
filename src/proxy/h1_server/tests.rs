//! The connection driver against scripted clients on loopback, in front of
//! a gateway with one scripted node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{serve, Limits};
use crate::config::Config;
use crate::proxy::drain::Drain;
use crate::proxy::Gateway;

/// A node that reads each request (head, then a `content-length` body)
/// and answers with `answer(path, body length)`; every request's path is
/// reported on `seen` as it arrives.
async fn node(
    answer: fn(&str, usize) -> Option<String>,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    let _ = seen.send(path.clone());
                    let Some(reply) = answer(&path, length) else {
                        // Never answers; holds the connection.
                        std::future::pending::<()>().await;
                        return;
                    };
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    if reply.contains("connection: close") {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen_rx)
}

/// The path and body length as a small JSON-less text body.
fn echo(path: &str, length: usize) -> Option<String> {
    let body = format!("{path} {length}");
    Some(format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn gateway(node: SocketAddr, listener: &str) -> Arc<Gateway> {
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n{listener}\n[[pools]]\nname = \"p\"\n\
         [[pools.nodes]]\nname = \"n\"\naddr = \"{node}\"\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\nretries = 0\n"
    );
    Gateway::new(&Config::from_toml(&text).unwrap()).unwrap()
}

/// A client connected to `gateway` through the driver alone.
async fn client(gateway: &Arc<Gateway>) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Arc::clone(gateway);
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        let limits = {
            let table = gateway.table();
            Limits {
                header_timeout: table.listener.header_timeout,
                idle_timeout: table.listener.idle_timeout,
                send_timeout: table.listener.send_timeout,
                max_head: table.listener.max_header_bytes.max(8192),
            }
        };
        serve(
            stream,
            Instant::now(),
            peer,
            limits,
            gateway,
            Arc::new(Drain::default()),
        )
        .await;
    });
    TcpStream::connect(addr).await.unwrap()
}

/// Read until `done` says the bytes so far are complete, or the client's
/// side closes; fails after 5 s.
async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if done(&text) {
            return (text, false);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("no complete answer in time: {text:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (text, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (node, _) = node(echo).await;
    let gw = gateway(node, "");
    let mut c = client(&gw).await;
    c.write_all(
        b"GET /a HTTP/1.1\r\nhost: gw\r\n\r\nPOST /b HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nhost: gw\r\n\r\n",
    )
    .await
    .unwrap();
    let (text, closed) = read_until(&mut c, |t| t.contains("/c 0")).await;
    assert!(!closed);
    let a = text.find("/a 0").unwrap();
    let b = text.find("/b 3").unwrap();
    let c_at = text.find("/c 0").unwrap();
    assert!(a < b && b < c_at, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_before_sending_the_body() {
    let (node, _) = node(echo).await;
    let gw = gateway(node, "");
    let mut c = client(&gw).await;
    c.write_all(
        b"PUT /upload HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let (interim, _) = read_until(&mut c, |t| t.ends_with("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").await.unwrap();
    let (text, _) = read_until(&mut c, |t| t.contains("/upload 5")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request_and_frees_the_node() {
    let (node, mut seen) = node(|_, _| None).await;
    let gw = gateway(node, "");
    let mut c = client(&gw).await;
    c.write_all(b"GET /slow HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let path = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap();
    assert_eq!(path.as_deref(), Some("/slow"));
    let load = Arc::clone(&gw.table().pools[0].nodes[0].load);
    assert_eq!(load.outstanding(), 1);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while load.outstanding() != 0 {
        assert!(Instant::now() < deadline, "the request was not cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn framing_by_version_method_and_what_the_node_knows() {
    // The node's body runs to its close: an HTTP/1.1 client gets it
    // chunked and keeps its connection; an HTTP/1.0 client gets it to the
    // close.
    fn to_close(path: &str, _: usize) -> Option<String> {
        Some(format!(
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{path}"
        ))
    }
    let (node_, _) = node(to_close).await;
    let gw = gateway(node_, "");
    let mut c = client(&gw).await;
    c.write_all(b"GET /chunks HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until(&mut c, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(!closed);
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.contains("\r\n\r\n7\r\n/chunks\r\n0\r\n\r\n"), "{text}");
    let mut old = client(&gw).await;
    old.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let (text, closed) = read_until(&mut old, |_| false).await;
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n/old"), "{text}");
    assert!(!text.contains("chunked"), "{text}");

    // HEAD: the node's length, no body, and the connection goes on.
    fn head_aware(path: &str, length: usize) -> Option<String> {
        match path {
            // What a server answers to HEAD /h: GET's length, no body.
            "/h" => Some("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n".to_string()),
            _ => echo(path, length),
        }
    }
    let (node_, _) = node(head_aware).await;
    let gw = gateway(node_, "");
    let mut c = client(&gw).await;
    c.write_all(b"HEAD /h HTTP/1.1\r\nhost: gw\r\n\r\nGET /g HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until(&mut c, |t| t.ends_with("/g 0")).await;
    assert!(!closed);
    assert_eq!(text.matches("content-length: 4\r\n").count(), 2, "{text}");
    let second = text.rfind("HTTP/1.1 200 OK").unwrap();
    assert!(
        text[..second].ends_with("\r\n\r\n"),
        "no body after HEAD's head: {text}"
    );
    // An HTTP/1.0 client asking to keep the connection is told it is kept.
    let mut kept = client(&gw).await;
    kept.write_all(b"GET /k HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until(&mut kept, |t| t.ends_with("/k 0")).await;
    assert!(!closed);
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
}

#[tokio::test]
async fn heads_that_cannot_be_read_are_refused_and_the_connection_closed() {
    let (node_, _) = node(echo).await;
    let gw = gateway(node_, "max_header_bytes = 8192\n");
    for (request, status) in [
        (
            format!(
                "GET / HTTP/1.1\r\nhost: gw\r\nx: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            "431",
        ),
        ("GET / HTTP/1.1\r\nbad header\r\n\r\n".to_string(), "400"),
        (
            "POST / HTTP/1.1\r\nhost: gw\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx"
                .to_string(),
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip, chunked\r\n\r\n".to_string(),
            "501",
        ),
    ] {
        let mut c = client(&gw).await;
        c.write_all(request.as_bytes()).await.unwrap();
        let (text, closed) = read_until(&mut c, |_| false).await;
        assert!(closed);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
}

#[tokio::test]
async fn an_answer_before_the_body_is_followed_by_a_linger_not_a_reset() {
    // A body over the limit is answered 413 before it is read. The
    // connection then closes, but reads and drops what the client still
    // sends for a moment: closing with unread bytes would reset the
    // connection, which can destroy the answer before the client reads
    // it (and fails the client's next write here).
    let (node_, _) = node(echo).await;
    let gw = gateway(node_, "max_body_bytes = 1024\n");
    let mut c = client(&gw).await;
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 4000000\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 16 * 1024];
    c.write_all(&chunk).await.unwrap();
    let (text, closed) = read_until(&mut c, |_| false).await;
    assert!(closed, "the connection is closed after the answer");
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with('}'), "the answer's body came whole: {text}");
    for sent in 0..8 {
        if let Err(e) = c.write_all(&chunk).await {
            panic!("reset after {sent} more chunks: {e}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_later_request_must_start_within_the_idle_timeout_and_end_its_head_in_time() {
    let (node_, _) = node(echo).await;
    let gw = gateway(node_, "header_timeout = \"300ms\"\nidle_timeout = \"5s\"\n");
    let mut c = client(&gw).await;
    c.write_all(b"GET /a HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut c, |t| t.ends_with("/a 0")).await;
    // Idle for longer than the header timeout: still open.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.write_all(b"GET /b HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until(&mut c, |t| t.ends_with("/b 0")).await;
    assert!(!closed, "{text}");
    // A head begun and not finished: closed at the header timeout.
    c.write_all(b"GET /c HT").await.unwrap();
    let begun = Instant::now();
    let (_, closed) = read_until(&mut c, |_| false).await;
    assert!(closed);
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
