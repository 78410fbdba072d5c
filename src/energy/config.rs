//! Config of energy awareness: `[pools.energy]` (power signals),
//! `[pools.energy.consolidate]`, `[pools.energy.parking]` and a node's
//! `[pools.nodes.power]`.
//!
//! ```toml
//! [[pools]]
//! name = "chat"
//! [pools.energy]
//! interval = "1s"              # power sampling and controller tick
//! exporter_path = "/metrics"   # DCGM exporter on every node ...
//! exporter_port = 9400         # ... on this port (absent: the node's own)
//! # exporter_url = "http://dcgm.example:9400/metrics"  # or one page for the pool, split by `Hostname`
//! idle_watts = 110.0           # power model where no exporter answers (per GPU)
//! max_watts = 700.0
//! gpus = 1
//! [pools.energy.consolidate]
//! ttft_slo = "1s"
//! itl_slo = "100ms"
//! headroom = 0.2
//! target_batch = 16
//! [pools.energy.parking]
//! idle_after = "5m"
//! wake_time = "60s"
//! webhook = "http://autoscaler.internal/park"   # or vllm_sleep = true
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

/// Power signals of a pool (`[pools.energy]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// Time between power samples (and consolidation decisions).
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Window over which joules per token are computed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub window: Duration,
    /// Path of each node's DCGM exporter page (absent: no per-node exporter).
    pub exporter_path: Option<String>,
    /// Port of each node's DCGM exporter (absent: the node's own port).
    pub exporter_port: Option<u16>,
    /// One DCGM exporter page for the whole pool; its series are matched to
    /// nodes by their `Hostname` label (node name or host).
    pub exporter_url: Option<String>,
    /// Power model used where no exporter answers: watts per GPU at idle.
    pub idle_watts: f64,
    /// ... at full load.
    pub max_watts: f64,
    /// ... while parked.
    pub parked_watts: f64,
    /// GPUs per node.
    pub gpus: u32,
    /// Requests running on a node at which the model reaches `max_watts`.
    pub saturation_batch: f64,
    /// Run the pool on the smallest set of nodes that keeps the SLO.
    pub consolidate: Option<ConsolidateConfig>,
    /// Report (and optionally park) nodes that stay idle.
    pub parking: Option<ParkingConfig>,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            interval: Duration::from_secs(1),
            window: Duration::from_secs(60),
            exporter_path: None,
            exporter_port: None,
            exporter_url: None,
            idle_watts: 110.0,
            max_watts: 700.0,
            parked_watts: 5.0,
            gpus: 1,
            saturation_batch: 64.0,
            consolidate: None,
            parking: None,
        }
    }
}

/// Consolidation (`[pools.energy.consolidate]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsolidateConfig {
    /// Time-to-first-token objective the active set must keep.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ttft_slo: Duration,
    /// Inter-token latency objective: not a growth trigger (per-token gaps
    /// include prefill stalls); `target_batch` must be chosen so a node's
    /// decode step stays within it. Reported with the SLO by `bench`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub itl_slo: Duration,
    /// Share of capacity and of the objectives kept in reserve (0..0.9):
    /// a node is planned for `target_batch × (1 − headroom)` requests and
    /// the set grows when latency passes `slo × (1 − headroom)`.
    pub headroom: f64,
    /// Requests in flight per node that run efficiently within the SLO.
    pub target_batch: f64,
    /// Nodes kept active at any load.
    pub min_active: usize,
    /// How long demand must stay below a smaller set before one node leaves it.
    #[serde(deserialize_with = "duration::deserialize")]
    pub scale_down_delay: Duration,
}

impl Default for ConsolidateConfig {
    fn default() -> Self {
        ConsolidateConfig {
            ttft_slo: Duration::from_secs(1),
            itl_slo: Duration::from_millis(100),
            headroom: 0.2,
            target_batch: 16.0,
            min_active: 1,
            scale_down_delay: Duration::from_secs(30),
        }
    }
}

/// Parking (`[pools.energy.parking]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParkingConfig {
    /// A node outside the active set with nothing in flight for this long
    /// (counted from its last request, or from when it woke) is parkable.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_after: Duration,
    /// How long a parked node takes to wake and warm up (waking is asked
    /// this far ahead of predicted need).
    #[serde(deserialize_with = "duration::deserialize")]
    pub wake_time: Duration,
    /// POST `{"action": "park"|"wake", "pool", "node", "address"}` here.
    pub webhook: Option<String>,
    /// Park and wake through the node's own vLLM sleep mode API
    /// (`POST /sleep?level=1`, `POST /wake_up`).
    pub vllm_sleep: bool,
    /// Idle awake nodes kept beyond the active set (not parked).
    pub spare: usize,
}

impl Default for ParkingConfig {
    fn default() -> Self {
        ParkingConfig {
            idle_after: Duration::from_secs(300),
            wake_time: Duration::from_secs(60),
            webhook: None,
            vllm_sleep: false,
            spare: 0,
        }
    }
}

impl ParkingConfig {
    /// Whether the gateway itself parks and wakes nodes.
    pub fn acts(&self) -> bool {
        self.webhook.is_some() || self.vllm_sleep
    }
}

