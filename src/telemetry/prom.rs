//! Prometheus text exposition (format 0.0.4) of the telemetry, rendered by
//! hand: the histograms are our own lock-free fixed-bucket ones, so a
//! metrics library would mean copying every series into its types on each
//! scrape. [`parse`] is a strict reader of the same format used by the tests
//! to check what is rendered.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::hist::{HistSnapshot, BOUNDS};
use super::FleetView;
use super::{Telemetry, CODES, SHED_REASONS};
use crate::health::{self, HealthState};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{k="v",…}` with escaped values.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s.push('}');
    s
}

/// `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

fn histogram(out: &mut String, name: &str, base: &str, h: &HistSnapshot) {
    let inner = &base[1..base.len() - 1];
    let sep = if inner.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        let le = BOUNDS.get(i).map_or("+Inf".to_string(), |b| float(*b));
        let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{base} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{base} {cumulative}");
}

/// The `precise_prefix` routes' KV-event index: counters per route, and
/// per node whether its event stream is live and how many blocks it holds.
fn precise(out: &mut String, fleet: &FleetView<'_>) {
    let routes = &fleet.precise;
    if routes.is_empty() {
        return;
    }
    let counters = routes[0].precise.index.stats.counters();
    for (k, (name, help, _)) in counters.iter().enumerate() {
        let metric = format!("infergate_kv_index_{name}_total");
        header(
            out,
            &metric,
            "counter",
            &format!("Precise prefix index: {help}."),
        );
        for r in routes {
            let value = r.precise.index.stats.counters()[k].2;
            let _ = writeln!(out, "{metric}{} {value}", labels(&[("route", r.route)]));
        }
    }
    header(
        out,
        "infergate_kv_index_tokenizer",
        "gauge",
        "1 when the route has a tokenizer; 0: it routes on the approximate index.",
    );
    for r in routes {
        let l = labels(&[("route", r.route)]);
        let _ = writeln!(
            out,
            "infergate_kv_index_tokenizer{l} {}",
            u8::from(r.precise.has_tokenizer())
        );
    }
    header(
        out,
        "infergate_kv_index_chat_template",
        "gauge",
        "1 when chat prompts are rendered with the model's chat template; 0: as `role: text` lines.",
    );
    for r in routes {
        let l = labels(&[("route", r.route)]);
        let _ = writeln!(
            out,
            "infergate_kv_index_chat_template{l} {}",
            u8::from(r.precise.has_chat_template())
        );
    }
    header(
        out,
        "infergate_kv_index_live",
        "gauge",
        "1 while the node's KV event stream is connected.",
    );
    let mut blocks = String::new();
    for r in routes {
        for (i, node) in r.nodes.iter().enumerate().take(r.precise.index.nodes()) {
            let l = labels(&[("route", r.route), ("node", &node.name)]);
            let _ = writeln!(
                out,
                "infergate_kv_index_live{l} {}",
                u8::from(r.precise.index.is_live(i))
            );
            let _ = writeln!(
                blocks,
                "infergate_kv_index_blocks{l} {}",
                r.precise.index.blocks_of(i)
            );
        }
    }
    header(
        out,
        "infergate_kv_index_blocks",
        "gauge",
        "KV blocks the node holds by its events.",
    );
    out.push_str(&blocks);
}

