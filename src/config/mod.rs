//! The configuration file: its schema, loading and validation.
//!
//! One TOML file is the source of truth. [`Config::from_toml`] parses it
//! (unknown fields are refused) and [`Config::validate`] checks it as a whole,
//! reporting every problem with the path of the field at fault, e.g.
//! `routes[1].pool: unknown pool "llama"`. Only a config that passes both is
//! ever handed to the gateway, so a bad edit never replaces a running config.

mod aware;
mod budget;
mod cidr;
pub mod duration;
mod glob;
pub mod precise;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

pub use aware::{BalanceOptions, CapacityConfig, HashKey, ScorerWeights};
pub use budget::{BudgetConfig, TenantLimits, TenantSource};
pub use cidr::Cidr;
pub use glob::ModelPattern;

use crate::balance::POLICY_NAMES;
use crate::classify::{ApiFamily, Priority};
use crate::health::{self, ActiveCheckConfig, OutlierConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The data-plane listener.
    #[serde(default)]
    pub listener: ListenerConfig,
    /// Classification settings.
    #[serde(default)]
    pub classify: ClassifyConfig,
    /// Pools of nodes.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Routes, matched in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The admin listener (metrics, API, dashboard).
    #[serde(default)]
    pub admin: crate::admin::AdminConfig,
    /// Request telemetry.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Access log.
    #[serde(default)]
    pub access_log: crate::telemetry::access::AccessLogConfig,
    /// Alert rules and notifiers.
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// The Gateway API Inference Extension endpoint picker (ext_proc gRPC).
    #[serde(default)]
    pub epp: crate::epp::EppConfig,
}

/// Data-plane listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to listen on.
    pub addr: String,
    /// Most client connections open at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Most bytes of request headers (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Default most bytes of a request body (413 above); routes may override.
    pub max_body_bytes: u64,
    /// Time a client has to send complete request headers.
    #[serde(deserialize_with = "duration::deserialize")]
    pub header_timeout: Duration,
    /// Time a client has to send a request body the gateway must read
    /// before routing (inference requests).
    #[serde(deserialize_with = "duration::deserialize")]
    pub body_timeout: Duration,
    /// Time a connection may stay open with no request in flight and no
    /// traffic (HTTP/1 keep-alive, idle HTTP/2 sessions).
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// Time a client may take to accept more of a response being written
    /// to it (nginx's `send_timeout`): a client that stops reading is
    /// disconnected and its request ended, freeing its node (not an
    /// HTTP/2 stream stalled by flow control: see docs/security.md).
    #[serde(deserialize_with = "duration::deserialize")]
    pub send_timeout: Duration,
    /// Connections the kernel queues before they are accepted.
    pub backlog: u32,
    /// Serve HTTP/2 (h2c, prior knowledge; ALPN `h2` with TLS) besides HTTP/1.1.
    pub http2: bool,
    /// Terminate TLS (`[listener.tls]`: cert, key, optional client_ca).
    pub tls: Option<crate::tls::ServerTls>,
    /// Worker threads serving connections (0: one per CPU).
    pub workers: usize,
    /// Path the gateway answers itself (GET/HEAD) with its own state: 200
    /// while some route has an available node, else 503 with
    /// `Retry-After`; for load balancers and clients (guidellm) that probe
    /// their backend. `""`: no such path, the request is routed like any
    /// other.
    pub health_path: String,
    /// Who answers `GET /v1/models` (and `/models`): `"gateway"` lists the
    /// models the pools' available nodes serve (asked on their own
    /// `/v1/models`, cached) plus the exact names in routes; `"proxy"`
    /// routes the request to a node like any other.
    pub models: ModelsMode,
}

/// Who answers `GET /v1/models` (`listener.models`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelsMode {
    /// The gateway, from its pools' nodes and routes.
    #[default]
    Gateway,
    /// A node, through the routes.
    Proxy,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            addr: "127.0.0.1:8080".to_string(),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            backlog: 1024,
            http2: true,
            tls: None,
            workers: 0,
            health_path: "/health".to_string(),
            models: ModelsMode::Gateway,
        }
    }
}

