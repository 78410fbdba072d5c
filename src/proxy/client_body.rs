//! A client's request body streamed to a node, watched on the way.
//!
//! Bodies the gateway does not read first (uploads, KServe tensors,
//! catch-all routes) go to the node as they arrive. Two things about them
//! matter to the request path, and this wrapper reports both through a
//! [`BodyWatch`]:
//!
//! - **whether the body has been sent whole**: the first-byte timeout
//!   starts only then, so a slow upload is not a slow node;
//! - **whether it failed by the client's doing** (malformed chunked
//!   framing, over the size limit, the client going silent for the body
//!   timeout, or going away): the client gets a 4xx and the node is not
//!   blamed, so no client can eject a healthy node.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::LengthLimitError;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;

/// Where a watched body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Still arriving from the client.
    Sending,
    /// Sent whole.
    Sent,
    /// The client's body was bad or the client too slow.
    ClientFailed(ClientFault),
}

/// How a client failed its own request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Framing errors, or the client went away mid-body (400).
    Malformed,
    /// Over the route's body limit (413).
    TooLarge,
    /// Nothing arrived for the body timeout (408).
    TooSlow,
}

/// How the sending goes, for telling a slow client from a node that does
/// not take the body.
#[derive(Debug)]
struct Progress {
    /// The last poll waited for the client (not for the node).
    waiting_on_client: AtomicBool,
    /// When a chunk last went to the node.
    last_chunk: Mutex<Instant>,
}

/// The forwarding side's view of a watched body.
#[derive(Debug, Clone)]
pub struct BodyWatch(watch::Receiver<BodyState>, Arc<Progress>);

impl BodyWatch {
    /// The state now.
    pub fn state(&self) -> BodyState {
        *self.0.borrow()
    }

    /// Whether the node has stopped taking the body: the client has more to
    /// send (the last poll did not wait for it) yet no chunk went out for
    /// `stall`. A slow client is not a stalled node.
    pub fn node_stalled(&self, stall: Duration) -> bool {
        !self.1.waiting_on_client.load(Relaxed)
            && self
                .1
                .last_chunk
                .lock()
                .is_ok_and(|at| at.elapsed() >= stall)
    }

    /// Wait until the body is no longer being sent.
    pub async fn settled(&mut self) -> BodyState {
        let settled = self
            .0
            .wait_for(|s| *s != BodyState::Sending)
            .await
            .map(|state| *state);
        match settled {
            Ok(state) => state,
            // The body was dropped unfinished (the attempt ended): it will
            // not settle any more.
            Err(_) => std::future::pending().await,
        }
    }
}

/// A request body passed through with a watch on it.
pub struct WatchedBody<B> {
    inner: B,
    state: watch::Sender<BodyState>,
    progress: Arc<Progress>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<B> WatchedBody<B> {
    /// Watch `inner`; `idle` is the longest the client may pause between
    /// chunks.
    pub fn new(inner: B, idle: Duration) -> (WatchedBody<B>, BodyWatch) {
        let (state, watch) = watch::channel(BodyState::Sending);
        let progress = Arc::new(Progress {
            waiting_on_client: AtomicBool::new(false),
            last_chunk: Mutex::new(Instant::now()),
        });
        let body = WatchedBody {
            inner,
            state,
            progress: Arc::clone(&progress),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        };
        (body, BodyWatch(watch, progress))
    }

    fn settle(&self, state: BodyState) {
        self.state.send_replace(state);
    }
}

/// The error handed to the node's connection when the client failed.
#[derive(Debug)]
struct ClientBodyError(&'static str);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ClientBodyError {}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.progress
            .waiting_on_client
            .store(polled.is_pending(), Relaxed);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if let Ok(mut at) = this.progress.last_chunk.lock() {
                    *at = now;
                }
                this.timer.as_mut().reset(now + this.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                let fault = if e.downcast_ref::<LengthLimitError>().is_some() {
                    ClientFault::TooLarge
                } else {
                    ClientFault::Malformed
                };
                this.settle(BodyState::ClientFailed(fault));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.settle(BodyState::Sent);
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.settle(BodyState::ClientFailed(ClientFault::TooSlow));
                    Poll::Ready(Some(Err(Box::new(ClientBodyError(
                        "the client stopped sending its request body",
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, Limited, StreamBody};

    #[tokio::test]
    async fn a_whole_body_is_sent() {
        let (body, mut watch) =
            WatchedBody::new(Full::new(Bytes::from("abc")), Duration::from_secs(5));
        assert_eq!(watch.state(), BodyState::Sending);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "abc");
        assert_eq!(watch.settled().await, BodyState::Sent);
    }

    #[tokio::test]
    async fn over_the_limit_is_the_clients_fault() {
        let limited = Limited::new(Full::new(Bytes::from(vec![0u8; 100])), 10);
        let (body, watch) = WatchedBody::new(limited, Duration::from_secs(5));
        assert!(body.collect().await.is_err());
        assert_eq!(
            watch.state(),
            BodyState::ClientFailed(ClientFault::TooLarge)
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_the_clients_fault() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from("a"))),
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bad chunk size",
            )),
        ];
        let stream = StreamBody::new(futures_util::stream::iter(frames));
        let (body, watch) = WatchedBody::new(stream, Duration::from_secs(5));
        assert!(body.collect().await.is_err());
        assert_eq!(
            watch.state(),
            BodyState::ClientFailed(ClientFault::Malformed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_too_slow() {
        let stream = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let (body, mut watch) = WatchedBody::new(stream, Duration::from_millis(300));
        let started = Instant::now();
        assert!(body.collect().await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(
            watch.settled().await,
            BodyState::ClientFailed(ClientFault::TooSlow)
        );
    }
}
