//! The access log: one line per request, written off the request path.
//!
//! The request path formats the line and hands it to a bounded channel with
//! `try_send`; a writer thread owns the output. When the channel is full the
//! line is dropped and counted (`infergate_access_log_dropped_total`), so a
//! slow disk or a blocked stdout never stalls a request.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use serde::Deserialize;

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// `key=value` pairs.
    Text,
}

/// `[access_log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write the log.
    pub enabled: bool,
    /// `json` or `text`.
    pub format: Format,
    /// Share of requests logged (0.0 to 1.0).
    pub sample: f64,
    /// File to append to (absent: stdout).
    pub path: Option<PathBuf>,
    /// Lines buffered for the writer before new ones are dropped.
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            format: Format::Json,
            sample: 1.0,
            path: None,
            buffer: 8192,
        }
    }
}

/// One request as logged.
#[derive(Debug)]
pub struct Record<'a> {
    /// Request id.
    pub id: &'a str,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// Route name (`-`: none).
    pub route: &'a str,
    /// Model pattern of the route.
    pub model: &'a str,
    /// Node that answered (`-`: none).
    pub node: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// Status sent to the client.
    pub status: u16,
    /// Until the last byte.
    pub latency: Duration,
    /// Until the first body frame.
    pub ttft: Option<Duration>,
    /// Prompt-token estimate.
    pub tokens_in: u32,
    /// Output tokens.
    pub tokens_out: u64,
    /// The stream was cut by an error.
    pub error: bool,
}

/// The access log's sending side.
pub struct AccessLog {
    tx: SyncSender<String>,
    format: Format,
    sample: f64,
    /// Lines dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Lines handed to the writer.
    pub written: AtomicU64,
}

impl AccessLog {
    /// Start the writer for `config`; `None` when disabled or the file
    /// cannot be opened (logged).
    pub fn new(config: &AccessLogConfig) -> Option<AccessLog> {
        if !config.enabled || config.sample <= 0.0 {
            return None;
        }
        let mut out: Box<dyn Write + Send> = match &config.path {
            None => Box::new(std::io::stdout()),
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => Box::new(file),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open access log; access log off");
                    return None;
                }
            },
        };
        let (tx, rx) = sync_channel::<String>(config.buffer.max(1));
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    while let Ok(line) = rx.try_recv() {
                        buf.extend_from_slice(line.as_bytes());
                        buf.push(b'\n');
                        if buf.len() > 60 * 1024 {
                            break;
                        }
                    }
                    let _ = out.write_all(&buf).and_then(|()| out.flush());
                    buf.clear();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
            return None;
        }
        Some(AccessLog {
            tx,
            format: config.format,
            sample: config.sample.min(1.0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Log `record` (subject to sampling); never blocks.
    pub fn record(&self, record: Record<'_>) {
        if self.sample < 1.0 && fastrand::f64() >= self.sample {
            return;
        }
        let line = format_line(self.format, &record);
        match self.tx.try_send(line) {
            Ok(()) => {
                self.written.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One log line (without the newline).
pub fn format_line(format: Format, r: &Record<'_>) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match format {
        Format::Json => serde_json::json!({
            "ts_ms": super::unix_ms(),
            "request_id": r.id,
            "client": r.client.to_string(),
            "route": r.route,
            "model": r.model,
            "node": r.node,
            "attempts": r.attempts,
            "status": r.status,
            "latency_ms": (ms(r.latency) * 1000.0).round() / 1000.0,
            "ttft_ms": r.ttft.map(|t| (ms(t) * 1000.0).round() / 1000.0),
            "tokens_in": r.tokens_in,
            "tokens_out": r.tokens_out,
            "stream_error": r.error,
        })
        .to_string(),
        Format::Text => format!(
            "ts_ms={} request_id={:?} client={} route={:?} model={:?} node={:?} attempts={} status={} latency_ms={:.3} ttft_ms={} tokens_in={} tokens_out={} stream_error={}",
            super::unix_ms(),
            r.id,
            r.client,
            r.route,
            r.model,
            r.node,
            r.attempts,
            r.status,
            ms(r.latency),
            r.ttft.map_or("-".to_string(), |t| format!("{:.3}", ms(t))),
            r.tokens_in,
            r.tokens_out,
            r.error
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            id: "abc\"1",
            client: "192.0.2.7:5555".parse().unwrap(),
            route: "r",
            model: "m",
            node: "n0",
            attempts: 2,
            status: 200,
            latency: Duration::from_millis(12),
            ttft: Some(Duration::from_millis(3)),
            tokens_in: 10,
            tokens_out: 5,
            error: false,
        }
    }

    #[test]
    fn json_line_has_the_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&format_line(Format::Json, &record())).unwrap();
        assert_eq!(v["request_id"], "abc\"1");
        assert_eq!(v["node"], "n0");
        assert_eq!(v["client"], "192.0.2.7:5555");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["latency_ms"], 12.0);
        assert_eq!(v["ttft_ms"], 3.0);
        assert_eq!(v["tokens_out"], 5);
    }

    #[test]
    fn text_line_quotes_strings() {
        let line = format_line(Format::Text, &record());
        assert!(line.contains("request_id=\"abc\\\"1\""), "{line}");
        assert!(line.contains("status=200"));
        assert!(line.contains(" client=192.0.2.7:5555 "), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn file_output_and_drop_counting() {
        let dir = std::env::temp_dir().join(format!("ig-access-{}", fastrand::u64(..)));
        let log = AccessLog::new(&AccessLogConfig {
            enabled: true,
            path: Some(dir.clone()),
            buffer: 4,
            ..AccessLogConfig::default()
        })
        .unwrap();
        for _ in 0..1000 {
            log.record(record());
        }
        let written = log.written.load(Relaxed);
        let dropped = log.dropped.load(Relaxed);
        assert_eq!(written + dropped, 1000);
        drop(log);
        // The writer drains what was accepted, then exits.
        let mut lines = 0;
        for _ in 0..100 {
            lines = std::fs::read_to_string(&dir)
                .unwrap_or_default()
                .lines()
                .count() as u64;
            if lines == written {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(lines, written);
        let _ = std::fs::remove_file(&dir);
    }
}
