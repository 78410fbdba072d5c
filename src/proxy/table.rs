//! The routing table: a validated [`Config`] turned into what the request
//! path reads — compiled matchers, pools of [`Node`]s and policy instances. A table is immutable; a reload builds a new one and
//! swaps it in, and requests in flight keep the one they started with.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::queue::{AdmissionQueue, QueueRegistry};
use super::retry::RetryBudget;
use crate::balance::{self, Policy, PrefixIndex};
use crate::classify::{ApiFamily, ClassifyOptions, RequestClass};
use crate::config::precise::PreciseOptions;
use crate::config::{
    parse_node_url, Config, ConfigError, FieldError, ListenerConfig, ModelPattern, TimeoutConfig,
    UpstreamProtocol,
};
use crate::fleet::capacity::{spawn_scrapers, ScraperHandle};
use crate::fleet::{LoadRegistry, Node, Pool};
use crate::header_lines::RequestHeaders;
use crate::health::OutlierConfig;
use crate::kvindex::Precise;
use crate::telemetry::Telemetry;

/// Which route, over which node list (an index addresses nodes by
/// position), with what capacity a prefix index was built for.
type IndexKey = (String, Vec<String>, usize);

/// Prefix indexes of the prefix-aware policies kept across reloads, so a
/// reload keeps a route's cache affinity: as it is when the pool's nodes are
/// unchanged (a weight or threshold change, an edit elsewhere), remapped by
/// node name when nodes were added, removed or reordered.
#[derive(Default)]
pub struct IndexRegistry {
    indexes: Mutex<HashMap<IndexKey, Arc<PrefixIndex>>>,
    /// Precise states (index + event subscriptions) of `precise_prefix`
    /// routes, kept while the route, its nodes and its options stay the same.
    precise: Mutex<HashMap<PreciseKey, Arc<Precise>>>,
}

/// Which route, over which `(name, host)` nodes, with which precise options
/// and prefix length.
type PreciseKey = (String, Vec<(String, String)>, PreciseOptions, usize);

impl IndexRegistry {
    fn get(&self, key: &IndexKey) -> Arc<PrefixIndex> {
        let mut indexes = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = indexes.get(key) {
            return Arc::clone(index);
        }
        // The same route over another node list (a node added, removed or
        // moved, e.g. through the console): carry affinity over by node
        // name into a copy; the old index stays with the old table until
        // `retain` drops it after a successful build.
        let earlier = indexes
            .iter()
            .find(|(k, _)| k.0 == key.0 && k.2 == key.2)
            .map(|(k, index)| (k.1.clone(), Arc::clone(index)));
        let index = match earlier {
            Some((old_nodes, old)) => {
                let position: Vec<Option<usize>> = old_nodes
                    .iter()
                    .map(|name| key.1.iter().position(|n| n == name))
                    .collect();
                Arc::new(old.remapped(&position))
            }
            None => Arc::new(PrefixIndex::new(key.2)),
        };
        indexes.insert(key.clone(), Arc::clone(&index));
        index
    }

    fn retain(&self, keep: &[IndexKey]) {
        let mut indexes = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        indexes.retain(|key, _| keep.contains(key));
    }

    /// The precise state for `key`, started when new.
    fn precise(&self, key: &PreciseKey) -> Result<Arc<Precise>, (String, String)> {
        let mut states = self.precise.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = states.get(key) {
            return Ok(Arc::clone(state));
        }
        let state = Arc::new(Precise::start(&key.1, &key.2, key.3)?);
        states.insert(key.clone(), Arc::clone(&state));
        Ok(state)
    }

    fn retain_precise(&self, keep: &[PreciseKey]) {
        let mut states = self.precise.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|key, _| keep.contains(key));
    }
}

/// Compiled route conditions.
#[derive(Debug)]
struct Matcher {
    family: Option<ApiFamily>,
    path_prefix: Option<String>,
    method: Option<Method>,
    model: Option<ModelPattern>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    fn matches(
        &self,
        method: &Method,
        path: &str,
        headers: RequestHeaders<'_>,
        class: &RequestClass,
    ) -> bool {
        if let Some(pattern) = &self.model {
            match &class.model {
                Some(model) if pattern.matches(model) => {}
                _ => return false,
            }
        }
        self.matches_but_model(method, path, headers, class)
    }

