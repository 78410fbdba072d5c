//! Runs load stages (inference-perf's stages): each stage either offers a
//! Poisson rate (open loop; trace lines with timestamps keep them) or holds
//! a fixed number of requests in flight (closed loop), for a duration;
//! then waits (bounded) for the requests in flight. A progress line on
//! stderr shows the stage while it runs.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::measure::{self, BenchClient, Record, Target};
use super::source::{Source, WorkloadKind};

/// Most requests a rate stage keeps in flight; arrivals beyond it fail
/// at once with a `client limit` error.
pub const MAX_IN_FLIGHT: usize = 8192;

/// How a stage offers load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Poisson arrivals at this many requests per second.
    Rate(f64),
    /// This many requests in flight at all times.
    Concurrency(usize),
    /// A day-shaped Poisson rate over the stage: `peak × (floor + (1 −
    /// floor) × sin²(π × elapsed/duration))` — low, up to the peak at mid
    /// stage, low again.
    Day {
        /// Requests per second at the peak.
        peak: f64,
        /// Share of the peak at the start and end (0..1).
        floor: f64,
    },
}

impl Load {
    /// Requests per second `frac` (0..1) of the way through the stage
    /// (0 for a concurrency stage).
    pub fn rate_at(&self, frac: f64) -> f64 {
        match *self {
            Load::Rate(r) => r,
            Load::Concurrency(_) => 0.0,
            Load::Day { peak, floor } => {
                let s = (std::f64::consts::PI * frac.clamp(0.0, 1.0)).sin();
                peak * (floor + (1.0 - floor) * s * s)
            }
        }
    }
}

/// One stage's parameters as run.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// How it offered load.
    pub load: Load,
    /// How long it sent.
    pub duration: Duration,
}

/// What a stage sent and how it went.
#[derive(Debug, Clone, Default)]
pub struct StageResult {
    /// Finished requests.
    pub records: Vec<Record>,
    /// Requests still unanswered at the drain deadline (not in `records`).
    pub unfinished: u64,
}

/// Shared counters for the progress line.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
}

/// Run one stage. `epoch` is the run's start (times in records are
/// seconds after it); `drain` bounds the wait for requests in flight.
#[allow(clippy::too_many_arguments)]
pub async fn run_stage(
    client: &BenchClient,
    target: &Target,
    kind: &WorkloadKind,
    stage: usize,
    spec: &StageSpec,
    epoch: Instant,
    drain: Duration,
    label: &str,
) -> StageResult {
    let progress = Arc::new(Progress::default());
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let stop_at = started + spec.duration;
    let ticker = tokio::spawn(show_progress(
        Arc::clone(&progress),
        label.to_string(),
        started,
        spec.duration,
    ));
    let mut source = Source::new(kind);
    let launch = |tasks: &mut JoinSet<()>, planned, scheduled: f64| {
        let (client, target) = (client.clone(), target.clone());
        let (progress, records) = (Arc::clone(&progress), Arc::clone(&records));
        progress.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let record = measure::send(&client, &target, &planned, epoch, stage, scheduled).await;
            progress.done.fetch_add(1, Ordering::Relaxed);
            if !record.ok() {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
            records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record);
        });
    };
    match spec.load {
        Load::Rate(_) | Load::Day { .. } => {
            let mut next = started;
            let total = spec.duration.as_secs_f64().max(1e-9);
            loop {
                // Reap finished tasks so the set stays small.
                while tasks.try_join_next().is_some() {}
                let Some(item) = source.next_request() else {
                    break;
                };
                next = match item.at_ms {
                    Some(ms) => started + Duration::from_millis(ms),
                    None => {
                        let frac = (next - started).as_secs_f64() / total;
                        let rate = spec.load.rate_at(frac).max(1e-6);
                        next + Duration::from_secs_f64(source.gap(rate).min(60.0))
                    }
                };
                if next >= stop_at {
                    break;
                }
                tokio::time::sleep_until(next).await;
                let scheduled = (next - epoch).as_secs_f64();
                if tasks.len() >= MAX_IN_FLIGHT {
                    // Open loop, but bounded: an arrival beyond the limit
                    // fails at once instead of exhausting sockets.
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    let now = (Instant::now() - epoch).as_secs_f64();
                    records
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Record {
                            stage,
                            scheduled,
                            start: now,
                            end: now,
                            streamed: item.planned.stream,
                            error: Some(format!(
                                "client limit: {MAX_IN_FLIGHT} requests in flight"
                            )),
                            ..Record::default()
                        });
                    continue;
                }
                launch(&mut tasks, item.planned, scheduled);
            }
        }
        Load::Concurrency(n) => {
            let source = Arc::new(Mutex::new(source));
            let mut in_flight = 0usize;
            'outer: loop {
                while in_flight < n.max(1) {
                    if Instant::now() >= stop_at {
                        break 'outer;
                    }
                    let item = source
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .next_request();
                    let Some(item) = item else { break 'outer };
                    let now = Instant::now();
                    launch(&mut tasks, item.planned, (now - epoch).as_secs_f64());
                    in_flight += 1;
                }
                tokio::select! {
                    joined = tasks.join_next() => {
                        if joined.is_none() { break; }
                        in_flight -= 1;
                    }
                    () = tokio::time::sleep_until(stop_at) => break,
                }
            }
        }
    }
    // Let requests in flight finish, bounded by `drain`.
    let drain_until = Instant::now() + drain;
    let mut unfinished = 0;
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = tokio::time::sleep_until(drain_until) => {
                unfinished = tasks.len() as u64;
                tasks.abort_all();
                break;
            }
        }
    }
    ticker.abort();
    let _ = ticker.await;
    finish_progress(&progress, label, started);
    let mut records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    records.sort_by(|a, b| a.start.total_cmp(&b.start));
    StageResult {
        records,
        unfinished,
    }
}

fn progress_line(p: &Progress, label: &str, started: Instant) -> String {
    let (sent, done, errors) = (
        p.sent.load(Ordering::Relaxed),
        p.done.load(Ordering::Relaxed),
        p.errors.load(Ordering::Relaxed),
    );
    let secs = started.elapsed().as_secs_f64();
    format!(
        "{label}: {secs:>5.1}s  sent {sent}  done {done}  errors {errors}  in flight {}  {:.1} req/s",
        sent.saturating_sub(done),
        if secs > 0.0 { done as f64 / secs } else { 0.0 }
    )
}

/// Redraw the progress line every 500 ms on a terminal, or print one line
/// every 5 s otherwise (logs).
async fn show_progress(p: Arc<Progress>, label: String, started: Instant, _total: Duration) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let line = progress_line(&p, &label, started);
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

fn finish_progress(p: &Progress, label: &str, started: Instant) {
    let line = progress_line(p, label, started);
    let mut err = std::io::stderr().lock();
    let _ = if std::io::stderr().is_terminal() {
        writeln!(err, "\r\x1b[2K{line}")
    } else {
        writeln!(err, "{line}")
    };
}
