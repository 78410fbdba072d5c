//! Power state of one node as the gateway knows it: the last power figure
//! (measured by a DCGM exporter or estimated from a power model), the energy
//! counted since the gateway started, and the consolidation/parking state
//! the energy controller (`crate::energy`) sets and the request path reads.
//!
//! All relaxed atomics: the request path only reads `is_routable` and
//! `in_active_set`; the controller task writes once per tick.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

const NONE: u64 = u64::MAX;

/// Where a node's power figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    /// Read from the node's DCGM exporter.
    Measured,
    /// Computed from the configured power model and the observed load.
    Estimated,
}

/// Whether a node runs, is parked (powered down / asleep) or is waking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkState {
    /// Running (routable if healthy).
    Awake,
    /// Parked: takes no requests and is not health-checked.
    Parked,
    /// Asked to wake; not routable until its wake-up time has passed.
    Waking,
}

/// Power and parking state of one node (kept across reloads with its load).
#[derive(Debug)]
pub struct NodePower {
    milliwatts: AtomicU64,
    millijoules: AtomicU64,
    measured: AtomicBool,
    state: AtomicU8,
    /// Waking until this time (ms since the Unix epoch).
    wake_until_ms: AtomicU64,
    /// In the consolidation controller's active set (true without one).
    active: AtomicBool,
    parkable: AtomicBool,
    /// Id of the energy task that keeps this node's figures (the newest
    /// config's), so an old table's task still running after a reload
    /// does not count energy twice.
    owner: AtomicU64,
}

impl Default for NodePower {
    fn default() -> Self {
        NodePower {
            milliwatts: AtomicU64::new(NONE),
            millijoules: AtomicU64::new(0),
            measured: AtomicBool::new(false),
            state: AtomicU8::new(0),
            wake_until_ms: AtomicU64::new(0),
            active: AtomicBool::new(true),
            parkable: AtomicBool::new(false),
            owner: AtomicU64::new(0),
        }
    }
}

impl NodePower {
    /// Make task `owner` the one that keeps this node's figures.
    pub fn claim(&self, owner: u64) {
        self.owner.store(owner, Ordering::Relaxed);
    }

    /// Whether task `owner` still keeps this node's figures.
    pub fn owned_by(&self, owner: u64) -> bool {
        self.owner.load(Ordering::Relaxed) == owner
    }

    /// Record the node's power now and the energy used since the last
    /// record (joules, ≥ 0).
    pub fn record(&self, watts: f64, joules_since: f64, source: PowerSource) {
        let mw = (watts.max(0.0) * 1000.0).round() as u64;
        self.milliwatts.store(mw.min(NONE - 1), Ordering::Relaxed);
        let mj = (joules_since.max(0.0) * 1000.0).round() as u64;
        self.millijoules.fetch_add(mj, Ordering::Relaxed);
        self.measured
            .store(source == PowerSource::Measured, Ordering::Relaxed);
    }

    /// Power figure is no longer known (exporter gone, no model).
    pub fn clear(&self) {
        self.milliwatts.store(NONE, Ordering::Relaxed);
    }

    /// Watts now, and whether measured or estimated; `None` if unknown.
    pub fn watts(&self) -> Option<(f64, PowerSource)> {
        let mw = self.milliwatts.load(Ordering::Relaxed);
        (mw != NONE).then(|| {
            let source = if self.measured.load(Ordering::Relaxed) {
                PowerSource::Measured
            } else {
                PowerSource::Estimated
            };
            (mw as f64 / 1000.0, source)
        })
    }

    /// Energy counted since the gateway started, joules.
    pub fn joules(&self) -> f64 {
        self.millijoules.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Parking state at `now_ms`; a waking node whose time has passed is awake.
    pub fn state(&self, now_ms: u64) -> ParkState {
        match self.state.load(Ordering::Relaxed) {
            1 => ParkState::Parked,
            2 if now_ms < self.wake_until_ms.load(Ordering::Relaxed) => ParkState::Waking,
            _ => ParkState::Awake,
        }
    }

    /// The node was parked.
    pub fn set_parked(&self) {
        self.state.store(1, Ordering::Relaxed);
        self.parkable.store(false, Ordering::Relaxed);
    }

    /// The node was asked to wake; it is routable from `until_ms` on.
    pub fn set_waking(&self, until_ms: u64) {
        self.wake_until_ms.store(until_ms, Ordering::Relaxed);
        self.state.store(2, Ordering::Relaxed);
    }

    /// The node is awake.
    pub fn set_awake(&self) {
        self.state.store(0, Ordering::Relaxed);
    }

    /// Parked or waking: no requests, no health checks.
    #[inline]
    pub fn is_asleep(&self, now_ms: u64) -> bool {
        self.state(now_ms) != ParkState::Awake
    }

    /// Whether the consolidation controller keeps the node in its active set.
    #[inline]
    pub fn in_active_set(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Put the node in or out of the active set.
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// Idle long enough to be parked.
    pub fn parkable(&self) -> bool {
        self.parkable.load(Ordering::Relaxed)
    }

    /// Mark the node parkable or not.
    pub fn set_parkable(&self, parkable: bool) {
        self.parkable.store(parkable, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_power_energy_and_park_states() {
        let p = NodePower::default();
        assert_eq!(p.watts(), None);
        assert!(p.in_active_set());
        p.record(300.0, 1.5, PowerSource::Measured);
        p.record(310.0, 2.0, PowerSource::Estimated);
        assert_eq!(p.watts(), Some((310.0, PowerSource::Estimated)));
        assert_eq!(p.joules(), 3.5);
        assert_eq!(p.state(0), ParkState::Awake);
        p.set_parked();
        assert!(p.is_asleep(0));
        p.set_waking(1000);
        assert_eq!(p.state(999), ParkState::Waking);
        assert_eq!(p.state(1000), ParkState::Awake);
    }
}