/// Classification settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// Most prompt blocks (64 bytes each) hashed into a prefix fingerprint
    /// (only when a route's policy reads it: `prefix_aware`, `composite`,
    /// `precise_prefix`).
    pub max_prefix_blocks: usize,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            max_prefix_blocks: 256,
        }
    }
}

/// Protocol the gateway speaks to a pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (model servers' usual protocol).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC servers, e.g. Triton).
    H2c,
}

/// A pool: nodes that serve the same models.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique pool name.
    pub name: String,
    /// Protocol to the nodes.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to `https://` nodes: CA bundle, client certificate (default:
    /// the system roots, no client certificate).
    #[serde(default)]
    pub tls: Option<crate::tls::ClientTls>,
    /// The nodes.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// Most requests waiting for a node when every node is at its limit;
    /// beyond it requests are shed with 429 (0: shed at once).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Longest a request waits in the queue before it is shed with 429.
    #[serde(
        default = "default_queue_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub queue_timeout: Duration,
    /// A node that joins or returns ramps from 10% to its full share over
    /// this window ("0s": off).
    #[serde(
        default = "default_slow_start",
        deserialize_with = "duration::deserialize"
    )]
    pub slow_start: Duration,
    /// Below this percentage of available nodes the pool is in panic mode
    /// and routes across all nodes, as Envoy does (0: never).
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
    /// Active health checks (absent: none; nodes count as up).
    #[serde(default)]
    pub health: Option<ActiveCheckConfig>,
    /// Passive outlier detection from real traffic.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Scrape the nodes' metrics for capacity signals (`[pools.capacity]`).
    #[serde(default)]
    pub capacity: Option<CapacityConfig>,
    /// Power signals, consolidation and parking (`[pools.energy]`, `crate::energy`).
    #[serde(default)]
    pub energy: Option<crate::energy::EnergyConfig>,
    /// Take the nodes from DNS or Kubernetes instead of `nodes`
    /// (`[pools.discovery]`, see `discovery`).
    #[serde(default)]
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
}

fn default_queue_size() -> usize {
    256
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_slow_start() -> Duration {
    Duration::ZERO
}

fn default_panic_threshold() -> u32 {
    crate::health::DEFAULT_PANIC_THRESHOLD
}

/// One node of a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name, unique within the pool.
    pub name: String,
    /// `host:port` to connect to.
    pub addr: String,
    /// Relative share of traffic (1 to 10000).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most requests in flight to this node; it is skipped when full.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Most tokens in flight (prompt estimate + expected output); the node is
    /// skipped when a new request would find it at or over this.
    #[serde(default)]
    pub max_inflight_tokens: Option<u64>,
    /// Take no new requests; requests in flight finish.
    #[serde(default)]
    pub draining: bool,
    /// This node's power exporter and model (`[pools.nodes.power]`).
    #[serde(default)]
    pub power: Option<crate::energy::NodePowerConfig>,
    /// Where the node came from when a discovery source found it (`None`:
    /// the file). Never read from the file.
    #[serde(skip)]
    pub source: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// A route: which requests go to which pool, by which policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name.
    pub name: String,
    /// What a request must look like to take this route (all conditions).
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// Pool the route sends to.
    pub pool: String,
    /// Balancing policy (see `balance::POLICY_NAMES`).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Timeouts for requests on this route.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Most request-body bytes; defaults to the listener's.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Extra attempts on other nodes when one fails before any response byte.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Bound on retries, so retries cannot amplify an outage.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Node answers that are retried on another node (while nothing has
    /// reached the client and the body can be replayed): HAProxy's
    /// `retry-on 500 502 503 504`, Envoy's `retriable-status-codes`.
    #[serde(default = "default_retry_on_status")]
    pub retry_on_status: Vec<u16>,
    /// Options of the AI-aware policies (`[routes.balance]`).
    #[serde(default)]
    pub balance: BalanceOptions,
    /// Per-tenant request and token budgets (`[routes.budget]`).
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
    /// Priority of this route's requests in the pool's queue: `critical`,
    /// `standard` (absent) or `sheddable`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Clients (networks, e.g. `["10.0.0.0/8", "::1"]`) whose
    /// `x-infergate-priority` header replaces the route's priority. Empty
    /// (the default): the header is ignored, so no client can push others
    /// aside. `["0.0.0.0/0", "::/0"]` trusts every client.
    /// Checked by [`Config::validate`] (each must parse as a [`Cidr`]).
    #[serde(default)]
    pub trust_priority_header_from: Vec<String>,
}

