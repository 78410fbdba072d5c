//! Health configuration: active checks (`[pools.health]`) and passive outlier
//! detection (`[pools.outlier]`).
//!
//! Defaults and where they come from:
//!
//! | field | default | source |
//! |---|---|---|
//! | `health.interval` | 5s | infergate (HAProxy `inter` is 2s; Envoy has no default) |
//! | `health.timeout` | 1s, at most half the interval | infergate (Envoy has no default; HAProxy uses `inter`) |
//! | `health.jitter` | 0.1 of interval | infergate (spreads checks like HAProxy `spread-checks`) |
//! | `health.unhealthy_threshold` | 3 | HAProxy `fall 3` |
//! | `health.healthy_threshold` | 2 | HAProxy `rise 2` |
//! | `health.initial_state` | healthy | HAProxy `init-state up` |
//! | `health.uneject_on_pass` | false | infergate (Envoy: true) |
//! | `outlier.consecutive_failures` | 5 | Envoy `consecutive_5xx` |
//! | `outlier.base_ejection_time` | 30s | Envoy `base_ejection_time` |
//! | `outlier.max_ejection_time` | 300s | Envoy `max_ejection_time` |
//! | `outlier.max_ejection_percent` | 50 | infergate (Envoy's is 10; both always allow one) |
//! | pool `panic_threshold` | 50 % | Envoy `healthy_panic_threshold` |
//! | slow start floor | 10 % | Envoy `slow_start_config.min_weight_percent` |
//!
//! Deviations from Envoy: the ejection multiplier decays by one per
//! `base_ejection_time` spent un-ejected (Envoy: per `interval`, 10s, a
//! setting infergate does not have); a successful active check does not
//! end an ejection unless `uneject_on_pass` (Envoy's
//! `successful_active_health_check_uneject_host` would: an inference node
//! can answer `/health` while failing requests), but a node the checks had
//! marked down that they see come back up is un-ejected at once (HAProxy
//! `rise`: otherwise failures while it was dead, which grow the ejection
//! time, would keep a recovered node out).

use std::time::Duration;

use serde::Deserialize;

use crate::config::{duration, FieldError};

/// Families whose default health path is known (`health.family`).
pub const CHECK_FAMILIES: &[&str] = &["openai", "tgi", "kserve", "ollama", "other"];

/// Default pool `panic_threshold`, percent (Envoy `healthy_panic_threshold`).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

/// State a node starts in before its first active check.
///
/// Like HAProxy's `init-state up` / `init-state down`: the node is "barely"
/// in that state, so the first check result decides at once (a healthy node
/// whose first check fails goes down immediately; an unhealthy one whose
/// first check succeeds comes up). After the first check the thresholds
/// apply. A node whose state is already known (kept across a config reload)
/// keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    /// Routable until a check says otherwise (HAProxy's default).
    #[default]
    Healthy,
    /// Not routable until a check succeeds.
    Unhealthy,
}

/// Active health checks of a pool's nodes (`[pools.health]`); absent = none.
///
/// Parsed through [`ActiveCheckToml`] so that a missing `timeout` is
/// derived from the interval ([`default_timeout`]): `interval = "1s"` alone
/// is a valid section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "ActiveCheckToml")]
pub struct ActiveCheckConfig {
    /// Time between two checks of a node.
    pub interval: Duration,
    /// Time a check may take (connect included); must be below `interval`.
    pub timeout: Duration,
    /// Random spread of each interval, as a fraction (0 to 1) of it.
    pub jitter: f64,
    /// Consecutive failed checks that mark a node down (HAProxy `fall`).
    pub unhealthy_threshold: u32,
    /// Consecutive successful checks that mark a node up (HAProxy `rise`).
    pub healthy_threshold: u32,
    /// Path to GET; defaults to the family's health path.
    pub path: Option<String>,
    /// API family of the nodes, for the default path: openai and tgi
    /// `/health`, kserve `/v2/health/ready`, ollama `/`, other `/health`.
    pub family: Option<String>,
    /// Statuses that count as healthy.
    pub expected_status: Vec<u16>,
    /// State before the first check (see [`InitialState`]).
    pub initial_state: InitialState,
    /// `healthy_threshold` passing checks in a row end an outlier
    /// ejection (Envoy's `successful_active_health_check_uneject_host`;
    /// HAProxy brings a server that `observe layer7` marked down back on
    /// `rise`). Off by default: an inference node can answer `/health`
    /// while it fails or stalls requests, and each early return would cost
    /// `consecutive_failures` more failed attempts (with a stall, each a
    /// whole first-byte timeout). A node the checks saw down comes back
    /// when they see it up, whatever this says.
    pub uneject_on_pass: bool,
}

