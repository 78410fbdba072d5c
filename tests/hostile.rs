//! Hostile and careless clients: they cannot take a healthy node out of
//! service, hold connections open without sending, or smuggle framing a
//! proxy must refuse.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use infergate::health::now_ms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A node that reads every request body whole, then answers 200 with its
/// length; with `switch`, it answers 101 instead.
async fn reading_node(switch: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let read = req.into_body().collect().await;
                    let mut response = match read {
                        Ok(body) => {
                            Response::new(Full::new(Bytes::from(body.to_bytes().len().to_string())))
                        }
                        Err(_) => Response::new(Full::new(Bytes::from("broken"))),
                    };
                    if switch {
                        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                        response
                            .headers_mut()
                            .insert("upgrade", "websocket".parse().unwrap());
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// One pool `p` of `node`, a catch-all route (bodies stream through),
/// outlier ejection after 2 failures; `listener` lines are added.
fn streaming_config(node: SocketAddr, listener: &str, route: &str) -> String {
    format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n{listener}\n[[pools]]\nname = \"p\"\n\
         [[pools.nodes]]\nname = \"n0\"\naddr = \"{node}\"\n\
         [pools.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"60s\"\n\
         [[routes]]\nname = \"any\"\npool = \"p\"\nretries = 0\n{route}\n"
    )
}

/// Send raw bytes on a new connection; the response's status line.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_fault() {
    let node = reading_node(false).await;
    let gw = start_gateway(&streaming_config(node, "", "")).await;
    let bad: [&[u8]; 3] = [
        b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    ];
    for _ in 0..4 {
        for request in bad {
            let status = raw_status(gw.addr, request).await;
            assert!(
                status.starts_with("HTTP/1.1 400"),
                "{status}: {:?}",
                String::from_utf8_lossy(request)
            );
        }
    }
    let load = &gw.gateway.table().pools[0].nodes[0].load;
    assert_eq!(load.failures(), 0, "the node was not blamed");
    assert!(load.health.is_available(now_ms()), "and not ejected");
    let ok = raw_status(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n\r\nabc",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn first_byte_timeout_starts_after_the_upload_and_slow_uploads_are_408() {
    let node = reading_node(false).await;
    let gw = start_gateway(&streaming_config(
        node,
        "body_timeout = \"400ms\"",
        "[routes.timeouts]\nfirst_byte = \"150ms\"",
    ))
    .await;
    // An upload of 600 ms in 6 pieces: slower than first_byte, each gap
    // within the body timeout. The node answers at once after it.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 6\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"x").await.unwrap();
    }
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with('6'), "{text}");

    // A client that stops sending: 408 after the body timeout, node kept.
    for _ in 0..3 {
        let head = b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\nxx";
        stalled_upload_is_408(gw.addr, head, Duration::from_millis(390)).await;
    }
    let load = &gw.gateway.table().pools[0].nodes[0].load;
    assert_eq!(load.failures(), 0);
    assert!(load.health.is_available(now_ms()));
}

/// An inference body is read whole before routing; a client that stops
/// sending it gets a 408 once the body timeout has passed, woken by its
/// connection's own timer (no timer of the read's own).
#[tokio::test]
async fn an_inference_body_not_sent_in_time_is_408() {
    let node = reading_node(false).await;
    let gw = start_gateway(&streaming_config(node, "body_timeout = \"300ms\"", "")).await;
    for _ in 0..2 {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"";
        let text = stalled_upload_is_408(gw.addr, head, Duration::from_millis(290)).await;
        assert!(text.contains("not sent in time"), "{text}");
    }
}

/// Send `sent` (a head and part of its body) and stop: the answer must be
/// a 408, no sooner than `not_before`. Returns it.
async fn stalled_upload_is_408(addr: SocketAddr, sent: &[u8], not_before: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(sent).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= not_before);
    text
}

/// The total deadline counts from when the request could go to a node:
/// an inference body uploaded slowly (it is read whole before routing)
/// does not use it up. The request's start is read once, after its head,
/// and only a body that had to be waited for reads the clock again.
#[tokio::test]
async fn a_slowly_uploaded_inference_body_does_not_use_up_the_total_deadline() {
    let node = reading_node(false).await;
    let gw = start_gateway(&streaming_config(
        node,
        "body_timeout = \"5s\"",
        "[routes.timeouts]\ntotal = \"400ms\"",
    ))
    .await;
    let body = chat("hi", false, 1);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // 750 ms of upload in three pieces, longer than the total deadline.
    let third = body.len() / 3;
    for piece in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(piece.as_bytes()).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with(&body.len().to_string()), "{text}");
}

