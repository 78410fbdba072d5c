//! Telemetry: what the gateway measures about the traffic it carries.
//!
//! The request path only touches atomics. Counters and fixed-bucket
//! histograms live in a [`Series`] per (route, pool, node), one copy per
//! worker thread (`series`: workers serving one node write apart); the route table
//! holds the series of its route's nodes by node index ([`RouteTelemetry`]),
//! so recording is an index and a few relaxed adds, never a map lookup by
//! name. Series are handed out by the [`Telemetry`] registry when a table is
//! built and kept across reloads, like [`crate::fleet::NodeLoad`].
//!
//! A proxied response carries a [`Tracker`] inside its body: it sees each
//! frame (first frame = time to first token/byte, gaps between SSE frames =
//! inter-token time, `data:` events and a trailing `usage.completion_tokens`
//! = output tokens) and records everything when the body is dropped, which
//! also writes the access-log line.
//!
//! Once a second a ticker (the proxy's, over [`FleetView`]) folds the counters into the
//! rolling window ([`window`]): one point per node per second for 15
//! minutes, plus the latest [`window::Snapshot`] that the dashboard, the
//! admin API and the alert rules read.
//!
//! Label choices: `code` is the status class (`2xx`, `4xx`, `5xx`, …) or
//! `error` when the node gave no response (connect error, timeout, reset);
//! gRPC calls count by their `grpc-status` ([`grpc_http_status`]);
//! `model` is the route's configured model pattern (bounded cardinality:
//! never the client-supplied string). `infergate_requests_total` counts
//! attempts per node, so per node it equals what the node received; its sum
//! is client requests plus retries (`infergate_retries_total`).

pub mod access;
pub mod fleet_view;
pub mod hist;
pub mod prom;
pub mod scrape;
pub mod series;
pub mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

pub use fleet_view::{FleetView, PoolState, PreciseRoute};
pub use hist::{HistSnapshot, Histogram};
pub use series::{RequestStats, Series, Shard, Totals};

/// `[telemetry]`: recording on the request path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Record per-request metrics (false: only the node load counters the
    /// balancer needs; `/metrics` then shows zeros for request series).
    pub enabled: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { enabled: true }
    }
}

/// Status classes of `infergate_requests_total{code}`.
pub const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
const CODE_ERROR: usize = 5;

/// The HTTP status a gRPC status code stands for in the status classes
/// (the mapping of Google's API design guide and grpc-gateway): OK 200,
/// CANCELLED 499, INVALID_ARGUMENT / FAILED_PRECONDITION / OUT_OF_RANGE
/// 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
/// ALREADY_EXISTS / ABORTED 409, RESOURCE_EXHAUSTED 429, UNIMPLEMENTED
/// 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, others 500.
pub fn grpc_http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    }
}

/// The `grpc-status` in `headers` (a trailers-only response or the
/// trailers), if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Index into [`CODES`] for an HTTP status.
#[inline]
pub fn code_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Reasons of `infergate_shed_total{reason}`.
pub const SHED_REASONS: [&str; 5] = [
    "queue_full",
    "displaced",
    "queue_timeout",
    "unavailable",
    "node_429",
];

/// Why a request was shed, as an index into [`SHED_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The admission queue was full.
    QueueFull = 0,
    /// A higher-priority request took the place in the queue.
    Displaced = 1,
    /// Waited in the queue until the timeout.
    QueueTimeout = 2,
    /// No node available at all (fast 503).
    Unavailable = 3,
    /// A node answered 429 (saturated).
    Node429 = 4,
}

/// Shed counters of one pool.
#[derive(Debug, Default)]
pub struct ShedStats {
    /// By [`SHED_REASONS`] index.
    pub counts: [AtomicU64; 5],
}

/// What the request path needs to record for one route.
pub struct RouteTelemetry {
    /// Series by node index of the route's pool.
    pub nodes: Vec<Arc<Series>>,
    /// The pool's shed counters.
    pub shed: Arc<ShedStats>,
    /// The registry, or `None` when telemetry is disabled.
    pub hub: Option<Arc<Telemetry>>,
}

impl RouteTelemetry {
    /// Count an attempt on node `index` that got `status`.
    #[inline]
    pub fn attempt_status(&self, index: usize, status: u16) {
        if self.hub.is_none() {
            return;
        }
        if let Some(s) = self.nodes.get(index) {
            s.local().stats.codes[code_index(status)].fetch_add(1, Relaxed);
            if status == 429 {
                self.shed.counts[ShedReason::Node429 as usize].fetch_add(1, Relaxed);
            }
        }
    }