impl Default for ActiveCheckConfig {
    fn default() -> Self {
        ActiveCheckConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            jitter: 0.1,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            path: None,
            family: None,
            expected_status: vec![200],
            initial_state: InitialState::Healthy,
            uneject_on_pass: false,
        }
    }
}

/// The check timeout when none is given: 1 s, or half the interval when
/// that is shorter, so the defaults are valid together with any interval
/// (the timeout must stay below it).
pub fn default_timeout(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_secs(1))
}

/// `[pools.health]` as written: [`ActiveCheckConfig`] with an optional
/// timeout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ActiveCheckToml {
    #[serde(deserialize_with = "duration::deserialize")]
    interval: Duration,
    #[serde(deserialize_with = "some_duration")]
    timeout: Option<Duration>,
    jitter: f64,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    path: Option<String>,
    family: Option<String>,
    expected_status: Vec<u16>,
    initial_state: InitialState,
    uneject_on_pass: bool,
}

fn some_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration::deserialize(d).map(Some)
}

impl Default for ActiveCheckToml {
    fn default() -> Self {
        let d = ActiveCheckConfig::default();
        ActiveCheckToml {
            interval: d.interval,
            timeout: None,
            jitter: d.jitter,
            unhealthy_threshold: d.unhealthy_threshold,
            healthy_threshold: d.healthy_threshold,
            path: d.path,
            family: d.family,
            expected_status: d.expected_status,
            initial_state: d.initial_state,
            uneject_on_pass: d.uneject_on_pass,
        }
    }
}

impl From<ActiveCheckToml> for ActiveCheckConfig {
    fn from(t: ActiveCheckToml) -> Self {
        ActiveCheckConfig {
            interval: t.interval,
            timeout: t.timeout.unwrap_or_else(|| default_timeout(t.interval)),
            jitter: t.jitter,
            unhealthy_threshold: t.unhealthy_threshold,
            healthy_threshold: t.healthy_threshold,
            path: t.path,
            family: t.family,
            expected_status: t.expected_status,
            initial_state: t.initial_state,
            uneject_on_pass: t.uneject_on_pass,
        }
    }
}

impl ActiveCheckConfig {
    /// The path checks GET: `path`, else the family's health path.
    pub fn check_path(&self) -> &str {
        if let Some(path) = &self.path {
            return path;
        }
        match self.family.as_deref() {
            Some("kserve") => "/v2/health/ready",
            Some("ollama") => "/",
            _ => "/health",
        }
    }

    /// Problems with this section; `at` is its path, e.g. `pools[0].health`.
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                path: format!("{at}.{field}"),
                message,
            })
        };
        if self.interval.is_zero() {
            err("interval", "must be greater than 0".into());
        }
        if self.timeout.is_zero() {
            err("timeout", "must be greater than 0".into());
        } else if self.timeout >= self.interval && !self.interval.is_zero() {
            err(
                "timeout",
                format!(
                    "must be less than interval ({})",
                    duration::format(self.interval)
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            err("jitter", "must be between 0 and 1".into());
        }
        for (field, value) in [
            ("unhealthy_threshold", self.unhealthy_threshold),
            ("healthy_threshold", self.healthy_threshold),
        ] {
            if !(1..=100).contains(&value) {
                err(field, "must be between 1 and 100".into());
            }
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                err("path", "must start with /".into());
            } else if path.parse::<http::uri::PathAndQuery>().is_err() {
                err("path", format!("`{path}` is not a valid path"));
            }
        }
        if let Some(family) = &self.family {
            if !CHECK_FAMILIES.contains(&family.as_str()) {
                err(
                    "family",
                    format!(
                        "unknown family \"{family}\" for health checks (known: {})",
                        CHECK_FAMILIES.join(", ")
                    ),
                );
            }
        }
        if self.expected_status.is_empty() {
            err("expected_status", "must list at least one status".into());
        }
        for status in &self.expected_status {
            if !(100..=599).contains(status) {
                err(
                    "expected_status",
                    format!("{status} is not an HTTP status (100 to 599)"),
                );
            }
        }
        errors
    }
}

