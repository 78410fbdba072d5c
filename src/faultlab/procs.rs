//! The processes of a fault run: simulated nodes (each its own `infergate
//! sim` process, so it can really be killed, stopped and restarted on the
//! same port) and the proxy under test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sim::Faults;

/// A loopback port free at the time of the call (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Send `signal` to process `pid`.
fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Stop a child: SIGTERM, then SIGKILL if it is still there after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    signal(child.id(), libc::SIGCONT);
    signal(child.id(), libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Wait until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let until = Instant::now() + within;
    loop {
        let attempt = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), attempt).await {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!("nothing listens on {addr} after {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One simulated node in its own process.
pub struct NodeProcess {
    /// Name the node answers with in `x-sim-node`.
    pub name: String,
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    exe: PathBuf,
    sim_config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Start node `name` on a free loopback port.
    pub async fn start(exe: &Path, dir: &Path, name: &str) -> Result<NodeProcess, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let sim_config = dir.join("sim.toml");
        if !sim_config.exists() {
            // 100x real time, so a small request takes a few milliseconds.
            std::fs::write(&sim_config, "time_scale = 0.01\n").map_err(|e| e.to_string())?;
        }
        let mut node = NodeProcess {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            exe: exe.to_path_buf(),
            sim_config,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        node.spawn().await?;
        Ok(node)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.exe)
            .args(["sim", "--nodes", "1", "--name", &self.name])
            .arg("--base-port")
            .arg(self.addr.port().to_string())
            .arg("--config")
            .arg(&self.sim_config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        self.child = Some(child);
        wait_listening(self.addr, Duration::from_secs(10))
            .await
            .map_err(|e| format!("node {}: {e}", self.name))
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the port refuses connections from now on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the kernel still accepts connections, nothing answers.
    pub fn hang(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`NodeProcess::hang`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }

    /// Start again on the same address (after [`NodeProcess::kill`]).
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().await
    }

    /// Set the node's injected faults (`POST /sim/faults`).
    pub async fn set_faults(&self, faults: &Faults) -> Result<(), String> {
        let body = serde_json::to_vec(faults).map_err(|e| e.to_string())?;
        let client = crate::cli::http::Http::new(&self.addr.to_string(), Duration::from_secs(5))?;
        let reply = client
            .send(
                http::Method::POST,
                "/sim/faults",
                &[("content-type", "application/json".to_string())],
                body,
            )
            .await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(format!("{}: faults refused: {}", self.name, reply.status))
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(2));
        }
    }
}

/// The proxy under test, as a child process.
pub struct ProxyProcess {
    /// Its data-plane address.
    pub addr: SocketAddr,
    child: Child,
}

impl ProxyProcess {
    /// Run `command` (its output to `log`) and wait for `addr` to listen.
    pub async fn start(mut command: Command, addr: SocketAddr, log: &Path) -> Result<Self, String> {
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let mut proxy = ProxyProcess { addr, child };
        if let Err(e) = wait_listening(addr, Duration::from_secs(10)).await {
            let _ = proxy.child.kill();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{program}: {e}\n{log}"));
        }
        Ok(proxy)
    }

    /// The process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}
