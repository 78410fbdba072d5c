//! `infergate bench`: compare balancing policies on the same simulated fleet
//! and the same seeded workload, in one process.
//!
//! For each policy: a fresh fleet of simulated nodes (empty caches; speeds
//! from `--speeds`, by default one node at half speed), a gateway with that
//! policy (all nodes weight 1, so the gateway must discover speed itself;
//! metrics scraped every 250 ms of wall time), and the same workload —
//! multi-turn chat sessions with long shared system prompts, a share of
//! long turns (pasted documents, long answers), 70% streamed — at the same
//! Poisson rate for the same time. Then one table.
//!
//! Times in the table are *simulated* seconds (wall time / time scale), as
//! a real GPU fleet would show them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::proxy::{self, Gateway};
use crate::sim::{self, SimConfig, SimNode};
use crate::workload::{self, Stats, Summary, WorkloadConfig};

/// Options of `infergate bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round_robin,least_outstanding,power_of_two,prefix_aware,consistent_hash,peak_ewma,composite"
    )]
    policies: Vec<String>,
    /// Offered load in requests per *simulated* second.
    #[arg(long, default_value_t = 12.0)]
    rate: f64,
    /// Wall-clock time per policy.
    #[arg(long, default_value = "40s", value_parser = crate::config::duration::parse)]
    duration: Duration,
    /// Workload seed (the same requests for every policy).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Node speed factors, comma-separated (one node per entry).
    #[arg(long, value_delimiter = ',', default_value = "1,1,1,0.5")]
    speeds: Vec<f64>,
    /// Wall seconds per simulated second.
    #[arg(long, default_value_t = 0.1)]
    time_scale: f64,
    /// KV cache blocks (16 tokens) per node.
    #[arg(long, default_value_t = 2048)]
    kv_blocks: usize,
    /// Extra `[routes.balance]` TOML lines for every route (e.g. `balance_abs_threshold = 4`).
    #[arg(long, default_value = "")]
    balance: String,
}

/// One policy's results.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Policy name.
    pub policy: String,
    /// Client-side summary (wall times).
    pub summary: Summary,
    /// Fleet prefix-cache hit rate (tokens).
    pub hit_rate: f64,
    /// Requests per node as the nodes counted them.
    pub per_node: Vec<u64>,
    /// Preemptions across the fleet.
    pub preemptions: u64,
    /// Wall duration of the run.
    pub wall: Duration,
}

/// The simulator settings of the bench: the default cost model with
/// `SimConfig::small()`'s batch limits and `kv_blocks` blocks per node.
pub fn bench_sim(time_scale: f64, kv_blocks: usize) -> SimConfig {
    SimConfig {
        time_scale,
        kv_blocks,
        max_model_len: 16_384,
        ..SimConfig::small()
    }
}

/// The bench workload at `rate` simulated requests per second.
pub fn bench_workload(
    target: SocketAddr,
    model: &str,
    rate_wall: f64,
    seed: u64,
) -> WorkloadConfig {
    WorkloadConfig {
        target,
        model: model.to_string(),
        rate: rate_wall,
        sessions: 96,
        system_prompts: 8,
        system_prompt_bytes: 6000,
        user_bytes: (100, 800),
        max_tokens: (16, 192),
        stream_share: 0.7,
        max_turns: 8,
        max_in_flight: 2048,
        seed,
        long_share: 0.1,
        long_user_bytes: (4000, 12000),
        long_max_tokens: (192, 384),
        send_user: true,
    }
}

fn gateway_config(policy: &str, addrs: &[SocketAddr], model: &str, balance: &str) -> String {
    let mut text = String::from(
        "[listener]\naddr = \"127.0.0.1:0\"\n\n[[pools]]\nname = \"bench\"\n\
         [pools.capacity]\ninterval = \"250ms\"\n",
    );
    for (i, addr) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"sim-{i}\"\naddr = \"{addr}\"\n"
        ));
    }
    text.push_str(&format!(
        "\n[[routes]]\nname = \"bench\"\npool = \"bench\"\npolicy = \"{policy}\"\nretries = 1\n\
         [routes.match]\nfamily = \"openai\"\nmodel = \"{model}\"\n\
         [routes.timeouts]\nfirst_byte = \"600s\"\nidle = \"600s\"\ntotal = \"1200s\"\n\
         [routes.balance]\n{balance}\n"
    ));
    text
}

