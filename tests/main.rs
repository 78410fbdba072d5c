//! All integration tests in one binary: each file in tests/ is a module here,
//! so the crate and its dependencies are linked once instead of once per file
//! (that linking was most of `cargo test`'s build time).
//! Run one file's tests with `cargo test --test integration FILE::`.

mod common;

mod aware;
mod bench;
mod budget;
mod cli;
mod console;
mod deploy;
mod discovery;
mod energy;
mod epp;
mod errors;
mod failover;
mod fault_matrix;
mod faults;
mod gateway;
mod hostile;
mod lora;
mod observe;
mod policies;
mod precise;
mod probes;
mod reload;
mod resilience;
mod saturation;
mod security;
mod tls;
mod upstream_pool;
