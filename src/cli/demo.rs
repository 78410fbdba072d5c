//! `infergate demo`: four simulated nodes (one at half speed), a gateway in
//! front of them and a chat workload with shared prefixes, with a summary
//! line per second. The whole product on one machine, no GPU.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::proxy::{self, Gateway};
use crate::sim;
use crate::workload::{self, Sample, Stats, Summary, WorkloadConfig};

/// Options of `infergate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Admin listener (dashboard, /metrics) port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 9090)]
    admin_port: u16,
    /// Workload requests per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Balancing policy of the demo route.
    #[arg(long, default_value = "least_outstanding")]
    policy: String,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = crate::config::duration::parse)]
    duration: Option<Duration>,
    /// Where to write the generated gateway config.
    #[arg(long, default_value = "infergate-demo.toml")]
    config_out: PathBuf,
}

/// Node speed factors: the last node is at half speed.
const SPEEDS: [f64; 4] = [1.0, 1.0, 1.0, 0.5];

/// Seconds of history behind the latency percentiles on each line.
const WINDOW_SECS: usize = 10;

/// The gateway config the demo runs, for nodes at `addrs`.
pub fn demo_config(port: u16, model: &str, policy: &str, addrs: &[SocketAddr]) -> String {
    let mut text = format!(
        "# Written by `infergate demo`. Run it yourself with:\n\
         #   infergate serve --config <this file>   (while `infergate sim` serves the nodes)\n\n\
         [listener]\naddr = \"127.0.0.1:{port}\"\n\n[[pools]]\nname = \"chat\"\nslow_start = \"10s\"\n"
    );
    for (i, addr) in addrs.iter().enumerate() {
        let weight = if SPEEDS.get(i).copied().unwrap_or(1.0) < 1.0 {
            1
        } else {
            2
        };
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"sim-{i}\"\naddr = \"{addr}\"\nweight = {weight}\nmax_concurrent = 128\n"
        ));
    }
    text.push_str(
        "[pools.health]\ninterval = \"2s\"\ntimeout = \"500ms\"\nfamily = \"openai\"\n\
         [pools.outlier]\nconsecutive_failures = 5\nbase_ejection_time = \"10s\"\n",
    );
    text.push_str(&format!(
        "\n[[routes]]\nname = \"chat\"\npool = \"chat\"\npolicy = \"{policy}\"\nretries = 1\n\
         [routes.match]\nfamily = \"openai\"\nmodel = \"{model}\"\n\
         [routes.timeouts]\nfirst_byte = \"30s\"\nidle = \"10s\"\ntotal = \"120s\"\n"
    ));
    text
}

