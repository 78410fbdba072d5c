//! The client side of a plain HTTP/1.1 connection, served by the
//! gateway's own code (as the node side is, `proxy::h1`): request heads
//! parsed out of one read buffer, the request's future polled by the
//! connection's task, the response written from that task, the head and a
//! small body in one write. hyper's server cost a third of a small
//! POST's instructions (its dispatcher, a body channel, a second buffer);
//! TLS and HTTP/2 connections stay with hyper (`proxy::worker`).
//!
//! What it keeps from hyper's behaviour: keep-alive by version and
//! `Connection`, pipelined requests answered in order, `100 Continue` when
//! the body is first read, 400/431/501 and a close for heads it cannot
//! read, a request cancelled when its client closes the connection, no
//! body for HEAD, 1xx, 204 and 304, chunked responses to HTTP/1.1 clients
//! when the length is unknown (to the close for HTTP/1.0), a `Date`.
//! Deadlines: the first request's head must be complete within
//! `listener.header_timeout` of the accept; a later one must start within
//! `listener.idle_timeout` of the last response and be complete within
//! `header_timeout` of its first byte. Read and write buffers go back to
//! the thread after each response and a connection waits for its next
//! request without one, so idle connections and long streams cost little;
//! one idle for [`PARK_AFTER`] is counted as *parked* (the telemetry's
//! name from when hyper's buffers were given back only then).

pub mod body;
pub mod head;

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::body::{BodyEnd, ClientBody, InBody, Shared};
use self::head::{ConnectionHeader, HeadError, ResponseFraming};
use super::body::ResponseBody;
use super::drain::{Drain, Drained};
use super::kept_box::KeptBox;
use super::spare::{self, Role};
use super::{forward, Gateway};
use crate::clock::Deadline;

/// How long a connection sits without a request before it counts as
/// parked (`infergate_client_connections_parked`): longer than the gap
/// between a busy client's requests.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Reads of a request head are at least this large.
const READ_SIZE: usize = 4 * 1024;
/// Response data up to this size is copied behind the head or chunk line
/// (one write); larger pieces are written from where they are.
const COPY_UP_TO: usize = 8 * 1024;
/// Response bytes buffered before the body is asked for more.
const WRITE_HIGH: usize = 64 * 1024;
/// After a response that leaves part of a request body unread, the
/// connection reads and drops at most this much for at most
/// [`LINGER_FOR`] before it closes, so the client sees the answer rather
/// than a reset.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_FOR: Duration = Duration::from_secs(1);

/// The listener's limits a connection needs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `listener.header_timeout`.
    pub header_timeout: Duration,
    /// `listener.idle_timeout`.
    pub idle_timeout: Duration,
    /// `listener.send_timeout`.
    pub send_timeout: Duration,
    /// Longest request head (`listener.max_header_bytes`, at least 8 KB).
    pub max_head: usize,
}

/// Serve the requests of a plain HTTP/1.1 connection accepted at
/// `accepted` until it closes.
pub async fn serve(
    stream: TcpStream,
    accepted: Instant,
    peer: SocketAddr,
    limits: Limits,
    gateway: Arc<Gateway>,
    draining: Arc<Drain>,
) {
    // Taken apart: what is only needed now is not held for as long as the
    // connection is open.
    let Limits {
        header_timeout,
        idle_timeout,
        send_timeout,
        max_head,
    } = limits;
    let (reader, writer) = stream.into_split();
    let mut conn = Connection {
        shared: Arc::new(Shared::new(reader, send_timeout)),
        writer,
        read: BytesMut::new(),
        out: BytesMut::new(),
        pieces: Vec::new(),
        body_reading: false,
        send_stalled: false,
        timer: Deadline::new(accepted + header_timeout),
    };
    let drained = draining.wait();
    tokio::pin!(drained);
    let mut parked = Parked(None);
    let mut first = true;
    loop {
        // The next request's first bytes.
        if conn.read.is_empty() {
            let now = Instant::from_std(crate::clock::now());
            let until = if first {
                accepted + header_timeout
            } else {
                now + idle_timeout
            };
            if !conn
                .wait_for_bytes(now, until, !first, drained.as_mut(), &gateway, &mut parked)
                .await
            {
                return conn.close(false).await;
            }
        }
        // The head's deadline: the connection's first within
        // `header_timeout` of the accept, a later one from when it began
        // to arrive (the clock is read only if the head is not whole in
        // the first bytes, see `read_head`).
        let head_until = if first {
            HeadDeadline::At(accepted + header_timeout)
        } else {
            HeadDeadline::After(header_timeout)
        };
        first = false;
        let head = match conn.read_head(head_until, max_head).await {
            Ok(Some(head)) => head,
            Ok(None) => return conn.close(false).await,
            Err(refused) => {
                tracing::debug!(%peer, why = refused.why, "refused a request head");
                head::encode_refusal(refused, &mut conn.out);
                let _ = conn.flush().await;
                // The client may be sending a body after the head.
                return conn.close(true).await;
            }
        };
        // The request's start, read once: its latency, its body's
        // deadline and, when the body is at hand, its first attempt
        // (pick, pool, total deadline) count from here.
        let arrived = Instant::from_std(crate::clock::now());
        // Boxed (made holding its arguments, written into its box in
        // place, `boxed_in_place`; the rest made on the first poll): a
        // connection's task is as large as its largest
        // state for as long as it is open, and a request's state is twice
        // the rest of the connection's (2.2 KB per connection with it
        // inline; 15,000 idle connections 7.7 KB each, `bench/scale.sh`).
        let conn_ = &mut conn;
        let (gateway_, draining_) = (&gateway, &draining);
        let exchange = crate::proxy::boxed_in_place(move || async move {
            conn_
                .exchange(head, arrived, peer, gateway_, draining_)
                .await
        });
        match exchange.await {
            Next::Request => {}
            Next::Close { linger } => return conn.close(linger).await,
            Next::Gone => return,
        }
    }
}