/// Run one policy; `None` (with a message printed) if setup fails.
pub async fn run_one(
    policy: &str,
    args_rate: f64,
    duration: Duration,
    seed: u64,
    speeds: &[f64],
    sim_config: &SimConfig,
    balance: &str,
) -> Result<BenchRow, String> {
    let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let nodes: Vec<SimNode> = sim::start_fleet(host, 0, speeds.len(), sim_config, speeds)
        .await
        .map_err(|e| format!("cannot start simulated nodes: {e}"))?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr()).collect();
    let text = gateway_config(policy, &addrs, &sim_config.model, balance);
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let gateway = Gateway::new(&config).map_err(|e| e.to_string())?;
    let listener = proxy::bind(&gateway).await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(proxy::serve(
        Arc::clone(&gateway),
        listener,
        stopped(stop_rx.clone()),
        Duration::from_secs(1),
    ));

    let stats = Arc::new(Stats::default());
    let rate_wall = args_rate / sim_config.time_scale;
    let workload = bench_workload(addr, &sim_config.model, rate_wall, seed);
    let started = std::time::Instant::now();
    workload::run(workload, Arc::clone(&stats), tokio::time::sleep(duration)).await;
    // Let requests in flight finish (bounded), so slow tails are counted.
    let drain_deadline = tokio::time::Instant::now() + duration / 2;
    while gateway
        .table()
        .pools
        .iter()
        .flat_map(|p| p.nodes.iter())
        .any(|n| n.outstanding() > 0)
        && tokio::time::Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();
    let samples = stats.take();
    let summary = Summary::of(&samples);

    let (mut hits, mut queries, mut preemptions) = (0u64, 0u64, 0u64);
    let mut per_node = Vec::new();
    for n in &nodes {
        let s = n.stats();
        hits += s.prefix_hits_tokens;
        queries += s.prefix_queries_tokens;
        preemptions += s.preemptions;
        per_node.push(s.requests_total);
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    drop(gateway);
    for n in nodes {
        n.shutdown().await;
    }
    Ok(BenchRow {
        policy: policy.to_string(),
        summary,
        hit_rate: if queries == 0 {
            0.0
        } else {
            hits as f64 / queries as f64
        },
        per_node,
        preemptions,
        wall,
    })
}

/// Format the comparison table; times converted to simulated seconds.
pub fn table(rows: &[BenchRow], time_scale: f64) -> String {
    let ms = |d: Duration| d.as_secs_f64() / time_scale * 1000.0;
    let mut out = format!(
        "{:<18} {:>6} {:>5} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8} {:>6} {:>7}  {}\n",
        "policy",
        "reqs",
        "errs",
        "ttft_mean",
        "ttft_p50",
        "ttft_p99",
        "itl",
        "e2e_p50",
        "e2e_p99",
        "req/s",
        "tok/s",
        "hit%",
        "preempt",
        "per-node requests"
    );
    for r in rows {
        let s = &r.summary;
        let sim_secs = r.wall.as_secs_f64() / time_scale;
        let ok = s.count - s.errors;
        out.push_str(&format!(
            "{:<18} {:>6} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>7.1} {:>8.0} {:>8.0} {:>7.2} {:>8.0} {:>6.1} {:>7}  {:?}\n",
            r.policy,
            s.count,
            s.errors,
            ms(s.ttft_mean),
            ms(s.ttft_p50),
            ms(s.ttft_p99),
            ms(s.itl_mean),
            ms(s.p50),
            ms(s.p99),
            ok as f64 / sim_secs,
            s.tokens as f64 / sim_secs,
            r.hit_rate * 100.0,
            r.preemptions,
            r.per_node,
        ));
    }
    out
}

/// Run the bench.
pub async fn run(args: BenchArgs) -> ExitCode {
    if args.speeds.is_empty() || args.speeds.iter().any(|&s| s.is_nan() || s <= 0.0) {
        eprintln!("--speeds needs positive numbers");
        return ExitCode::FAILURE;
    }
    if args.time_scale.is_nan() || args.time_scale <= 0.0 || args.rate.is_nan() || args.rate <= 0.0
    {
        eprintln!("--rate and --time-scale must be positive");
        return ExitCode::FAILURE;
    }
    let sim_config = bench_sim(args.time_scale, args.kv_blocks);
    println!(
        "infergate bench: {} nodes (speeds {:?}), {} KV blocks/node, max {} seqs/node, time scale {}; \
         {} req/s (simulated) for {:?} wall ({:.0} s simulated) per policy, seed {}",
        args.speeds.len(),
        args.speeds,
        sim_config.kv_blocks,
        sim_config.max_num_seqs,
        args.time_scale,
        args.rate,
        args.duration,
        args.duration.as_secs_f64() / args.time_scale,
        args.seed
    );
    let mut rows = Vec::new();
    for policy in &args.policies {
        if !crate::balance::POLICY_NAMES.contains(&policy.as_str()) {
            eprintln!("unknown policy {policy}");
            return ExitCode::FAILURE;
        }
        eprintln!("running {policy} ...");
        match run_one(
            policy,
            args.rate,
            args.duration,
            args.seed,
            &args.speeds,
            &sim_config,
            &args.balance,
        )
        .await
        {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("{policy}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("times in simulated ms; itl = mean inter-token latency; hit% = fleet prefix-cache hit rate (tokens)");
    print!("{}", table(&rows, args.time_scale));
    ExitCode::SUCCESS
}
