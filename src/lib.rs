//! infergate: a load balancer for AI inference traffic.
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.

pub mod admin;
pub mod alerts;
pub mod balance;
pub mod classify;
pub mod cli;
pub mod config;
pub mod console;
pub mod discovery;
pub mod energy;
pub mod epp;
pub mod faultlab;
pub mod fleet;
pub mod header_lines;
pub mod health;
pub mod idhash;
pub mod kvindex;
pub mod proxy;
pub mod sim;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod utc;
pub mod workload;
