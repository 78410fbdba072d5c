//! Parking and waking a node: a POST to the pool's webhook
//! (`{"action": "park"|"wake", "pool", "node", "address"}`), or the node's
//! own vLLM sleep mode API (`POST /sleep?level=1`, `POST /wake_up`).
//!
//! The node is marked parked *before* the call (so no request is routed to
//! it meanwhile) and back awake if the call fails; a wake marks it waking
//! for `wake_time`, during which it takes no requests and is not
//! health-checked.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::ParkingConfig;
use crate::fleet::{Node, Pool};

/// The HTTP client for park/wake calls.
pub type ActionClient = Client<crate::tls::HttpsConnector, Full<Bytes>>;

/// A client with the pool's TLS settings.
pub fn client(pool: &Pool) -> ActionClient {
    Client::builder(TokioExecutor::new()).build(crate::tls::https_connector(
        Arc::clone(&pool.tls),
        Duration::from_secs(5),
    ))
}

/// Park or wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Power the node down / put it to sleep.
    Park,
    /// Bring it back.
    Wake,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Park => "park",
            Action::Wake => "wake",
        }
    }
}

async fn post(
    client: &ActionClient,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Drain (bounded) so the connection can be reused.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Carry out `action` on `node` of `pool` and update its parking state.
pub async fn run(
    client: &ActionClient,
    pool: &Pool,
    node: &Node,
    action: Action,
    cfg: &ParkingConfig,
) {
    let power = &node.load.power;
    let now = crate::health::now_ms();
    match action {
        Action::Park => power.set_parked(),
        Action::Wake => {
            let wake = u64::try_from(cfg.wake_time.as_millis()).unwrap_or(u64::MAX);
            power.set_waking(now.saturating_add(wake));
        }
    }
    // vLLM's wake_up answers once the engine is back: allow for wake_time.
    let timeout = Duration::from_secs(10) + cfg.wake_time;
    let scheme = Pool::scheme(node);
    let result = if let Some(url) = &cfg.webhook {
        let body = serde_json::json!({
            "action": action.name(),
            "pool": pool.name,
            "node": node.name,
            "address": format!("{scheme}://{}", node.addr),
        });
        post(client, url, Bytes::from(body.to_string()), timeout).await
    } else if cfg.vllm_sleep {
        let path = match action {
            Action::Park => "/sleep?level=1",
            Action::Wake => "/wake_up",
        };
        post(
            client,
            &format!("{scheme}://{}{path}", node.addr),
            Bytes::new(),
            timeout,
        )
        .await
    } else {
        Ok(())
    };
    match result {
        Ok(()) => {
            tracing::info!(pool = %pool.name, node = %node.name, action = action.name(), "energy: node {}", if action == Action::Park { "parked" } else { "woken" })
        }
        Err(why) => {
            tracing::warn!(pool = %pool.name, node = %node.name, action = action.name(), %why, "energy: park/wake call failed");
            if action == Action::Park {
                // Not parked after all: back in service.
                power.set_awake();
            }
        }
    }
}
