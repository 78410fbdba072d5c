//! An HTTP/2 stream whose client stops taking data lets go of its node
//! after `listener.send_timeout`.
//!
//! hyper polls a response body only while the stream's flow-control window
//! has room, so a client that keeps its connection busy but never opens one
//! stream's window (a slow-read attack, or a client that hung on one
//! response) leaves that body unpolled: the pass-through's own timers never
//! run, and the node, its request and its KV cache stay held for as long as
//! the client likes. A write that waits on the socket is covered beneath
//! hyper (`deadline`); this is the same limit for one stream, counted the
//! same way, from the last time the client took data (nginx's
//! `send_timeout`).
//!
//! The body is shared with a watcher task, started when the first frame is
//! handed over with more to come (a body complete in one frame, most
//! non-streamed answers, never starts one). When the client has taken
//! nothing for the timeout since a frame was handed over, the watcher drops
//! the node's body: the node's slot is released and its connection closed,
//! which ends the request on the node. The stream answers its next poll
//! with an error, which resets it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, ResponseBody, StreamError};
use crate::fleet::now_ns;

/// A response body handed to hyper's HTTP/2 server, given up when the
/// client takes nothing for `timeout` after a frame was handed over.
pub struct Watched {
    shared: Arc<Shared>,
    timeout: Duration,
    watching: bool,
}

struct Shared {
    /// The node's body; `None` once the watcher gave it up.
    body: Mutex<Option<ResponseBody>>,
    /// When a frame was last handed over (`now_ns`), while the stream waits
    /// for the client to take it; 0 while the body waits for the node, or
    /// has ended.
    handed_at: AtomicU64,
}

impl Watched {
    /// Watch `body` with `timeout` (`listener.send_timeout`).
    pub fn new(body: ResponseBody, timeout: Duration) -> Watched {
        Watched {
            shared: Arc::new(Shared {
                body: Mutex::new(Some(body)),
                handed_at: AtomicU64::new(0),
            }),
            timeout,
            watching: false,
        }
    }

    fn body(&self) -> std::sync::MutexGuard<'_, Option<ResponseBody>> {
        // Poisoned only if a poll panicked; the body is still the body.
        self.shared.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Body::poll_frame`] of the watched body.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = self.body();
        let Some(body) = guard.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(StreamError(
                "the client took no data for the send timeout".into(),
            )))));
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        let more = matches!(polled, Poll::Ready(Some(Ok(_)))) && !body.is_end_stream();
        drop(guard);
        if more {
            self.shared
                .handed_at
                .store(now_ns().max(1), Ordering::Relaxed);
            if !self.watching {
                self.watching = true;
                tokio::spawn(watch(Arc::downgrade(&self.shared), self.timeout));
            }
        } else {
            self.shared.handed_at.store(0, Ordering::Relaxed);
        }
        polled
    }

    /// [`Body::is_end_stream`]: not once given up (an error is to come).
    pub fn is_end_stream(&self) -> bool {
        self.body().as_ref().is_some_and(|b| b.is_end_stream())
    }

    /// [`Body::size_hint`].
    pub fn size_hint(&self) -> SizeHint {
        self.body()
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// Give the body up once the client has taken nothing for `timeout` since
/// a frame was handed over; end when the body is gone.
async fn watch(shared: Weak<Shared>, timeout: Duration) {
    let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let handed_at = shared.handed_at.load(Ordering::Relaxed);
        if handed_at == 0 {
            // Waiting for the node (its own idle timer runs) or ended.
            wait = timeout;
            continue;
        }
        let waited = now_ns().saturating_sub(handed_at);
        if waited < limit {
            wait = Duration::from_nanos(limit - waited);
            continue;
        }
        let given_up = shared.body.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::debug!(
            waited_ms = waited / 1_000_000,
            "an HTTP/2 client took no data for the send timeout: its response is given up and its node let go"
        );
        // Dropped here, outside the lock: the node's slot and connection go.
        drop(given_up);
        return;
    }
}
