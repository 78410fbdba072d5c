//! The fault matrix: the same node failures, under the same load, through
//! infergate and (where installed) nginx and HAProxy configured for
//! failover, in one run, as one table.
//!
//! Every scenario starts three simulated nodes, each its own `infergate
//! sim` process (so a kill is a real SIGKILL and a hang a real SIGSTOP),
//! and a fresh proxy in front of them; drives a closed loop of chat
//! requests ([`load`]); injects its faults on a timeline; and reads what
//! the clients saw. `infergate faults` prints the table and `bench/faults.sh`
//! wraps it; `tests/fault_matrix.rs` runs the infergate column in CI.
//!
//! Columns: requests sent; failed (not a 200 with the whole answer);
//! failures by status (`000`: no response, `cut`: a stream that broke);
//! detect: from the fault to the start of the last request it hurt
//! (failed, or took over [`SLOW`]; requests in flight at the fault count
//! from 0); recover: from a node's return to the
//! first request it answered (for "all down", to the first success); p99
//! latency.

pub mod adversarial;
pub mod load;
pub mod procs;
pub mod proxies;
pub mod soak;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::sim::Faults;
use load::{LoadSpec, Record};
use procs::NodeProcess;
pub use proxies::ProxyKind;

/// A request slower than this was hurt by the fault.
pub const SLOW: Duration = Duration::from_millis(250);

/// Nodes in every scenario.
pub const NODES: usize = 3;

/// Something done to the nodes during a run.
#[derive(Debug, Clone)]
pub enum Action {
    /// SIGKILL node i.
    Kill(usize),
    /// SIGSTOP node i.
    Hang(usize),
    /// SIGCONT node i.
    Resume(usize),
    /// Start node i again on its address.
    Restart(usize),
    /// Set node i's injected faults (`Faults::default()` clears them).
    Faults(usize, Faults),
}

/// One row of the matrix.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name (also used to select scenarios).
    pub name: &'static str,
    /// Streamed requests instead of plain ones.
    pub streaming: bool,
    /// What happens when, from the start of the load.
    pub steps: Vec<(Duration, Action)>,
    /// A span without requests (for faults that strike idle connections).
    pub pause: Option<(Duration, Duration)>,
    /// At least one node serves throughout: the target is zero failures.
    pub one_node_serves: bool,
    /// Time the return of this node (None: no node returns; `Some(None)`:
    /// every node returns, time the first success).
    pub recovery: Option<(Duration, Option<usize>)>,
}

/// When faults strike within a run of `total`.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Length of the load.
    pub total: Duration,
}

impl Timeline {
    fn fault(self) -> Duration {
        self.total.mul_f64(0.25)
    }
    fn restore(self) -> Duration {
        self.total.mul_f64(0.6)
    }
}

fn slow() -> Faults {
    Faults {
        slowdown: 10.0,
        ..Faults::default()
    }
}

fn errors(status: u16) -> Faults {
    Faults {
        error_rate: 1.0,
        error_status: status,
        ..Faults::default()
    }
}

fn close_after(tokens: u32) -> Faults {
    Faults {
        close_after_tokens: Some(tokens),
        ..Faults::default()
    }
}

/// Every scenario of the matrix for a run of `t`.
pub fn scenarios(t: Timeline) -> Vec<Scenario> {
    let (f, r) = (t.fault(), t.restore());
    let half = Duration::from_millis(500);
    let clear = |i| Action::Faults(i, Faults::default());
    let plain = |name, steps: Vec<(Duration, Action)>, recovery| Scenario {
        name,
        streaming: false,
        steps,
        pause: None,
        one_node_serves: true,
        recovery,
    };
    vec![
        Scenario {
            pause: Some((f - half, f + half)),
            ..plain("killed-idle", vec![(f, Action::Kill(0))], None)
        },
        plain("killed-under-load", vec![(f, Action::Kill(0))], None),
        plain(
            "hung",
            vec![(f, Action::Hang(0)), (r, Action::Resume(0))],
            Some((r, Some(0))),
        ),
        plain(
            "slow-10x",
            vec![(f, Action::Faults(0, slow())), (r, clear(0))],
            None,
        ),
        plain(
            "answers-500",
            vec![(f, Action::Faults(0, errors(500))), (r, clear(0))],
            Some((r, Some(0))),
        ),
        plain(
            "answers-503",
            vec![(f, Action::Faults(0, errors(503))), (r, clear(0))],
            Some((r, Some(0))),
        ),
        plain(
            "closes-after-read",
            vec![(f, Action::Faults(0, close_after(0))), (r, clear(0))],
            Some((r, Some(0))),
        ),
        Scenario {
            streaming: true,
            ..plain(
                "resets-mid-stream",
                vec![(f, Action::Faults(0, close_after(2))), (r, clear(0))],
                Some((r, Some(0))),
            )
        },
        plain(
            "killed+hung",
            vec![
                (f, Action::Kill(0)),
                (f + half, Action::Hang(1)),
                (r, Action::Resume(1)),
                (r + half, Action::Restart(0)),
            ],
            Some((r + half, Some(0))),
        ),
        Scenario {
            one_node_serves: false,
            ..plain(
                "all-down-then-back",
                (0..NODES)
                    .map(|i| (f, Action::Kill(i)))
                    .chain((0..NODES).map(|i| (r, Action::Restart(i))))
                    .collect(),
                Some((r, None)),
            )
        },
        plain(
            "restarted-same-addr",
            vec![(f, Action::Kill(0)), (f + 2 * half, Action::Restart(0))],
            Some((f + 2 * half, Some(0))),
        ),
    ]
}

