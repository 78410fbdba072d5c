//! Where a bench's requests come from: the shared-prefix chat sessions, a
//! fixed-size synthetic request, or the lines of a JSONL trace.
//!
//! Trace format (one JSON object per line, blank lines and lines starting
//! with `#` skipped):
//!
//! ```text
//! {"timestamp": 0, "prompt": "Summarize ...", "max_tokens": 64}
//! {"timestamp": 250, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": false}
//! ```
//!
//! `timestamp` is the send time in milliseconds after the stage starts
//! (optional: without it, the stage's rate or concurrency paces the line);
//! `prompt` (a string, sent as one user message) or `messages` (sent as
//! is); `max_tokens` (default 128); `stream` (default: drawn with the
//! stream share). The trace is replayed once per stage, in file order.

use super::client::{chat_body, ChatSessions, Planned, WorkloadConfig};
use super::prompts::words;

/// One line of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEntry {
    /// Send offset from the stage start, in milliseconds.
    pub timestamp_ms: Option<u64>,
    /// Chat messages (a `prompt` becomes one user message).
    pub messages: Vec<serde_json::Value>,
    /// `max_tokens` to ask for.
    pub max_tokens: u32,
    /// Whether to stream; `None`: drawn with the stream share.
    pub stream: Option<bool>,
}

/// Parse a JSONL trace; errors name the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceEntry>, String> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: &str| format!("trace line {}: {e}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let messages = match (v.get("messages"), v.get("prompt")) {
            (Some(serde_json::Value::Array(m)), _) if !m.is_empty() => m.clone(),
            (None, Some(serde_json::Value::String(p))) => {
                vec![serde_json::json!({"role": "user", "content": p})]
            }
            _ => return Err(at("needs \"prompt\" (a string) or \"messages\" (an array)")),
        };
        let timestamp_ms = match v.get("timestamp") {
            None | Some(serde_json::Value::Null) => None,
            Some(t) => Some(
                t.as_f64()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| at("\"timestamp\" must be milliseconds >= 0"))?
                    as u64,
            ),
        };
        let max_tokens = match v.get("max_tokens") {
            None | Some(serde_json::Value::Null) => 128,
            Some(m) => m
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| *m >= 1)
                .ok_or_else(|| at("\"max_tokens\" must be a positive integer"))?,
        };
        let stream = match v.get("stream") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(_) => return Err(at("\"stream\" must be true or false")),
        };
        entries.push(TraceEntry {
            timestamp_ms,
            messages,
            max_tokens,
            stream,
        });
    }
    if entries.is_empty() {
        return Err("the trace has no requests".into());
    }
    Ok(entries)
}

/// Which workload a bench sends.
#[derive(Debug, Clone)]
pub enum WorkloadKind {
    /// Multi-turn chat sessions with shared system prompts.
    Chat(WorkloadConfig),
    /// Every request the same size: `input_bytes` of prompt (about 4 bytes
    /// per token) and exactly `output_tokens` asked for.
    Synthetic {
        /// Model to ask for.
        model: String,
        /// Prompt length in bytes.
        input_bytes: usize,
        /// `max_tokens`.
        output_tokens: u32,
        /// Share of streamed requests.
        stream_share: f64,
        /// Seed of the prompt text and stream draws.
        seed: u64,
    },
    /// A JSONL trace replayed once per stage.
    Trace {
        /// Model to ask for.
        model: String,
        /// The trace.
        entries: Vec<TraceEntry>,
        /// Share of streamed requests for lines without `stream`.
        stream_share: f64,
        /// Seed of the stream draws.
        seed: u64,
    },
}

/// A planned request with its scheduled offset (traces only).
#[derive(Debug, Clone)]
pub struct Next {
    /// Body and stream flag.
    pub planned: Planned,
    /// Send offset from the stage start (trace timestamps).
    pub at_ms: Option<u64>,
}

/// A stateful generator of one stage's requests.
pub struct Source {
    kind: SourceKind,
    rng: fastrand::Rng,
}

enum SourceKind {
    Chat(Box<ChatSessions>),
    Synthetic {
        model: String,
        input_bytes: usize,
        output_tokens: u32,
        stream_share: f64,
    },
    Trace {
        model: String,
        entries: std::sync::Arc<Vec<TraceEntry>>,
        next: usize,
        stream_share: f64,
    },
}

