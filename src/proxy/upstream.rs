//! Pooled keep-alive clients to nodes.
//!
//! Each worker thread keeps its own clients (one per connect timeout and
//! protocol), so a request and the upstream connection it uses live on the
//! same thread: no cross-thread wake-ups on the hot path, the way
//! thread-per-core proxies (Envoy, nginx) keep their connection pools.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::BoxError;
use crate::config::UpstreamProtocol;

/// Request body type sent to nodes.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// Pooled keep-alive HTTP client to nodes.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// Idle keep-alive connections kept per node by each worker thread.
pub const MAX_IDLE_PER_NODE: usize = 64;

thread_local! {
    static CLIENTS: RefCell<HashMap<(Duration, UpstreamProtocol), UpstreamClient>> = RefCell::new(HashMap::new());
}

/// This thread's client for nodes reached with `connect_timeout` over `protocol`.
pub fn client(connect_timeout: Duration, protocol: UpstreamProtocol) -> UpstreamClient {
    CLIENTS.with(|clients| {
        clients
            .borrow_mut()
            .entry((connect_timeout, protocol))
            .or_insert_with(|| build(connect_timeout, protocol))
            .clone()
    })
}

fn build(connect_timeout: Duration, protocol: UpstreamProtocol) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(30)));
    let mut builder = Client::builder(TokioExecutor::new());
    // Idle connections are capped per node and thread, and expire: a burst
    // must not leave thousands of idle sockets (and their buffers) behind.
    builder
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_IDLE_PER_NODE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}
