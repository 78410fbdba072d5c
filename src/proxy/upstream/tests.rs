//! The pool on its own HTTP/1.1: reuse, framing, closes, uploads.

use super::*;
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node answering every request on a connection with `hello`, head
/// and body in one write.
async fn node() -> Authority {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
            if socket.write_all(reply).await.is_err() {
                break;
            }
        }
    });
    addr.to_string().parse().unwrap()
}

/// One exchange on a kept connection, its body read to the end.
async fn exchange(authority: &Authority, tls: &Arc<ClientConfig>) -> Bytes {
    let target = Target {
        https: false,
        authority,
        connect_timeout: Duration::from_secs(5),
        protocol: UpstreamProtocol::Http1,
        tls,
        now: std::time::Instant::now(),
    };
    let request = Request::get("/")
        .header("host", authority.as_str())
        .body(OutBody::Full(Bytes::new()))
        .unwrap();
    let response = send(target, request, &HeaderMap::new(), None)
        .await
        .unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Counts the polls of the future it wraps.
struct Counted<F> {
    polls: Arc<AtomicUsize>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// An exchange on a kept connection costs the task serving it two
/// polls (one to write the request, one when the answer has arrived),
/// then the task sleeps undisturbed. Before the response future and
/// the body were asked without waking the task, handing the answer
/// over woke the task that was handing it over, and it was polled
/// again for nothing (4 polls here instead of 3).
#[tokio::test(flavor = "current_thread")]
async fn reading_an_answer_does_not_wake_the_task_reading_it() {
    let authority = node().await;
    let tls = crate::tls::default_client_config();
    // Connect first, so the measured exchange starts on a kept one.
    assert_eq!(exchange(&authority, &tls).await, "hello");
    let polls = Arc::new(AtomicUsize::new(0));
    let (authority2, tls2) = (authority.clone(), tls.clone());
    let counted = Counted {
        polls: polls.clone(),
        inner: Box::pin(async move {
            let body = exchange(&authority2, &tls2).await;
            // Asleep: a stray wake-up from the exchange would poll
            // this again before the timer does.
            tokio::time::sleep(Duration::from_millis(50)).await;
            body
        }),
    };
    assert_eq!(tokio::spawn(counted).await.unwrap(), "hello");
    assert_eq!(polls.load(Ordering::Relaxed), 3);
}

/// What a scripted node answers to one request.
struct Reply {
    bytes: &'static [u8],
    /// Close the connection after writing it.
    close: bool,
    /// Answer at the request's head, not waiting for its body.
    early: bool,
}

const fn reply(bytes: &'static [u8]) -> Reply {
    Reply {
        bytes,
        close: false,
        early: false,
    }
}

const fn closing(bytes: &'static [u8]) -> Reply {
    Reply {
        bytes,
        close: true,
        early: false,
    }
}

type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A node answering requests with `replies` in turn, whichever
/// connection they come on; counts its connections. A request ends at
/// its blank line, or, when chunked, at the last chunk.
async fn scripted(replies: Vec<Reply>) -> (Authority, Arc<AtomicUsize>, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests: Seen = Arc::default();
    let recorded = requests.clone();
    let replies = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        replies,
    )));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let replies = replies.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    let chunked = text.contains("transfer-encoding: chunked");
                    let early = replies.lock().unwrap().front().is_some_and(|r| r.early);
                    let complete = if early {
                        text.contains("\r\n\r\n")
                    } else if chunked {
                        text.ends_with("0\r\n\r\n")
                    } else {
                        text.ends_with("\r\n\r\n")
                    };
                    if !complete {
                        continue;
                    }
                    recorded.lock().unwrap().push(text);
                    seen.clear();
                    let Some(reply) = replies.lock().unwrap().pop_front() else {
                        return;
                    };
                    if socket.write_all(reply.bytes).await.is_err() || reply.close {
                        return;
                    }
                }
            });
        }
    });
    (addr.to_string().parse().unwrap(), accepted, requests)
}

fn target<'a>(authority: &'a Authority, tls: &'a Arc<ClientConfig>) -> Target<'a> {
    Target {
        https: false,
        authority,
        connect_timeout: Duration::from_secs(5),
        protocol: UpstreamProtocol::Http1,
        tls,
        now: std::time::Instant::now(),
    }
}