/// A later request on a kept connection has `header_timeout` for its head
/// from when it began to arrive (not from the previous answer, and not
/// unbounded when the head does not come whole).
#[tokio::test]
async fn a_later_requests_head_has_the_header_timeout_from_its_first_bytes() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nheader_timeout = \"400ms\"\nidle_timeout = \"5s\"\n",
    );
    let gw = start_gateway(&text).await;
    let mut buf = [0u8; 4096];
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    let get = b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n";
    kept.write_all(get).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout, then a head in two halves
    // 200 ms apart: within its own timeout, so answered.
    tokio::time::sleep(Duration::from_millis(600)).await;
    kept.write_all(&get[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    kept.write_all(&get[10..]).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A head that stops half way: closed once its timeout has passed.
    kept.write_all(&get[..10]).await.unwrap();
    let from = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(3)).await);
    let waited = from.elapsed();
    assert!(
        waited >= Duration::from_millis(390) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

/// Whether the gateway closes `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nmax_connections = 3\nheader_timeout = \"300ms\"\nidle_timeout = \"400ms\"\n",
    );
    let gw = start_gateway(&text).await;
    let started = Instant::now();
    // Silent, a trickle that never finishes a request, half an HTTP/2
    // preface: all hold a connection slot until the first deadline.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut preface = TcpStream::connect(gw.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut trickle = TcpStream::connect(gw.addr).await.unwrap();
    let trickler = tokio::spawn(async move {
        for _ in 0..20 {
            if trickle.write_all(b"G").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trickle
    });
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut preface, Duration::from_secs(3)).await);
    let mut trickle = trickler.await.unwrap();
    assert!(closed_within(&mut trickle, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Slots are free again: a normal client is served.
    let reply = post(gw.addr, "/v1/chat/completions", chat("hi", false, 1)).await;
    assert_eq!(reply.status, 200);

    // A keep-alive connection with no request in flight closes when idle
    // (the header timeout, longer here, counts once a request has begun).
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nheader_timeout = \"5s\"\nidle_timeout = \"300ms\"\n",
    );
    let gw = start_gateway(&text).await;
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(3)).await);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(290) && idle < Duration::from_secs(2),
        "{idle:?}"
    );
}

#[tokio::test]
async fn a_long_request_is_not_cut_by_the_idle_timeout() {
    let nodes = start_nodes(
        1,
        &infergate::sim::SimConfig {
            time_scale: 1.0,
            ..fast_sim()
        },
    )
    .await;
    let mut text = config_text(&unweighted(&nodes), "round_robin", "");
    text = text.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nidle_timeout = \"100ms\"\n",
    );
    let gw = start_gateway(&text).await;
    // A non-streamed answer that takes several idle timeouts.
    let started = Instant::now();
    let reply = post(gw.addr, "/v1/chat/completions", chat("long", false, 60)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        started.elapsed() > Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn framing_a_proxy_must_refuse() {
    let node = reading_node(false).await;
    let gw = start_gateway(&streaming_config(node, "", "")).await;
    let no_host = raw_status(gw.addr, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let two_hosts = raw_status(gw.addr, b"GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n").await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let connect = raw_status(
        gw.addr,
        b"CONNECT node:443 HTTP/1.1\r\nhost: node:443\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    let http10 = raw_status(gw.addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(http10.contains(" 200 "), "HTTP/1.0 needs no Host: {http10}");

    // A node that switches protocols is not passed through.
    let switching = reading_node(true).await;
    let gw = start_gateway(&streaming_config(switching, "", "")).await;
    let upgrade = raw_status(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(upgrade.starts_with("HTTP/1.1 502"), "{upgrade}");
}

async fn start_admin(gw: &TestGateway, config: infergate::admin::AdminConfig) -> SocketAddr {
    let admin = infergate::admin::start(
        std::sync::Arc::clone(&gw.gateway),
        &config,
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .expect("admin listener");
    let addr = admin.addr;
    // Keep it running for the test.
    std::mem::forget(admin);
    addr
}

#[tokio::test]
async fn the_admin_listener_closes_silent_sockets_and_caps_event_streams() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let admin = start_admin(
        &gw,
        infergate::admin::AdminConfig {
            header_timeout: Duration::from_millis(300),
            ..infergate::admin::AdminConfig::default()
        },
    )
    .await;
    let mut silent = TcpStream::connect(admin).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);

    // 64 dashboards hold event streams; the next is told to come back,
    // and metrics and the API still answer.
    let mut streams = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        stream
            .write_all(format!("GET /api/v1/events HTTP/1.1\r\nhost: {admin}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        streams.push(stream);
    }
    let refused = raw_status(
        admin,
        format!("GET /api/v1/events HTTP/1.1\r\nhost: {admin}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let metrics = raw_status(
        admin,
        format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    // A closed stream frees its slot (noticed at the next snapshot, every
    // second): a new dashboard gets in.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = raw_status(
            admin,
            format!("GET /api/v1/events HTTP/1.1\r\nhost: {admin}\r\n\r\n").as_bytes(),
        )
        .await;
        if again.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never freed: {again}"
        );
    }
}

/// Established TCP connections whose remote end is `port` (from
/// /proc/net/tcp and tcp6: the gateway's side of its node connections).
fn connections_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3
                        && fields[3] == "01"
                        && fields[2]
                            .rsplit(':')
                            .next()
                            .and_then(|p| u16::from_str_radix(p, 16).ok())
                            == Some(port)
                })
                .map(|_| ())
                .collect::<Vec<_>>()
        })
        .count()
}