/// Passive outlier detection of a pool (`[pools.outlier]`); on by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Eject nodes that fail requests in a row.
    pub enabled: bool,
    /// Consecutive failed requests (connect error, timeout, 5xx, broken
    /// stream) that eject a node (Envoy `consecutive_5xx`).
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the node's ejection count.
    #[serde(deserialize_with = "duration::deserialize")]
    pub base_ejection_time: Duration,
    /// Longest ejection.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_ejection_time: Duration,
    /// Most nodes of the pool ejected at once, percent; one node may always
    /// be ejected.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// Problems with this section; `at` is its path, e.g. `pools[0].outlier`.
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                path: format!("{at}.{field}"),
                message,
            })
        };
        if self.consecutive_failures == 0 {
            err("consecutive_failures", "must be at least 1".into());
        }
        if self.base_ejection_time.is_zero() {
            err("base_ejection_time", "must be greater than 0".into());
        }
        if self.max_ejection_time < self.base_ejection_time {
            err(
                "max_ejection_time",
                format!(
                    "must be at least base_ejection_time ({})",
                    duration::format(self.base_ejection_time)
                ),
            );
        }
        if self.max_ejection_percent > 100 {
            err("max_ejection_percent", "must be at most 100".into());
        }
        errors
    }
}

/// Problems with a pool's `panic_threshold` (percent, 0 = never panic).
pub fn validate_panic_threshold(percent: u32, at: &str) -> Vec<FieldError> {
    if percent > 100 {
        vec![FieldError {
            path: at.to_string(),
            message: "must be at most 100".into(),
        }]
    } else {
        Vec::new()
    }
}

