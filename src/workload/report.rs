//! Summaries in the shape of inference-perf's lifecycle reports
//! (`summary_lifecycle_metrics.json`, `stage_N_lifecycle_metrics.json`;
//! `inference_perf/reportgen/base.py::summarize_requests` in
//! github.com/kubernetes-sigs/inference-perf): the same section and metric
//! names, seconds as the unit, `mean`/`min`/`max` and percentiles keyed
//! `p0.1` … `median` … `p99.9` (linear interpolation, as numpy's default).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::measure::Record;
use super::runner::{Load, StageSpec};

/// Percentiles reported for every distribution (inference-perf's default
/// list; 50 is written `median`).
pub const PERCENTILES: &[f64] = &[
    0.1, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9,
];

/// Goodput constraints in seconds (a request is good when it meets all
/// that are set; inference-perf's `goodput.constraints`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Slo {
    /// Time to first token.
    pub ttft: Option<f64>,
    /// Time per output token.
    pub tpot: Option<f64>,
}

/// Linear-interpolation percentile `p` (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// `{mean, min, max, p0.1, …, median, …, p99.9}` or `null` when empty.
pub fn summarize(values: impl IntoIterator<Item = f64>) -> Value {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let mut out = Map::new();
    out.insert("mean".into(), json!(v.iter().sum::<f64>() / v.len() as f64));
    out.insert("min".into(), json!(v[0]));
    out.insert("max".into(), json!(v[v.len() - 1]));
    for &p in PERCENTILES {
        let key = if p == 50.0 {
            "median".to_string()
        } else {
            format!("p{p}")
        };
        out.insert(key, json!(percentile(&v, p)));
    }
    Value::Object(out)
}

fn per_sec(x: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        x / secs
    } else {
        0.0
    }
}

/// Prompt tokens as inference-perf reports them: total, cached, uncached
/// and the per-request distribution.
fn prompt_tokens(records: &[&Record]) -> Value {
    let total: u64 = records.iter().map(|r| r.prompt_tokens).sum();
    let cached: u64 = records.iter().filter_map(|r| r.cached_tokens).sum();
    let mut out = Map::new();
    out.insert("total".into(), json!(total as f64));
    out.insert("cached".into(), json!(cached as f64));
    out.insert(
        "uncached".into(),
        json!(total.saturating_sub(cached) as f64),
    );
    if let Value::Object(d) = summarize(records.iter().map(|r| r.prompt_tokens as f64)) {
        out.extend(d);
    }
    Value::Object(out)
}

