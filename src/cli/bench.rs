//! `infergate bench`: the seeded LLM workload against any OpenAI-compatible
//! endpoint (`--target`), or a comparison of balancing policies on the same
//! simulated fleet (without `--target`). Both run the same stages (a
//! Poisson rate, a rate sweep or fixed concurrency) and report the same
//! way (`workload::bench`: inference-perf's lifecycle summary, CSV, HTML).
//!
//! Policy comparison: for each policy a fresh fleet of simulated nodes
//! (empty caches; speeds from `--speeds`), a gateway with that policy (all
//! nodes weight 1, so the gateway must discover speed itself; metrics
//! scraped every 250 ms of wall time), and the same workload. Its rates,
//! durations and reported times are *simulated* seconds (wall time / time
//! scale), as a real GPU fleet would show them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::config::Config;
use crate::sim::{self, SimConfig, SimNode};
use crate::workload::bench::{self as run_bench, Outcome, Plan};
use crate::workload::measure::Target;
use crate::workload::report::Slo;
use crate::workload::runner::{Load, StageSpec};
use crate::workload::source::{parse_trace, WorkloadKind};
use crate::workload::WorkloadConfig;

use super::bench_energy;

/// Which requests to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadName {
    /// Multi-turn chat sessions sharing long system prompts.
    Chat,
    /// Fixed-size requests: --input-tokens prompt, --output-tokens answer.
    Synthetic,
    /// Replay a JSONL trace (--trace).
    Trace,
}

/// How the load changes over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// One stage per --rate/--concurrency value.
    Stages,
    /// One day-shaped stage: 10% of the (first) --rate, up to it at mid
    /// run, back to 10% (--duration is the whole day).
    Day,
}

