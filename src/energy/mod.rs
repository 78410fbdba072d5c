//! Energy awareness: power signals per node and pool, consolidation of low
//! load onto fewer nodes, and parking of idle nodes (`docs/energy.md`).
//!
//! One task per pool with `[pools.energy]` ([`spawn`]) samples each node's
//! power every `interval` — measured from a DCGM exporter (`dcgm`) or
//! estimated from the configured power model and the observed load —
//! stores it in the node's [`crate::fleet::power::NodePower`], derives
//! joules per output token from the telemetry counters, runs the
//! [`controller::Controller`] and applies its decisions: the active set
//! (read by `balance::Consolidate` on the request path), parkable flags,
//! park and wake calls (`actions`). The latest figures are kept in a
//! [`PoolEnergy`] for the admin API, `/metrics` and alert rules.

pub mod actions;
pub mod config;
pub mod controller;
pub mod dcgm;
mod monitor;
pub mod prom;

use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use config::{ConsolidateConfig, EnergyConfig, NodePowerConfig, ParkingConfig};
pub use monitor::spawn;

use crate::fleet::power::{ParkState, PowerSource};

/// One node's energy figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeEnergy {
    /// Node name.
    pub name: String,
    /// Power now, watts (`None`: unknown).
    pub watts: Option<f64>,
    /// `measured` (DCGM exporter) or `estimated` (power model).
    pub source: Option<PowerSource>,
    /// Energy counted since the gateway started, joules.
    pub joules_total: f64,
    /// Output tokens over the window.
    pub window_tokens: u64,
    /// Energy over the window, joules.
    pub window_joules: f64,
    /// Joules per output token over the window (`None` without tokens).
    pub joules_per_token: Option<f64>,
    /// Output tokens per joule over the window.
    pub tokens_per_joule: Option<f64>,
    /// `awake`, `parked` or `waking`.
    pub state: ParkState,
    /// In the consolidation active set.
    pub active: bool,
    /// Idle long enough to be parked.
    pub parkable: bool,
}

/// A pool's energy figures, refreshed every interval.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PoolSummary {
    /// Pool name.
    pub pool: String,
    /// Sum of the nodes' power, watts.
    pub watts: f64,
    /// Nodes whose figure is measured / estimated / unknown.
    pub measured_nodes: usize,
    /// See `measured_nodes`.
    pub estimated_nodes: usize,
    /// Energy counted since the gateway started, joules.
    pub joules_total: f64,
    /// Window length, seconds.
    pub window_secs: f64,
    /// Output tokens over the window.
    pub window_tokens: u64,
    /// Energy over the window, joules.
    pub window_joules: f64,
    /// Joules per output token over the window.
    pub joules_per_token: Option<f64>,
    /// Output tokens per joule over the window.
    pub tokens_per_joule: Option<f64>,
    /// Whether `[pools.energy.consolidate]` is on.
    pub consolidating: bool,
    /// Nodes in the active set.
    pub active_nodes: usize,
    /// Nodes the predicted demand needs.
    pub nodes_needed: usize,
    /// Awake, available nodes.
    pub nodes_available: usize,
    /// Parked nodes.
    pub parked_nodes: usize,
    /// Waking nodes.
    pub waking_nodes: usize,
    /// Parkable nodes.
    pub parkable_nodes: usize,
    /// Per node, in config order.
    pub nodes: Vec<NodeEnergy>,
}

/// The latest figures of one pool.
#[derive(Debug, Default)]
pub struct PoolEnergy {
    summary: Mutex<PoolSummary>,
}

impl PoolEnergy {
    /// A copy of the latest figures.
    pub fn summary(&self) -> PoolSummary {
        self.summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, s: PoolSummary) {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// A running energy task; dropping it stops the task.
#[derive(Debug)]
pub struct EnergyHandle {
    /// Pool name.
    pub pool: String,
    /// Its latest figures.
    pub state: Arc<PoolEnergy>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EnergyHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