/// Render every metric for the running `table`.
pub fn render(telemetry: &Telemetry, fleet: &FleetView<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let series = telemetry.all_series();
    let base: Vec<String> = series
        .iter()
        .map(|s| {
            labels(&[
                ("route", &s.route),
                ("pool", &s.pool),
                ("node", &s.node),
                ("model", &s.model),
            ])
        })
        .collect();
    let totals: Vec<_> = series.iter().map(|s| s.totals()).collect();

    header(
        &mut out,
        "infergate_requests_total",
        "counter",
        "Attempts sent to nodes, by status class (code=error: no response).",
    );
    for (t, b) in totals.iter().zip(&base) {
        let inner = &b[1..b.len() - 1];
        for (code, c) in CODES.iter().zip(&t.codes) {
            let _ = writeln!(
                out,
                "infergate_requests_total{{{inner},code=\"{code}\"}} {c}"
            );
        }
    }
    for (name, help, pick) in [
        (
            "infergate_request_duration_seconds",
            "Request start to last response byte, for responses passed through.",
            0,
        ),
        (
            "infergate_time_to_first_token_seconds",
            "Request start to the first response body frame (first token when streaming).",
            1,
        ),
        (
            "infergate_inter_token_seconds",
            "Gaps between frames of streamed (SSE) responses.",
            2,
        ),
    ] {
        header(&mut out, name, "histogram", help);
        for (t, b) in totals.iter().zip(&base) {
            let h = match pick {
                0 => &t.duration,
                1 => &t.ttft,
                _ => &t.itl,
            };
            histogram(&mut out, name, b, h);
        }
    }
    header(
        &mut out,
        "infergate_tokens_total",
        "counter",
        "Tokens: in = prompt estimate from classification, out = streamed events or usage.completion_tokens.",
    );
    for (t, b) in totals.iter().zip(&base) {
        let inner = &b[1..b.len() - 1];
        for (dir, v) in [("in", t.tokens_in), ("out", t.tokens_out)] {
            let _ = writeln!(
                out,
                "infergate_tokens_total{{{inner},direction=\"{dir}\"}} {v}"
            );
        }
    }
    header(
        &mut out,
        "infergate_retries_total",
        "counter",
        "Attempts on a node that were retried on another node.",
    );
    for (t, b) in totals.iter().zip(&base) {
        let _ = writeln!(out, "infergate_retries_total{b} {}", t.retries);
    }

    let now = health::now_ms();
    let states = [
        (HealthState::Healthy, "healthy"),
        (HealthState::Unhealthy, "unhealthy"),
        (HealthState::Ejected, "ejected"),
        (HealthState::Draining, "draining"),
    ];
    let mut in_flight = String::new();
    let mut ejections = String::new();
    let mut health_lines = String::new();
    let mut weights = String::new();
    let mut pool_lines = String::new();
    let mut healthy_lines = String::new();
    let mut queue_lines = String::new();
    for state in &fleet.pools {
        let pool = state.pool;
        let mut healthy = 0;
        for node in &pool.nodes {
            let l = labels(&[("pool", &pool.name), ("node", &node.name)]);
            let inner = &l[1..l.len() - 1];
            let status = node.load.health.status(now);
            if node.load.health.is_available(now) && !node.load.health.is_draining() {
                healthy += 1;
            }
            let _ = writeln!(in_flight, "infergate_in_flight{l} {}", node.outstanding());
            let _ = writeln!(
                ejections,
                "infergate_ejections_total{l} {}",
                status.ejections
            );
            let _ = writeln!(weights, "infergate_node_weight{l} {}", node.weight);
            for (state, name) in states {
                let _ = writeln!(
                    health_lines,
                    "infergate_node_health{{{inner},state=\"{name}\"}} {}",
                    u8::from(status.state == state)
                );
            }
        }
        let l = labels(&[("pool", &pool.name)]);
        let _ = writeln!(
            pool_lines,
            "infergate_pool_panic{l} {}",
            u8::from(pool.in_panic(now))
        );
        let _ = writeln!(healthy_lines, "infergate_pool_healthy_nodes{l} {healthy}");
        if let Some(depth) = state.queue_depth {
            let _ = writeln!(queue_lines, "infergate_queue_depth{l} {depth}");
        }
    }
    header(
        &mut out,
        "infergate_in_flight",
        "gauge",
        "Attempts in flight to the node.",
    );
    out.push_str(&in_flight);
    header(
        &mut out,
        "infergate_ejections_total",
        "counter",
        "Times the node was ejected by outlier detection.",
    );
    out.push_str(&ejections);
    header(
        &mut out,
        "infergate_node_health",
        "gauge",
        "1 for the node's current health state, 0 for the others.",
    );
    out.push_str(&health_lines);
    header(
        &mut out,
        "infergate_node_weight",
        "gauge",
        "Configured weight of the node.",
    );
    out.push_str(&weights);
    header(
        &mut out,
        "infergate_pool_panic",
        "gauge",
        "1 while the pool is in panic mode (too few available nodes; health ignored).",
    );
    out.push_str(&pool_lines);
    header(
        &mut out,
        "infergate_pool_healthy_nodes",
        "gauge",
        "Nodes of the pool available now.",
    );
    out.push_str(&healthy_lines);
    header(
        &mut out,
        "infergate_queue_depth",
        "gauge",
        "Requests waiting in the pool's admission queue.",
    );
    out.push_str(&queue_lines);

    header(
        &mut out,
        "infergate_shed_total",
        "counter",
        "Requests refused for saturation (429/503) or answered 429 by a node, by reason.",
    );
    for (pool, shed) in telemetry.all_shed() {
        for (reason, c) in SHED_REASONS.iter().zip(&shed.counts) {
            let l = labels(&[("pool", &pool), ("reason", reason)]);
            let _ = writeln!(out, "infergate_shed_total{l} {}", c.load(Relaxed));
        }
    }
    header(
        &mut out,
        "infergate_local_responses_total",
        "counter",
        "Responses the gateway made itself (no route, bad request, shed, no node), by status class.",
    );
    for (code, c) in CODES.iter().zip(&telemetry.local.codes) {
        let _ = writeln!(
            out,
            "infergate_local_responses_total{{code=\"{code}\"}} {}",
            c.load(Relaxed)
        );
    }
    header(
        &mut out,
        "infergate_client_connections_parked",
        "gauge",
        "Idle HTTP/1 client connections held without HTTP state or buffers until their next request.",
    );
    let parked = &telemetry.parked;
    let _ = writeln!(
        out,
        "infergate_client_connections_parked {}",
        parked.now.load(Relaxed)
    );
    header(
        &mut out,
        "infergate_client_connection_parks_total",
        "counter",
        "Times an idle client connection was parked.",
    );
    let _ = writeln!(
        out,
        "infergate_client_connection_parks_total {}",
        parked.total.load(Relaxed)
    );
    if let Some(log) = &telemetry.access {
        header(
            &mut out,
            "infergate_access_log_dropped_total",
            "counter",
            "Access-log lines dropped because the writer fell behind.",
        );
        let _ = writeln!(
            out,
            "infergate_access_log_dropped_total {}",
            log.dropped.load(Relaxed)
        );
    }
    super::scrape::render(&mut out, fleet);
    crate::tenant::render(&mut out, &fleet.budgets);
    telemetry.alerts.render_metrics(&mut out);
    crate::energy::prom::render(&mut out, fleet.energy);
    header(
        &mut out,
        "infergate_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
    );
    let _ = writeln!(
        out,
        "infergate_uptime_seconds {}",
        telemetry.uptime().as_secs_f64()
    );
    precise(&mut out, fleet);
    out
}

