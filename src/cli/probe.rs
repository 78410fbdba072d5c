//! `infergate check --gateway URL --admin URL`: validate how a running
//! gateway spreads traffic, as a rollout gate.
//!
//! For each route it sends a bounded probe load (chat completions of one
//! output token, each with a different prompt and `user`, so neither
//! prefix affinity nor session hashing pins them to one node) and reads,
//! from the gateway's own `/metrics` before and after, how many requests
//! each node served and their mean latency. Expected shares come from the
//! admin API (weights among available nodes, as the dashboard shows them).
//! A node passes when its observed share is within max(tolerance, 3σ of
//! the binomial sampling error) of its expected share. The verdict fails
//! on any miss, on any failed probe request, and on any node that is down,
//! ejected or draining unless `--allow-unavailable` says that is intended.
//!
//! The counters include any other traffic on the route during the probe;
//! the report says so. Only OpenAI-family routes are probed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::ctl::table;
use super::http::Http;

/// `check --gateway` settings.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Admin listener of the same gateway (expected shares, counters).
    #[arg(long, requires = "gateway")]
    admin: Option<String>,
    /// Admin token, for an admin listener whose reads need it (off
    /// loopback).
    #[arg(long, env = "INFERGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Probe requests per route.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Probe requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Smallest allowed gap between observed and expected share (0.10 = 10
    /// points); larger when the sample is small (3σ).
    #[arg(long, default_value_t = 0.10)]
    tolerance: f64,
    /// Only these routes (repeatable; default: every OpenAI route).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// Model to send to routes whose match has no exact model name.
    #[arg(long)]
    model: Option<String>,
    /// Nodes that are down, ejected or draining do not fail the check
    /// (they must still get no traffic).
    #[arg(long)]
    allow_unavailable: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One node's row of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct NodeResult {
    node: String,
    state: String,
    weight: u64,
    expected: f64,
    observed: f64,
    requests: u64,
    errors: u64,
    mean_latency_ms: Option<f64>,
    p99_latency_ms: Option<f64>,
    allowed_gap: f64,
    ok: bool,
    reason: Option<String>,
}

/// One route's part of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct RouteResult {
    route: String,
    pool: String,
    policy: String,
    model: Option<String>,
    sent: usize,
    failed: usize,
    client_p50_ms: Option<f64>,
    client_p99_ms: Option<f64>,
    nodes: Vec<NodeResult>,
    /// Why the route was not probed, or why it failed.
    problems: Vec<String>,
    skipped: bool,
    pass: bool,
}

