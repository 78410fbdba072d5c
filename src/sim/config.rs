//! Simulator configuration: the cost model, the served model and the faults.
//!
//! Every default is documented (with its source) in `docs/simulator.md`.

use serde::{Deserialize, Serialize};

/// Cost-model and serving parameters of one simulated node.
///
/// Deserializes with defaults for every missing field, so `{}` is a valid
/// config. Times are in *simulated* seconds; [`SimConfig::time_scale`]
/// converts them to wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Model name served (and required in requests when they name one).
    pub model: String,
    /// Wall seconds per simulated second (1.0 = real time, 0.01 = 100x faster).
    pub time_scale: f64,
    /// Node speed factor: 1.0 normal, 0.5 = every step takes twice as long.
    pub speed: f64,
    /// Maximum sequences in the running batch (vLLM `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Token budget per engine step, shared by prefill chunks and decodes
    /// (vLLM `--max-num-batched-tokens`; chunked prefill).
    pub max_num_batched_tokens: usize,
    /// KV cache size in blocks of 16 tokens.
    pub kv_blocks: usize,
    /// Share of KV blocks kept free when admitting a new request.
    pub kv_watermark: f64,
    /// Automatic prefix caching (vLLM `--enable-prefix-caching`, on by default in V1).
    pub enable_prefix_caching: bool,
    /// Maximum prompt + output tokens of one request.
    pub max_model_len: u32,
    /// Prefill cost per uncached prompt token.
    pub prefill_secs_per_token: f64,
    /// Fixed cost of every engine step (one pass over the weights).
    pub decode_base_secs: f64,
    /// Added step cost per decoding sequence in the batch.
    pub decode_per_seq_secs: f64,
    /// Output length when a request gives neither `max_tokens` nor `max_completion_tokens`.
    pub default_max_tokens: u32,
    /// Dimension of `/v1/embeddings` vectors.
    pub embedding_dim: usize,
    /// Power curve, parked power and wake-up time (`sim::power`).
    pub power: super::power::PowerModel,
    /// Serve LoRA adapters (vLLM `--enable-lora`): requests may name one
    /// as `model`, `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`
    /// work, and `vllm:lora_requests_info` is exported.
    pub enable_lora: bool,
    /// Adapters registered at start (vLLM `--lora-modules`, names only).
    pub lora_modules: Vec<String>,
    /// Distinct adapters in one batch and GPU slots (vLLM `--max-loras`).
    pub max_loras: usize,
    /// Cost of loading an adapter into a GPU slot (simulated seconds).
    pub lora_load_secs: f64,
    /// Faults active when the node starts.
    pub faults: Faults,
    /// KV-cache events, as vLLM's `--kv-events-config` (off by default).
    pub kv_events: super::kv_events::KvEventsConfig,
    /// Path of the model's `tokenizer.json`: prompts are tokenized with it
    /// (token counts, cached blocks, KV events). Without one a token is 4
    /// bytes of prompt text.
    pub tokenizer: Option<String>,
    /// The chat template chat prompts are rendered with before they are
    /// tokenized (vLLM's `--chat-template`): a Jinja file or a
    /// `tokenizer_config.json`. Absent: the one beside the tokenizer, if
    /// any, as vLLM uses the model's own; with none, chat messages are
    /// tokenized as `role: text` lines.
    pub chat_template: Option<String>,
}

impl Default for SimConfig {
    /// Llama-3.1-8B-Instruct (BF16) on one H100 80GB SXM with vLLM defaults.
    fn default() -> Self {
        SimConfig {
            model: "llama-3.1-8b-instruct".to_string(),
            time_scale: 1.0,
            speed: 1.0,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            kv_blocks: 27_000,
            kv_watermark: 0.01,
            enable_prefix_caching: true,
            max_model_len: 131_072,
            prefill_secs_per_token: 0.000_05,
            decode_base_secs: 0.006_5,
            decode_per_seq_secs: 0.000_1,
            default_max_tokens: 256,
            embedding_dim: 384,
            power: super::power::PowerModel::default(),
            enable_lora: false,
            lora_modules: Vec::new(),
            max_loras: 1,
            lora_load_secs: 0.02,
            faults: Faults::default(),
            kv_events: super::kv_events::KvEventsConfig::default(),
            tokenizer: None,
            chat_template: None,
        }
    }
}

impl SimConfig {
    /// The default cost model with a small KV cache (512 blocks = 8192
    /// tokens) and batch (32 seqs, 2048 tokens/step), so cache pressure,
    /// eviction and queueing show up with a handful of requests (demo, tests).
    pub fn small() -> Self {
        SimConfig {
            max_num_seqs: 32,
            max_num_batched_tokens: 2048,
            kv_blocks: 512,
            max_model_len: 8192,
            default_max_tokens: 64,
            ..SimConfig::default()
        }
    }

    /// Simulated seconds of one engine step that prefills `prefill_tokens`
    /// tokens and decodes one token for each of `decode_seqs` sequences,
    /// before speed, slowdown and time scale are applied.
    pub fn step_secs(&self, prefill_tokens: usize, decode_seqs: usize) -> f64 {
        self.decode_base_secs
            + self.decode_per_seq_secs * decode_seqs as f64
            + self.prefill_secs_per_token * prefill_tokens as f64
    }
}

/// Injected faults. `Faults::default()` injects nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share (0..1) of inference requests answered at once with `error_status`.
    pub error_rate: f64,
    /// Status of injected errors (default 500).
    pub error_status: u16,
    /// Wall-clock milliseconds (not scaled by `time_scale`) added before
    /// every response except `/sim/*` starts.
    pub added_latency_ms: u64,
    /// Accept requests (except `/sim/*`) and never answer.
    pub hang: bool,
    /// Abort the connection after this many generated tokens (streaming),
    /// or before sending anything (non-streaming).
    pub close_after_tokens: Option<u32>,
    /// Multiplies every engine step time (1.0 = none, 3.0 = 3x slower).
    pub slowdown: f64,
    /// Wall-clock milliseconds added before a `/metrics` answer (a loaded
    /// vLLM has been seen taking 4.9 s), on every `slow_metrics_every`-th
    /// scrape; 0 = none.
    pub slow_metrics_ms: u64,
    /// Which `/metrics` answers are slowed: every n-th (1 = all, 2 = every
    /// second one: intermittent).
    pub slow_metrics_every: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: 500,
            added_latency_ms: 0,
            hang: false,
            close_after_tokens: None,
            slowdown: 1.0,
            slow_metrics_ms: 0,
            slow_metrics_every: 1,
        }
    }
}
