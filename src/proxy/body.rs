//! The response body the gateway sends to clients.
//!
//! Either a small body the gateway made itself, or a node's response passed
//! through as it arrives: nothing is held back, each chunk (an SSE event, a
//! JSON fragment) is handed to the client as soon as it is read; chunks the
//! node sent faster than they were taken go out together, in one write
//! (nginx with `proxy_buffering off` does the same). The pass-through
//! enforces the idle and total timeouts, releases the node's in-flight slot
//! the moment the stream ends, and, when a node fails mid-stream on an SSE
//! response, sends a final `error` event before cutting the connection so a
//! streaming client learns why its stream stopped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::h1::node_headers::NodeHeaders;
use super::select::Slot;
use super::stall::Watched;
use super::upstream::NodeBody;
use crate::health::FailureKind;

/// Chunks already read from the node are merged into one frame for the
/// client up to this size (a larger first chunk passes as it is).
const MERGE_UP_TO: usize = 16 * 1024;
/// At most this many chunks are merged into one frame. They are held
/// until the merge is sized, so it is allocated once at its exact size: a
/// buffer grown chunk by chunk reallocated (and copied) about once per
/// merged chunk (8 % of a streamed chunk's instructions under callgrind).
const MERGE_MAX_CHUNKS: usize = 32;

/// What the node's body gave: a frame, the end, or a failure.
type NodeFrame = Option<Result<Frame<Bytes>, BoxError>>;

/// Error type of [`ResponseBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a pass-through stream was cut.
#[derive(Debug)]
pub struct StreamError(pub String);

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamError {}

/// Body of a response to a client.
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<Upstream>),
    /// A node's body on an HTTP/2 stream, given up if the client stops
    /// taking it ([`stall`](super::stall)).
    Watched(Watched),
}

/// Settings for passing a node's body through.
pub struct PassThrough {
    /// Longest silence between chunks.
    pub idle: Duration,
    /// Deadline for the whole exchange.
    pub deadline: Instant,
    /// The node's in-flight slot; released when the stream ends.
    pub slot: Slot,
    /// Send an SSE error event before cutting a failed stream.
    pub sse: bool,
    /// Tell outlier detection the node answered well once the body ends
    /// cleanly (not at the head: a stream the node then cuts is a failure,
    /// and a success at its head would reset the failure count each time).
    pub success_at_end: bool,
    /// Telemetry of this response (records when the body is dropped).
    pub telemetry: Option<crate::telemetry::Tracker>,
    /// The tenant's token charge, corrected by the response's usage when
    /// the body is dropped.
    pub budget: Option<crate::tenant::Charge>,
}

struct Upstream {
    /// The node's body; an HTTP/1.1 one gives its connection back to the
    /// pool itself when its end has been read.
    inner: NodeBody,
    idle: Duration,
    deadline: Instant,
    last_activity: Instant,
    /// Armed the first time the node has nothing ready: a body that is
    /// already complete (most small answers) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    slot: Option<Slot>,
    sse: bool,
    success_at_end: bool,
    /// What the node gave after the data merged into the last frame (its
    /// trailers, end or failure), for the next poll.
    held: Option<NodeFrame>,
    state: State,
    telemetry: Option<crate::telemetry::Tracker>,
    budget: Option<crate::tenant::Charge>,
    /// Merge the chunks already read into one frame (false where the
    /// consumer coalesces its writes itself).
    merge: bool,
}

