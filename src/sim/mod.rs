//! The inference node simulator.
pub mod config;
mod engine;
mod kv;
pub mod metrics;
