//! The routing table: a validated [`Config`] turned into what the request
//! path reads — compiled matchers, pools of [`Node`]s and policy instances. A table is immutable; a reload builds a new one and
//! swaps it in, and requests in flight keep the one they started with.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::balance::{self, Policy};
use crate::classify::{ApiFamily, ClassifyOptions, RequestClass};
use crate::config::{
    parse_node_addr, Config, ConfigError, FieldError, ListenerConfig, ModelPattern, TimeoutConfig,
    UpstreamProtocol,
};
use crate::fleet::capacity::{spawn_scrapers, ScraperHandle};
use crate::fleet::{LoadRegistry, Node, Pool};

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
        headers: &HeaderMap,
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
        if let Some(pattern) = &self.model {
            match &class.model {
                Some(model) if pattern.matches(model) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get(name) == Some(value))
    }
}

/// One route, ready for the request path.
pub struct Route {
    /// Route name.
    pub name: String,
    matcher: Matcher,
    /// The pool it sends to.
    pub pool: Arc<Pool>,
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
}

impl RouteTable {
    /// Build a table from a config. Validates again, so no unvalidated config
    /// can get here.
    pub fn build(config: &Config, loads: &LoadRegistry) -> Result<RouteTable, ConfigError> {
        config.validate()?;
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut protocols = HashMap::new();
        let mut keep = Vec::new();
        for (i, pool) in config.pools.iter().enumerate() {
            let mut nodes = Vec::with_capacity(pool.nodes.len());
            for (j, node) in pool.nodes.iter().enumerate() {
                let addr = parse_node_addr(&node.addr).map_err(|message| {
                    ConfigError::Invalid(vec![FieldError {
                        path: format!("pools[{i}].nodes[{j}].addr"),
                        message,
                    }])
                })?;
                keep.push((pool.name.clone(), node.name.clone()));
                nodes.push(Arc::new(Node {
                    name: node.name.clone(),
                    addr,
                    weight: node.weight.max(1),
                    max_concurrent: node.max_concurrent,
                    load: loads.load_for(&pool.name, &node.name),
                }));
            }
            protocols.insert(pool.name.clone(), pool.protocol);
            pools.push(Arc::new(Pool {
                name: pool.name.clone(),
                nodes,
            }));
        }
        loads.retain(&keep);
        // Scrapers run on the runtime building the table; without one
        // (config tooling) there is nothing to scrape for.
        let mut scrapers = Vec::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            for (pool, cfg) in pools.iter().zip(&config.pools) {
                if let Some(capacity) = &cfg.capacity {
                    scrapers.push(spawn_scrapers(pool, capacity));
                }
            }
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut models = BTreeSet::new();
        let mut max_body_bytes = config.listener.max_body_bytes;
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
            let policy = balance::build(&route.policy, &pool.nodes, &route.balance)
                .ok_or_else(|| invalid("policy", format!("unknown policy \"{}\"", route.policy)))?;
            let m = &route.matcher;
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
            let protocol = protocols.get(&route.pool).copied().unwrap_or_default();
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
                pool,
                protocol,
                policy,
                timeouts: route.timeouts,
                max_body_bytes: route_limit,
                retries: route.retries,
            });
        }
        Ok(RouteTable {
            routes,
            pools,
            models: models.into_iter().collect(),
            max_body_bytes,
            listener: config.listener.clone(),
            classify: ClassifyOptions {
                max_prefix_blocks: config.classify.max_prefix_blocks,
            },
            scrapers,
        })
    }

    /// The first route matching the request.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        class: &RequestClass,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path, headers, class))
    }

    /// Whether any route could serve `model` (for telling "unknown model"
    /// apart from "no route for this request").
    pub fn serves_model(&self, model: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.matcher.model.as_ref().is_none_or(|p| p.matches(model)))
    }
}
