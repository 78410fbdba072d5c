//! Node health: active checks, passive outlier ejection, draining, slow
//! start and panic mode.
//!
//! Semantics follow Envoy (`health_check`, `outlier_detection`,
//! `healthy_panic_threshold`, `slow_start_config`) and HAProxy (`inter`,
//! `rise`, `fall`, `init-state`); `config.rs` lists the defaults and their
//! sources.
//!
//! The state of a node lives in [`NodeHealth`], a field of the node's
//! [`crate::fleet::NodeLoad`], so it survives config reloads like the load
//! counters. The request path only reads a few relaxed atomics
//! ([`NodeHealth::is_available`]) and reports outcomes
//! ([`NodeHealth::record_success`], [`NodeHealth::record_failure`]); the
//! active checker ([`spawn_checks`]) runs one task per node.
//!
//! Timestamps are milliseconds of a process-wide monotonic clock,
//! [`now_ms`].
//!
//! Wiring (proxy):
//! - building a table: `node.load.health.set_label("pool/node")`; per pool
//!   with `[pools.health]`, `spawn_checks(pool, cfg)` and keep the
//!   [`CheckHandle`]; on reload spawn the new checks first, then drop the
//!   old handle (dropping it last-owner resets nodes to "up").
//! - eligibility: `health.is_available(now)`, unless
//!   [`in_panic`]`(nodes, panic_threshold, now)`, then any node not
//!   draining; weigh picks by `health.slow_start_factor(now, window)`.
//! - outcome of an attempt: `record_success()` or `record_failure(kind,
//!   &outlier_cfg, &pool.nodes, now)`.

mod active;
mod config;
mod node;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use active::{spawn_checks, CheckHandle};
pub use config::{
    validate_panic_threshold, validate_slow_start, ActiveCheckConfig, InitialState, OutlierConfig,
    CHECK_FAMILIES, DEFAULT_PANIC_THRESHOLD,
};
pub use node::{
    CheckResult, FailureKind, HealthState, NodeHealth, NodeStatus, SLOW_START_MIN_FACTOR,
};

use crate::fleet::Node;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the process-wide health epoch (the first call).
/// Monotonic; the clock every health timestamp uses.
#[inline]
pub fn now_ms() -> u64 {
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Panic mode (Envoy's `healthy_panic_threshold`): true when fewer than
/// `threshold_percent` of the pool's nodes are available. The proxy then
/// routes across all nodes, ignoring health, rather than overload the few
/// left. Draining nodes are left out of the count (and should stay out of
/// routing even in panic): they were taken out on purpose. A threshold of 0
/// disables panic mode.
pub fn in_panic(nodes: &[Arc<Node>], threshold_percent: u32, now_ms: u64) -> bool {
    if threshold_percent == 0 {
        return false;
    }
    let (mut total, mut available) = (0u64, 0u64);
    for node in nodes {
        let health = &node.load.health;
        if health.is_draining() {
            continue;
        }
        total += 1;
        if health.is_available(now_ms) {
            available += 1;
        }
    }
    total > 0 && available * 100 < u64::from(threshold_percent) * total
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::balance::testing::nodes as pool;

    #[test]
    fn clock_is_monotonic() {
        let a = now_ms();
        let b = now_ms();
        assert!(b >= a);
    }

    #[test]
    fn panic_threshold() {
        let nodes = pool(4);
        let t = 1_000;
        assert!(!in_panic(&nodes, 50, t));
        nodes[0].load.health.set_active(false, "test", t);
        assert!(!in_panic(&nodes, 50, t), "3 of 4 available");
        nodes[1].load.health.set_active(false, "test", t);
        assert!(!in_panic(&nodes, 50, t), "2 of 4 is exactly 50%");
        nodes[2].load.health.set_active(false, "test", t);
        assert!(in_panic(&nodes, 50, t), "1 of 4 is below 50%");
        assert!(!in_panic(&nodes, 0, t), "0 disables panic mode");
        assert!(in_panic(&nodes, 100, t));
        // A draining node is out of the count: 1 of 3.
        nodes[3].load.health.set_draining(true);
        assert!(in_panic(&nodes, 50, t));
        nodes[3].load.health.set_draining(false);
        // Every node draining: no panic (nothing to spread over).
        for n in &nodes {
            n.load.health.set_draining(true);
        }
        assert!(!in_panic(&nodes, 50, t));
        assert!(!in_panic(&[], 50, t));
    }
}