/// Run the demo until Ctrl-C or `--duration`.
pub async fn run(args: DemoArgs) -> ExitCode {
    let sim_config = sim::SimConfig::default();
    let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let nodes = match sim::start_fleet(host, 0, SPEEDS.len(), &sim_config, &SPEEDS).await {
        Ok(nodes) => nodes,
        Err(e) => {
            eprintln!("cannot start simulated nodes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr()).collect();
    let text = demo_config(args.port, &sim_config.model, &args.policy, &addrs);
    let config = match Config::from_toml(&text) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("demo config invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = match crate::console::persist::write_atomic(&args.config_out, &text) {
        Ok(()) => Some(args.config_out.clone()),
        Err(e) => {
            eprintln!(
                "note: could not write {}: {e}; console changes will not be persisted",
                args.config_out.display()
            );
            None
        }
    };
    let gateway = match Gateway::new(&config) {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match proxy::bind(&gateway).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{}: {e} (try --port)", args.port);
            return ExitCode::FAILURE;
        }
    };
    let gateway_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.admin_port));
    // The console needs a token for changes: a fresh one per demo run
    // unless one is given, printed for the person running it.
    let mut admin_config = config.admin.clone();
    let token_note = if admin_config.effective_token().is_none() {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        admin_config.token = Some(token.clone());
        format!("token for changes, made for this run: {token}")
    } else {
        "token for changes: the configured one".to_string()
    };
    let store = crate::console::ConfigStore::new(Arc::clone(&gateway), written, text.clone());
    let admin =
        match crate::admin::start_with_store(Arc::clone(&store), &admin_config, Some(admin_addr))
            .await
        {
            Ok(admin) => admin,
            Err(e) => {
                eprintln!("{e} (try --admin-port)");
                return ExitCode::FAILURE;
            }
        };
    let watcher = tokio::spawn(super::reload::watch(store, Duration::from_secs(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(proxy::serve(
        Arc::clone(&gateway),
        listener,
        stopped(stop_rx.clone()),
        Duration::from_secs(5),
    ));

    println!("infergate demo");
    for (node, speed) in nodes.iter().zip(SPEEDS) {
        println!(
            "  node {} on http://{} (speed {speed})",
            node.name(),
            node.addr()
        );
    }
    println!(
        "  gateway on http://{gateway_addr}  (config: {})",
        args.config_out.display()
    );
    println!(
        "  dashboard on http://{}/  (metrics: http://{}/metrics)",
        admin.addr, admin.addr
    );
    println!(
        "  console on http://{}/#console  ({token_note})",
        admin.addr
    );
    println!(
        "  workload: {} req/s of chat sessions with shared system prompts, model {}",
        args.rate, sim_config.model
    );
    println!("  try: curl -s http://{gateway_addr}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("         -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'", sim_config.model);
    println!("  Ctrl-C to stop\n");

    let stats = Arc::new(Stats::default());
    let workload = WorkloadConfig {
        target: gateway_addr,
        model: sim_config.model.clone(),
        rate: args.rate,
        ..WorkloadConfig::default()
    };
    let load = tokio::spawn(workload::run(
        workload,
        Arc::clone(&stats),
        stopped(stop_rx.clone()),
    ));

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut window: VecDeque<Vec<Sample>> = VecDeque::new();
    let mut last_counts = node_counts(&gateway);
    let mut total_requests = 0usize;
    let mut total_errors = 0usize;
    let mut elapsed = 0u64;
    let shutdown = crate::cli::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => break,
        }
        elapsed += 1;
        let samples = stats.take();
        total_requests += samples.len();
        total_errors += samples.iter().filter(|s| !s.ok).count();
        let finished = samples.len();
        window.push_back(samples);
        if window.len() > WINDOW_SECS {
            window.pop_front();
        }
        let recent: Vec<Sample> = window.iter().flatten().copied().collect();
        let summary = Summary::of(&recent);
        let counts = node_counts(&gateway);
        let delta: Vec<u64> = counts
            .iter()
            .zip(&last_counts)
            .map(|(now, before)| now - before)
            .collect();
        last_counts = counts;
        println!(
            "{}",
            summary_line(
                elapsed,
                finished,
                total_requests,
                total_errors,
                &delta,
                &summary
            )
        );
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let _ = load.await;
    let _ = server.await;
    watcher.abort();
    admin.stop().await;
    for node in nodes {
        node.shutdown().await;
    }
    println!("\n{total_requests} requests, {total_errors} errors");
    if total_errors > 0 && total_errors * 100 > total_requests {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn node_counts(gateway: &Gateway) -> Vec<u64> {
    gateway
        .table()
        .pools
        .iter()
        .flat_map(|p| p.nodes.iter().map(|n| n.load.requests()))
        .collect()
}

fn summary_line(
    t: u64,
    finished: usize,
    total: usize,
    errors: usize,
    per_node: &[u64],
    s: &Summary,
) -> String {
    let sent: u64 = per_node.iter().sum();
    let shares: Vec<String> = per_node
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let share = if sent == 0 {
                0.0
            } else {
                *n as f64 * 100.0 / sent as f64
            };
            format!("sim-{i} {share:>3.0}%")
        })
        .collect();
    format!(
        "t={t:>4}s  done {finished:>4}/s  total {total:>6}  err {errors:>3} | {} | e2e p50 {:>6} p99 {:>6} | ttft p50 {:>6} p99 {:>6}",
        shares.join(" "),
        ms(s.p50),
        ms(s.p99),
        ms(s.ttft_p50),
        ms(s.ttft_p99),
    )
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let addrs: Vec<SocketAddr> = (0..4)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect();
        let config =
            Config::from_toml(&demo_config(8080, "m", "weighted_round_robin", &addrs)).unwrap();
        assert_eq!(config.pools[0].nodes.len(), 4);
        assert_eq!(config.pools[0].nodes[3].weight, 1);
    }
}
