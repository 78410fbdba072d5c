//! Config of per-tenant budgets (`[routes.budget]`), enforced by
//! `tenant`.
//!
//! ```toml
//! [routes.budget]
//! tenant = "api_key"              # or "header:x-tenant", "user"
//! requests_per_minute = 600
//! tokens_per_minute = 200000
//! burst_seconds = 60              # the bucket holds this much of a minute
//! max_tenants = 10000             # tenants tracked per route
//! top_tenants = 10                # labelled in /metrics; the rest are "other"
//! [routes.budget.names]           # tenant id (as shown) -> display name
//! "t-3fa9c2d1" = "acme"
//! [routes.budget.tenants.acme]    # per-tenant limits, by id or name
//! tokens_per_minute = 1000000
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where a route's tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// The bearer token of `Authorization` (or `x-api-key`), hashed.
    ApiKey,
    /// A request header (lowercase name).
    Header(String),
    /// The body's `user` field.
    User,
}

impl TenantSource {
    /// Parse `api_key`, `header:<name>` or `user`.
    pub fn parse(text: &str) -> Result<TenantSource, String> {
        match text {
            "api_key" => return Ok(TenantSource::ApiKey),
            "user" => return Ok(TenantSource::User),
            _ => {}
        }
        let name = text
            .strip_prefix("header:")
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("`{text}` is not `api_key`, `header:<name>` or `user`"))?;
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        Ok(TenantSource::Header(name.to_ascii_lowercase()))
    }
}

/// Limits of one tenant; absent = unlimited in that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Requests admitted per minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt + completion) per minute: the prompt estimate on
    /// admission, corrected by the node's `usage`.
    pub tokens_per_minute: Option<u64>,
}

/// `[routes.budget]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// `api_key`, `header:<name>` or `user`.
    pub tenant: String,
    /// Every tenant's requests per minute (unless overridden).
    pub requests_per_minute: Option<u64>,
    /// Every tenant's tokens per minute (unless overridden).
    pub tokens_per_minute: Option<u64>,
    /// Seconds of the per-minute rate a tenant may use at once (1..=60):
    /// 60 holds a whole minute, as OpenAI's limits do.
    pub burst_seconds: u32,
    /// Most tenants tracked per route; beyond it, new tenants share one
    /// `other` budget until idle ones are dropped.
    pub max_tenants: usize,
    /// Tenants with their own label in `/metrics` and on the dashboard
    /// (the busiest by tokens); the rest are summed as `other`.
    pub top_tenants: usize,
    /// Display names by tenant id (`t-…`, as shown on the dashboard), so
    /// neither keys nor their hashes need to be read.
    pub names: BTreeMap<String, String>,
    /// Per-tenant limits by id or display name.
    pub tenants: BTreeMap<String, TenantLimits>,
    /// Requests without a tenant (no key, header or `user`): share one
    /// `anonymous` budget (`true`, the default) or are refused with 401.
    pub allow_anonymous: bool,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            tenant: "api_key".to_string(),
            requests_per_minute: None,
            tokens_per_minute: None,
            burst_seconds: 60,
            max_tenants: 10_000,
            top_tenants: 10,
            names: BTreeMap::new(),
            tenants: BTreeMap::new(),
            allow_anonymous: true,
        }
    }
}

impl BudgetConfig {
    /// Problems as `(field path, message)`, paths under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |field: &str, msg: &str| out.push((format!("{at}.{field}"), msg.to_string()));
        if let Err(why) = TenantSource::parse(&self.tenant) {
            err("tenant", &why);
        }
        let positive = |v: Option<u64>| v.is_none_or(|v| (1..=1_000_000_000_000).contains(&v));
        if !positive(self.requests_per_minute) {
            err("requests_per_minute", "must be between 1 and 10^12");
        }
        if !positive(self.tokens_per_minute) {
            err("tokens_per_minute", "must be between 1 and 10^12");
        }
        if !(1..=60).contains(&self.burst_seconds) {
            err("burst_seconds", "must be between 1 and 60");
        }
        if !(1..=1_000_000).contains(&self.max_tenants) {
            err("max_tenants", "must be between 1 and 1000000");
        }
        if self.top_tenants > 100 {
            err("top_tenants", "must be at most 100 (label cardinality)");
        }
        for (id, name) in &self.names {
            if !id.starts_with("t-") {
                err(
                    &format!("names.{id}"),
                    "keys are tenant ids as shown (`t-` and 8 hex digits)",
                );
            }
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                err(
                    &format!("names.{id}"),
                    "must be 1 to 64 printable characters",
                );
            }
        }
        for (who, limits) in &self.tenants {
            if !positive(limits.requests_per_minute) || !positive(limits.tokens_per_minute) {
                err(
                    &format!("tenants.{who}"),
                    "limits must be between 1 and 10^12",
                );
            }
        }
        let any_limit = self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self
                .tenants
                .values()
                .any(|l| l.requests_per_minute.is_some() || l.tokens_per_minute.is_some());
        if !any_limit {
            err(
                "requests_per_minute",
                "a budget needs requests_per_minute or tokens_per_minute (here or per tenant)",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn config(budget: &str) -> String {
        format!(
            "[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\n[routes.budget]\n{budget}\n"
        )
    }

    #[test]
    fn parses_and_names_bad_fields() {
        let c = Config::from_toml(&config(
            "tenant = \"header:X-Team\"\nrequests_per_minute = 60\n[routes.budget.names]\n\"t-0000abcd\" = \"acme\"\n[routes.budget.tenants.acme]\ntokens_per_minute = 1000\n",
        ))
        .unwrap();
        let b = c.routes[0].budget.as_ref().unwrap();
        assert_eq!(
            TenantSource::parse(&b.tenant),
            Ok(TenantSource::Header("x-team".into()))
        );
        assert_eq!(b.tenants["acme"].tokens_per_minute, Some(1000));
        let Err(ConfigError::Invalid(e)) = Config::from_toml(&config(
            "tenant = \"cookie:x\"\nrequests_per_minute = 0\nburst_seconds = 0\ntop_tenants = 1000\n[routes.budget.names]\nkey = \"\"\n",
        )) else {
            panic!("accepted");
        };
        let e: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        for want in [
            "routes[0].budget.tenant:",
            "routes[0].budget.requests_per_minute:",
            "routes[0].budget.burst_seconds:",
            "routes[0].budget.top_tenants:",
            "routes[0].budget.names.key:",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "{want} not in {e:?}");
        }
        let Err(ConfigError::Invalid(e)) = Config::from_toml(&config("tenant = \"user\"\n")) else {
            panic!("a budget without limits was accepted");
        };
        assert!(
            e[0].to_string().contains("needs requests_per_minute"),
            "{e:?}"
        );
        assert!(Config::from_toml(&config("requests_per_minute = 1\nrpm = 3\n")).is_err());
    }
}