/// One sample of a parsed exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes).
    pub name: String,
    /// Labels in order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// Value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse the text format strictly: every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are valid, values are
/// numbers, and histogram buckets are cumulative ending in `+Inf` equal to
/// `_count`.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut types: std::collections::HashMap<String, String> = Default::default();
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(err("bad name"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err("bad type"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err("family declared twice"));
                    }
                }
                (Some("HELP"), Some(_), _) => {}
                _ => return Err(err("bad comment")),
            }
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        let (name, labels) = match name_labels.find('{') {
            None => (name_labels.to_string(), Vec::new()),
            Some(i) => {
                let body = name_labels[i + 1..]
                    .strip_suffix('}')
                    .ok_or_else(|| err("unclosed labels"))?;
                (
                    name_labels[..i].to_string(),
                    parse_labels(body).map_err(|e| err(&e))?,
                )
            }
        };
        if !valid_name(&name) {
            return Err(err("bad metric name"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name);
        if !types.contains_key(family) {
            return Err(err("sample without # TYPE"));
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    // Histogram consistency.
    let mut buckets: std::collections::HashMap<String, (f64, f64, bool)> = Default::default();
    for s in &samples {
        if let Some(family) = s.name.strip_suffix("_bucket") {
            let key = format!(
                "{family}{:?}",
                s.labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .collect::<Vec<_>>()
            );
            let entry = buckets.entry(key.clone()).or_insert((0.0, 0.0, false));
            if s.value < entry.0 {
                return Err(format!("{key}: buckets not cumulative"));
            }
            entry.0 = s.value;
            if s.label("le") == Some("+Inf") {
                entry.2 = true;
            }
        } else if let Some(family) = s.name.strip_suffix("_count") {
            let key = format!("{family}{:?}", s.labels.iter().collect::<Vec<_>>());
            if let Some(entry) = buckets.get_mut(&key) {
                entry.1 = s.value;
                if !entry.2 || (entry.0 - entry.1).abs() > 0.0 {
                    return Err(format!("{key}: +Inf bucket != count"));
                }
            }
        }
    }
    Ok(samples)
}

fn parse_labels(body: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return Ok(out);
        }
        if !valid_name(&key) || chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("bad label near {key}"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    _ => return Err("bad escape".into()),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        }
        out.push((key, value));
        match chars.next() {
            Some(',') => continue,
            None => return Ok(out),
            Some(c) => return Err(format!("unexpected {c}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        let l = labels(&[("a", "x\"y\\z\nw"), ("b", "")]);
        let parsed = parse_labels(&l[1..l.len() - 1]).unwrap();
        assert_eq!(parsed[0].1, "x\"y\\z\nw");
        assert_eq!(parsed[1].1, "");
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = super::super::Histogram::default();
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_secs(1000));
        let mut out = String::new();
        header(&mut out, "x_seconds", "histogram", "help");
        histogram(&mut out, "x_seconds", &labels(&[("a", "b")]), &h.snapshot());
        let samples = parse(&out).unwrap();
        let inf = samples
            .iter()
            .find(|s| s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.value, 2.0);
        let count = samples
            .iter()
            .find(|s| s.name == "x_seconds_count")
            .unwrap();
        assert_eq!(count.value, 2.0);
    }

    #[test]
    fn parser_rejects_bad_input() {
        assert!(parse("x 1\n").is_err(), "no TYPE");
        assert!(parse("# TYPE x counter\nx{a=\"b} 1\n").is_err());
        assert!(parse("# TYPE x counter\nx abc\n").is_err());
        assert!(parse("# TYPE x counter\nx{a=\"b\"} 1\n").is_ok());
    }
}