/// Options of `infergate bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// OpenAI-compatible endpoint to load (e.g. http://127.0.0.1:8080;
    /// `/v1/chat/completions` is added to a URL without a path). Without it,
    /// compare policies on a simulated fleet.
    #[arg(long)]
    target: Option<String>,
    /// Model to ask for (default: the first of the target's /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Bearer token sent to the target.
    #[arg(long, env = "INFERGATE_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Workload.
    #[arg(long, value_enum, default_value_t = WorkloadName::Chat)]
    workload: WorkloadName,
    /// JSONL trace for `--workload trace` (see docs/bench.md).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Prompt size of `--workload synthetic` (about 4 bytes a token).
    #[arg(long, default_value_t = 512)]
    input_tokens: usize,
    /// Output tokens of `--workload synthetic` (sent with `ignore_eos`).
    #[arg(long, default_value_t = 128)]
    output_tokens: u32,
    /// Share of streamed requests (chat, synthetic, trace lines without `stream`).
    #[arg(long, default_value_t = 0.7)]
    stream_share: f64,
    /// Poisson rate(s) in requests per second (per simulated second without
    /// --target); several (`--rate 2,4,8`) run as stages in turn [default: 12].
    #[arg(long = "rate", alias = "rates", value_delimiter = ',')]
    rates: Vec<f64>,
    /// Fixed concurrency instead of a rate (several: one stage each).
    #[arg(long, value_delimiter = ',', conflicts_with = "rates")]
    concurrency: Vec<usize>,
    /// Wall-clock time each stage sends (per policy without --target).
    #[arg(long, default_value = "40s", value_parser = crate::config::duration::parse)]
    duration: Duration,
    /// Longest wait for a stage's requests in flight [default: the duration
    /// with --target, half of it without].
    #[arg(long, value_parser = crate::config::duration::parse)]
    drain: Option<Duration>,
    /// Give up on one request after this long.
    #[arg(long, default_value = "600s", value_parser = crate::config::duration::parse)]
    timeout: Duration,
    /// Workload seed (the same requests for every policy and run).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Goodput constraint on time to first token (e.g. 500ms).
    #[arg(long, value_parser = crate::config::duration::parse)]
    slo_ttft: Option<Duration>,
    /// Goodput constraint on time per output token (e.g. 50ms).
    #[arg(long, value_parser = crate::config::duration::parse)]
    slo_tpot: Option<Duration>,
    /// Directory for the reports [default with --target: bench-report-SECONDS, the Unix time].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Response header naming the node that served a request (infergate
    /// passes the simulator's through; "" for none).
    #[arg(long, default_value = "x-sim-node")]
    node_header: String,
    /// Admin URL of an infergate target: per-node share from its
    /// `infergate_requests_total` counters before and after the run.
    #[arg(long)]
    admin: Option<String>,
    /// Bearer token for `--admin` when its metrics need one.
    #[arg(long, env = "INFERGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Policies to compare (without --target), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round_robin,least_outstanding,power_of_two,prefix_aware,consistent_hash,peak_ewma,composite"
    )]
    policies: Vec<String>,
    /// Simulated node speed factors, comma-separated (one node per entry).
    #[arg(long, value_delimiter = ',', default_value = "1,1,1,0.5")]
    speeds: Vec<f64>,
    /// Wall seconds per simulated second.
    #[arg(long, default_value_t = 0.1)]
    time_scale: f64,
    /// KV cache blocks (16 tokens) per simulated node.
    #[arg(long, default_value_t = 2048)]
    kv_blocks: usize,
    /// Extra `[routes.balance]` TOML lines for every route (e.g. `balance_abs_threshold = 4`).
    #[arg(long, default_value = "")]
    balance: String,
    /// Load profile.
    #[arg(long, value_enum, default_value_t = Profile::Stages)]
    profile: Profile,
    /// `consolidate` policies: requests in flight per node planned as
    /// efficient (`[pools.energy.consolidate] target_batch`).
    #[arg(long, default_value_t = 12.0)]
    target_batch: f64,
    /// `consolidate` policies: capacity and SLO share kept in reserve.
    #[arg(long, default_value_t = 0.2)]
    headroom: f64,
    /// Gateway replicas in front of the simulated fleet (without
    /// --target), each new client connection handed to the next in turn as
    /// a Kubernetes Service does; each keeps its own load view and prefix
    /// index (see `placement = "rendezvous"`, docs/kubernetes.md).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Distinct shared system prompts of the chat workload (1: a single
    /// hot prefix dominates).
    #[arg(long, default_value_t = 8)]
    system_prompts: usize,
    /// Simulated nodes publish vLLM KV-cache events and tokenize with the
    /// fleet tokenizer (always on when `precise_prefix` is compared, for
    /// every policy alike).
    #[arg(long)]
    kv_events: bool,
    /// `consolidate` policies: simulated time a node's share must stay
    /// below the set before it leaves (`scale_down_delay`).
    #[arg(long, default_value = "30s", value_parser = crate::config::duration::parse)]
    scale_down_delay: Duration,
    /// `consolidate` policies: simulated idle time before a node outside
    /// the set is parked (`[pools.energy.parking] idle_after`).
    #[arg(long, default_value = "20s", value_parser = crate::config::duration::parse)]
    idle_after: Duration,
    /// Simulated seconds a parked node takes to wake (`sim::power` `wake_secs`).
    #[arg(long, default_value_t = 30.0)]
    wake_secs: f64,
}

/// One policy's results.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Policy name.
    pub policy: String,
    /// The run's reports.
    pub outcome: Outcome,
    /// Fleet prefix-cache hit rate (tokens).
    pub hit_rate: f64,
    /// Requests per node as the nodes counted them.
    pub per_node: Vec<u64>,
    /// Preemptions across the fleet.
    pub preemptions: u64,
    /// Fleet energy, from the simulated nodes' meters.
    pub energy: crate::workload::energy::EnergyReport,
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

/// The bench's chat sessions for `model` (rate and target are set per stage).
pub fn bench_workload(model: &str, stream_share: f64, seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        model: model.to_string(),
        rate: 1.0,
        sessions: 96,
        system_prompts: 8,
        system_prompt_bytes: 6000,
        user_bytes: (100, 800),
        max_tokens: (16, 192),
        stream_share,
        max_turns: 8,
        max_in_flight: 2048,
        seed,
        long_share: 0.1,
        long_user_bytes: (4000, 12000),
        long_max_tokens: (192, 384),
        send_user: true,
    }
}

