//! The scraper tasks: one per node, each GET bounded by the scrape timeout,
//! failures classified, backed off and logged (rate-limited).
//!
//! Each node has its own loop, so one slow metrics page never delays the
//! other nodes' scrapes. After `n` failures in a row the next scrape waits
//! `interval × 2^min(n-1, 3)` (at most 30 s, never less than the interval):
//! a node too busy to answer its metrics page is not asked more often.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::parse::parse_lora;
use super::{parse_metrics, ScrapeFailure, Scraped};
use crate::config::CapacityConfig;
use crate::fleet::lora::LoraInfo;
use crate::fleet::{now_ns, Node, Pool};

/// Most bytes of a metrics page read.
const MAX_PAGE: usize = 4 * 1024 * 1024;
/// Longest back-off between scrapes of a failing node.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// At most one warning per node this often while its scrapes keep failing.
const WARN_EVERY: Duration = Duration::from_secs(30);

type ScrapeClient = Client<HttpConnector, Empty<Bytes>>;

/// Running scrapers of one pool; dropping it stops them.
#[derive(Debug)]
pub struct ScraperHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ScraperHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start scraping every node of `pool` as `cfg` says, on the current tokio
/// runtime (panics outside one). The returned handle stops it when dropped.
pub fn spawn_scrapers(pool: &Arc<Pool>, cfg: &CapacityConfig) -> ScraperHandle {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.timeout));
    let client: ScrapeClient = Client::builder(TokioExecutor::new()).build(connector);
    let tasks = pool
        .nodes
        .iter()
        .map(|node| {
            node.load.ai.capacity.configure(
                cfg.interval,
                cfg.timeout,
                cfg.max_queue,
                cfg.max_kv_usage,
            );
            let uri = format!("http://{}{}", node.addr, cfg.path);
            tokio::spawn(scrape_loop(
                Arc::clone(node),
                pool.name.clone(),
                client.clone(),
                uri,
                cfg.interval,
                cfg.timeout,
            ))
        })
        .collect();
    ScraperHandle { tasks }
}

/// Time to wait between the start of one scrape and the next after
/// `failures` failures in a row.
fn next_wait(interval: Duration, failures: u64) -> Duration {
    if failures == 0 {
        return interval;
    }
    let factor = 1u32 << (failures - 1).min(3);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF)
        .max(interval)
}

async fn scrape_loop(
    node: Arc<Node>,
    pool: String,
    client: ScrapeClient,
    uri: String,
    interval: Duration,
    timeout: Duration,
) {
    let cap = &node.load.ai.capacity;
    let mut log = FailureLog::default();
    loop {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, scrape(&client, &uri)).await {
            Ok(outcome) => outcome,
            Err(_) => Err((
                ScrapeFailure::Timeout,
                format!("no answer within {timeout:?}"),
            )),
        };
        let failures = match outcome {
            Ok((s, lora)) => {
                let now = now_ns();
                cap.record(&s, node.load.outstanding(), now);
                if let Some(lora) = lora {
                    node.load.ai.lora.record(&lora, now);
                }
                log.recovered(&pool, &node.name);
                0
            }
            Err((reason, detail)) => {
                let n = cap.record_failure(reason);
                log.failed(&pool, &node.name, reason, &detail, started);
                n
            }
        };
        tokio::time::sleep_until((started + next_wait(interval, failures)).into()).await;
    }
}

/// Warn on the first failure, then at most every [`WARN_EVERY`] with the
/// number of failures in between; say when scraping recovers.
#[derive(Debug, Default)]
struct FailureLog {
    failing_since: Option<Instant>,
    last_warn: Option<Instant>,
    unreported: u64,
    total: u64,
}

impl FailureLog {
    fn failed(
        &mut self,
        pool: &str,
        node: &str,
        reason: ScrapeFailure,
        detail: &str,
        now: Instant,
    ) {
        self.total += 1;
        self.failing_since.get_or_insert(now);
        let due = self
            .last_warn
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if due {
            tracing::warn!(
                pool,
                node,
                reason = reason.as_str(),
                detail,
                failures_in_a_row = self.total,
                unreported = self.unreported,
                "metrics scrape failed; routing on the last good reading while it decays"
            );
            self.last_warn = Some(now);
            self.unreported = 0;
        } else {
            self.unreported += 1;
        }
    }

