//! Alerts: rules evaluated every second against the telemetry snapshot,
//! with `for` / `resolve_for` and a separate resolve threshold
//! (hysteresis); notifications on their own tasks.
//!
//! An alert is keyed by (rule, target), the target being a node
//! (`pool/node`) or a pool. It fires once when its condition held for
//! `for`, is sent again every `repeat_interval` while it stays active, and
//! resolves once when the value was on the good side of `resolve_threshold`
//! for `resolve_for`. Transitions go to a bounded in-memory history.

mod notify;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use notify::{rfc3339, NotifierConfig, NotifierKind};

use crate::config::duration;
use crate::telemetry::window::Snapshot;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A node is unhealthy or ejected (value 1) — not draining.
    NodeDown,
    /// A pool has fewer available nodes than `threshold`.
    PoolHealthyBelow,
    /// A node's share of its pool deviates from the share its weight gives
    /// it by more than `threshold` (0.5 = 50 %).
    Imbalance,
    /// Max / min of share/expected across a pool's available nodes above
    /// `threshold`.
    ImbalanceRatio,
    /// A node's recent p99 latency above `threshold` seconds.
    LatencyP99,
    /// A node's recent p99 time to first token above `threshold` seconds.
    TtftP99,
    /// A node's recent failed share of attempts above `threshold` (0..1).
    ErrorRate,
    /// A pool sheds more than `threshold` requests per second.
    Shedding,
    /// A pool with `[pools.energy]` uses more than `threshold` joules per
    /// output token over its energy window.
    EnergyPerToken,
    /// A pool's predicted demand needs more nodes than are available
    /// (value: needed − available; threshold 0 = any shortfall).
    NodesShort,
}

impl RuleKind {
    fn below(self) -> bool {
        self == RuleKind::PoolHealthyBelow
    }
}

/// `[[alerts.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Alert name.
    pub name: String,
    /// What it watches.
    pub kind: RuleKind,
    /// Only this pool (absent: all).
    #[serde(default)]
    pub pool: Option<String>,
    /// Fire threshold (ignored by `node_down`).
    #[serde(default)]
    pub threshold: f64,
    /// Resolve threshold (absent: `threshold`): hysteresis.
    #[serde(default)]
    pub resolve_threshold: Option<f64>,
    /// How long the condition must hold before firing.
    #[serde(
        rename = "for",
        default = "default_for",
        deserialize_with = "duration::deserialize"
    )]
    pub for_: Duration,
    /// How long the value must be back before resolving.
    #[serde(default = "default_for", deserialize_with = "duration::deserialize")]
    pub resolve_for: Duration,
    /// Send again this often while active.
    #[serde(default = "default_repeat", deserialize_with = "duration::deserialize")]
    pub repeat_interval: Duration,
    /// `critical`, `warning`, `info`.
    #[serde(default = "default_severity")]
    pub severity: String,
}

fn default_for() -> Duration {
    Duration::from_secs(30)
}
fn default_repeat() -> Duration {
    Duration::from_secs(3600)
}
fn default_severity() -> String {
    "warning".into()
}
fn default_history() -> usize {
    200
}

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Rules (absent: [`default_rules`]; an empty list: none).
    #[serde(default)]
    pub rules: Option<Vec<RuleConfig>>,
    /// Where notifications go (the log always gets them).
    #[serde(default)]
    pub notifiers: Vec<NotifierConfig>,
    /// Alert transitions kept in memory.
    #[serde(default = "default_history")]
    pub history: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules: None,
            notifiers: Vec::new(),
            history: default_history(),
        }
    }
}