fn get(authority: &Authority, method: http::Method) -> Request<OutBody> {
    Request::builder()
        .method(method)
        .uri("/v1/models")
        .header("host", authority.as_str())
        .body(OutBody::Full(Bytes::new()))
        .unwrap()
}

/// The response to a bodiless `method` request, its body not yet read.
async fn ask(
    authority: &Authority,
    tls: &Arc<ClientConfig>,
    method: http::Method,
) -> Response<NodeBody> {
    send(
        target(authority, tls),
        get(authority, method),
        &HeaderMap::new(),
        None,
    )
    .await
    .unwrap()
}

/// Status and body of a GET, read to its end.
async fn fetch(authority: &Authority, tls: &Arc<ClientConfig>) -> (u16, Bytes) {
    let response = ask(authority, tls, http::Method::GET).await;
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn chunked_and_empty_bodies_leave_the_connection_reusable() {
    let (authority, accepted, _) = scripted(vec![
        reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        reply(b"HTTP/1.1 204 No Content\r\n\r\n"),
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let tls = crate::tls::default_client_config();
    assert_eq!(
        fetch(&authority, &tls).await,
        (200, Bytes::from("hello world"))
    );
    assert_eq!(fetch(&authority, &tls).await, (204, Bytes::new()));
    // A HEAD answer has no body whatever its length says.
    let response = ask(&authority, &tls, http::Method::HEAD).await;
    assert!(response.body().is_end_stream());
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("ok")));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection carried all four"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_node_ends_is_not_used_again() {
    let (authority, accepted, _) = scripted(vec![
        // Closes after the answer, saying so.
        closing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\na"),
        // Closes after the answer without saying so.
        closing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"),
        // A body that runs to the close.
        closing(b"HTTP/1.1 200 OK\r\n\r\nc"),
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nd"),
    ])
    .await;
    let tls = crate::tls::default_client_config();
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("a")));
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("b")));
    // The node's close of a kept connection may arrive after the next
    // request looks for one: wait until the socket shows it, then the
    // pool must not hand out the dead connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = POOL.with(|pool| {
            pool.borrow_mut()
                .idle
                .values_mut()
                .flatten()
                .any(|idle| idle.conn.conn.is_open_idle())
        });
        if !open {
            break;
        }
        assert!(Instant::now() < deadline, "the node's close was never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("c")));
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("d")));
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_left_unread_closes_its_connection() {
    let (authority, accepted, _) = scripted(vec![
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"),
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let tls = crate::tls::default_client_config();
    let response = ask(&authority, &tls, http::Method::GET).await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "half");
    drop(body);
    // The rest of the first body must not be read as the next answer.
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("ok")));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_streamed_upload_goes_chunked_and_an_early_answer_ends_the_connection() {
    let (authority, accepted, requests) = scripted(vec![
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nup"),
        Reply {
            bytes: b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
            close: false,
            early: true,
        },
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let tls = crate::tls::default_client_config();
    let stream = |parts: Vec<&'static str>| {
        let frames = parts
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from(p))));
        OutBody::Stream(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
        )
    };
    let request = Request::post("/upload")
        .header("host", authority.as_str())
        .body(stream(vec!["one", "two"]))
        .unwrap();
    // Headers shared by a request's attempts go after its own.
    let mut shared = HeaderMap::new();
    shared.insert("x-request-id", http::HeaderValue::from_static("r1"));
    let response = send(target(&authority, &tls), request, &shared, None)
        .await
        .unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "up"
    );
    assert_eq!(
        requests.lock().unwrap()[0],
        format!(
            "POST /upload HTTP/1.1\r\nhost: {authority}\r\nx-request-id: r1\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
        )
    );
    // The node answers at the head of an upload that has not ended:
    // the answer is passed on, and the connection is not used again
    // (the rest of the upload would be read as a request).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let endless =
        http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        }));
    let request = Request::post("/upload")
        .header("host", authority.as_str())
        .body(OutBody::Stream(endless.boxed_unsync()))
        .unwrap();
    let response = send(target(&authority, &tls), request, &HeaderMap::new(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.body().is_end_stream());
    drop(tx);
    assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("ok")));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
