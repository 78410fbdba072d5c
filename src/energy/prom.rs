//! Prometheus exposition of the energy figures (per node and per pool).
//! Pool gauges `infergate_pool_parkable_nodes` and
//! `infergate_pool_nodes_needed` are meant for an autoscaler (KEDA, HPA
//! through an adapter).

use std::fmt::Write;

use super::EnergyHandle;
use crate::fleet::power::{ParkState, PowerSource};
use crate::telemetry::prom::{header, labels};

type Line = (&'static str, &'static str, &'static str);

const NODE: &[Line] = &[
    ("infergate_node_power_watts", "gauge", "Power draw of the node's GPUs, watts; source=measured (DCGM exporter) or estimated (power model)."),
    ("infergate_node_energy_joules_total", "counter", "Energy of the node's GPUs counted since the gateway started, joules."),
    ("infergate_node_joules_per_token", "gauge", "Joules per output token over the energy window."),
    ("infergate_node_park_state", "gauge", "1 for the node's parking state (awake, parked, waking), 0 for the others."),
    ("infergate_node_active", "gauge", "1 while the node is in the pool's consolidation active set."),
    ("infergate_node_parkable", "gauge", "1 while the node has been idle long enough to be parked."),
];

const POOL: &[Line] = &[
    (
        "infergate_pool_power_watts",
        "gauge",
        "Power draw of the pool's nodes, watts.",
    ),
    (
        "infergate_pool_energy_joules_total",
        "counter",
        "Energy of the pool's nodes counted since the gateway started, joules.",
    ),
    (
        "infergate_pool_joules_per_token",
        "gauge",
        "Joules per output token over the energy window.",
    ),
    (
        "infergate_pool_tokens_per_joule",
        "gauge",
        "Output tokens per joule over the energy window.",
    ),
    (
        "infergate_pool_active_nodes",
        "gauge",
        "Awake nodes in the consolidation active set.",
    ),
    (
        "infergate_pool_nodes_needed",
        "gauge",
        "Nodes the predicted demand needs (target batch with headroom).",
    ),
    (
        "infergate_pool_nodes_available",
        "gauge",
        "Awake, available nodes.",
    ),
    (
        "infergate_pool_parkable_nodes",
        "gauge",
        "Nodes idle long enough to be parked.",
    ),
    (
        "infergate_pool_parked_nodes",
        "gauge",
        "Nodes parked or waking.",
    ),
];

/// Append the energy metrics of every pool with `[pools.energy]`.
pub fn render(out: &mut String, pools: &[EnergyHandle]) {
    if pools.is_empty() {
        return;
    }
    let mut node_lines: Vec<String> = vec![String::new(); NODE.len()];
    let mut pool_lines: Vec<String> = vec![String::new(); POOL.len()];
    for handle in pools {
        let s = handle.state.summary();
        let pl = labels(&[("pool", &s.pool)]);
        for n in &s.nodes {
            let l = labels(&[("pool", &s.pool), ("node", &n.name)]);
            if let (Some(w), Some(src)) = (n.watts, n.source) {
                let src = match src {
                    PowerSource::Measured => "measured",
                    PowerSource::Estimated => "estimated",
                };
                let inner = &l[1..l.len() - 1];
                let _ = writeln!(
                    node_lines[0],
                    "{}{{{inner},source=\"{src}\"}} {w}",
                    NODE[0].0
                );
            }
            let _ = writeln!(node_lines[1], "{}{l} {}", NODE[1].0, n.joules_total);
            if let Some(j) = n.joules_per_token {
                let _ = writeln!(node_lines[2], "{}{l} {j}", NODE[2].0);
            }
            let inner = &l[1..l.len() - 1];
            for (st, name) in [
                (ParkState::Awake, "awake"),
                (ParkState::Parked, "parked"),
                (ParkState::Waking, "waking"),
            ] {
                let _ = writeln!(
                    node_lines[3],
                    "{}{{{inner},state=\"{name}\"}} {}",
                    NODE[3].0,
                    u8::from(n.state == st)
                );
            }
            let _ = writeln!(node_lines[4], "{}{l} {}", NODE[4].0, u8::from(n.active));
            let _ = writeln!(node_lines[5], "{}{l} {}", NODE[5].0, u8::from(n.parkable));
        }
        let values = [
            Some(s.watts),
            Some(s.joules_total),
            s.joules_per_token,
            s.tokens_per_joule,
            Some(s.active_nodes as f64),
            Some(s.nodes_needed as f64),
            Some(s.nodes_available as f64),
            Some(s.parkable_nodes as f64),
            Some((s.parked_nodes + s.waking_nodes) as f64),
        ];
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let _ = writeln!(pool_lines[i], "{}{pl} {v}", POOL[i].0);
            }
        }
    }
    for (lines, defs) in [(&node_lines, NODE), (&pool_lines, POOL)] {
        for (text, (name, kind, help)) in lines.iter().zip(defs) {
            header(out, name, kind, help);
            out.push_str(text);
        }
    }
}
