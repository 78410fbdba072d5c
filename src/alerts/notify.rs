//! Alert notifiers. Each has a bounded queue and one delivery task: the
//! evaluator only `try_send`s (a full queue drops and counts), and the task
//! POSTs with a timeout, retrying with exponential back-off.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::AlertEvent;
use crate::config::duration;

/// Where a notifier sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifierKind {
    /// `{"status", "alert": {...}}` JSON to any URL.
    Webhook,
    /// Slack-compatible incoming webhook: `{"text": ...}`.
    Slack,
    /// Prometheus Alertmanager v2 (`POST {url}/api/v2/alerts`).
    Alertmanager,
    /// The gateway's own log.
    Log,
}

/// `[[alerts.notifiers]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Name in metrics (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Kind.
    pub kind: NotifierKind,
    /// `http://` or `https://` URL (not for `log`). For Alertmanager the
    /// base URL. https uses the system's roots.
    #[serde(default)]
    pub url: Option<String>,
    /// Time limit of one delivery attempt.
    #[serde(default = "d_timeout", deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Retries after a failed attempt.
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// First back-off; doubles each retry up to `max_backoff`.
    #[serde(default = "d_backoff", deserialize_with = "duration::deserialize")]
    pub backoff: Duration,
    /// Longest back-off.
    #[serde(default = "d_max_backoff", deserialize_with = "duration::deserialize")]
    pub max_backoff: Duration,
    /// Notifications waiting for delivery before new ones are dropped.
    #[serde(default = "d_queue")]
    pub queue: usize,
}

fn d_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_retries() -> u32 {
    5
}
fn d_backoff() -> Duration {
    Duration::from_millis(500)
}
fn d_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn d_queue() -> usize {
    256
}

impl NotifierConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind == NotifierKind::Log {
            return Ok(());
        }
        match &self.url {
            Some(u)
                if (u.starts_with("http://") || u.starts_with("https://"))
                    && u.parse::<http::Uri>().is_ok() =>
            {
                Ok(())
            }
            Some(_) => Err("url must be an http:// or https:// URL".into()),
            None => Err("url is required".into()),
        }
    }
}

struct Job {
    event: AlertEvent,
    repeat: Duration,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    attempts: AtomicU64,
}

/// One configured notifier.
pub struct Notifier {
    name: String,
    config: NotifierConfig,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    counters: Arc<Counters>,
}

impl Notifier {
    /// A notifier; deliveries start with [`Notifier::start`].
    pub fn new(config: &NotifierConfig) -> Notifier {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let name = config.name.clone().unwrap_or_else(|| {
            match config.kind {
                NotifierKind::Webhook => "webhook",
                NotifierKind::Slack => "slack",
                NotifierKind::Alertmanager => "alertmanager",
                NotifierKind::Log => "log",
            }
            .into()
        });
        Notifier {
            name,
            config: config.clone(),
            tx,
            rx: Mutex::new(Some(rx)),
            counters: Arc::default(),
        }
    }

    /// Start the delivery task (needs a Tokio runtime).
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let config = self.config.clone();
        let counters = Arc::clone(&self.counters);
        let name = self.name.clone();
        tokio::spawn(async move {
            // https:// with the system roots (Slack webhooks are https only).
            let client: WebhookClient =
                Client::builder(TokioExecutor::new()).build(crate::tls::https_connector(
                    crate::tls::default_client_config(),
                    Duration::from_secs(10),
                ));
            while let Some(job) = rx.recv().await {
                deliver(&client, &config, &name, &counters, job).await;
            }
        });
    }

    /// Queue `event`; never waits.
    pub fn send(&self, event: &AlertEvent, repeat: Duration) {
        let job = Job {
            event: event.clone(),
            repeat,
        };
        if self.tx.try_send(job).is_err() {
            self.counters.dropped.fetch_add(1, Relaxed);
            tracing::warn!(notifier = %self.name, "alert notification dropped: queue full");
        }
    }

    /// The settings it was made from.
    pub fn config(&self) -> &NotifierConfig {
        &self.config
    }

    /// Prometheus lines for this notifier.
    pub fn render(&self, out: &mut String) {
        for (result, c) in [
            ("sent", &self.counters.sent),
            ("failed", &self.counters.failed),
            ("dropped", &self.counters.dropped),
            ("attempt", &self.counters.attempts),
        ] {
            let _ = writeln!(
                out,
                "infergate_alert_notifications_total{{notifier=\"{}\",result=\"{result}\"}} {}",
                self.name.replace(['\\', '"', '\n'], "_"),
                c.load(Relaxed)
            );
        }
    }
}

