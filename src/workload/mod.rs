//! LLM client workloads and their measurement.
//!
//! Prompts are deterministic for a seed: `sessions` users each hold a
//! multi-turn conversation that starts with one of `system_prompts` long
//! system prompts, so many requests share long prefixes, as they do in
//! production chat traffic (`client.rs`; `run` is the light loop `demo`
//! uses). `infergate bench` sends the same sessions — or fixed-size
//! synthetic requests, or a JSONL trace (`source.rs`) — in stages at a
//! Poisson rate or a fixed concurrency (`runner.rs`), measures each request
//! as inference-perf does (`measure.rs`) and reports in inference-perf's
//! lifecycle-summary shape, as CSV and as an HTML page (`report.rs`,
//! `html.rs`, `bench.rs`).

pub mod bench;
mod client;
pub mod energy;
pub mod html;
pub mod measure;
mod prompts;
pub mod report;
pub mod runner;
pub mod source;
mod stats;

pub use client::{chat_body, run, ChatSessions, Planned, WorkloadConfig};
pub use prompts::fleet_tokenizer_json;
pub use stats::{Sample, Stats, Summary};
