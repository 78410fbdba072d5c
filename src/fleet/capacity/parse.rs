//! Reading a node's Prometheus text page for the few capacity metrics the
//! gateway routes on — a line scanner, no Prometheus parser dependency.
//!
//! | signal | vLLM | SGLang | TGI |
//! |---|---|---|---|
//! | running | `vllm:num_requests_running` | `sglang:num_running_reqs` | `tgi_batch_current_size` |
//! | waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `tgi_queue_size` |
//! | KV use (0..1) | `vllm:kv_cache_usage_perc` (else the older `vllm:gpu_cache_usage_perc`) | `sglang:token_usage` | — |
//!
//! Counts are summed over label sets (one per served model or engine); KV
//! use takes the largest.

/// What one metrics page said; `None` for a signal it does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scraped {
    /// Requests in the running batch.
    pub running: Option<f64>,
    /// Requests queued.
    pub waiting: Option<f64>,
    /// KV cache use, 0..1.
    pub kv_usage: Option<f64>,
}

impl Scraped {
    /// True when the page carried none of the capacity metrics (wrong path,
    /// an exporter we do not know): worth telling the operator.
    pub fn is_empty(&self) -> bool {
        self.running.is_none() && self.waiting.is_none() && self.kv_usage.is_none()
    }
}

/// One sample line split into name, label text (without braces) and value.
pub(crate) fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let (labels, rest) = if let Some(inner) = rest.strip_prefix('{') {
        let close = inner.rfind('}')?;
        (&inner[..close], &inner[close + 1..])
    } else {
        ("", rest)
    };
    let v = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    v.is_finite().then_some((name, labels, v))
}

/// The value of label `key` in a label text (`a="x",b="y"`), unescaped.
pub(crate) fn label<'a>(labels: &'a str, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let mut rest = labels;
    loop {
        let eq = rest.find("=\"")?;
        let name = rest[..eq].trim().trim_start_matches(',').trim();
        let body = &rest[eq + 2..];
        // The closing quote is the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        if name == key {
            let raw = &body[..end];
            return Some(if raw.contains('\\') {
                std::borrow::Cow::Owned(raw.replace("\\\"", "\"").replace("\\\\", "\\"))
            } else {
                std::borrow::Cow::Borrowed(raw)
            });
        }
        rest = &body[end + 1..];
    }
}

/// vLLM's `vllm:lora_requests_info`: the sample with the latest time (vLLM
/// keeps old label sets around with older times), its comma-separated
/// running and waiting adapters and `max_lora`. `None` when absent.
pub fn parse_lora(text: &str) -> Option<crate::fleet::lora::LoraInfo> {
    let mut best: Option<(&str, f64)> = None;
    for line in text.lines() {
        if let Some(("vllm:lora_requests_info", labels, v)) = sample(line) {
            if best.is_none_or(|(_, b)| v >= b) {
                best = Some((labels, v));
            }
        }
    }
    let (labels, _) = best?;
    let list = |key: &str| -> Vec<String> {
        label(labels, key).map_or_else(Vec::new, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .take(crate::fleet::lora::MAX_ADAPTERS)
                .map(str::to_string)
                .collect()
        })
    };
    Some(crate::fleet::lora::LoraInfo {
        running: list("running_lora_adapters"),
        waiting: list("waiting_lora_adapters"),
        max_lora: label(labels, "max_lora").and_then(|m| m.trim().parse().ok()),
    })
}

/// Scan a Prometheus text page for the known capacity metrics.
pub fn parse_metrics(text: &str) -> Scraped {
    let mut s = Scraped::default();
    let mut gpu_cache: Option<f64> = None;
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    let max = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.map_or(v, |o: f64| o.max(v)));
    for line in text.lines() {
        let Some((name, _, v)) = sample(line) else {
            continue;
        };
        match name {
            "vllm:num_requests_running" | "sglang:num_running_reqs" | "tgi_batch_current_size" => {
                add(&mut s.running, v)
            }
            "vllm:num_requests_waiting" | "sglang:num_queue_reqs" | "tgi_queue_size" => {
                add(&mut s.waiting, v)
            }
            "vllm:kv_cache_usage_perc" | "sglang:token_usage" => max(&mut s.kv_usage, v),
            "vllm:gpu_cache_usage_perc" => max(&mut gpu_cache, v),
            _ => {}
        }
    }
    if s.kv_usage.is_none() {
        s.kv_usage = gpu_cache;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 2.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.25
vllm:kv_cache_usage_perc{model_name="llama"} 0.5
vllm:prefix_cache_hits_total{model_name="llama"} 1234
"#;

    #[test]
    fn parses_vllm_sglang_and_tgi_names() {
        let s = parse_metrics(VLLM);
        assert_eq!(s.running, Some(7.0));
        assert_eq!(s.waiting, Some(5.0));
        assert_eq!(s.kv_usage, Some(0.5));
        // Older vLLM: only gpu_cache_usage_perc.
        let old = parse_metrics("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.75 1700000000\n");
        assert_eq!(old.kv_usage, Some(0.75));
        let sg = parse_metrics(
            "sglang:num_running_reqs{model_name=\"m\"} 4\nsglang:num_queue_reqs{model_name=\"m\"} 9\nsglang:token_usage{model_name=\"m\"} 0.9\n",
        );
        assert_eq!(
            (sg.running, sg.waiting, sg.kv_usage),
            (Some(4.0), Some(9.0), Some(0.9))
        );
        let tgi = parse_metrics("tgi_queue_size 6\ntgi_batch_current_size 12\n");
        assert_eq!(
            (tgi.running, tgi.waiting, tgi.kv_usage),
            (Some(12.0), Some(6.0), None)
        );
        // Labels containing spaces and braces, junk lines, NaN.
        let odd = parse_metrics(
            "vllm:num_requests_waiting{a=\"x y}\"} 2\nnot a metric\nvllm:num_requests_running NaN\n",
        );
        assert_eq!((odd.waiting, odd.running), (Some(2.0), None));
        assert_eq!(parse_metrics(""), Scraped::default());
        assert!(parse_metrics("process_cpu_seconds_total 3\n").is_empty());
    }

    #[test]
    fn parses_vllm_lora_info_latest_sample() {
        let page = "# TYPE vllm:lora_requests_info gauge\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"old\",waiting_lora_adapters=\"\"} 1.7e9\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql-lora,chat\",waiting_lora_adapters=\"math\"} 1.8e9\n";
        let l = parse_lora(page).unwrap();
        assert_eq!(l.running, ["sql-lora", "chat"]);
        assert_eq!(l.waiting, ["math"]);
        assert_eq!(l.max_lora, Some(2));
        assert_eq!(parse_lora(VLLM), None);
        assert_eq!(label("a=\"x\\\"y\",b=\"z\"", "a").as_deref(), Some("x\"y"));
        assert_eq!(label("a=\"x\\\"y\",b=\"z\"", "b").as_deref(), Some("z"));
    }
}
