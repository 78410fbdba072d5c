//! The budgets of one route: tenants in a sharded, bounded map, each with
//! a requests bucket and a tokens bucket, and the charge that follows a
//! response to correct the token estimate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::bucket::{Bucket, Decision};
use super::identify::{identify, tenant_id, TenantKey};
use crate::classify::RequestClass;
use crate::config::{BudgetConfig, TenantLimits, TenantSource};
use crate::fleet::now_ns;
use crate::header_lines::RequestHeaders;

const SHARDS: usize = 16;
/// A tenant idle this long (and with full buckets) may be dropped to make room.
const IDLE_NS: u64 = 60_000_000_000;

/// One tenant's buckets and counters.
#[derive(Debug)]
pub(super) struct Tenant {
    pub(super) label: String,
    pub(super) requests: Option<Bucket>,
    pub(super) tokens: Option<Bucket>,
    pub(super) stats: TenantStats,
    last_seen: AtomicU64,
}

/// What a tenant did (also summed for retired tenants).
#[derive(Debug, Default)]
pub(super) struct TenantStats {
    pub(super) admitted: AtomicU64,
    pub(super) limited_requests: AtomicU64,
    pub(super) limited_tokens: AtomicU64,
    pub(super) tokens: AtomicU64,
}

impl TenantStats {
    pub(super) fn add(&self, other: &TenantStats) {
        for (a, b) in [
            (&self.admitted, &other.admitted),
            (&self.limited_requests, &other.limited_requests),
            (&self.limited_tokens, &other.limited_tokens),
            (&self.tokens, &other.tokens),
        ] {
            a.fetch_add(b.load(Relaxed), Relaxed);
        }
    }
}

impl Tenant {
    fn new(label: String, limits: TenantLimits, burst_seconds: u32) -> Tenant {
        let bucket = |per_minute: Option<u64>| {
            per_minute.map(|l| {
                let burst = (l.saturating_mul(u64::from(burst_seconds)) / 60).max(1);
                Bucket::new(l, burst)
            })
        };
        Tenant {
            label,
            requests: bucket(limits.requests_per_minute),
            tokens: bucket(limits.tokens_per_minute),
            stats: TenantStats::default(),
            last_seen: AtomicU64::new(now_ns()),
        }
    }

    fn idle(&self, now: u64) -> bool {
        now.saturating_sub(self.last_seen.load(Relaxed)) > IDLE_NS
            && self.requests.as_ref().is_none_or(|b| b.is_idle(now))
            && self.tokens.as_ref().is_none_or(|b| b.is_idle(now))
    }
}

/// The budgets of one route.
#[derive(Debug)]
pub struct Budgets {
    source: TenantSource,
    defaults: TenantLimits,
    burst_seconds: u32,
    /// Per-tenant limits and names by tenant id (`t-…`).
    overrides: HashMap<String, TenantLimits>,
    names: HashMap<String, String>,
    allow_anonymous: bool,
    pub(super) top: usize,
    shards: Vec<Mutex<HashMap<TenantKey, Arc<Tenant>>>>,
    per_shard: usize,
    /// Shared by tenants that found no room (`max_tenants` reached).
    pub(super) overflow: Arc<Tenant>,
    /// Shared by requests without a tenant.
    pub(super) anonymous: Arc<Tenant>,
    /// Counters of tenants dropped when idle.
    pub(super) retired: TenantStats,
}

/// Why a request was refused, with the headers to send.
#[derive(Debug)]
pub struct Refusal {
    /// Text for the client.
    pub message: String,
    /// `x-ratelimit-*` and `Retry-After` headers.
    pub headers: HeaderMap,
    /// No tenant and anonymous requests are not allowed (401, not 429).
    pub unidentified: bool,
}

