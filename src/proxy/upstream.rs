//! Keep-alive connections to nodes, kept per worker thread, and the
//! response body read from them.
//!
//! HTTP/1.1 nodes (the common case) get this module's own pool: per thread,
//! per node, a short list of connections speaking the gateway's own
//! HTTP/1.1 (`proxy::h1`). A request takes a ready connection of its own
//! thread and writes straight onto it; the connection goes back to the list
//! when its response body has been read to the end. Compared with
//! hyper-util's pooled client this saves, per request, a mutex-guarded
//! checkout, a race between checkout and a lazy connect, key hashing over
//! the URI and a task spawned to wait for the connection to become idle;
//! compared with hyper's own client connection, its dispatch channel, the
//! body channel between connection and body, and a second read buffer
//! (see ARCHITECTURE.md, "Data path costs", for the measured differences).
//!
//! A connection has no task of its own: the task serving the client
//! reads and writes it while it waits for the response head and while it
//! reads the body ([`NodeBody`]), as Pingora does. So a request costs no
//! wake-up of a second task, and the body can take every chunk the node
//! has sent so far in one go (`proxy::body` merges them into one write to
//! the client).
//!
//! HTTP/2 (`h2c`) nodes keep hyper-util's client, which multiplexes streams
//! on one shared connection. Either way a request and its upstream
//! connection live on the same thread: no cross-thread wake-ups on the hot
//! path, the way thread-per-core proxies (Envoy, nginx) keep their pools.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tower::ServiceExt;

use super::body::BoxError;
use super::h1::codec::{BodyFraming, Head};
pub use super::h1::OutBody;
use super::h1::{Answered, Conn};
use crate::config::UpstreamProtocol;

/// Request body type of hyper-util's client (h2c nodes, the gateway's own
/// calls).
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// Pooled keep-alive HTTP(S) client to nodes (HTTP/2 and the gateway's own
/// calls: model lists).
pub type UpstreamClient = Client<crate::tls::HttpsConnector, UpstreamBody>;

/// Idle keep-alive connections kept per node by each worker thread.
pub const MAX_IDLE_PER_NODE: usize = 64;
/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a thread's lists are swept of closed and expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Why an exchange with a node failed before its response head.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made: nothing reached the node.
    Connect(BoxError),
    /// The connection broke or was refused mid-exchange.
    Exchange(BoxError),
}

impl UpstreamError {
    /// Whether nothing reached the node (a refused or unreachable address,
    /// a connect timeout).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    fn from_legacy(e: hyper_util::client::legacy::Error) -> UpstreamError {
        if e.is_connect() {
            UpstreamError::Connect(Box::new(e))
        } else {
            UpstreamError::Exchange(Box::new(e))
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) | UpstreamError::Exchange(e) => Some(e.as_ref()),
        }
    }
}

/// Where a request goes: the node, how it is reached, with what settings.
pub struct Target<'a> {
    /// Reached over TLS (`https://`).
    pub https: bool,
    /// The node's address.
    pub authority: &'a Authority,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// HTTP/1.1 or h2c.
    pub protocol: UpstreamProtocol,
    /// TLS settings for `https` nodes.
    pub tls: &'a Arc<ClientConfig>,
}

