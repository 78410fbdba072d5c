//! Pooled keep-alive clients to nodes.
//!
//! Each worker thread keeps its own clients (one per connect timeout and
//! protocol), so a request and the upstream connection it uses live on the
//! same thread: no cross-thread wake-ups on the hot path, the way
//! thread-per-core proxies (Envoy, nginx) keep their connection pools.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;

use super::body::BoxError;
use crate::config::UpstreamProtocol;

/// Request body type sent to nodes.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// Pooled keep-alive HTTP(S) client to nodes.
pub type UpstreamClient = Client<crate::tls::HttpsConnector, UpstreamBody>;

/// A thread's clients: by connect timeout, protocol and TLS settings (the
/// address of the pool's `ClientConfig`; the weak reference tells a live
/// entry from one whose table was replaced by a reload).
type Clients = HashMap<(Duration, UpstreamProtocol, usize), (Weak<ClientConfig>, UpstreamClient)>;

/// Idle keep-alive connections kept per node by each worker thread.
pub const MAX_IDLE_PER_NODE: usize = 64;

thread_local! {
    static CLIENTS: RefCell<Clients> = RefCell::new(HashMap::new());
}

/// This thread's client for nodes reached with `connect_timeout` over
/// `protocol`, with `tls` for `https://` nodes.
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
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_IDLE_PER_NODE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}
