//! The soak: a long mixed load (streamed and plain, chat and completions,
//! priorities, two tenants over three routes and two pools) through one
//! gateway while random nodes are killed, hung, slowed and broken and
//! brought back, and the config file is rewritten every few seconds.
//! One node of each pool is faulty at most, so every request has a node
//! that could serve it: the only failures the rules allow are streams a
//! node cut after they started.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use super::load::{self, LoadSpec, Record};
use super::procs::{free_port, NodeProcess, ProxyProcess};
use super::{apply, Action};
use crate::sim::Faults;

/// How a soak is driven.
#[derive(Debug, Clone)]
pub struct SoakSpec {
    /// The infergate binary.
    pub exe: PathBuf,
    /// Configs and logs.
    pub dir: PathBuf,
    /// Length of the load.
    pub duration: Duration,
    /// Requests per second.
    pub rate: u32,
    /// Client connections.
    pub connections: usize,
    /// A new fault in each pool this often (when none is active there).
    pub fault_every: Duration,
    /// The config file is rewritten this often.
    pub reload_every: Duration,
}

/// Resource use of the gateway at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
}

/// What a soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Requests sent.
    pub requests: usize,
    /// Streamed requests.
    pub streamed: usize,
    /// Streams a node cut after they started (allowed).
    pub cut_streams: usize,
    /// Failures the rules forbid, by status (`000`: no response).
    pub forbidden: BTreeMap<String, usize>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Config rewrites.
    pub reloads: usize,
    /// Gateway memory and descriptors over time.
    pub samples: Vec<Sample>,
    /// Log lines with a panic.
    pub panics: Vec<String>,
    /// Log lines at ERROR level.
    pub errors: Vec<String>,
    /// p99 latency of plain requests.
    pub p99_plain: Duration,
}

const POLICIES: [&str; 3] = ["least_outstanding", "round_robin", "power_of_two"];

fn config(addr: std::net::SocketAddr, nodes: &[NodeProcess], generation: usize) -> String {
    let policy = POLICIES[generation % POLICIES.len()];
    let mut text = format!("[listener]\naddr = \"{addr}\"\n\n[admin]\nenabled = false\n");
    for (p, pool) in ["a", "b"].iter().enumerate() {
        let _ = write!(text, "\n[[pools]]\nname = \"{pool}\"\n");
        for (i, node) in nodes.iter().enumerate().skip(p * 3).take(3) {
            // Weights move with every generation, so reloads change something.
            let weight = 1 + (i + generation) % 3;
            let _ = write!(
                text,
                "[[pools.nodes]]\nname = \"{}\"\naddr = \"{}\"\nweight = {weight}\n",
                node.name, node.addr
            );
        }
        text.push_str(
            "[pools.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
             unhealthy_threshold = 2\nhealthy_threshold = 2\n\
             [pools.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"2s\"\n",
        );
    }
    let route = |name: &str, pool: &str, policy: &str, matcher: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\npool = \"{pool}\"\npolicy = \"{policy}\"\nretries = 2\n\
             trust_priority_header_from = [\"127.0.0.0/8\", \"::1\"]\n\
             [routes.timeouts]\nconnect = \"1s\"\nfirst_byte = \"1s\"\nidle = \"2s\"\n{matcher}"
        )
    };
    text.push_str(&route(
        "blue",
        "a",
        policy,
        "[routes.match]\nheaders = { \"x-tenant\" = \"blue\" }\n",
    ));
    text.push_str(&route(
        "completions",
        "b",
        policy,
        "[routes.match]\npath_prefix = \"/v1/completions\"\n",
    ));
    text.push_str(&route("rest", "b", "least_outstanding", ""));
    text
}

/// Write `text` to `path` atomically (the watcher never reads half a
/// file), as the console does.
fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    crate::console::persist::write_atomic(path, text)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    Sample { at, rss_kib, fds }
}

/// A fault in progress: which node, and how to end it.
struct Active {
    node: usize,
    until: Instant,
    undo: Action,
}

fn random_fault(node: usize) -> (&'static str, Action, Action, Duration) {
    let clear = Action::Faults(node, Faults::default());
    match fastrand::usize(..5) {
        0 => (
            "kill",
            Action::Kill(node),
            Action::Restart(node),
            Duration::from_secs(2),
        ),
        1 => (
            "hang",
            Action::Hang(node),
            Action::Resume(node),
            Duration::from_millis(1500),
        ),
        2 => (
            "slow",
            Action::Faults(
                node,
                Faults {
                    slowdown: 10.0,
                    ..Faults::default()
                },
            ),
            clear,
            Duration::from_secs(3),
        ),
        3 => (
            "500s",
            Action::Faults(
                node,
                Faults {
                    error_rate: 1.0,
                    ..Faults::default()
                },
            ),
            clear,
            Duration::from_secs(3),
        ),
        _ => (
            "close-after-read",
            Action::Faults(
                node,
                Faults {
                    close_after_tokens: Some(0),
                    ..Faults::default()
                },
            ),
            clear,
            Duration::from_secs(3),
        ),
    }
}

