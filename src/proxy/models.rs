//! `GET /v1/models` (and `/models`, `/v1/models/{id}`) answered by the
//! gateway: the models its pools' nodes actually serve.
//!
//! Routes may match models by glob (`model = "llama-3.1-*"`) or not at all,
//! so their exact names alone would leave clients that discover models here
//! (guidellm without `--model`, chat UIs) with nothing to pick. Instead the
//! gateway asks each available node of every pool an OpenAI route sends to
//! for its own `/v1/models` and lists the models a route would send to that
//! pool, together with every exact model name in the routes, deduplicated
//! by id (the first node's card wins, so `max_model_len` passes through;
//! other fields such as vLLM's `root`, a path on the node, are dropped).
//!
//! Node answers are cached per node address for [`TTL`] in a
//! [`ModelCatalog`] that lives with the gateway (across reloads). A request
//! that finds entries missing or stale fetches them all at once under one
//! [`FETCH_TIMEOUT`], so it waits at most one bounded fetch; a node that
//! does not answer in time keeps its last list (or none) until the next
//! refresh. The cache lock is never held across an `.await`.
//!
//! Limits: nodes are asked without the client's credentials (the cache is
//! shared by all clients), so a node that requires an API key on
//! `/v1/models` contributes nothing and only the routes' exact names are
//! listed for it; `listener.models = "proxy"` hands the request to a node
//! instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use super::table::RouteTable;
use super::upstream;
use crate::config::UpstreamProtocol;

/// How long a node's model list is used before it is asked again.
pub const TTL: Duration = Duration::from_secs(10);
/// The longest a `/v1/models` request waits for nodes' answers.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `/v1/models` answer read from a node.
const MAX_BODY: usize = 1 << 20;

/// One node's model cards and when they were fetched.
#[derive(Clone)]
struct Entry {
    at: Instant,
    cards: Arc<Vec<Value>>,
}

/// Per-node cache of `/v1/models` answers, keyed by node address.
#[derive(Default)]
pub struct ModelCatalog {
    nodes: Mutex<HashMap<String, Entry>>,
}

/// A node to list: its address and the pool index it belongs to.
struct Ask {
    pool: usize,
    addr: String,
    authority: http::uri::Authority,
    https: bool,
    tls: Arc<rustls::ClientConfig>,
    connect: Duration,
}

impl ModelCatalog {
    /// The model cards to list for `table`, sorted by id.
    pub async fn list(&self, table: &RouteTable) -> Vec<Value> {
        let now_ms = crate::health::now_ms();
        // Nodes to ask: available nodes of pools that an OpenAI route sends
        // to over HTTP/1.1 (h2c pools are gRPC servers).
        let mut asks = Vec::new();
        for (p, pool) in table.pools.iter().enumerate() {
            let Some(route) = table
                .routes
                .iter()
                .find(|r| Arc::ptr_eq(&r.pool, pool) && r.lists_openai_models())
            else {
                continue;
            };
            if route.protocol != UpstreamProtocol::Http1 {
                continue;
            }
            for node in &pool.nodes {
                if node.load.health.is_available(now_ms) {
                    asks.push(Ask {
                        pool: p,
                        addr: node.addr.to_string(),
                        authority: node.addr.clone(),
                        https: node.https,
                        tls: Arc::clone(&pool.tls),
                        connect: route.timeouts.connect.min(FETCH_TIMEOUT),
                    });
                }
            }
        }

        let now = Instant::now();
        let (mut known, stale): (HashMap<String, Arc<Vec<Value>>>, Vec<&Ask>) = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            // Forget nodes no longer in the config.
            let current: HashSet<String> = table
                .pools
                .iter()
                .flat_map(|p| p.nodes.iter().map(|n| n.addr.to_string()))
                .collect();
            nodes.retain(|addr, _| current.contains(addr));
            let mut known = HashMap::new();
            let mut stale = Vec::new();
            for ask in &asks {
                match nodes.get(&ask.addr) {
                    Some(e) => {
                        known.insert(ask.addr.clone(), Arc::clone(&e.cards));
                        if now.duration_since(e.at) >= TTL {
                            stale.push(ask);
                        }
                    }
                    None => stale.push(ask),
                }
            }
            (known, stale)
        };

