//! Host and Origin checks: the defence against DNS rebinding.
//!
//! A web page on another site can point its own host name at 127.0.0.1
//! (DNS rebinding) and then read the admin listener as "same origin": the
//! browser sends `Host: attacker.example:9090`. So every request's `Host`
//! (or HTTP/2 `:authority`) must be one of the listener's own names, as the
//! Kubernetes API proxy (`--accept-hosts`) and many local daemons require:
//!
//! - the bound address with its port (`127.0.0.1:9090`, `[::1]:9090`,
//!   `10.0.0.5:9090`);
//! - for a loopback bind also `localhost`, `127.0.0.1` and `[::1]` with the
//!   port; for a bind to every interface (`0.0.0.0`, `[::]`) any IP address
//!   and `localhost` with the port (an IP address in `Host` cannot be a
//!   rebound name);
//! - the names in `admin.allowed_hosts` (`name` for any port, `name:port`
//!   for one; `"*"` turns the check off).
//!
//! Requests that change something (every method but GET, HEAD and OPTIONS)
//! that carry an `Origin` must come from an `http://` or `https://` origin
//! with one of those names too, so a foreign page cannot even try a change.
//! Requests without `Host` come from no browser and are let through.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Names the admin listener answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// The listener's port.
    port: u16,
    /// Host names or IP literals (IPv6 in brackets, lower case) with the
    /// port they must come with (`None`: any).
    names: Vec<(String, Option<u16>)>,
    /// Any IP literal with the listener's port (bound to every interface).
    any_ip: bool,
    /// `"*"` in `allowed_hosts`: no check.
    any: bool,
}

/// One `allowed_hosts` entry split into name and port: `None` when it is
/// not a host name or IP literal with an optional port.
pub fn parse_entry(entry: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = split_host_port(entry)?;
    let valid = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    valid.then_some((host, port))
}

/// `host[:port]` (IPv6 in brackets) as lower-case host and port; a
/// trailing dot of a fully qualified name is dropped.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let (host, rest) = text.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    Some((host, port))
}

/// How an IP address is written in `Host`.
fn literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

impl AllowedHosts {
    /// The names of a listener bound to `local`, plus `extra`
    /// (`admin.allowed_hosts`, already validated; bad entries are skipped).
    pub fn new(local: SocketAddr, extra: &[String]) -> AllowedHosts {
        let port = local.port();
        let ip = local.ip();
        let mut names = Vec::new();
        let mut any_ip = false;
        if ip.is_unspecified() {
            any_ip = true;
            names.push(("localhost".to_string(), Some(port)));
        } else {
            names.push((literal(ip), Some(port)));
            if ip.is_loopback() {
                for name in ["localhost", "127.0.0.1", "[::1]"] {
                    names.push((name.to_string(), Some(port)));
                }
            }
        }
        let any = extra.iter().any(|e| e.trim() == "*");
        names.extend(extra.iter().filter_map(|e| parse_entry(e)));
        AllowedHosts {
            port,
            names,
            any_ip,
            any,
        }
    }