impl Budgets {
    /// Budgets as `cfg` says (validated).
    pub fn new(cfg: &BudgetConfig) -> Budgets {
        let defaults = TenantLimits {
            requests_per_minute: cfg.requests_per_minute,
            tokens_per_minute: cfg.tokens_per_minute,
        };
        // Overrides may name a tenant by id or by display name.
        let by_name: HashMap<&str, &str> = cfg
            .names
            .iter()
            .map(|(id, name)| (name.as_str(), id.as_str()))
            .collect();
        let overrides = cfg
            .tenants
            .iter()
            .map(|(who, limits)| {
                let id = by_name.get(who.as_str()).copied().unwrap_or(who);
                (id.to_string(), *limits)
            })
            .collect();
        let burst = cfg.burst_seconds.clamp(1, 60);
        Budgets {
            source: TenantSource::parse(&cfg.tenant).unwrap_or(TenantSource::ApiKey),
            defaults,
            burst_seconds: burst,
            overrides,
            names: cfg.names.clone().into_iter().collect(),
            allow_anonymous: cfg.allow_anonymous,
            top: cfg.top_tenants,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: cfg.max_tenants.div_ceil(SHARDS).max(1),
            overflow: Arc::new(Tenant::new("other".into(), defaults, burst)),
            anonymous: Arc::new(Tenant::new("anonymous".into(), defaults, burst)),
            retired: TenantStats::default(),
        }
    }

    fn tenant(&self, key: TenantKey) -> Arc<Tenant> {
        let shard = &self.shards[(key.0 as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(&key) {
            return Arc::clone(t);
        }
        if map.len() >= self.per_shard {
            let now = now_ns();
            map.retain(|_, t| {
                let keep = !t.idle(now);
                if !keep {
                    self.retired.add(&t.stats);
                }
                keep
            });
            if map.len() >= self.per_shard {
                return Arc::clone(&self.overflow);
            }
        }
        let id = tenant_id(key);
        let limits = self.overrides.get(&id).copied().unwrap_or(self.defaults);
        let label = self.names.get(&id).cloned().unwrap_or(id);
        let t = Arc::new(Tenant::new(label, limits, self.burst_seconds));
        map.insert(key, Arc::clone(&t));
        t
    }

    /// Every tracked tenant (for reports; takes each shard lock briefly).
    pub(super) fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut out = vec![Arc::clone(&self.anonymous), Arc::clone(&self.overflow)];
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(map.values().cloned());
        }
        out
    }

    /// Admit a request of the route, or refuse it. The charge corrects the
    /// token estimate when it is dropped (pass it to the response body).
    pub fn admit(
        &self,
        headers: RequestHeaders<'_>,
        class: &RequestClass,
    ) -> Result<Charge, Box<Refusal>> {
        let tenant = match identify(&self.source, headers, class) {
            Some(key) => self.tenant(key),
            None if self.allow_anonymous => Arc::clone(&self.anonymous),
            None => {
                return Err(Box::new(Refusal {
                    message: "This route needs a tenant: an API key, or the configured header or `user` field.".into(),
                    headers: HeaderMap::new(),
                    unidentified: true,
                }))
            }
        };
        let now = now_ns();
        tenant.last_seen.store(now, Relaxed);
        let estimate = u64::from(class.prompt_tokens);
        let requests = tenant.requests.as_ref().map(|b| b.charge(1, now));
        if requests.is_some_and(|d| !d.allowed) {
            tenant.stats.limited_requests.fetch_add(1, Relaxed);
            let d = tenant.tokens.as_ref().map(|b| b.check(0, now));
            return Err(Box::new(refusal(
                "requests",
                &tenant.label,
                requests,
                d,
                requests,
            )));
        }
        let tokens = tenant.tokens.as_ref().map(|b| b.charge(estimate, now));
        if let Some(d) = tokens.filter(|d| !d.allowed) {
            if let (Some(b), Some(_)) = (&tenant.requests, requests) {
                b.adjust(-1, now);
            }
            tenant.stats.limited_tokens.fetch_add(1, Relaxed);
            let too_large = tenant.tokens.as_ref().is_some_and(|b| {
                estimate > b.check(0, now.saturating_add(3_600_000_000_000)).remaining
            });
            let mut r = refusal("tokens", &tenant.label, requests, tokens, Some(d));
            if too_large {
                r.message = format!(
                    "Request too large for the tokens-per-minute budget of tenant {}: about {estimate} prompt tokens.",
                    tenant.label
                );
            }
            return Err(Box::new(r));
        }
        tenant.stats.admitted.fetch_add(1, Relaxed);
        Ok(Charge {
            headers: rate_headers(requests, tokens),
            tenant,
            estimate: if tokens.is_some() { estimate } else { 0 },
            prompt: None,
            completion: None,
            sse_events: crate::telemetry::SseEvents::default(),
            bytes: 0,
            responded: false,
            stream: class.stream,
        })
    }
}

