//! LoRA adapters on a simulated node, as vLLM serves them
//! (`--enable-lora --lora-modules name=path --max-loras N`, and
//! `/v1/load_lora_adapter` / `/v1/unload_lora_adapter` at run time).
//!
//! * A request's `model` may name a registered adapter instead of the base
//!   model; an unknown name is refused (404 `NotFoundError`).
//! * At most `max_loras` distinct adapters run in one batch (vLLM's
//!   scheduler skips a waiting request whose adapter would exceed it).
//! * An adapter not resident in one of the `max_loras` GPU slots is loaded
//!   when its first request is admitted: `lora_load_secs` added to that
//!   step (a *load*); a request whose adapter is resident is a *hit*.
//!   Slots are reused least recently used first.
//! * `vllm:lora_requests_info{max_lora, running_lora_adapters,
//!   waiting_lora_adapters}` names the adapters of running and waiting
//!   requests, comma-separated, with the time as value (as vLLM).

use std::collections::VecDeque;

/// The adapters a node knows and those resident on its GPU.
#[derive(Debug, Default)]
pub(crate) struct Lora {
    /// Registered adapters by id (`None` once unloaded; ids stay stable).
    names: Vec<Option<String>>,
    /// Resident adapter ids, least recently used first.
    gpu: VecDeque<u32>,
    max_loras: usize,
    /// Requests whose adapter was resident / had to be loaded.
    pub hits: u64,
    pub loads: u64,
}

impl Lora {
    pub fn new(modules: &[String], max_loras: usize) -> Lora {
        Lora {
            names: modules.iter().map(|m| Some(m.clone())).collect(),
            gpu: VecDeque::new(),
            max_loras: max_loras.max(1),
            hits: 0,
            loads: 0,
        }
    }

    /// The id of a registered adapter.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|n| n.as_deref() == Some(name))
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The name of adapter `id`, if still registered.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).and_then(|n| n.as_deref())
    }

    /// Registered adapter names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().flatten().map(String::as_str)
    }

    /// Register an adapter (`/v1/load_lora_adapter`); `false` when it is
    /// already registered.
    pub fn register(&mut self, name: &str) -> bool {
        if self.id(name).is_some() {
            return false;
        }
        self.names.push(Some(name.to_string()));
        true
    }

    /// Forget an adapter (`/v1/unload_lora_adapter`); `false` when unknown.
    pub fn unregister(&mut self, name: &str) -> bool {
        let Some(id) = self.id(name) else {
            return false;
        };
        self.names[id as usize] = None;
        self.gpu.retain(|g| *g != id);
        true
    }

    /// Most adapters in one batch (`max_loras`).
    pub fn max_loras(&self) -> usize {
        self.max_loras
    }

    /// Whether a request with adapter `id` may join a batch already
    /// running `running` (distinct adapter ids).
    pub fn fits(&self, id: u32, running: &[u32]) -> bool {
        running.contains(&id) || running.len() < self.max_loras
    }

    /// Admit a request with adapter `id` into a batch running `running`:
    /// `true` when its adapter had to be loaded (costs a step surcharge).
    pub fn admit(&mut self, id: u32, running: &[u32]) -> bool {
        if let Some(at) = self.gpu.iter().position(|g| *g == id) {
            self.gpu.remove(at);
            self.gpu.push_back(id);
            self.hits += 1;
            return false;
        }
        if self.gpu.len() >= self.max_loras {
            // Evict the least recently used adapter no running request uses
            // (there is one: at most max_loras distinct adapters run).
            if let Some(at) = self.gpu.iter().position(|g| !running.contains(g)) {
                self.gpu.remove(at);
            }
        }
        self.gpu.push_back(id);
        self.loads += 1;
        true
    }

    /// Names of `ids` (deduplicated, in order), comma-separated.
    pub fn list(&self, ids: impl Iterator<Item = u32>) -> String {
        let mut seen: Vec<u32> = Vec::new();
        for id in ids {
            if !seen.contains(&id) {
                seen.push(id);
            }
        }
        seen.iter()
            .filter_map(|id| self.name(*id))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_least_recently_used_first() {
        let mut l = Lora::new(&["a".into(), "b".into(), "c".into()], 2);
        let (a, b, c) = (0, 1, 2);
        assert!(l.admit(a, &[]), "first use loads");
        assert!(!l.admit(a, &[a]), "resident: a hit");
        assert!(l.admit(b, &[a]));
        assert!(!l.fits(c, &[a, b]), "two adapters already in the batch");
        assert!(l.fits(a, &[a, b]));
        // b still running, a done: c evicts a.
        assert!(l.admit(c, &[b]));
        assert!(!l.admit(b, &[b, c]), "b was kept");
        assert_eq!((l.hits, l.loads), (2, 3));
        assert!(l.register("d"));
        assert!(!l.register("d"));
        assert!(l.unregister("a"));
        assert!(!l.unregister("a"));
        assert_eq!(l.id("a"), None);
        assert_eq!(l.names().collect::<Vec<_>>(), ["b", "c", "d"]);
        assert_eq!(l.list([b, c, b].into_iter()), "b,c");
    }
}