fn gateway_config(
    policy: &str,
    addrs: &[SocketAddr],
    model: &str,
    balance: &str,
    energy: &str,
    time_scale: f64,
) -> String {
    // The nodes' queue scrape every 250 simulated ms: a fixed wall-time
    // interval would leave the running/waiting counts stale for seconds of
    // simulated time at a fast time scale, inflating the load that routing
    // and consolidation see.
    let scrape_ms = (250.0 * time_scale).round().max(10.0) as u64;
    let mut text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n\n[[pools]]\nname = \"bench\"\n\
         [pools.capacity]\ninterval = \"{scrape_ms}ms\"\n",
    );
    text.push_str(energy);
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

/// The chat completions URL for a `--target`.
pub fn completions_url(target: &str) -> Result<String, String> {
    let base = if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    };
    let uri: http::Uri = base
        .parse()
        .map_err(|e| format!("--target {target}: not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("--target {target}: http:// or https:// only"));
    }
    let path = uri.path().trim_end_matches('/');
    Ok(match path {
        "" => format!("{}/v1/chat/completions", base.trim_end_matches('/')),
        p if p.ends_with("/v1") => format!("{}/chat/completions", base.trim_end_matches('/')),
        _ => base,
    })
}

/// The stages from `--rate`/`--concurrency` (`rate_factor` turns a rate
/// into wall requests per second).
fn stages(args: &BenchArgs, rate_factor: f64) -> Vec<StageSpec> {
    if args.profile == Profile::Day {
        let peak = args.rates.first().copied().unwrap_or(12.0);
        return vec![StageSpec {
            load: Load::Day {
                peak: peak * rate_factor,
                floor: 0.1,
            },
            duration: args.duration,
        }];
    }
    if !args.concurrency.is_empty() {
        return args
            .concurrency
            .iter()
            .map(|&n| StageSpec {
                load: Load::Concurrency(n),
                duration: args.duration,
            })
            .collect();
    }
    let rates = if args.rates.is_empty() {
        vec![12.0]
    } else {
        args.rates.clone()
    };
    rates
        .into_iter()
        .map(|r| StageSpec {
            load: Load::Rate(r * rate_factor),
            duration: args.duration,
        })
        .collect()
}

/// The workload of `args` for `model`.
fn workload(args: &BenchArgs, model: &str) -> Result<WorkloadKind, String> {
    Ok(match args.workload {
        WorkloadName::Chat => WorkloadKind::Chat(WorkloadConfig {
            system_prompts: args.system_prompts.max(1),
            ..bench_workload(model, args.stream_share, args.seed)
        }),
        WorkloadName::Synthetic => WorkloadKind::Synthetic {
            model: model.to_string(),
            input_bytes: args.input_tokens.saturating_mul(4),
            output_tokens: args.output_tokens.max(1),
            stream_share: args.stream_share,
            seed: args.seed,
        },
        WorkloadName::Trace => {
            let path = args
                .trace
                .as_ref()
                .ok_or("--workload trace needs --trace FILE")?;
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            WorkloadKind::Trace {
                model: model.to_string(),
                entries: parse_trace(&text).map_err(|e| format!("{}: {e}", path.display()))?,
                stream_share: args.stream_share,
                seed: args.seed,
            }
        }
    })
}

/// Requests per `pool/node` from an infergate admin's `/metrics`.
async fn gateway_counts(admin: &str, token: Option<&str>) -> Result<BTreeMap<String, u64>, String> {
    let mut api = super::http::Http::new(admin, Duration::from_secs(10))?;
    if let Some(token) = token {
        api = api.with_header("authorization", &format!("Bearer {token}"))?;
    }
    let text = api.get_text("/metrics").await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = super::probe::parse_sample(line) else {
            continue;
        };
        if name != "infergate_requests_total" {
            continue;
        }
        let (Some(pool), Some(node)) = (labels.get("pool"), labels.get("node")) else {
            continue;
        };
        *counts.entry(format!("{pool}/{node}")).or_default() += value as u64;
    }
    Ok(counts)
}