fn refusal(
    what: &str,
    label: &str,
    requests: Option<Decision>,
    tokens: Option<Decision>,
    failed: Option<Decision>,
) -> Refusal {
    let mut headers = rate_headers(requests, tokens);
    let wait = failed.map_or(Duration::from_secs(1), |d| d.retry_after);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        headers.insert(http::header::RETRY_AFTER, v);
    }
    Refusal {
        message: format!(
            "Rate limit reached for {what} per minute of tenant {label}; retry after {:.1}s.",
            wait.as_secs_f64()
        ),
        headers,
        unidentified: false,
    }
}

/// OpenAI's headers for the limits that apply.
fn rate_headers(requests: Option<Decision>, tokens: Option<Decision>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (suffix, d) in [("requests", requests), ("tokens", tokens)] {
        let Some(d) = d else { continue };
        for (name, value) in [
            ("limit", d.limit.to_string()),
            ("remaining", d.remaining.to_string()),
            ("reset", go_duration(d.reset)),
        ] {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(format!("x-ratelimit-{name}-{suffix}").as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                h.insert(n, v);
            }
        }
    }
    h
}

/// A duration as OpenAI writes resets: `20ms`, `1.5s`, `6m0s`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{:.3}", (secs * 1000.0).round() / 1000.0);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
}

/// An admitted request's token charge, following its response. Dropped
/// (response finished, failed or abandoned) it corrects the tenant's
/// tokens by what was really used: the response's `usage`, else the
/// estimate plus one token per SSE event (or per 4 bytes of a plain body);
/// nothing when no response came (refund).
#[derive(Debug)]
pub struct Charge {
    tenant: Arc<Tenant>,
    headers: HeaderMap,
    estimate: u64,
    prompt: Option<u64>,
    completion: Option<u64>,
    sse_events: crate::telemetry::SseEvents,
    bytes: u64,
    responded: bool,
    stream: bool,
}

impl Charge {
    /// The `x-ratelimit-*` headers to add to the response.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A data frame of the response went to the client.
    pub fn on_frame(&mut self, data: &Bytes) {
        self.responded = true;
        self.bytes += data.len() as u64;
        if self.stream {
            self.sse_events.feed(data);
        }
        // Usage comes last: only the tail of a frame is searched.
        let tail = &data[data.len().saturating_sub(1024)..];
        if let Some(n) = crate::telemetry::completion_tokens(tail) {
            self.completion = Some(n);
            self.prompt = crate::telemetry::prompt_tokens(tail);
        }
    }

