//! Hostile clients against each proxy: malformed request framing, slow and
//! silent clients, requests a proxy must refuse, and (infergate only) admin
//! requests from another origin. Each probe is raw bytes on a fresh
//! connection; the table says what each proxy did, and whether a normal
//! request still succeeds afterwards (no client may take a node out).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One hostile input.
pub struct Probe {
    /// Row name.
    pub name: &'static str,
    /// Bytes sent at once.
    pub send: &'static [u8],
    /// Then bytes sent one at a time with this gap (a slow client), if any.
    pub trickle: Option<(&'static [u8], Duration)>,
}

/// The probes, in the order they run.
pub fn probes() -> Vec<Probe> {
    let at_once = |name, send| Probe {
        name,
        send,
        trickle: None,
    };
    vec![
        at_once(
            "bad chunk size",
            b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        ),
        at_once(
            "chunk without CRLF",
            b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        ),
        at_once(
            "LF-only chunk lines",
            b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\n0\n\n",
        ),
        at_once(
            "TE and CL together",
            b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        at_once("no Host", b"GET /x HTTP/1.1\r\n\r\n"),
        at_once("two Hosts", b"GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"),
        at_once(
            "CONNECT",
            b"CONNECT node:443 HTTP/1.1\r\nhost: node:443\r\n\r\n",
        ),
        at_once(
            "stalled upload",
            b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\nxxxxxxxxxx",
        ),
        at_once("silent connection", b""),
        at_once("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        Probe {
            name: "slowloris headers (1 byte/s)",
            send: b"GET /x HTTP/1.1\r\n",
            trickle: Some((b"host: gw\r\nx-a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n", Duration::from_secs(1))),
        },
    ]
}

/// What a proxy did with one probe.
pub async fn run_probe(addr: SocketAddr, probe: &Probe, patience: Duration) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "refused".into();
    };
    let started = Instant::now();
    if stream.write_all(probe.send).await.is_err() {
        return "closed at once".into();
    }
    let mut buf = vec![0u8; 4096];
    if let Some((rest, gap)) = probe.trickle {
        for byte in rest {
            tokio::select! {
                read = stream.read(&mut buf) => return answer(&buf, read, started),
                () = tokio::time::sleep(gap) => {}
            }
            if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                return format!("closed after {:.1} s", started.elapsed().as_secs_f64());
            }
            if started.elapsed() > patience {
                break;
            }
        }
    }
    match tokio::time::timeout(patience, stream.read(&mut buf)).await {
        Ok(read) => answer(&buf, read, started),
        Err(_) => format!("still open after {} s", patience.as_secs()),
    }
}

fn answer(buf: &[u8], read: std::io::Result<usize>, started: Instant) -> String {
    match read {
        Ok(0) | Err(_) => format!("closed after {:.1} s", started.elapsed().as_secs_f64()),
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            let status = text
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_string();
            let secs = started.elapsed().as_secs_f64();
            if secs >= 1.0 {
                format!("{status} after {secs:.1} s")
            } else {
                status
            }
        }
    }
}

/// A plain request after the probes: the node must still be in service.
pub async fn normal_request(addr: SocketAddr) -> String {
    let probe = Probe {
        name: "normal request afterwards",
        send: b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n\r\nabc",
        trickle: None,
    };
    run_probe(addr, &probe, Duration::from_secs(5)).await
}

/// Admin requests from a web page on another origin (DNS rebinding, CSRF).
pub fn admin_probes(admin: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        (
            "admin: read config, foreign Host",
            "GET /api/v1/config HTTP/1.1\r\nhost: evil.example:9090\r\n\r\n".to_string(),
        ),
        (
            "admin: read config, own Host",
            format!("GET /api/v1/config HTTP/1.1\r\nhost: {admin}\r\n\r\n"),
        ),
        (
            "admin: change, foreign Origin",
            format!(
                "POST /api/v1/pools/fleet/nodes/n0/drain HTTP/1.1\r\nhost: {admin}\r\n\
                 origin: http://evil.example\r\ncontent-length: 0\r\n\r\n"
            ),
        ),
    ]
}

/// Send a prepared admin request; its status.
pub async fn admin_probe(admin: SocketAddr, request: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(admin).await else {
        return "refused".into();
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "closed".into();
    }
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    match read {
        Ok(read) => answer(&buf, read, Instant::now()),
        Err(_) => "no answer".into(),
    }
}

/// Every probe through every proxy (one node behind each), as a Markdown
/// table: rows are probes, columns proxies.
pub async fn run(
    exe: &std::path::Path,
    dir: &std::path::Path,
    proxies: &[(super::ProxyKind, std::path::PathBuf)],
) -> Result<String, String> {
    let patience = Duration::from_secs(20);
    let probes = probes();
    let mut columns = Vec::new();
    for (kind, program) in proxies {
        let dir = dir.join(format!("adversarial-{}", kind.name()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let node = super::procs::NodeProcess::start(exe, &dir, "n0").await?;
        let admin = match kind {
            super::ProxyKind::Infergate => Some(SocketAddr::from((
                [127, 0, 0, 1],
                super::procs::free_port().map_err(|e| e.to_string())?,
            ))),
            _ => None,
        };
        let nodes = vec![(node.name.clone(), node.addr)];
        let proxy = kind.start_with_admin(program, &dir, &nodes, admin).await?;
        let addr = proxy.addr;
        // All probes at once, each on its own connection.
        let runs: Vec<_> = probes
            .iter()
            .enumerate()
            .map(|(i, _)| {
                tokio::spawn(async move {
                    let probes = probes_static();
                    run_probe(addr, &probes[i], patience).await
                })
            })
            .collect();
        let mut column = Vec::new();
        for run in runs {
            column.push(run.await.unwrap_or_else(|e| format!("probe failed: {e}")));
        }
        // A flood of idle connections, then a normal client.
        let mut flood = Vec::new();
        for _ in 0..1000 {
            if let Ok(stream) = TcpStream::connect(addr).await {
                flood.push(stream);
            }
        }
        let started = Instant::now();
        let served = normal_request(addr).await;
        column.push(format!(
            "{served} in {} ms ({} held)",
            started.elapsed().as_millis(),
            flood.len()
        ));
        drop(flood);
        column.push(normal_request(addr).await);
        for (_, request) in admin_probes(admin.unwrap_or(addr)) {
            column.push(match admin {
                Some(admin) => admin_probe(admin, &request).await,
                None => "n/a".into(),
            });
        }
        columns.push((kind.name(), column));
        drop(proxy);
        drop(node);
    }
    let mut rows: Vec<String> = probes.iter().map(|p| p.name.to_string()).collect();
    rows.push("a client after 1,000 idle connections".into());
    rows.push("a normal request afterwards".into());
    rows.extend(
        admin_probes(SocketAddr::from(([127, 0, 0, 1], 0)))
            .into_iter()
            .map(|(name, _)| name.to_string()),
    );
    let mut out = String::from("| probe |");
    for (name, _) in &columns {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len()));
    out.push('\n');
    for (i, row) in rows.iter().enumerate() {
        out.push_str(&format!("| {row} |"));
        for (_, column) in &columns {
            out.push_str(&format!(" {} |", column.get(i).map_or("-", String::as_str)));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The probes, for tasks that need them by index.
fn probes_static() -> Vec<Probe> {
    probes()
}
