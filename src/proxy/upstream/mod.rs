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
//! (see docs/data-path.md for the measured differences).
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

mod body;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tower::ServiceExt;

use super::body::BoxError;
use super::h1::codec::Head;
pub use super::h1::OutBody;
use super::h1::{Answered, Conn};
use crate::config::UpstreamProtocol;
use crate::header_lines::HeaderLines;
pub use body::{H1Body, NodeBody};

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
/// How often a thread's lists are swept of closed and expired connections
/// (on a checkout, and by the worker's timer when no request comes).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

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
    /// A recent read of the clock (the attempt's start): the pool's idle
    /// ages and sweeps need no read of their own.
    pub now: Instant,
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
/// header in its own or the shared headers) to `target`, with the
/// `shared` headers after its own: borrowed, so that a request that may
/// be retried keeps one map for all its attempts instead of a copy each.
/// The response's body reads from the node as it is polled.
pub async fn send(
    target: Target<'_>,
    mut request: Request<OutBody>,
    shared: &HeaderMap,
    lines: Option<&HeaderLines>,
) -> Result<Response<NodeBody>, UpstreamError> {
    // The h2c and connect paths are boxed: each request's future is as
    // large as its largest state, and both are kilobytes (a TLS handshake,
    // hyper-util's client) that a request on a kept connection never uses
    // but would carry, and copy, all the same.
    if target.protocol == UpstreamProtocol::H2c {
        return Box::pin(send_h2c(target, request, shared, lines)).await;
    }
    let key = Key::new(&target);
    // A kept connection the node closed just before we wrote to it gives
    // the request back unsent: try it once more on a new connection, as
    // hyper-util's client does.
    if let Some(mut conn) = checkout(&key, target.now) {
        match conn.conn.exchange(&mut request, shared, lines).await {
            Ok(answered) => return Ok(respond(answered, conn)),
            Err(e) if e.unsent => {
                tracing::debug!(node = %key.authority, error = %e.error, "kept connection closed; sending on a new one");
            }
            Err(e) => return Err(UpstreamError::Exchange(e.error)),
        }
    }
    let mut conn = Box::pin(connect(&target, key)).await?;
    match conn.conn.exchange(&mut request, shared, lines).await {
        Ok(answered) => Ok(respond(answered, conn)),
        Err(e) => Err(UpstreamError::Exchange(e.error)),
    }
}

/// [`send`] to an h2c node, through hyper-util's client.
async fn send_h2c(
    target: Target<'_>,
    request: Request<OutBody>,
    shared: &HeaderMap,
    lines: Option<&HeaderLines>,
) -> Result<Response<NodeBody>, UpstreamError> {
    let (mut parts, body) = request.into_parts();
    parts.uri = absolute(&target, &parts.uri)?;
    // hyper's client takes the headers by value (h2c nodes pay the copy):
    // the client's lines, then the shared map, then the request's own.
    let mut headers = lines.map(HeaderLines::forwarded_map).unwrap_or_default();
    headers.extend(shared.clone());
    headers.extend(std::mem::take(&mut parts.headers));
    parts.headers = headers;
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
        status,
        version,
        headers,
        body: framing,
        keep_alive,
    } = answered.head;
    let body = H1Body::new(conn, framing, keep_alive && answered.request_sent, headers);
    // The node's header lines ride with the body (`NodeBody::node_headers`);
    // the map is for the gateway's own, with room for the request id and
    // the rate-limit headers.
    let mut response = Response::new(NodeBody::H1(body));
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = super::spare::take_headers(4);
    response
}

fn absolute(target: &Target<'_>, uri: &Uri) -> Result<Uri, UpstreamError> {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(target.scheme());
    parts.authority = Some(target.authority.clone());
    Uri::from_parts(parts).map_err(|e| UpstreamError::Exchange(Box::new(e)))
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

/// Keys hash by their precomputed hash.
type KeyMap<V> = HashMap<Key, V, crate::idhash::BuildIdHasher>;

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
        let now = crate::clock::now();
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
fn checkout(key: &Key, now: Instant) -> Option<PooledConn> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.sweep_if_due(now);
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

/// Sweep this thread's idle node connections unless a checkout did within
/// [`SWEEP_EVERY`]. Checkouts sweep only while requests come: the worker
/// calls this on a timer, so a thread without traffic also closes the
/// connections that sat idle past [`IDLE_TIMEOUT`] or that their node
/// ended (which would otherwise wait, half closed and holding a
/// descriptor, for the next request).
pub fn sweep_idle() {
    let now = crate::clock::now();
    // `try_with`: the pool is gone while the thread shuts down.
    let _ = POOL.try_with(|pool| pool.borrow_mut().sweep_if_due(now));
}

impl Pool {
    /// [`sweep`] unless it ran within [`SWEEP_EVERY`].
    fn sweep_if_due(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            self.last_sweep = Some(now);
            sweep(&mut self.idle, now);
        }
    }
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
mod tests;