    fn recovered(&mut self, pool: &str, node: &str) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                pool,
                node,
                failures = self.total,
                failing_for_s = since.elapsed().as_secs_f64(),
                "metrics scrape recovered"
            );
        }
        *self = FailureLog::default();
    }
}

type Page = (Scraped, Option<LoraInfo>);

async fn scrape(client: &ScrapeClient, uri: &str) -> Result<Page, (ScrapeFailure, String)> {
    let uri: Uri = uri
        .parse()
        .map_err(|e| (ScrapeFailure::Connect, format!("bad uri: {e}")))?;
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| (ScrapeFailure::Connect, e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| (ScrapeFailure::Connect, error_chain(&e)))?;
    if response.status() != StatusCode::OK {
        return Err((
            ScrapeFailure::Status,
            format!("status {}", response.status().as_u16()),
        ));
    }
    let body = Limited::new(response.into_body(), MAX_PAGE)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                (
                    ScrapeFailure::Parse,
                    format!("page larger than {MAX_PAGE} bytes"),
                )
            } else {
                (ScrapeFailure::Connect, format!("reading the page: {e}"))
            }
        })?
        .to_bytes();
    let text = std::str::from_utf8(&body)
        .map_err(|_| (ScrapeFailure::Parse, "page is not UTF-8".to_string()))?;
    let s = parse_metrics(text);
    if s.is_empty() {
        return Err((
            ScrapeFailure::Parse,
            "no vLLM, SGLang or TGI capacity metric on the page".to_string(),
        ));
    }
    Ok((s, parse_lora(text)))
}

/// An error with its sources, `a: b: c` (hyper's top-level message alone
/// says only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_eight_intervals_and_30s() {
        let i = Duration::from_secs(1);
        let waits: Vec<u64> = (0..6).map(|f| next_wait(i, f).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 8]);
        assert_eq!(next_wait(Duration::from_secs(10), 5), MAX_BACKOFF);
        assert_eq!(
            next_wait(Duration::from_secs(60), 5),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn failures_are_logged_once_per_window() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        log.failed("p", "n", ScrapeFailure::Timeout, "slow", t0);
        assert_eq!((log.total, log.unreported), (1, 0));
        log.failed(
            "p",
            "n",
            ScrapeFailure::Timeout,
            "slow",
            t0 + Duration::from_secs(1),
        );
        log.failed(
            "p",
            "n",
            ScrapeFailure::Timeout,
            "slow",
            t0 + Duration::from_secs(2),
        );
        assert_eq!(log.unreported, 2, "rate-limited");
        log.failed("p", "n", ScrapeFailure::Connect, "refused", t0 + WARN_EVERY);
        assert_eq!(log.unreported, 0, "warned again after the window");
        log.recovered("p", "n");
        assert!(log.failing_since.is_none() && log.total == 0);
    }

    #[tokio::test]
    async fn failures_are_classified() {
        use tokio::io::AsyncWriteExt;
        let client: ScrapeClient = Client::builder(TokioExecutor::new()).build_http();
        // Nothing listening: connect.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = scrape(&client, &format!("http://{addr}/metrics")).await;
        assert_eq!(e.unwrap_err().0, ScrapeFailure::Connect);
        // A server answering fixed bytes.
        async fn serve(answer: &'static str) -> std::net::SocketAddr {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                }
            });
            addr
        }
        let status = serve("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let e = scrape(&client, &format!("http://{status}/metrics")).await;
        assert_eq!(e.unwrap_err().0, ScrapeFailure::Status);
        let empty = serve("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfoo 1\n").await;
        let e = scrape(&client, &format!("http://{empty}/metrics")).await;
        assert_eq!(e.unwrap_err().0, ScrapeFailure::Parse);
        let good =
            serve("HTTP/1.1 200 OK\r\ncontent-length: 29\r\n\r\nvllm:num_requests_waiting 3\n\n")
                .await;
        let (s, _) = scrape(&client, &format!("http://{good}/metrics"))
            .await
            .unwrap();
        assert_eq!(s.waiting, Some(3.0));
    }
}