/// Shares of the counter increases between `before` and `after`.
fn count_shares(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Value {
    let deltas: Vec<(&String, u64)> = after
        .iter()
        .map(|(k, v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = deltas.iter().map(|(_, d)| d).sum();
    let mut out = serde_json::Map::new();
    for (k, d) in deltas {
        out.insert(
            k.clone(),
            json!({"count": d, "share": d as f64 / total as f64}),
        );
    }
    Value::Object(out)
}

/// The models URL next to a chat completions URL (`…/chat/completions` →
/// `…/models`; otherwise `/v1/models` on the same host).
fn models_url(completions: &str) -> Result<String, String> {
    if let Some(base) = completions.strip_suffix("/chat/completions") {
        return Ok(format!("{base}/models"));
    }
    let uri: http::Uri = completions.parse().map_err(|e| format!("{e}"))?;
    Ok(format!(
        "{}://{}/v1/models",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    ))
}

/// The first model of the target's models list.
async fn first_model(completions: &str, api_key: Option<&str>) -> Result<String, String> {
    let models = models_url(completions)?;
    let client = crate::workload::measure::bench_client();
    let mut request = http::Request::get(&models);
    if let Some(key) = api_key {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fetch = async {
        use http_body_util::BodyExt;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        v["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no model listed".to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| format!("GET {models}: {e}; pass --model"))
}

fn slo(args: &BenchArgs) -> Slo {
    Slo {
        ttft: args.slo_ttft.map(|d| d.as_secs_f64()),
        tpot: args.slo_tpot.map(|d| d.as_secs_f64()),
    }
}

fn valid(args: &BenchArgs) -> Result<(), String> {
    if args.rates.iter().any(|&r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    if args.concurrency.contains(&0) {
        return Err("--concurrency must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.stream_share) {
        return Err("--stream-share must be between 0 and 1".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if !(1..=16).contains(&args.replicas) {
        return Err("--replicas must be between 1 and 16".into());
    }
    Ok(())
}

/// Write the reports and say where.
fn report_files(
    dir: &Path,
    outcome: &Outcome,
    title: &str,
    notes: &[String],
    admin: Option<&Value>,
) -> Result<(), String> {
    let files = run_bench::write_reports(dir, outcome, title, notes, admin)
        .map_err(|e| format!("cannot write reports to {}: {e}", dir.display()))?;
    println!("reports in {} ({} files)", dir.display(), files.len());
    Ok(())
}

/// Run the workload against `--target`.
async fn run_target(args: &BenchArgs, target: &str) -> Result<(), String> {
    let url = completions_url(target)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&url, args.api_key.as_deref()).await?,
    };
    let plan = Plan {
        target: Target {
            url: url.clone(),
            api_key: args.api_key.clone(),
            node_header: Some(args.node_header.clone()).filter(|h| !h.is_empty()),
            timeout: args.timeout,
        },
        workload: workload(args, &model)?,
        stages: stages(args, 1.0),
        drain: args.drain.unwrap_or(args.duration),
        slo: slo(args),
        time_scale: 1.0,
        label: String::new(),
    };
    let before = match &args.admin {
        Some(admin) => Some(gateway_counts(admin, args.admin_token.as_deref()).await?),
        None => None,
    };
    println!(
        "infergate bench: {:?} workload, model {model}, {} stage(s) of {:?} against {url}, seed {}",
        args.workload,
        plan.stages.len(),
        args.duration,
        args.seed
    );
    let outcome = run_bench::run(&plan).await;
    let admin_nodes = match (&args.admin, before) {
        (Some(admin), Some(before)) => {
            // The gateway counts a request when its response ends; poll
            // briefly until the counters caught up with the client.
            let want: u64 = outcome.records.len() as u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut after = gateway_counts(admin, args.admin_token.as_deref()).await?;
            while after.values().sum::<u64>() < before.values().sum::<u64>() + want
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                after = gateway_counts(admin, args.admin_token.as_deref()).await?;
            }
            Some(count_shares(&before, &after))
        }
        _ => None,
    };
    print!("{}", run_bench::table(&outcome.stages));
    println!("times in ms; tpot/itl medians; good% = goodput (--slo-ttft/--slo-tpot); cache% = cached prompt tokens (usage)");
    let dir = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "bench-report-{}",
            crate::telemetry::unix_ms() / 1000
        ))
    });
    let notes = vec![
        format!(
            "Target {url}, model {model}, {:?} workload, seed {}.",
            args.workload, args.seed
        ),
        "Times in seconds of wall time.".to_string(),
    ];
    report_files(
        &dir,
        &outcome,
        "infergate bench",
        &notes,
        admin_nodes.as_ref(),
    )
}

/// The `[routes.balance.precise]` table for a simulated fleet named `sim-i`.
fn precise_table(tokenizer: &str, nodes: &[SimNode]) -> String {
    let list = |f: &dyn Fn(&SimNode) -> Option<&str>| {
        nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| f(n).map(|ep| format!("\"sim-{i}\" = \"{ep}\"")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[routes.balance.precise]\ntokenizer = {tokenizer:?}\nendpoints = {{ {} }}\nreplay_endpoints = {{ {} }}\n",
        list(&|n| n.kv_events_endpoint()),
        list(&|n| n.kv_replay_endpoint())
    )
}

/// A simulator config publishing KV events (ephemeral ports, with replay)
/// and tokenizing with the fleet tokenizer written to `dir`.
pub fn with_kv_events(mut cfg: SimConfig, dir: &std::path::Path) -> Result<SimConfig, String> {
    let path = dir.join("fleet-tokenizer.json");
    std::fs::write(&path, crate::workload::fleet_tokenizer_json())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    cfg.tokenizer = Some(path.to_string_lossy().into_owned());
    cfg.kv_events = sim::KvEventsConfig {
        enable_kv_cache_events: true,
        endpoint: "tcp://127.0.0.1:0".into(),
        replay_endpoint: Some("tcp://127.0.0.1:0".into()),
        ..sim::KvEventsConfig::default()
    };
    Ok(cfg)
}

/// Run one policy on a fresh simulated fleet.
pub async fn run_one(
    policy: &str,
    args: &BenchArgs,
    sim_config: &SimConfig,
) -> Result<BenchRow, String> {
    let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let nodes: Vec<SimNode> =
        sim::start_fleet(host, 0, args.speeds.len(), sim_config, &args.speeds)
            .await
            .map_err(|e| format!("cannot start simulated nodes: {e}"))?;
    let nodes = Arc::new(nodes);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr()).collect();
    let label = policy;
    let (policy, consolidate) = bench_energy::split_label(label);
    let energy = if consolidate {
        bench_energy::energy_toml(
            &bench_energy::ConsolidateBench {
                ttft_slo: args.slo_ttft.map_or(1.0, |d| d.as_secs_f64()),
                itl_slo: args.slo_tpot.map_or(0.1, |d| d.as_secs_f64()),
                target_batch: args.target_batch,
                headroom: args.headroom,
                scale_down: args.scale_down_delay.as_secs_f64(),
                idle_after: args.idle_after.as_secs_f64(),
            },
            sim_config,
        )
    } else {
        String::new()
    };
    let mut balance = args.balance.clone();
    if let (Some(tokenizer), "precise_prefix") = (&sim_config.tokenizer, policy) {
        balance.push_str(&precise_table(tokenizer, &nodes));
    }
    let text = gateway_config(
        policy,
        &addrs,
        &sim_config.model,
        &balance,
        &energy,
        sim_config.time_scale,
    );
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let replicas = super::replicas::start(&config, args.replicas).await?;
    let addr = replicas.front;
    let plan = Plan {
        target: Target {
            url: format!("http://{addr}/v1/chat/completions"),
            api_key: None,
            node_header: Some("x-sim-node".into()),
            timeout: args.timeout,
        },
        workload: workload(args, &sim_config.model)?,
        stages: stages(args, 1.0 / sim_config.time_scale),
        drain: args.drain.unwrap_or(args.duration / 2),
        slo: slo(args),
        time_scale: sim_config.time_scale,
        label: format!("{label} "),
    };
    let sampler = bench_energy::Sampler::start(Arc::clone(&nodes), sim_config.time_scale);
    let outcome = run_bench::run(&plan).await;
    let samples = sampler.stop();
    let energy = crate::workload::energy::report(
        label,
        samples,
        &outcome.records,
        slo(args),
        args.duration.as_secs_f64() / sim_config.time_scale,
    );

    let (mut hits, mut queries, mut preemptions) = (0u64, 0u64, 0u64);
    let mut per_node = Vec::new();
    for n in nodes.iter() {
        let s = n.stats();
        hits += s.prefix_hits_tokens;
        queries += s.prefix_queries_tokens;
        preemptions += s.preemptions;
        per_node.push(s.requests_total);
    }
    replicas.stop().await;
    for n in nodes.iter() {
        n.crash().await;
    }
    Ok(BenchRow {
        energy,
        policy: label.to_string(),
        outcome,
        hit_rate: if queries == 0 {
            0.0
        } else {
            hits as f64 / queries as f64
        },
        per_node,
        preemptions,
    })
}

/// The comparison table, one line per policy and stage (simulated ms).
pub fn table(rows: &[BenchRow]) -> String {
    let ms = |v: &Value| v.as_f64().unwrap_or(0.0) * 1000.0;
    let mut out = format!(
        "{:<18} {:>5} {:>6} {:>5} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8} {:>6} {:>7}  {}\n",
        "policy",
        "stage",
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
        for (i, (_, s)) in r.outcome.stages.iter().enumerate() {
            let l = &s["successes"]["latency"];
            let t = &s["successes"]["throughput"];
            out.push_str(&format!(
                "{:<18} {:>5} {:>6} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>7.1} {:>8.0} {:>8.0} {:>7.2} {:>8.0} {:>6.1} {:>7}  {:?}\n",
                r.policy,
                i,
                s["load_summary"]["count"].as_u64().unwrap_or(0),
                s["failures"]["count"].as_u64().unwrap_or(0),
                ms(&l["time_to_first_token"]["mean"]),
                ms(&l["time_to_first_token"]["median"]),
                ms(&l["time_to_first_token"]["p99"]),
                ms(&l["inter_token_latency"]["mean"]),
                ms(&l["request_latency"]["median"]),
                ms(&l["request_latency"]["p99"]),
                t["requests_per_sec"].as_f64().unwrap_or(0.0),
                t["output_tokens_per_sec"].as_f64().unwrap_or(0.0),
                r.hit_rate * 100.0,
                r.preemptions,
                r.per_node,
            ));
        }
    }
    out
}

async fn run_policies(args: &BenchArgs) -> Result<(), String> {
    if args.speeds.is_empty() || args.speeds.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return Err("--speeds needs positive numbers".into());
    }
    if args.time_scale.is_nan() || args.time_scale <= 0.0 {
        return Err("--time-scale must be positive".into());
    }
    if let Some(p) = args
        .policies
        .iter()
        .find(|p| !crate::balance::POLICY_NAMES.contains(&bench_energy::split_label(p).0))
    {
        return Err(format!("unknown policy {p}"));
    }
    let mut sim_config = bench_sim(args.time_scale, args.kv_blocks);
    sim_config.power.wake_secs = args.wake_secs;
    let kv_events = args.kv_events || args.policies.iter().any(|p| p == "precise_prefix");
    if kv_events {
        let dir = std::env::temp_dir().join(format!("infergate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        sim_config = with_kv_events(sim_config, &dir)?;
        println!("nodes publish KV events and tokenize with the fleet tokenizer (every policy)");
    }
    println!(
        "infergate bench: {} nodes (speeds {:?}), {} KV blocks/node, max {} seqs/node, time scale {}; \
         {} gateway replica(s); {} stage(s) of {:?} wall ({:.0} s simulated) per policy, {:?} workload, seed {}",
        args.speeds.len(),
        args.speeds,
        sim_config.kv_blocks,
        sim_config.max_num_seqs,
        args.time_scale,
        args.replicas,
        stages(args, 1.0).len(),
        args.duration,
        args.duration.as_secs_f64() / args.time_scale,
        args.workload,
        args.seed
    );
    let mut rows = Vec::new();
    for policy in &args.policies {
        let row = run_one(policy, args, &sim_config)
            .await
            .map_err(|e| format!("{policy}: {e}"))?;
        if let Some(dir) = &args.output {
            let notes = vec![
                format!(
                    "Policy {policy} on {} simulated nodes (speeds {:?}), {:?} workload, seed {}.",
                    args.speeds.len(),
                    args.speeds,
                    args.workload,
                    args.seed
                ),
                format!(
                    "Times and rates in simulated seconds (wall / time scale {}).",
                    args.time_scale
                ),
            ];
            report_files(
                &dir.join(policy),
                &row.outcome,
                &format!("infergate bench: {policy}"),
                &notes,
                None,
            )?;
        }
        rows.push(row);
    }
    println!("times in simulated ms; itl = mean inter-token latency; hit% = fleet prefix-cache hit rate (tokens)");
    print!("{}", table(&rows));
    let reports: Vec<_> = rows.iter().map(|r| r.energy.clone()).collect();
    let energy_table = crate::workload::energy::table(&reports, "least_outstanding");
    println!(
        "\nfleet energy from the simulated nodes' meters (sim::power); J/token = joules per output token; \
         awake = average nodes not parked; slo% = requests within --slo-ttft/--slo-tpot; ttft in simulated ms; \
         peak_p99 = requests sent in the middle fifth of the run; saving% against least_outstanding"
    );
    print!("{energy_table}");
    let node_table = crate::workload::energy::node_table(&reports);
    println!("\nper node: energy and share of time busy (requests running), idle (awake) and parked (or waking), sampled every simulated second");
    print!("{node_table}");
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let chart = dir.join("energy.svg");
        std::fs::write(
            &chart,
            crate::workload::energy::svg(&reports, args.speeds.len()),
        )
        .and_then(|()| {
            std::fs::write(
                dir.join("energy.txt"),
                format!("{energy_table}\n{node_table}"),
            )
        })
        .map_err(|e| format!("{}: {e}", chart.display()))?;
        println!("energy chart in {}", chart.display());
    }
    Ok(())
}

/// Run the bench.
pub async fn run(args: BenchArgs) -> ExitCode {
    let result = match valid(&args) {
        Err(e) => Err(e),
        Ok(()) => match &args.target {
            Some(target) => run_target(&args, target).await,
            None => run_policies(&args).await,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_scrape_interval_follows_the_time_scale() {
        let addrs = [SocketAddr::from(([127, 0, 0, 1], 1))];
        let scrape = |ts: f64| {
            let text = gateway_config("least_outstanding", &addrs, "m", "", "", ts);
            let config = Config::from_toml(&text).expect("bench config parses");
            config.pools[0].capacity.as_ref().map(|c| c.interval)
        };
        assert_eq!(scrape(1.0), Some(Duration::from_millis(250)));
        assert_eq!(scrape(0.1), Some(Duration::from_millis(25)));
        assert_eq!(scrape(0.01), Some(Duration::from_millis(10)));
    }

    #[test]
    fn target_urls_get_the_chat_path() {
        assert_eq!(
            completions_url("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(
            completions_url("https://api.example.com/v1/").unwrap(),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            completions_url("http://h:1/custom/chat").unwrap(),
            "http://h:1/custom/chat"
        );
        assert!(completions_url("ftp://h/").is_err());
        assert_eq!(
            models_url("https://h/openai/v1/chat/completions").unwrap(),
            "https://h/openai/v1/models"
        );
        assert_eq!(
            models_url("http://h:1/gen").unwrap(),
            "http://h:1/v1/models"
        );
    }

    #[test]
    fn gateway_counter_deltas_become_shares() {
        let before = BTreeMap::from([("p/a".to_string(), 10), ("p/b".to_string(), 5)]);
        let after = BTreeMap::from([
            ("p/a".to_string(), 13),
            ("p/b".to_string(), 5),
            ("p/c".to_string(), 1),
        ]);
        let shares = count_shares(&before, &after);
        assert_eq!(shares["p/a"]["count"], 3);
        assert_eq!(shares["p/c"]["share"], 0.25);
        assert!(shares.get("p/b").is_none());
    }
}
