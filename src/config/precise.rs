//! `[routes.balance.precise]`: where the `precise_prefix` policy reads the
//! nodes' KV-cache events and the model's tokenizer.
//!
//! ```toml
//! [routes.balance.precise]
//! tokenizer = "/models/llama-3.1-8b/tokenizer.json"  # absent: approximate fallback
//! chat_template = "/models/llama-3.1-8b/chat_template.jinja"  # absent: the one beside the tokenizer
//! block_size = 16                 # vLLM --block-size
//! events_port = 5557              # node host + this port, unless listed below
//! replay_port = 5558              # optional: vLLM replay_endpoint (ROUTER)
//! topic = ""                      # vLLM kv-events-config "topic"
//! endpoints = { "gpu-1" = "tcp://10.0.0.5:5557" }          # by node name
//! replay_endpoints = { "gpu-1" = "tcp://10.0.0.5:5558" }
//! max_blocks_per_node = 1048576
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// Options of the precise prefix policy. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreciseOptions {
    /// Path of the model's `tokenizer.json`. Without it the policy routes
    /// like `prefix_aware` (and says so in its log and `/metrics`).
    pub tokenizer: Option<String>,
    /// The model's chat template, as the engine's `--chat-template`: a
    /// Jinja file or a `tokenizer_config.json`. Absent: the template shipped
    /// beside the tokenizer (`chat_template.jinja`, else the
    /// `chat_template` of `tokenizer_config.json`), as vLLM uses the
    /// model's own; with none, chat prompts are tokenized as `role: text`.
    pub chat_template: Option<String>,
    /// Tokens per KV block (the engine's `--block-size`).
    pub block_size: u32,
    /// Events port on each node's host, for nodes not in `endpoints`.
    pub events_port: Option<u16>,
    /// Replay port on each node's host, for nodes not in `replay_endpoints`.
    pub replay_port: Option<u16>,
    /// Topic to subscribe to (the engine's `topic`; `""`: all).
    pub topic: String,
    /// Events endpoint (`tcp://host:port`) by node name.
    pub endpoints: BTreeMap<String, String>,
    /// Replay endpoint by node name.
    pub replay_endpoints: BTreeMap<String, String>,
    /// Most blocks remembered per node.
    pub max_blocks_per_node: usize,
}

impl Default for PreciseOptions {
    fn default() -> Self {
        PreciseOptions {
            tokenizer: None,
            chat_template: None,
            block_size: 16,
            events_port: None,
            replay_port: None,
            topic: String::new(),
            endpoints: BTreeMap::new(),
            replay_endpoints: BTreeMap::new(),
            max_blocks_per_node: 1 << 20,
        }
    }
}

impl PreciseOptions {
    /// Problems as `(field path, message)`, paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |field: &str, msg: String| out.push((format!("{at}.{field}"), msg));
        if !(1..=4096).contains(&self.block_size) {
            err("block_size", "must be between 1 and 4096".into());
        }
        if !(1024..=1 << 26).contains(&self.max_blocks_per_node) {
            err(
                "max_blocks_per_node",
                "must be between 1024 and 67108864".into(),
            );
        }
        if self.tokenizer.as_deref().is_some_and(str::is_empty) {
            err("tokenizer", "must be a file path".into());
        }
        match (&self.chat_template, &self.tokenizer) {
            (Some(t), _) if t.is_empty() => err("chat_template", "must be a file path".into()),
            (Some(_), None) => err(
                "chat_template",
                "needs a tokenizer (the rendered chat is tokenized)".into(),
            ),
            _ => {}
        }
        for (field, map) in [
            ("endpoints", &self.endpoints),
            ("replay_endpoints", &self.replay_endpoints),
        ] {
            for (node, ep) in map {
                if !is_tcp_endpoint(ep) {
                    err(
                        &format!("{field}.{node}"),
                        format!("`{ep}` is not a tcp://host:port endpoint"),
                    );
                }
            }
        }
        out
    }
}

/// `tcp://host:port` with a port number.
pub fn is_tcp_endpoint(ep: &str) -> bool {
    ep.strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let o: PreciseOptions = toml::from_str(
            "block_size = 0\nendpoints = { a = \"http://x:1\", b = \"tcp://h:5557\" }",
        )
        .unwrap();
        let p = o.problems("routes[0].balance.precise");
        let paths: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].balance.precise.block_size",
                "routes[0].balance.precise.endpoints.a"
            ]
        );
        assert!(toml::from_str::<PreciseOptions>("blocksize = 4").is_err());
        let o: PreciseOptions =
            toml::from_str("chat_template = \"/m/chat_template.jinja\"").unwrap();
        let p = o.problems("p");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "p.chat_template");
        assert!(p[0].1.contains("needs a tokenizer"), "{p:?}");
    }
}