/// Run the check against `gateway`.
pub async fn run(gateway: &str, args: &ProbeArgs) -> ExitCode {
    let Some(admin) = &args.admin else {
        eprintln!("check --gateway needs --admin URL of the same gateway (expected shares and counters come from it)");
        return ExitCode::from(2);
    };
    match probe_all(gateway, admin, args).await {
        Ok(results) => {
            let pass =
                results.iter().all(|r| r.pass || r.skipped) && results.iter().any(|r| !r.skipped);
            if args.json {
                let report = json!({"pass": pass, "routes": results});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_report(&results, pass);
            }
            if pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn probe_all(
    gateway: &str,
    admin: &str,
    args: &ProbeArgs,
) -> Result<Vec<RouteResult>, String> {
    if args.requests == 0 || args.requests > 100_000 {
        return Err("--requests must be from 1 to 100000".into());
    }
    let mut api = Http::new(admin, Duration::from_secs(10))?;
    if let Some(token) = &args.token {
        api = api.with_header("authorization", &format!("Bearer {token}"))?;
    }
    let data = Http::new(gateway, Duration::from_secs(60))?;
    let config = api.get_json("/api/v1/config").await?;
    let routes = config["config"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for wanted in &args.routes {
        if !routes
            .iter()
            .any(|r| r["name"].as_str() == Some(wanted.as_str()))
        {
            return Err(format!("no route named {wanted}"));
        }
    }
    let mut results = Vec::new();
    for route in &routes {
        let name = route["name"].as_str().unwrap_or("").to_string();
        if !args.routes.is_empty() && !args.routes.contains(&name) {
            continue;
        }
        results.push(probe_route(&api, &data, route, args).await?);
    }
    if results.is_empty() {
        return Err("the gateway has no routes".into());
    }
    Ok(results)
}

/// The model to send to a route: its exact model, else `--model`.
fn probe_model(route: &Value, fallback: Option<&String>) -> Result<String, String> {
    match route["match"]["model"].as_str() {
        Some(m) if !m.contains(['*', '?', '[']) => Ok(m.to_string()),
        Some(m) => fallback.cloned().ok_or_else(|| {
            format!("its match is the model pattern `{m}`: give --model NAME to probe it")
        }),
        None => fallback
            .cloned()
            .ok_or_else(|| "its match names no model: give --model NAME to probe it".to_string()),
    }
}

async fn probe_route(
    api: &Http,
    data: &Http,
    route: &Value,
    args: &ProbeArgs,
) -> Result<RouteResult, String> {
    let name = route["name"].as_str().unwrap_or("").to_string();
    let pool = route["pool"].as_str().unwrap_or("").to_string();
    let mut result = RouteResult {
        route: name.clone(),
        pool: pool.clone(),
        policy: route["policy"]
            .as_str()
            .unwrap_or("least_outstanding")
            .to_string(),
        model: None,
        sent: 0,
        failed: 0,
        client_p50_ms: None,
        client_p99_ms: None,
        nodes: Vec::new(),
        problems: Vec::new(),
        skipped: false,
        pass: false,
    };
    let family = route["match"]["family"].as_str().unwrap_or("openai");
    let path_prefix = route["match"]["path_prefix"].as_str().unwrap_or("/v1/");
    if family != "openai"
        || !"/v1/chat/completions".starts_with(path_prefix)
        || route["match"]["headers"].is_object()
    {
        result.skipped = true;
        result.problems.push(format!(
            "not probed: only OpenAI chat routes without header matches are probed (family {family})"
        ));
        return Ok(result);
    }
    let model = match probe_model(route, args.model.as_ref()) {
        Ok(m) => m,
        Err(why) => {
            result.skipped = true;
            result.problems.push(format!("not probed: {why}"));
            return Ok(result);
        }
    };
    result.model = Some(model.clone());

    let before = counters(api, &name).await?;
    let (latencies, failures) = send_probes(data, &model, args.requests, args.concurrency).await;
    result.sent = args.requests;
    result.failed = failures.len();
    if let Some(first) = failures.first() {
        result.problems.push(format!(
            "{} of {} probe requests failed (first: {first})",
            failures.len(),
            args.requests
        ));
    }
    result.client_p50_ms = percentile(&latencies, 0.50);
    result.client_p99_ms = percentile(&latencies, 0.99);

    // Counters are recorded as responses finish; give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = counters(api, &name).await?;
    while total(&after) - total(&before) < (args.requests - failures.len()) as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = counters(api, &name).await?;
    }
    // States and expected shares as of after the probe (the node view is
    // refreshed every second).
    let probed_until = crate::telemetry::unix_ms();
    let mut snapshot = api.get_json("/api/v1/nodes").await?;
    while snapshot["unix_ms"].as_u64().unwrap_or(u64::MAX) < probed_until
        && Instant::now() < deadline + Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        snapshot = api.get_json("/api/v1/nodes").await?;
    }
    let Some(pool_view) = snapshot["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(pool.as_str()))
    else {
        result
            .problems
            .push(format!("pool {pool} is not in the gateway's node view"));
        return Ok(result);
    };
    let served: u64 = total(&after).saturating_sub(total(&before));
    for node in pool_view["nodes"].as_array().into_iter().flatten() {
        let node_name = node["name"].as_str().unwrap_or("").to_string();
        let key = (pool.clone(), node_name.clone());
        let zero = Counts::default();
        let (a, b) = (
            after.get(&key).unwrap_or(&zero),
            before.get(&key).unwrap_or(&zero),
        );
        let requests = a.requests.saturating_sub(b.requests);
        let errors = a.errors.saturating_sub(b.errors);
        let finished = a.finished.saturating_sub(b.finished);
        let mean_latency_ms =
            (finished > 0).then(|| (a.seconds - b.seconds) / finished as f64 * 1000.0);
        let p99_latency_ms = a.quantile_ms_since(b, 0.99);
        let expected = node["expected_share"].as_f64().unwrap_or(0.0);
        let observed = if served > 0 {
            requests as f64 / served as f64
        } else {
            0.0
        };
        let sigma = if served > 0 {
            (expected * (1.0 - expected) / served as f64).sqrt()
        } else {
            1.0
        };
        let allowed_gap = args.tolerance.max(3.0 * sigma);
        let state = node["state"].as_str().unwrap_or("?").to_string();
        let mut reason = None;
        if (observed - expected).abs() > allowed_gap {
            reason = Some(format!(
                "got {:.1}% of requests, expected {:.1}% ± {:.1}%",
                observed * 100.0,
                expected * 100.0,
                allowed_gap * 100.0
            ));
        } else if state != "healthy" && !args.allow_unavailable {
            let why = node["reason"]
                .as_str()
                .filter(|r| !r.is_empty() && *r != state)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            reason = Some(format!(
                "node is {state}{why} (pass --allow-unavailable if intended)"
            ));
        } else if errors > 0 {
            reason = Some(format!("{errors} of {requests} attempts failed"));
        }
        result.nodes.push(NodeResult {
            node: node_name,
            state,
            weight: node["weight"].as_u64().unwrap_or(0),
            expected,
            observed,
            requests,
            errors,
            mean_latency_ms,
            p99_latency_ms,
            allowed_gap,
            ok: reason.is_none(),
            reason,
        });
    }
    if served == 0 {
        result
            .problems
            .push("no node served any probe request".into());
    }
    for n in &result.nodes {
        if let Some(r) = &n.reason {
            result.problems.push(format!("{}: {r}", n.node));
        }
    }
    result.pass = result.problems.is_empty();
    Ok(result)
}

/// Per-node counters of one route from `/metrics`.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// Attempts (all status classes).
    requests: u64,
    /// Attempts without a 2xx.
    errors: u64,
    /// Responses passed through and their summed duration.
    finished: u64,
    seconds: f64,
    /// Cumulative duration histogram: upper bound (s) → count.
    buckets: BTreeMap<u64, (f64, u64)>,
}

impl Counts {
    /// The `q` quantile (ms) of durations recorded between `before` and
    /// `self`, as the upper bound of the bucket it falls in (what
    /// Prometheus' `histogram_quantile` would say, without interpolation).
    fn quantile_ms_since(&self, before: &Counts, q: f64) -> Option<f64> {
        let total = self.finished.saturating_sub(before.finished);
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * q).ceil().max(1.0) as u64;
        for (key, (bound, count)) in &self.buckets {
            let earlier = before.buckets.get(key).map_or(0, |b| b.1);
            if count.saturating_sub(earlier) >= rank {
                return Some(bound * 1000.0);
            }
        }
        None
    }
}

fn total(counts: &BTreeMap<(String, String), Counts>) -> u64 {
    counts.values().map(|c| c.requests).sum()
}

async fn counters(api: &Http, route: &str) -> Result<BTreeMap<(String, String), Counts>, String> {
    let text = api.get_text("/metrics").await?;
    Ok(parse_counters(&text, route))
}

/// Sum `infergate_requests_total` and the request duration sum/count by
/// (pool, node) for `route`.
fn parse_counters(text: &str, route: &str) -> BTreeMap<(String, String), Counts> {
    let mut out: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        if !matches!(
            name,
            "infergate_requests_total"
                | "infergate_request_duration_seconds_sum"
                | "infergate_request_duration_seconds_count"
                | "infergate_request_duration_seconds_bucket"
        ) || labels.get("route").map(String::as_str) != Some(route)
        {
            continue;
        }
        let (Some(pool), Some(node)) = (labels.get("pool"), labels.get("node")) else {
            continue;
        };
        let entry = out.entry((pool.clone(), node.clone())).or_default();
        match name {
            "infergate_requests_total" => {
                entry.requests += value as u64;
                if labels.get("code").map(String::as_str) != Some("2xx") {
                    entry.errors += value as u64;
                }
            }
            "infergate_request_duration_seconds_sum" => entry.seconds += value,
            "infergate_request_duration_seconds_bucket" => {
                let bound = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                // Keyed by the bound's bits so buckets sort by bound.
                let slot = entry
                    .buckets
                    .entry(if bound.is_finite() {
                        (bound * 1e6) as u64
                    } else {
                        u64::MAX
                    })
                    .or_insert((bound, 0));
                slot.1 += value as u64;
            }
            _ => entry.finished += value as u64,
        }
    }
    out
}

