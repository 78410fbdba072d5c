//! Keep-alive connections to nodes, kept per worker thread.
//!
//! HTTP/1.1 nodes (the common case) get this module's own pool: per thread,
//! per node, a short list of hyper's low-level `client::conn::http1`
//! connections. A request takes a ready connection of its own thread and
//! writes straight onto it; the connection goes back to the list when its
//! response body has been read to the end. Compared with hyper-util's
//! pooled client this saves, per request, a mutex-guarded checkout, a race
//! between checkout and a lazy connect, key hashing over the URI and a task
//! spawned to wait for the connection to become idle (see ARCHITECTURE.md,
//! "Data path costs", for the measured difference).
//!
//! A connection has no task of its own: the task serving the client drives
//! it ([`PooledConn::drive`]) while it waits for the response head and
//! while it reads the body, as Pingora does. So a request costs no wake-up
//! of a second task, and the body can take every chunk the node has sent
//! so far in one go (`proxy::body` merges them into one write to the
//! client).
//!
//! HTTP/2 (`h2c`) nodes keep hyper-util's client, which multiplexes streams
//! on one shared connection. Either way a request and its upstream
//! connection live on the same thread: no cross-thread wake-ups on the hot
//! path, the way thread-per-core proxies (Envoy, nginx) keep their pools.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tower::ServiceExt;

use super::body::BoxError;
use crate::config::UpstreamProtocol;

/// Request body type sent to nodes.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// Pooled keep-alive HTTP(S) client to nodes (HTTP/2 and the gateway's own
/// calls: model lists).
pub type UpstreamClient = Client<crate::tls::HttpsConnector, UpstreamBody>;

/// Idle keep-alive connections kept per node by each worker thread.
pub const MAX_IDLE_PER_NODE: usize = 64;
/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a node connection buffers from the node before the client has
/// taken it (and the largest response head accepted).
const UPSTREAM_READ_BUFFER: usize = 32 * 1024;
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

/// A response head from a node, with the connection that carried it when
/// that connection can go back to the pool once the body is read.
pub struct Answer {
    /// The node's response.
    pub response: Response<Incoming>,
    /// The HTTP/1.1 connection to give back at the clean end of the body.
    pub conn: Option<PooledConn>,
}

/// Send `request` (its URI in origin form, `/path?query`, with a `Host`
/// header) to `target`.
pub async fn send(
    target: Target<'_>,
    mut request: Request<UpstreamBody>,
) -> Result<Answer, UpstreamError> {
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
        let response = std::pin::pin!(conn.sender.try_send_request(request));
        match conn.drive_until(response).await {
            Ok(response) => return Ok(answer(response, conn)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(UpstreamError::Exchange(Box::new(e.into_error()))),
            },
        }
    }
    let mut conn = Box::pin(connect(&target, key)).await?;
    let response = std::pin::pin!(conn.sender.send_request(request));
    match conn.drive_until(response).await {
        Ok(response) => Ok(answer(response, conn)),
        Err(e) => Err(UpstreamError::Exchange(Box::new(e))),
    }
}

/// [`send`] to an h2c node, through hyper-util's client.
async fn send_h2c(
    target: Target<'_>,
    mut request: Request<UpstreamBody>,
) -> Result<Answer, UpstreamError> {
    let uri = absolute(&target, request.uri())?;
    *request.uri_mut() = uri;
    let client = client(target.connect_timeout, target.protocol, target.tls);
    client
        .request(request)
        .await
        .map(|response| Answer {
            response,
            conn: None,
        })
        .map_err(UpstreamError::from_legacy)
}

fn answer(response: Response<Incoming>, conn: PooledConn) -> Answer {
    if http_body::Body::is_end_stream(response.body()) {
        // Nothing left to read: the connection is free already.
        conn.release();
        return Answer {
            response,
            conn: None,
        };
    }
    Answer {
        response,
        conn: Some(conn),
    }
}

fn absolute(target: &Target<'_>, uri: &Uri) -> Result<Uri, UpstreamError> {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(target.scheme());
    parts.authority = Some(target.authority.clone());
    Uri::from_parts(parts).map_err(|e| UpstreamError::Exchange(Box::new(e)))
}

type Sender = http1::SendRequest<UpstreamBody>;

/// A thread's connections are told apart by node address, scheme, connect
/// timeout and TLS settings (the address of the pool's `ClientConfig`).
#[derive(Clone, PartialEq, Eq)]
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

/// How a node connection's bytes travel: TCP, or TLS over TCP.
type Io = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
/// hyper's state machine of one connection: reads and writes happen when
/// it is polled.
type Driver = http1::Connection<Io, UpstreamBody>;

/// A connection taken from the pool (or made) for one exchange: the handle
/// requests are sent on and the connection itself, driven by the task that
/// uses it.
pub struct PooledConn {
    sender: Sender,
    /// What the connection is driven with: the driving task's waker,
    /// except while that task itself asks for the response body
    /// ([`PooledConn::poll_body`]).
    wake: Arc<DriveWaker>,
    /// `wake` as a [`Waker`], made once per connection.
    waker: Waker,
    /// Boxed: with its buffers and TLS state it is kilobytes, and a
    /// connection changes hands (pool, exchange, body) several times per
    /// request; moving it inline cost more than the whole rest of the
    /// request.
    ///
    /// `None` once the connection closed: dropped then, which hands every
    /// request still queued on it back to its sender (unsent), so nothing
    /// waits on a connection that will never be polled again.
    driver: Option<Pin<Box<Driver>>>,
    key: Key,
}