/// What a connection does after a request.
enum Next {
    /// Read the next request.
    Request,
    /// Close (`linger`: the client may still be sending a body).
    Close { linger: bool },
    /// The client went away.
    Gone,
}

/// Whether a response's own headers ask to close the connection.
fn says_close(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| crate::proxy::h1::codec::connection_tokens(v.as_bytes()).close)
}

/// One client connection's state between its requests.
struct Connection {
    shared: Arc<Shared>,
    /// The client socket's write side (only the connection writes, but
    /// for a `100 Continue`).
    writer: OwnedWriteHalf,
    /// Bytes read from the client and not yet parsed.
    read: BytesMut,
    /// Response bytes not yet written (after `pieces`).
    out: BytesMut,
    /// Response pieces written from where they are, before `out`.
    pieces: Vec<Bytes>,
    /// The request's body is out being read (it reads the socket, so the
    /// connection does not).
    body_reading: bool,
    /// A write is waiting for the client, and `timer` is set to when
    /// it gives up (`Shared::send_timeout` after the last write that went
    /// through).
    send_stalled: bool,
    timer: Deadline,
}

/// When a request head must be whole.
#[derive(Clone, Copy)]
enum HeadDeadline {
    /// By this instant.
    At(Instant),
    /// Within this long of the first wait for more of it (a head that
    /// came whole in its first bytes needs no clock read).
    After(Duration),
}

impl Connection {
    /// Answer one request: its handler run, its response written.
    async fn exchange(
        &mut self,
        head: head::RequestHead,
        arrived: Instant,
        peer: SocketAddr,
        gateway: &Arc<Gateway>,
        draining: &Drain,
    ) -> Next {
        let head::RequestHead {
            method,
            uri,
            version,
            lines,
            body: framing,
            keep_alive: client_keep_alive,
            expect_continue,
        } = head;
        let head_request = method == Method::HEAD;
        let http11 = version == Version::HTTP_11;
        let body = if framing.is_done() {
            ClientBody::Empty
        } else {
            self.shared.responded.store(false, Relaxed);
            self.body_reading = true;
            // The whole buffer, its room too: the body is read into it,
            // and it comes back at the body's end with what follows.
            ClientBody::Own(InBody::new(
                Arc::clone(&self.shared),
                std::mem::take(&mut self.read),
                framing,
                expect_continue,
            ))
        };
        // Borrowed, not cloned: the handler ends before this exchange
        // does, and a count on the gateway's `Arc` is a cache line both
        // workers write for every request.
        let gateway: &Gateway = gateway;
        // Boxed: the connection's own future stays small for as long as
        // it is open; the request's (kilobytes) exists only while it runs.
        // The box is made holding the arguments only, and the request's
        // future is made inside it on the first poll: made first and moved
        // in, it would be copied (callgrind: +13k instructions of memcpy
        // per small POST when the whole exchange was boxed that way), and
        // the box is written in place (`KeptBox::new`), in a block its
        // thread kept from an earlier request (`kept_box`). The
        // request is put together in there too: its empty header map
        // would otherwise take room in every connection's task.
        let handler = KeptBox::new(move || async move {
            let mut request = Request::new(body);
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.version_mut() = version;
            forward::handle(gateway, peer, request, Some(lines), arrived.into_std()).await
        });
        let Some(response) = self.respond_to(handler).await else {
            // The client went away; its request is cancelled.
            return Next::Gone;
        };
        let keep_alive = client_keep_alive
            && !draining.is_draining()
            && !says_close(response.headers())
            && !self.body_left_unread();
        let reusable = self
            .write_response(
                response,
                head_request,
                http11,
                keep_alive,
                client_keep_alive,
            )
            .await;
        if !reusable || self.body_left_unread() {
            return Next::Close {
                linger: self.body_reading,
            };
        }
        // Buffers go back to the thread between requests (an idle
        // connection holds none; the next request, here or on another
        // connection, takes one back without a `malloc`).
        if self.read.is_empty() {
            spare::give_back(Role::Read, std::mem::take(&mut self.read));
        }
        spare::give_back(Role::Write, std::mem::take(&mut self.out));
        Next::Request
    }

