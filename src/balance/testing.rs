//! Helpers shared by the policies' unit tests.

use std::sync::Arc;

use http::uri::Authority;

use crate::classify::prefix::{block_hashes, seed_for_model};
use crate::classify::{ApiFamily, Endpoint, Head, RequestClass};
use crate::fleet::Node;

/// Nodes `n0, n1, …` with the given weights (addresses are never dialled).
pub fn weighted_nodes(weights: &[u32]) -> Vec<Arc<Node>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Arc::new(Node::new(
                format!("n{i}"),
                Authority::from_static("127.0.0.1:1"),
                w,
            ))
        })
        .collect()
}

/// `n` nodes of weight 1.
pub fn nodes(n: usize) -> Vec<Arc<Node>> {
    weighted_nodes(&vec![1; n])
}

/// A chat completion request classified from its head only (no body yet).
pub fn chat_class() -> RequestClass {
    RequestClass::from_head(Head {
        family: ApiFamily::OpenAi,
        endpoint: Endpoint::ChatCompletions,
        path_model: None,
        parse_body: true,
        asked_priority: None,
    })
}

/// A classified chat request whose prompt is `text` (model "m").
pub fn chat_request(text: &str) -> RequestClass {
    let mut c = chat_class();
    c.prefix = block_hashes(seed_for_model("m"), text.as_bytes(), 256);
    c.prompt_tokens = (text.len() / 4) as u32;
    c
}