/// The waker a node connection is driven with: it passes wake-ups on to
/// the task driving the connection, except those the task causes itself
/// while it asks for the response body ([`PooledConn::poll_body`]).
///
/// The response body's reader and the connection talk through hyper's
/// channels: when the reader asks for data, or takes a chunk from a full
/// channel, the channel wakes the connection's waker. With the connection
/// driven by the reader's own task, that woke the task while it was
/// running, and it then ran its whole poll (client connection, request,
/// response) once more for nothing: one extra poll per small request,
/// measured with callgrind. A wake-up a muted poll loses is never needed:
/// the connection is driven right after every ask that finds nothing.
/// Wake-ups from the socket never come while the task is being polled
/// (the worker's runtime runs its I/O driver between polls), so none of
/// them is lost.
#[derive(Default)]
struct DriveWaker {
    task: AtomicWaker,
    muted: AtomicBool,
}

impl Wake for DriveWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.muted.load(Ordering::Relaxed) {
            self.task.wake();
        }
    }
}

/// Unmutes a connection's waker when dropped (even by a panic).
struct Unmute<'a>(&'a DriveWaker);

impl Drop for Unmute<'_> {
    fn drop(&mut self) {
        self.0.muted.store(false, Ordering::Relaxed);
    }
}

impl PooledConn {
    /// The next frame of `body`, the response body this connection
    /// carries, driving the connection as needed.
    ///
    /// Only driving the connection fills the body, and this task does
    /// that: the body is asked with a no-op waker and the connection's
    /// waker muted, or every chunk the connection hands over, and every ask
    /// for one, would wake this task, which is doing both, to run its whole
    /// poll once more for nothing ([`DriveWaker`]). The connection is
    /// driven after every ask that finds nothing, so no wake-up is needed.
    pub fn poll_body(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        // The body first: asking for a chunk is what lets the connection
        // hand one over, so driving it before would find nobody asking and
        // need another drive to come back.
        if let Poll::Ready(frame) = self.ask(body) {
            return Poll::Ready(frame);
        }
        self.drive(cx);
        self.ask(body)
    }

    /// Poll `body` without giving this task any wake-up (see
    /// [`PooledConn::poll_body`]).
    fn ask(
        &self,
        body: &mut Incoming,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        self.wake.muted.store(true, Ordering::Relaxed);
        let _unmute = Unmute(&self.wake);
        let mut noop = Context::from_waker(Waker::noop());
        http_body::Body::poll_frame(Pin::new(body), &mut noop)
    }

    /// Let the connection read and write what it can now, registering
    /// `cx`'s waker for more. True once the connection has closed.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = self.driver.as_mut() else {
            return true;
        };
        self.wake.task.register(cx.waker());
        match driver.as_mut().poll(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => false,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(node = %self.key.authority, error = %e, "node connection ended with an error");
                }
                self.driver = None;
                true
            }
        }
    }

    /// Drive the connection until `exchange` (a response on it) resolves.
    ///
    /// Only driving the connection can complete the exchange, so the
    /// exchange is polled with a no-op waker right after every drive:
    /// with this task's waker, the connection handing over the response
    /// woke the task that was handing it over, which then ran its whole
    /// poll once more for nothing.
    ///
    /// `exchange` comes pinned by the caller, so it has one place in the
    /// request's future, not two.
    async fn drive_until<F: Future>(&mut self, mut exchange: Pin<&mut F>) -> F::Output {
        poll_fn(|cx| {
            // The connection first, so what it read is there for the
            // exchange to take in the same poll.
            self.drive(cx);
            exchange
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        })
        .await
    }

    /// Whether the connection can take a request now, after letting it
    /// catch up on what happened while nobody polled it (the end of the
    /// last exchange, the node closing it).
    fn ready_now(&mut self) -> bool {
        if self.driver.is_none() || self.sender.is_closed() {
            return false;
        }
        // Driven even when it looks ready: that is how a close by the node
        // (a restart, its keep-alive timeout) is read before a request is
        // written onto the dead connection.
        let mut cx = Context::from_waker(Waker::noop());
        !self.drive(&mut cx) && !self.sender.is_closed() && self.sender.is_ready()
    }

    /// The response body was read to its end: the connection can carry the
    /// next request. (A body abandoned part-way is dropped instead, and
    /// with it the connection.)
    pub fn release(mut self) {
        if !self.ready_now() {
            // Closed, or still busy (a request body the node answered
            // before reading it all): not worth keeping.
            return;
        }
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
            if idle.conn.ready_now() {
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
        let mut cx = Context::from_waker(Waker::noop());
        // Driving an idle connection reads the node's close, if any.
        list.retain_mut(|c| {
            now.duration_since(c.since) < IDLE_TIMEOUT
                && !c.conn.drive(&mut cx)
                && !c.conn.sender.is_closed()
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
    let (sender, driver) = http1::Builder::new()
        // hyper grows a connection's read buffer up to ~400 KB while a
        // node streams faster than the client reads; 32 KB (room for any
        // sane response head) keeps 10,000 streams in bounded memory, as
        // nginx's proxy_buffer_size and HAProxy's bufsize do.
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
    let wake = Arc::new(DriveWaker::default());
    Ok(PooledConn {
        sender,
        waker: Waker::from(wake.clone()),
        wake,
        driver: Some(Box::pin(driver)),
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
    use std::sync::atomic::AtomicUsize;
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
            .body(UpstreamBody::default())
            .unwrap();
        let Answer { response, conn } = send(target, request).await.unwrap();
        let mut body = response.into_body();
        let mut conn = conn.expect("the body is still to be read");
        let mut got = Vec::new();
        while let Some(frame) = poll_fn(|cx| conn.poll_body(&mut body, cx)).await {
            got.extend_from_slice(frame.unwrap().data_ref().unwrap());
        }
        conn.release();
        Bytes::from(got)
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
}
