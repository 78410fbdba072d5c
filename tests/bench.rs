//! `infergate bench` as a user runs it: the built binary against a gateway
//! in front of simulated nodes (`--target`), a trace replay, the policy
//! comparison, and the measurement of one known streamed response.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

async fn infergate(args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(args)
        .env_remove("INFERGATE_BENCH_API_KEY")
        .env_remove("INFERGATE_ADMIN_TOKEN")
        .output();
    tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("bench finished within 120s")
        .expect("run infergate")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infergate-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn said(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Columns of the CSV by header name.
fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    // No field of these runs needs quoting (no errors, plain node names).
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[tokio::test]
async fn bench_against_a_gateway_writes_inference_perf_reports() {
    let nodes = start_nodes(2, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let (gw, _store, admin, _path) = start_with_console("bench-target", &text, "t").await;
    let dir = out_dir("target");
    let (target, admin_url) = (format!("http://{}", gw.addr), admin.addr.to_string());
    let out = infergate(&[
        "bench",
        "--target",
        &target,
        "--model",
        MODEL,
        "--workload",
        "synthetic",
        "--input-tokens",
        "64",
        "--output-tokens",
        "8",
        "--stream-share",
        "0.5",
        "--rate",
        "30,60",
        "--duration",
        "1s",
        "--slo-ttft",
        "10s",
        "--admin",
        &admin_url,
        "--output",
        dir.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", said(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stage 1 (rate 60/s)") && stderr.contains("sent"),
        "progress line: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ttft_p50") && stdout.contains("stage 0 (rate 30/s)"),
        "{stdout}"
    );

    let summary = json(&dir.join("summary_lifecycle_metrics.json"));
    let count = summary["load_summary"]["count"].as_u64().unwrap();
    assert!(count >= 20, "{summary}");
    assert_eq!(summary["failures"]["count"], 0, "{summary}");
    let ok = &summary["successes"];
    assert_eq!(ok["count"].as_u64(), Some(count));
    for metric in [
        "request_latency",
        "time_to_first_token",
        "time_per_output_token",
        "inter_token_latency",
        "normalized_time_per_output_token",
    ] {
        for key in ["mean", "min", "max", "median", "p90", "p95", "p99", "p99.9"] {
            assert!(
                ok["latency"][metric][key].as_f64().is_some(),
                "{metric}.{key}: {}",
                ok["latency"]
            );
        }
    }
    for key in [
        "input_tokens_per_sec",
        "output_tokens_per_sec",
        "total_tokens_per_sec",
        "requests_per_sec",
    ] {
        assert!(ok["throughput"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    // Exactly 8 output tokens each (ignore_eos), counted by the server.
    assert_eq!(
        ok["output_tokens"]["total"].as_f64(),
        Some(8.0 * count as f64)
    );
    assert_eq!(ok["client_fallback_requests"]["output"], 0);
    assert!(ok["kv_cache_hit_percent"].as_f64().is_some());
    assert_eq!(
        ok["goodput_metrics"]["total_requests"].as_u64(),
        Some(count)
    );
    // Per-node share: from the nodes' header and from the gateway counters.
    let per_node = summary["per_node"].as_object().unwrap();
    assert_eq!(per_node.len(), 2, "{summary}");
    let share: f64 = per_node
        .values()
        .map(|v| v["share"].as_f64().unwrap())
        .sum();
    assert!((share - 1.0).abs() < 1e-9);
    let gateway = &summary["per_node_gateway"];
    let counted: u64 = ["p/n0", "p/n1"]
        .iter()
        .map(|n| gateway[n]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, count, "{gateway}");

    // One stage file per rate, with its requested rate.
    let s1 = json(&dir.join("stage_1_lifecycle_metrics.json"));
    assert_eq!(s1["load_summary"]["requested_rate"], 60.0);
    let s0 = json(&dir.join("stage_0_lifecycle_metrics.json"));
    assert_eq!(
        s0["load_summary"]["count"].as_u64().unwrap()
            + s1["load_summary"]["count"].as_u64().unwrap(),
        count
    );

    // CSV: one row per request; TPOT = (e2e − TTFT) / (output tokens − 1).
    let (header, rows) = csv_rows(&dir.join("per_request_lifecycle_metrics.csv"));
    assert_eq!(rows.len() as u64, count);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (e2e, ttft, tpot, out_tokens, streamed) = (
        col("request_latency"),
        col("time_to_first_token"),
        col("time_per_output_token"),
        col("output_tokens"),
        col("streamed"),
    );
    let mut streamed_rows = 0;
    for row in &rows {
        assert_eq!(row[out_tokens], "8");
        if row[streamed] == "true" {
            streamed_rows += 1;
            let f = |i: usize| row[i].parse::<f64>().unwrap();
            let expected = (f(e2e) - f(ttft)) / 7.0;
            assert!((f(tpot) - expected).abs() < 1e-5, "{row:?}");
        } else {
            assert_eq!(row[tpot], "", "no TPOT without streaming: {row:?}");
        }
    }
    assert!(streamed_rows > 0 && streamed_rows < rows.len());

    // HTML: self-contained, with the charts.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("<circle") && html.contains("sim-0"));
    for external in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the page");
    }
    admin.stop().await;
    gw.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn bench_replays_a_trace_at_fixed_concurrency() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let dir = out_dir("trace");
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.jsonl");
    std::fs::write(
        &trace,
        "# five requests\n\
         {\"timestamp\": 0, \"prompt\": \"one\", \"max_tokens\": 4, \"stream\": true}\n\
         {\"timestamp\": 10, \"messages\": [{\"role\": \"user\", \"content\": \"two\"}], \"max_tokens\": 4}\n\
         {\"prompt\": \"three\", \"max_tokens\": 3, \"stream\": false}\n\
         {\"prompt\": \"four\", \"max_tokens\": 2}\n\
         {\"prompt\": \"five\"}\n",
    )
    .unwrap();
    let target = node_url(&nodes[0]);
    let out = infergate(&[
        "bench",
        "--target",
        &target,
        "--workload",
        "trace",
        "--trace",
        trace.to_str().unwrap(),
        "--concurrency",
        "2",
        "--duration",
        "30s",
        "--output",
        dir.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", said(&out));
    let summary = json(&dir.join("summary_lifecycle_metrics.json"));
    // The model came from the node's /v1/models; the trace ran once.
    assert_eq!(summary["load_summary"]["count"], 5, "{summary}");
    assert_eq!(summary["successes"]["count"], 5, "{summary}");
    let stage = json(&dir.join("stage_0_lifecycle_metrics.json"));
    assert_eq!(stage["load_summary"]["concurrency"], 2);
    let (_, rows) = csv_rows(&dir.join("per_request_lifecycle_metrics.csv"));
    assert_eq!(rows.len(), 5);

    // A broken trace is refused with its line number.
    std::fs::write(&trace, "{\"prompt\": \"ok\"}\n{\"max_tokens\": 1}\n").unwrap();
    let out = infergate(&[
        "bench",
        "--target",
        &target,
        "--workload",
        "trace",
        "--trace",
        trace.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(said(&out).contains("trace line 2"), "{}", said(&out));
    for n in nodes {
        n.shutdown().await;
    }
}

fn node_url(node: &infergate::sim::SimNode) -> String {
    format!("http://{}", node.addr())
}

#[tokio::test]
async fn policy_comparison_reports_the_same_way() {
    let dir = out_dir("policies");
    let out = infergate(&[
        "bench",
        "--policies",
        "round_robin,least_outstanding",
        "--speeds",
        "1,1",
        "--rate",
        "4",
        "--time-scale",
        "0.02",
        "--duration",
        "1s",
        "--output",
        dir.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", said(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("round_robin") && stdout.contains("least_outstanding"),
        "{stdout}"
    );
    for policy in ["round_robin", "least_outstanding"] {
        let summary = json(&dir.join(policy).join("summary_lifecycle_metrics.json"));
        assert!(
            summary["successes"]["count"].as_u64().unwrap() > 0,
            "{summary}"
        );
        // Simulated time: 4 requests per simulated second were asked for.
        let stage = json(&dir.join(policy).join("stage_0_lifecycle_metrics.json"));
        assert_eq!(stage["load_summary"]["requested_rate"], 4.0);
        assert!(dir.join(policy).join("report.html").exists());
    }
}

/// A scripted upstream: one streamed answer with known gaps and a usage
/// chunk that counts more tokens than there were events.
async fn scripted_stream() -> std::net::SocketAddr {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
            // The API key arrives as a bearer token, else no tokens at all.
            let authorized = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer k");
            tokio::spawn(async move {
                if !authorized {
                    return;
                }
                let event = |s: &str| Ok(Frame::data(Bytes::from(format!("data: {s}\n\n"))));
                let content = r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#;
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(event(content)).await;
                for _ in 0..2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = tx.send(event(content)).await;
                }
                let usage = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":8}}}"#;
                let _ = tx.send(event(usage)).await;
                let _ = tx.send(event("[DONE]")).await;
            });
            let body = StreamBody::new(tokio_stream_from(rx));
            Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    addr
}

/// An mpsc receiver as a stream (no tokio-stream dependency).
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test]
async fn a_known_stream_is_measured_as_defined() {
    use infergate::workload::measure::{bench_client, send, Target};
    let addr = scripted_stream().await;
    let target = Target {
        url: format!("http://{addr}/v1/chat/completions"),
        api_key: Some("k".into()),
        node_header: None,
        timeout: Duration::from_secs(10),
    };
    let planned = infergate::workload::Planned {
        body: infergate::workload::chat_body(MODEL, vec![], true, 5),
        stream: true,
    };
    let epoch = tokio::time::Instant::now();
    let r = send(&bench_client(), &target, &planned, epoch, 0, 0.0).await;
    assert!(r.ok(), "{r:?}");
    // Server counts win over the client's: 5 output tokens, 12 prompt, 8 cached.
    assert_eq!(
        (r.output_tokens, r.prompt_tokens, r.cached_tokens),
        (5, 12, Some(8))
    );
    let ttft = r.ttft().unwrap();
    assert!(ttft >= 0.030, "{ttft}");
    // TPOT = (e2e − TTFT) / (output tokens − 1), not over the 3 events.
    let tpot = r.tpot().unwrap();
    assert!((tpot - (r.request_latency() - ttft) / 4.0).abs() < 1e-12);
    // ITL: the two gaps between the three content events, each ≥ 20 ms.
    assert_eq!(r.itl.len(), 2);
    assert!(r.itl.iter().all(|&g| g >= 0.019), "{:?}", r.itl);
}

#[tokio::test]
async fn failures_are_labelled_like_inference_perf() {
    let nodes = start_nodes(1, &fast_sim()).await;
    nodes[0].set_faults(infergate::sim::Faults {
        error_rate: 0.5,
        error_status: 503,
        ..infergate::sim::Faults::default()
    });
    let dir = out_dir("failures");
    let target = node_url(&nodes[0]);
    let out = infergate(&[
        "bench",
        "--target",
        &target,
        "--model",
        MODEL,
        "--workload",
        "synthetic",
        "--input-tokens",
        "16",
        "--output-tokens",
        "2",
        "--concurrency",
        "4",
        "--duration",
        "500ms",
        "--output",
        dir.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", said(&out));
    let summary = json(&dir.join("summary_lifecycle_metrics.json"));
    let failed = summary["failures"]["count"].as_u64().unwrap();
    assert!(failed > 0, "{summary}");
    let label = &summary["failures"]["by_label"]["503 - Service Unavailable"];
    assert_eq!(label["count"].as_u64(), Some(failed), "{summary}");
    assert!(label["messages"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("HTTP 503"));
    assert_eq!(
        summary["successes"]["count"].as_u64().unwrap() + failed,
        summary["load_summary"]["count"].as_u64().unwrap()
    );
    let csv = std::fs::read_to_string(dir.join("per_request_lifecycle_metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().filter(|l| l.contains(",503,false,")).count() as u64,
        failed
    );
    for n in nodes {
        n.shutdown().await;
    }
}
