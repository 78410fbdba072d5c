//! A synthetic LLM client workload: shared-prefix chat sessions sent to a
//! gateway at a target rate, with client-side latency measurements.
//!
//! Used by `infergate demo` to give the gateway something realistic to do,
//! and by tests. Prompts are deterministic for a seed: `sessions` users each
//! hold a multi-turn conversation that starts with one of `system_prompts`
//! long system prompts, so many requests share long prefixes, as they do in
//! production chat traffic.

mod client;
mod prompts;
mod stats;

pub use client::{run, WorkloadConfig};
pub use stats::{Sample, Stats, Summary};