/// How a run is driven.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The infergate binary (also runs the simulated nodes).
    pub exe: PathBuf,
    /// Where configs and logs go (one folder per scenario and proxy).
    pub dir: PathBuf,
    /// Load per scenario.
    pub connections: usize,
    /// Requests per second (0: closed loop as fast as possible).
    pub rate: u32,
    /// Length of each scenario's load.
    pub timeline: Timeline,
}

/// What one proxy did in one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// Proxy name.
    pub proxy: &'static str,
    /// Requests sent.
    pub requests: usize,
    /// Requests that did not end in a 200 with the whole answer.
    pub failed: usize,
    /// Failures by status (`000`: no response, `cut`: broken stream).
    pub by_status: BTreeMap<String, usize>,
    /// From the fault to the start of the last request it hurt.
    pub detect: Option<Duration>,
    /// From the return to the first request the returning node answered.
    pub recover: Option<Duration>,
    /// Whether a node returns in this scenario.
    pub expects_recovery: bool,
    /// Longest time a failed request took to fail.
    pub slowest_failure: Option<Duration>,
    /// p99 latency of all requests.
    pub p99: Duration,
    /// Whether the target was zero failures.
    pub one_node_serves: bool,
    /// Streamed requests.
    pub streaming: bool,
}

/// Run one scenario through one proxy.
pub async fn run_one(
    spec: &RunSpec,
    scenario: &Scenario,
    proxy: ProxyKind,
    program: &Path,
) -> Result<Outcome, String> {
    let dir = spec.dir.join(format!("{}-{}", scenario.name, proxy.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        nodes.push(NodeProcess::start(&spec.exe, &dir, &format!("n{i}")).await?);
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| (n.name.clone(), n.addr)).collect();
    let mut gateway = proxy.start(program, &dir, &addrs).await?;
    warm_up(gateway.addr).await?;

    let load = LoadSpec {
        connections: spec.connections,
        duration: spec.timeline.total,
        rate: spec.rate,
        streaming: scenario.streaming,
        max_tokens: if scenario.streaming { 16 } else { 4 },
        pause: scenario.pause,
        timeout: Duration::from_secs(15),
        mixed: false,
    };
    let begin = Instant::now();
    let target = gateway.addr;
    let driver = tokio::spawn(async move { load::run(target, &load, &names, begin).await });
    for (at, action) in &scenario.steps {
        tokio::time::sleep_until(begin + *at).await;
        apply(&mut nodes, action).await?;
    }
    let records = driver.await.map_err(|e| format!("load: {e}"))?;
    if !gateway.running() {
        return Err(format!("{} exited during {}", proxy.name(), scenario.name));
    }
    drop(gateway);
    drop(nodes);
    Ok(summarize(scenario, proxy, &records))
}

/// Send requests until 10 in a row succeed (the proxy and nodes are up).
async fn warm_up(target: std::net::SocketAddr) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(15);
    let spec = LoadSpec {
        connections: 1,
        duration: Duration::from_millis(100),
        rate: 0,
        streaming: false,
        max_tokens: 1,
        pause: None,
        timeout: Duration::from_secs(2),
        mixed: false,
    };
    loop {
        let records = load::run(target, &spec, &[], Instant::now()).await;
        if records.len() >= 10 && records.iter().rev().take(10).all(Record::ok) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!("no steady answers through {target}"));
        }
    }
}

