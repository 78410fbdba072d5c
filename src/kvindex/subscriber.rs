//! One task per node: subscribe to its KV events over ZMQ and keep the
//! node's part of the [`KvIndex`] in step, resynchronizing on gaps.
//!
//! Sequence numbers count batches from 0 per publisher process, so:
//!
//! * the next number: apply;
//! * a jump ahead (batches lost: the publisher's high-water mark, a slow
//!   subscriber): ask the node's replay socket (vLLM's ROUTER,
//!   `replay_endpoint`) for everything from the first missing number and
//!   apply it in order; without a replay socket, or when the node no longer
//!   has the missing batches, forget the node's blocks (its index may hold
//!   blocks already evicted, and misses the ones stored since) and go on
//!   from the new batch — the index refills as the engine stores blocks;
//! * a number at or below the last one: the engine restarted (a new
//!   process counts from 0 again): forget the node's blocks;
//! * the connection drops: forget the node's blocks and reconnect with
//!   back-off.
//!
//! On the first batch after connecting, a node with a replay socket is
//! asked for its whole replay buffer first, so a gateway that starts after
//! the engine learns the blocks cached before it listened.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use zeromq::{Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use super::index::KvIndex;
use super::wire::decode_batch;

/// Where one node publishes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeEndpoints {
    /// The PUB endpoint, e.g. `tcp://10.0.0.5:5557`.
    pub events: String,
    /// The ROUTER replay endpoint, if the node has one.
    pub replay: Option<String>,
    /// Topic prefix to subscribe to (`""`: all).
    pub topic: String,
}

/// How long a replay may take before the node is cleared instead.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most batches one replay applies (vLLM keeps 10 000 by default).
const REPLAY_MAX: usize = 20_000;

/// Run node `node`'s subscription until the task is aborted.
pub async fn run(index: Arc<KvIndex>, node: usize, ep: NodeEndpoints) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&index, node, &ep).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::debug!(node, endpoint = %ep.events, error = %e, "kv events subscription failed");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        index.set_live(node, false);
        index.clear_node(node);
        index.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
    }
}

/// One connection: returns when it drops.
async fn session(index: &KvIndex, node: usize, ep: &NodeEndpoints) -> Result<(), String> {
    let mut sub = zeromq::SubSocket::new();
    let mut monitor = sub.monitor();
    tokio::time::timeout(Duration::from_secs(5), sub.connect(&ep.events))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    sub.subscribe(&ep.topic).await.map_err(|e| e.to_string())?;
    tracing::info!(node, endpoint = %ep.events, "kv events subscribed");
    index.set_live(node, true);
    let mut last: Option<u64> = None;
    loop {
        let msg = tokio::select! {
            m = sub.recv() => m.map_err(|e| e.to_string())?,
            ev = monitor.next() => match ev {
                Some(SocketEvent::Disconnected(_)) | Some(SocketEvent::Closed) | None => {
                    return Ok(());
                }
                Some(_) => continue,
            },
        };
        let frames = msg.into_vec();
        let (Some(seq), Some(payload)) = (frames.get(1).and_then(seq_of), frames.get(2)) else {
            index.stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let expected = last.map(|l| l.wrapping_add(1));
        match expected {
            Some(e) if seq == e => {}
            Some(e) if seq > e => {
                index.stats.gaps.fetch_add(1, Ordering::Relaxed);
                resync(index, node, ep, e, seq).await;
            }
            Some(_) => {
                // The counter went back: a new engine process.
                index.stats.restarts.fetch_add(1, Ordering::Relaxed);
                index.clear_node(node);
                if seq > 0 {
                    resync(index, node, ep, 0, seq).await;
                }
            }
            None if seq > 0 && ep.replay.is_some() => {
                // Joining late: learn what was cached before we listened.
                resync(index, node, ep, 0, seq).await;
            }
            None => {}
        }
        apply_payload(index, node, payload);
        last = Some(seq);
    }
}

fn seq_of(frame: &Bytes) -> Option<u64> {
    let bytes: [u8; 8] = frame.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn apply_payload(index: &KvIndex, node: usize, payload: &[u8]) {
    let s = &index.stats;
    match decode_batch(payload) {
        Ok(batch) => {
            s.batches.fetch_add(1, Ordering::Relaxed);
            s.malformed
                .fetch_add(batch.skipped as u64, Ordering::Relaxed);
            for e in &batch.events {
                index.apply(node, e);
            }
        }
        Err(e) => {
            s.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node, error = %e, "undecodable kv event batch");
        }
    }
}

/// Apply batches `from..until` from the node's replay socket; when that is
/// impossible, forget the node's blocks instead.
async fn resync(index: &KvIndex, node: usize, ep: &NodeEndpoints, from: u64, until: u64) {
    let s = &index.stats;
    let ok = match &ep.replay {
        Some(replay) => {
            match tokio::time::timeout(REPLAY_TIMEOUT, fetch_replay(replay, from, until)).await {
                Ok(Ok(batches)) if batches.first().map(|b| b.0) == Some(from) => {
                    let mut next = from;
                    let mut whole = true;
                    for (seq, payload) in &batches {
                        if *seq != next {
                            whole = false;
                            break;
                        }
                        apply_payload(index, node, payload);
                        next += 1;
                    }
                    whole && next == until
                }
                Ok(Ok(_)) => false,
                Ok(Err(e)) => {
                    tracing::debug!(node, error = %e, "kv events replay failed");
                    false
                }
                Err(_) => false,
            }
        }
        None => false,
    };
    if ok {
        s.replays.fetch_add(1, Ordering::Relaxed);
    } else {
        // Replay from 0 of a node we never saw is best effort: nothing to undo.
        if from > 0 || index.blocks_of(node) > 0 {
            index.clear_node(node);
        }
        s.resync_clears.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            node,
            from,
            until,
            "kv events: missed batches could not be replayed; node's blocks forgotten"
        );
    }
}

/// Ask a vLLM replay ROUTER for batches from `from` on; returns those below `until`.
async fn fetch_replay(endpoint: &str, from: u64, until: u64) -> Result<Vec<(u64, Bytes)>, String> {
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
    // The ROUTER sees [identity, "", start]: DEALER sends the empty delimiter.
    let req = ZmqMessage::try_from(vec![
        Bytes::new(),
        Bytes::copy_from_slice(&from.to_be_bytes()),
    ])
    .map_err(|e| e.to_string())?;
    dealer.send(req).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let msg = dealer.recv().await.map_err(|e| e.to_string())?;
        let frames = msg.into_vec();
        // [“”, seq, payload]; the end marker has seq -1.
        let (Some(seq), Some(payload)) = (frames.get(1), frames.get(2)) else {
            return Err("malformed replay frame".into());
        };
        let Some(seq) = seq_of(seq) else {
            return Err("malformed replay sequence".into());
        };
        if seq == u64::MAX {
            return Ok(out);
        }
        if seq < until && out.len() < REPLAY_MAX {
            out.push((seq, payload.clone()));
        }
    }
}