    /// Count an attempt on node `index` that got no response.
    #[inline]
    pub fn attempt_error(&self, index: usize) {
        if self.hub.is_none() {
            return;
        }
        if let Some(s) = self.nodes.get(index) {
            s.local().stats.codes[CODE_ERROR].fetch_add(1, Relaxed);
        }
    }

    /// Count that the attempt on node `index` is retried on another node.
    #[inline]
    pub fn retried(&self, index: usize) {
        if self.hub.is_none() {
            return;
        }
        if let Some(s) = self.nodes.get(index) {
            s.local().stats.retries.fetch_add(1, Relaxed);
        }
    }

    /// Count a shed request.
    #[inline]
    pub fn shed(&self, reason: ShedReason) {
        if self.hub.is_some() {
            self.shed.counts[reason as usize].fetch_add(1, Relaxed);
        }
    }

    /// A tracker for the response body of node `index`.
    pub fn tracker(&self, index: usize, info: RequestInfo) -> Option<Tracker> {
        let hub = self.hub.as_ref()?;
        let series = self.nodes.get(index)?;
        Some(Tracker {
            shard: Arc::clone(series.local()),
            logged: hub
                .access
                .is_some()
                .then(|| (Arc::clone(series), Arc::clone(hub))),
            info,
            first: None,
            last: None,
            sse_events: SseEvents::default(),
            usage: None,
            failed: false,
        })
    }
}

/// What the access log needs to know about a request besides timing.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// `x-request-id` (a shared handle to the header's bytes: no copy per
    /// request; the gateway makes or accepts visible ASCII only).
    pub id: http::HeaderValue,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// When the gateway started on it.
    pub start: Instant,
    /// Response status.
    pub status: u16,
    /// Attempts made (1 without retries).
    pub attempts: u32,
    /// Prompt-token estimate.
    pub tokens_in: u32,
    /// SSE response.
    pub sse: bool,
    /// A gRPC response whose status comes in the trailers: counted by
    /// status class when they arrive (or when the stream ends), not at the
    /// response head, whose HTTP 200 says nothing about the call.
    pub grpc_deferred: bool,
}

/// Follows one response body; records when dropped.
pub struct Tracker {
    /// The worker's copy of the node's counters (its own `Arc`: no count
    /// shared with other workers is touched per request).
    shard: Arc<Shard>,
    /// The series' labels and the registry, for the access log, when one
    /// is written.
    logged: Option<(Arc<Series>, Arc<Telemetry>)>,
    info: RequestInfo,
    first: Option<Instant>,
    last: Option<Instant>,
    sse_events: SseEvents,
    usage: Option<u64>,
    failed: bool,
}

impl Tracker {
    /// A data frame went to the client, read at `now`.
    #[inline]
    pub fn on_frame(&mut self, data: &Bytes, now: Instant) {
        match self.last {
            None => {
                self.first = Some(now);
                self.shard
                    .stats
                    .ttft
                    .observe(now.saturating_duration_since(self.info.start));
            }
            Some(last) if self.info.sse => self.shard.stats.itl.observe(now - last),
            Some(_) => {}
        }
        self.last = Some(now);
        if self.info.sse {
            self.sse_events.feed(data);
        }
        // Only the tail of a frame is searched: usage comes last.
        let tail = &data[data.len().saturating_sub(1024)..];
        if let Some(n) = completion_tokens(tail) {
            self.usage = Some(n);
        }
    }

    /// The stream was cut.
    pub fn failed(&mut self) {
        self.failed = true;
    }

    /// Trailers went to the client: a gRPC call's status is there.
    pub fn on_trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(code) = grpc_status(trailers) {
            self.info.status = grpc_http_status(code);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let elapsed = crate::clock::now().saturating_duration_since(self.info.start);
        let stats = &self.shard.stats;
        if self.info.grpc_deferred {
            let index = if self.failed {
                CODE_ERROR
            } else {
                code_index(self.info.status)
            };
            stats.codes[index].fetch_add(1, Relaxed);
        }
        stats.duration.observe(elapsed);
        let out = self.usage.unwrap_or(self.sse_events.count);
        stats.tokens_out.fetch_add(out, Relaxed);
        stats
            .tokens_in
            .fetch_add(u64::from(self.info.tokens_in), Relaxed);
        if let Some((series, log)) = self
            .logged
            .as_ref()
            .and_then(|(series, hub)| Some((series, hub.access.as_ref()?)))
        {
            log.record(access::Record {
                id: self.info.id.to_str().unwrap_or("-"),
                client: self.info.client,
                route: &series.route,
                model: &series.model,
                node: &series.node,
                attempts: self.info.attempts,
                status: self.info.status,
                latency: elapsed,
                ttft: self
                    .first
                    .map(|f| f.saturating_duration_since(self.info.start)),
                tokens_in: self.info.tokens_in,
                tokens_out: out,
                error: self.failed,
            });
        }
    }
}