/// Retry budget (Finagle's and Linkerd's): over the last `window`, retries
/// may be at most `percent` of the route's requests plus `min_per_second`
/// per second. Retries after a connection was refused or could not be made
/// are free: nothing reached a node. See `proxy::retry`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries as a share of the route's requests over the window.
    pub percent: u32,
    /// Retries per second allowed on top of the share (so a quiet route
    /// can still retry).
    pub min_per_second: u32,
    /// How far back requests and retries are counted.
    #[serde(deserialize_with = "duration::deserialize")]
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: 20,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Default node statuses retried elsewhere.
pub const DEFAULT_RETRY_ON_STATUS: [u16; 4] = [500, 502, 503, 504];

fn default_retry_on_status() -> Vec<u16> {
    DEFAULT_RETRY_ON_STATUS.to_vec()
}

fn default_policy() -> String {
    "least_outstanding".to_string()
}

fn default_retries() -> u32 {
    1
}

/// Conditions of a route; an absent condition matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// API family: openai, tgi, kserve, ollama, grpc, other.
    pub family: Option<String>,
    /// Path must start with this.
    pub path_prefix: Option<String>,
    /// HTTP method, e.g. `POST`.
    pub method: Option<String>,
    /// Model name, exact or glob (`llama-*`).
    pub model: Option<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Per-route timeouts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Establishing a TCP connection to a node.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect: Duration,
    /// From sending the request to the response headers (includes queueing
    /// and prefill on the node, so generous for LLMs).
    #[serde(deserialize_with = "duration::deserialize")]
    pub first_byte: Duration,
    /// Longest silence between two chunks of a response body.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle: Duration,
    /// The whole exchange, first attempt to last byte.
    #[serde(deserialize_with = "duration::deserialize")]
    pub total: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    }
}

/// One problem found in a config, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path such as `pools[0].nodes[2].addr`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Names of pools, nodes and routes: they appear in URLs of the config API
/// (`/pools/{pool}/nodes/{node}`), in `POOL/NODE` on the command line and
/// in metric labels, so no `/`, no control characters, at most 128 bytes.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.len() > 128 {
        Err("must be at most 128 bytes".into())
    } else if name.contains('/') || name.chars().any(char::is_control) {
        Err(format!(
            "`{}` must not contain `/` or control characters",
            name.escape_debug()
        ))
    } else {
        Ok(())
    }
}

