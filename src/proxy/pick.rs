//! Picking a node for a request another proxy will forward (the endpoint
//! picker, `epp`): the same classification, route, eligibility (health,
//! draining, limits, saturation, slow start), queue and policy as a request
//! this gateway forwards itself. The pick holds a [`Slot`] on the node, so
//! while the other proxy's request runs it counts in the node's load like
//! one of ours. Besides the pick it names spare nodes the proxy may fall
//! back to, and moves the hold to the one that served.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};
use tokio::time::Instant;

use super::queue::Shed;
use super::select::{select, spares, Selection, Slot};
use super::RouteTable;
use crate::classify::{classify_body, classify_head, RequestClass};
use crate::fleet::Node;
use crate::header_lines::RequestHeaders;

/// What [`pick`] decided.
pub enum Picked {
    /// Send the request to `addr`; `slot` counts it in flight there until
    /// dropped.
    Node {
        /// `host:port` of the node.
        addr: String,
        /// The pool it belongs to.
        pool: String,
        /// The node's name.
        node: String,
        /// The hold on the node.
        slot: Slot,
        /// Nodes the proxy may fall back to, in order.
        spares: Spares,
    },
    /// Nothing to pick: answer the client with this status.
    Refused {
        /// 400 (unreadable request), 404 (no route), 429 (shed), 503 (no
        /// node available).
        status: u16,
        /// Why, for the client and the log.
        message: String,
    },
}

fn refused(status: u16, message: impl Into<String>) -> Picked {
    Picked::Refused {
        status,
        message: message.into(),
    }
}

/// The fallback nodes of a pick, and what is needed to count the request
/// on the one that served instead of the picked one.
pub struct Spares {
    nodes: Vec<Arc<Node>>,
    class: Box<RequestClass>,
}

impl Spares {
    /// `host:port` of each, in order.
    pub fn addrs(&self) -> impl Iterator<Item = String> + '_ {
        self.nodes.iter().map(|n| n.addr.to_string())
    }

    /// The request was served by `addr`, not by `slot`'s node: a hold on
    /// that node when it is one of the spares (the proxy's retry moved
    /// on, so the picked node failed the request).
    pub fn served_by(&self, slot: &Slot, addr: &str) -> Option<Slot> {
        let node = self.nodes.iter().find(|n| n.addr.as_str() == addr)?;
        Some(slot.begin_on(node, &self.class))
    }
}

/// Classify the request (`body`: its complete bytes, empty without one),
/// route it and pick a node among those whose `host:port` is in `subset`
/// (all of the pool's when `None`), waiting in the pool's queue until
/// `deadline` at the latest when every candidate is busy. Up to
/// `fallbacks` other available nodes of the subset, least loaded first,
/// come with the pick.
#[allow(clippy::too_many_arguments)]
pub async fn pick(
    table: &RouteTable,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    subset: Option<&[String]>,
    peer: IpAddr,
    deadline: Instant,
    fallbacks: usize,
) -> Picked {
    let headers = RequestHeaders::from(headers);
    let head = classify_head(method, path, headers);
    let mut class = if head.parse_body {
        match classify_body(head, body, &table.classify) {
            Ok(class) => class,
            Err(e) => return refused(400, e.to_string()),
        }
    } else {
        RequestClass::from_head(head)
    };
    let Some(route) = table.route(method, path, headers, &class) else {
        return refused(
            404,
            match &class.model {
                Some(model) => format!("no route serves model `{}`", model.escape_debug()),
                None => "no route serves this request".to_string(),
            },
        );
    };
    class.priority = route.priority.decide(class.asked_priority, peer);
    let nodes = &route.pool.nodes;
    // Nodes outside the subset count as tried, so neither the pick nor
    // the queue's wake-ups consider them.
    let excluded: Vec<usize> = match subset {
        Some(subset) => nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !subset.iter().any(|s| *s == n.addr.as_str()))
            .map(|(i, _)| i)
            .collect(),
        None => Vec::new(),
    };
    if excluded.len() == nodes.len() {
        return refused(
            503,
            if subset.is_some() {
                "no node of the pool is in the endpoint subset"
            } else {
                "the pool has no nodes"
            },
        );
    }
    match select(route, &class, headers, &excluded, Instant::now(), deadline).await {
        Selection::Node(chosen) => match nodes.get(chosen.index) {
            Some(node) => {
                let mut tried = excluded;
                tried.push(chosen.index);
                let spare_nodes = spares(route, &tried, fallbacks)
                    .into_iter()
                    .filter_map(|i| nodes.get(i).cloned())
                    .collect();
                Picked::Node {
                    addr: node.addr.to_string(),
                    pool: route.pool.name.clone(),
                    node: node.name.clone(),
                    slot: Slot::begin(route, node, &class, chosen.cached_blocks),
                    spares: Spares {
                        nodes: spare_nodes,
                        class: Box::new(class),
                    },
                }
            }
            None => refused(503, "no node available"),
        },
        Selection::Shed(reason) => refused(
            429,
            match reason {
                Shed::QueueFull => "all model servers are busy and the queue is full",
                Shed::Displaced => "displaced from the queue by a request of higher priority",
                Shed::TimedOut => "all model servers stayed busy",
            },
        ),
        Selection::Unavailable => refused(503, "no node available"),
    }
}