/// Summarize `records` (one stage, or all stages when `stage` is `None`).
pub fn summarize_requests(
    records: &[Record],
    stage: Option<&StageSpec>,
    unfinished: u64,
    slo: Slo,
) -> Value {
    let ok: Vec<&Record> = records.iter().filter(|r| r.ok()).collect();
    let failed: Vec<&Record> = records.iter().filter(|r| !r.ok()).collect();
    let span = |rs: &mut dyn Iterator<Item = &Record>| {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for r in rs {
            lo = lo.min(r.start);
            hi = hi.max(r.end);
        }
        if hi > lo {
            hi - lo
        } else {
            0.0
        }
    };
    let total_time = span(&mut records.iter());

    let mut load = Map::new();
    load.insert("count".into(), json!(records.len()));
    load.insert(
        "schedule_delay".into(),
        summarize(records.iter().map(|r| r.start - r.scheduled)),
    );
    if let Some(spec) = stage {
        let (lo, hi) = records
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |a, r| {
                (a.0.min(r.start), a.1.max(r.start))
            });
        let send_duration = if hi > lo { hi - lo } else { 0.0 };
        load.insert("send_duration".into(), json!(send_duration));
        match spec.load {
            Load::Rate(rate) => {
                load.insert("requested_rate".into(), json!(rate));
            }
            Load::Concurrency(n) => {
                load.insert("concurrency".into(), json!(n));
            }
            Load::Day { peak, floor } => {
                load.insert("requested_rate".into(), json!(peak));
                load.insert(
                    "profile".into(),
                    json!({"shape": "day", "peak": peak, "floor": floor}),
                );
            }
        }
        load.insert(
            "achieved_rate".into(),
            json!(per_sec(records.len() as f64, send_duration)),
        );
        load.insert("duration".into(), json!(spec.duration.as_secs_f64()));
    }
    load.insert("unfinished".into(), json!(unfinished));

    let input: u64 = ok.iter().map(|r| r.prompt_tokens).sum();
    let output: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let mut successes = Map::new();
    successes.insert("count".into(), json!(ok.len()));
    successes.insert(
        "latency".into(),
        json!({
            "request_latency": summarize(ok.iter().map(|r| r.request_latency())),
            "normalized_time_per_output_token": summarize(ok.iter().map(|r| r.ntpot())),
            "time_per_output_token": summarize(ok.iter().filter_map(|r| r.tpot())),
            "time_to_first_token": summarize(ok.iter().filter_map(|r| r.ttft())),
            "inter_token_latency": summarize(ok.iter().flat_map(|r| r.itl.iter().map(|&d| f64::from(d)))),
        }),
    );
    successes.insert(
        "throughput".into(),
        json!({
            "input_tokens_per_sec": per_sec(input as f64, total_time),
            "output_tokens_per_sec": per_sec(output as f64, total_time),
            "total_tokens_per_sec": per_sec((input + output) as f64, total_time),
            "requests_per_sec": per_sec(ok.len() as f64, total_time),
        }),
    );
    successes.insert("prompt_tokens".into(), prompt_tokens(&ok));
    let mut output_tokens = Map::new();
    output_tokens.insert("total".into(), json!(output as f64));
    if let Value::Object(d) = summarize(ok.iter().map(|r| r.output_tokens as f64)) {
        output_tokens.extend(d);
    }
    successes.insert("output_tokens".into(), Value::Object(output_tokens));
    successes.insert(
        "client_fallback_requests".into(),
        json!({
            "prompt": ok.iter().filter(|r| !r.prompt_from_server).count(),
            "output": ok.iter().filter(|r| !r.output_from_server).count(),
        }),
    );
    // inference-perf's session metric, over requests: 100 × cached / prompt
    // tokens of the requests whose server reported cached tokens.
    let reporting: Vec<&&Record> = ok.iter().filter(|r| r.cached_tokens.is_some()).collect();
    let reported_prompt: u64 = reporting.iter().map(|r| r.prompt_tokens).sum();
    let reported_cached: u64 = reporting.iter().filter_map(|r| r.cached_tokens).sum();
    successes.insert(
        "kv_cache_hit_percent".into(),
        if reported_prompt == 0 {
            Value::Null
        } else {
            json!(100.0 * reported_cached as f64 / reported_prompt as f64)
        },
    );
    if let Some(goodput) = goodput(&ok, slo) {
        successes.insert("goodput_metrics".into(), goodput);
    }

    json!({
        "benchmark_time_seconds": total_time,
        "load_summary": load,
        "successes": successes,
        "failures": {
            "count": failed.len(),
            "request_latency": summarize(failed.iter().map(|r| r.request_latency())),
            "prompt_tokens": prompt_tokens(&failed),
            "by_label": by_label(&failed),
        },
        "per_node": per_node(records),
    })
}