enum State {
    Streaming,
    /// The SSE error event was handed over; yield once so hyper flushes it
    /// to the client before the error aborts the connection.
    Failing(StreamError),
    /// Flushed; the next poll returns the error.
    Failed(StreamError),
    Done,
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
        }
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
        }
    }

    /// Given up when the client takes nothing for `send_timeout` after a
    /// frame was handed over, for hyper's HTTP/2 streams, which poll a body
    /// only while the client's window has room (see [`stall`](super::stall)).
    /// Only a node's body is watched: the others hold no node.
    pub fn watched_for_stalls(self, send_timeout: Option<Duration>) -> ResponseBody {
        match (self.kind, send_timeout) {
            (Kind::Upstream(upstream), Some(timeout)) => ResponseBody {
                kind: Kind::Watched(Watched::new(
                    ResponseBody {
                        kind: Kind::Upstream(upstream),
                    },
                    timeout,
                )),
            },
            (kind, _) => ResponseBody { kind },
        }
    }

    /// Take out the node's header lines that were not parsed into the
    /// response's map (HTTP/1.1 nodes, see `h1::node_headers`): the
    /// client's HTTP/1.1 writes them as they are, hyper's connections get
    /// them in the map.
    pub fn take_node_headers(&mut self) -> Option<NodeHeaders> {
        match &mut self.kind {
            Kind::Upstream(upstream) => upstream.inner.take_node_headers(),
            _ => None,
        }
    }

    /// A node's body, passed through as it arrives.
    pub fn upstream(inner: NodeBody, settings: PassThrough) -> ResponseBody {
        let now = Instant::from_std(crate::clock::now());
        ResponseBody {
            kind: Kind::Upstream(Box::new(Upstream {
                inner,
                idle: settings.idle,
                deadline: settings.deadline,
                last_activity: now,
                timer: None,
                slot: Some(settings.slot),
                sse: settings.sse,
                held: None,
                success_at_end: settings.success_at_end,
                state: State::Streaming,
                telemetry: settings.telemetry,
                budget: settings.budget,
                merge: true,
            })),
        }
    }

    /// Hand a node's chunks over as they are read instead of merging what
    /// has arrived into one frame: for a consumer that queues frames and
    /// coalesces its own writes (the gateway's HTTP/1.1 server), where a
    /// merge would only copy the bytes once more.
    pub fn unmerged(mut self) -> ResponseBody {
        if let Kind::Upstream(upstream) = &mut self.kind {
            upstream.merge = false;
        }
        self
    }
}

