//! `infergate faults`: the fault matrix (`crate::faultlab`) through
//! infergate and, where installed, nginx and HAProxy, as one table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::faultlab::soak::{self, SoakSpec};
use crate::faultlab::{self, ProxyKind, RunSpec, Timeline};

/// Options of `infergate faults`.
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Proxies to compare (missing peers are skipped with a notice).
    #[arg(long, value_delimiter = ',', default_value = "infergate,nginx,haproxy")]
    proxies: Vec<String>,
    /// Scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Length of each scenario's load.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    duration: Duration,
    /// Client connections (one request at a time each).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests per second (0: as fast as answers come, like wrk).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Where configs and logs go (default: a new temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Instead of the matrix, a soak of this length through infergate: a
    /// mixed load while random nodes fail and return and the config is
    /// rewritten (`--rate` defaults to 2000 then).
    #[arg(long, value_parser = super::parse_duration)]
    soak: Option<Duration>,
    /// Instead of the matrix, replay hostile clients (malformed framing,
    /// slow and silent clients, floods, admin from another origin) against
    /// each proxy and print what each did.
    #[arg(long)]
    adversarial: bool,
    /// Soak: a new fault in each pool this often.
    #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
    fault_every: Duration,
    /// Soak: rewrite the config file this often.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    reload_every: Duration,
}

/// Run the matrix; exit 1 when infergate misses its target.
pub async fn run(args: FaultArgs) -> ExitCode {
    let timeline = Timeline {
        total: args.duration,
    };
    let all = faultlab::scenarios(timeline);
    if args.list {
        for s in &all {
            println!("{}", s.name);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(duration) = args.soak {
        return soak(&args, duration).await;
    }
    if args.adversarial {
        return adversarial(&args).await;
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|n| n == s.name))
        .collect();
    if chosen.is_empty() {
        eprintln!("no such scenario; see --list");
        return ExitCode::from(2);
    }
    let Some(exe) = this_binary() else {
        return ExitCode::FAILURE;
    };
    let mut proxies = Vec::new();
    for name in &args.proxies {
        let Some(kind) = ProxyKind::from_name(name) else {
            eprintln!("unknown proxy `{name}` (infergate, nginx, haproxy)");
            return ExitCode::from(2);
        };
        match kind.program(&exe) {
            Some(program) => proxies.push((kind, program)),
            None => eprintln!("NOTICE: {name} is not installed; its column is left out"),
        }
    }
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("infergate-faults-{}", std::process::id()))
    });
    let spec = RunSpec {
        exe: exe.clone(),
        dir: dir.clone(),
        connections: args.connections.max(1),
        rate: args.rate,
        timeline,
    };
    eprintln!(
        "fault matrix: {} scenarios x {} proxies, {:?} each; configs and logs in {}",
        chosen.len(),
        proxies.len(),
        args.duration,
        dir.display()
    );
    let mut outcomes = Vec::new();
    for scenario in &chosen {
        for (kind, program) in &proxies {
            match faultlab::run_one(&spec, scenario, *kind, program).await {
                Ok(outcome) => {
                    eprintln!(
                        "  {:<20} {:<10} {:>7} requests, {} failed",
                        outcome.scenario, outcome.proxy, outcome.requests, outcome.failed
                    );
                    outcomes.push(outcome);
                }
                Err(e) => {
                    eprintln!("  {} {}: could not run: {e}", scenario.name, kind.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!("{}", faultlab::table(&outcomes));
    let problems = faultlab::verdict(&outcomes);
    if problems.is_empty() {
        println!("infergate: no failure while a node could serve, and no row worse than a peer.");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("MISSED: {p}");
        }
        ExitCode::FAILURE
    }
}

async fn soak(args: &FaultArgs, duration: Duration) -> ExitCode {
    let Some(exe) = this_binary() else {
        return ExitCode::FAILURE;
    };
    let spec = SoakSpec {
        exe,
        dir: args.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("infergate-soak-{}", std::process::id()))
        }),
        duration,
        rate: if args.rate == 0 { 2000 } else { args.rate },
        connections: args.connections.max(1),
        fault_every: args.fault_every,
        reload_every: args.reload_every,
    };
    eprintln!(
        "soak for {duration:?}; configs and logs in {}",
        spec.dir.display()
    );
    match soak::run(&spec).await {
        Ok(report) => {
            println!("{}", soak::render(&report, &spec));
            let forbidden: usize = report.forbidden.values().sum();
            if forbidden == 0 && report.panics.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn adversarial(args: &FaultArgs) -> ExitCode {
    let Some(exe) = this_binary() else {
        return ExitCode::FAILURE;
    };
    let mut proxies = Vec::new();
    for name in &args.proxies {
        match ProxyKind::from_name(name).and_then(|k| k.program(&exe).map(|p| (k, p))) {
            Some(found) => proxies.push(found),
            None => eprintln!("NOTICE: {name} is not available; its column is left out"),
        }
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("infergate-adversarial-{}", std::process::id()))
    });
    eprintln!(
        "hostile clients against {} proxies; logs in {}",
        proxies.len(),
        dir.display()
    );
    match crate::faultlab::adversarial::run(&exe, &dir, &proxies).await {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("adversarial: {e}");
            ExitCode::FAILURE
        }
    }
}

/// This binary: it runs the simulated nodes and the gateway under test.
fn this_binary() -> Option<PathBuf> {
    std::env::current_exe()
        .map_err(|e| eprintln!("cannot find the infergate binary: {e}"))
        .ok()
}