    /// Every condition but the model.
    fn matches_but_model(
        &self,
        method: &Method,
        path: &str,
        headers: RequestHeaders<'_>,
        class: &RequestClass,
    ) -> bool {
        if self.family.is_some_and(|f| f != class.family) {
            return false;
        }
        if self
            .path_prefix
            .as_deref()
            .is_some_and(|p| !path.starts_with(p))
        {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get(name) == Some(value.as_bytes()))
    }
}

/// One route, ready for the request path.
pub struct Route {
    /// Route name.
    pub name: String,
    matcher: Matcher,
    /// The pool it sends to.
    pub pool: Arc<Pool>,
    /// Pool-wide settings (queueing, slow start, panic threshold).
    pub pool_settings: PoolSettings,
    /// Where requests wait when every node of the pool is at its limit.
    pub queue: Arc<AdmissionQueue>,
    /// Passive outlier detection settings of the pool.
    pub outlier: Arc<OutlierConfig>,
    /// Whether the last pick found the pool in panic mode (for logging
    /// transitions once, and for metrics).
    pub panicking: AtomicBool,
    /// The retry budget (fresh on every reload).
    pub retry_budget: RetryBudget,
    /// Node statuses retried on another node (bit `s - 500`).
    retry_on_status: u128,
    /// Protocol to the pool's nodes.
    pub protocol: UpstreamProtocol,
    /// The balancing policy, built for this pool.
    pub policy: Arc<dyn Policy>,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// Most request-body bytes.
    pub max_body_bytes: u64,
    /// Extra attempts after a failure before the first response byte.
    pub retries: u32,
    /// How its requests' queue priority is decided.
    pub priority: super::priority::PriorityRule,
    /// Counters of this route's nodes (by node index).
    pub telemetry: crate::telemetry::RouteTelemetry,
    /// Per-tenant budgets (`[routes.budget]`); fresh on every reload.
    pub budget: Option<Arc<crate::tenant::Budgets>>,
}

/// Pool-wide settings a route needs on the request path.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Queue bound.
    pub queue_size: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// Slow-start window (zero: off).
    pub slow_start: Duration,
}

impl Route {
    /// Whether the route takes OpenAI requests (its family is OpenAI or
    /// any), so its pool's nodes are asked for `/v1/models`.
    pub fn lists_openai_models(&self) -> bool {
        self.matcher.family.is_none_or(|f| f == ApiFamily::OpenAi)
    }

    /// The route's model condition, if it has one.
    pub fn model_pattern(&self) -> Option<&ModelPattern> {
        self.matcher.model.as_ref()
    }

    /// Whether a node's answer with `status` is tried again elsewhere.
    pub fn retries_status(&self, status: u16) -> bool {
        status
            .checked_sub(500)
            .filter(|bit| *bit < 100)
            .is_some_and(|bit| self.retry_on_status & (1u128 << bit) != 0)
    }
}

/// The whole routing state of one config version.
pub struct RouteTable {
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Pools by config order.
    pub pools: Vec<Arc<Pool>>,
    /// Exact model names routes serve, sorted (for `GET /v1/models`).
    pub models: Vec<String>,
    /// Largest body any route accepts: the limit while the body is read
    /// before the route is known.
    pub max_body_bytes: u64,
    /// Listener settings (applied at start; a reload does not rebind).
    pub listener: ListenerConfig,
    /// Classification options.
    pub classify: ClassifyOptions,
    /// Metrics scrapers of pools with `[pools.capacity]`; they stop when
    /// the table is dropped (after a reload, once its last request ends).
    pub scrapers: Vec<ScraperHandle>,
    /// Energy tasks of pools with `[pools.energy]` (stop with the table).
    pub energy: Vec<crate::energy::EnergyHandle>,
}