impl Source {
    /// A fresh generator for `kind` (every stage starts one, so every stage
    /// of every run sends the same sequence for a seed).
    pub fn new(kind: &WorkloadKind) -> Source {
        match kind {
            WorkloadKind::Chat(config) => Source {
                rng: fastrand::Rng::with_seed(config.seed ^ 0x5eed),
                kind: SourceKind::Chat(Box::new(ChatSessions::new(config.clone()))),
            },
            WorkloadKind::Synthetic {
                model,
                input_bytes,
                output_tokens,
                stream_share,
                seed,
            } => Source {
                rng: fastrand::Rng::with_seed(*seed),
                kind: SourceKind::Synthetic {
                    model: model.clone(),
                    input_bytes: *input_bytes,
                    output_tokens: *output_tokens,
                    stream_share: *stream_share,
                },
            },
            WorkloadKind::Trace {
                model,
                entries,
                stream_share,
                seed,
            } => Source {
                rng: fastrand::Rng::with_seed(*seed),
                kind: SourceKind::Trace {
                    model: model.clone(),
                    entries: std::sync::Arc::new(entries.clone()),
                    next: 0,
                    stream_share: *stream_share,
                },
            },
        }
    }

    /// Exponential inter-arrival gap (seconds) at `rate` per second.
    pub fn gap(&mut self, rate: f64) -> f64 {
        match &mut self.kind {
            SourceKind::Chat(sessions) => sessions.gap(rate),
            _ => -(1.0 - self.rng.f64()).ln() / rate.max(0.001),
        }
    }

    /// The next request; `None` when a trace is exhausted.
    pub fn next_request(&mut self) -> Option<Next> {
        match &mut self.kind {
            SourceKind::Chat(sessions) => Some(Next {
                planned: sessions.next_request(),
                at_ms: None,
            }),
            SourceKind::Synthetic {
                model,
                input_bytes,
                output_tokens,
                stream_share,
            } => {
                let stream = self.rng.f64() < *stream_share;
                let text = words(&mut self.rng, *input_bytes);
                let mut body = chat_body(
                    model,
                    vec![serde_json::json!({"role": "user", "content": text})],
                    stream,
                    *output_tokens,
                );
                // Exactly `output_tokens`: servers that know the option stop
                // only at the limit (vLLM, SGLang, the simulator).
                body["ignore_eos"] = serde_json::json!(true);
                Some(Next {
                    planned: Planned { body, stream },
                    at_ms: None,
                })
            }
            SourceKind::Trace {
                model,
                entries,
                next,
                stream_share,
            } => {
                let entry = entries.get(*next)?;
                *next += 1;
                let stream = entry
                    .stream
                    .unwrap_or_else(|| self.rng.f64() < *stream_share);
                let body = chat_body(model, entry.messages.clone(), stream, entry.max_tokens);
                Some(Next {
                    planned: Planned { body, stream },
                    at_ms: entry.timestamp_ms,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_parse_with_defaults_and_errors_name_the_line() {
        let text = "# a comment\n\
            {\"timestamp\": 0, \"prompt\": \"hello\", \"max_tokens\": 8}\n\
            \n\
            {\"timestamp\": 250.5, \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream\": false}\n";
        let entries = parse_trace(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].timestamp_ms, Some(0));
        assert_eq!(entries[0].messages[0]["content"], "hello");
        assert_eq!(entries[1].timestamp_ms, Some(250));
        assert_eq!(entries[1].max_tokens, 128);
        assert_eq!(entries[1].stream, Some(false));
        let err = parse_trace("{\"prompt\": \"a\"}\n{\"max_tokens\": 3}\n").unwrap_err();
        assert!(err.starts_with("trace line 2:"), "{err}");
        assert!(parse_trace("{\"prompt\": \"a\", \"max_tokens\": 0}")
            .unwrap_err()
            .contains("max_tokens"));
        assert!(parse_trace("\n# nothing\n").is_err());
    }

    #[test]
    fn sources_are_deterministic_and_traces_end() {
        let kind = WorkloadKind::Synthetic {
            model: "m".into(),
            input_bytes: 400,
            output_tokens: 7,
            stream_share: 0.5,
            seed: 3,
        };
        let (mut a, mut b) = (Source::new(&kind), Source::new(&kind));
        for _ in 0..5 {
            let (x, y) = (a.next_request().unwrap(), b.next_request().unwrap());
            assert_eq!(x.planned.body, y.planned.body);
            assert_eq!(x.planned.body["max_tokens"], 7);
            assert_eq!(
                x.planned.body.get("stream_options").is_some(),
                x.planned.stream
            );
        }
        let trace = WorkloadKind::Trace {
            model: "m".into(),
            entries: parse_trace("{\"prompt\": \"a\", \"timestamp\": 5}").unwrap(),
            stream_share: 1.0,
            seed: 1,
        };
        let mut t = Source::new(&trace);
        let first = t.next_request().unwrap();
        assert_eq!(first.at_ms, Some(5));
        assert!(first.planned.stream);
        assert!(t.next_request().is_none());
    }
}
