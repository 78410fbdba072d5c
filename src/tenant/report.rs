//! Budgets as shown: per route, the busiest tenants by tokens (at most
//! `top_tenants`) and everything else summed as `other`, so labels stay
//! bounded whatever the number of tenants. A tenant is shown by its name
//! or id, never its key.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::budget::{Budgets, TenantStats};

/// One tenant (or `other`) of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantView {
    /// Display name, `t-…` id, `anonymous` or `other`.
    pub tenant: String,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused for the requests-per-minute limit.
    pub limited_requests: u64,
    /// Requests refused for the tokens-per-minute limit.
    pub limited_tokens: u64,
    /// Tokens charged (after correction by usage).
    pub tokens: u64,
    /// Requests per minute limit, if any.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute limit, if any.
    pub tokens_per_minute: Option<u64>,
}

/// Budgets of one route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BudgetView {
    /// Route name.
    pub route: String,
    /// Tenants tracked now.
    pub tracked: usize,
    /// The busiest tenants, then `other` (if anything is in it).
    pub tenants: Vec<TenantView>,
}

fn view_of(tenant: String, s: &TenantStats) -> TenantView {
    TenantView {
        tenant,
        admitted: s.admitted.load(Relaxed),
        limited_requests: s.limited_requests.load(Relaxed),
        limited_tokens: s.limited_tokens.load(Relaxed),
        tokens: s.tokens.load(Relaxed),
        requests_per_minute: None,
        tokens_per_minute: None,
    }
}

impl Budgets {
    /// The report of this route's budgets.
    pub fn view(&self, route: &str) -> BudgetView {
        let all = self.tenants();
        let tracked = all.len().saturating_sub(2);
        let mut views: Vec<TenantView> = all
            .iter()
            .map(|t| TenantView {
                requests_per_minute: t.requests.as_ref().map(|b| b.limit()),
                tokens_per_minute: t.tokens.as_ref().map(|b| b.limit()),
                ..view_of(t.label.clone(), &t.stats)
            })
            .filter(|v| v.tenant != "other")
            .collect();
        views.sort_by(|a, b| {
            (b.tokens, b.admitted, &a.tenant).cmp(&(a.tokens, a.admitted, &b.tenant))
        });
        let rest = views.split_off(self.top.min(views.len()));
        let other = TenantStats::default();
        other.add(&self.retired);
        other.add(&self.overflow.stats);
        let mut o = view_of("other".into(), &other);
        for r in rest {
            o.admitted += r.admitted;
            o.limited_requests += r.limited_requests;
            o.limited_tokens += r.limited_tokens;
            o.tokens += r.tokens;
        }
        views.retain(|v| v.admitted + v.limited_requests + v.limited_tokens > 0);
        if o.admitted + o.limited_requests + o.limited_tokens > 0 {
            views.push(o);
        }
        BudgetView {
            route: route.to_string(),
            tracked,
            tenants: views,
        }
    }
}

/// Append the budget families for `views` (one per route with a budget).
pub fn render(out: &mut String, views: &[BudgetView]) {
    if views.is_empty() {
        return;
    }
    let esc = crate::telemetry::prom::escape;
    let _ = writeln!(out, "# HELP infergate_tenant_requests_total Requests by tenant (top tenants by tokens, the rest as `other`) and outcome (admitted, limited_requests, limited_tokens).");
    let _ = writeln!(out, "# TYPE infergate_tenant_requests_total counter");
    for v in views {
        for t in &v.tenants {
            for (outcome, n) in [
                ("admitted", t.admitted),
                ("limited_requests", t.limited_requests),
                ("limited_tokens", t.limited_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "infergate_tenant_requests_total{{route=\"{}\",tenant=\"{}\",outcome=\"{outcome}\"}} {n}",
                    esc(&v.route),
                    esc(&t.tenant)
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP infergate_tenant_tokens_total Tokens charged to tenants (prompt estimate corrected by the node's usage).");
    let _ = writeln!(out, "# TYPE infergate_tenant_tokens_total counter");
    for v in views {
        for t in &v.tenants {
            let _ = writeln!(
                out,
                "infergate_tenant_tokens_total{{route=\"{}\",tenant=\"{}\"}} {}",
                esc(&v.route),
                esc(&t.tenant),
                t.tokens
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP infergate_tenants_tracked Tenants with budget state on this replica."
    );
    let _ = writeln!(out, "# TYPE infergate_tenants_tracked gauge");
    for v in views {
        let _ = writeln!(
            out,
            "infergate_tenants_tracked{{route=\"{}\"}} {}",
            esc(&v.route),
            v.tracked
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetConfig;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn top_tenants_then_other_and_valid_exposition() {
        let b = Budgets::new(&BudgetConfig {
            requests_per_minute: Some(6000),
            top_tenants: 2,
            ..BudgetConfig::default()
        });
        for i in 0..5u32 {
            let mut h = HeaderMap::new();
            h.insert(
                "x-api-key",
                HeaderValue::from_str(&format!("key-{i}")).unwrap(),
            );
            let mut c = crate::balance::testing::chat_class();
            c.prompt_tokens = 100 * (i + 1);
            for _ in 0..=i {
                let mut charge = b.admit((&h).into(), &c).unwrap();
                charge.on_frame(&bytes::Bytes::from_static(b"{}"));
            }
        }
        let v = b.view("r");
        assert_eq!(v.tracked, 5);
        let names: Vec<&str> = v.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[2], "other");
        assert_eq!(v.tenants[0].admitted, 5);
        assert_eq!(v.tenants.iter().map(|t| t.admitted).sum::<u64>(), 15);
        assert!(names.iter().all(|n| !n.contains("key-")), "never the key");
        let mut text = String::new();
        render(&mut text, &[v]);
        let samples = crate::telemetry::prom::parse(&text).unwrap();
        assert_eq!(samples.len(), 3 * 3 + 3 + 1);
    }
}