impl Target<'_> {
    fn scheme(&self) -> Scheme {
        if self.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

/// Send `request` (its URI in origin form, `/path?query`, with a `Host`
/// header) to `target`; the response's body reads from the node as it is
/// polled.
pub async fn send(
    target: Target<'_>,
    mut request: Request<OutBody>,
) -> Result<Response<NodeBody>, UpstreamError> {
    // The h2c and connect paths are boxed: each request's future is as
    // large as its largest state, and both are kilobytes (a TLS handshake,
    // hyper-util's client) that a request on a kept connection never uses
    // but would carry, and copy, all the same.
    if target.protocol == UpstreamProtocol::H2c {
        return Box::pin(send_h2c(target, request)).await;
    }
    let key = Key::new(&target);
    // A kept connection the node closed just before we wrote to it gives
    // the request back unsent: try it once more on a new connection, as
    // hyper-util's client does.
    if let Some(mut conn) = checkout(&key) {
        match conn.conn.exchange(&mut request).await {
            Ok(answered) => return Ok(respond(answered, conn)),
            Err(e) if e.unsent => {
                tracing::debug!(node = %key.authority, error = %e.error, "kept connection closed; sending on a new one");
            }
            Err(e) => return Err(UpstreamError::Exchange(e.error)),
        }
    }
    let mut conn = Box::pin(connect(&target, key)).await?;
    match conn.conn.exchange(&mut request).await {
        Ok(answered) => Ok(respond(answered, conn)),
        Err(e) => Err(UpstreamError::Exchange(e.error)),
    }
}

/// [`send`] to an h2c node, through hyper-util's client.
async fn send_h2c(
    target: Target<'_>,
    request: Request<OutBody>,
) -> Result<Response<NodeBody>, UpstreamError> {
    let (mut parts, body) = request.into_parts();
    parts.uri = absolute(&target, &parts.uri)?;
    let body = match body {
        OutBody::Full(bytes) => Full::new(bytes).map_err(|e| match e {}).boxed_unsync(),
        OutBody::Stream(body) => body,
    };
    let client = client(target.connect_timeout, target.protocol, target.tls);
    client
        .request(Request::from_parts(parts, body))
        .await
        .map(|response| response.map(NodeBody::H2))
        .map_err(UpstreamError::from_legacy)
}

/// The response whose head `answered` holds, its body to be read from
/// `conn`.
fn respond(answered: Answered, conn: PooledConn) -> Response<NodeBody> {
    let Head {
        response,
        body: framing,
        keep_alive,
    } = answered.head;
    let mut body = H1Body {
        conn: Some(conn),
        framing,
        reuse: keep_alive && answered.request_sent,
        done: false,
    };
    if framing.is_done() {
        // Nothing to read: the connection is free already.
        body.finish();
    }
    response.map(|()| NodeBody::H1(body))
}

fn absolute(target: &Target<'_>, uri: &Uri) -> Result<Uri, UpstreamError> {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(target.scheme());
    parts.authority = Some(target.authority.clone());
    Uri::from_parts(parts).map_err(|e| UpstreamError::Exchange(Box::new(e)))
}

/// A node's response body, read as it is polled.
pub enum NodeBody {
    /// From an HTTP/1.1 connection of this thread's pool.
    H1(H1Body),
    /// From hyper-util's client (h2c).
    H2(Incoming),
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            NodeBody::H1(body) => body.poll_frame(cx),
            NodeBody::H2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            NodeBody::H1(body) => body.done,
            NodeBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            NodeBody::H1(body) => match body.framing {
                _ if body.done => SizeHint::with_exact(0),
                BodyFraming::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            NodeBody::H2(body) => body.size_hint(),
        }
    }
}

/// A response body on an HTTP/1.1 connection. The connection goes back to
/// the pool the moment the body's end has been read (before any further
/// poll: a sized body is not polled past its last byte); a body dropped
/// before its end closes it.
pub struct H1Body {
    conn: Option<PooledConn>,
    framing: BodyFraming,
    /// The connection can carry another request after this body.
    reuse: bool,
    /// The end was read (or the body failed).
    done: bool,
}

