//! The `infergate` command line: `serve`, `check`, `ctl`, `sim`, `demo`
//! and `bench`.

pub mod bench;
mod bench_energy;
mod ctl;
mod demo;
mod faults;
pub(crate) mod http;
mod probe;
pub mod reload;
mod replicas;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::proxy::{self, Gateway};
use crate::sim;

/// A load balancer for AI inference traffic.
#[derive(Debug, Parser)]
#[command(name = "infergate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// How long to let requests in flight finish after SIGTERM/Ctrl-C.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        drain: Duration,
    },
    /// Validate a configuration file (--config), or how a running gateway
    /// spreads traffic across its nodes (--gateway, with --admin).
    Check {
        /// Configuration file (TOML) to validate.
        #[arg(
            long,
            short,
            required_unless_present = "gateway",
            conflicts_with = "gateway"
        )]
        config: Option<PathBuf>,
        /// Data-plane URL of a running gateway to probe.
        #[arg(long)]
        gateway: Option<String>,
        #[command(flatten)]
        probe: probe::ProbeArgs,
    },
    /// Read and change a running gateway through its admin API.
    Ctl(ctl::CtlArgs),
    /// Run simulated inference nodes (OpenAI API, vLLM metrics).
    Sim {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Port of the first node; node i listens on base-port + i (0: any free ports).
        #[arg(long, default_value_t = 9000)]
        base_port: u16,
        /// Address to listen on.
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
        host: IpAddr,
        /// Speed factor per node, comma-separated (1.0 = full speed, 0.5 = half).
        #[arg(long, value_delimiter = ',')]
        speeds: Vec<f64>,
        /// Simulator settings (TOML with the fields of the simulator's config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Node name (in `x-sim-node`, metrics and logs): NAME for one node,
        /// NAME-i for several (default sim-i).
        #[arg(long)]
        name: Option<String>,
        /// Print the tokenizer.json of the simulated fleet (byte-level BPE
        /// over the workload's words; give it to nodes and gateways with
        /// `tokenizer`) and exit.
        #[arg(long)]
        print_tokenizer: bool,
    },
    /// Run the whole product on this machine: simulated nodes, a gateway and a workload.
    Demo(demo::DemoArgs),
    /// Compare balancing policies on a simulated fleet with the same workload.
    Bench(Box<bench::BenchArgs>),
    /// Kill, hang, slow and break simulated nodes under load through
    /// infergate and (where installed) nginx and HAProxy; print one table.
    Faults(faults::FaultArgs),
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse(text)
}

