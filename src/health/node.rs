//! [`NodeHealth`]: the health state of one node.
//!
//! Three independent reasons keep a node out of rotation, each one atomic:
//! active checks say it is down, outlier detection ejected it (until a
//! deadline), or an operator is draining it. [`NodeHealth::is_available`]
//! reads the three with relaxed loads. Reasons and timestamps for the
//! dashboard sit behind a mutex that is only taken on transitions and by
//! [`NodeHealth::status`]. Each transition is logged once, by the caller
//! that made it, under the node's label (`pool/node`, set by
//! [`NodeHealth::set_label`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use super::config::OutlierConfig;
use super::now_ms;
use crate::fleet::Node;

/// Slow start never thins a node below this share of its traffic (Envoy's
/// `min_weight_percent` default, 10 %).
pub const SLOW_START_MIN_FACTOR: f64 = 0.1;

/// Ejection decisions of all pools, serialized so that the
/// `max_ejection_percent` count and the ejection itself are one step. Only
/// taken when a node crosses its failure threshold.
static EJECT_LOCK: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a request to a node failed (passive outlier detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The TCP connection could not be established.
    Connect,
    /// No response (headers or next chunk) in time.
    Timeout,
    /// The node answered with a 5xx status.
    Status5xx,
    /// The connection or stream broke mid-response.
    StreamBroken,
}

impl FailureKind {
    const ALL: [FailureKind; 4] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Status5xx,
        FailureKind::StreamBroken,
    ];

    /// Short name used in reasons and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Status5xx => "5xx",
            FailureKind::StreamBroken => "broken stream",
        }
    }

    fn bit(self) -> u8 {
        match self {
            FailureKind::Connect => 1,
            FailureKind::Timeout => 2,
            FailureKind::Status5xx => 4,
            FailureKind::StreamBroken => 8,
        }
    }
}

/// What the dashboard shows as a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Routable.
    Healthy,
    /// Active checks say it is down.
    Unhealthy,
    /// Ejected by outlier detection for a while.
    Ejected,
    /// Taken out by an operator (takes precedence over the others).
    Draining,
}

/// The last active check of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// When it started ([`now_ms`] clock).
    pub at_ms: u64,
    /// Whether it counted as a success.
    pub ok: bool,
    /// How long it took.
    pub latency_ms: u64,
    /// `status 200`, `timeout after 1s`, `connect error: ...`.
    pub detail: String,
}

/// A node's health for the dashboard and admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The effective state.
    pub state: HealthState,
    /// Why it is in that state.
    pub reason: String,
    /// Since when ([`now_ms`] clock).
    pub since_ms: u64,
    /// Times the node was ejected since the gateway started.
    pub ejections: u32,
    /// Failed requests in a row (passive).
    pub consecutive_failures: u32,
    /// When the current ejection ends, if ejected.
    pub ejected_until_ms: Option<u64>,
    /// The last active check, if checks run.
    pub last_check: Option<CheckResult>,
}

#[derive(Debug, Clone, Default)]
struct Transition {
    reason: String,
    since_ms: u64,
}

impl Transition {
    fn new(reason: impl Into<String>, since_ms: u64) -> Transition {
        Transition {
            reason: reason.into(),
            since_ms,
        }
    }
}

/// Cold state: written on transitions only.
#[derive(Debug, Default)]
struct Info {
    label: String,
    /// Why the node last became available.
    up: Transition,
    /// Why active checks last marked it down.
    down: Transition,
    /// Why it was last ejected.
    ejected: Transition,
    /// When draining started.
    draining_since_ms: u64,
    last_check: Option<CheckResult>,
}

impl Info {
    fn label(&self) -> &str {
        if self.label.is_empty() {
            "?"
        } else {
            &self.label
        }
    }
}