    /// Tokens the request used, as best known.
    fn used(&self) -> u64 {
        match (self.prompt, self.completion) {
            (Some(p), Some(c)) => p + c,
            (None, Some(c)) => self.estimate + c,
            _ if !self.responded => 0,
            _ if self.stream => self.estimate + self.sse_events.count,
            _ => self.estimate + self.bytes / 4,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let used = self.used();
        self.tenant.stats.tokens.fetch_add(used, Relaxed);
        if let Some(b) = &self.tenant.tokens {
            let delta = i64::try_from(used).unwrap_or(i64::MAX)
                - i64::try_from(self.estimate).unwrap_or(i64::MAX);
            if delta != 0 {
                b.adjust(delta, now_ns());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(extra: impl FnOnce(&mut BudgetConfig)) -> Budgets {
        let mut cfg = BudgetConfig {
            requests_per_minute: Some(60),
            tokens_per_minute: Some(6000),
            burst_seconds: 10,
            ..BudgetConfig::default()
        };
        extra(&mut cfg);
        Budgets::new(&cfg)
    }

    fn key(k: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static(k));
        h
    }

    fn class(prompt: u32) -> RequestClass {
        let mut c = crate::balance::testing::chat_class();
        c.prompt_tokens = prompt;
        c
    }

    #[test]
    fn requests_are_limited_per_tenant_with_openai_headers() {
        let b = budgets(|_| {});
        // Burst: 10 s of 60/min = 10 requests.
        for i in 0..10 {
            let c = b.admit((&key("Bearer a")).into(), &class(10)).unwrap();
            assert_eq!(
                c.headers()["x-ratelimit-remaining-requests"],
                (9 - i).to_string().as_str()
            );
            assert_eq!(c.headers()["x-ratelimit-limit-requests"], "60");
            assert_eq!(c.headers()["x-ratelimit-limit-tokens"], "6000");
        }
        let r = b.admit((&key("Bearer a")).into(), &class(10)).unwrap_err();
        assert!(!r.unidentified);
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
        // Full again 10 s after the first request, less the time this
        // test took to get here (milliseconds on a busy machine: "9.998s").
        let reset = r.headers["x-ratelimit-reset-requests"].to_str().unwrap();
        let secs: f64 = reset.strip_suffix('s').unwrap().parse().unwrap();
        assert!(secs > 9.0 && secs <= 10.0, "reset {reset}");
        assert!(r.message.contains("requests"), "{}", r.message);
        assert!(!r.message.contains("Bearer"), "never the key");
        // Another tenant is not affected.
        assert!(b.admit((&key("Bearer b")).into(), &class(10)).is_ok());
    }

    #[test]
    fn tokens_are_estimated_then_corrected_by_usage() {
        // 6000 tokens/min, burst 10 s = 1000 tokens.
        let b = budgets(|c| c.requests_per_minute = None);
        let mut c = b.admit((&key("Bearer a")).into(), &class(400)).unwrap();
        assert_eq!(c.headers()["x-ratelimit-remaining-tokens"], "600");
        assert!(c.headers().get("x-ratelimit-limit-requests").is_none());
        // The node says it used 300 + 500: 400 more than estimated.
        c.on_frame(&Bytes::from_static(
            br#"{"choices":[],"usage":{"prompt_tokens":300,"total_tokens":800,"completion_tokens":500}}"#,
        ));
        drop(c);
        let r = b.admit((&key("Bearer a")).into(), &class(300)).unwrap_err();
        assert!(r.message.contains("tokens"), "{}", r.message);
        // A request that got no response is refunded.
        let b = budgets(|c| c.requests_per_minute = None);
        drop(b.admit((&key("Bearer a")).into(), &class(900)).unwrap());
        assert!(b.admit((&key("Bearer a")).into(), &class(900)).is_ok());
        // Streams without usage: estimate + one token per event.
        let b = budgets(|c| c.requests_per_minute = None);
        let mut s = class(100);
        s.stream = true;
        let mut c = b.admit((&key("Bearer a")).into(), &s).unwrap();
        c.on_frame(&Bytes::from_static(
            b"data: {\"x\":1}\n\ndata: {\"x\":2}\n\ndata: [DONE]\n\n",
        ));
        assert_eq!(c.used(), 102);
        drop(c);
        // Larger than the whole burst: a clear message.
        let r = b
            .admit((&key("Bearer a")).into(), &class(5000))
            .unwrap_err();
        assert!(r.message.contains("too large"), "{}", r.message);
    }

    #[test]
    fn names_overrides_anonymous_and_bounded_tenants() {
        let id = tenant_id(
            identify(
                &TenantSource::ApiKey,
                (&key("Bearer vip")).into(),
                &class(1),
            )
            .unwrap(),
        );
        let b = budgets(|c| {
            c.names.insert(id.clone(), "vip".into());
            c.tenants.insert(
                "vip".into(),
                TenantLimits {
                    requests_per_minute: Some(6000),
                    tokens_per_minute: None,
                },
            );
            c.max_tenants = 16;
        });
        for _ in 0..50 {
            assert!(b.admit((&key("Bearer vip")).into(), &class(5000)).is_ok());
        }
        // Anonymous requests share one budget.
        for _ in 0..10 {
            assert!(b.admit((&HeaderMap::new()).into(), &class(1)).is_ok());
        }
        assert!(b.admit((&HeaderMap::new()).into(), &class(1)).is_err());
        // At most max_tenants tracked; the rest share `other`.
        for i in 0..100 {
            let h = {
                let mut h = HeaderMap::new();
                h.insert(
                    "x-api-key",
                    HeaderValue::from_str(&format!("k{i}")).unwrap(),
                );
                h
            };
            let _ = b.admit((&h).into(), &class(1));
        }
        let tracked = b.tenants().len() - 2;
        assert!(tracked <= 16, "{tracked}");
        assert!(b.overflow.stats.admitted.load(Relaxed) > 0);
        let labels: Vec<String> = b.tenants().iter().map(|t| t.label.clone()).collect();
        assert!(labels.contains(&"vip".to_string()));
        let strict = budgets(|c| c.allow_anonymous = false);
        assert!(
            strict
                .admit((&HeaderMap::new()).into(), &class(1))
                .unwrap_err()
                .unidentified
        );
    }

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
    }
}
