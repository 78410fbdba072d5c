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
//!   [`in_panic`]`(nodes, panic_threshold, now, window)`, then also the
//!   nodes [`usable_in_panic`]; weigh picks by
//!   `health.slow_start_factor(now, window)`.
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
    at_ms(Instant::now())
}

/// `t` as [`now_ms`] counts (for a caller that read the clock already).
pub fn at_ms(t: Instant) -> u64 {
    let ms = t
        .saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Panic mode (Envoy's `healthy_panic_threshold`): true when fewer than
/// `threshold_percent` of the pool's nodes are available. The proxy then
/// also routes to the nodes that are out only on a health signal that may be
/// wrong ([`usable_in_panic`]), rather than overload the few left.
///
/// Nodes known not to serve are left out of the count, as are draining
/// ones: a node whose connections are refused, or whose last requests
/// failed, within `window_ms` ([`NodeHealth::failed_recently`]; the pool's
/// base ejection time). Their absence is a fact, not a signal to doubt, so
/// two dead nodes of three do not put the third's pool in panic. A
/// threshold of 0 disables panic mode.
pub fn in_panic(nodes: &[Arc<Node>], threshold_percent: u32, now_ms: u64, window_ms: u64) -> bool {
    if threshold_percent == 0 {
        return false;
    }
    let (mut total, mut available) = (0u64, 0u64);
    for node in nodes {
        let health = &node.load.health;
        if health.is_draining() {
            continue;
        }
        if health.is_available(now_ms) {
            available += 1;
        } else if health.failed_recently(now_ms, window_ms) {
            continue;
        }
        total += 1;
    }
    total > 0 && available * 100 < u64::from(threshold_percent) * total
}

/// Whether panic mode may route to a node that is not available: not
/// draining, and not known to fail ([`NodeHealth::failed_recently`] within
/// `window_ms`). Envoy would use every host; a node that refuses
/// connections or just failed requests would only cost retries.
#[inline]
pub fn usable_in_panic(health: &NodeHealth, now_ms: u64, window_ms: u64) -> bool {
    !health.is_draining() && !health.failed_recently(now_ms, window_ms)
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

    const W: u64 = 30_000;

    #[test]
    fn panic_threshold() {
        let nodes = pool(4);
        let t = 1_000;
        assert!(!in_panic(&nodes, 50, t, W));
        nodes[0].load.health.set_active(false, "test", t);
        assert!(!in_panic(&nodes, 50, t, W), "3 of 4 available");
        nodes[1].load.health.set_active(false, "test", t);
        assert!(!in_panic(&nodes, 50, t, W), "2 of 4 is exactly 50%");
        nodes[2].load.health.set_active(false, "test", t);
        assert!(in_panic(&nodes, 50, t, W), "1 of 4 is below 50%");
        assert!(!in_panic(&nodes, 0, t, W), "0 disables panic mode");
        assert!(in_panic(&nodes, 100, t, W));
        // A draining node is out of the count: 1 of 3.
        nodes[3].load.health.set_draining(true);
        assert!(in_panic(&nodes, 50, t, W));
        nodes[3].load.health.set_draining(false);
        // Every node draining: no panic (nothing to spread over).
        for n in &nodes {
            n.load.health.set_draining(true);
        }
        assert!(!in_panic(&nodes, 50, t, W));
        assert!(!in_panic(&[], 50, t, W));
    }

    #[test]
    fn dead_nodes_neither_cause_panic_nor_get_its_traffic() {
        let nodes = pool(3);
        let t = 1_000;
        let cfg = OutlierConfig::default();
        // Node 0 refuses connections (seen by a check), node 1 is down by
        // checks that time out (maybe a wrong signal), node 2 serves.
        nodes[0].load.health.set_active(false, "refused", t);
        nodes[0].load.health.record_refused(t);
        nodes[1].load.health.set_active(false, "timeouts", t);
        assert!(
            !in_panic(&nodes, 50, t, W),
            "1 of the 2 not known dead is available: 50 %"
        );
        assert!(!usable_in_panic(&nodes[0].load.health, t, W));
        assert!(usable_in_panic(&nodes[1].load.health, t, W));
        // Node 1 fails a real request: now known dead too; no panic.
        nodes[1]
            .load
            .health
            .record_failure(FailureKind::Timeout, &cfg, &nodes, t + 10);
        assert!(!usable_in_panic(&nodes[1].load.health, t + 10, W));
        assert!(!in_panic(&nodes, 50, t + 10, W));
        // After the window the failures are old news: signals again.
        let later = t + 10 + W;
        assert!(usable_in_panic(&nodes[1].load.health, later, W));
        assert!(in_panic(&nodes, 50, later, W), "1 of 3 available");
        // A success clears the mark at once.
        nodes[0].load.health.record_refused(later);
        assert!(!usable_in_panic(&nodes[0].load.health, later, W));
        nodes[0].load.health.record_success();
        assert!(usable_in_panic(&nodes[0].load.health, later, W));
    }
}
