//! What the gateway reads from each node's own `/metrics` (running,
//! waiting, KV use), its age and the health of that scraping, for the
//! admin API, the dashboard ([`ScrapeView`] in each node of the snapshot)
//! and Prometheus ([`render`]).
//!
//! Labels are the configured pool and node names and, for failures, the
//! bounded `reason` set of [`ScrapeFailure`]; nothing a node says becomes a
//! label.

use std::fmt::Write;

use serde::Serialize;

use super::FleetView;
use crate::fleet::capacity::{ScrapeFailure, ScrapeReport, ScrapeState};
use crate::fleet::now_ns;

/// A node's scraped reading and scrape health, as shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScrapeView {
    /// `pending`, `ok`, `stale` (last scrape failed or late; the previous
    /// reading still used with a decaying weight) or `failing` (no usable
    /// reading left).
    pub state: &'static str,
    /// Why the last scrape failed (`timeout`, `connect`, `status`,
    /// `parse`), while it is failing.
    pub reason: Option<&'static str>,
    /// Failed scrapes in a row.
    pub consecutive_failures: u64,
    /// Running requests as last scraped.
    pub running: Option<u64>,
    /// Waiting requests as last scraped.
    pub waiting: Option<u64>,
    /// KV cache use (0..1) as last scraped.
    pub kv_usage: Option<f64>,
    /// Seconds since the reading.
    pub age_s: Option<f64>,
    /// Weight the policies give the reading now (1 fresh, decays to 1/16).
    pub weight: Option<f64>,
    /// Failed scrapes since start by reason.
    pub failures: Failures,
    /// LoRA adapters the node ran lately (`vllm:lora_requests_info`).
    pub lora_adapters: Vec<String>,
    /// Adapters per batch (`max_lora`), if the node reports it.
    pub max_lora: Option<u32>,
}

/// Failed scrapes by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Failures {
    /// No answer within the timeout.
    pub timeout: u64,
    /// Connection refused or broken.
    pub connect: u64,
    /// Status other than 200.
    pub status: u64,
    /// Not a page with known capacity metrics.
    pub parse: u64,
}

impl ScrapeView {
    /// The view of a report; `None` when the pool does not scrape.
    pub fn of(r: &ScrapeReport, lora: (Vec<String>, Option<u32>)) -> Option<ScrapeView> {
        if r.state == ScrapeState::Off {
            return None;
        }
        let [timeout, connect, status, parse] = r.failures;
        Some(ScrapeView {
            state: r.state.as_str(),
            reason: r.reason.map(ScrapeFailure::as_str),
            consecutive_failures: r.consecutive_failures,
            running: r.reading.map(|x| x.running),
            waiting: r.reading.map(|x| x.waiting),
            kv_usage: r.reading.and_then(|x| x.kv_usage),
            age_s: r.reading.map(|x| x.age_secs),
            weight: r.reading.map(|x| x.weight),
            failures: Failures {
                timeout,
                connect,
                status,
                parse,
            },
            lora_adapters: lora.0,
            max_lora: lora.1,
        })
    }
}

const STATES: [ScrapeState; 4] = [
    ScrapeState::Pending,
    ScrapeState::Ok,
    ScrapeState::Stale,
    ScrapeState::Failing,
];

/// Append the scrape families for every scraped node of the fleet.
pub fn render(out: &mut String, fleet: &FleetView<'_>) {
    let now = now_ns();
    let mut families: [(&str, &str, &str, String); 7] = [
        ("infergate_node_scraped_running", "gauge", "Running requests in the node's last good metrics scrape.", String::new()),
        ("infergate_node_scraped_waiting", "gauge", "Waiting requests in the node's last good metrics scrape.", String::new()),
        ("infergate_node_scraped_kv_usage", "gauge", "KV cache use (0..1) in the node's last good metrics scrape.", String::new()),
        ("infergate_node_scrape_age_seconds", "gauge", "Age of the node's last good metrics scrape.", String::new()),
        ("infergate_node_scrape_weight", "gauge", "Weight routing gives the last scrape (1 fresh, halves every fresh window, dropped below 1/16).", String::new()),
        ("infergate_node_scrape_state", "gauge", "1 for the node's scrape state (pending, ok, stale, failing), 0 for the others.", String::new()),
        ("infergate_node_scrape_failures_total", "counter", "Failed metrics scrapes by reason (timeout, connect, status, parse).", String::new()),
    ];
    for pool in fleet.pools.iter().map(|p| p.pool) {
        for node in &pool.nodes {
            let r = node.load.ai.capacity.report(now);
            if r.state == ScrapeState::Off {
                continue;
            }
            let l = format!(
                "pool=\"{}\",node=\"{}\"",
                super::prom::escape(&pool.name),
                super::prom::escape(&node.name)
            );
            if let Some(x) = r.reading {
                let _ = writeln!(families[0].3, "{}{{{l}}} {}", families[0].0, x.running);
                let _ = writeln!(families[1].3, "{}{{{l}}} {}", families[1].0, x.waiting);
                if let Some(kv) = x.kv_usage {
                    let _ = writeln!(families[2].3, "{}{{{l}}} {kv}", families[2].0);
                }
                let _ = writeln!(families[3].3, "{}{{{l}}} {}", families[3].0, x.age_secs);
                let _ = writeln!(families[4].3, "{}{{{l}}} {}", families[4].0, x.weight);
            }
            for s in STATES {
                let _ = writeln!(
                    families[5].3,
                    "{}{{{l},state=\"{}\"}} {}",
                    families[5].0,
                    s.as_str(),
                    u8::from(r.state == s)
                );
            }
            for (reason, n) in ScrapeFailure::ALL.iter().zip(r.failures) {
                let _ = writeln!(
                    families[6].3,
                    "{}{{{l},reason=\"{}\"}} {n}",
                    families[6].0,
                    reason.as_str()
                );
            }
        }
    }
    for (name, kind, help, lines) in &families {
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        out.push_str(lines);
    }
}