/// `name{k="v",...} value` → parts (escapes in values: `\\`, `\"`, `\n`).
pub(crate) fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let open = line.find('{')?;
    let name = &line[..open];
    let mut labels = BTreeMap::new();
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            let value = after.trim().parse().ok()?;
            return Some((name, labels, value));
        }
        let eq = rest.find("=\"")?;
        let key = rest[..eq].to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break eq + 2 + i + 1,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = &rest[end..];
    }
}

/// Send `count` probes, `concurrency` at a time; latencies of the good
/// ones (ms) and a description of each failure.
async fn send_probes(
    data: &Http,
    model: &str,
    count: usize,
    concurrency: usize,
) -> (Vec<f64>, Vec<String>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = fastrand::u64(..);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, 256) {
        let (data, next, model) = (data.clone(), Arc::clone(&next), model.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let body = json!({
                    "model": model,
                    "messages": [{"role": "user", "content": format!("{run:016x}-{i} infergate check probe: reply with one token")}],
                    "max_tokens": 1,
                    "user": format!("infergate-check-{run:016x}-{i}"),
                });
                let start = Instant::now();
                let reply = data
                    .send(
                        Method::POST,
                        "/v1/chat/completions",
                        &[("content-type", "application/json".into())],
                        Bytes::from(body.to_string()),
                    )
                    .await;
                match reply {
                    Ok(r) if r.status == StatusCode::OK => {
                        latencies.push(start.elapsed().as_secs_f64() * 1000.0)
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.error_message())),
                    Err(e) => failures.push(e),
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        if let Ok((l, f)) = task.await {
            latencies.extend(l);
            failures.extend(f);
        }
    }
    (latencies, failures)
}

fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn print_report(results: &[RouteResult], pass: bool) {
    for r in results {
        if r.skipped {
            println!(
                "route {} → pool {}: {}",
                r.route,
                r.pool,
                r.problems.join("; ")
            );
            continue;
        }
        println!(
            "route {} → pool {} (policy {}, model {}): {} probes, {} failed, client p50 {} p99 {}",
            r.route,
            r.pool,
            r.policy,
            r.model.as_deref().unwrap_or("?"),
            r.sent,
            r.failed,
            ms(r.client_p50_ms),
            ms(r.client_p99_ms),
        );
        let mut rows = vec![[
            "  NODE", "STATE", "WEIGHT", "EXPECTED", "OBSERVED", "ALLOWED", "REQS", "MEAN",
            "P99 ≤", "VERDICT",
        ]
        .map(String::from)
        .to_vec()];
        for n in &r.nodes {
            rows.push(vec![
                format!("  {}", n.node),
                n.state.clone(),
                n.weight.to_string(),
                format!("{:.1}%", n.expected * 100.0),
                format!("{:.1}%", n.observed * 100.0),
                format!("±{:.1}%", n.allowed_gap * 100.0),
                n.requests.to_string(),
                ms(n.mean_latency_ms),
                ms(n.p99_latency_ms),
                n.reason
                    .clone()
                    .map_or("ok".into(), |why| format!("FAIL: {why}")),
            ]);
        }
        print!("{}", table(&rows));
    }
    println!("(counts include any other traffic on these routes during the probe)");
    if pass {
        println!("PASS: traffic spreads as expected");
    } else {
        println!("FAIL:");
        for r in results.iter().filter(|r| !r.pass && !r.skipped) {
            for p in &r.problems {
                println!("  route {}: {p}", r.route);
            }
        }
        if results.iter().all(|r| r.skipped) {
            println!("  no route could be probed");
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_counters_parse() {
        let text = r#"# HELP x
infergate_requests_total{route="r",pool="p",node="a",model="m",code="2xx"} 7
infergate_requests_total{route="r",pool="p",node="a",model="m",code="5xx"} 1
infergate_requests_total{route="other",pool="p",node="a",model="m",code="2xx"} 100
infergate_request_duration_seconds_sum{route="r",pool="p",node="a",model="m"} 0.7
infergate_request_duration_seconds_count{route="r",pool="p",node="a",model="m"} 7
infergate_requests_total{route="r",pool="p",node="b \"q\"",model="m",code="2xx"} 3
"#;
        let counts = parse_counters(text, "r");
        let a = &counts[&("p".to_string(), "a".to_string())];
        assert_eq!((a.requests, a.errors, a.finished), (8, 1, 7));
        assert!((a.seconds - 0.7).abs() < 1e-9);
        assert_eq!(
            counts[&("p".to_string(), "b \"q\"".to_string())].requests,
            3
        );
        assert_eq!(total(&counts), 11);
    }

    #[test]
    fn quantiles_from_bucket_deltas() {
        let at = |counts: [u64; 3]| {
            let text = format!(
                "infergate_request_duration_seconds_bucket{{route=\"r\",pool=\"p\",node=\"a\",model=\"m\",le=\"0.01\"}} {}\n\
                 infergate_request_duration_seconds_bucket{{route=\"r\",pool=\"p\",node=\"a\",model=\"m\",le=\"0.1\"}} {}\n\
                 infergate_request_duration_seconds_bucket{{route=\"r\",pool=\"p\",node=\"a\",model=\"m\",le=\"+Inf\"}} {}\n\
                 infergate_request_duration_seconds_count{{route=\"r\",pool=\"p\",node=\"a\",model=\"m\"}} {}\n",
                counts[0], counts[1], counts[2], counts[2]
            );
            parse_counters(&text, "r")[&("p".to_string(), "a".to_string())].clone()
        };
        // Before: 10 fast. After: 10 + 98 fast, 2 slower (≤ 100 ms).
        let before = at([10, 10, 10]);
        let after = at([108, 110, 110]);
        assert_eq!(after.quantile_ms_since(&before, 0.5), Some(10.0));
        assert_eq!(after.quantile_ms_since(&before, 0.99), Some(100.0));
        assert_eq!(before.quantile_ms_since(&before, 0.99), None);
    }

    #[test]
    fn model_choice() {
        let exact = json!({"match": {"model": "llama-3"}});
        assert_eq!(probe_model(&exact, None).unwrap(), "llama-3");
        let glob = json!({"match": {"model": "llama-*"}});
        assert!(probe_model(&glob, None).unwrap_err().contains("--model"));
        assert_eq!(
            probe_model(&glob, Some(&"llama-3".into())).unwrap(),
            "llama-3"
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