impl H1Body {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(pooled) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match pooled.conn.poll_body(&mut self.framing, cx) {
            Poll::Ready(Some(Ok(data))) => {
                if self.framing.is_done() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // Out of step with the node: the connection is closed.
                self.conn = None;
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The body ended: keep the connection if it can carry another request.
    fn finish(&mut self) {
        self.done = true;
        if let Some(pooled) = self.conn.take() {
            if self.reuse && pooled.conn.is_clean() {
                pooled.release();
            }
        }
    }
}

/// A thread's connections are told apart by node address, scheme, connect
/// timeout and TLS settings (the address of the pool's `ClientConfig`).
#[derive(Clone)]
struct Key {
    /// xxh3 of the rest, computed once: the maps below use it as is
    /// instead of hashing an address byte by byte on every lookup.
    hash: u64,
    authority: Authority,
    https: bool,
    connect_timeout: Duration,
    tls: usize,
}

impl Key {
    fn new(target: &Target<'_>) -> Key {
        let tls = Arc::as_ptr(target.tls) as usize;
        let seed = (tls as u64)
            ^ (target.connect_timeout.as_nanos() as u64).rotate_left(17)
            ^ u64::from(target.https);
        Key {
            hash: xxhash_rust::xxh3::xxh3_64_with_seed(target.authority.as_str().as_bytes(), seed),
            authority: target.authority.clone(),
            https: target.https,
            connect_timeout: target.connect_timeout,
            tls,
        }
    }
}

impl PartialEq for Key {
    /// The address compared as bytes: `Authority`'s own comparison ignores
    /// case byte by byte, and both sides come from the same config text.
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash
            && self.https == other.https
            && self.connect_timeout == other.connect_timeout
            && self.tls == other.tls
            && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a [`Key`]'s precomputed hash through.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A connection taken from the pool (or made) for one exchange.
pub struct PooledConn {
    /// Boxed: with its buffer and TLS state it is kilobytes, and a
    /// connection changes hands (pool, exchange, body) several times per
    /// request; moving it inline cost more than the whole rest of the
    /// request.
    conn: Box<Conn>,
    key: Key,
}

impl PooledConn {
    /// The response body was read to its end: the connection can carry the
    /// next request.
    fn release(mut self) {
        self.conn.trim();
        let now = Instant::now();
        // `try_with`: a body dropped while its thread shuts down finds the
        // pool gone; its connection then just closes.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.idle.entry(self.key.clone()).or_default();
            if list.len() < MAX_IDLE_PER_NODE {
                list.push(Idle {
                    conn: self,
                    since: now,
                });
            }
        });
    }
}

struct Idle {
    conn: PooledConn,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: KeyMap<Vec<Idle>>,
    connectors: HashMap<(Duration, usize), (Weak<ClientConfig>, crate::tls::HttpsConnector)>,
    last_sweep: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// The newest ready connection to the node, if any (the newest: under
/// light load a few connections stay warm and the others expire).
fn checkout(key: &Key) -> Option<PooledConn> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let now = Instant::now();
        if pool
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            pool.last_sweep = Some(now);
            sweep(&mut pool.idle, now);
        }
        let list = pool.idle.get_mut(key)?;
        // Newest first; closed ones are dropped on the way.
        while let Some(mut idle) = list.pop() {
            // The node may have closed it (a restart, its keep-alive
            // timeout): that is read here, before a request is written
            // onto a dead connection.
            if idle.conn.conn.is_open_idle() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Drop connections that closed or sat idle past [`IDLE_TIMEOUT`], and the
/// lists of nodes with none left.
fn sweep(idle: &mut KeyMap<Vec<Idle>>, now: Instant) {
    idle.retain(|_, list| {
        list.retain_mut(|c| {
            now.duration_since(c.since) < IDLE_TIMEOUT && c.conn.conn.is_open_idle()
        });
        !list.is_empty()
    });
}

/// A new HTTP/1.1 connection to the node.
async fn connect(target: &Target<'_>, key: Key) -> Result<PooledConn, UpstreamError> {
    let connector = connector(target.connect_timeout, target.tls);
    let uri = Uri::builder()
        .scheme(target.scheme())
        .authority(target.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
    let io = connector
        .oneshot(uri)
        .await
        .map_err(UpstreamError::Connect)?;
    Ok(PooledConn {
        conn: Box::new(Conn::new(hyper_util::rt::TokioIo::new(io))),
        key,
    })
}

/// This thread's connector for `connect_timeout` and `tls` (HTTP/1.1 only
/// in ALPN, so a TLS node cannot switch the connection to HTTP/2).
fn connector(connect_timeout: Duration, tls: &Arc<ClientConfig>) -> crate::tls::HttpsConnector {
    let key = (connect_timeout, Arc::as_ptr(tls) as usize);
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if let Some((config, connector)) = pool.connectors.get(&key) {
            if config.strong_count() > 0 {
                return connector.clone();
            }
        }
        pool.connectors
            .retain(|_, (config, _)| config.strong_count() > 0);
        let connector = crate::tls::https_connector_http1(Arc::clone(tls), connect_timeout);
        pool.connectors
            .insert(key, (Arc::downgrade(tls), connector.clone()));
        connector
    })
}

/// A thread's hyper-util clients: by connect timeout, protocol and TLS
/// settings (the weak reference tells a live entry from one whose table was
/// replaced by a reload).
type Clients = HashMap<(Duration, UpstreamProtocol, usize), (Weak<ClientConfig>, UpstreamClient)>;

thread_local! {
    static CLIENTS: RefCell<Clients> = RefCell::new(HashMap::new());
}

/// This thread's hyper-util client for nodes reached with `connect_timeout`
/// over `protocol`, with `tls` for `https://` nodes.
pub fn client(
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
    tls: &Arc<ClientConfig>,
) -> UpstreamClient {
    let key = (connect_timeout, protocol, Arc::as_ptr(tls) as usize);
    CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some((config, client)) = clients.get(&key) {
            if config.strong_count() > 0 {
                return client.clone();
            }
        }
        // New settings (a reload): forget clients of configs gone since.
        clients.retain(|_, (config, _)| config.strong_count() > 0);
        let client = build(connect_timeout, protocol, tls);
        clients.insert(key, (Arc::downgrade(tls), client.clone()));
        client
    })
}