/// Health state of one node, shared across config reloads (it lives in the
/// node's [`crate::fleet::NodeLoad`]).
#[derive(Debug)]
pub struct NodeHealth {
    /// Active checks say up (true when none are configured).
    active_up: AtomicBool,
    /// An operator is draining the node.
    draining: AtomicBool,
    /// End of the current ejection; 0 when not ejected. A past value is an
    /// ejection that ended but nobody noticed yet.
    ejected_until_ms: AtomicU64,
    /// When the node last became available (slow start).
    available_since_ms: AtomicU64,
    /// Failed requests in a row.
    consecutive_failures: AtomicU32,
    /// When the node last failed real traffic or refused a connection
    /// (active checks included), if nothing succeeded since; 0 otherwise.
    /// Panic mode leaves such a node alone for a while: its failure is a
    /// fact, not a possibly wrong health signal.
    failed_at_ms: AtomicU64,
    /// That failure was a refused connection (a passing check disproves it).
    refused: AtomicBool,
    /// [`FailureKind`] bits seen since the count was last reset.
    failure_kinds: AtomicU8,
    /// Ejections since start.
    ejections: AtomicU32,
    /// Envoy's ejection-time multiplier (written under `EJECT_LOCK`).
    multiplier: AtomicU32,
    /// When the last ejection ended or ends (written under `EJECT_LOCK`);
    /// the multiplier decays from there.
    last_ejection_end_ms: AtomicU64,
    /// Owner of the active checks: 0 never checked, else the id of the
    /// `spawn_checks` call whose tasks may write the active state.
    checker: AtomicU64,
    info: Mutex<Info>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        let now = now_ms();
        NodeHealth {
            active_up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            available_since_ms: AtomicU64::new(now),
            consecutive_failures: AtomicU32::new(0),
            failed_at_ms: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            failure_kinds: AtomicU8::new(0),
            ejections: AtomicU32::new(0),
            multiplier: AtomicU32::new(0),
            last_ejection_end_ms: AtomicU64::new(0),
            checker: AtomicU64::new(0),
            info: Mutex::new(Info {
                up: Transition::new("started", now),
                ..Info::default()
            }),
        }
    }
}

impl NodeHealth {
    /// Name the node in logs (`pool/node`). Call when building a config;
    /// the checker also sets it.
    pub fn set_label(&self, label: &str) {
        let mut info = lock(&self.info);
        if info.label != label {
            info.label = label.to_string();
        }
    }

    // ---- hot path ----------------------------------------------------

    /// True when the node may take requests: active checks say up (or none
    /// run), not ejected (an ejection whose time has passed counts as over,
    /// and the first caller to notice records the return), not draining.
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        if self.draining.load(Relaxed) || !self.active_up.load(Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms < until {
            return false;
        }
        self.end_ejection(until);
        true
    }

