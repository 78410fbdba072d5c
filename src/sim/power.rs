//! The simulated node's power: a per-GPU power curve over the engine's
//! steps, an energy meter integrated over simulated time, the parked state
//! (vLLM's sleep mode API) and the NVIDIA DCGM exporter's metric names.
//!
//! Power per GPU (numbers and sources in `docs/simulator.md`, *Power*):
//!
//! * no step running (nothing to do): `idle_watts`;
//! * during a step that handles `t` tokens (one per decoding sequence plus
//!   the prefill tokens): `active_watts + (max_watts − active_watts) ×
//!   min(1, log2(t) / log2(saturation_tokens))` — memory-bound small
//!   batches draw well under the board limit, compute-bound large batches
//!   and prefills approach it;
//! * parked (`POST /sleep`): `parked_watts`; waking (`POST /wake_up`, takes
//!   `wake_secs`): `idle_watts`, engine stopped.
//!
//! Energy is power × *simulated* seconds (wall time / `time_scale`), so a
//! test at 100× speed reports the joules the real GPU would use.

use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Power curve and parking of one simulated node (all watts per GPU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PowerModel {
    /// GPUs in the node; DCGM series are per GPU, the node draws `gpus ×`.
    pub gpus: u32,
    /// Model loaded, CUDA context up, no kernel running.
    pub idle_watts: f64,
    /// A decode step of one sequence (memory-bound, batch 1).
    pub active_watts: f64,
    /// A step that saturates the GPU (large batch or prefill chunk).
    pub max_watts: f64,
    /// Tokens per step at which a step draws `max_watts`.
    pub saturation_tokens: f64,
    /// Parked: GPUs powered down / node suspended, only standby power.
    pub parked_watts: f64,
    /// Simulated seconds from `POST /wake_up` until the engine runs again
    /// (power on, load weights, warm up).
    pub wake_secs: f64,
    /// `modelName` label of the DCGM series.
    pub gpu_name: String,
}

impl Default for PowerModel {
    /// One H100 80GB SXM serving an 8B model with vLLM.
    fn default() -> Self {
        PowerModel {
            gpus: 1,
            idle_watts: 110.0,
            active_watts: 270.0,
            max_watts: 680.0,
            saturation_tokens: 128.0,
            parked_watts: 5.0,
            wake_secs: 30.0,
            gpu_name: "NVIDIA H100 80GB HBM3".to_string(),
        }
    }
}

impl PowerModel {
    /// Watts per GPU during a step handling `tokens` tokens.
    pub fn step_watts(&self, tokens: usize) -> f64 {
        if tokens == 0 {
            return self.idle_watts;
        }
        let sat = self.saturation_tokens.max(2.0);
        let share = ((tokens as f64).log2() / sat.log2()).clamp(0.0, 1.0);
        self.active_watts + (self.max_watts - self.active_watts) * share
    }

    fn gpus(&self) -> f64 {
        f64::from(self.gpus.max(1))
    }
}

/// Whether the node runs, sleeps or is waking up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerState {
    Awake,
    Parked,
    /// Waking; the engine runs again at this instant.
    Waking(Instant),
}

/// Energy meter of one node: piecewise-constant power integrated over
/// simulated time.
#[derive(Debug)]
pub(crate) struct Meter {
    model: PowerModel,
    time_scale: f64,
    /// Joules up to `since`.
    joules: f64,
    since: Instant,
    /// Node watts from `since` on (all GPUs).
    watts: f64,
    pub state: PowerState,
}

impl Meter {
    pub fn new(model: PowerModel, time_scale: f64) -> Meter {
        let watts = model.idle_watts * model.gpus();
        Meter {
            model,
            time_scale: if time_scale > 0.0 { time_scale } else { 1.0 },
            joules: 0.0,
            since: Instant::now(),
            watts,
            state: PowerState::Awake,
        }
    }

    fn sim_secs(&self, wall: Duration) -> f64 {
        wall.as_secs_f64() / self.time_scale
    }

    /// From `at` on the node draws `watts` (node total). `at` before the
    /// last change (a step catching up) counts from the last change.
    fn set_watts(&mut self, at: Instant, watts: f64) {
        if at > self.since {
            self.joules += self.watts * self.sim_secs(at - self.since);
            self.since = at;
        }
        self.watts = watts;
    }

    /// A step handling `tokens` tokens starts at `at`.
    pub fn step(&mut self, at: Instant, tokens: usize) {
        let w = self.model.step_watts(tokens) * self.model.gpus();
        self.set_watts(at, w);
    }

    /// The engine has nothing to do from `at` on.
    pub fn idle(&mut self, at: Instant) {
        let w = match self.state {
            PowerState::Parked => self.model.parked_watts,
            PowerState::Awake | PowerState::Waking(_) => self.model.idle_watts,
        } * self.model.gpus();
        self.set_watts(at, w);
    }