/// Counts the `data:` events of an SSE response as its frames pass, not
/// counting `data: [DONE]`: the output-token estimate when the node sends
/// no `usage`.
///
/// An event's field starts a line, so only line starts are looked at, found
/// with a vectorized search for newlines: `data:` inside generated text is
/// not an event. (A vectorized search for a newline followed by `data:`
/// cost 1.4x as much under callgrind.)
#[derive(Debug, Clone, Copy)]
pub struct SseEvents {
    /// Events counted so far.
    pub count: u64,
    /// Whether the next frame starts a line (the last one ended one).
    at_line_start: bool,
}

impl Default for SseEvents {
    fn default() -> Self {
        SseEvents {
            count: 0,
            at_line_start: true,
        }
    }
}

impl SseEvents {
    /// Count the events that start in `data`, the next frame.
    #[inline]
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut count = 0;
        if self.at_line_start && is_data_event(data) {
            count += 1;
        }
        let mut from = 0;
        while let Some(newline) = memchr::memchr(b'\n', &data[from..]) {
            let mut start = from + newline + 1;
            // The blank line that ends an event is stepped over without
            // another search: one search per event, not two.
            while data.get(start) == Some(&b'\n') {
                start += 1;
            }
            if is_data_event(&data[start..]) {
                count += 1;
            }
            from = start;
        }
        self.count += count;
        self.at_line_start = data.last() == Some(&b'\n');
    }
}

/// Whether `line` (from a line start on) is a `data:` field other than
/// `data: [DONE]`.
fn is_data_event(line: &[u8]) -> bool {
    line.strip_prefix(b"data:").is_some_and(|rest| {
        !rest
            .strip_prefix(b" ")
            .unwrap_or(rest)
            .starts_with(b"[DONE]")
    })
}

/// The number after the last `"completion_tokens":` in `data` (usage comes
/// last). Found with a vectorized forward search built once: this runs on
/// every response frame, and a reverse search costs several times more.
pub fn completion_tokens(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"completion_tokens\"";
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    number_after(&FINDER, KEY.len(), data)
}

/// The number after the last `"prompt_tokens":` in `data` (the tenant
/// budgets' correction by usage).
pub fn prompt_tokens(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"prompt_tokens\"";
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    number_after(&FINDER, KEY.len(), data)
}

/// The number after the last match of `finder` (a key of `key_len` bytes)
/// followed by `:`.
fn number_after(finder: &memchr::memmem::Finder<'_>, key_len: usize, data: &[u8]) -> Option<u64> {
    let mut found = None;
    for i in finder.find_iter(data) {
        let rest = data[i + key_len..].trim_ascii_start();
        if let Some(rest) = rest.strip_prefix(b":") {
            let digits = rest.trim_ascii_start();
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if let Some(value) = std::str::from_utf8(&digits[..n])
                .ok()
                .and_then(|s| s.parse().ok())
            {
                found = Some(value);
            }
        }
    }
    found
}

/// Responses the gateway made itself, by status class.
#[derive(Debug, Default)]
pub struct LocalResponses {
    /// By [`CODES`] index.
    pub codes: [AtomicU64; 6],
}

/// Client connections parked: plain HTTP/1 connections idle for a second
/// or more, holding no buffers until their next request (see
/// `proxy::h1_server`).
#[derive(Debug, Default)]
pub struct ParkedConnections {
    /// Parked now.
    pub now: AtomicUsize,
    /// Times a connection was parked since start.
    pub total: AtomicU64,
}

/// The telemetry registry and its derived state.
pub struct Telemetry {
    enabled: bool,
    series: Mutex<BTreeMap<(String, String, String), Arc<Series>>>,
    shed: Mutex<BTreeMap<String, Arc<ShedStats>>>,
    /// Responses made by the gateway (no route, bad request, shed, ...).
    pub local: LocalResponses,
    /// Idle client connections parked without buffers.
    pub parked: ParkedConnections,
    /// Rolling window and latest snapshot.
    pub window: window::Window,
    /// Access log, when enabled.
    pub access: Option<access::AccessLog>,
    /// Alert rules and notifiers.
    pub alerts: Arc<crate::alerts::Alerts>,
    started: Instant,
}

