//! The per-pool energy task: sample power, derive efficiency, run the
//! controller, apply its decisions, publish a [`PoolSummary`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::actions::{self, Action};
use super::config::{EnergyConfig, NodePowerConfig};
use super::controller::{Controller, NodeView};
use super::dcgm::{self, Reading};
use super::{EnergyHandle, NodeEnergy, PoolEnergy, PoolSummary};
use crate::balance::signals::queue_depth;
use crate::fleet::power::{ParkState, PowerSource};
use crate::fleet::{now_ns, Node, Pool};
use crate::health::now_ms;
use crate::telemetry::Telemetry;

/// Most bytes of an exporter page read.
const MAX_PAGE: usize = 4 * 1024 * 1024;

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

type ScrapeClient = Client<crate::tls::HttpsConnector, Empty<Bytes>>;

/// The power model of one node: pool defaults with the node's overrides.
#[derive(Debug, Clone, Copy)]
struct Model {
    idle: f64,
    max: f64,
    parked: f64,
    gpus: f64,
    saturation: f64,
}

impl Model {
    /// Estimated node watts with `running` requests in its batch: idle
    /// plus a share of the dynamic range growing with the log of the batch
    /// (large batches amortise the weight reads; see docs/energy.md).
    fn watts(&self, running: f64, state: ParkState) -> f64 {
        let per_gpu = match state {
            ParkState::Parked => self.parked,
            ParkState::Waking => self.idle,
            ParkState::Awake if running <= 0.0 => self.idle,
            ParkState::Awake => {
                let share = ((1.0 + running).ln() / (1.0 + self.saturation).ln()).clamp(0.0, 1.0);
                self.idle + (self.max - self.idle) * share
            }
        };
        per_gpu * self.gpus
    }
}

/// Where a node's measured power comes from.
#[derive(Debug, Clone)]
enum Exporter {
    /// A page for this node alone.
    Own(String),
    /// The pool's page, series matched by `Hostname`.
    Shared,
    None,
}

struct Sample {
    at: Instant,
    joules: Vec<f64>,
    tokens: Vec<u64>,
}

/// Start the energy task of `pool` (its nodes' configs in `nodes`, in
/// order) on the current tokio runtime.
pub fn spawn(
    pool: &Arc<Pool>,
    cfg: &EnergyConfig,
    nodes: &[Option<NodePowerConfig>],
    telemetry: &Arc<Telemetry>,
) -> EnergyHandle {
    let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
    for node in &pool.nodes {
        node.load.power.claim(owner);
        if cfg.consolidate.is_none() {
            node.load.power.set_active(true);
        }
    }
    let state = Arc::new(PoolEnergy::default());
    let task = tokio::spawn(run(
        Arc::clone(pool),
        cfg.clone(),
        nodes.to_vec(),
        Arc::clone(telemetry),
        Arc::clone(&state),
        owner,
    ));
    EnergyHandle {
        pool: pool.name.clone(),
        state,
        task,
    }
}

async fn fetch(client: &ScrapeClient, url: &str, timeout: Duration) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let request = Request::get(uri).body(Empty::new()).ok()?;
    let get = async {
        let response = client.request(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_PAGE)
            .collect()
            .await
            .ok()?
            .to_bytes();
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(timeout, get).await.ok().flatten()
}

fn host_of(node: &Node) -> &str {
    let a = node.addr.as_str();
    a.rsplit_once(':').map_or(a, |(h, _)| h)
}

