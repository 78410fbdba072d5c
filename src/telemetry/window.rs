//! The rolling window: once a second the ticker folds the counters into one
//! point per node (requests, errors, in flight, p50/p99 latency and TTFT of
//! that second) kept for 15 minutes, and publishes a [`Snapshot`] of the
//! fleet (health, shares, recent percentiles, imbalance, alerts) that the
//! dashboard, the admin API and the alert rules read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use super::hist::HistSnapshot;
use super::FleetView;
use super::Telemetry;
use crate::health::{self, HealthState};

/// Points kept per node: 15 minutes at one per second.
pub const WINDOW_POINTS: usize = 900;
/// Seconds behind the "recent" figures (percentiles, shares).
pub const RECENT_SECS: usize = 10;
/// Fewest requests in the recent window before a pool's imbalance is judged.
pub const IMBALANCE_MIN_REQUESTS: u64 = 20;

#[derive(Debug, Clone, Copy, Default)]
struct Cum {
    requests: u64,
    errors: u64,
    tokens_out: u64,
    duration: HistSnapshot,
    ttft: HistSnapshot,
}

impl Cum {
    fn since(&self, e: &Cum) -> Cum {
        Cum {
            requests: self.requests.saturating_sub(e.requests),
            errors: self.errors.saturating_sub(e.errors),
            tokens_out: self.tokens_out.saturating_sub(e.tokens_out),
            duration: self.duration.since(&e.duration),
            ttft: self.ttft.since(&e.ttft),
        }
    }
}

/// One node's second.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    requests: u32,
    errors: u32,
    in_flight: u32,
    p50: Option<f32>,
    p99: Option<f32>,
    ttft_p50: Option<f32>,
    ttft_p99: Option<f32>,
}

struct Tick {
    unix_ms: u64,
    points: Vec<(u32, Point)>,
}

#[derive(Default)]
struct Inner {
    ids: HashMap<(String, String), u32>,
    names: Vec<(String, String)>,
    rings: HashMap<u32, VecDeque<Cum>>,
    shed_rings: HashMap<String, VecDeque<u64>>,
    ticks: VecDeque<Tick>,
}

impl Inner {
    fn id(&mut self, pool: &str, node: &str) -> u32 {
        if let Some(&id) = self.ids.get(&(pool.to_string(), node.to_string())) {
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push((pool.to_string(), node.to_string()));
        self.ids.insert((pool.to_string(), node.to_string()), id);
        id
    }
}

/// The window and the latest snapshot.
pub struct Window {
    inner: Mutex<Inner>,
    latest: watch::Sender<Arc<Snapshot>>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            inner: Mutex::default(),
            latest: watch::channel(Arc::new(Snapshot::default())).0,
        }
    }
}

/// Fleet state at one tick (`GET /api/v1/nodes`, the SSE stream).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Seconds since the gateway started.
    pub uptime_s: u64,
    /// Seconds the "recent" figures cover.
    pub recent_s: usize,
    /// Pools in config order.
    pub pools: Vec<PoolView>,
    /// Alerts firing now.
    pub alerts_active: Vec<crate::alerts::AlertView>,
    /// Latest alert transitions, newest first (bounded).
    pub alerts_recent: Vec<crate::alerts::AlertEvent>,
    /// Per-tenant budgets of the routes that have one (busiest tenants,
    /// then `other`).
    pub budgets: Vec<crate::tenant::BudgetView>,
}

/// One pool in a [`Snapshot`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolView {
    /// Pool name.
    pub name: String,
    /// Nodes available now (healthy, not ejected, not draining).
    pub healthy: usize,
    /// Nodes in the pool.
    pub total: usize,
    /// In panic mode (routing ignores health).
    pub panic: bool,
    /// Requests per second over the recent window.
    pub rate: f64,
    /// Requests shed per second over the recent window.
    pub shed_rate: f64,
    /// Requests shed since start.
    pub shed_total: u64,
    /// p99 latency over the recent window, seconds.
    pub p99: Option<f64>,
    /// p99 time to first token over the recent window, seconds.
    pub ttft_p99: Option<f64>,
    /// How evenly traffic follows the expected shares.
    pub imbalance: Imbalance,
    /// Joules per output token over the energy window (`[pools.energy]`).
    pub joules_per_token: Option<f64>,
    /// Nodes needed beyond those available (`[pools.energy]`; 0 when enough).
    pub nodes_short: Option<f64>,
    /// The nodes.
    pub nodes: Vec<NodeView>,
}