    /// Park now (`POST /sleep`).
    pub fn park(&mut self, now: Instant) {
        self.state = PowerState::Parked;
        self.idle(now);
    }

    /// Start waking now (`POST /wake_up`); returns when the engine runs
    /// again. Awake nodes are already there; waking ones keep their time.
    pub fn wake(&mut self, now: Instant) -> Instant {
        match self.state {
            PowerState::Awake => now,
            PowerState::Waking(at) => at,
            PowerState::Parked => {
                let wall = self.model.wake_secs.max(0.0) * self.time_scale;
                let at = now + Duration::try_from_secs_f64(wall).unwrap_or(Duration::ZERO);
                self.state = PowerState::Waking(at);
                self.idle(now);
                at
            }
        }
    }

    /// Finish waking if its time has come; true when the node is awake.
    pub fn poll_awake(&mut self, now: Instant) -> bool {
        if let PowerState::Waking(at) = self.state {
            if now >= at {
                self.state = PowerState::Awake;
            }
        }
        self.state == PowerState::Awake
    }

    /// Whether the node is parked or waking (no engine steps).
    pub fn sleeping(&self) -> bool {
        self.state != PowerState::Awake
    }

    /// Node watts now and joules consumed until `now`.
    pub fn read(&self, now: Instant) -> (f64, f64) {
        let extra = if now > self.since {
            self.watts * self.sim_secs(now - self.since)
        } else {
            0.0
        };
        (self.watts, self.joules + extra)
    }

    /// The DCGM exporter's power and energy series, one per GPU (the node's
    /// figures split evenly), as dcgm-exporter names and labels them.
    pub fn dcgm_text(&self, host: &str, now: Instant) -> String {
        let (watts, joules) = self.read(now);
        let gpus = self.model.gpus();
        let labels = |i: u32| {
            format!(
                "gpu=\"{i}\",UUID=\"GPU-{:08x}-{:04x}-0000-0000-{:012x}\",pci_bus_id=\"00000000:{:02X}:00.0\",device=\"nvidia{i}\",modelName=\"{}\",Hostname=\"{host}\"",
                xxhash_rust::xxh3::xxh3_64(host.as_bytes()) as u32,
                i,
                i,
                0x07 + i,
                self.model.gpu_name
            )
        };
        let mut out = String::new();
        out.push_str("# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n");
        out.push_str("# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n");
        for i in 0..self.model.gpus.max(1) {
            let _ = writeln!(
                out,
                "DCGM_FI_DEV_POWER_USAGE{{{}}} {:.3}",
                labels(i),
                watts / gpus
            );
        }
        out.push_str(
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).\n",
        );
        out.push_str("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n");
        for i in 0..self.model.gpus.max(1) {
            let _ = writeln!(
                out,
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{}}} {}",
                labels(i),
                (joules * 1000.0 / gpus).round() as u64
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_rises_with_tokens_and_saturates() {
        let m = PowerModel::default();
        assert_eq!(m.step_watts(0), m.idle_watts);
        assert_eq!(m.step_watts(1), m.active_watts);
        assert!(m.step_watts(8) > m.step_watts(1));
        assert!(m.step_watts(64) > m.step_watts(8));
        assert_eq!(m.step_watts(128), m.max_watts);
        assert_eq!(m.step_watts(4096), m.max_watts);
    }

    #[test]
    fn meter_integrates_simulated_time_and_parks() {
        let model = PowerModel {
            gpus: 2,
            ..PowerModel::default()
        };
        // 100x faster: 10 ms wall = 1 simulated second.
        let mut m = Meter::new(model.clone(), 0.01);
        let t0 = m.since;
        m.step(t0, 1);
        m.idle(t0 + Duration::from_millis(10));
        let (w, j) = m.read(t0 + Duration::from_millis(20));
        assert_eq!(w, 2.0 * model.idle_watts);
        let want = 2.0 * model.active_watts + 2.0 * model.idle_watts;
        assert!((j - want).abs() < 1e-6, "{j} vs {want}");
        m.park(t0 + Duration::from_millis(20));
        assert!(m.sleeping());
        let (w, _) = m.read(t0 + Duration::from_millis(30));
        assert_eq!(w, 2.0 * model.parked_watts);
        let at = m.wake(t0 + Duration::from_millis(30));
        assert_eq!(at, t0 + Duration::from_millis(30 + 300), "30 s at 0.01");
        assert!(!m.poll_awake(at - Duration::from_millis(1)));
        assert!(m.poll_awake(at));
        let text = m.dcgm_text("sim-0", at);
        assert_eq!(text.matches("DCGM_FI_DEV_POWER_USAGE{gpu=").count(), 2);
        assert!(text.contains("gpu=\"1\",UUID=\"GPU-"));
        assert!(text.contains("Hostname=\"sim-0\""));
    }
}