/// Run a soak.
pub async fn run(spec: &SoakSpec) -> Result<SoakReport, String> {
    std::fs::create_dir_all(&spec.dir).map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for i in 0..6 {
        nodes.push(NodeProcess::start(&spec.exe, &spec.dir, &format!("n{i}")).await?);
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let port = free_port().map_err(|e| e.to_string())?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config_path = spec.dir.join("soak.toml");
    write_atomic(&config_path, &config(addr, &nodes, 0))?;
    let mut command = Command::new(&spec.exe);
    command
        .args(["serve", "--drain", "2s", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let log = spec.dir.join("gateway.log");
    let mut gateway = ProxyProcess::start(command, addr, &log).await?;
    let pid = gateway.pid();

    let load_spec = LoadSpec {
        connections: spec.connections,
        duration: spec.duration,
        rate: spec.rate,
        streaming: false,
        max_tokens: 8,
        pause: None,
        timeout: Duration::from_secs(20),
        mixed: true,
    };
    let begin = Instant::now();
    let driver = tokio::spawn(async move { load::run(addr, &load_spec, &names, begin).await });

    let mut report = SoakReport::default();
    let mut active: [Option<Active>; 2] = [None, None];
    let mut next_fault = [begin + spec.fault_every, begin + spec.fault_every * 3 / 2];
    let mut next_reload = begin + spec.reload_every;
    let mut next_sample = begin;
    let end = begin + spec.duration;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            report.samples.push(sample(pid, now - begin));
            next_sample += Duration::from_secs(30);
        }
        if now >= next_reload {
            report.reloads += 1;
            write_atomic(&config_path, &config(addr, &nodes, report.reloads))?;
            next_reload += spec.reload_every;
        }
        for pool in 0..2 {
            match active[pool].take() {
                Some(fault) if now >= fault.until => {
                    apply(&mut nodes, &fault.undo).await?;
                    next_fault[pool] = now + spec.fault_every;
                }
                Some(fault) => active[pool] = Some(fault),
                None if now >= next_fault[pool] => {
                    let node = pool * 3 + fastrand::usize(..3);
                    let (kind, act, undo, lasts) = random_fault(node);
                    apply(&mut nodes, &act).await?;
                    *report.faults.entry(kind).or_insert(0) += 1;
                    active[pool] = Some(Active {
                        node,
                        until: now + lasts,
                        undo,
                    });
                }
                None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for fault in active.iter_mut().filter_map(Option::take) {
        let _ = fault.node;
        apply(&mut nodes, &fault.undo).await?;
    }
    let records = driver.await.map_err(|e| format!("load: {e}"))?;
    report.samples.push(sample(pid, begin.elapsed()));
    if !gateway.running() {
        return Err("the gateway exited during the soak".into());
    }
    drop(gateway);
    drop(nodes);
    tally(&mut report, &records);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    report.panics = text
        .lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_string)
        .collect();
    report.errors = text
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect();
    Ok(report)
}

fn tally(report: &mut SoakReport, records: &[Record]) {
    report.requests = records.len();
    report.streamed = records.iter().filter(|r| r.streaming).count();
    for r in records.iter().filter(|r| !r.ok()) {
        if r.streaming && r.status == 200 {
            report.cut_streams += 1;
        } else {
            let key = if r.status == 0 {
                "000".to_string()
            } else {
                r.status.to_string()
            };
            *report.forbidden.entry(key).or_insert(0) += 1;
        }
    }
    let mut plain: Vec<Duration> = records
        .iter()
        .filter(|r| !r.streaming)
        .map(|r| r.latency)
        .collect();
    plain.sort();
    report.p99_plain = plain
        .get(plain.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
}

/// The report as Markdown.
pub fn render(report: &SoakReport, spec: &SoakSpec) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {:?} at {} req/s over {} connections; a fault per pool every {:?}, config rewritten every {:?}\n",
        spec.duration, spec.rate, spec.connections, spec.fault_every, spec.reload_every
    );
    let faults: Vec<String> = report
        .faults
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let forbidden: usize = report.forbidden.values().sum();
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| requests | {} ({} streamed) |",
        report.requests, report.streamed
    );
    let _ = writeln!(
        out,
        "| failures rule 1 forbids | {forbidden} {:?} |",
        report.forbidden
    );
    let _ = writeln!(
        out,
        "| streams cut after they started | {} |",
        report.cut_streams
    );
    let _ = writeln!(
        out,
        "| p99 of plain requests | {} ms |",
        report.p99_plain.as_millis()
    );
    let _ = writeln!(out, "| faults injected | {} |", faults.join(", "));
    let _ = writeln!(out, "| config reloads | {} |", report.reloads);
    let _ = writeln!(out, "| panics in the log | {} |", report.panics.len());
    let _ = writeln!(out, "| ERROR lines in the log | {} |", report.errors.len());
    let _ = writeln!(out, "\n| at | gateway RSS | open fds |\n|---|---|---|");
    for s in &report.samples {
        let _ = writeln!(
            out,
            "| {} s | {:.1} MiB | {} |",
            s.at.as_secs(),
            s.rss_kib as f64 / 1024.0,
            s.fds
        );
    }
    for line in report.panics.iter().chain(&report.errors).take(10) {
        let _ = writeln!(out, "    {line}");
    }
    out
}