    /// A request to the node succeeded: the failure streak ends.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
            self.failure_kinds.store(0, Relaxed);
        }
        if self.failed_at_ms.load(Relaxed) != 0 {
            self.failed_at_ms.store(0, Relaxed);
        }
    }

    /// A connection to the node was refused (by an active check; request
    /// attempts report it through [`NodeHealth::record_failure`]).
    pub fn record_refused(&self, now_ms: u64) {
        self.refused.store(true, Relaxed);
        self.failed_at_ms.store(now_ms.max(1), Relaxed);
    }

    /// An active check passed: a refused connection is no longer the news
    /// (failed requests still are: a node can answer checks and fail work).
    pub fn record_check_passed(&self) {
        if self.refused.load(Relaxed) && self.refused.swap(false, Relaxed) {
            self.failed_at_ms.store(0, Relaxed);
        }
    }

    /// True when the node is known not to serve: its last request failed,
    /// or a connection to it was refused, less than `window_ms` ago, and
    /// nothing succeeded since. Panic mode never routes to such a node.
    #[inline]
    pub fn failed_recently(&self, now_ms: u64, window_ms: u64) -> bool {
        let at = self.failed_at_ms.load(Relaxed);
        at != 0 && now_ms.saturating_sub(at) < window_ms
    }

    /// A request to the node failed. When this makes `cfg.consecutive_failures`
    /// in a row, the node is ejected for `base_ejection_time × n` (n grows
    /// with each ejection up to `max_ejection_time` and decays by one per
    /// `base_ejection_time` spent un-ejected), unless more than
    /// `max_ejection_percent` of `pool` would then be ejected (one node may
    /// always be). A refused ejection is tried again after every further
    /// `consecutive_failures` failures. Failures while ejected (requests
    /// that were already in flight) do not count. Safe under concurrent
    /// callers: each crossing ejects at most once. Returns true if this
    /// call ejected the node.
    pub fn record_failure(
        &self,
        kind: FailureKind,
        cfg: &OutlierConfig,
        pool: &[Arc<Node>],
        now_ms: u64,
    ) -> bool {
        self.refused.store(kind == FailureKind::Connect, Relaxed);
        self.failed_at_ms.store(now_ms.max(1), Relaxed);
        if !cfg.enabled {
            return false;
        }
        let until = self.ejected_until_ms.load(Relaxed);
        if until != 0 {
            if now_ms < until {
                return false;
            }
            self.end_ejection(until);
        }
        if self.failure_kinds.load(Relaxed) & kind.bit() == 0 {
            self.failure_kinds.fetch_or(kind.bit(), Relaxed);
        }
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let threshold = cfg.consecutive_failures.max(1);
        if n < threshold || !n.is_multiple_of(threshold) {
            return false;
        }
        self.try_eject(n, cfg, pool, now_ms)
    }

    #[cold]
    fn try_eject(&self, n: u32, cfg: &OutlierConfig, pool: &[Arc<Node>], now_ms: u64) -> bool {
        let _decide = lock(&EJECT_LOCK);
        let until = self.ejected_until_ms.load(Relaxed);
        if until != 0 {
            if now_ms < until {
                return false; // another caller ejected it meanwhile
            }
            self.end_ejection(until);
        }
        let others_ejected = pool
            .iter()
            .filter(|node| !std::ptr::eq(&node.load.health, self))
            .filter(|node| node.load.health.is_ejected(now_ms))
            .count() as u64;
        let total = (pool.len() as u64).max(1);
        let cap = u64::from(cfg.max_ejection_percent);
        if others_ejected > 0 && (others_ejected + 1) * 100 > cap * total {
            let info = lock(&self.info);
            tracing::debug!(
                node = info.label(),
                failures = n,
                ejected = others_ejected,
                max_ejection_percent = cfg.max_ejection_percent,
                "not ejecting: too many nodes of the pool are ejected"
            );
            return false;
        }

        let base = (cfg.base_ejection_time.as_millis() as u64).max(1);
        let max = (cfg.max_ejection_time.as_millis() as u64).max(base);
        let max_multiplier = u32::try_from(max.div_ceil(base)).unwrap_or(u32::MAX);
        let healthy_for = now_ms.saturating_sub(self.last_ejection_end_ms.load(Relaxed));
        let decay = u32::try_from(healthy_for / base).unwrap_or(u32::MAX);
        let multiplier = self
            .multiplier
            .load(Relaxed)
            .saturating_sub(decay)
            .saturating_add(1)
            .min(max_multiplier);
        let ejection_ms = base.saturating_mul(u64::from(multiplier)).min(max);
        let until = now_ms.saturating_add(ejection_ms).max(1);
        self.multiplier.store(multiplier, Relaxed);
        self.last_ejection_end_ms.store(until, Relaxed);
        self.ejected_until_ms.store(until, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        let kinds = self.failure_kinds.swap(0, Relaxed);
        let ejections = self.ejections.fetch_add(1, Relaxed) + 1;

        let reason = outlier_reason(n, kinds);
        let mut info = lock(&self.info);
        if info.label.is_empty() {
            if let Some(node) = pool.iter().find(|nd| std::ptr::eq(&nd.load.health, self)) {
                info.label = node.name.clone();
            }
        }
        tracing::warn!(
            node = info.label(),
            reason = %reason,
            ejection_ms,
            ejections,
            "node ejected"
        );
        info.ejected = Transition::new(reason, now_ms);
        true
    }

    /// Record the end of ejection `until` once (the caller that wins).
    #[cold]
    fn end_ejection(&self, until: u64) {
        if self
            .ejected_until_ms
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        self.consecutive_failures.store(0, Relaxed);
        self.failure_kinds.store(0, Relaxed);
        self.available_since_ms.store(until, Relaxed);
        let mut info = lock(&self.info);
        info.up = Transition::new("returned after ejection", until);
        tracing::info!(node = info.label(), "node returned after ejection");
    }

    /// Whether outlier detection holds the node out now.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && now_ms < until
    }

    /// End an ejection early (passing active checks); `reason` is logged
    /// and shown. The node ramps up again under slow start.
    pub fn uneject(&self, reason: &str, now_ms: u64) {
        {
            let _decide = lock(&EJECT_LOCK);
            if self.ejected_until_ms.swap(0, Relaxed) == 0 {
                return;
            }
            self.last_ejection_end_ms.store(now_ms, Relaxed);
        }
        self.consecutive_failures.store(0, Relaxed);
        self.failure_kinds.store(0, Relaxed);
        self.failed_at_ms.store(0, Relaxed);
        self.available_since_ms.store(now_ms, Relaxed);
        let mut info = lock(&self.info);
        info.up = Transition::new(reason, now_ms);
        tracing::info!(node = info.label(), reason, "node returned after ejection");
    }

    // ---- draining ----------------------------------------------------

    /// Start or stop draining: a draining node takes no new requests.
    pub fn set_draining(&self, on: bool) {
        if self.draining.swap(on, Relaxed) == on {
            return;
        }
        let now = now_ms();
        let mut info = lock(&self.info);
        if on {
            info.draining_since_ms = now;
            tracing::info!(node = info.label(), "node draining");
        } else {
            info.up = Transition::new("draining ended", now);
            tracing::info!(node = info.label(), "node no longer draining");
        }
    }

    /// True while draining.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    // ---- active checks -----------------------------------------------

    /// Set the active-check state (the checker applies the thresholds).
    /// Returns true if the state changed; the change is logged. Coming up
    /// also ends an outlier ejection (Envoy's
    /// `successful_active_health_check_uneject_host`, on the transition
    /// only): a node that was down and passes `healthy_threshold` checks in
    /// a row is back, as in HAProxy, instead of waiting out an ejection that
    /// its failures while down made long.
    pub fn set_active(&self, up: bool, reason: &str, now_ms: u64) -> bool {
        if self.active_up.swap(up, Relaxed) == up {
            return false;
        }
        if up && self.ejected_until_ms.load(Relaxed) != 0 {
            let _decide = lock(&EJECT_LOCK);
            if self.ejected_until_ms.swap(0, Relaxed) != 0 {
                self.last_ejection_end_ms.store(now_ms, Relaxed);
            }
        }
        let mut info = lock(&self.info);
        if up {
            self.consecutive_failures.store(0, Relaxed);
            self.failure_kinds.store(0, Relaxed);
            self.failed_at_ms.store(0, Relaxed);
            self.available_since_ms.store(now_ms, Relaxed);
            info.up = Transition::new(reason, now_ms);
            tracing::info!(node = info.label(), reason, "node up");
        } else {
            info.down = Transition::new(reason, now_ms);
            tracing::warn!(node = info.label(), reason, "node down");
        }
        true
    }

    /// What active checks last said (true when none run).
    pub fn active_up(&self) -> bool {
        self.active_up.load(Relaxed)
    }

    /// Record the result of an active check for the dashboard.
    pub fn record_check(&self, result: CheckResult) {
        lock(&self.info).last_check = Some(result);
    }

    /// Make `owner` the only checker allowed to write the active state.
    /// Returns true if no checker ever ran for this node (so the initial
    /// state applies).
    pub(super) fn claim_checks(&self, owner: u64) -> bool {
        self.checker.swap(owner, Relaxed) == 0
    }

    /// Whether `owner` still owns the active checks.
    pub(super) fn checks_owned_by(&self, owner: u64) -> bool {
        self.checker.load(Relaxed) == owner
    }

    /// Checker `owner` stopped: if no other took over, the node is no
    /// longer actively checked and counts as up.
    pub(super) fn release_checks(&self, owner: u64) {
        if self
            .checker
            .compare_exchange(owner, u64::MAX, Relaxed, Relaxed)
            .is_ok()
        {
            self.set_active(true, "active checks stopped", now_ms());
            lock(&self.info).last_check = None;
        }
    }

    // ---- slow start and status ---------------------------------------

    /// Share of its normal traffic the node should get while warming up
    /// after it became available (start, return from ejection, up from
    /// active checks): linear over `window` (Envoy's aggression 1.0), never
    /// below [`SLOW_START_MIN_FACTOR`]; 1.0 when `window` is zero or over.
    /// Nodes present when the gateway starts ramp too, all alike; as in
    /// Envoy, thinning should be relative (e.g. to the largest factor among
    /// the candidates) so that equal factors change nothing.
    #[inline]
    pub fn slow_start_factor(&self, now_ms: u64, window: Duration) -> f64 {
        let window_ms = window.as_millis() as u64;
        if window_ms == 0 {
            return 1.0;
        }
        let since = self.available_since_ms.load(Relaxed);
        let elapsed = now_ms.saturating_sub(since);
        if elapsed >= window_ms {
            return 1.0;
        }
        (elapsed as f64 / window_ms as f64).max(SLOW_START_MIN_FACTOR)
    }

    /// Times the node was ejected since the gateway started.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// Failed requests in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// The node's state, why, and since when.
    pub fn status(&self, now_ms: u64) -> NodeStatus {
        let until = self.ejected_until_ms.load(Relaxed);
        if until != 0 && now_ms >= until {
            self.end_ejection(until);
        }
        let ejected_until = self.ejected_until_ms.load(Relaxed);
        let info = lock(&self.info);
        let (state, reason, since_ms) = if self.is_draining() {
            (
                HealthState::Draining,
                "draining".to_string(),
                info.draining_since_ms,
            )
        } else if ejected_until != 0 {
            (
                HealthState::Ejected,
                info.ejected.reason.clone(),
                info.ejected.since_ms,
            )
        } else if !self.active_up() {
            (
                HealthState::Unhealthy,
                info.down.reason.clone(),
                info.down.since_ms,
            )
        } else {
            (
                HealthState::Healthy,
                info.up.reason.clone(),
                info.up.since_ms,
            )
        };
        NodeStatus {
            state,
            reason,
            since_ms,
            ejections: self.ejections(),
            consecutive_failures: self.consecutive_failures(),
            ejected_until_ms: (ejected_until != 0).then_some(ejected_until),
            last_check: info.last_check.clone(),
        }
    }
}

