//! A bench run: stages in turn against one target, then the reports —
//! `summary_lifecycle_metrics.json` (all stages), `stage_N_lifecycle_metrics.json`,
//! `per_request_lifecycle_metrics.csv` (one row per request) and
//! `report.html`, as inference-perf names its files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::html;
use super::measure::{bench_client, Record, Target};
use super::report::{self, Slo};
use super::runner::{self, Load, StageSpec};
use super::source::WorkloadKind;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to send.
    pub target: Target,
    /// What to send.
    pub workload: WorkloadKind,
    /// Stages, in order (wall-clock rates and durations).
    pub stages: Vec<StageSpec>,
    /// Longest wait for a stage's requests in flight after it stops sending.
    pub drain: Duration,
    /// Goodput constraints (reported seconds).
    pub slo: Slo,
    /// Wall seconds per reported second: 1 for a real target; the
    /// simulator's time scale when the fleet is simulated, so reports read
    /// like a real GPU fleet's.
    pub time_scale: f64,
    /// Prefix of the progress line.
    pub label: String,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every finished request, reported time, in send order per stage.
    pub records: Vec<Record>,
    /// (label, inference-perf summary) per stage.
    pub stages: Vec<(String, Value)>,
    /// Summary of all stages.
    pub overall: Value,
}

/// A stage's label, e.g. `stage 0 (rate 4/s)`.
pub fn stage_label(i: usize, spec: &StageSpec) -> String {
    match spec.load {
        Load::Rate(r) => format!("stage {i} (rate {r}/s)"),
        Load::Concurrency(n) => format!("stage {i} (concurrency {n})"),
        Load::Day { peak, floor } => format!("stage {i} (day, peak {peak}/s, floor {floor})"),
    }
}

/// Run every stage of `plan` in turn and summarize.
pub async fn run(plan: &Plan) -> Outcome {
    let client = bench_client();
    let epoch = Instant::now();
    let scale = if plan.time_scale > 0.0 {
        plan.time_scale
    } else {
        1.0
    };
    let mut records = Vec::new();
    let mut stages = Vec::new();
    let mut unfinished_total = 0;
    for (i, spec) in plan.stages.iter().enumerate() {
        let reported = StageSpec {
            load: match spec.load {
                Load::Rate(r) => Load::Rate(r * scale),
                Load::Day { peak, floor } => Load::Day {
                    peak: peak * scale,
                    floor,
                },
                other => other,
            },
            duration: spec.duration.div_f64(scale),
        };
        let label = format!("{}{}", plan.label, stage_label(i, &reported));
        let result = runner::run_stage(
            &client,
            &plan.target,
            &plan.workload,
            i,
            spec,
            epoch,
            plan.drain,
            &label,
        )
        .await;
        let scaled: Vec<Record> = result
            .records
            .into_iter()
            .map(|r| r.scaled(scale))
            .collect();
        let summary =
            report::summarize_requests(&scaled, Some(&reported), result.unfinished, plan.slo);
        unfinished_total += result.unfinished;
        stages.push((stage_label(i, &reported), summary));
        records.extend(scaled);
    }
    let overall = report::summarize_requests(&records, None, unfinished_total, plan.slo);
    Outcome {
        records,
        stages,
        overall,
    }
}

/// Write the reports into `dir` (created); returns the files written.
pub fn write_reports(
    dir: &Path,
    outcome: &Outcome,
    title: &str,
    notes: &[String],
    admin_nodes: Option<&Value>,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut write = |name: &str, contents: String| -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, contents)?;
        written.push(path);
        Ok(())
    };
    let mut overall = outcome.overall.clone();
    if let Some(nodes) = admin_nodes {
        overall["per_node_gateway"] = nodes.clone();
    }
    write(
        "summary_lifecycle_metrics.json",
        serde_json::to_string_pretty(&overall).unwrap_or_default(),
    )?;
    for (i, (_, summary)) in outcome.stages.iter().enumerate() {
        write(
            &format!("stage_{i}_lifecycle_metrics.json"),
            serde_json::to_string_pretty(summary).unwrap_or_default(),
        )?;
    }
    write(
        "per_request_lifecycle_metrics.csv",
        report::csv(&outcome.records),
    )?;
    write(
        "report.html",
        html::page(
            title,
            notes,
            &outcome.stages,
            &outcome.overall,
            &outcome.records,
            admin_nodes,
        ),
    )?;
    Ok(written)
}

/// A terminal table: one line per stage.
pub fn table(stages: &[(String, Value)]) -> String {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |s| format!("{:.0}", s * 1000.0))
    };
    let mut out = format!(
        "{:<28} {:>6} {:>5} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6}\n",
        "stage",
        "reqs",
        "errs",
        "ttft_p50",
        "ttft_p99",
        "tpot_50",
        "itl_50",
        "e2e_p50",
        "e2e_p99",
        "req/s",
        "out_t/s",
        "good%",
        "cache%"
    );
    for (label, s) in stages {
        let l = &s["successes"]["latency"];
        let t = &s["successes"]["throughput"];
        let pct = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
        out.push_str(&format!(
            "{:<28} {:>6} {:>5} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>7.2} {:>8.0} {:>6} {:>6}\n",
            label,
            s["load_summary"]["count"].as_u64().unwrap_or(0),
            s["failures"]["count"].as_u64().unwrap_or(0),
            ms(&l["time_to_first_token"]["median"]),
            ms(&l["time_to_first_token"]["p99"]),
            ms(&l["time_per_output_token"]["median"]),
            ms(&l["inter_token_latency"]["median"]),
            ms(&l["request_latency"]["median"]),
            ms(&l["request_latency"]["p99"]),
            t["requests_per_sec"].as_f64().unwrap_or(0.0),
            t["output_tokens_per_sec"].as_f64().unwrap_or(0.0),
            pct(&s["successes"]["goodput_metrics"]["goodput_percentage"]),
            pct(&s["successes"]["kv_cache_hit_percent"]),
        ));
    }
    out
}
