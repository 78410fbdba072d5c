//! The proxies a fault run compares, each configured for failover with the
//! same settings where they have them: least connections, a health check
//! every 200 ms (timeout 150 ms, down after 2 failures, up after 2
//! successes), passive ejection after 2 failed requests, up to 3 attempts,
//! connect and first-byte timeouts of 1 s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::procs::{free_port, ProxyProcess};

/// A proxy a fault run can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// This gateway (`infergate serve`).
    Infergate,
    /// nginx (open source: passive `max_fails` health only).
    Nginx,
    /// HAProxy (active checks, `observe layer7`, L7 retries).
    Haproxy,
}

impl ProxyKind {
    /// Name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Infergate => "infergate",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }

    /// Parse a name from the command line.
    pub fn from_name(name: &str) -> Option<ProxyKind> {
        match name {
            "infergate" => Some(ProxyKind::Infergate),
            "nginx" => Some(ProxyKind::Nginx),
            "haproxy" => Some(ProxyKind::Haproxy),
            _ => None,
        }
    }

    /// The program to run, if it can be found (infergate: `exe`).
    pub fn program(self, exe: &Path) -> Option<PathBuf> {
        match self {
            ProxyKind::Infergate => Some(exe.to_path_buf()),
            ProxyKind::Nginx => find_program("nginx"),
            ProxyKind::Haproxy => find_program("haproxy"),
        }
    }

    /// Write this proxy's config for `nodes` into `dir` and start it.
    pub async fn start(
        self,
        program: &Path,
        dir: &Path,
        nodes: &[(String, SocketAddr)],
    ) -> Result<ProxyProcess, String> {
        self.start_with_admin(program, dir, nodes, None).await
    }

    /// [`ProxyKind::start`], with infergate's admin listener on `admin`.
    pub async fn start_with_admin(
        self,
        program: &Path,
        dir: &Path,
        nodes: &[(String, SocketAddr)],
        admin: Option<SocketAddr>,
    ) -> Result<ProxyProcess, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join(format!("{}.log", self.name()));
        let mut command = Command::new(program);
        match self {
            ProxyKind::Infergate => {
                let path = dir.join("infergate.toml");
                write(&path, &infergate_config(addr, nodes, admin))?;
                command
                    .args(["serve", "--drain", "1s", "--config"])
                    .arg(&path)
                    .env("RUST_LOG", "info");
            }
            ProxyKind::Nginx => {
                let path = dir.join("nginx.conf");
                write(&path, &nginx_config(addr, nodes, dir))?;
                command.arg("-c").arg(&path).arg("-p").arg(dir);
            }
            ProxyKind::Haproxy => {
                let path = dir.join("haproxy.cfg");
                write(&path, &haproxy_config(addr, nodes))?;
                command.arg("-db").arg("-f").arg(&path);
            }
        }
        ProxyProcess::start(command, addr, &log).await
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// infergate: `[pools.health]` and `[pools.outlier]` as above, the route
/// with `retries = 2` (3 attempts), defaults elsewhere.
pub fn infergate_config(
    addr: SocketAddr,
    nodes: &[(String, SocketAddr)],
    admin: Option<SocketAddr>,
) -> String {
    let admin = match admin {
        Some(admin) => format!("addr = \"{admin}\""),
        None => "enabled = false".to_string(),
    };
    let mut text = format!(
        "[listener]\naddr = \"{addr}\"\nheader_timeout = \"10s\"\nbody_timeout = \"10s\"\n\n\
         [admin]\n{admin}\n\n[[pools]]\nname = \"fleet\"\n"
    );
    for (name, node) in nodes {
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"{name}\"\naddr = \"{node}\"\n"
        ));
    }
    text.push_str(
        "[pools.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         unhealthy_threshold = 2\nhealthy_threshold = 2\n\
         [pools.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"2s\"\n\n\
         [[routes]]\nname = \"chat\"\npool = \"fleet\"\npolicy = \"least_outstanding\"\nretries = 2\n\
         [routes.timeouts]\nconnect = \"1s\"\nfirst_byte = \"1s\"\n",
    );
    text
}

/// nginx: `least_conn`, `max_fails=2 fail_timeout=2s`, every retryable
/// error and 5xx passed to the next server also for POST, 3 tries,
/// upstream keep-alive, no buffering (streams pass through).
pub fn nginx_config(addr: SocketAddr, nodes: &[(String, SocketAddr)], dir: &Path) -> String {
    let dir = dir.display();
    let servers: String = nodes
        .iter()
        .map(|(_, node)| format!("    server {node} max_fails=2 fail_timeout=2s;\n"))
        .collect();
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "{user}daemon off;\nmaster_process on;\nworker_processes 2;\npid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_header_timeout 10s;\n  client_body_timeout 10s;\n  keepalive_timeout 60s;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         upstream fleet {{\n    least_conn;\n{servers}    keepalive 64;\n  }}\n\
         server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://fleet;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
         proxy_next_upstream error timeout http_500 http_502 http_503 http_504 non_idempotent;\n\
         proxy_next_upstream_tries 3;\n      proxy_connect_timeout 1s;\n      proxy_read_timeout 1s;\n\
         proxy_send_timeout 1s;\n    }}\n  }}\n}}\n"
    )
}

/// HAProxy: `leastconn`, `check inter 200 fall 2 rise 2` on `/health`,
/// `observe layer7 error-limit 2 on-error mark-down`, `retries 3`,
/// `option redispatch 1`, `retry-on all-retryable-errors`.
pub fn haproxy_config(addr: SocketAddr, nodes: &[(String, SocketAddr)]) -> String {
    let servers: String = nodes
        .iter()
        .map(|(name, node)| {
            format!(
                "  server {name} {node} check inter 200 fall 2 rise 2 \
                 observe layer7 error-limit 2 on-error mark-down\n"
            )
        })
        .collect();
    format!(
        "global\n  nbthread 2\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 1s\n\
         timeout http-request 10s\n  timeout http-keep-alive 60s\n\
         timeout check 150ms\n  retries 3\n  option redispatch 1\n  retry-on all-retryable-errors\n\
         frontend fe\n  bind {addr}\n  default_backend fleet\n\
         backend fleet\n  balance leastconn\n  option httpchk GET /health\n{servers}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<(String, SocketAddr)> {
        vec![
            ("n0".into(), "127.0.0.1:7001".parse().unwrap()),
            ("n1".into(), "127.0.0.1:7002".parse().unwrap()),
        ]
    }

    #[test]
    fn infergate_config_is_valid() {
        let text = infergate_config("127.0.0.1:7000".parse().unwrap(), &nodes(), None);
        let config = crate::config::Config::from_toml(&text).expect("valid");
        assert_eq!(config.pools[0].nodes.len(), 2);
        assert_eq!(config.routes[0].retries, 2);
    }

    #[test]
    fn peer_configs_name_every_node() {
        let addr = "127.0.0.1:7000".parse().unwrap();
        let nginx = nginx_config(addr, &nodes(), Path::new("/tmp/x"));
        assert!(nginx.contains("server 127.0.0.1:7002 max_fails=2 fail_timeout=2s;"));
        assert!(nginx.contains("listen 127.0.0.1:7000;"));
        let haproxy = haproxy_config(addr, &nodes());
        assert!(haproxy.contains("server n1 127.0.0.1:7002 check inter 200 fall 2 rise 2"));
    }
}