fn outlier_reason(n: u32, kinds: u8) -> String {
    let seen: Vec<&str> = FailureKind::ALL
        .iter()
        .filter(|k| kinds & k.bit() != 0)
        .map(|k| k.as_str())
        .collect();
    match seen.as_slice() {
        [one] => format!("outlier: {n} consecutive {one} failures"),
        [] => format!("outlier: {n} consecutive failures"),
        many => format!("outlier: {n} consecutive failures ({})", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::balance::testing::nodes as pool;

    fn outlier(base_s: u64, max_s: u64) -> OutlierConfig {
        OutlierConfig {
            base_ejection_time: Duration::from_secs(base_s),
            max_ejection_time: Duration::from_secs(max_s),
            ..OutlierConfig::default()
        }
    }

    /// Fail `node` until it is ejected (or `limit` failures); the count.
    fn fail(node: &Node, pool: &[Arc<Node>], cfg: &OutlierConfig, now: u64, limit: u32) -> u32 {
        for i in 1..=limit {
            if node
                .load
                .health
                .record_failure(FailureKind::Connect, cfg, pool, now)
            {
                return i;
            }
        }
        0
    }

    #[test]
    fn ejects_after_consecutive_failures() {
        let p = pool(4);
        let h = &p[0].load.health;
        let cfg = OutlierConfig::default();
        let t = 1_000;
        for _ in 0..4 {
            assert!(!h.record_failure(FailureKind::Connect, &cfg, &p, t));
        }
        assert!(h.is_available(t));
        assert_eq!(h.consecutive_failures(), 4);
        assert!(h.record_failure(FailureKind::Connect, &cfg, &p, t));
        assert!(!h.is_available(t));
        assert_eq!(h.ejections(), 1);
        let s = h.status(t);
        assert_eq!(s.state, HealthState::Ejected);
        assert_eq!(s.reason, "outlier: 5 consecutive connect failures");
        assert_eq!(s.since_ms, t);
        assert_eq!(s.ejected_until_ms, Some(t + 30_000));
        assert_eq!(s.consecutive_failures, 0);
        // Failures of requests still in flight do not count while ejected.
        assert!(!h.record_failure(FailureKind::Timeout, &cfg, &p, t + 1));
        assert_eq!(h.consecutive_failures(), 0);
        // Back after 30 s (base × 1).
        assert!(!h.is_available(t + 29_999));
        assert!(h.is_available(t + 30_000));
        let s = h.status(t + 30_001);
        assert_eq!(s.state, HealthState::Healthy);
        assert_eq!(s.reason, "returned after ejection");
        assert_eq!(s.since_ms, t + 30_000);
        assert_eq!(s.ejected_until_ms, None);
    }

    #[test]
    fn success_resets_the_count() {
        let p = pool(2);
        let h = &p[0].load.health;
        let cfg = OutlierConfig::default();
        for _ in 0..4 {
            assert!(!h.record_failure(FailureKind::Status5xx, &cfg, &p, 0));
        }
        h.record_success();
        assert_eq!(h.consecutive_failures(), 0);
        for _ in 0..4 {
            assert!(!h.record_failure(FailureKind::Status5xx, &cfg, &p, 0));
        }
        assert!(h.is_available(0));
        assert!(h.record_failure(FailureKind::StreamBroken, &cfg, &p, 0));
        assert_eq!(
            h.status(0).reason,
            "outlier: 5 consecutive failures (5xx, broken stream)"
        );
    }

    #[test]
    fn disabled_outlier_detection_never_ejects() {
        let p = pool(1);
        let cfg = OutlierConfig {
            enabled: false,
            ..OutlierConfig::default()
        };
        assert_eq!(fail(&p[0], &p, &cfg, 0, 100), 0);
        assert!(p[0].load.health.is_available(0));
    }

    #[test]
    fn ejection_time_grows_caps_and_decays() {
        let p = pool(2);
        let h = &p[0].load.health;
        let cfg = outlier(10, 35);
        let mut t = 1_000;
        // Each immediate re-ejection lasts one base longer: 10, 20, 30, then
        // capped at max 35.
        for expected in [10_000, 20_000, 30_000, 35_000, 35_000] {
            assert_eq!(fail(&p[0], &p, &cfg, t, 5), 5);
            assert_eq!(h.status(t).ejected_until_ms, Some(t + expected));
            assert!(!h.is_available(t + expected - 1));
            t += expected;
            assert!(h.is_available(t), "returns when the ejection is over");
        }
        assert_eq!(h.ejections(), 5);
        // Healthy for 25 s = two bases: the multiplier (4, capped) drops by
        // two, and the next ejection is (4 - 2 + 1) × 10 s.
        t += 25_000;
        assert_eq!(fail(&p[0], &p, &cfg, t, 5), 5);
        assert_eq!(h.status(t).ejected_until_ms, Some(t + 30_000));
        t += 30_000;
        // Healthy for long: back to one base.
        t += 3_600_000;
        assert_eq!(fail(&p[0], &p, &cfg, t, 5), 5);
        assert_eq!(h.status(t).ejected_until_ms, Some(t + 10_000));
    }

    #[test]
    fn max_ejection_percent_with_at_least_one() {
        let p = pool(4);
        let cfg = OutlierConfig::default(); // 50 %
        assert_eq!(fail(&p[0], &p, &cfg, 0, 5), 5);
        assert_eq!(fail(&p[1], &p, &cfg, 0, 5), 5, "2 of 4 is 50 %");
        assert_eq!(fail(&p[2], &p, &cfg, 0, 20), 0, "3 of 4 is over 50 %");
        assert!(p[2].load.health.is_available(0));
        assert_eq!(p[2].load.health.consecutive_failures(), 20);

        // Once the others return, the refused node is ejected at its next
        // multiple of the threshold.
        let t = 30_000;
        assert!(p[0].load.health.is_available(t));
        assert!(p[1].load.health.is_available(t));
        assert_eq!(fail(&p[2], &p, &cfg, t, 5), 5);
        assert!(!p[2].load.health.is_available(t));

        // A tiny percentage still lets one node go.
        let p = pool(4);
        let cfg = OutlierConfig {
            max_ejection_percent: 0,
            ..OutlierConfig::default()
        };
        assert_eq!(fail(&p[0], &p, &cfg, 0, 5), 5);
        assert_eq!(fail(&p[1], &p, &cfg, 0, 50), 0);

        // A pool of one can eject its only node.
        let p = pool(1);
        assert_eq!(fail(&p[0], &p, &cfg, 0, 5), 5);
    }

    #[test]
    fn concurrent_failures_eject_exactly_once() {
        for _ in 0..20 {
            let p = pool(2);
            let cfg = outlier(3600, 3600);
            let ejected = AtomicU32::new(0);
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..1_000 {
                            if p[0]
                                .load
                                .health
                                .record_failure(FailureKind::Status5xx, &cfg, &p, 5)
                            {
                                ejected.fetch_add(1, Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(ejected.load(Relaxed), 1);
            assert_eq!(p[0].load.health.ejections(), 1);
            assert!(!p[0].load.health.is_available(5));
        }
    }

    #[test]
    fn concurrent_return_is_recorded_once() {
        let p = pool(1);
        let h = &p[0].load.health;
        let cfg = outlier(1, 1);
        assert_eq!(fail(&p[0], &p, &cfg, 0, 5), 5);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| assert!(h.is_available(1_000)));
            }
        });
        assert_eq!(h.status(1_000).reason, "returned after ejection");
        assert_eq!(h.ejections(), 1);
    }

    #[test]
    fn slow_start_ramps_linearly_from_ten_percent() {
        let h = NodeHealth::default();
        let w = Duration::from_secs(10);
        h.set_active(false, "down", 0);
        h.set_active(true, "up", 1_000);
        assert_eq!(h.slow_start_factor(1_000, w), 0.1);
        assert_eq!(h.slow_start_factor(1_500, w), 0.1, "floor");
        assert!((h.slow_start_factor(3_000, w) - 0.2).abs() < 1e-9);
        assert!((h.slow_start_factor(6_000, w) - 0.5).abs() < 1e-9);
        assert!((h.slow_start_factor(10_999, w) - 0.9999).abs() < 1e-9);
        assert_eq!(h.slow_start_factor(11_000, w), 1.0);
        assert_eq!(h.slow_start_factor(1_000, Duration::ZERO), 1.0);

        // Returning from an ejection restarts the ramp at the ejection's end.
        let p = pool(1);
        let h = &p[0].load.health;
        let cfg = outlier(30, 300);
        assert_eq!(fail(&p[0], &p, &cfg, 100_000, 5), 5);
        assert!(h.is_available(200_000));
        assert!((h.slow_start_factor(135_000, w) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn coming_up_by_checks_ends_an_ejection() {
        let p = pool(2);
        let h = &p[0].load.health;
        let cfg = outlier(30, 300);
        assert_eq!(fail(&p[0], &p, &cfg, 1_000, 5), 5);
        assert!(h.failed_recently(1_000, 30_000));
        // Checks see it down, later up: back at once, not after 30 s.
        h.set_active(false, "active check: 3 consecutive failures", 1_100);
        assert!(h.set_active(true, "active check: 2 consecutive successes", 2_000));
        assert!(h.is_available(2_000));
        assert!(!h.failed_recently(2_000, 30_000));
        let s = h.status(2_000);
        assert_eq!(s.state, HealthState::Healthy);
        assert_eq!(s.ejected_until_ms, None);
        // Slow start counts from the return.
        assert_eq!(h.slow_start_factor(2_000, Duration::from_secs(10)), 0.1);
    }

    #[test]
    fn uneject_ends_an_ejection_once() {
        let p = pool(2);
        let h = &p[0].load.health;
        h.uneject("nothing to end", 10);
        assert_eq!(h.status(10).reason, "started");
        assert_eq!(fail(&p[0], &p, &outlier(30, 300), 1_000, 5), 5);
        h.uneject("checks passed", 1_500);
        assert!(h.is_available(1_500));
        let s = h.status(1_500);
        assert_eq!(
            (s.state, s.reason.as_str()),
            (HealthState::Healthy, "checks passed")
        );
        assert_eq!(s.ejections, 1);
    }

    #[test]
    fn failures_mark_the_node_until_a_success() {
        let p = pool(2);
        let h = &p[0].load.health;
        let disabled = OutlierConfig {
            enabled: false,
            ..OutlierConfig::default()
        };
        assert!(!h.failed_recently(0, 1_000));
        // Even with outlier detection off, a failure is a fact.
        h.record_failure(FailureKind::Connect, &disabled, &p, 5_000);
        assert!(h.failed_recently(5_000, 1_000));
        assert!(h.failed_recently(5_999, 1_000));
        assert!(!h.failed_recently(6_000, 1_000), "window over");
        h.record_failure(FailureKind::Status5xx, &disabled, &p, 7_000);
        h.record_success();
        assert!(!h.failed_recently(7_000, 1_000));
    }

    #[test]
    fn draining() {
        let h = NodeHealth::default();
        h.set_label("p/a");
        assert!(!h.is_draining());
        h.set_draining(true);
        assert!(h.is_draining());
        assert!(!h.is_available(0));
        let s = h.status(0);
        assert_eq!(s.state, HealthState::Draining);
        assert_eq!(s.reason, "draining");
        h.set_draining(false);
        assert!(h.is_available(0));
        assert_eq!(h.status(0).reason, "draining ended");
    }

    #[test]
    fn status_reasons_and_precedence() {
        let p = pool(2);
        let h = &p[0].load.health;
        let s = h.status(0);
        assert_eq!(
            (s.state, s.reason.as_str()),
            (HealthState::Healthy, "started")
        );

        assert!(h.set_active(
            false,
            "active check: 3 consecutive failures (status 503)",
            10
        ));
        assert!(!h.set_active(false, "again", 11), "no transition");
        assert!(!h.is_available(10));
        let s = h.status(20);
        assert_eq!(s.state, HealthState::Unhealthy);
        assert_eq!(
            s.reason,
            "active check: 3 consecutive failures (status 503)"
        );
        assert_eq!(s.since_ms, 10);

        // Ejected while down: ejected shows first; draining above all.
        let cfg = OutlierConfig::default();
        assert_eq!(fail(&p[0], &p, &cfg, 30, 5), 5);
        assert_eq!(h.status(30).state, HealthState::Ejected);
        h.set_draining(true);
        assert_eq!(h.status(30).state, HealthState::Draining);
        h.set_draining(false);
        // Ejection over, still down.
        assert_eq!(h.status(40_000).state, HealthState::Unhealthy);
        assert!(h.set_active(true, "active check: 2 consecutive successes", 40_001));
        let s = h.status(40_002);
        assert_eq!(s.state, HealthState::Healthy);
        assert_eq!(s.reason, "active check: 2 consecutive successes");
        assert_eq!(s.ejections, 1);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["state"], "healthy");
    }
}
