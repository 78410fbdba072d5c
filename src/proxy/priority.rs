//! Who decides a request's priority in the pool's admission queue.
//!
//! The `x-infergate-priority` header is a request, not a right: any client
//! could send `critical` and push everyone else's requests out of a full
//! queue. So a route's requests get the route's own `priority` (standard
//! by default), and the header replaces it only for clients in the route's
//! `trust_priority_header_from` networks (e.g. an internal batch scheduler,
//! or a front proxy that sets the header itself). The address checked is
//! the TCP peer's: behind another proxy that is the proxy.

use std::net::IpAddr;

use crate::classify::Priority;
use crate::config::{Cidr, RouteConfig};

/// A route's priority setting, compiled.
#[derive(Debug, Clone, Default)]
pub struct PriorityRule {
    /// Priority of the route's requests (and of requests from untrusted
    /// clients, whatever their header says).
    pub route: Priority,
    /// Clients whose header is honoured.
    pub trusted: Vec<Cidr>,
}

impl PriorityRule {
    /// The rule a validated route config describes.
    pub fn of(route: &RouteConfig) -> PriorityRule {
        PriorityRule {
            route: route
                .priority
                .as_deref()
                .and_then(Priority::from_name)
                .unwrap_or_default(),
            // Validated with the config: nothing is dropped here.
            trusted: route
                .trust_priority_header_from
                .iter()
                .filter_map(|network| network.parse().ok())
                .collect(),
        }
    }

    /// The priority of a request from `peer` whose header asked for
    /// `asked` (`None`: no header, or not a priority name).
    pub fn decide(&self, asked: Option<Priority>, peer: IpAddr) -> Priority {
        match asked {
            Some(asked) if self.trusted.iter().any(|net| net.contains(peer)) => asked,
            _ => self.route,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(route: Priority, trusted: &[&str]) -> PriorityRule {
        PriorityRule {
            route,
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_header_counts_only_from_trusted_clients() {
        let outside: IpAddr = "203.0.113.7".parse().unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let default = PriorityRule::default();
        assert_eq!(
            default.decide(Some(Priority::Critical), inside),
            Priority::Standard,
            "by default nobody is trusted"
        );
        let lan = rule(Priority::Standard, &["10.0.0.0/8"]);
        assert_eq!(
            lan.decide(Some(Priority::Critical), inside),
            Priority::Critical
        );
        assert_eq!(
            lan.decide(Some(Priority::Critical), outside),
            Priority::Standard
        );
        assert_eq!(lan.decide(None, inside), Priority::Standard);
        let batch = rule(Priority::Sheddable, &["10.0.0.0/8"]);
        assert_eq!(batch.decide(None, inside), Priority::Sheddable);
        assert_eq!(
            batch.decide(Some(Priority::Critical), outside),
            Priority::Sheddable
        );
        let everyone = rule(Priority::Standard, &["0.0.0.0/0", "::/0"]);
        assert_eq!(
            everyone.decide(Some(Priority::Critical), "2001:db8::1".parse().unwrap()),
            Priority::Critical
        );
    }
}