/// A node's own power settings (`[pools.nodes.power]`), overriding the pool's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodePowerConfig {
    /// This node's DCGM exporter page (all its series are summed).
    pub exporter_url: Option<String>,
    /// Power model: watts per GPU at idle.
    pub idle_watts: Option<f64>,
    /// ... at full load.
    pub max_watts: Option<f64>,
    /// GPUs in this node.
    pub gpus: Option<u32>,
}

fn check_url(url: &str) -> Result<(), String> {
    match url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Ok(()),
        Ok(_) => Err(format!("`{url}` must be an http:// URL")),
        Err(e) => Err(format!("`{url}` is not a URL ({e})")),
    }
}

fn watts_ok(w: f64) -> bool {
    w.is_finite() && (0.0..=100_000.0).contains(&w)
}

impl EnergyConfig {
    /// Problems as `(field path, message)`, paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |f: &str, m: String| out.push((format!("{at}.{f}"), m));
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(3600) {
            err("interval", "must be between 10ms and 1h".into());
        }
        if self.window < self.interval {
            err("window", "must be at least the interval".into());
        }
        if let Some(path) = &self.exporter_path {
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                err(
                    "exporter_path",
                    format!("`{path}` must be a path starting with /"),
                );
            }
        }
        if self.exporter_port == Some(0) {
            err("exporter_port", "must be between 1 and 65535".into());
        }
        if self.exporter_port.is_some() && self.exporter_path.is_none() {
            err("exporter_port", "needs exporter_path".into());
        }
        if let Some(url) = &self.exporter_url {
            if let Err(why) = check_url(url) {
                err("exporter_url", why);
            }
        }
        for (f, w) in [
            ("idle_watts", self.idle_watts),
            ("max_watts", self.max_watts),
            ("parked_watts", self.parked_watts),
        ] {
            if !watts_ok(w) {
                err(f, "must be a number of watts from 0 to 100000".into());
            }
        }
        if self.max_watts < self.idle_watts {
            err("max_watts", "must be at least idle_watts".into());
        }
        if !(1..=64).contains(&self.gpus) {
            err("gpus", "must be between 1 and 64".into());
        }
        if !(self.saturation_batch.is_finite() && self.saturation_batch >= 1.0) {
            err("saturation_batch", "must be a number >= 1".into());
        }
        if let Some(c) = &self.consolidate {
            let at = "consolidate";
            if c.ttft_slo.is_zero() {
                err(&format!("{at}.ttft_slo"), "must be greater than 0".into());
            }
            if c.itl_slo.is_zero() {
                err(&format!("{at}.itl_slo"), "must be greater than 0".into());
            }
            if !(c.headroom.is_finite() && (0.0..=0.9).contains(&c.headroom)) {
                err(
                    &format!("{at}.headroom"),
                    "must be between 0 and 0.9".into(),
                );
            }
            if !(c.target_batch.is_finite() && (1.0..=100_000.0).contains(&c.target_batch)) {
                err(
                    &format!("{at}.target_batch"),
                    "must be between 1 and 100000".into(),
                );
            }
            if c.min_active == 0 {
                err(&format!("{at}.min_active"), "must be at least 1".into());
            }
        }
        if let Some(p) = &self.parking {
            if p.idle_after.is_zero() {
                err("parking.idle_after", "must be greater than 0".into());
            }
            if let Some(url) = &p.webhook {
                if let Err(why) = check_url(url) {
                    err("parking.webhook", why);
                }
            }
        }
        out
    }
}

impl NodePowerConfig {
    /// Problems as `(field path, message)`, paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(url) = &self.exporter_url {
            if let Err(why) = check_url(url) {
                out.push((format!("{at}.exporter_url"), why));
            }
        }
        for (f, w) in [
            ("idle_watts", self.idle_watts),
            ("max_watts", self.max_watts),
        ] {
            if w.is_some_and(|w| !watts_ok(w)) {
                out.push((
                    format!("{at}.{f}"),
                    "must be a number of watts from 0 to 100000".into(),
                ));
            }
        }
        if let (Some(idle), Some(max)) = (self.idle_watts, self.max_watts) {
            if max < idle {
                out.push((
                    format!("{at}.max_watts"),
                    "must be at least idle_watts".into(),
                ));
            }
        }
        if self.gpus.is_some_and(|g| !(1..=64).contains(&g)) {
            out.push((format!("{at}.gpus"), "must be between 1 and 64".into()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_field() {
        let cfg = EnergyConfig {
            max_watts: 50.0,
            consolidate: Some(ConsolidateConfig {
                headroom: 2.0,
                ..ConsolidateConfig::default()
            }),
            parking: Some(ParkingConfig {
                webhook: Some("ftp://x".into()),
                ..ParkingConfig::default()
            }),
            ..EnergyConfig::default()
        };
        let paths: Vec<String> = cfg
            .problems("pools[0].energy")
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            paths,
            [
                "pools[0].energy.max_watts",
                "pools[0].energy.consolidate.headroom",
                "pools[0].energy.parking.webhook"
            ]
        );
        assert!(EnergyConfig::default().problems("x").is_empty());
    }
}
