//! `bench --replicas N`: N gateways with the same config in front of one
//! simulated fleet, reached through one address that hands each new client
//! connection to the next gateway in turn — what a Kubernetes Service
//! (kube-proxy) does. Each gateway keeps its own view of load and its own
//! prefix index, as separate pods would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::proxy::{self, Gateway};

/// Running replicas and their round-robin front.
pub struct Replicas {
    /// Where clients connect.
    pub front: SocketAddr,
    gateways: Vec<Arc<Gateway>>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    front_task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Start `n` gateways for `config` (its listener address must take port
/// 0) and, for more than one, the front.
pub async fn start(config: &Config, n: usize) -> Result<Replicas, String> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut gateways = Vec::new();
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n.max(1) {
        let gateway = Gateway::new(config).map_err(|e| e.to_string())?;
        let listener = proxy::bind(&gateway).await.map_err(|e| e.to_string())?;
        addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
        let mut rx = stopped.clone();
        servers.push(tokio::spawn(proxy::serve(
            Arc::clone(&gateway),
            listener,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
            Duration::from_secs(1),
        )));
        gateways.push(gateway);
    }
    // One replica is reached directly (the front's extra hop is not in
    // its figures).
    let (front, front_task) = if addrs.len() == 1 {
        (addrs[0], tokio::spawn(async {}))
    } else {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let front = listener.local_addr().map_err(|e| e.to_string())?;
        (front, tokio::spawn(round_robin(listener, addrs)))
    };
    Ok(Replicas {
        front,
        gateways,
        servers,
        front_task,
        stop,
    })
}

/// Hand each accepted connection to the next address, bytes both ways.
async fn round_robin(listener: TcpListener, backends: Vec<SocketAddr>) {
    let next = AtomicUsize::new(0);
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(backend).await {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

impl Replicas {
    /// Stop the front and the gateways (requests in flight get 1 s).
    pub async fn stop(self) {
        self.front_task.abort();
        let _ = self.stop.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        drop(self.gateways);
    }
}