/// Problems with a pool's `slow_start` window (0 = off).
pub fn validate_slow_start(window: Duration, at: &str) -> Vec<FieldError> {
    if window > Duration::from_secs(3600) {
        vec![FieldError {
            path: at.to_string(),
            message: "must be at most 1h".into(),
        }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        health: Option<ActiveCheckConfig>,
        #[serde(default)]
        outlier: OutlierConfig,
    }

    fn paths(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn defaults_when_sections_are_empty_or_absent() {
        let p: Pool = toml::from_str("").unwrap();
        assert!(p.health.is_none());
        assert!(p.outlier.enabled);
        assert_eq!(p.outlier.consecutive_failures, 5);
        assert_eq!(p.outlier.base_ejection_time, Duration::from_secs(30));
        assert_eq!(p.outlier.max_ejection_time, Duration::from_secs(300));
        assert_eq!(p.outlier.max_ejection_percent, 50);

        let p: Pool = toml::from_str("[health]").unwrap();
        let h = p.health.unwrap();
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!(h.jitter, 0.1);
        assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
        assert_eq!(h.expected_status, vec![200]);
        assert_eq!(h.initial_state, InitialState::Healthy);
        assert_eq!(h.check_path(), "/health");
        assert!(h.validate("pools[0].health").is_empty());
        assert!(p.outlier.validate("pools[0].outlier").is_empty());
    }

    #[test]
    fn timeout_is_derived_from_the_interval() {
        let p: Pool = toml::from_str("[health]\ninterval = \"1s\"").unwrap();
        let h = p.health.unwrap();
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert!(h.validate("pools[0].health").is_empty());
        let p: Pool = toml::from_str("[health]\ninterval = \"200ms\"").unwrap();
        assert_eq!(p.health.unwrap().timeout, Duration::from_millis(100));
        let p: Pool = toml::from_str("[health]\ninterval = \"30s\"").unwrap();
        assert_eq!(p.health.unwrap().timeout, Duration::from_secs(1));
        // An explicit timeout is kept, and still checked.
        let p: Pool = toml::from_str("[health]\ninterval = \"1s\"\ntimeout = \"1s\"").unwrap();
        assert_eq!(paths(&p.health.unwrap().validate("h")), ["h.timeout"]);
    }

    #[test]
    fn parses_every_field() {
        let p: Pool = toml::from_str(
            r#"
            [health]
            interval = "2s"
            timeout = "500ms"
            jitter = 0
            unhealthy_threshold = 2
            healthy_threshold = 1
            family = "kserve"
            expected_status = [200, 204]
            initial_state = "unhealthy"
            [outlier]
            enabled = false
            consecutive_failures = 3
            base_ejection_time = "10s"
            max_ejection_time = "1m"
            max_ejection_percent = 100
            "#,
        )
        .unwrap();
        let h = p.health.unwrap();
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!(h.check_path(), "/v2/health/ready");
        assert_eq!(h.initial_state, InitialState::Unhealthy);
        assert!(h.validate("h").is_empty());
        assert!(!p.outlier.enabled);
        assert_eq!(p.outlier.max_ejection_time, Duration::from_secs(60));
        assert!(p.outlier.validate("o").is_empty());
    }

    #[test]
    fn family_paths_and_explicit_path() {
        let mut h = ActiveCheckConfig::default();
        for (family, path) in [
            ("openai", "/health"),
            ("tgi", "/health"),
            ("kserve", "/v2/health/ready"),
            ("ollama", "/"),
            ("other", "/health"),
        ] {
            h.family = Some(family.into());
            assert_eq!(h.check_path(), path, "{family}");
        }
        h.path = Some("/ready".into());
        assert_eq!(h.check_path(), "/ready");
    }

    #[test]
    fn refuses_unknown_fields_and_states() {
        assert!(toml::from_str::<Pool>("[health]\ninterval_ms = 5").is_err());
        assert!(toml::from_str::<Pool>("[outlier]\nconsecutive_5xx = 5").is_err());
        assert!(toml::from_str::<Pool>("[health]\ninitial_state = \"up\"").is_err());
        assert!(toml::from_str::<Pool>("[health]\ninterval = \"5\"").is_err());
    }

    #[test]
    fn validation_reports_field_paths() {
        let h = ActiveCheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            jitter: 1.5,
            unhealthy_threshold: 0,
            healthy_threshold: 0,
            path: Some("health".into()),
            family: Some("grpc".into()),
            expected_status: vec![200, 42],
            initial_state: InitialState::Healthy,
            uneject_on_pass: false,
        };
        assert_eq!(
            paths(&h.validate("pools[1].health")),
            [
                "pools[1].health.timeout",
                "pools[1].health.jitter",
                "pools[1].health.unhealthy_threshold",
                "pools[1].health.healthy_threshold",
                "pools[1].health.path",
                "pools[1].health.family",
                "pools[1].health.expected_status",
            ]
        );
        let h = ActiveCheckConfig {
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            expected_status: vec![],
            ..ActiveCheckConfig::default()
        };
        assert_eq!(
            paths(&h.validate("h")),
            ["h.interval", "h.timeout", "h.expected_status"]
        );

        let o = OutlierConfig {
            enabled: true,
            consecutive_failures: 0,
            base_ejection_time: Duration::from_secs(60),
            max_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 101,
        };
        assert_eq!(
            paths(&o.validate("pools[0].outlier")),
            [
                "pools[0].outlier.consecutive_failures",
                "pools[0].outlier.max_ejection_time",
                "pools[0].outlier.max_ejection_percent",
            ]
        );
        assert_eq!(
            o.validate("o")[1].message,
            "must be at least base_ejection_time (60s)"
        );
    }

    #[test]
    fn pool_scalars() {
        assert!(validate_panic_threshold(DEFAULT_PANIC_THRESHOLD, "p").is_empty());
        assert!(validate_panic_threshold(0, "p").is_empty());
        assert_eq!(
            paths(&validate_panic_threshold(101, "pools[0].panic_threshold")),
            ["pools[0].panic_threshold"]
        );
        assert!(validate_slow_start(Duration::ZERO, "s").is_empty());
        assert_eq!(validate_slow_start(Duration::from_secs(7200), "s").len(), 1);
    }
}
