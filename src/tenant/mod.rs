//! Per-tenant request and token budgets (`[routes.budget]`).
//!
//! A route with a budget identifies each request's tenant
//! ([`identify`]: the API key of `Authorization`, a configured header, or
//! the body's `user`) and admits it only while the tenant is within its
//! requests-per-minute and tokens-per-minute limits ([`Budgets::admit`]).
//! Tokens are charged in two steps: the classifier's prompt estimate on
//! admission, then a correction by what the response says it used
//! ([`Charge`]: the `usage` object of a JSON answer or of the last SSE chunk
//! when the client asked for `stream_options.include_usage`; without it,
//! the prompt estimate plus one token per SSE event). Refusals are
//! OpenAI-style 429s with `x-ratelimit-*` headers and `Retry-After`.
//!
//! Limits are per gateway replica: N replicas behind a load balancer admit
//! up to N times the configured rate. There is no shared store.
//!
//! The request path costs one short shard lock (lookup of the tenant's
//! `Arc`, never held across an await) and a few atomic compare-and-swaps
//! ([`bucket`]). Memory is bounded by `max_tenants`.

pub mod bucket;
mod budget;
mod identify;
mod report;

pub use budget::{Budgets, Charge, Refusal};
pub use identify::{tenant_id, TenantKey};
pub use report::{render, BudgetView, TenantView};