    /// Whether `host[:port]` names this listener; `default_port` is the
    /// port a value without one means (80 for `Host`, by scheme for
    /// `Origin`).
    pub fn allows(&self, value: &str, default_port: u16) -> bool {
        if self.any {
            return true;
        }
        let Some((host, port)) = split_host_port(value) else {
            return false;
        };
        let port = port.unwrap_or(default_port);
        let named = self
            .names
            .iter()
            .any(|(name, want)| *name == host && want.is_none_or(|w| w == port));
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host)
            .parse::<IpAddr>()
            .is_ok();
        named || (self.any_ip && ip && port == self.port)
    }

    /// Whether an `Origin` value (`scheme://host[:port]`) is one of ours.
    fn allows_origin(&self, origin: &str) -> bool {
        let (authority, default_port) = if let Some(rest) = origin.strip_prefix("http://") {
            (rest, 80)
        } else if let Some(rest) = origin.strip_prefix("https://") {
            (rest, 443)
        } else {
            return false;
        };
        !authority.contains(['/', '@']) && self.allows(authority, default_port)
    }

    /// `None` when the request may go on, else the refusal.
    pub fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
        if self.any {
            return None;
        }
        let host = match headers.get(header::HOST) {
            Some(v) => Some(v.to_str().unwrap_or("\u{fffd}")),
            None => uri.authority().map(|a| a.as_str()),
        };
        if let Some(host) = host {
            if !self.allows(host, 80) {
                tracing::warn!(host = %shown(host), "admin request refused: Host is not one of the listener's names");
                return Some(
                    (
                        StatusCode::MISDIRECTED_REQUEST,
                        format!(
                            "the admin listener does not answer to Host `{}`: it could be a DNS rebinding attack from a web page; \
                             if this is a name of this gateway, add it to admin.allowed_hosts\n",
                            shown(host)
                        ),
                    )
                        .into_response(),
                );
            }
        }
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if let (false, Some(origin)) = (safe, headers.get(header::ORIGIN)) {
            let origin = origin.to_str().unwrap_or("\u{fffd}");
            if !self.allows_origin(origin) {
                tracing::warn!(origin = %shown(origin), "admin change refused: Origin is not the listener's own");
                return Some(
                    (
                        StatusCode::FORBIDDEN,
                        format!(
                            "changes are refused from Origin `{}`: only pages served by this listener (or admin.allowed_hosts) may make them\n",
                            shown(origin)
                        ),
                    )
                        .into_response(),
                );
            }
        }
        None
    }
}

/// A header value fit for a message: printable, at most 100 characters.
fn shown(value: &str) -> String {
    value
        .chars()
        .take(100)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(bind: &str, extra: &[&str]) -> AllowedHosts {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new(bind.parse().unwrap(), &extra)
    }

    #[test]
    fn loopback_listener_answers_to_its_loopback_names_only() {
        let h = hosts("127.0.0.1:9090", &[]);
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST:9090",
            "localhost.:9090",
            "[::1]:9090",
        ] {
            assert!(h.allows(ok, 80), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "127.0.0.1.nip.io:9090",
            "localhost:9091",
            "localhost",
            "10.0.0.5:9090",
            "",
            "[::1",
            "localhost:90a",
            "localhost:99999",
        ] {
            assert!(!h.allows(bad, 80), "{bad}");
        }
        // Port 80 may be left out, as browsers do.
        assert!(hosts("127.0.0.1:80", &[]).allows("localhost", 80));
    }

    #[test]
    fn wildcard_bind_answers_to_ip_literals_and_allowed_names() {
        let h = hosts("0.0.0.0:9090", &["admin.example.com", "gw:8443"]);
        assert!(h.allows("10.1.2.3:9090", 80));
        assert!(h.allows("[fd00::1]:9090", 80));
        assert!(!h.allows("10.1.2.3:9091", 80));
        assert!(h.allows("localhost:9090", 80));
        assert!(h.allows("admin.example.com", 80));
        assert!(h.allows("admin.example.com:443", 80));
        assert!(h.allows("gw:8443", 80));
        assert!(!h.allows("gw:9090", 80));
        assert!(!h.allows("rebind.attacker.example:9090", 80));
        assert!(hosts("127.0.0.1:9090", &["*"]).allows("anything:1", 80));
    }

    #[test]
    fn origins_must_be_http_on_an_allowed_name() {
        let h = hosts("127.0.0.1:9090", &["admin.example.com"]);
        assert!(h.allows_origin("http://127.0.0.1:9090"));
        assert!(h.allows_origin("http://localhost:9090"));
        assert!(h.allows_origin("https://admin.example.com"));
        assert!(!h.allows_origin("http://evil.example:9090"));
        assert!(!h.allows_origin("null"));
        assert!(!h.allows_origin("file://"));
        assert!(!h.allows_origin("http://127.0.0.1:9090@evil.example"));
        assert!(!h.allows_origin("http://127.0.0.1:9091"));
    }

    #[test]
    fn entries_are_names_or_addresses() {
        assert_eq!(
            parse_entry("Admin.Example.com:8443"),
            Some(("admin.example.com".into(), Some(8443)))
        );
        assert_eq!(parse_entry("[::1]"), Some(("[::1]".into(), None)));
        for bad in [
            "http://x",
            "a b",
            "x:",
            "x:port",
            "[::1",
            "[zz]",
            "",
            "a..b",
            "*.example.com",
        ] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }
}