/// Commands whose output is read by other programs end quietly when the
/// reader goes away (`infergate ctl nodes | head`), as Unix tools do,
/// instead of failing on the closed pipe. Only for them: the gateway keeps
/// ignoring SIGPIPE, so a closed client socket is an error, not an exit.
fn exit_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called before any output and with no other thread relying
    // on SIGPIPE's disposition; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Run the command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    if matches!(
        cli.command,
        Command::Ctl(_)
            | Command::Check {
                gateway: Some(_),
                ..
            }
    ) {
        exit_quietly_on_closed_stdout();
    }
    match cli.command {
        Command::Serve { config, drain } => serve(config, drain).await,
        Command::Check {
            config,
            gateway,
            probe,
        } => match (config, gateway) {
            (Some(config), _) => check(&config),
            (None, Some(gateway)) => probe::run(&gateway, &probe).await,
            (None, None) => ExitCode::from(2),
        },
        Command::Ctl(args) => ctl::run(args).await,
        Command::Sim {
            nodes,
            base_port,
            host,
            speeds,
            config,
            name,
            print_tokenizer,
        } => {
            if print_tokenizer {
                println!("{}", crate::workload::fleet_tokenizer_json());
                return ExitCode::SUCCESS;
            }
            run_sim(nodes, base_port, host, &speeds, config, name.as_deref()).await
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(*args).await,
        Command::Faults(args) => faults::run(args).await,
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let nodes: usize = config.pools.iter().map(|p| p.nodes.len()).sum();
            println!(
                "{}: OK ({} pools, {} nodes, {} routes)",
                path.display(),
                config.pools.len(),
                nodes,
                config.routes.len()
            );
            for route in &config.routes {
                let nodes = config
                    .pools
                    .iter()
                    .find(|p| p.name == route.pool)
                    .map_or(0, |p| p.nodes.len());
                let untracked = crate::balance::nodes_past_prefix_memory(&route.policy, nodes);
                if untracked > 0 {
                    eprintln!(
                        "warning: route \"{}\" ({}): its prefix memory covers pool \"{}\"'s first {} nodes; prompts sent to the other {untracked} are not remembered there",
                        route.name,
                        route.policy,
                        route.pool,
                        crate::balance::prefix_index::MAX_NODES
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "{}: {}",
                path.display(),
                crate::console::redact::scrub_message(&e.to_string())
            );
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: PathBuf, drain: Duration) -> ExitCode {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::from_toml(&text) {
        Ok(config) => config,
        Err(e) => {
            eprintln!(
                "{}: {}",
                path.display(),
                crate::console::redact::scrub_message(&e.to_string())
            );
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::new(&config) {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!(
                "{}: {}",
                path.display(),
                crate::console::redact::scrub_message(&e.to_string())
            );
            return ExitCode::FAILURE;
        }
    };
    let listener = match proxy::bind(&gateway).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", config.listener.addr);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %config.listener.addr, "infergate listening");
    let store = crate::console::ConfigStore::new(gateway.clone(), Some(path), text);
    if let Some(audit_file) = &config.admin.audit_file {
        if let Err(e) = store.audit.attach_file(audit_file) {
            eprintln!("cannot use admin.audit_file {}: {e}", audit_file.display());
            return ExitCode::FAILURE;
        }
    }
    let admin = if config.admin.enabled {
        match crate::admin::start_with_store(store.clone(), &config.admin, None).await {
            Ok(admin) => {
                println!("admin: dashboard and metrics on http://{}/", admin.addr);
                Some(admin)
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    // The endpoint picker's address is read at start, like the listeners'.
    let epp = match crate::epp::start(gateway.clone(), &config.epp).await {
        Ok(Some(epp)) => {
            println!("epp: endpoint picker (ext_proc gRPC) on {}", epp.addr);
            Some(epp)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!(
                "cannot listen on epp.addr {}: {e}",
                config.epp.addr.as_deref().unwrap_or("")
            );
            return ExitCode::FAILURE;
        }
    };
    let watcher = tokio::spawn(reload::watch(store, Duration::from_secs(1)));
    let result = proxy::serve(gateway, listener, shutdown_signal(), drain).await;
    watcher.abort();
    drop(epp);
    if let Some(admin) = admin {
        admin.stop().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

async fn run_sim(
    count: usize,
    base_port: u16,
    host: IpAddr,
    speeds: &[f64],
    config: Option<PathBuf>,
    name: Option<&str>,
) -> ExitCode {
    let sim_config = match config {
        Some(path) => match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| toml::from_str::<sim::SimConfig>(&text).map_err(|e| e.to_string()))
        {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => sim::SimConfig::default(),
    };
    let nodes =
        match sim::start_named_fleet(host, base_port, count, &sim_config, speeds, name).await {
            Ok(nodes) => nodes,
            Err(e) => {
                eprintln!("cannot start simulated nodes: {e}");
                return ExitCode::FAILURE;
            }
        };
    for node in &nodes {
        match node.kv_events_endpoint() {
            Some(ep) => println!(
                "{} listening on http://{}, kv events on {ep}{}",
                node.name(),
                node.addr(),
                node.kv_replay_endpoint()
                    .map(|r| format!(" (replay {r})"))
                    .unwrap_or_default()
            ),
            None => println!("{} listening on http://{}", node.name(), node.addr()),
        }
    }
    shutdown_signal().await;
    for node in nodes {
        node.shutdown().await;
    }
    ExitCode::SUCCESS
}
