//! Who a request belongs to. API keys are hashed at once and never kept,
//! logged or shown: a tenant is shown by a short id (`t-` and 8 hex digits
//! of the hash) or the name configured for that id.

use http::header::AUTHORIZATION;
use http::HeaderName;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::classify::RequestClass;
use crate::config::TenantSource;
use crate::header_lines::RequestHeaders;

// Names made once: a `&str` is parsed again on every map lookup.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Fixed seed: ids must be stable across restarts (config names them).
const SEED: u64 = 0x7e4a_17c3_9b2d_05f1;

/// A tenant's identity: a 64-bit hash of its key, source included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantKey(pub u64);

/// The id shown for a tenant key.
pub fn tenant_id(key: TenantKey) -> String {
    format!("t-{:08x}", key.0 >> 32)
}

fn hash(kind: u8, value: &[u8]) -> TenantKey {
    TenantKey(xxh3_64_with_seed(value, SEED ^ u64::from(kind)))
}

/// The tenant of a request, or `None` when it carries none.
pub fn identify(
    source: &TenantSource,
    headers: RequestHeaders<'_>,
    class: &RequestClass,
) -> Option<TenantKey> {
    match source {
        TenantSource::ApiKey => {
            let bearer = headers.get(&AUTHORIZATION).and_then(|v| {
                let (scheme, rest) = v.split_at(v.len().min(7));
                crate::ascii_case::eq_lower(scheme, b"bearer ").then_some(rest)
            });
            let key = bearer
                .or_else(|| headers.get(&X_API_KEY))
                .or_else(|| headers.get(&API_KEY))
                .map(<[u8]>::trim_ascii)
                .filter(|k| !k.is_empty())?;
            Some(hash(1, key))
        }
        TenantSource::Header(name) => headers
            .get_str(name)
            .map(<[u8]>::trim_ascii)
            .filter(|v| !v.is_empty())
            .map(|v| hash(2, v)),
        TenantSource::User => class
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| hash(3, u.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn keys_headers_and_users() {
        let class = crate::balance::testing::chat_class();
        let a = identify(
            &TenantSource::ApiKey,
            (&headers(&[("authorization", "Bearer sk-aaa")])).into(),
            &class,
        );
        let b = identify(
            &TenantSource::ApiKey,
            (&headers(&[("authorization", "bearer  sk-aaa ")])).into(),
            &class,
        );
        let c = identify(
            &TenantSource::ApiKey,
            (&headers(&[("x-api-key", "sk-aaa")])).into(),
            &class,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(a, c, "same key, any header");
        let id = tenant_id(a.unwrap());
        assert!(
            id.starts_with("t-") && id.len() == 10 && !id.contains("aaa"),
            "{id}"
        );
        assert_eq!(
            identify(
                &TenantSource::ApiKey,
                (&headers(&[("authorization", "Basic xyz")])).into(),
                &class
            ),
            None
        );
        assert_eq!(
            identify(&TenantSource::ApiKey, (&HeaderMap::new()).into(), &class),
            None
        );
        let team = TenantSource::Header("x-team".into());
        let t = identify(&team, (&headers(&[("x-team", "sk-aaa")])).into(), &class);
        assert!(t.is_some() && t != a, "sources never collide");
        let mut with_user = class.clone();
        with_user.user = Some("u1".into());
        assert!(identify(&TenantSource::User, (&HeaderMap::new()).into(), &with_user).is_some());
        assert_eq!(
            identify(&TenantSource::User, (&HeaderMap::new()).into(), &class),
            None
        );
    }
}
