//! Energy awareness through a real gateway in front of simulated nodes:
//! power read from the simulator's DCGM exporter names, consolidation,
//! parking and its health-check exemption, config errors.

use std::time::Duration;

use crate::common::*;
use infergate::config::{Config, ConfigError};
use infergate::energy::PoolSummary;
use infergate::fleet::power::{ParkState, PowerSource};
use infergate::sim::SimConfig;
use infergate::telemetry::prom;

fn small_fast() -> SimConfig {
    SimConfig {
        time_scale: 0.01,
        ..SimConfig::small()
    }
}

fn summary(gw: &TestGateway) -> PoolSummary {
    gw.gateway
        .table()
        .energy
        .first()
        .map(|h| h.state.summary())
        .unwrap_or_default()
}

async fn wait_summary(
    gw: &TestGateway,
    what: &str,
    ok: impl Fn(&PoolSummary) -> bool,
) -> PoolSummary {
    let met = eventually(Duration::from_secs(10), || ok(&summary(gw))).await;
    let s = summary(gw);
    assert!(met, "{what}: {s:#?}");
    s
}

#[tokio::test]
async fn power_is_read_from_the_simulators_dcgm_exporter() {
    let sim = SimConfig {
        power: infergate::sim::PowerModel {
            gpus: 2,
            ..Default::default()
        },
        ..small_fast()
    };
    let nodes = start_nodes(2, &sim).await;
    // n0 has its exporter; n1 has none and is estimated from the model.
    let mut text = config_with(
        &unweighted(&nodes),
        "round_robin",
        "[pools.energy]\ninterval = \"50ms\"\nidle_watts = 100.0\nmax_watts = 600.0\n",
        "",
    );
    text = text.replacen(
        "weight = 1\n",
        &format!(
            "weight = 1\n[pools.nodes.power]\nexporter_url = \"http://{}/sim/dcgm/metrics\"\n",
            nodes[0].addr()
        ),
        1,
    );
    let gw = start_gateway(&text).await;
    for _ in 0..6 {
        let r = post(
            gw.addr,
            "/v1/chat/completions",
            chat("hello there", false, 8),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let s = wait_summary(&gw, "both nodes have figures and energy", |s| {
        s.nodes.len() == 2
            && s.nodes
                .iter()
                .all(|n| n.watts.is_some() && n.joules_total > 0.0)
    })
    .await;
    let (n0, n1) = (&s.nodes[0], &s.nodes[1]);
    assert_eq!(n0.source, Some(PowerSource::Measured));
    assert_eq!(n1.source, Some(PowerSource::Estimated));
    assert_eq!((s.measured_nodes, s.estimated_nodes), (1, 1));
    // Idle now: the exporter reports two GPUs at the simulator's idle power.
    let idle = 2.0 * sim.power.idle_watts;
    let settled = eventually(Duration::from_secs(5), || {
        summary(&gw).nodes[0].watts == Some(idle)
    })
    .await;
    assert!(
        settled,
        "measured {:?}, sim idle {idle}",
        summary(&gw).nodes[0].watts
    );
    // The gateway's energy is counted from the exporter's mJ counter: no
    // more than the simulator's own meter says it used.
    let sim_joules = nodes[0].stats().energy_joules;
    assert!(summary(&gw).nodes[0].joules_total <= sim_joules + 1e-6);
    assert_eq!(
        summary(&gw).nodes[1].watts,
        Some(100.0),
        "estimated idle = idle_watts × 1 GPU"
    );
    // Tokens were counted, so efficiency is known.
    let s = wait_summary(&gw, "J/token", |s| s.joules_per_token.is_some()).await;
    assert!(s.tokens_per_joule.unwrap() > 0.0);
    let metrics = prom::render(&gw.gateway.telemetry, &gw.gateway.table().fleet_view());
    assert!(
        metrics.contains("infergate_node_power_watts{pool=\"p\",node=\"n0\",source=\"measured\"}"),
        "{metrics}"
    );
    assert!(metrics
        .contains("infergate_node_power_watts{pool=\"p\",node=\"n1\",source=\"estimated\"} 100"));
    assert!(metrics.contains("infergate_pool_energy_joules_total{pool=\"p\"}"));
    gw.stop().await;
}

fn consolidating(extra: &str) -> String {
    format!(
        "[pools.energy]\ninterval = \"50ms\"\n[pools.energy.consolidate]\nttft_slo = \"10s\"\nitl_slo = \"1s\"\n\
         target_batch = 4\nheadroom = 0.25\nscale_down_delay = \"60s\"\n{extra}"
    )
}

#[tokio::test]
async fn consolidation_concentrates_low_load_and_grows_under_load() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(4, &small_fast()).await;
    let text = config_with(
        &unweighted(&nodes),
        "least_outstanding",
        &consolidating(""),
        "",
    );
    let gw = start_gateway(&text).await;
    wait_summary(&gw, "controller ran", |s| {
        s.nodes.len() == 4 && s.active_nodes == 1
    })
    .await;
    // Low load: one request at a time. least_outstanding alone breaks the
    // ties at random across all four nodes.
    for _ in 0..24 {
        let r = post(gw.addr, "/v1/chat/completions", chat("low load", false, 4)).await;
        assert_eq!(r.status, 200);
    }
    let counts: Vec<u64> = nodes.iter().map(|n| n.stats().requests_total).collect();
    assert_eq!(
        counts.iter().filter(|c| **c > 0).count(),
        1,
        "low load on one node: {counts:?}"
    );
    // Load: 16 long requests at once need 16 / (4 × 0.75) → 4 nodes.
    let load = Load::start(gw.addr, 16, chat("busy", true, 400), 200);
    wait_summary(&gw, "active set grew", |s| {
        s.active_nodes >= 3 && s.nodes_needed >= 3
    })
    .await;
    let outcomes = load.stop().await;
    assert!(outcomes.iter().all(|o| o.status == 200));
    let counts: Vec<u64> = nodes.iter().map(|n| n.stats().requests_total).collect();
    assert!(
        counts.iter().filter(|c| **c > 0).count() >= 3,
        "load spread over the grown set: {counts:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn idle_nodes_are_reported_parkable_with_autoscaler_gauges() {
    let nodes = start_nodes(3, &small_fast()).await;
    let text = config_with(
        &unweighted(&nodes),
        "round_robin",
        &consolidating("[pools.energy.parking]\nidle_after = \"300ms\"\nwake_time = \"1s\"\n"),
        "",
    );
    let gw = start_gateway(&text).await;
    for _ in 0..4 {
        post(gw.addr, "/v1/chat/completions", chat("hi", false, 4)).await;
    }
    let s = wait_summary(&gw, "two idle nodes parkable", |s| s.parkable_nodes == 2).await;
    assert_eq!(s.nodes_needed, 1);
    assert!(
        s.nodes.iter().all(|n| n.state == ParkState::Awake),
        "no action configured: only reported"
    );
    let metrics = prom::render(&gw.gateway.telemetry, &gw.gateway.table().fleet_view());
    assert!(
        metrics.contains("infergate_pool_parkable_nodes{pool=\"p\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("infergate_pool_nodes_needed{pool=\"p\"} 1"));
    assert!(metrics.contains("infergate_node_parkable{pool=\"p\",node=\"n2\"} 1"));
    gw.stop().await;
}

#[tokio::test]
async fn a_parked_node_is_not_health_checked_into_failure_and_wakes_for_load() {
    let _quiet = quiet_machine().await;
    let nodes = start_nodes(2, &small_fast()).await;
    let text = config_with(
        &unweighted(&nodes),
        "least_outstanding",
        &format!(
            "{}[pools.health]\ninterval = \"50ms\"\ntimeout = \"40ms\"\nunhealthy_threshold = 1\n",
            consolidating(
                "[pools.energy.parking]\nidle_after = \"300ms\"\nwake_time = \"300ms\"\nvllm_sleep = true\n"
            )
        ),
        "",
    );
    let gw = start_gateway(&text).await;
    let s = wait_summary(&gw, "n1 parked", |s| {
        s.nodes.len() == 2 && s.nodes[1].state == ParkState::Parked
    })
    .await;
    assert_eq!(s.nodes[0].state, ParkState::Awake);
    assert!(
        eventually(Duration::from_secs(5), || nodes[1].stats().sleeping).await,
        "the gateway put the node to sleep through vLLM's POST /sleep"
    );
    // Powered off while parked: checks would now be refused.
    nodes[1].crash().await;
    let table = gw.gateway.table();
    let n1 = &table.pools[0].nodes[1];
    tokio::time::sleep(Duration::from_millis(500)).await; // ten check intervals
    assert!(
        n1.load.health.is_available(infergate::health::now_ms()),
        "a parked node is not checked into failure"
    );
    // Back on; load needs two nodes: the gateway wakes it and routes to it.
    nodes[1].restart().await.unwrap();
    let load = Load::start(gw.addr, 8, chat("wake up", true, 400), 100);
    let woke = eventually(Duration::from_secs(10), || {
        nodes[1].stats().requests_total > 0
    })
    .await;
    let outcomes = load.stop().await;
    assert!(woke, "{:#?}", summary(&gw));
    assert!(outcomes.iter().all(|o| o.status == 200));
    gw.stop().await;
}

#[test]
fn energy_config_errors_name_the_field() {
    let base = "[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
                [pools.nodes.power]\ngpus = 0\n[pools.energy]\nmax_watts = 10.0\n\
                [pools.energy.consolidate]\nheadroom = 1.5\n[pools.energy.parking]\nwebhook = \"nope\"\n\
                [[routes]]\nname = \"r\"\npool = \"p\"\n";
    let err = Config::from_toml(base).unwrap_err().to_string();
    for field in [
        "pools[0].energy.max_watts",
        "pools[0].energy.consolidate.headroom",
        "pools[0].energy.parking.webhook",
        "pools[0].nodes[0].power.gpus",
    ] {
        assert!(err.contains(field), "{field} missing in: {err}");
    }
    let unknown = base.replace("headroom = 1.5", "headrom = 0.1");
    match Config::from_toml(&unknown) {
        Err(ConfigError::Parse { field: Some(f), .. }) => {
            assert_eq!(f.path, "pools[0].energy.consolidate.headrom");
            assert!(
                f.message.contains("unknown field `headrom`"),
                "{}",
                f.message
            );
        }
        other => panic!("{other:?}"),
    }
}