/// inference-perf's goodput: a successful request is good when every set
/// constraint holds (a TTFT or TPOT constraint fails requests that have no
/// such value, e.g. not streamed); rates over the successes' time span.
fn goodput(ok: &[&Record], slo: Slo) -> Option<Value> {
    if (slo.ttft.is_none() && slo.tpot.is_none()) || ok.is_empty() {
        return None;
    }
    let (lo, hi) = ok.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, r| {
        (a.0.min(r.start), a.1.max(r.end))
    });
    let span = (hi - lo).max(0.0);
    let (mut good, mut good_tokens, mut ttft_ok, mut tpot_ok) = (0usize, 0u64, 0usize, 0usize);
    for r in ok {
        let ttft_met = slo.ttft.map(|limit| r.ttft().is_some_and(|t| t <= limit));
        let tpot_met = slo.tpot.map(|limit| r.tpot().is_some_and(|t| t <= limit));
        ttft_ok += usize::from(ttft_met == Some(true));
        tpot_ok += usize::from(tpot_met == Some(true));
        if ttft_met != Some(false) && tpot_met != Some(false) {
            good += 1;
            good_tokens += r.prompt_tokens + r.output_tokens;
        }
    }
    let total = ok.len();
    let pct = |n: usize| n as f64 / total as f64 * 100.0;
    let mut out = Map::new();
    out.insert("goodput_percentage".into(), json!(pct(good)));
    out.insert("request_goodput".into(), json!(per_sec(good as f64, span)));
    out.insert(
        "token_goodput".into(),
        json!(per_sec(good_tokens as f64, span)),
    );
    out.insert("good_requests".into(), json!(good));
    out.insert("total_requests".into(), json!(total));
    if slo.ttft.is_some() {
        out.insert("ttft_attainment_percentage".into(), json!(pct(ttft_ok)));
    }
    if slo.tpot.is_some() {
        out.insert("tpot_attainment_percentage".into(), json!(pct(tpot_ok)));
    }
    out.insert(
        "constraints".into(),
        json!({"ttft": slo.ttft, "tpot": slo.tpot}),
    );
    Some(Value::Object(out))
}

/// Failures grouped as inference-perf labels them: `"<code> - <label>"`
/// for HTTP errors, else the kind of error; up to 5 distinct messages each.
fn by_label(failed: &[&Record]) -> Value {
    let mut groups: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for r in failed {
        let message = r.error.clone().unwrap_or_default();
        let label = match r.status {
            0 if message.starts_with("timeout") => "Timeout".to_string(),
            0 if message.starts_with("client limit") => "client limit".to_string(),
            0 => "Connection Error".to_string(),
            200..=299 => "stream error".to_string(),
            code => format!(
                "{code} - {}",
                match code {
                    429 => "Rate Limit",
                    500 => "Internal Server Error",
                    502 => "Bad Gateway",
                    503 => "Service Unavailable",
                    504 => "Gateway Timeout",
                    _ => "other",
                }
            ),
        };
        let entry = groups.entry(label).or_default();
        entry.0 += 1;
        if entry.1.len() < 5 && !entry.1.contains(&message) {
            entry.1.push(message);
        }
    }
    let mut out = Map::new();
    for (label, (count, messages)) in groups {
        let messages: Vec<Value> = messages
            .into_iter()
            .map(|m| json!({"message": m}))
            .collect();
        out.insert(label, json!({"count": count, "messages": messages}));
    }
    Value::Object(out)
}

/// Requests per serving node (from the node header), with their share.
pub fn per_node(records: &[Record]) -> Value {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        if let Some(node) = &r.node {
            *counts.entry(node.as_str()).or_default() += 1;
        }
    }
    let total: usize = counts.values().sum();
    let mut out = Map::new();
    for (node, count) in counts {
        out.insert(
            node.to_string(),
            json!({"count": count, "share": count as f64 / total as f64}),
        );
    }
    Value::Object(out)
}