/// Imbalance of one pool over the recent window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Imbalance {
    /// Largest |share - expected| / expected among available nodes.
    pub max_deviation: Option<f64>,
    /// Max / min of share / expected among available nodes (load per unit
    /// of weight).
    pub max_min_ratio: Option<f64>,
    /// `ok`, `warn` (deviation over 25 %), `bad` (over 50 %), or `idle`
    /// (too little traffic to judge).
    pub level: &'static str,
}

/// One node in a [`Snapshot`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// Where the node came from: `config` (the file) or its discovery
    /// source (`kubernetes:ns/service`, `dns:name`).
    pub source: String,
    /// Configured weight.
    pub weight: u32,
    /// Health state.
    pub state: &'static str,
    /// Why.
    pub reason: String,
    /// Seconds in this state.
    pub since_s: u64,
    /// Ejections since start.
    pub ejections: u32,
    /// Attempts in flight now.
    pub in_flight: u64,
    /// Attempts since start.
    pub requests: u64,
    /// Failed attempts (5xx, no response) since start.
    pub errors: u64,
    /// Output tokens since start.
    pub tokens_out: u64,
    /// Attempts in the last second.
    pub rate_1s: f64,
    /// Attempts per second over the recent window.
    pub rate: f64,
    /// Failed share of attempts over the recent window.
    pub error_rate: f64,
    /// Share of the pool's attempts over the recent window.
    pub share: f64,
    /// Share the weights give it among available nodes.
    pub expected_share: f64,
    /// Concurrency limit, if any (saturation = in_flight / limit).
    pub max_concurrent: Option<u32>,
    /// Latency percentiles over the recent window, seconds.
    pub p50: Option<f64>,
    /// p99.
    pub p99: Option<f64>,
    /// TTFT p50.
    pub ttft_p50: Option<f64>,
    /// TTFT p99.
    pub ttft_p99: Option<f64>,
    /// Latency p99 in the last second (chart).
    pub p99_1s: Option<f64>,
    /// What the node's own `/metrics` said and the scrape health, when
    /// its pool scrapes (`[pools.capacity]`).
    pub scrape: Option<super::scrape::ScrapeView>,
}

