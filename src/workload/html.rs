//! A self-contained HTML page of a bench run: the per-stage table, request
//! latency and TTFT over time, and each node's share of the requests.
//! Inline SVG and CSS only: no script, no external resource, so it opens
//! anywhere (and a hostile node name is escaped text, nothing more).

use std::fmt::Write;

use serde_json::Value;

use super::measure::Record;

/// Most points drawn in the latency chart (a larger run is sampled evenly).
const MAX_POINTS: usize = 4000;

/// Escape text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or("–".into(), |s| format!("{:.1}", s * 1000.0))
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// One table row per stage summary (`label`, summary JSON).
fn stage_table(stages: &[(String, Value)]) -> String {
    let mut out = String::from(
        "<table><tr><th>stage</th><th>requests</th><th>errors</th><th>TTFT p50 ms</th>\
         <th>TTFT p99 ms</th><th>TPOT p50 ms</th><th>ITL p50 ms</th><th>latency p50 ms</th>\
         <th>latency p99 ms</th><th>req/s</th><th>output tok/s</th><th>goodput %</th>\
         <th>cached %</th></tr>\n",
    );
    for (label, s) in stages {
        let l = &s["successes"]["latency"];
        let t = &s["successes"]["throughput"];
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(label),
            s["load_summary"]["count"],
            s["failures"]["count"],
            ms(&l["time_to_first_token"]["median"]),
            ms(&l["time_to_first_token"]["p99"]),
            ms(&l["time_per_output_token"]["median"]),
            ms(&l["inter_token_latency"]["median"]),
            ms(&l["request_latency"]["median"]),
            ms(&l["request_latency"]["p99"]),
            num(&t["requests_per_sec"], 2),
            num(&t["output_tokens_per_sec"], 0),
            num(&s["successes"]["goodput_metrics"]["goodput_percentage"], 1),
            num(&s["successes"]["kv_cache_hit_percent"], 1),
        );
    }
    out.push_str("</table>\n");
    out
}

/// Scatter of request latency (and TTFT) by send time.
fn latency_chart(records: &[Record]) -> String {
    let (w, h, pad) = (900.0, 320.0, 50.0);
    let ok: Vec<&Record> = records.iter().filter(|r| r.ok()).collect();
    if ok.is_empty() {
        return "<p>No successful requests to chart.</p>\n".into();
    }
    let step = ok.len().div_ceil(MAX_POINTS).max(1);
    let x_max = records
        .iter()
        .map(|r| r.start)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let y_max = ok
        .iter()
        .map(|r| r.request_latency())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let x = |t: f64| pad + t / x_max * (w - 2.0 * pad);
    let y = |v: f64| h - pad + -(v / y_max) * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>\n\
         <text x=\"{pad}\" y=\"{ty}\" font-size=\"12\">{:.0} ms</text>\
         <text x=\"{r}\" y=\"{tx}\" font-size=\"12\" text-anchor=\"end\">{x_max:.1} s</text>\
         <text x=\"{pad}\" y=\"{tx}\" font-size=\"12\">0 s (send time)</text>\n",
        y_max * 1000.0,
        b = h - pad,
        r = w - pad,
        ty = pad - 8.0,
        tx = h - pad + 18.0,
    );
    // Stage boundaries.
    let mut stage = usize::MAX;
    for r in records {
        if r.stage != stage {
            stage = r.stage;
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" y1=\"{pad}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#ccc\" stroke-dasharray=\"4\"/>\
                 <text x=\"{2:.1}\" y=\"{3}\" font-size=\"11\">stage {stage}</text>",
                x(r.start),
                h - pad,
                x(r.start) + 3.0,
                pad + 12.0,
            );
        }
    }
    for r in ok.iter().step_by(step) {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"#3060c0\" fill-opacity=\"0.6\"/>",
            x(r.start),
            y(r.request_latency())
        );
        if let Some(t) = r.ttft() {
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"#e07020\" fill-opacity=\"0.7\"/>",
                x(r.start),
                y(t)
            );
        }
        svg.push('\n');
    }
    svg.push_str(
        "</svg>\n<p class=\"legend\"><span style=\"color:#3060c0\">●</span> request latency \
                  <span style=\"color:#e07020\">●</span> time to first token (streamed)</p>\n",
    );
    svg
}

/// Horizontal bars: each node's share of the requests.
fn node_chart(per_node: &Value, title: &str) -> String {
    let Some(nodes) = per_node.as_object().filter(|n| !n.is_empty()) else {
        return String::new();
    };
    let (w, row) = (900.0, 24.0);
    let h = row * nodes.len() as f64 + 10.0;
    let mut svg = format!(
        "<h2>{}</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">\n",
        escape(title)
    );
    for (i, (name, v)) in nodes.iter().enumerate() {
        let share = v["share"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
        let top = 5.0 + i as f64 * row;
        let _ = writeln!(
            svg,
            "<text x=\"0\" y=\"{:.1}\" font-size=\"12\">{}</text>\
             <rect x=\"200\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#50a060\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{:.1}% ({})</text>",
            top + 15.0,
            escape(&name.chars().take(28).collect::<String>()),
            share * 600.0,
            row - 6.0,
            205.0 + share * 600.0,
            top + 15.0,
            share * 100.0,
            v["count"],
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The whole page. `title` and `notes` are shown escaped; `stages` are
/// (label, summary) per stage; `overall` the summary of all stages;
/// `admin_nodes` an optional per-node share from the gateway's counters.
pub fn page(
    title: &str,
    notes: &[String],
    stages: &[(String, Value)],
    overall: &Value,
    records: &[Record],
    admin_nodes: Option<&Value>,
) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title>\n<style>body{{font-family:sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td:first-child{{text-align:left}}.legend{{font-size:13px}}</style>\
         </head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for note in notes {
        let _ = writeln!(out, "<p>{}</p>", escape(note));
    }
    out.push_str("<h2>Stages</h2>\n");
    out.push_str(&stage_table(stages));
    out.push_str("<h2>Latency over time</h2>\n");
    out.push_str(&latency_chart(records));
    out.push_str(&node_chart(
        &overall["per_node"],
        "Per-node share (node response header)",
    ));
    if let Some(admin) = admin_nodes {
        out.push_str(&node_chart(admin, "Per-node share (gateway counters)"));
    }
    out.push_str(
        "<p class=\"legend\">Definitions (inference-perf): TTFT = first content event − send; \
         TPOT = (e2e − TTFT) / (output tokens − 1); ITL = gaps between content events; \
         normalized TPOT = e2e / output tokens. Full numbers: summary_lifecycle_metrics.json.</p>\n\
         </body></html>\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_server_text_and_loads_nothing() {
        let records = vec![Record {
            status: 200,
            end: 1.0,
            first_token: Some(0.5),
            output_tokens: 3,
            node: Some("<script>x</script>".into()),
            ..Record::default()
        }];
        let overall = super::super::report::summarize_requests(
            &records,
            None,
            0,
            super::super::report::Slo::default(),
        );
        let html = page(
            "bench <1>",
            &["note & more".into()],
            &[("rate 1".into(), overall.clone())],
            &overall,
            &records,
            None,
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;x"));
        assert!(html.contains("<svg") && html.contains("<circle"));
        assert!(!html.contains("src=") && !html.contains("href="));
    }
}