/// One request per CSV row; the header names the columns.
pub fn csv(records: &[Record]) -> String {
    let mut out = String::from(
        "stage,scheduled_s,start_s,end_s,status,ok,error,streamed,node,prompt_tokens,cached_tokens,\
         output_tokens,request_latency,time_to_first_token,time_per_output_token,\
         inter_token_latency,normalized_time_per_output_token,user\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for r in records {
        let fields = [
            r.stage.to_string(),
            format!("{:.6}", r.scheduled),
            format!("{:.6}", r.start),
            format!("{:.6}", r.end),
            r.status.to_string(),
            r.ok().to_string(),
            csv_field(r.error.as_deref().unwrap_or("")),
            r.streamed.to_string(),
            csv_field(r.node.as_deref().unwrap_or("")),
            r.prompt_tokens.to_string(),
            r.cached_tokens.map_or(String::new(), |c| c.to_string()),
            r.output_tokens.to_string(),
            format!("{:.6}", r.request_latency()),
            opt(r.ttft()),
            opt(r.tpot()),
            opt(r.itl_mean()),
            format!("{:.6}", r.ntpot()),
            csv_field(r.user.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// RFC 4180 quoting when needed; a leading `=+-@` is prefixed with `'` so
/// a spreadsheet does not run server-chosen text as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(start: f64, end: f64, first: Option<f64>, out: u64) -> Record {
        Record {
            start,
            scheduled: start,
            end,
            status: 200,
            streamed: first.is_some(),
            first_token: first,
            output_tokens: out,
            prompt_tokens: 100,
            cached_tokens: Some(40),
            prompt_from_server: true,
            output_from_server: true,
            node: Some("a".into()),
            ..Record::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=5).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 90.0), 4.6);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert_eq!(percentile(&[7.0], 99.9), 7.0);
        let s = summarize(v);
        for key in [
            "mean", "min", "max", "median", "p90", "p95", "p99", "p99.9", "p0.1",
        ] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        assert_eq!(summarize(Vec::new()), Value::Null);
    }

    #[test]
    fn summary_has_inference_perf_shape_and_goodput() {
        let mut bad = rec(0.5, 0.6, None, 0);
        bad.status = 503;
        bad.error = Some("HTTP 503: busy".into());
        let records = vec![
            rec(0.0, 1.0, Some(0.2), 5),  // tpot 0.2
            rec(1.0, 3.0, Some(2.0), 11), // ttft 1.0, tpot 0.1
            rec(0.0, 2.0, None, 4),       // not streamed
            bad,
        ];
        let spec = StageSpec {
            load: Load::Rate(2.0),
            duration: std::time::Duration::from_secs(3),
        };
        let s = summarize_requests(
            &records,
            Some(&spec),
            0,
            Slo {
                ttft: Some(0.5),
                tpot: None,
            },
        );
        assert_eq!(s["benchmark_time_seconds"], 3.0);
        assert_eq!(s["successes"]["count"], 3);
        assert_eq!(s["failures"]["count"], 1);
        assert_eq!(
            s["failures"]["by_label"]["503 - Service Unavailable"]["count"],
            1
        );
        let lat = &s["successes"]["latency"];
        assert_eq!(lat["time_to_first_token"]["max"], 1.0);
        assert!((lat["time_per_output_token"]["min"].as_f64().unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(
            s["successes"]["throughput"]["output_tokens_per_sec"],
            20.0 / 3.0
        );
        assert_eq!(s["successes"]["throughput"]["requests_per_sec"], 1.0);
        assert_eq!(s["successes"]["prompt_tokens"]["cached"], 120.0);
        assert_eq!(s["successes"]["kv_cache_hit_percent"], 40.0);
        let g = &s["successes"]["goodput_metrics"];
        // Only the first request has a TTFT within 0.5 s.
        assert_eq!(g["good_requests"], 1);
        assert!((g["goodput_percentage"].as_f64().unwrap() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(s["load_summary"]["requested_rate"], 2.0);
        assert_eq!(s["per_node"]["a"]["count"], 4);
    }

    #[test]
    fn csv_quotes_server_text() {
        let mut r = rec(0.0, 1.0, None, 1);
        r.error = Some("a, \"b\"".into());
        r.node = Some("=cmd".into());
        r.user = Some("session-7".into());
        let text = csv(&[r]);
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"a, \"\"b\"\"\""), "{text}");
        assert!(text.contains(",'=cmd,"), "{text}");
        // The session's `user` is the last column, named in the header.
        assert!(text.lines().next().is_some_and(|h| h.ends_with(",user")));
        assert!(text.trim_end().ends_with(",session-7"), "{text}");
    }
}