    /// Wait for the client's next bytes until `until`, parking after
    /// [`PARK_AFTER`] from `now` (`may_park`: after a first request). False:
    /// the client closed, the deadline passed or the drain started.
    async fn wait_for_bytes(
        &mut self,
        now: Instant,
        until: Instant,
        may_park: bool,
        mut drained: Pin<&mut Drained<'_>>,
        gateway: &Arc<Gateway>,
        parked: &mut Parked,
    ) -> bool {
        let park_at = now + PARK_AFTER;
        let mut parking = may_park && park_at < until;
        self.timer.set(if parking { park_at } else { until });
        let read = poll_fn(|cx| loop {
            if drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(0));
            }
            // No buffer is taken before the client has sent something:
            // an idle connection holds none (reading into one it took
            // while waiting held 4 KB per idle connection).
            if self.read.capacity() > 0 || self.shared.poll_read_ready(cx).is_ready() {
                if let Poll::Ready(result) = self.poll_read(cx) {
                    return Poll::Ready(result);
                }
            }
            if !self.timer.poll_expired(cx) {
                return Poll::Pending;
            }
            if !parking {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            // Idle for a while: counted as parked (its buffers went back
            // to the thread when its last response was written).
            parking = false;
            *parked = Parked::start(gateway);
            self.timer.set(until);
        })
        .await;
        parked.end();
        matches!(read, Ok(n) if n > 0)
    }

    /// Read what the client sent into `read`; `Ok(0)`: it closed.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() == 0 {
            self.read = spare::take(Role::Read);
        }
        self.shared.poll_read(cx, &mut self.read, READ_SIZE)
    }

    /// Read what the client sends next, waiting until `until` at most
    /// (then `TimedOut`); `Ok(0)`: it closed.
    async fn read_by(&mut self, until: Instant) -> io::Result<usize> {
        self.timer.set(until);
        poll_fn(|cx| match self.poll_read(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending if self.timer.poll_expired(cx) => {
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// Read until a whole request head has arrived, within `until` and
    /// `max_head` bytes. `Ok(None)`: the client closed, or the deadline
    /// passed (closed without an answer, as hyper and nginx do).
    async fn read_head(
        &mut self,
        mut until: HeadDeadline,
        max_head: usize,
    ) -> Result<Option<head::RequestHead>, HeadError> {
        loop {
            if let Some(head) = head::parse_request(&mut self.read)? {
                return Ok(Some(head));
            }
            if self.read.len() >= max_head {
                return Err(HeadError {
                    status: http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    why: "request head too large",
                });
            }
            let at = match until {
                HeadDeadline::At(at) => at,
                HeadDeadline::After(within) => {
                    let at = Instant::now() + within;
                    until = HeadDeadline::At(at);
                    at
                }
            };
            if !matches!(self.read_by(at).await, Ok(n) if n > 0) {
                return Ok(None);
            }
        }
    }

    /// Run a request's handler to its response while watching for the
    /// client going away. `None`: it went away (the handler is dropped,
    /// which cancels the request).
    async fn respond_to<F>(&mut self, mut handler: KeptBox<F>) -> Option<Response<ResponseBody>>
    where
        F: Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>>,
    {
        poll_fn(|cx| {
            if let Poll::Ready(Ok(response)) = Pin::new(&mut handler).poll(cx) {
                return Poll::Ready(Some(response));
            }
            if self.client_gone(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the client closed its side while a request is being
    /// answered (hyper's check, and its limits: not while the request body
    /// is still being read, which sees the close itself, and not once the
    /// client sent more, a pipelined request).
    fn client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if self.body_left_unread() {
            return false;
        }
        if !self.read.is_empty() {
            return false;
        }
        // Into a small buffer on the stack: a connection answering a long
        // stream holds no read buffer just to notice its client leave.
        // Not zeroed: the reader only writes into it.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        let mut probe = ReadBuf::uninit(&mut probe);
        match self.shared.poll_read_into(cx, &mut probe) {
            Poll::Ready(Ok(())) if probe.filled().is_empty() => true,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                // The next request, pipelined: kept for later.
                self.read = spare::take(Role::Read);
                self.read.extend_from_slice(probe.filled());
                false
            }
            Poll::Pending => false,
        }
    }

    /// Whether the request's body is still out or was left unread (then
    /// the connection cannot read the next request); once it has ended,
    /// takes the bytes read past it back.
    fn body_left_unread(&mut self) -> bool {
        if !self.body_reading {
            return false;
        }
        match self.shared.take_body_end() {
            BodyEnd::Done(rest) => {
                self.read = rest;
                self.body_reading = false;
                false
            }
            BodyEnd::Reading | BodyEnd::Abandoned => true,
        }
    }

    /// Write `response`; whether the connection may serve another request
    /// after it (it was framed and sent whole, and `keep_alive`).
    async fn write_response(
        &mut self,
        response: Response<ResponseBody>,
        head_request: bool,
        http11: bool,
        keep_alive: bool,
        client_keep_alive: bool,
    ) -> bool {
        let (parts, mut body) = response.into_parts();
        // A node's header lines are written as they came; taken out of the
        // body here so that a stream does not keep the head's bytes (a
        // share of its connection's read buffer) alive.
        let node_headers = body.take_node_headers();
        // Frames are queued and written together here already.
        let mut body = body.unmerged();
        let framing = ResponseFraming::choose(
            parts.status,
            &parts.headers,
            node_headers.as_ref(),
            body.size_hint().exact(),
            head_request,
            http11,
        );
        let keep_alive = keep_alive && framing != ResponseFraming::ToClose;
        let connection = match (keep_alive, http11) {
            (true, true) => ConnectionHeader::None,
            (true, false) => ConnectionHeader::KeepAlive,
            // Only said to a client that meant to keep the connection.
            (false, _) if client_keep_alive => ConnectionHeader::Close,
            (false, _) => ConnectionHeader::None,
        };
        self.shared.responded.store(true, Relaxed);
        if self.out.capacity() == 0 {
            self.out = spare::take(Role::Write);
        }
        head::encode_response(
            parts.status,
            &parts.headers,
            node_headers.as_ref(),
            framing,
            connection,
            &mut self.out,
        );
        drop(node_headers);
        spare::give_back_headers(parts.headers);
        let whole = if framing.has_body() {
            let mut sent = BodySent::new(framing);
            poll_fn(|cx| self.poll_body(cx, &mut body, &mut sent)).await
        } else {
            // Polled once: a node's empty body then gives its connection
            // back to the pool rather than being dropped unread.
            poll_fn(|cx| {
                let _ = Pin::new(&mut body).poll_frame(cx);
                Poll::Ready(())
            })
            .await;
            drop(body);
            self.flush().await.is_ok()
        };
        whole && keep_alive
    }

    /// Move the response body to the client: frames are queued as they
    /// come and written whenever the body has to wait (or a lot is
    /// queued). Ready(true): written whole.
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut ResponseBody,
        sent: &mut BodySent,
    ) -> Poll<bool> {
        loop {
            if self.queued() >= WRITE_HIGH {
                match self.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => return self.pending_unless_gone(cx),
                }
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !sent.queue(data, self) {
                            // More than the declared length: the rest
                            // would be read as the next response.
                            return Poll::Ready(false);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "response body failed; closing the connection");
                    // What was queued still goes out; the body is cut.
                    let _ = ready!(self.poll_flush(cx));
                    return Poll::Ready(false);
                }
                Poll::Ready(None) => {
                    let whole = sent.finish(self);
                    return match ready!(self.poll_flush(cx)) {
                        Ok(()) => Poll::Ready(whole),
                        Err(_) => Poll::Ready(false),
                    };
                }
                Poll::Pending => {
                    if let Poll::Ready(Err(_)) = self.poll_flush(cx) {
                        return Poll::Ready(false);
                    }
                    return self.pending_unless_gone(cx);
                }
            }
        }
    }

    /// Pending, unless the client has closed its side (then the response
    /// is abandoned, freeing its node at once, as hyper does).
    fn pending_unless_gone(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.client_gone(cx) {
            return Poll::Ready(false);
        }
        Poll::Pending
    }

    /// Queue `data` to be written after what is queued.
    fn queue(&mut self, data: Bytes) {
        if data.len() <= COPY_UP_TO {
            self.out.extend_from_slice(&data);
        } else {
            if !self.out.is_empty() {
                self.pieces.push(self.out.split().freeze());
            }
            self.pieces.push(data);
        }
    }

    /// Bytes queued to be written.
    fn queued(&self) -> usize {
        self.out.len() + self.pieces.iter().map(Bytes::len).sum::<usize>()
    }

    /// Write what is queued.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() || !self.pieces.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); 16];
                let mut count = 0;
                for piece in self.pieces.iter().take(slices.len()) {
                    slices[count] = IoSlice::new(piece);
                    count += 1;
                }
                // `out` comes after every piece.
                if count == self.pieces.len() && count < slices.len() && !self.out.is_empty() {
                    slices[count] = IoSlice::new(&self.out);
                    count += 1;
                }
                match Pin::new(&mut self.writer).poll_write_vectored(cx, &slices[..count]) {
                    Poll::Pending => return self.send_pending(cx),
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            };
            self.send_stalled = false;
            self.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// A write must wait for the client to take more: it may for
    /// `send_timeout` from the last write that went through (as nginx's
    /// `send_timeout`), then the response is given up (`TimedOut`), which
    /// ends the request and frees its node. Costs nothing while writes go
    /// through at once.
    fn send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.send_stalled {
            self.send_stalled = true;
            self.timer.set(Instant::now() + self.shared.send_timeout);
        }
        if self.timer.poll_expired(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    /// Drop `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.pieces.first_mut() {
                Some(piece) if piece.len() <= n => {
                    n -= piece.len();
                    self.pieces.remove(0);
                }
                Some(piece) => {
                    piece.advance(n);
                    return;
                }
                None => {
                    self.out.advance(n);
                    return;
                }
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Close the connection. If the client may still be sending
    /// (`linger`: a body left unread), its bytes are read and dropped for
    /// a moment first: closing with unread bytes makes the kernel send a
    /// reset, which can reach the client before it has read the answer.
    async fn close(mut self, linger: bool) {
        if !linger {
            return;
        }
        let _ = self.writer.shutdown().await;
        let until = Instant::now() + LINGER_FOR;
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            self.read.clear();
            match self.read_by(until).await {
                Ok(n) if n > 0 => dropped += n,
                _ => break,
            }
        }
    }
}

/// How much of a response body has been framed and queued.
struct BodySent {
    framing: ResponseFraming,
    /// Bytes left of a declared length.
    left: u64,
}

impl BodySent {
    fn new(framing: ResponseFraming) -> BodySent {
        let left = match framing {
            ResponseFraming::Length(n) | ResponseFraming::LengthHeader(n) => n,
            _ => 0,
        };
        BodySent { framing, left }
    }

    /// Frame and queue one piece of data; false if it overruns the length.
    fn queue(&mut self, data: Bytes, conn: &mut Connection) -> bool {
        if data.is_empty() {
            return true;
        }
        match self.framing {
            ResponseFraming::Length(_) | ResponseFraming::LengthHeader(_) => {
                let len = data.len() as u64;
                if len > self.left {
                    let fits = self.left as usize;
                    conn.queue(data.slice(..fits));
                    self.left = 0;
                    return false;
                }
                self.left -= len;
                conn.queue(data);
            }
            ResponseFraming::Chunked => {
                let mut line = [0u8; 18];
                let size = crate::proxy::h1::codec::chunk_size_line(data.len(), &mut line);
                conn.out.put_slice(size);
                conn.queue(data);
                conn.out.put_slice(b"\r\n");
            }
            ResponseFraming::ToClose => conn.queue(data),
            ResponseFraming::NoBody => {}
        }
        true
    }

    /// The body ended: the last chunk; whether it was whole.
    fn finish(&mut self, conn: &mut Connection) -> bool {
        match self.framing {
            ResponseFraming::Chunked => {
                conn.out.put_slice(b"0\r\n\r\n");
                true
            }
            ResponseFraming::Length(_) | ResponseFraming::LengthHeader(_) => self.left == 0,
            ResponseFraming::ToClose | ResponseFraming::NoBody => true,
        }
    }
}

/// Counts a connection as parked in the telemetry while it is.
struct Parked(Option<Arc<Gateway>>);

impl Parked {
    fn start(gateway: &Arc<Gateway>) -> Parked {
        let counts = &gateway.telemetry.parked;
        counts.now.fetch_add(1, Relaxed);
        counts.total.fetch_add(1, Relaxed);
        Parked(Some(Arc::clone(gateway)))
    }

    fn end(&mut self) {
        if let Some(gateway) = self.0.take() {
            gateway.telemetry.parked.now.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests;
