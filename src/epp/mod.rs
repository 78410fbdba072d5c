//! The endpoint picker (EPP) of the Gateway API Inference Extension: an
//! Envoy external processing (ext_proc) gRPC service through which an
//! Envoy-based gateway (Envoy Gateway, kgateway, Istio, GKE) asks infergate
//! which node of an `InferencePool` should serve each request, while the
//! gateway itself carries the bytes.
//!
//! Per request the service reads the headers and the body from the
//! ext_proc stream, classifies, routes and picks through
//! [`crate::proxy::pick`] — the data plane's policies, health, limits,
//! saturation and queue — and answers as the Endpoint Picker Protocol
//! says: the `x-gateway-destination-endpoint` header and the same value in
//! the dynamic metadata namespace `envoy.lb`; picks only among the
//! endpoints of the `envoy.lb.subset_hint` subset when the proxy sends
//! one; 503 when no endpoint is available, 429 when the request is shed.
//! After the picked endpoint come up to `fallbacks` others
//! (`ip:port,ip:port,...`) the proxy's retry may go down to; the proxy
//! reports which one served (`envoy.lb` /
//! `x-gateway-destination-endpoint-served`). The pick counts as in flight
//! on the node that serves until the response ends, so requests the
//! gateway proxies itself and those it only picks for share one view of
//! load. Protocol handling is in [`service`], the gRPC health service in
//! [`health`].

pub mod health;
mod service;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

pub use service::Picker;
pub use wire::{
    DESTINATION_HEADER, DESTINATION_NAMESPACE, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE,
};

use crate::proxy::Gateway;

/// `[epp]`: the ext_proc endpoint picker (off unless `addr` is set).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EppConfig {
    /// Address of the gRPC listener (`0.0.0.0:9002`, GIE's usual port);
    /// absent: no endpoint picker.
    pub addr: Option<String>,
    /// When a request cannot be picked for because it cannot be read or
    /// no route takes it (not when no node is available, which is always
    /// 503, nor when it is shed, 429): `false` (fail closed) answers the
    /// client with the error; `true` (fail open) lets the proxy route it
    /// with its own load balancing.
    pub fail_open: bool,
    /// Endpoints named after the picked one, least loaded first, for the
    /// proxy's retry to fall back to (0: the picked one alone).
    pub fallbacks: usize,
}

/// Most fallback endpoints in one answer.
pub const MAX_FALLBACKS: usize = 16;

impl Default for EppConfig {
    fn default() -> Self {
        EppConfig {
            addr: None,
            fail_open: false,
            fallbacks: 2,
        }
    }
}

impl EppConfig {
    /// Every problem, as (field path, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(addr) = &self.addr {
            if addr.parse::<SocketAddr>().is_err() {
                out.push((
                    "epp.addr".into(),
                    format!("`{addr}` is not an IP:port address"),
                ));
            }
        }
        if self.fallbacks > MAX_FALLBACKS {
            out.push((
                "epp.fallbacks".into(),
                format!("must be at most {MAX_FALLBACKS}"),
            ));
        }
        out
    }
}

/// Requests one proxy connection may have in flight through the picker
/// (Envoy opens more connections past it).
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

/// A running endpoint picker; dropping it stops it.
pub struct EppServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    health: tokio::task::JoinHandle<()>,
}

impl Drop for EppServer {
    fn drop(&mut self) {
        self.task.abort();
        self.health.abort();
    }
}

/// Serve the endpoint picker for `gateway` on `listener`, with the gRPC
/// health service beside it.
pub async fn serve(
    gateway: Arc<Gateway>,
    config: &EppConfig,
    listener: tokio::net::TcpListener,
) -> std::io::Result<EppServer> {
    let addr = listener.local_addr()?;
    let (health_service, health) = health::service(Arc::clone(&gateway)).await;
    let service = Picker::new(gateway, config.fail_open, config.fallbacks).into_service();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        // Each stream is one request of the proxy's: bound what a peer can
        // hold open (its buffered bodies are bounded by max_body_bytes).
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "endpoint picker stopped");
        }
    });
    Ok(EppServer { addr, task, health })
}

/// Bind `config.addr` and serve; `None` when the picker is off.
pub async fn start(
    gateway: Arc<Gateway>,
    config: &EppConfig,
) -> std::io::Result<Option<EppServer>> {
    let Some(addr) = &config.addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve(gateway, config, listener).await.map(Some)
}