fn state_name(s: HealthState) -> &'static str {
    match s {
        HealthState::Healthy => "healthy",
        HealthState::Unhealthy => "unhealthy",
        HealthState::Ejected => "ejected",
        HealthState::Draining => "draining",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Window {
    /// Subscribe to snapshots (one per tick).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.latest.subscribe()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.borrow())
    }

    /// One tick: fold counters, evaluate alerts, publish a snapshot.
    pub fn tick(&self, telemetry: &Telemetry, fleet: &FleetView<'_>) -> Arc<Snapshot> {
        let mut snapshot = self.compute(telemetry, fleet);
        telemetry.alerts.evaluate(&snapshot);
        snapshot.alerts_active = telemetry.alerts.active();
        snapshot.alerts_recent = telemetry.alerts.history(20);
        let snapshot = Arc::new(snapshot);
        self.latest.send_replace(Arc::clone(&snapshot));
        snapshot
    }

    fn compute(&self, telemetry: &Telemetry, fleet: &FleetView<'_>) -> Snapshot {
        let now = health::now_ms();
        let mut cums: HashMap<(&str, &str), Cum> = HashMap::new();
        let series = telemetry.all_series();
        for s in &series {
            let c = cums.entry((&s.pool, &s.node)).or_default();
            let t = s.totals();
            c.requests += t.requests();
            c.errors += t.errors();
            c.tokens_out += t.tokens_out;
            c.duration.merge(&t.duration);
            c.ttft.merge(&t.ttft);
        }
        let shed: HashMap<String, u64> = telemetry
            .all_shed()
            .into_iter()
            .map(|(pool, s)| {
                let total = s
                    .counts
                    .iter()
                    .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                (pool, total)
            })
            .collect();

        let mut inner = lock(&self.inner);
        let mut points = Vec::new();
        let mut pools = Vec::with_capacity(fleet.pools.len());
        for state in &fleet.pools {
            let pool = state.pool;
            let available: Vec<bool> = pool
                .nodes
                .iter()
                .map(|n| n.load.health.is_available(now) && !n.load.health.is_draining())
                .collect();
            let weight_sum: u64 = pool
                .nodes
                .iter()
                .zip(&available)
                .filter(|(_, a)| **a)
                .map(|(n, _)| u64::from(n.weight))
                .sum();
            let mut recent_total = 0u64;
            let mut pool_dur = HistSnapshot::default();
            let mut pool_ttft = HistSnapshot::default();
            let mut nodes = Vec::with_capacity(pool.nodes.len());
            let mut span_secs = 1usize;
            for (node, &avail) in pool.nodes.iter().zip(&available) {
                let id = inner.id(&pool.name, &node.name);
                let cum = cums
                    .get(&(pool.name.as_str(), node.name.as_str()))
                    .copied()
                    .unwrap_or_default();
                let ring = inner.rings.entry(id).or_default();
                let sec = ring.back().map_or(Cum::default(), |p| cum.since(p));
                let recent = ring.front().map_or(Cum::default(), |p| cum.since(p));
                span_secs = span_secs.max(ring.len());
                ring.push_back(cum);
                while ring.len() > RECENT_SECS + 1 {
                    ring.pop_front();
                }
                let status = node.load.health.status(now);
                let in_flight = node.load.outstanding();
                let q = |h: &HistSnapshot, q: f64| h.quantile(q);
                points.push((
                    id,
                    Point {
                        requests: u32::try_from(sec.requests).unwrap_or(u32::MAX),
                        errors: u32::try_from(sec.errors).unwrap_or(u32::MAX),
                        in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
                        p50: q(&sec.duration, 0.5).map(|v| v as f32),
                        p99: q(&sec.duration, 0.99).map(|v| v as f32),
                        ttft_p50: q(&sec.ttft, 0.5).map(|v| v as f32),
                        ttft_p99: q(&sec.ttft, 0.99).map(|v| v as f32),
                    },
                ));
                recent_total += recent.requests;
                pool_dur.merge(&recent.duration);
                pool_ttft.merge(&recent.ttft);
                nodes.push((
                    NodeView {
                        name: node.name.clone(),
                        addr: node.addr.to_string(),
                        source: node.source.clone().unwrap_or_else(|| "config".into()),
                        weight: node.weight,
                        state: state_name(status.state),
                        reason: status.reason,
                        since_s: now.saturating_sub(status.since_ms) / 1000,
                        ejections: status.ejections,
                        in_flight,
                        requests: cum.requests,
                        errors: cum.errors,
                        tokens_out: cum.tokens_out,
                        rate_1s: sec.requests as f64,
                        rate: 0.0,
                        error_rate: if recent.requests == 0 {
                            0.0
                        } else {
                            recent.errors as f64 / recent.requests as f64
                        },
                        share: 0.0,
                        expected_share: if avail && weight_sum > 0 {
                            f64::from(node.weight) / weight_sum as f64
                        } else {
                            0.0
                        },
                        max_concurrent: node.max_concurrent,
                        p50: q(&recent.duration, 0.5),
                        p99: q(&recent.duration, 0.99),
                        ttft_p50: q(&recent.ttft, 0.5),
                        ttft_p99: q(&recent.ttft, 0.99),
                        p99_1s: q(&sec.duration, 0.99),
                        scrape: {
                            let now = crate::fleet::now_ns();
                            super::scrape::ScrapeView::of(
                                &node.load.ai.capacity.report(now),
                                node.load.ai.lora.report(now),
                            )
                        },
                    },
                    recent.requests,
                ));
            }
            let span = span_secs.clamp(1, RECENT_SECS) as f64;
            let mut ratios = Vec::new();
            let mut max_dev: Option<f64> = None;
            let nodes: Vec<NodeView> = nodes
                .into_iter()
                .map(|(mut v, recent)| {
                    v.rate = recent as f64 / span;
                    if recent_total > 0 {
                        v.share = recent as f64 / recent_total as f64;
                    }
                    if v.expected_share > 0.0 && recent_total >= IMBALANCE_MIN_REQUESTS {
                        let ratio = v.share / v.expected_share;
                        ratios.push(ratio);
                        let dev = (ratio - 1.0).abs();
                        max_dev = Some(max_dev.map_or(dev, |m: f64| m.max(dev)));
                    }
                    v
                })
                .collect();
            let max_min_ratio = if ratios.len() >= 2 {
                let max = ratios.iter().copied().fold(0.0, f64::max);
                let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                Some(if min > 0.0 { max / min } else { 99.0 })
            } else {
                None
            };
            let level = match max_dev {
                None => "idle",
                Some(d) if d > 0.5 => "bad",
                Some(d) if d > 0.25 => "warn",
                Some(_) => "ok",
            };
            let shed_total = shed.get(&pool.name).copied().unwrap_or(0);
            let shed_ring = inner.shed_rings.entry(pool.name.clone()).or_default();
            let shed_recent = shed_ring
                .front()
                .map_or(0, |f| shed_total.saturating_sub(*f));
            let shed_span = shed_ring.len().clamp(1, RECENT_SECS) as f64;
            shed_ring.push_back(shed_total);
            while shed_ring.len() > RECENT_SECS + 1 {
                shed_ring.pop_front();
            }
            let energy = fleet
                .energy
                .iter()
                .find(|h| h.pool == pool.name)
                .map(|h| h.state.summary());
            pools.push(PoolView {
                name: pool.name.clone(),
                healthy: available.iter().filter(|a| **a).count(),
                total: pool.nodes.len(),
                panic: pool.in_panic(now),
                rate: recent_total as f64 / span,
                shed_rate: shed_recent as f64 / shed_span,
                shed_total,
                p99: pool_dur.quantile(0.99),
                ttft_p99: pool_ttft.quantile(0.99),
                imbalance: Imbalance {
                    max_deviation: max_dev,
                    max_min_ratio,
                    level,
                },
                joules_per_token: energy.as_ref().and_then(|e| e.joules_per_token),
                nodes_short: energy
                    .as_ref()
                    .map(|e| e.nodes_needed.saturating_sub(e.nodes_available) as f64),
                nodes,
            });
        }
        let unix = super::unix_ms();
        inner.ticks.push_back(Tick {
            unix_ms: unix,
            points,
        });
        while inner.ticks.len() > WINDOW_POINTS {
            inner.ticks.pop_front();
        }
        Snapshot {
            unix_ms: unix,
            uptime_s: telemetry.uptime().as_secs(),
            recent_s: RECENT_SECS,
            pools,
            alerts_active: Vec::new(),
            alerts_recent: Vec::new(),
            budgets: fleet.budgets.clone(),
        }
    }

    /// The last `seconds` of the window as columns per node
    /// (`GET /api/v1/series`). Latencies in milliseconds; `null` where a
    /// node had no point or no requests.
    pub fn series(&self, seconds: usize) -> serde_json::Value {
        let inner = lock(&self.inner);
        let n = seconds.min(inner.ticks.len());
        let ticks: Vec<&Tick> = inner.ticks.iter().skip(inner.ticks.len() - n).collect();
        struct Cols {
            requests: Vec<Option<u32>>,
            errors: Vec<Option<u32>>,
            in_flight: Vec<Option<u32>>,
            p50: Vec<Option<f32>>,
            p99: Vec<Option<f32>>,
            ttft_p50: Vec<Option<f32>>,
            ttft_p99: Vec<Option<f32>>,
        }
        let mut cols: std::collections::BTreeMap<u32, Cols> = std::collections::BTreeMap::new();
        for (i, tick) in ticks.iter().enumerate() {
            for (id, p) in &tick.points {
                let c = cols.entry(*id).or_insert_with(|| Cols {
                    requests: vec![None; n],
                    errors: vec![None; n],
                    in_flight: vec![None; n],
                    p50: vec![None; n],
                    p99: vec![None; n],
                    ttft_p50: vec![None; n],
                    ttft_p99: vec![None; n],
                });
                let ms = |v: Option<f32>| v.map(|s| (s * 10000.0).round() / 10.0);
                c.requests[i] = Some(p.requests);
                c.errors[i] = Some(p.errors);
                c.in_flight[i] = Some(p.in_flight);
                c.p50[i] = ms(p.p50);
                c.p99[i] = ms(p.p99);
                c.ttft_p50[i] = ms(p.ttft_p50);
                c.ttft_p99[i] = ms(p.ttft_p99);
            }
        }
        let nodes: Vec<serde_json::Value> = cols
            .into_iter()
            .map(|(id, c)| {
                let (pool, node) = inner.names.get(id as usize).cloned().unwrap_or_default();
                serde_json::json!({
                    "pool": pool, "node": node,
                    "requests": c.requests, "errors": c.errors, "in_flight": c.in_flight,
                    "p50_ms": c.p50, "p99_ms": c.p99,
                    "ttft_p50_ms": c.ttft_p50, "ttft_p99_ms": c.ttft_p99,
                })
            })
            .collect();
        serde_json::json!({
            "interval_s": 1,
            "t": ticks.iter().map(|t| t.unix_ms).collect::<Vec<_>>(),
            "nodes": nodes,
        })
    }
}
