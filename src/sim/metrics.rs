//! Counters, histograms, the [`SimStats`] snapshot and the Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// vLLM's `vllm:time_to_first_token_seconds` buckets.
pub(crate) const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's request-latency buckets (`vllm:e2e_request_latency_seconds`).
pub(crate) const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// Snapshot of a node's counters and gauges (also served as `GET /sim/stats`).
///
/// Times are simulated seconds (wall time divided by `time_scale`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Node name.
    pub name: String,
    /// Inference requests received (chat, completions, embeddings).
    pub requests_total: u64,
    /// Requests received per path, every path except `/sim/*`.
    pub requests_by_endpoint: BTreeMap<String, u64>,
    /// Inference requests that finished normally.
    pub completed_ok: u64,
    /// Requests answered with an injected error.
    pub errors_injected: u64,
    /// Sequences dropped because the client went away.
    pub aborted: u64,
    /// Running sequences preempted for lack of KV blocks (recomputed later).
    pub preemptions: u64,
    /// Sequences in the running batch.
    pub running: usize,
    /// Sequences waiting for admission.
    pub waiting: usize,
    /// Share of KV blocks referenced by sequences (0..1).
    pub kv_usage: f64,
    /// KV cache size in blocks.
    pub kv_blocks_total: usize,
    /// Blocks holding cached prefix content (referenced or evictable).
    pub kv_blocks_cached: usize,
    /// Prompt tokens looked up in the prefix cache (vLLM counts the whole prompt).
    pub prefix_queries_tokens: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits_tokens: u64,
    /// Prompt tokens of requests whose prefill completed.
    pub prompt_tokens: u64,
    /// Output tokens generated.
    pub tokens_generated: u64,
    /// Sum of time-to-first-token of generation requests, simulated seconds.
    pub ttft_seconds_sum: f64,
    /// Requests counted in `ttft_seconds_sum`.
    pub ttft_count: u64,
    /// Sum of end-to-end latency of completed requests, simulated seconds.
    pub e2e_seconds_sum: f64,
    /// Node power draw now, watts (all GPUs).
    #[serde(default)]
    pub power_watts: f64,
    /// Energy used since the engine started, joules (simulated time).
    #[serde(default)]
    pub energy_joules: f64,
    /// Parked or waking (vLLM sleep mode): no engine steps.
    #[serde(default)]
    pub sleeping: bool,
    /// Requests whose LoRA adapter was resident in a GPU slot.
    pub lora_hits: u64,
    /// Requests whose LoRA adapter had to be loaded first.
    pub lora_loads: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b:?}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Mutable counters kept by one engine (reset on restart, like a process).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub requests_total: u64,
    pub by_endpoint: BTreeMap<String, u64>,
    pub completed_ok: u64,
    pub errors_injected: u64,
    pub aborted: u64,
    pub preemptions: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub success: BTreeMap<&'static str, u64>,
    pub ttft: Histogram,
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_total: 0,
            by_endpoint: BTreeMap::new(),
            completed_ok: 0,
            errors_injected: 0,
            aborted: 0,
            preemptions: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            success: BTreeMap::new(),
            ttft: Histogram::new(TTFT_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

/// Gauges sampled from the scheduler for a snapshot.
pub(crate) struct Gauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub kv_blocks_total: usize,
    pub kv_blocks_cached: usize,
    pub running_loras: String,
    pub waiting_loras: String,
    pub max_loras: usize,
    pub lora_hits: u64,
    pub lora_loads: u64,
}

impl Metrics {
    pub fn snapshot(&self, name: &str, g: &Gauges) -> SimStats {
        SimStats {
            name: name.to_string(),
            requests_total: self.requests_total,
            requests_by_endpoint: self.by_endpoint.clone(),
            completed_ok: self.completed_ok,
            errors_injected: self.errors_injected,
            aborted: self.aborted,
            preemptions: self.preemptions,
            running: g.running,
            waiting: g.waiting,
            kv_usage: g.kv_usage,
            kv_blocks_total: g.kv_blocks_total,
            kv_blocks_cached: g.kv_blocks_cached,
            prefix_queries_tokens: self.prefix_queries,
            prefix_hits_tokens: self.prefix_hits,
            prompt_tokens: self.prompt_tokens,
            tokens_generated: self.generation_tokens,
            ttft_seconds_sum: self.ttft.sum,
            ttft_count: self.ttft.count,
            e2e_seconds_sum: self.e2e.sum,
            power_watts: 0.0,
            energy_joules: 0.0,
            sleeping: false,
            lora_hits: g.lora_hits,
            lora_loads: g.lora_loads,
        }
    }

    /// Prometheus text exposition with vLLM's metric names.
    pub fn render(&self, model: &str, g: &Gauges, lora: bool) -> String {
        let model = model.replace('\\', "\\\\").replace('"', "\\\"");
        let l = format!("model_name=\"{model}\"");
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{{l}}} {v:?}");
        };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            g.running as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            g.waiting as f64,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            g.kv_usage,
        );
        gauge(
            &mut out,
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage (older name).",
            g.kv_usage,
        );
        if lora {
            // As vLLM: one sample per label set, the time as value.
            let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "# HELP vllm:lora_requests_info Running stats on lora requests."
            );
            let _ = writeln!(out, "# TYPE vllm:lora_requests_info gauge");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let _ = writeln!(
                out,
                "vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {now:?}",
                g.max_loras,
                esc(&g.running_loras),
                esc(&g.waiting_loras)
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        };
        counter(
            &mut out,
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            self.prompt_tokens,
        );
        counter(
            &mut out,
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            self.generation_tokens,
        );
        counter(
            &mut out,
            "vllm:num_preemptions_total",
            "Cumulative number of preemptions from the engine.",
            self.preemptions,
        );
        let _ = writeln!(
            out,
            "# HELP vllm:request_success_total Count of successfully processed requests."
        );
        let _ = writeln!(out, "# TYPE vllm:request_success_total counter");
        for reason in ["stop", "length"] {
            let v = self.success.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "vllm:request_success_total{{{l},finished_reason=\"{reason}\"}} {v}"
            );
        }
        self.ttft.render(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &l,
        );
        self.e2e.render(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            &l,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut s = String::new();
        h.render(&mut s, "x", "h", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1.0\"} 1\n"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"2.0\"} 2\n"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count{a=\"b\"} 3\n"));
    }
}