impl Upstream {
    fn fail(
        &mut self,
        kind: FailureKind,
        why: String,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The node's body is left unread: dropped with this body, it closes
        // the connection rather than giving it back mid-response.
        if let Some(slot) = self.slot.take() {
            slot.failure(kind);
        }
        if let Some(t) = &mut self.telemetry {
            t.failed();
        }
        tracing::warn!(reason = %why, "response stream from node cut");
        let error = StreamError(why);
        if self.sse {
            let event = sse_error_event(&error.0);
            self.state = State::Failing(error);
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        self.state = State::Done;
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => return Poll::Ready(None),
            State::Failing(error) => {
                self.state = State::Failed(error);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::Failed(error) => return Poll::Ready(Some(Err(Box::new(error)))),
            State::Streaming => self.state = State::Streaming,
        }
        match self.poll_node(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // One clock reading per frame for all of its bookkeeping
                // (per poll: frames read together were read at one time).
                let now = Instant::from_std(crate::clock::now());
                self.last_activity = now;
                let now = now.into_std();
                if frame.is_data() {
                    if let Some(slot) = self.slot.as_mut() {
                        slot.on_data_frame(now);
                    }
                }
                if let (Some(b), Some(data)) = (&mut self.budget, frame.data_ref()) {
                    b.on_frame(data);
                }
                if let Some(t) = &mut self.telemetry {
                    if let Some(data) = frame.data_ref() {
                        t.on_frame(data, now);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        t.on_trailers(trailers);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => self.fail(
                FailureKind::StreamBroken,
                format!("node connection failed mid-response: {e}"),
            ),
            Poll::Ready(None) => {
                if let Some(slot) = self.slot.take() {
                    if self.success_at_end {
                        slot.success();
                    }
                }
                self.telemetry = None;
                self.budget = None;
                self.state = State::Done;
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                // The timer is moved only when it fires early, not on every
                // chunk: one timer reset per idle period instead of per frame.
                let (idle, deadline, last) = (self.idle, self.deadline, self.last_activity);
                let timer = match &mut self.timer {
                    Some(timer) if !timer.is_elapsed() => {
                        // Armed, not fired, and its waker is this task's (a
                        // body is only ever polled by its connection's
                        // task): nothing to do until data or the timer
                        // (no clock read).
                        return Poll::Pending;
                    }
                    Some(timer) => timer,
                    None => self.timer.insert(Box::pin(tokio::time::sleep_until(
                        (last + idle).min(deadline),
                    ))),
                };
                match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let now = Instant::now();
                        if now >= self.deadline {
                            return self.fail(
                                FailureKind::Timeout,
                                "total timeout reached while streaming".into(),
                            );
                        }
                        let idle_deadline = self.last_activity + self.idle;
                        if now >= idle_deadline {
                            return self.fail(
                                FailureKind::Timeout,
                                format!("no data from node for {:?}", self.idle),
                            );
                        }
                        timer.as_mut().reset(idle_deadline.min(self.deadline));
                    }
                }
            },
        }
    }
}

impl Upstream {
    /// The node's next frame: every data chunk read so far merged into one
    /// (up to [`MERGE_UP_TO`]), driving the node connection on the way.
    fn poll_node(&mut self, cx: &mut Context<'_>) -> Poll<NodeFrame> {
        if let Some(held) = self.held.take() {
            return Poll::Ready(held);
        }
        let first = match self.poll_chunk(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let mut data = match first.into_data() {
            Ok(data) => data,
            Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
        };
        if self.inner.is_end_stream() {
            // A sized body's last bytes: nothing can follow.
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if data.len() >= MERGE_UP_TO || !self.merge {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        // A second chunk already here: merge what has arrived.
        match self.poll_chunk(cx) {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(more) => data = self.merge(cx, data, more),
                Err(trailers) => self.held = Some(Some(Ok(trailers))),
            },
            // The end or a failure, after this data.
            Poll::Ready(next) => self.held = Some(next),
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// `first` and `second`, and every further chunk that has arrived (up
    /// to [`MERGE_UP_TO`] bytes, [`MERGE_MAX_CHUNKS`] chunks), in one
    /// buffer allocated at its exact size.
    fn merge(&mut self, cx: &mut Context<'_>, first: Bytes, second: Bytes) -> Bytes {
        let mut parts: [Bytes; MERGE_MAX_CHUNKS] = std::array::from_fn(|_| Bytes::new());
        let mut total = first.len() + second.len();
        parts[0] = second;
        let mut count = 1;
        while total < MERGE_UP_TO && count < MERGE_MAX_CHUNKS {
            match self.poll_chunk(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(more) => {
                        total += more.len();
                        parts[count] = more;
                        count += 1;
                    }
                    Err(trailers) => {
                        self.held = Some(Some(Ok(trailers)));
                        break;
                    }
                },
                // The end or a failure, after this data.
                Poll::Ready(next) => {
                    self.held = Some(next);
                    break;
                }
            }
        }
        let mut merged = BytesMut::with_capacity(total);
        merged.extend_from_slice(&first);
        for part in &parts[..count] {
            merged.extend_from_slice(part);
        }
        merged.freeze()
    }

    /// One chunk of the node's body (reading the node's socket on the
    /// way, with this task's waker).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<NodeFrame> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// An OpenAI-style error event for a stream that failed part-way.
fn sse_error_event(message: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": "upstream_stream_error" }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(upstream) => upstream.poll_frame(cx),
            Kind::Watched(watched) => watched.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(upstream) => match upstream.state {
                State::Streaming => upstream.held.is_none() && upstream.inner.is_end_stream(),
                State::Failing(_) | State::Failed(_) => false,
                State::Done => true,
            },
            Kind::Watched(watched) => watched.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(upstream) => match upstream.state {
                State::Streaming => upstream.inner.size_hint(),
                _ => SizeHint::default(),
            },
            Kind::Watched(watched) => watched.size_hint(),
        }
    }
}
