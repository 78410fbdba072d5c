//! The energy side of `infergate bench`'s policy comparison: policy labels
//! with consolidation (`consolidate` or `consolidate+<policy>`), the
//! `[pools.energy]` block the gateway gets for them (times scaled to wall
//! time), and a sampler reading the simulated nodes' own power meters —
//! the fleet's "wall socket", independent of what the gateway estimates.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sim::{SimConfig, SimNode};
use crate::workload::energy::{EnergySample, NodeSample};

/// Route policy and whether the pool consolidates, from a bench label.
pub fn split_label(label: &str) -> (&str, bool) {
    match label.strip_prefix("consolidate") {
        Some("") => ("least_outstanding", true),
        Some(rest) => match rest.strip_prefix('+') {
            Some(inner) => (inner, true),
            None => (label, false),
        },
        None => (label, false),
    }
}

fn ms(secs: f64) -> String {
    format!("{}ms", (secs * 1000.0).round().max(1.0) as u64)
}

/// Settings of the consolidating pool in the bench (simulated seconds).
#[derive(Debug, Clone, Copy)]
pub struct ConsolidateBench {
    /// `ttft_slo`.
    pub ttft_slo: f64,
    /// `itl_slo`.
    pub itl_slo: f64,
    /// `target_batch`.
    pub target_batch: f64,
    /// `headroom`.
    pub headroom: f64,
    /// `scale_down_delay`.
    pub scale_down: f64,
    /// `idle_after`.
    pub idle_after: f64,
}

/// The `[pools.energy]` TOML of a consolidating bench pool: power read from
/// the simulated DCGM exporters, consolidation and parking through vLLM's
/// sleep API, every time scaled from simulated to wall seconds.
pub fn energy_toml(c: &ConsolidateBench, sim: &SimConfig) -> String {
    let ts = sim.time_scale;
    format!(
        "[pools.energy]\ninterval = \"{}\"\nwindow = \"{}\"\nexporter_path = \"/sim/dcgm/metrics\"\n\
         [pools.energy.consolidate]\nttft_slo = \"{}\"\nitl_slo = \"{}\"\nheadroom = {}\ntarget_batch = {}\n\
         scale_down_delay = \"{}\"\n\
         [pools.energy.parking]\nidle_after = \"{}\"\nwake_time = \"{}\"\nvllm_sleep = true\n",
        ms((1.0 * ts).max(0.05)),
        ms(60.0 * ts),
        ms(c.ttft_slo * ts),
        ms(c.itl_slo * ts),
        c.headroom,
        c.target_batch,
        ms(c.scale_down * ts),
        ms(c.idle_after * ts),
        ms(sim.power.wake_secs * ts),
    )
}

/// Samples the fleet's power meters until stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<EnergySample>>>,
    task: tokio::task::JoinHandle<()>,
    nodes: Arc<Vec<SimNode>>,
    start: Instant,
    base: f64,
    bases: Arc<Vec<f64>>,
    time_scale: f64,
}

fn sample(
    nodes: &[SimNode],
    start: Instant,
    base: f64,
    bases: &[f64],
    time_scale: f64,
) -> EnergySample {
    let mut s = EnergySample {
        t: start.elapsed().as_secs_f64() / time_scale,
        watts: 0.0,
        joules: -base,
        awake: 0,
        busy: 0,
        nodes: Vec::with_capacity(nodes.len()),
    };
    for (n, base) in nodes.iter().zip(bases) {
        let st = n.stats();
        s.watts += st.power_watts;
        s.joules += st.energy_joules;
        s.awake += usize::from(!st.sleeping);
        s.busy += usize::from(st.running > 0);
        s.nodes.push(NodeSample {
            joules: st.energy_joules - base,
            sleeping: st.sleeping,
            busy: st.running > 0,
        });
    }
    s
}

impl Sampler {
    /// Sample every simulated second (at least every 20 ms of wall time).
    pub fn start(nodes: Arc<Vec<SimNode>>, time_scale: f64) -> Sampler {
        let start = Instant::now();
        let bases: Arc<Vec<f64>> =
            Arc::new(nodes.iter().map(|n| n.stats().energy_joules).collect());
        let base: f64 = bases.iter().sum();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let period = Duration::from_secs_f64(time_scale.max(0.02));
        let task = {
            let (nodes, samples, bases) =
                (Arc::clone(&nodes), Arc::clone(&samples), Arc::clone(&bases));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tick.tick().await;
                    let s = sample(&nodes, start, base, &bases, time_scale);
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                }
            })
        };
        Sampler {
            samples,
            task,
            nodes,
            start,
            base,
            bases,
            time_scale,
        }
    }

    /// Stop and return the samples (with a last one taken now).
    pub fn stop(self) -> Vec<EnergySample> {
        self.task.abort();
        let last = sample(
            &self.nodes,
            self.start,
            self.base,
            &self.bases,
            self.time_scale,
        );
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        samples.push(last);
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_scaled_toml() {
        assert_eq!(split_label("consolidate"), ("least_outstanding", true));
        assert_eq!(
            split_label("consolidate+prefix_aware"),
            ("prefix_aware", true)
        );
        assert_eq!(split_label("round_robin"), ("round_robin", false));
        let sim = SimConfig {
            time_scale: 0.1,
            ..SimConfig::small()
        };
        let c = ConsolidateBench {
            ttft_slo: 1.0,
            itl_slo: 0.1,
            target_batch: 12.0,
            headroom: 0.2,
            scale_down: 30.0,
            idle_after: 20.0,
        };
        let text = energy_toml(&c, &sim);
        assert!(text.contains("ttft_slo = \"100ms\""), "{text}");
        assert!(text.contains("wake_time = \"3000ms\""), "{text}");
        let cfg: crate::energy::EnergyConfig = toml::from_str::<toml::Value>(&text).unwrap()
            ["pools"]["energy"]
            .clone()
            .try_into()
            .unwrap();
        assert!(cfg.problems("e").is_empty());
    }
}