        if !stale.is_empty() {
            // Each node under the same deadline, so one that hangs costs
            // the others nothing.
            let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
            let fetches = stale.iter().map(|ask| async move {
                let cards = tokio::time::timeout_at(deadline, fetch(ask))
                    .await
                    .ok()
                    .flatten();
                (ask.addr.clone(), cards)
            });
            let fetched = futures_util::future::join_all(fetches).await;
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            for (addr, cards) in &fetched {
                match cards {
                    Some(cards) => {
                        let cards = Arc::new(cards.clone());
                        known.insert(addr.clone(), Arc::clone(&cards));
                        nodes.insert(addr.clone(), Entry { at: now, cards });
                    }
                    // No usable answer: keep the last list, ask again after TTL.
                    None => {
                        let entry = nodes.entry(addr.clone()).or_insert_with(|| Entry {
                            at: now,
                            cards: Arc::new(Vec::new()),
                        });
                        entry.at = now;
                    }
                }
            }
        }

        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        for ask in &asks {
            let Some(cards) = known.get(&ask.addr) else {
                continue;
            };
            let Some(pool) = table.pools.get(ask.pool) else {
                continue;
            };
            for card in cards.iter() {
                let Some(id) = card.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let routed = table.routes.iter().any(|r| {
                    Arc::ptr_eq(&r.pool, pool)
                        && r.lists_openai_models()
                        && r.model_pattern().is_none_or(|p| p.matches(id))
                });
                if routed && !out.contains_key(id) {
                    out.insert(id.to_string(), card.clone());
                }
            }
        }
        for name in &table.models {
            out.entry(name.clone()).or_insert_with(|| card(name));
        }
        out.into_values().collect()
    }
}

/// The card of a model known only by its name in a route.
pub fn card(id: &str) -> Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "infergate" })
}

/// Ask one node for its models; `None` when it does not answer with an
/// OpenAI model list.
async fn fetch(ask: &Ask) -> Option<Vec<Value>> {
    let uri = Uri::builder()
        .scheme(if ask.https { "https" } else { "http" })
        .authority(ask.authority.clone())
        .path_and_query("/v1/models")
        .build()
        .ok()?;
    let body: upstream::UpstreamBody = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = Request::get(uri).body(body).ok()?;
    let response = upstream::client(ask.connect, UpstreamProtocol::Http1, &ask.tls)
        .request(request)
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let bytes = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()?
        .to_bytes();
    parse_list(&bytes)
}

/// Fields of a node's model card passed on to clients. Others are dropped:
/// vLLM's `root` is often a path on the node's disk.
const CARD_FIELDS: [&str; 5] = ["id", "object", "created", "owned_by", "max_model_len"];

/// The cards of an OpenAI model list (`{"object": "list", "data": [...]}`),
/// keeping only entries with a string `id`, and of those only
/// [`CARD_FIELDS`].
fn parse_list(bytes: &[u8]) -> Option<Vec<Value>> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let data = v.get("data")?.as_array()?;
    Some(
        data.iter()
            .filter(|c| c.get("id").is_some_and(Value::is_string))
            .filter_map(Value::as_object)
            .map(|c| {
                Value::Object(
                    c.iter()
                        .filter(|(k, _)| CARD_FIELDS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_lists_only() {
        let cards = parse_list(
            br#"{"object":"list","data":[{"id":"a","max_model_len":8192,"root":"/models/a"},{"id":5},{"object":"model"}]}"#,
        )
        .unwrap();
        assert_eq!(cards.len(), 1);
        assert_eq!(cards[0]["max_model_len"], 8192);
        assert!(cards[0].get("root").is_none(), "no node paths");
        assert!(parse_list(b"{\"models\":[]}").is_none());
        assert!(parse_list(b"not json").is_none());
    }
}