async fn run(
    pool: Arc<Pool>,
    cfg: EnergyConfig,
    node_cfgs: Vec<Option<NodePowerConfig>>,
    telemetry: Arc<Telemetry>,
    state: Arc<PoolEnergy>,
    owner: u64,
) {
    let n = pool.nodes.len();
    let models: Vec<Model> = (0..n)
        .map(|i| {
            let own = node_cfgs.get(i).cloned().flatten().unwrap_or_default();
            Model {
                idle: own.idle_watts.unwrap_or(cfg.idle_watts),
                max: own.max_watts.unwrap_or(cfg.max_watts),
                parked: cfg.parked_watts,
                gpus: f64::from(own.gpus.unwrap_or(cfg.gpus).max(1)),
                saturation: cfg.saturation_batch,
            }
        })
        .collect();
    let exporters: Vec<Exporter> = pool
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let own = node_cfgs.get(i).cloned().flatten().unwrap_or_default();
            if let Some(url) = own.exporter_url {
                Exporter::Own(url)
            } else if let Some(path) = &cfg.exporter_path {
                let port = cfg
                    .exporter_port
                    .unwrap_or_else(|| node.addr.port_u16().unwrap_or(80));
                Exporter::Own(format!("http://{}:{port}{path}", host_of(node)))
            } else if cfg.exporter_url.is_some() {
                Exporter::Shared
            } else {
                Exporter::None
            }
        })
        .collect();
    let client: ScrapeClient = Client::builder(TokioExecutor::new()).build(
        crate::tls::https_connector(Arc::clone(&pool.tls), cfg.interval),
    );
    let action_client = actions::client(&pool);
    let mut controller = Controller::new(
        n,
        cfg.consolidate.clone(),
        cfg.parking.clone(),
        cfg.interval,
        Instant::now(),
    );
    let mut last_mj: Vec<Option<f64>> = vec![None; n];
    let mut last_at = Instant::now();
    let mut window: VecDeque<Sample> = VecDeque::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !pool
            .nodes
            .iter()
            .all(|node| node.load.power.owned_by(owner))
        {
            return; // a newer config's task took over
        }
        let now = Instant::now();
        let dt = now.saturating_duration_since(last_at).as_secs_f64();
        last_at = now;
        let ms = now_ms();

        // 1. Power per node: exporter pages, fetched concurrently.
        let shared = match &cfg.exporter_url {
            Some(url) => fetch(&client, url, cfg.interval).await,
            None => None,
        };
        let mut pages = tokio::task::JoinSet::new();
        for (i, exporter) in exporters.iter().enumerate() {
            if let Exporter::Own(url) = exporter {
                let (client, url, timeout) = (client.clone(), url.clone(), cfg.interval);
                pages.spawn(async move { (i, fetch(&client, &url, timeout).await) });
            }
        }
        let mut readings: Vec<Option<Reading>> = vec![None; n];
        while let Some(joined) = pages.join_next().await {
            if let Ok((i, Some(text))) = joined {
                readings[i] = Some(dcgm::read(&text, &[]));
            }
        }
        if let Some(page) = &shared {
            for (i, node) in pool.nodes.iter().enumerate() {
                if matches!(exporters[i], Exporter::Shared) {
                    readings[i] = Some(dcgm::read(page, &[node.name.as_str(), host_of(node)]));
                }
            }
        }
        let now_nanos = now_ns();
        for (i, node) in pool.nodes.iter().enumerate() {
            let power = &node.load.power;
            let park = power.state(ms);
            let measured = readings[i].filter(|r| r.watts.is_some() || r.energy_mj.is_some());
            match measured {
                Some(r) => {
                    let watts = r.watts.unwrap_or(0.0);
                    let joules = match (r.energy_mj, last_mj[i]) {
                        // The counter, unless it went back (GPU reset, reboot).
                        (Some(mj), Some(prev)) if mj >= prev => (mj - prev) / 1000.0,
                        _ => watts * dt,
                    };
                    last_mj[i] = r.energy_mj;
                    power.record(watts, joules, PowerSource::Measured);
                }
                None => {
                    last_mj[i] = None;
                    let running = queue_depth(node, now_nanos);
                    let watts = models[i].watts(running, park);
                    power.record(watts, watts * dt, PowerSource::Estimated);
                }
            }
        }

        // 2. Efficiency over the window, from the gateway's token counters.
        let mut tokens = vec![0u64; n];
        for series in telemetry.all_series() {
            if series.pool != pool.name {
                continue;
            }
            if let Some(i) = pool.nodes.iter().position(|n| n.name == series.node) {
                tokens[i] += series.tokens_out();
            }
        }
        let joules: Vec<f64> = pool.nodes.iter().map(|n| n.load.power.joules()).collect();
        window.push_back(Sample {
            at: now,
            joules: joules.clone(),
            tokens: tokens.clone(),
        });
        while window
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > cfg.window)
            && window.len() > 1
        {
            window.pop_front();
        }
        let first = window.front();

        // 3. Decide and apply.
        let views: Vec<NodeView> = pool
            .nodes
            .iter()
            .map(|node| NodeView {
                available: node.load.health.is_available(ms),
                state: node.load.power.state(ms),
                in_flight: queue_depth(node, now_nanos),
                requests: node.load.requests(),
                ttft: node.load.ai.ttft_secs(now_nanos),
                tpot: node.load.ai.tpot_secs(now_nanos),
            })
            .collect();
        let decision = controller.tick(now, &views);
        for (i, node) in pool.nodes.iter().enumerate() {
            node.load.power.set_active(decision.active[i]);
            node.load.power.set_parkable(decision.parkable[i]);
        }
        if let Some(parking) = &cfg.parking {
            for (list, action) in [
                (&decision.park, Action::Park),
                (&decision.wake, Action::Wake),
            ] {
                for &i in list {
                    let (pool, client, parking) =
                        (Arc::clone(&pool), action_client.clone(), parking.clone());
                    // Mark at once; the call runs on its own.
                    match action {
                        Action::Park => pool.nodes[i].load.power.set_parked(),
                        Action::Wake => pool.nodes[i].load.power.set_waking(u64::MAX),
                    }
                    tokio::spawn(async move {
                        actions::run(&client, &pool, &pool.nodes[i], action, &parking).await;
                    });
                }
            }
        }

        // 4. Publish.
        let mut summary = PoolSummary {
            pool: pool.name.clone(),
            window_secs: first.map_or(0.0, |f| now.saturating_duration_since(f.at).as_secs_f64()),
            consolidating: cfg.consolidate.is_some(),
            nodes_needed: decision.needed,
            ..PoolSummary::default()
        };
        for (i, node) in pool.nodes.iter().enumerate() {
            let p = &node.load.power;
            let watts = p.watts();
            let (wt, wj) = first.map_or((0, 0.0), |f| {
                (
                    tokens[i].saturating_sub(f.tokens[i]),
                    (joules[i] - f.joules[i]).max(0.0),
                )
            });
            let st = p.state(ms);
            let e = NodeEnergy {
                name: node.name.clone(),
                watts: watts.map(|w| w.0),
                source: watts.map(|w| w.1),
                joules_total: joules[i],
                window_tokens: wt,
                window_joules: wj,
                joules_per_token: (wt > 0).then(|| wj / wt as f64),
                tokens_per_joule: (wj > 0.0).then(|| wt as f64 / wj),
                state: st,
                active: decision.active[i],
                parkable: decision.parkable[i],
            };
            summary.watts += e.watts.unwrap_or(0.0);
            match e.source {
                Some(PowerSource::Measured) => summary.measured_nodes += 1,
                Some(PowerSource::Estimated) => summary.estimated_nodes += 1,
                None => {}
            }
            summary.joules_total += e.joules_total;
            summary.window_tokens += wt;
            summary.window_joules += wj;
            summary.active_nodes += usize::from(e.active && st == ParkState::Awake);
            summary.nodes_available +=
                usize::from(st == ParkState::Awake && node.load.health.is_available(ms));
            summary.parked_nodes += usize::from(st == ParkState::Parked);
            summary.waking_nodes += usize::from(st == ParkState::Waking);
            summary.parkable_nodes += usize::from(e.parkable);
            summary.nodes.push(e);
        }
        if summary.window_tokens > 0 {
            summary.joules_per_token = Some(summary.window_joules / summary.window_tokens as f64);
        }
        if summary.window_joules > 0.0 {
            summary.tokens_per_joule = Some(summary.window_tokens as f64 / summary.window_joules);
        }
        state.publish(summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_rises_with_batch_and_parks_low() {
        let m = Model {
            idle: 100.0,
            max: 700.0,
            parked: 5.0,
            gpus: 2.0,
            saturation: 63.0,
        };
        assert_eq!(m.watts(0.0, ParkState::Awake), 200.0);
        assert!(m.watts(1.0, ParkState::Awake) > 200.0);
        assert!(m.watts(16.0, ParkState::Awake) > m.watts(4.0, ParkState::Awake));
        assert_eq!(m.watts(63.0, ParkState::Awake), 1400.0);
        assert_eq!(m.watts(500.0, ParkState::Awake), 1400.0);
        assert_eq!(m.watts(9.0, ParkState::Parked), 10.0);
    }
}