/// The rules used when `[alerts]` names none.
pub fn default_rules() -> Vec<RuleConfig> {
    let rule =
        |name: &str, kind, threshold, resolve: Option<f64>, for_s, severity: &str| RuleConfig {
            name: name.into(),
            kind,
            pool: None,
            threshold,
            resolve_threshold: resolve,
            for_: Duration::from_secs(for_s),
            resolve_for: Duration::from_secs(for_s.min(30)),
            repeat_interval: default_repeat(),
            severity: severity.into(),
        };
    vec![
        rule("NodeDown", RuleKind::NodeDown, 0.5, None, 10, "critical"),
        rule(
            "PoolUnavailable",
            RuleKind::PoolHealthyBelow,
            1.0,
            None,
            5,
            "critical",
        ),
        rule(
            "NodeImbalance",
            RuleKind::Imbalance,
            0.5,
            Some(0.3),
            60,
            "warning",
        ),
        rule(
            "NodeErrorRate",
            RuleKind::ErrorRate,
            0.05,
            Some(0.02),
            60,
            "warning",
        ),
        rule(
            "NodeLatencyP99",
            RuleKind::LatencyP99,
            30.0,
            Some(20.0),
            120,
            "warning",
        ),
        rule(
            "NodeTtftP99",
            RuleKind::TtftP99,
            5.0,
            Some(3.0),
            120,
            "warning",
        ),
        rule(
            "PoolShedding",
            RuleKind::Shedding,
            1.0,
            Some(0.1),
            30,
            "warning",
        ),
    ]
}

/// A rule as the JSON object of its TOML fields (durations as text), so
/// the built-in rules can be written into a config file.
pub fn rule_to_json(rule: &RuleConfig) -> serde_json::Value {
    let secs = |d: Duration| {
        if d.subsec_millis() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        }
    };
    let mut v = serde_json::json!({
        "name": rule.name,
        "kind": rule.kind,
        "threshold": rule.threshold,
        "for": secs(rule.for_),
        "resolve_for": secs(rule.resolve_for),
        "repeat_interval": secs(rule.repeat_interval),
        "severity": rule.severity,
    });
    if let (Some(pool), Some(map)) = (&rule.pool, v.as_object_mut()) {
        map.insert("pool".into(), pool.clone().into());
    }
    if let (Some(t), Some(map)) = (rule.resolve_threshold, v.as_object_mut()) {
        map.insert("resolve_threshold".into(), t.into());
    }
    v
}

/// Check rules for config validation; returns (path, message) pairs.
pub fn validate(config: &AlertsConfig) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in config.rules.iter().flatten().enumerate() {
        if !r.name.is_empty() && !names.insert(r.name.as_str()) {
            errors.push((
                format!("alerts.rules[{i}].name"),
                format!("duplicate rule name \"{}\"", r.name),
            ));
        }
        if r.name.is_empty() {
            errors.push((
                format!("alerts.rules[{i}].name"),
                "must not be empty".into(),
            ));
        }
        if !r.threshold.is_finite() || r.resolve_threshold.is_some_and(|t| !t.is_finite()) {
            errors.push((
                format!("alerts.rules[{i}].threshold"),
                "must be a number".into(),
            ));
        }
        if let Some(rt) = r.resolve_threshold {
            let wrong = if r.kind.below() {
                rt < r.threshold
            } else {
                rt > r.threshold
            };
            if wrong {
                errors.push((
                    format!("alerts.rules[{i}].resolve_threshold"),
                    "must be on the good side of threshold (hysteresis)".into(),
                ));
            }
        }
    }
    for (i, n) in config.notifiers.iter().enumerate() {
        if let Err(m) = n.validate() {
            errors.push((format!("alerts.notifiers[{i}]"), m));
        }
    }
    errors
}

/// A firing alert (API, dashboard).
#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    /// Rule name.
    pub rule: String,
    /// Severity.
    pub severity: String,
    /// `pool/node` or `pool`.
    pub target: String,
    /// Pool.
    pub pool: String,
    /// Node, for node rules.
    pub node: Option<String>,
    /// Latest value.
    pub value: f64,
    /// Fire threshold.
    pub threshold: f64,
    /// When it fired.
    pub started_unix_ms: u64,
    /// One line for people.
    pub summary: String,
}

/// A transition or repeat of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    /// `firing`, `repeat` or `resolved`.
    pub status: &'static str,
    /// The alert.
    #[serde(flatten)]
    pub alert: AlertView,
    /// When this happened.
    pub at_unix_ms: u64,
    /// For `resolved`: when it ended.
    pub ended_unix_ms: Option<u64>,
}

struct RuleState {
    pending_since: Option<Instant>,
    clear_since: Option<Instant>,
    firing: Option<(u64, Instant)>,
}

