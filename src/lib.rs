//! infergate: a load balancer for AI inference traffic.
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.
//!
//! The library is this binary's, not a published API: its documentation is
//! for the people working on it (`cargo doc --document-private-items`), so
//! docs may link to private items.
#![allow(rustdoc::private_intra_doc_links)]

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