impl RouteTable {
    /// What telemetry reports on, borrowed from this table.
    pub fn fleet_view(&self) -> crate::telemetry::FleetView<'_> {
        use crate::telemetry::{FleetView, PoolState, PreciseRoute};
        FleetView {
            pools: self
                .pools
                .iter()
                .map(|pool| PoolState {
                    pool,
                    queue_depth: self
                        .routes
                        .iter()
                        .find(|r| r.pool.name == pool.name)
                        .map(|r| r.queue.len()),
                })
                .collect(),
            precise: self
                .routes
                .iter()
                .filter_map(|r| {
                    r.policy.precise().map(|precise| PreciseRoute {
                        route: &r.name,
                        precise,
                        nodes: &r.pool.nodes,
                    })
                })
                .collect(),
            budgets: self
                .routes
                .iter()
                .filter_map(|r| r.budget.as_ref().map(|b| b.view(&r.name)))
                .collect(),
            energy: &self.energy,
        }
    }

    /// Build a table from a config. Validates again, so no unvalidated config
    /// can get here.
    pub fn build(
        config: &Config,
        loads: &LoadRegistry,
        queues: &QueueRegistry,
    ) -> Result<RouteTable, ConfigError> {
        Self::build_with(
            config,
            loads,
            queues,
            &IndexRegistry::default(),
            &Telemetry::disabled(),
        )
    }

    /// [`RouteTable::build`] with series from `telemetry` (kept across
    /// reloads by (route, pool, node)).
    pub fn build_with(
        config: &Config,
        loads: &LoadRegistry,
        queues: &QueueRegistry,
        indexes: &IndexRegistry,
        telemetry: &Arc<Telemetry>,
    ) -> Result<RouteTable, ConfigError> {
        config.validate()?;
        let mut keep_indexes = Vec::new();
        let mut keep_precise = Vec::new();
        let mut capture_prompt = false;
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut settings = HashMap::new();
        let mut keep = Vec::new();
        for (i, pool) in config.pools.iter().enumerate() {
            let tls = match &pool.tls {
                Some(tls) => crate::tls::client_config(tls).map_err(|message| {
                    ConfigError::Invalid(vec![FieldError {
                        path: format!("pools[{i}].tls"),
                        message,
                    }])
                })?,
                None => crate::tls::default_client_config(),
            };
            let mut nodes = Vec::with_capacity(pool.nodes.len());
            for (j, node) in pool.nodes.iter().enumerate() {
                let (addr, https) = parse_node_url(&node.addr).map_err(|message| {
                    ConfigError::Invalid(vec![FieldError {
                        path: format!("pools[{i}].nodes[{j}].addr"),
                        message,
                    }])
                })?;
                keep.push((pool.name.clone(), node.name.clone()));
                let load = loads.load_for(&pool.name, &node.name);
                load.health
                    .set_label(&format!("{}/{}", pool.name, node.name));
                nodes.push(Arc::new(Node {
                    name: node.name.clone(),
                    addr,
                    https,
                    weight: node.weight.max(1),
                    max_concurrent: node.max_concurrent,
                    max_inflight_tokens: node.max_inflight_tokens,
                    load,
                    source: node.source.clone(),
                }));
            }
            settings.insert(
                pool.name.clone(),
                (
                    pool.protocol,
                    Arc::new(pool.outlier.clone()),
                    PoolSettings {
                        queue_size: pool.queue_size,
                        queue_timeout: pool.queue_timeout,
                        slow_start: pool.slow_start,
                    },
                ),
            );
            pools.push(Arc::new(Pool {
                name: pool.name.clone(),
                nodes,
                panic_threshold: pool.panic_threshold,
                failure_window_ms: pool.outlier.base_ejection_time.as_millis() as u64,
                tls,
            }));
        }
        loads.retain(&keep);
        // Scrapers run on the runtime building the table; without one
        // (config tooling) there is nothing to scrape for.
        let mut scrapers = Vec::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            for (pool, cfg) in pools.iter().zip(&config.pools) {
                match &cfg.capacity {
                    Some(capacity) => scrapers.push(spawn_scrapers(pool, capacity)),
                    None => pool.nodes.iter().for_each(|n| n.load.ai.capacity.disable()),
                }
            }
        }
        let mut energy = Vec::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            for (pool, cfg) in pools.iter().zip(&config.pools) {
                if let Some(e) = &cfg.energy {
                    let nodes: Vec<_> = cfg.nodes.iter().map(|n| n.power.clone()).collect();
                    energy.push(crate::energy::spawn(pool, e, &nodes, telemetry));
                }
            }
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut models = BTreeSet::new();
        let mut max_body_bytes = config.listener.max_body_bytes;
        let mut keep_series = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            let invalid = |field: &str, message: String| {
                ConfigError::Invalid(vec![FieldError {
                    path: format!("routes[{i}].{field}"),
                    message,
                }])
            };
            let pool = pools
                .iter()
                .find(|p| p.name == route.pool)
                .cloned()
                .ok_or_else(|| invalid("pool", format!("unknown pool \"{}\"", route.pool)))?;
            let node_names: Vec<String> = pool.nodes.iter().map(|n| n.name.clone()).collect();
            let index_key = (
                route.name.clone(),
                node_names.clone(),
                route.balance.prefix_capacity,
            );
            let policy: Arc<dyn Policy> = if route.policy == "precise_prefix" {
                let hosts = pool
                    .nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.addr.host().to_string()))
                    .collect();
                let key = (
                    route.name.clone(),
                    hosts,
                    route.balance.precise.clone(),
                    config.classify.max_prefix_blocks,
                );
                let state = indexes.precise(&key).map_err(|(field, message)| {
                    invalid(&format!("balance.precise.{field}"), message)
                })?;
                keep_precise.push(key);
                keep_indexes.push(index_key.clone());
                capture_prompt = true;
                Arc::new(balance::PrecisePrefix::new(
                    &route.balance,
                    indexes.get(&index_key),
                    Some(state),
                ))
            } else {
                balance::build_with_index(&route.policy, &pool.nodes, &route.balance, || {
                    keep_indexes.push(index_key.clone());
                    indexes.get(&index_key)
                })
                .ok_or_else(|| invalid("policy", format!("unknown policy \"{}\"", route.policy)))?
            };
            let untracked = balance::nodes_past_prefix_memory(&route.policy, pool.nodes.len());
            if untracked > 0 {
                tracing::warn!(
                    route = %route.name,
                    pool = %pool.name,
                    nodes = pool.nodes.len(),
                    untracked,
                    "the route's prefix memory covers the pool's first {} nodes: prompts sent to the other {untracked} are not remembered there",
                    balance::prefix_index::MAX_NODES
                );
            }
            // `[pools.energy.consolidate]`: the policy picks inside the active set.
            let consolidate = config
                .pools
                .iter()
                .find(|p| p.name == route.pool)
                .and_then(|p| p.energy.as_ref())
                .and_then(|e| e.consolidate.as_ref());
            let policy: Arc<dyn balance::Policy> = match consolidate {
                Some(c) => Arc::new(balance::Consolidate::new(policy, c.target_batch)),
                None => policy,
            };
            let m = &route.matcher;
            for node in &node_names {
                keep_series.push((route.name.clone(), pool.name.clone(), node.clone()));
            }
            let route_telemetry = telemetry.route(
                &route.name,
                m.model.as_deref().unwrap_or("*"),
                &pool.name,
                &node_names,
            );
            let model = m.model.as_deref().map(ModelPattern::new);
            if let Some(name) = model.as_ref().and_then(|p| p.exact()) {
                models.insert(name.to_string());
            }
            let mut headers = Vec::new();
            for (name, value) in &m.headers {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid("match.headers", format!("`{name}` is not a header name"))
                })?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| invalid("match.headers", "invalid header value".into()))?;
                headers.push((name, value));
            }
            let route_limit = route
                .max_body_bytes
                .unwrap_or(config.listener.max_body_bytes);
            max_body_bytes = max_body_bytes.max(route_limit);
            let Some((protocol, outlier, pool_settings)) = settings.get(&route.pool).cloned()
            else {
                return Err(invalid("pool", format!("unknown pool \"{}\"", route.pool)));
            };
            routes.push(Route {
                name: route.name.clone(),
                matcher: Matcher {
                    family: m.family.as_deref().and_then(ApiFamily::from_name),
                    path_prefix: m.path_prefix.clone(),
                    method: m
                        .method
                        .as_deref()
                        .and_then(|s| Method::from_bytes(s.as_bytes()).ok()),
                    model,
                    headers,
                },
                queue: queues.queue_for(&pool.name),
                pool,
                pool_settings,
                outlier,
                panicking: AtomicBool::new(false),
                retry_budget: RetryBudget::new(route.retry_budget),
                retry_on_status: route
                    .retry_on_status
                    .iter()
                    .filter_map(|s| s.checked_sub(500).filter(|bit| *bit < 100))
                    .fold(0u128, |bits, bit| bits | (1u128 << bit)),
                protocol,
                policy,
                timeouts: route.timeouts,
                max_body_bytes: route_limit,
                retries: route.retries,
                priority: super::priority::PriorityRule::of(route),
                telemetry: route_telemetry,
                budget: route
                    .budget
                    .as_ref()
                    .map(|b| Arc::new(crate::tenant::Budgets::new(b))),
            });
        }
        telemetry.retain(&keep_series);
        indexes.retain(&keep_indexes);
        indexes.retain_precise(&keep_precise);
        Ok(RouteTable {
            routes,
            pools,
            models: models.into_iter().collect(),
            max_body_bytes,
            listener: config.listener.clone(),
            classify: ClassifyOptions {
                // The prompt's block hashes are read only by the policies
                // that keep a prefix index (`prefix_aware`, `composite`,
                // `precise_prefix`'s fallback): with none in the table, a
                // body is not hashed (the token estimate still counts
                // every byte).
                max_prefix_blocks: if keep_indexes.is_empty() {
                    0
                } else {
                    config.classify.max_prefix_blocks
                },
                // Enough text for the prefix's blocks at a few bytes a token.
                capture_prompt_bytes: if capture_prompt {
                    config.classify.max_prefix_blocks * crate::classify::prefix::BLOCK_BYTES * 2
                } else {
                    0
                },
            },
            scrapers,
            energy,
        })
    }

    /// The first route matching the request.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        headers: RequestHeaders<'_>,
        class: &RequestClass,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path, headers, class))
    }

    /// Whether a route that matches by model would take this request if
    /// it named a model (for telling a request without `model` that needs
    /// one, a 400, from one no route serves).
    pub fn needs_model(
        &self,
        method: &Method,
        path: &str,
        headers: RequestHeaders<'_>,
        class: &RequestClass,
    ) -> bool {
        class.model.is_none()
            && self.routes.iter().any(|r| {
                r.matcher.model.is_some()
                    && r.matcher.matches_but_model(method, path, headers, class)
            })
    }

    /// Whether any route could serve `model` (for telling "unknown model"
    /// apart from "no route for this request").
    pub fn serves_model(&self, model: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.matcher.model.as_ref().is_none_or(|p| p.matches(model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(route_extra: &str) -> RouteTable {
        let text = format!(
            "[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\n{route_extra}\n"
        );
        let config = Config::from_toml(&text).unwrap();
        RouteTable::build(&config, &LoadRegistry::default(), &QueueRegistry::default()).unwrap()
    }

    /// Prompts are hashed into block chains only when a policy reads them.
    #[test]
    fn prompts_are_hashed_only_for_policies_that_read_the_chain() {
        assert_eq!(table("").classify.max_prefix_blocks, 0);
        assert_eq!(
            table("policy = \"round_robin\"").classify.max_prefix_blocks,
            0
        );
        for policy in ["prefix_aware", "composite"] {
            let t = table(&format!("policy = \"{policy}\""));
            assert_eq!(t.classify.max_prefix_blocks, 256, "{policy}");
        }
    }

    #[test]
    fn retry_on_status_defaults_and_overrides() {
        let t = table("");
        let route = &t.routes[0];
        for status in [500, 502, 503, 504] {
            assert!(route.retries_status(status), "{status}");
        }
        for status in [200, 400, 429, 501, 505, 599, 600, 0] {
            assert!(!route.retries_status(status), "{status}");
        }
        let t = table("retry_on_status = [503]");
        assert!(t.routes[0].retries_status(503));
        assert!(!t.routes[0].retries_status(500));
        let t = table("retry_on_status = []");
        assert!(!t.routes[0].retries_status(503));
    }
}
