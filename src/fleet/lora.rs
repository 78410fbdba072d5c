//! Which LoRA adapters a node holds, as far as the gateway knows.
//!
//! Two sources, both bounded:
//!
//! * the node's `vllm:lora_requests_info` gauge (scraped with the capacity
//!   metrics): adapters of its running and waiting requests and its
//!   `max_lora` (adapters per batch). An adapter seen there in the last
//!   [`HOLD`] is taken as resident — vLLM keeps adapters in GPU slots until
//!   others push them out;
//! * the adapters the gateway itself sent to the node in the last
//!   [`HOLD`] (between scrapes, and for nodes whose metrics lack the gauge).
//!
//! Adapters are kept as 64-bit hashes of their names; names only for
//! display. Read on the request path through an `ArcSwap` (no lock); the
//! gateway's own sends take one short lock per routed adapter request.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use xxhash_rust::xxh3::xxh3_64;

/// How long an adapter counts as resident after it was last seen active.
pub const HOLD: u64 = 30_000_000_000;
/// Most adapters remembered per node (each source).
pub const MAX_ADAPTERS: usize = 64;

/// The hash an adapter name is known by.
pub fn adapter_key(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// What one scrape of `vllm:lora_requests_info` said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraInfo {
    /// Adapters of running requests.
    pub running: Vec<String>,
    /// Adapters of waiting requests.
    pub waiting: Vec<String>,
    /// Adapters per batch (`--max-loras`).
    pub max_lora: Option<u32>,
}

/// The scraped view: adapters seen active, with when.
#[derive(Debug, Default)]
struct Seen {
    /// (key, name, last seen ns), most recent first.
    held: Vec<(u64, String, u64)>,
    /// Distinct adapters running at the last scrape.
    running: usize,
    max_lora: Option<u32>,
}

/// A node's LoRA state, in [`super::AiLoad::lora`].
#[derive(Debug, Default)]
pub struct LoraState {
    seen: ArcSwapOption<Seen>,
    sent: Mutex<Vec<(u64, u64)>>,
}

impl LoraState {
    /// Merge a scrape taken at `now` (the scraper is the only writer).
    pub fn record(&self, info: &LoraInfo, now: u64) {
        let prev = self.seen.load_full();
        let mut held: Vec<(u64, String, u64)> = Vec::new();
        for name in info.running.iter().chain(&info.waiting) {
            let key = adapter_key(name);
            if !held.iter().any(|h| h.0 == key) {
                held.push((key, name.clone(), now));
            }
        }
        if let Some(prev) = prev {
            for h in &prev.held {
                if now.saturating_sub(h.2) <= HOLD && !held.iter().any(|x| x.0 == h.0) {
                    held.push(h.clone());
                }
            }
        }
        held.truncate(MAX_ADAPTERS);
        let mut running: Vec<&String> = info.running.iter().collect();
        running.dedup();
        self.seen.store(Some(Arc::new(Seen {
            held,
            running: running.len(),
            max_lora: info.max_lora,
        })));
    }

    /// The gateway sent a request for adapter `key` to the node at `now`.
    pub fn note_sent(&self, key: u64, now: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.retain(|s| s.0 != key && now.saturating_sub(s.1) <= HOLD);
        sent.insert(0, (key, now));
        sent.truncate(MAX_ADAPTERS);
    }

    /// Whether the node's scrapes ever named adapter `key` lately (so the
    /// name is an adapter, not a base model).
    pub fn knows(&self, key: u64, now: u64) -> bool {
        self.seen.load().as_ref().is_some_and(|s| {
            s.held
                .iter()
                .any(|h| h.0 == key && now.saturating_sub(h.2) <= HOLD)
        })
    }

    /// Whether adapter `key` is likely resident on the node at `now`.
    pub fn holds(&self, key: u64, now: u64) -> bool {
        self.knows(key, now)
            || self
                .sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|s| s.0 == key && now.saturating_sub(s.1) <= HOLD)
    }

    /// Whether a batch slot is free for another adapter: fewer distinct
    /// adapters running than `max_lora` (true when unknown).
    pub fn slot_free(&self) -> bool {
        self.seen
            .load()
            .as_ref()
            .is_none_or(|s| s.max_lora.is_none_or(|m| s.running < m as usize))
    }

    /// Adapters seen active lately (names, most recent first) and max_lora.
    pub fn report(&self, now: u64) -> (Vec<String>, Option<u32>) {
        match self.seen.load().as_ref() {
            Some(s) => (
                s.held
                    .iter()
                    .filter(|h| now.saturating_sub(h.2) <= HOLD)
                    .map(|h| h.1.clone())
                    .collect(),
                s.max_lora,
            ),
            None => (Vec::new(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn scraped_and_sent_adapters_are_held_for_a_while() {
        let l = LoraState::default();
        let a = adapter_key("sql");
        assert!(!l.holds(a, S) && l.slot_free());
        l.record(
            &LoraInfo {
                running: vec!["sql".into(), "chat".into()],
                waiting: vec![],
                max_lora: Some(2),
            },
            10 * S,
        );
        assert!(l.knows(a, 10 * S) && l.holds(a, 20 * S));
        assert!(!l.slot_free(), "2 of 2 running");
        // Idle at the next scrape: still held within HOLD, then forgotten.
        l.record(
            &LoraInfo {
                max_lora: Some(2),
                ..LoraInfo::default()
            },
            15 * S,
        );
        assert!(l.holds(a, 39 * S) && l.slot_free());
        assert!(!l.holds(a, 41 * S));
        assert_eq!(
            l.report(20 * S),
            (vec!["sql".to_string(), "chat".to_string()], Some(2))
        );
        // What the gateway sent counts too, but does not make a name an adapter.
        let b = adapter_key("math");
        l.note_sent(b, 50 * S);
        assert!(l.holds(b, 60 * S) && !l.knows(b, 60 * S));
        assert!(!l.holds(b, 81 * S));
    }
}