/// The notifiers' HTTP(S) client.
type WebhookClient = Client<crate::tls::HttpsConnector, Full<Bytes>>;

async fn deliver(
    client: &WebhookClient,
    config: &NotifierConfig,
    name: &str,
    counters: &Counters,
    job: Job,
) {
    let e = &job.event;
    if config.kind == NotifierKind::Log {
        tracing::warn!(notifier = name, status = e.status, alert = %e.alert.rule, target = %e.alert.target, "{}", e.alert.summary);
        counters.sent.fetch_add(1, Relaxed);
        return;
    }
    let Some(url) = config.url.as_deref() else {
        return;
    };
    let (url, body) = payload(config.kind, url, &job);
    let mut backoff = config.backoff;
    for attempt in 0..=config.retries {
        counters.attempts.fetch_add(1, Relaxed);
        let request = http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", "infergate-alerts")
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            counters.failed.fetch_add(1, Relaxed);
            return;
        };
        let result = tokio::time::timeout(config.timeout, client.request(request)).await;
        let error = match result {
            Ok(Ok(response)) if response.status().is_success() => {
                counters.sent.fetch_add(1, Relaxed);
                return;
            }
            Ok(Ok(response)) => format!("status {}", response.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {:?}", config.timeout),
        };
        if attempt == config.retries {
            tracing::error!(notifier = name, alert = %e.alert.rule, %error, "alert notification failed; giving up");
            break;
        }
        tracing::warn!(notifier = name, alert = %e.alert.rule, %error, retry_in = ?backoff, "alert notification failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
    counters.failed.fetch_add(1, Relaxed);
}

/// RFC 3339 UTC time of a Unix time in ms.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let rem = secs % 86_400;
    let (y, m, d) = crate::utc::civil_from_days(secs / 86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

fn payload(kind: NotifierKind, url: &str, job: &Job) -> (String, Bytes) {
    let e = &job.event;
    let a = &e.alert;
    let body = match kind {
        NotifierKind::Slack => {
            let icon = match e.status {
                "resolved" => ":white_check_mark:",
                _ => ":rotating_light:",
            };
            serde_json::json!({
                "text": format!("{icon} [{}] {} ({}) {}", e.status.to_uppercase(), a.rule, a.severity, a.summary)
            })
        }
        NotifierKind::Alertmanager => {
            let mut labels = serde_json::json!({
                "alertname": a.rule, "severity": a.severity, "pool": a.pool, "service": "infergate",
            });
            if let Some(node) = &a.node {
                labels["node"] = node.clone().into();
            }
            // While active, endsAt lies ahead so Alertmanager keeps the alert
            // until the next repeat; a resolve sets it to now.
            let ends = e.ended_unix_ms.unwrap_or_else(|| {
                e.at_unix_ms + u64::try_from((job.repeat * 3).as_millis()).unwrap_or(u64::MAX / 4)
            });
            serde_json::json!([{
                "labels": labels,
                "annotations": { "summary": a.summary, "value": a.value.to_string(), "threshold": a.threshold.to_string() },
                "startsAt": rfc3339(a.started_unix_ms),
                "endsAt": rfc3339(ends),
                "generatorURL": "",
            }])
        }
        NotifierKind::Webhook | NotifierKind::Log => serde_json::json!({
            "status": e.status,
            "alert": e,
        }),
    };
    let url = if kind == NotifierKind::Alertmanager && !url.ends_with("/api/v2/alerts") {
        format!("{}/api/v2/alerts", url.trim_end_matches('/'))
    } else {
        url.to_string()
    };
    (url, Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_may_be_https() {
        let config = |url: &str| NotifierConfig {
            name: None,
            kind: NotifierKind::Slack,
            url: Some(url.to_string()),
            timeout: d_timeout(),
            retries: d_retries(),
            backoff: d_backoff(),
            max_backoff: d_max_backoff(),
            queue: d_queue(),
        };
        assert!(config("https://hooks.slack.com/services/T/B/x")
            .validate()
            .is_ok());
        assert!(config("http://127.0.0.1:9/hook").validate().is_ok());
        assert!(config("ftp://example/hook").validate().is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_123), "2024-02-29T12:34:56.123Z");
    }
}