/// The alert engine.
pub struct Alerts {
    /// Replaced whole on reload; alert state is keyed by rule name, so an
    /// edited rule keeps its pending and firing alerts.
    rules: arc_swap::ArcSwap<Vec<RuleConfig>>,
    states: Mutex<BTreeMap<(String, String), RuleState>>,
    active: Mutex<BTreeMap<(String, String), AlertView>>,
    history: Mutex<VecDeque<AlertEvent>>,
    history_len: usize,
    /// Replaced whole when a reload changes `[[alerts.notifiers]]`; the old
    /// ones finish what is queued and stop when the last send ends.
    notifiers: arc_swap::ArcSwap<Vec<Arc<notify::Notifier>>>,
    start: Once,
    /// Fire events so far.
    pub fired: AtomicU64,
    /// Resolve events so far.
    pub resolved: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Target {
    pool: String,
    node: Option<String>,
    value: Option<f64>,
}

impl Alerts {
    /// An engine for `config` (notifier tasks start at the first evaluation).
    pub fn new(config: &AlertsConfig) -> Arc<Alerts> {
        Arc::new(Alerts {
            rules: arc_swap::ArcSwap::from_pointee(
                config.rules.clone().unwrap_or_else(default_rules),
            ),
            states: Mutex::default(),
            active: Mutex::default(),
            history: Mutex::new(VecDeque::new()),
            history_len: config.history.max(1),
            notifiers: arc_swap::ArcSwap::from_pointee(
                config
                    .notifiers
                    .iter()
                    .map(|n| Arc::new(notify::Notifier::new(n)))
                    .collect(),
            ),
            start: Once::new(),
            fired: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
        })
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Vec<RuleConfig>> {
        self.rules.load_full()
    }

    /// Put the rules and notifiers of a reloaded config in force. Alerts of
    /// rules that keep their name carry over; those of removed rules
    /// resolve at the next evaluation. Notifiers are replaced only when
    /// their settings changed. (`history` is read at start only.)
    pub fn reconfigure(&self, config: &AlertsConfig) {
        self.rules
            .store(Arc::new(config.rules.clone().unwrap_or_else(default_rules)));
        let same = {
            let current = self.notifiers.load();
            current.len() == config.notifiers.len()
                && current
                    .iter()
                    .zip(&config.notifiers)
                    .all(|(n, c)| n.config() == c)
        };
        if same {
            return;
        }
        let fresh: Vec<Arc<notify::Notifier>> = config
            .notifiers
            .iter()
            .map(|n| Arc::new(notify::Notifier::new(n)))
            .collect();
        if tokio::runtime::Handle::try_current().is_ok() {
            for n in &fresh {
                n.start();
            }
        }
        self.notifiers.store(Arc::new(fresh));
        tracing::info!(
            notifiers = config.notifiers.len(),
            "alert notifiers replaced"
        );
    }

    fn targets(rule: &RuleConfig, snapshot: &Snapshot) -> Vec<Target> {
        let mut out = Vec::new();
        for pool in &snapshot.pools {
            if rule.pool.as_ref().is_some_and(|p| *p != pool.name) {
                continue;
            }
            let pool_value = match rule.kind {
                RuleKind::PoolHealthyBelow => Some(Some(pool.healthy as f64)),
                RuleKind::ImbalanceRatio => Some(pool.imbalance.max_min_ratio),
                RuleKind::Shedding => Some(Some(pool.shed_rate)),
                RuleKind::EnergyPerToken => Some(pool.joules_per_token),
                RuleKind::NodesShort => Some(pool.nodes_short),
                _ => None,
            };
            if let Some(value) = pool_value {
                out.push(Target {
                    pool: pool.name.clone(),
                    node: None,
                    value,
                });
                continue;
            }
            let judged = pool.imbalance.max_deviation.is_some();
            for node in &pool.nodes {
                let value = match rule.kind {
                    RuleKind::NodeDown => Some(match node.state {
                        "unhealthy" | "ejected" => 1.0,
                        _ => 0.0,
                    }),
                    RuleKind::Imbalance => (judged && node.expected_share > 0.0)
                        .then(|| (node.share / node.expected_share - 1.0).abs()),
                    RuleKind::LatencyP99 => node.p99,
                    RuleKind::TtftP99 => node.ttft_p99,
                    RuleKind::ErrorRate => (node.rate > 0.0).then_some(node.error_rate),
                    _ => None,
                };
                out.push(Target {
                    pool: pool.name.clone(),
                    node: Some(node.name.clone()),
                    value,
                });
            }
        }
        out
    }

    /// Evaluate every rule against `snapshot` (called once per tick).
    pub fn evaluate(&self, snapshot: &Snapshot) {
        self.start.call_once(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                for n in self.notifiers.load().iter() {
                    n.start();
                }
            }
        });
        let now = Instant::now();
        let wall = crate::telemetry::unix_ms();
        let mut events = Vec::new();
        let mut states = lock(&self.states);
        let mut active = lock(&self.active);
        let mut seen = std::collections::BTreeSet::new();
        let rules = self.rules.load_full();
        for rule in rules.iter() {
            let threshold = if rule.kind == RuleKind::NodeDown {
                0.5
            } else {
                rule.threshold
            };
            let resolve = rule.resolve_threshold.unwrap_or(threshold);
            for t in Self::targets(rule, snapshot) {
                let target = match &t.node {
                    Some(n) => format!("{}/{n}", t.pool),
                    None => t.pool.clone(),
                };
                let key = (rule.name.clone(), target.clone());
                seen.insert(key.clone());
                let (breach, clear) = match t.value {
                    None => (false, true),
                    Some(v) if rule.kind.below() => (v < threshold, v >= resolve),
                    Some(v) => (v > threshold, v <= resolve),
                };
                let state = states.entry(key.clone()).or_insert(RuleState {
                    pending_since: None,
                    clear_since: None,
                    firing: None,
                });
                let value = t.value.unwrap_or(0.0);
                let view = |started: u64| AlertView {
                    rule: rule.name.clone(),
                    severity: rule.severity.clone(),
                    target: target.clone(),
                    pool: t.pool.clone(),
                    node: t.node.clone(),
                    value,
                    threshold,
                    started_unix_ms: started,
                    summary: summary(rule, &target, value, threshold),
                };
                match state.firing {
                    None => {
                        if breach {
                            let since = *state.pending_since.get_or_insert(now);
                            if now.duration_since(since) >= rule.for_ {
                                state.firing = Some((wall, now));
                                state.pending_since = None;
                                state.clear_since = None;
                                let v = view(wall);
                                active.insert(key.clone(), v.clone());
                                events.push(AlertEvent {
                                    status: "firing",
                                    alert: v,
                                    at_unix_ms: wall,
                                    ended_unix_ms: None,
                                });
                            }
                        } else {
                            state.pending_since = None;
                        }
                    }
                    Some((started, last_sent)) => {
                        if clear {
                            let since = *state.clear_since.get_or_insert(now);
                            if now.duration_since(since) >= rule.resolve_for {
                                state.firing = None;
                                state.clear_since = None;
                                active.remove(&key);
                                events.push(AlertEvent {
                                    status: "resolved",
                                    alert: view(started),
                                    at_unix_ms: wall,
                                    ended_unix_ms: Some(wall),
                                });
                                continue;
                            }
                        } else {
                            state.clear_since = None;
                        }
                        let v = view(started);
                        active.insert(key.clone(), v.clone());
                        if now.duration_since(last_sent) >= rule.repeat_interval {
                            state.firing = Some((started, now));
                            events.push(AlertEvent {
                                status: "repeat",
                                alert: v,
                                at_unix_ms: wall,
                                ended_unix_ms: None,
                            });
                        }
                    }
                }
            }
        }
        // Targets that disappeared (node removed by a reload) resolve.
        let gone: Vec<_> = states
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            states.remove(&key);
            if let Some(v) = active.remove(&key) {
                events.push(AlertEvent {
                    status: "resolved",
                    alert: v,
                    at_unix_ms: wall,
                    ended_unix_ms: Some(wall),
                });
            }
        }
        drop(active);
        drop(states);
        if events.is_empty() {
            return;
        }
        let mut history = lock(&self.history);
        for e in &events {
            match e.status {
                "firing" => {
                    self.fired.fetch_add(1, Relaxed);
                    tracing::warn!(alert = %e.alert.rule, target = %e.alert.target, value = e.alert.value, "alert firing: {}", e.alert.summary);
                }
                "resolved" => {
                    self.resolved.fetch_add(1, Relaxed);
                    tracing::info!(alert = %e.alert.rule, target = %e.alert.target, "alert resolved");
                }
                _ => {}
            }
            if e.status != "repeat" {
                history.push_back(e.clone());
                while history.len() > self.history_len {
                    history.pop_front();
                }
            }
        }
        drop(history);
        for n in self.notifiers.load().iter() {
            for e in &events {
                n.send(e, rule_repeat(&rules, &e.alert.rule));
            }
        }
    }

    /// Alerts firing now.
    pub fn active(&self) -> Vec<AlertView> {
        lock(&self.active).values().cloned().collect()
    }

    /// The latest `n` transitions, newest first.
    pub fn history(&self, n: usize) -> Vec<AlertEvent> {
        lock(&self.history).iter().rev().take(n).cloned().collect()
    }

    /// Append alert metrics to a Prometheus exposition.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP infergate_alerts_firing Alerts firing now, by rule."
        );
        let _ = writeln!(out, "# TYPE infergate_alerts_firing gauge");
        let active = lock(&self.active);
        for rule in self.rules.load().iter() {
            let n = active.values().filter(|a| a.rule == rule.name).count();
            let _ = writeln!(
                out,
                "infergate_alerts_firing{{rule=\"{}\",severity=\"{}\"}} {n}",
                rule.name.replace(['\\', '"', '\n'], "_"),
                rule.severity.replace(['\\', '"', '\n'], "_")
            );
        }
        drop(active);
        let _ = writeln!(
            out,
            "# HELP infergate_alert_notifications_total Alert notifications by notifier and result (sent; failed after all retries; dropped when the queue was full; attempt = delivery attempts including retries)."
        );
        let _ = writeln!(out, "# TYPE infergate_alert_notifications_total counter");
        for n in self.notifiers.load().iter() {
            n.render(out);
        }
    }
}