fn build(
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
    tls: &Arc<ClientConfig>,
) -> UpstreamClient {
    let connector = crate::tls::https_connector(Arc::clone(tls), connect_timeout);
    let mut builder = Client::builder(TokioExecutor::new());
    // Idle connections are capped per node and thread, and expire: a burst
    // must not leave thousands of idle sockets (and their buffers) behind.
    builder
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_NODE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
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
        };
        let request = Request::get("/")
            .header("host", authority.as_str())
            .body(OutBody::Full(Bytes::new()))
            .unwrap();
        let response = send(target, request).await.unwrap();
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

    /// Status and body of a GET, read to its end.
    async fn fetch(authority: &Authority, tls: &Arc<ClientConfig>) -> (u16, Bytes) {
        let response = send(target(authority, tls), get(authority, http::Method::GET))
            .await
            .unwrap();
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
        let response = send(
            target(&authority, &tls),
            get(&authority, http::Method::HEAD),
        )
        .await
        .unwrap();
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
        let response = send(target(&authority, &tls), get(&authority, http::Method::GET))
            .await
            .unwrap();
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
        let response = send(target(&authority, &tls), request).await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "up"
        );
        assert_eq!(
            requests.lock().unwrap()[0],
            format!(
                "POST /upload HTTP/1.1\r\nhost: {authority}\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
            )
        );
        // The node answers at the head of an upload that has not ended:
        // the answer is passed on, and the connection is not used again
        // (the rest of the upload would be read as a request).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let endless = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
        ));
        let request = Request::post("/upload")
            .header("host", authority.as_str())
            .body(OutBody::Stream(endless.boxed_unsync()))
            .unwrap();
        let response = send(target(&authority, &tls), request).await.unwrap();
        assert_eq!(response.status(), 413);
        assert!(response.body().is_end_stream());
        drop(tx);
        assert_eq!(fetch(&authority, &tls).await, (200, Bytes::from("ok")));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