#[tokio::test]
async fn idle_node_connections_are_capped_after_a_burst() {
    let node = reading_node(false).await;
    let gw = start_gateway(&streaming_config(node, "workers = 1", "")).await;
    // 200 requests at once: up to 200 connections to the node.
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                raw_status(
                    addr,
                    b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n\r\nabc",
                )
                .await
            })
        })
        .collect();
    for request in burst {
        assert!(request.await.unwrap().starts_with("HTTP/1.1 200"));
    }
    // Idle, at most 64 per node and worker thread stay open.
    let cap = infergate::proxy::MAX_IDLE_PER_NODE;
    assert!(
        eventually(Duration::from_secs(5), || connections_to(node.port())
            <= cap)
        .await,
        "{} idle connections to the node",
        connections_to(node.port())
    );
}

#[tokio::test]
async fn a_node_that_stops_taking_an_upload_times_out_like_a_hung_node() {
    // Accepts and never reads: the upload fills the socket buffers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let gw = start_gateway(&streaming_config(
        node,
        "max_body_bytes = 268435456",
        "[routes.timeouts]\nfirst_byte = \"300ms\"",
    ))
    .await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = client.into_split();
    // The client has plenty to send, as fast as it is taken.
    let sender = tokio::spawn(async move {
        let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
        for _ in 0..2048 {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf))
        .await
        .expect("an answer, not a hang until the total timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let load = &gw.gateway.table().pools[0].nodes[0].load;
    assert_eq!(load.failures(), 1, "the node's fault");
    sender.abort();
    held.abort();
}

/// A prior-knowledge HTTP/2 connection to `addr`, driven in the background.
async fn h2c_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// A streamed chat request over `sender`, its response head within 5 s.
async fn send_streamed_chat(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    text: &str,
) -> Response<Incoming> {
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat(text, true, 1))))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("a response head")
        .unwrap()
}

/// An HTTP/2 client that keeps its connection but never opens one
/// stream's flow-control window: the gateway cannot hand that stream
/// more data (no write waits on the socket, so the connection's own
/// send timeout never starts), and after its `send_timeout` it lets go
/// of the node; other streams of the connection are served meanwhile.
#[tokio::test]
async fn an_http2_client_that_stops_taking_one_stream_is_let_go_after_the_send_timeout() {
    let stalled_node = endless_stream_node().await;
    let (good_node, _echo) = start_echo().await;
    let text = format!(
        "{}[[pools]]\nname = \"good\"\n[[pools.nodes]]\nname = \"g\"\naddr = \"{good_node}\"\n\
         [[routes]]\nname = \"echo\"\npool = \"good\"\n[routes.match]\npath_prefix = \"/echo\"\n",
        with_send_timeout(
            &config_text(&[(stalled_node, 1)], "round_robin", ""),
            "300ms"
        )
    );
    let gw = start_gateway(&text).await;
    let mut sender = h2c_connection(gw.addr).await;
    let response = send_streamed_chat(&mut sender, "stalled").await;
    assert_eq!(response.status(), 200);
    // The body is never read: the client gives no window back for it.
    let node = &gw.gateway.table().pools[0].nodes[0];
    assert_eq!(node.outstanding(), 1);
    let released = eventually(Duration::from_secs(10), || node.outstanding() == 0).await;
    assert!(
        released,
        "a stream its client stopped taking still holds the node"
    );
    // The connection is still the client's: another stream is answered.
    let request = Request::get("/echo").body(Full::new(Bytes::new())).unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("an answer on the same connection")
        .unwrap();
    assert_eq!(echoed.status(), 200);
    drop(response);
}

/// ... while a stream whose node is slow, not its client, is not cut:
/// the node's silence (longer than the send timeout) is the pass-through's
/// idle timeout to judge.
#[tokio::test]
async fn an_http2_stream_waiting_for_a_slow_node_is_not_given_up() {
    let node = raw_node(|mut socket| async move {
        let _ = socket.write_all(b"5\r\nhello\r\n").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let _ = socket.write_all(b"5\r\nworld\r\n0\r\n\r\n").await;
    })
    .await;
    let gw = start_gateway(&with_send_timeout(
        &config_text(&[(node, 1)], "round_robin", ""),
        "300ms",
    ))
    .await;
    let mut sender = h2c_connection(gw.addr).await;
    let response = send_streamed_chat(&mut sender, "slow node").await;
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the whole body")
        .expect("not cut");
    assert_eq!(body.to_bytes(), Bytes::from_static(b"helloworld"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_the_send_timeout() {
    let node = endless_stream_node().await;
    let gw = start_gateway(&with_send_timeout(
        &config_text(&[(node, 1)], "round_robin", ""),
        "300ms",
    ))
    .await;
    let client = TcpStream::connect(gw.addr).await.unwrap();
    assert_a_client_that_stops_reading_is_let_go(client, &gw).await;
}