fn rule_repeat(rules: &[RuleConfig], name: &str) -> Duration {
    rules
        .iter()
        .find(|r| r.name == name)
        .map_or(default_repeat(), |r| r.repeat_interval)
}

fn summary(rule: &RuleConfig, target: &str, value: f64, threshold: f64) -> String {
    match rule.kind {
        RuleKind::NodeDown => format!("node {target} is down or ejected"),
        RuleKind::PoolHealthyBelow => {
            format!("pool {target} has {value} available nodes (< {threshold})")
        }
        RuleKind::Imbalance => format!(
            "node {target} share deviates {:.0}% from its expected share (> {:.0}%)",
            value * 100.0,
            threshold * 100.0
        ),
        RuleKind::ImbalanceRatio => {
            format!("pool {target} load ratio max/min {value:.2} (> {threshold})")
        }
        RuleKind::LatencyP99 => format!("node {target} p99 latency {value:.3}s (> {threshold}s)"),
        RuleKind::TtftP99 => format!("node {target} p99 TTFT {value:.3}s (> {threshold}s)"),
        RuleKind::ErrorRate => format!(
            "node {target} error rate {:.1}% (> {:.1}%)",
            value * 100.0,
            threshold * 100.0
        ),
        RuleKind::Shedding => format!("pool {target} sheds {value:.1} req/s (> {threshold})"),
        RuleKind::EnergyPerToken => {
            format!("pool {target} uses {value:.2} J per output token (> {threshold})")
        }
        RuleKind::NodesShort => {
            format!("pool {target} needs {value:.0} more nodes than are available (> {threshold})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::window::{NodeView, PoolView};

    fn snap(state: &'static str, latency: f64) -> Snapshot {
        Snapshot {
            pools: vec![PoolView {
                name: "p".into(),
                healthy: 1,
                total: 1,
                nodes: vec![NodeView {
                    name: "n".into(),
                    state,
                    p99: Some(latency),
                    ..NodeView::default()
                }],
                ..PoolView::default()
            }],
            ..Snapshot::default()
        }
    }

    fn rule(kind: RuleKind, threshold: f64, resolve: Option<f64>) -> RuleConfig {
        RuleConfig {
            name: "r".into(),
            kind,
            pool: None,
            threshold,
            resolve_threshold: resolve,
            for_: Duration::from_millis(50),
            resolve_for: Duration::from_millis(50),
            repeat_interval: Duration::from_secs(3600),
            severity: "warning".into(),
        }
    }

    fn engine(rules: Vec<RuleConfig>) -> Arc<Alerts> {
        Alerts::new(&AlertsConfig {
            rules: Some(rules),
            ..AlertsConfig::default()
        })
    }

    #[test]
    fn fires_after_for_and_resolves_once() {
        let a = engine(vec![rule(RuleKind::NodeDown, 0.0, None)]);
        a.evaluate(&snap("ejected", 0.0));
        assert!(a.active().is_empty(), "pending, not firing yet");
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&snap("ejected", 0.0));
        a.evaluate(&snap("ejected", 0.0));
        assert_eq!(a.active().len(), 1);
        assert_eq!(a.fired.load(Relaxed), 1, "fires once");
        a.evaluate(&snap("healthy", 0.0));
        assert_eq!(a.active().len(), 1, "resolve_for not elapsed");
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&snap("healthy", 0.0));
        a.evaluate(&snap("healthy", 0.0));
        assert!(a.active().is_empty());
        assert_eq!(a.resolved.load(Relaxed), 1);
        let h = a.history(10);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].status, "resolved");
        assert_eq!(h[1].status, "firing");
    }

    #[test]
    fn hysteresis_keeps_alert_between_thresholds() {
        let a = engine(vec![rule(RuleKind::LatencyP99, 1.0, Some(0.5))]);
        a.evaluate(&snap("healthy", 2.0));
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&snap("healthy", 2.0));
        assert_eq!(a.active().len(), 1);
        // Between resolve (0.5) and fire (1.0): stays firing.
        for _ in 0..3 {
            a.evaluate(&snap("healthy", 0.8));
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(a.active().len(), 1);
        a.evaluate(&snap("healthy", 0.4));
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&snap("healthy", 0.4));
        assert!(a.active().is_empty());
    }

    #[test]
    fn a_blip_shorter_than_for_does_not_fire() {
        let a = engine(vec![rule(RuleKind::NodeDown, 0.0, None)]);
        a.evaluate(&snap("unhealthy", 0.0));
        a.evaluate(&snap("healthy", 0.0));
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&snap("unhealthy", 0.0));
        assert!(a.active().is_empty());
        assert_eq!(a.fired.load(Relaxed), 0);
    }

    #[test]
    fn repeats_while_active() {
        let mut r = rule(RuleKind::NodeDown, 0.0, None);
        r.for_ = Duration::ZERO;
        r.repeat_interval = Duration::from_millis(20);
        let a = engine(vec![r]);
        a.evaluate(&snap("ejected", 0.0));
        std::thread::sleep(Duration::from_millis(30));
        a.evaluate(&snap("ejected", 0.0));
        assert_eq!(a.fired.load(Relaxed), 1);
        assert_eq!(a.history(10).len(), 1, "repeats are not transitions");
    }

    #[test]
    fn energy_rules_watch_joules_per_token_and_node_shortfall() {
        let pool = |jpt: Option<f64>, short: Option<f64>| Snapshot {
            pools: vec![PoolView {
                name: "p".into(),
                joules_per_token: jpt,
                nodes_short: short,
                ..PoolView::default()
            }],
            ..Snapshot::default()
        };
        let mut efficiency = rule(RuleKind::EnergyPerToken, 2.0, None);
        efficiency.name = "eff".into();
        let mut short = rule(RuleKind::NodesShort, 0.0, None);
        short.name = "short".into();
        let a = engine(vec![efficiency, short]);
        a.evaluate(&pool(Some(3.0), Some(0.0)));
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&pool(Some(3.0), Some(0.0)));
        let active = a.active();
        assert_eq!(active.len(), 1, "only J/token is over its threshold");
        a.evaluate(&pool(Some(1.0), Some(2.0)));
        std::thread::sleep(Duration::from_millis(60));
        a.evaluate(&pool(Some(1.0), Some(2.0)));
        assert_eq!(a.fired.load(Relaxed), 2, "shortfall fires too");
        // No energy figures (no [pools.energy]): nothing to judge.
        let b = engine(vec![rule(RuleKind::EnergyPerToken, 0.0, None)]);
        b.evaluate(&pool(None, None));
        std::thread::sleep(Duration::from_millis(60));
        b.evaluate(&pool(None, None));
        assert!(b.active().is_empty());
    }

    #[test]
    fn defaults_validate() {
        let cfg = AlertsConfig {
            rules: Some(default_rules()),
            ..AlertsConfig::default()
        };
        assert!(validate(&cfg).is_empty());
        let mut bad = default_rules();
        bad[2].resolve_threshold = Some(0.9);
        let cfg = AlertsConfig {
            rules: Some(bad),
            ..AlertsConfig::default()
        };
        assert_eq!(validate(&cfg).len(), 1);
    }
}