impl Telemetry {
    /// A registry for a gateway running with these settings.
    pub fn new(config: &crate::config::Config) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            enabled: config.telemetry.enabled,
            series: Mutex::default(),
            shed: Mutex::default(),
            local: LocalResponses::default(),
            parked: ParkedConnections::default(),
            window: window::Window::default(),
            access: access::AccessLog::new(&config.access_log),
            alerts: crate::alerts::Alerts::new(&config.alerts),
            started: Instant::now(),
        })
    }

    /// A registry with defaults (tests, table builds without a gateway).
    pub fn disabled() -> Arc<Telemetry> {
        Arc::new(Telemetry {
            enabled: false,
            series: Mutex::default(),
            shed: Mutex::default(),
            local: LocalResponses::default(),
            parked: ParkedConnections::default(),
            window: window::Window::default(),
            access: None,
            alerts: crate::alerts::Alerts::new(&crate::alerts::AlertsConfig::default()),
            started: Instant::now(),
        })
    }

    /// Whether request recording is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Time since the registry was made.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The telemetry of a route over `pool`'s `nodes`; called when a table
    /// is built, never on the request path.
    pub fn route(
        self: &Arc<Self>,
        route: &str,
        model: &str,
        pool: &str,
        nodes: &[String],
    ) -> RouteTelemetry {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = nodes
            .iter()
            .map(|node| {
                let key = (route.to_string(), pool.to_string(), node.clone());
                let entry = map
                    .entry(key)
                    .or_insert_with(|| Arc::new(Series::new(route, pool, node, model)));
                Arc::clone(entry)
            })
            .collect();
        drop(map);
        let shed = Arc::clone(
            self.shed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(pool.to_string())
                .or_default(),
        );
        RouteTelemetry {
            nodes,
            shed,
            hub: self.enabled.then(|| Arc::clone(self)),
        }
    }

    /// Forget series whose (route, pool, node) is not in `keep`.
    pub fn retain(&self, keep: &[(String, String, String)]) {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| keep.contains(k));
    }

    /// All series (for exposition and the window).
    pub fn all_series(&self) -> Vec<Arc<Series>> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// Shed counters by pool.
    pub fn all_shed(&self) -> Vec<(String, Arc<ShedStats>)> {
        let map = self.shed.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    /// A response the gateway made itself.
    pub fn local_response(
        &self,
        id: &str,
        client: std::net::SocketAddr,
        status: u16,
        start: Instant,
    ) {
        if !self.enabled {
            return;
        }
        self.local.codes[code_index(status)].fetch_add(1, Relaxed);
        if let Some(log) = &self.access {
            log.record(access::Record {
                id,
                client,
                route: "-",
                model: "-",
                node: "-",
                attempts: 0,
                status,
                latency: start.elapsed(),
                ttft: None,
                tokens_in: 0,
                tokens_out: 0,
                error: false,
            });
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch: the timestamps shown in
/// the API, alerts, the access log and the config console.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(frames: &[&[u8]]) -> u64 {
        let mut events = SseEvents::default();
        for frame in frames {
            events.feed(frame);
        }
        events.count
    }

    #[test]
    fn sse_event_counting() {
        let chunk = b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(events(&[chunk]), 2);
        assert_eq!(events(&[b"data:[DONE]\n\n"]), 0);
        assert_eq!(events(&[b": keepalive\n\n"]), 0);
        // CRLF line ends, an event field after a comment line.
        assert_eq!(events(&[b"data: 1\r\n\r\n: ping\r\ndata: 2\r\n\r\n"]), 2);
        // Several blank lines in a row, and an event right after them.
        assert_eq!(events(&[b"data: 1\n\n\n\ndata: 2\n\n\n"]), 2);
        assert_eq!(events(&[b"\n\ndata: 1\n"]), 1);
    }

    /// Only line starts count: `data:` inside an event's text is not an
    /// event, and a frame that ends mid-line continues that line.
    #[test]
    fn sse_events_start_lines_across_frames() {
        assert_eq!(events(&[b"data: {\"content\":\"data: x\"}\n\n"]), 1);
        // The second frame continues a line: its "data:" is text.
        assert_eq!(events(&[b"data: {\"content\":\"", b"data: x\"}\n\n"]), 1);
        // The first frame ended a line: the second starts an event.
        assert_eq!(
            events(&[b"data: 1\n\n", b"data: 2\n\n", b"", b"data: 3\n"]),
            3
        );
        assert_eq!(events(&[b"event: delta\n", b"data: 1\n\n"]), 1);
    }

    #[test]
    fn usage_parsing() {
        let body = br#"{"usage":{"prompt_tokens":12,"completion_tokens": 37,"total_tokens":49}}"#;
        assert_eq!(completion_tokens(body), Some(37));
        assert_eq!(completion_tokens(b"{\"x\":1}"), None);
        assert_eq!(completion_tokens(b"\"completion_tokens\":"), None);
    }

    #[test]
    fn codes() {
        assert_eq!(CODES[code_index(200)], "2xx");
        assert_eq!(CODES[code_index(429)], "4xx");
        assert_eq!(CODES[code_index(503)], "5xx");
        assert_eq!(CODES[code_index(99)], "5xx");
    }
}
