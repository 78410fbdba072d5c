//! The simulator's KV-cache event publisher, as vLLM's `ZmqEventPublisher`:
//! a PUB socket sending `[topic, seq (8 bytes big-endian), msgpack batch]`
//! per engine step that changed the prefix cache, and an optional ROUTER
//! replay socket answering `[identity, "", start seq]` with every buffered
//! batch from `start` on, then the end marker (seq -1, empty payload).
//! Configured with vLLM's `--kv-events-config` field names.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::kvindex::wire::{encode_batch, KvEvent};

/// vLLM's `KVEventsConfig` (`--kv-events-config`), same field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvEventsConfig {
    /// Publish KV-cache events.
    pub enable_kv_cache_events: bool,
    /// `"zmq"` (or `"null"`: none).
    pub publisher: String,
    /// PUB endpoint to bind; `*` is any address, port 0 an ephemeral port.
    pub endpoint: String,
    /// ROUTER replay endpoint to bind, if any.
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    pub buffer_steps: usize,
    /// Most batches queued between the engine and the socket.
    pub max_queue_size: usize,
    /// Topic frame of every message.
    pub topic: String,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        KvEventsConfig {
            enable_kv_cache_events: false,
            publisher: "zmq".into(),
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: None,
            buffer_steps: 10_000,
            max_queue_size: 100_000,
            topic: String::new(),
        }
    }
}

impl KvEventsConfig {
    /// Whether events are published.
    pub fn enabled(&self) -> bool {
        self.enable_kv_cache_events && self.publisher == "zmq"
    }
}

pub(crate) enum Cmd {
    Batch(Vec<KvEvent>),
    /// A new engine process: sequence numbers start again at 0.
    Reset,
}

/// The engine's end of the publisher.
#[derive(Clone)]
pub(crate) struct KvSink {
    tx: mpsc::Sender<Cmd>,
    dropped: Arc<AtomicU64>,
}

impl KvSink {
    pub fn publish(&self, events: Vec<KvEvent>) {
        if self.tx.try_send(Cmd::Batch(events)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running publisher (its task ends when the handle is dropped).
pub(crate) struct Publisher {
    sink: KvSink,
    /// The bound PUB endpoint.
    pub events: String,
    /// The bound replay endpoint.
    pub replay: Option<String>,
    drop_next: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `endpoint` with its port moved up by `by` (vLLM's
/// `offset_endpoint_port`); port 0 stays 0 (any free port).
pub fn offset_port(endpoint: &str, by: usize) -> String {
    let Some((base, port)) = endpoint.rsplit_once(':') else {
        return endpoint.to_string();
    };
    match port.parse::<usize>() {
        Ok(p) if p > 0 && by > 0 => format!("{base}:{}", p + by),
        _ => endpoint.to_string(),
    }
}

fn bind_addr(ep: &str) -> String {
    ep.replace("://*:", "://0.0.0.0:")
}

impl Publisher {
    pub async fn start(cfg: &KvEventsConfig) -> io::Result<Publisher> {
        let err = |e: zeromq::ZmqError| io::Error::other(e.to_string());
        let mut publ = zeromq::PubSocket::new();
        let events = publ.bind(&bind_addr(&cfg.endpoint)).await.map_err(err)?;
        let (router, replay) = match &cfg.replay_endpoint {
            Some(ep) => {
                let mut r = zeromq::RouterSocket::new();
                let bound = r.bind(&bind_addr(ep)).await.map_err(err)?;
                (Some(r), Some(bound.to_string()))
            }
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel(cfg.max_queue_size.max(1));
        let drop_next = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(run(
            publ,
            router,
            rx,
            cfg.topic.clone(),
            cfg.buffer_steps,
            Arc::clone(&drop_next),
        ));
        Ok(Publisher {
            sink: KvSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            events: events.to_string(),
            replay,
            drop_next,
            task,
        })
    }

    pub fn sink(&self) -> KvSink {
        self.sink.clone()
    }

    /// Number the next batches from 0 again and forget the replay buffer.
    pub fn reset(&self) {
        // Ordered after every batch already queued.
        let _ = self.sink.tx.try_send(Cmd::Reset);
    }

    /// Lose the next `n` batches on the PUB socket (they stay replayable),
    /// as a subscriber past the high-water mark would.
    pub fn drop_next(&self, n: u32) {
        self.drop_next.fetch_add(n, Ordering::Relaxed);
    }
}

async fn recv_opt(r: &mut Option<zeromq::RouterSocket>) -> Option<ZmqMessage> {
    match r {
        Some(r) => r.recv().await.ok(),
        None => std::future::pending().await,
    }
}

async fn run(
    mut publ: zeromq::PubSocket,
    mut router: Option<zeromq::RouterSocket>,
    mut rx: mpsc::Receiver<Cmd>,
    topic: String,
    steps: usize,
    drop_next: Arc<AtomicU32>,
) {
    let mut next: u64 = 0;
    let mut buffer: VecDeque<(u64, Bytes)> = VecDeque::new();
    let topic = Bytes::from(topic.into_bytes());
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Cmd::Reset) => {
                    next = 0;
                    buffer.clear();
                }
                Some(Cmd::Batch(events)) => {
                    let seq = next;
                    next += 1;
                    let ts = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    let payload = Bytes::from(encode_batch(ts, &events, Some(0)));
                    buffer.push_back((seq, payload.clone()));
                    while buffer.len() > steps {
                        buffer.pop_front();
                    }
                    if drop_next
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        continue;
                    }
                    let frames = vec![topic.clone(), Bytes::copy_from_slice(&seq.to_be_bytes()), payload];
                    if let Ok(msg) = ZmqMessage::try_from(frames) {
                        let _ = publ.send(msg).await;
                    }
                }
            },
            req = recv_opt(&mut router) => {
                let Some(req) = req else { continue };
                let frames = req.into_vec();
                let (Some(id), Some(start)) = (frames.first(), frames.get(2)) else { continue };
                let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else { continue };
                let start = u64::from_be_bytes(start);
                let Some(r) = router.as_mut() else { continue };
                for (seq, payload) in buffer.iter().filter(|(s, _)| *s >= start) {
                    let frames = vec![id.clone(), Bytes::new(), Bytes::copy_from_slice(&seq.to_be_bytes()), payload.clone()];
                    if let Ok(msg) = ZmqMessage::try_from(frames) {
                        let _ = r.send(msg).await;
                    }
                }
                let end = vec![id.clone(), Bytes::new(), Bytes::copy_from_slice(&(-1i64).to_be_bytes()), Bytes::new()];
                if let Ok(msg) = ZmqMessage::try_from(end) {
                    let _ = r.send(msg).await;
                }
            }
        }
    }
}