/// The path (`pools[1].health.interval`) of the innermost key or value
/// whose text covers byte `offset` of `text`, for pointing parse errors at
/// a field the way validation errors are.
pub fn field_path_at(text: &str, offset: usize) -> Option<String> {
    use toml_edit::{Item, Table, Value};
    fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }
    fn in_value(value: &Value, offset: usize, path: &mut String) -> bool {
        match value {
            Value::InlineTable(t) => {
                for (key, v) in t.iter() {
                    let key_span = t.key(key).and_then(|k| k.span());
                    if covers(key_span, offset) || covers(v.span(), offset) {
                        path.push('.');
                        path.push_str(key);
                        in_value(v, offset, path);
                        return true;
                    }
                }
                false
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    if covers(v.span(), offset) {
                        path.push_str(&format!("[{i}]"));
                        in_value(v, offset, path);
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }
    fn in_table(table: &Table, offset: usize, path: &mut String) -> bool {
        for (key, item) in table.iter() {
            let key_span = table.key(key).and_then(|k| k.span());
            let mut here = path.clone();
            if !here.is_empty() {
                here.push('.');
            }
            here.push_str(key);
            let found = match item {
                Item::Value(v) => {
                    if covers(key_span, offset) || covers(v.span(), offset) {
                        in_value(v, offset, &mut here);
                        true
                    } else {
                        false
                    }
                }
                Item::Table(t) => in_table(t, offset, &mut here),
                Item::ArrayOfTables(tables) => {
                    let mut hit = false;
                    for (i, t) in tables.iter().enumerate() {
                        let mut entry = format!("{here}[{i}]");
                        if in_table(t, offset, &mut entry) {
                            here = entry;
                            hit = true;
                            break;
                        }
                    }
                    hit
                }
                Item::None => false,
            };
            if found {
                *path = here;
                return true;
            }
        }
        false
    }
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut path = String::new();
    in_table(doc.as_table(), offset, &mut path).then_some(path)
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or unknown name.
    #[error("{message}")]
    Parse {
        /// The parser's message with the line it points at.
        message: String,
        /// The field at fault, e.g. `pools[1].health.interval`, when the
        /// error points into a key or value.
        field: Option<FieldError>,
    },
    /// Parsed, but not a valid config.
    #[error("invalid config:\n{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            message: e.to_string(),
            field: e.span().and_then(|span| {
                Some(FieldError {
                    path: field_path_at(text, span.start)?,
                    message: e.message().trim().to_string(),
                })
            }),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Check the config as a whole; every problem is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(FieldError { path, message });
        for (path, message) in crate::alerts::validate(&self.alerts) {
            err(path, message);
        }
        for (path, message) in self.admin.problems() {
            err(path, message);
        }
        for (path, message) in self.epp.problems() {
            err(path, message);
        }
        if !(0.0..=1.0).contains(&self.access_log.sample) {
            err(
                "access_log.sample".into(),
                "must be between 0.0 and 1.0".into(),
            );
        }

        if self.listener.addr.parse::<std::net::SocketAddr>().is_err() {
            err(
                "listener.addr".into(),
                format!("`{}` is not an IP:port address", self.listener.addr),
            );
        }
        if self.listener.max_connections == 0 {
            err(
                "listener.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        for (field, value) in [
            ("header_timeout", self.listener.header_timeout),
            ("body_timeout", self.listener.body_timeout),
            ("idle_timeout", self.listener.idle_timeout),
            ("send_timeout", self.listener.send_timeout),
        ] {
            if value.is_zero() {
                err(format!("listener.{field}"), "must be greater than 0".into());
            }
        }
        if let Some(tls) = &self.listener.tls {
            for e in tls.validate("listener.tls") {
                err(e.path, e.message);
            }
        }
        if self.listener.backlog == 0 || self.listener.backlog > 65_535 {
            err(
                "listener.backlog".into(),
                "must be between 1 and 65535".into(),
            );
        }
        if self.listener.workers > 1024 {
            err("listener.workers".into(), "must be at most 1024".into());
        }
        if self.listener.max_header_bytes < 1024 {
            err(
                "listener.max_header_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        let health_path = &self.listener.health_path;
        if !health_path.is_empty()
            && (!health_path.starts_with('/')
                || health_path.contains('?')
                || health_path.parse::<http::uri::PathAndQuery>().is_err())
        {
            err(
                "listener.health_path".into(),
                format!("`{health_path}` must be a path starting with / (or \"\" for none)"),
            );
        }
        if self.listener.max_body_bytes == 0 {
            err(
                "listener.max_body_bytes".into(),
                "must be at least 1".into(),
            );
        }
        if self.classify.max_prefix_blocks > 65_536 {
            err(
                "classify.max_prefix_blocks".into(),
                "must be at most 65536".into(),
            );
        }

        let mut pool_names = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = format!("pools[{i}]");
            if let Err(message) = check_name(&pool.name) {
                err(format!("{at}.name"), message);
            } else if !pool_names.insert(pool.name.as_str()) {
                err(
                    format!("{at}.name"),
                    format!("duplicate pool name \"{}\"", pool.name),
                );
            }
            let mut health_errors = health::validate_panic_threshold(
                pool.panic_threshold,
                &format!("{at}.panic_threshold"),
            );
            health_errors.extend(health::validate_slow_start(
                pool.slow_start,
                &format!("{at}.slow_start"),
            ));
            if let Some(active) = &pool.health {
                health_errors.extend(active.validate(&format!("{at}.health")));
            }
            health_errors.extend(pool.outlier.validate(&format!("{at}.outlier")));
            for e in health_errors {
                err(e.path, e.message);
            }
            if pool.queue_size > 1_000_000 {
                err(format!("{at}.queue_size"), "must be at most 1000000".into());
            }
            if pool.queue_timeout.is_zero() && pool.queue_size > 0 {
                err(
                    format!("{at}.queue_timeout"),
                    "must be greater than 0 when queue_size > 0".into(),
                );
            }
            if let Some(discovery) = &pool.discovery {
                for (path, message) in discovery.problems(&format!("{at}.discovery")) {
                    err(path, message);
                }
                if pool.nodes.iter().any(|n| n.source.is_none()) {
                    err(
                        format!("{at}.nodes"),
                        format!(
                            "pool \"{}\" takes its nodes from [pools.discovery]; list nodes or use discovery, not both",
                            pool.name
                        ),
                    );
                }
            } else if pool.nodes.is_empty() {
                err(
                    format!("{at}.nodes"),
                    format!("pool \"{}\" has no nodes", pool.name),
                );
            }
            if let Some(capacity) = &pool.capacity {
                for (path, message) in capacity.problems(&format!("{at}.capacity")) {
                    err(path, message);
                }
            }
            if let Some(energy) = &pool.energy {
                for (path, message) in energy.problems(&format!("{at}.energy")) {
                    err(path, message);
                }
            }
            if let Some(tls) = &pool.tls {
                for e in tls.validate(&format!("{at}.tls")) {
                    err(e.path, e.message);
                }
            }
            let mut node_names = HashSet::new();
            for (j, node) in pool.nodes.iter().enumerate() {
                let at = format!("{at}.nodes[{j}]");
                if let Err(message) = check_name(&node.name) {
                    err(format!("{at}.name"), message);
                } else if !node_names.insert(node.name.as_str()) {
                    err(
                        format!("{at}.name"),
                        format!("duplicate node name \"{}\" in pool", node.name),
                    );
                }
                if let Err(why) = parse_node_url(&node.addr) {
                    err(format!("{at}.addr"), why);
                }
                if !(1..=10_000).contains(&node.weight) {
                    err(format!("{at}.weight"), "must be between 1 and 10000".into());
                }
                if let Some(power) = &node.power {
                    for (path, message) in power.problems(&format!("{at}.power")) {
                        err(path, message);
                    }
                }
                if node.max_concurrent == Some(0) {
                    err(format!("{at}.max_concurrent"), "must be at least 1".into());
                }
                if node.max_inflight_tokens == Some(0) {
                    err(
                        format!("{at}.max_inflight_tokens"),
                        "must be at least 1".into(),
                    );
                }
            }
        }

        let mut route_names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if let Err(message) = check_name(&route.name) {
                err(format!("{at}.name"), message);
            } else if !route_names.insert(route.name.as_str()) {
                err(
                    format!("{at}.name"),
                    format!("duplicate route name \"{}\"", route.name),
                );
            }
            if !pool_names.contains(route.pool.as_str()) {
                err(
                    format!("{at}.pool"),
                    format!("unknown pool \"{}\"", route.pool),
                );
            }
            if !POLICY_NAMES.contains(&route.policy.as_str()) {
                err(
                    format!("{at}.policy"),
                    format!(
                        "unknown policy \"{}\" (known: {})",
                        route.policy,
                        POLICY_NAMES.join(", ")
                    ),
                );
            }
            if let Some(budget) = &route.budget {
                for (path, message) in budget.problems(&format!("{at}.budget")) {
                    err(path, message);
                }
            }
            for (path, message) in route.balance.problems(&format!("{at}.balance")) {
                err(path, message);
            }
            for (j, network) in route.trust_priority_header_from.iter().enumerate() {
                if let Err(message) = network.parse::<Cidr>() {
                    err(format!("{at}.trust_priority_header_from[{j}]"), message);
                }
            }
            if let Some(priority) = &route.priority {
                if Priority::from_name(priority).is_none() {
                    err(
                        format!("{at}.priority"),
                        format!(
                            "unknown priority \"{}\" (known: {})",
                            priority.escape_debug(),
                            Priority::NAMES.join(", ")
                        ),
                    );
                }
            }
            let m = &route.matcher;
            if let Some(family) = &m.family {
                if ApiFamily::from_name(family).is_none() {
                    err(
                        format!("{at}.match.family"),
                        format!(
                            "unknown family \"{family}\" (known: {})",
                            ApiFamily::NAMES.join(", ")
                        ),
                    );
                }
            }
            if let Some(prefix) = &m.path_prefix {
                if !prefix.starts_with('/') {
                    err(
                        format!("{at}.match.path_prefix"),
                        "must start with /".into(),
                    );
                }
            }
            if let Some(method) = &m.method {
                if http::Method::from_bytes(method.as_bytes()).is_err() {
                    err(
                        format!("{at}.match.method"),
                        format!("`{method}` is not an HTTP method"),
                    );
                }
            }
            if m.model.as_deref() == Some("") {
                err(format!("{at}.match.model"), "must not be empty".into());
            }
            for (name, value) in &m.headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    err(
                        format!("{at}.match.headers"),
                        format!("`{name}` is not a header name"),
                    );
                }
                if http::HeaderValue::from_str(value).is_err() {
                    err(
                        format!("{at}.match.headers.{name}"),
                        "is not a valid header value".into(),
                    );
                }
            }
            let t = &route.timeouts;
            for (field, value) in [
                ("connect", t.connect),
                ("first_byte", t.first_byte),
                ("idle", t.idle),
                ("total", t.total),
            ] {
                if value.is_zero() {
                    err(
                        format!("{at}.timeouts.{field}"),
                        "must be greater than 0".into(),
                    );
                }
            }
            if route.max_body_bytes == Some(0) {
                err(format!("{at}.max_body_bytes"), "must be at least 1".into());
            }
            if route.retry_budget.percent > 100 {
                err(
                    format!("{at}.retry_budget.percent"),
                    "must be a percentage (0 to 100)".into(),
                );
            }
            let window = route.retry_budget.window;
            if window < Duration::from_secs(1) || window > Duration::from_secs(600) {
                err(
                    format!("{at}.retry_budget.window"),
                    "must be between 1s and 10m".into(),
                );
            }
            if let Some(bad) = route
                .retry_on_status
                .iter()
                .find(|s| !(500..=599).contains(*s))
            {
                err(
                    format!("{at}.retry_on_status"),
                    format!("{bad} is not a 5xx status; only server errors are retried"),
                );
            }
            if route.retries > 10 {
                err(format!("{at}.retries"), "must be at most 10".into());
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

/// Parse a node address that may name its scheme: `host:port`,
/// `http://host:port` or `https://host:port` (TLS, `[pools.tls]`).
/// Returns the authority and whether to speak TLS.
pub fn parse_node_url(addr: &str) -> Result<(Authority, bool), String> {
    let (rest, https) = if let Some(rest) = addr.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (rest, false)
    } else {
        (addr, false)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!("`{addr}` must not have a path"));
    }
    Ok((parse_node_addr(rest)?, https))
}

/// Parse a node address: `host:port` with a port, no scheme or path.
pub fn parse_node_addr(addr: &str) -> Result<Authority, String> {
    let authority: Authority = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not a host:port address"))?;
    if authority.port_u16().is_none() {
        return Err(format!("`{addr}` has no port"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("`{addr}` must not contain credentials"));
    }
    if authority.host().is_empty() {
        return Err(format!("`{addr}` has no host"));
    }
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [listener]
        addr = "127.0.0.1:0"

        [[pools]]
        name = "llama"
        [[pools.nodes]]
        name = "a"
        addr = "127.0.0.1:9001"
        weight = 2
        [[pools.nodes]]
        name = "b"
        addr = "localhost:9002"
        max_concurrent = 8

        [[routes]]
        name = "chat"
        pool = "llama"
        policy = "weighted_round_robin"
        [routes.match]
        family = "openai"
        model = "llama-*"
        headers = { "x-tenant" = "blue" }
        [routes.timeouts]
        first_byte = "30s"
        idle = "500ms"
    "#;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid(errors)) => errors.iter().map(|e| e.to_string()).collect(),
            Err(other) => vec![other.to_string()],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.pools[0].nodes[0].weight, 2);
        assert_eq!(c.pools[0].nodes[1].weight, 1);
        assert_eq!(c.routes[0].timeouts.idle, Duration::from_millis(500));
        assert_eq!(c.routes[0].timeouts.connect, Duration::from_secs(2));
        assert_eq!(c.routes[0].retries, 1);
        assert_eq!(c.listener.max_body_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn names_fit_urls_and_the_command_line() {
        let errors = errors_of(
            "[[pools]]\nname = \"a/b\"\n[[pools.nodes]]\nname = \"n\\u0007\"\naddr = \"127.0.0.1:1\"\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("pools[0].name: `a/b` must not contain `/`")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("pools[0].nodes[0].name:")),
            "{errors:?}"
        );
    }

    #[test]
    fn parse_errors_point_at_the_field() {
        let text = "[[pools]]\nname = \"a\"\n[[pools]]\nname = \"b\"\nhealth = { interval = \"1s\", fall = 2 }\n";
        match Config::from_toml(text) {
            Err(ConfigError::Parse { field: Some(f), .. }) => {
                assert_eq!(f.path, "pools[1].health.fall");
                assert!(f.message.contains("unknown field `fall`"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
        let text = "[[pools]]\nname = \"a\"\n[[pools.nodes]]\nname = \"n\"\naddr = \"127.0.0.1:1\"\nweight = \"heavy\"\n";
        match Config::from_toml(text) {
            Err(ConfigError::Parse { field: Some(f), .. }) => {
                assert_eq!(f.path, "pools[0].nodes[0].weight")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listener_connection_settings_are_checked_by_field() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.listener.backlog, 1024);
        assert_eq!(c.listener.idle_timeout, Duration::from_secs(60));
        let bad = GOOD.replacen(
            "[listener]\n",
            "[listener]\nbacklog = 0\nidle_timeout = \"0s\"\n",
            1,
        );
        let error = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(error.contains("listener.backlog"), "{error}");
        assert!(error.contains("listener.idle_timeout"), "{error}");
    }

    #[test]
    fn listener_probe_settings() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.listener.health_path, "/health");
        assert_eq!(c.listener.models, ModelsMode::Gateway);
        let text = GOOD.replace(
            "addr = \"127.0.0.1:0\"",
            "addr = \"127.0.0.1:0\"\nhealth_path = \"\"\nmodels = \"proxy\"",
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.listener.health_path, "");
        assert_eq!(c.listener.models, ModelsMode::Proxy);
        let e = errors_of(&GOOD.replace(
            "addr = \"127.0.0.1:0\"",
            "addr = \"127.0.0.1:0\"\nhealth_path = \"healthz\"",
        ));
        assert!(e[0].starts_with("listener.health_path:"), "{e:?}");
        let e = errors_of(&GOOD.replace(
            "addr = \"127.0.0.1:0\"",
            "addr = \"127.0.0.1:0\"\nmodels = \"nodes\"",
        ));
        assert!(e[0].contains("unknown variant"), "{e:?}");
    }

    #[test]
    fn a_short_health_interval_alone_is_valid() {
        let text = "[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[pools.health]\ninterval = \"1s\"\n";
        let c = Config::from_toml(text).unwrap();
        let h = c.pools[0].health.as_ref().unwrap();
        assert_eq!(h.timeout, Duration::from_millis(500));
    }

    #[test]
    fn unknown_field_is_refused_by_name() {
        let e = errors_of(&GOOD.replace("weight = 2", "wieght = 2"));
        assert!(e[0].contains("unknown field `wieght`"), "{e:?}");
    }

    #[test]
    fn each_problem_names_its_field() {
        let bad = GOOD
            .replace("pool = \"llama\"", "pool = \"nope\"")
            .replace("weighted_round_robin", "fastest")
            .replace("127.0.0.1:9001", "http://127.0.0.1:9001/x")
            .replace("name = \"b\"", "name = \"a\"")
            .replace("family = \"openai\"", "family = \"soap\"")
            .replace("idle = \"500ms\"", "idle = \"0s\"");
        let e = errors_of(&bad);
        let expect = [
            "pools[0].nodes[0].addr:",
            "pools[0].nodes[1].name: duplicate node name \"a\"",
            "routes[0].pool: unknown pool \"nope\"",
            "routes[0].policy: unknown policy \"fastest\"",
            "routes[0].match.family: unknown family \"soap\"",
            "routes[0].timeouts.idle: must be greater than 0",
        ];
        for want in expect {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want} in {e:?}"
            );
        }
    }

    #[test]
    fn empty_pool_and_duplicate_pool_are_refused() {
        let text = r#"
            [[pools]]
            name = "p"
            nodes = []
            [[pools]]
            name = "p"
            [[pools.nodes]]
            name = "a"
            addr = "127.0.0.1:1"
        "#;
        let e = errors_of(text);
        assert!(
            e.iter()
                .any(|m| m.starts_with("pools[0].nodes: pool \"p\" has no nodes")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("pools[1].name: duplicate pool name")),
            "{e:?}"
        );
    }

    #[test]
    fn bad_duration_and_address() {
        let e = errors_of(&GOOD.replace("\"30s\"", "\"30 parsecs\""));
        assert!(e[0].contains("unknown unit"), "{e:?}");
        assert!(parse_node_addr("127.0.0.1").is_err());
        assert!(parse_node_addr("user:pw@host:80").is_err());
        assert!(parse_node_addr("node-1.internal:8000").is_ok());
        assert!(parse_node_addr("[::1]:8000").is_ok());
        assert_eq!(
            parse_node_url("https://node-1:8443").map(|(a, tls)| (a.to_string(), tls)),
            Ok(("node-1:8443".to_string(), true))
        );
        assert_eq!(
            parse_node_url("http://n:80/").map(|(_, tls)| tls),
            Ok(false)
        );
        assert!(parse_node_url("https://n:443/v1").is_err());
        assert!(parse_node_url("https://n").is_err());
    }

    #[test]
    fn route_priority_settings_are_checked_by_field() {
        let c = Config::from_toml(&GOOD.replace(
            "policy = \"weighted_round_robin\"",
            "policy = \"weighted_round_robin\"\npriority = \"sheddable\"\ntrust_priority_header_from = [\"10.0.0.0/8\", \"::1\"]",
        ))
        .unwrap();
        assert_eq!(c.routes[0].priority.as_deref(), Some("sheddable"));
        assert_eq!(c.routes[0].trust_priority_header_from.len(), 2);
        assert!(Config::from_toml(GOOD).unwrap().routes[0]
            .trust_priority_header_from
            .is_empty());

        let e = errors_of(&GOOD.replace(
            "policy = \"weighted_round_robin\"",
            "policy = \"weighted_round_robin\"\npriority = \"urgent\"",
        ));
        assert!(
            e.iter()
                .any(|m| m.starts_with("routes[0].priority: unknown priority \"urgent\"")),
            "{e:?}"
        );
        let text = GOOD.replace(
            "policy = \"weighted_round_robin\"",
            "policy = \"weighted_round_robin\"\ntrust_priority_header_from = [\"10.0.0.0/8\", \"10.0.0/8\"]",
        );
        let e = errors_of(&text);
        assert!(
            e.iter().any(|m| m.starts_with(
                "routes[0].trust_priority_header_from[1]: `10.0.0/8` is not a network"
            )),
            "{e:?}"
        );
        assert_eq!(e.len(), 1, "{e:?}");
    }
}
