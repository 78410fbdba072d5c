//! DNS discovery: `host:port` names resolved to every A and AAAA address
//! (a headless Service), and SRV names resolved to their targets and ports,
//! again every `interval`. Resolution uses hickory-resolver with the
//! system's name servers or the configured ones, without a cache (each
//! round asks again, so a pod that left is seen to leave).
//!
//! A round in which any name fails (timeout, SERVFAIL, no records) reports
//! nothing: the pool keeps the last set it was told, so a resolver that
//! blinks never empties it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::{DnsDiscovery, FoundNode, Sink};

/// `host:port` split, for `dns.names` (the port is required: a name has
/// no port of its own, unlike SRV).
pub fn split_host_port(name: &str) -> Result<(&str, u16), String> {
    let (host, port) = name
        .rsplit_once(':')
        .ok_or_else(|| format!("`{name}` needs a port (host:port)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{name}` has no valid port"))?;
    if host.is_empty() || host.contains(['/', '[', ']', ' ']) {
        return Err(format!("`{name}` has no host name"));
    }
    Ok((host, port))
}

/// The resolver `config` asks through.
fn resolver(config: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    // Every round asks the servers: a cached answer would keep a node that
    // left for its record's TTL.
    options.cache_size = 0;
    options.timeout = config.interval.min(Duration::from_secs(5));
    options.attempts = 2;
    let provider = TokioRuntimeProvider::default();
    let builder = if config.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("system resolver config: {e}"))?
    } else {
        let mut servers = Vec::new();
        for server in &config.nameservers {
            let addr: SocketAddr = server
                .parse()
                .map_err(|_| format!("`{server}` is not IP:port"))?;
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut ns.connections {
                connection.port = addr.port();
            }
            servers.push(ns);
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            provider,
        )
    };
    builder
        .with_options(options)
        .build()
        .map_err(|e| format!("resolver: {e}"))
}

fn node(ip: IpAddr, port: u16) -> FoundNode {
    let addr = SocketAddr::new(ip, port).to_string();
    FoundNode {
        name: addr.clone(),
        addr,
        weight: None,
        max_concurrent: None,
        pod: None,
    }
}

/// One round over every name: the nodes, or the first failure.
async fn resolve(
    resolver: &TokioResolver,
    config: &DnsDiscovery,
) -> Result<Vec<FoundNode>, String> {
    let mut nodes = Vec::new();
    for name in &config.names {
        let (host, port) = split_host_port(name)?;
        let ips = resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        nodes.extend(ips.iter().map(|ip| node(ip, port)));
    }
    for name in &config.srv {
        let srv = resolver
            .srv_lookup(name.as_str())
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        for record in srv.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let target = srv.target.to_string();
            let ips = resolver
                .lookup_ip(target.as_str())
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            nodes.extend(ips.iter().map(|ip| node(ip, srv.port)));
        }
    }
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// Resolve every `interval` and report each changed set to `sink`.
pub async fn run(config: DnsDiscovery, sink: Sink) {
    let resolver = match resolver(&config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "dns discovery cannot start");
            return;
        }
    };
    let mut last: Option<Vec<FoundNode>> = None;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match resolve(&resolver, &config).await {
            Ok(nodes) if last.as_ref() != Some(&nodes) => {
                last = Some(nodes.clone());
                sink(nodes);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                kept = last.as_ref().map_or(0, Vec::len),
                "dns discovery failed this round; keeping the last known nodes"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_host_and_port() {
        assert_eq!(split_host_port("vllm.svc:8000"), Ok(("vllm.svc", 8000)));
        assert!(split_host_port("vllm.svc").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("a:0").is_err());
        assert!(split_host_port("a:x").is_err());
    }
}