pub(crate) async fn apply(nodes: &mut [NodeProcess], action: &Action) -> Result<(), String> {
    let node = |i: usize| format!("no node {i}");
    match action {
        Action::Kill(i) => nodes.get_mut(*i).ok_or_else(|| node(*i))?.kill(),
        Action::Hang(i) => nodes.get(*i).ok_or_else(|| node(*i))?.hang(),
        Action::Resume(i) => nodes.get(*i).ok_or_else(|| node(*i))?.resume(),
        Action::Restart(i) => nodes.get_mut(*i).ok_or_else(|| node(*i))?.restart().await?,
        Action::Faults(i, faults) => {
            nodes
                .get(*i)
                .ok_or_else(|| node(*i))?
                .set_faults(faults)
                .await?
        }
    }
    Ok(())
}

/// Read the client records of one run.
pub fn summarize(scenario: &Scenario, proxy: ProxyKind, records: &[Record]) -> Outcome {
    let fault = scenario.steps.first().map_or(Duration::ZERO, |s| s.0);
    let mut by_status = BTreeMap::new();
    for r in records.iter().filter(|r| !r.ok()) {
        let key = match r.status {
            0 => "000".to_string(),
            200 => "cut".to_string(),
            s => s.to_string(),
        };
        *by_status.entry(key).or_insert(0) += 1;
    }
    // Requests in flight when the fault struck count too (from 0).
    let detect = records
        .iter()
        .filter(|r| r.start + r.latency >= fault && (!r.ok() || r.latency >= SLOW))
        .map(|r| r.start.saturating_sub(fault))
        .max();
    let recover = scenario.recovery.and_then(|(back, node)| {
        records
            .iter()
            .filter(|r| r.start >= back && r.ok())
            .find(|r| node.is_none() || r.node == node)
            .map(|r| r.start - back)
    });
    let mut latencies: Vec<Duration> = records.iter().map(|r| r.latency).collect();
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    Outcome {
        scenario: scenario.name,
        proxy: proxy.name(),
        requests: records.len(),
        failed: records.iter().filter(|r| !r.ok()).count(),
        by_status,
        detect,
        recover,
        expects_recovery: scenario.recovery.is_some(),
        slowest_failure: records.iter().filter(|r| !r.ok()).map(|r| r.latency).max(),
        p99,
        one_node_serves: scenario.one_node_serves,
        streaming: scenario.streaming,
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{} ms", d.as_millis()))
}

/// Recovery: `-` where no node returns, `not in run` where one did but
/// answered nothing before the run ended.
fn recovery(o: &Outcome) -> String {
    match (o.expects_recovery, o.recover) {
        (false, _) => "-".to_string(),
        (true, None) => "not in run".to_string(),
        (true, some) => ms(some),
    }
}

/// The results as a Markdown table, one row per scenario and proxy.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | proxy | requests | failed | failures by status | detect | recover | p99 |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let statuses = if o.by_status.is_empty() {
            "-".to_string()
        } else {
            o.by_status
                .iter()
                .map(|(s, n)| format!("{s}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} ms |",
            o.scenario,
            o.proxy,
            o.requests,
            o.failed,
            statuses,
            ms(o.detect),
            recovery(o),
            o.p99.as_millis()
        );
    }
    out
}

/// Where infergate misses the target: a failure on a non-streaming row
/// where a node kept serving, or more failures than a peer on any row.
pub fn verdict(outcomes: &[Outcome]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in outcomes.iter().filter(|o| o.proxy == "infergate") {
        if o.one_node_serves && !o.streaming && o.failed > 0 {
            problems.push(format!(
                "{}: {} failed requests while a node could serve",
                o.scenario, o.failed
            ));
        }
        for peer in outcomes
            .iter()
            .filter(|p| p.scenario == o.scenario && p.proxy != "infergate")
        {
            // Runs differ in request count; compare failure shares, with
            // a little slack for the one-request granularity.
            let share = |x: &Outcome| x.failed as f64 / x.requests.max(1) as f64;
            if o.failed > 0 && share(o) > share(peer) * 1.1 + 0.0005 {
                problems.push(format!(
                    "{}: infergate failed {} of {}, {} failed {} of {}",
                    o.scenario, o.failed, o.requests, peer.proxy, peer.failed, peer.requests
                ));
            }
        }
    }
    problems
}
