//! infergate: a load balancer for AI inference traffic.
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.
//!
//! The library is this binary's, not a published API: its documentation is
//! for the people working on it (`cargo doc --document-private-items`), so
//! docs may link to private items.
#![allow(rustdoc::private_intra_doc_links)]

/// jemalloc, for the binary and the tests alike. Against glibc's malloc on
/// a small proxied POST (2026-12-07, LTO builds): 32.8k → 31.6k
/// instructions per request (callgrind; malloc and free were 2.1k of
/// them: a request's 6 KB and 1.3 KB futures are past glibc's per-thread
/// cache), 5.2 → 4.8 µs user time per request in /proc over three
/// alternating rounds. Memory (`bench/scale.sh 15000 9000`): per idle
/// connection 2.7 → 2.8 KB, per held SSE stream 13.8 → 14.8 KB, and
/// after they close RSS falls back to 20 MB as before, by an arena purge
/// (`proxy::heap_release`).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod admin;
pub mod alerts;
pub mod ascii_case;
pub mod balance;
pub mod classify;
pub mod cli;
pub mod clock;
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
pub mod node_groups;
pub mod proxy;
pub mod sim;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod utc;
pub mod workload;
