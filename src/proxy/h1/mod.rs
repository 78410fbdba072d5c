//! One HTTP/1.1 connection to a node, driven by the task of the request
//! it carries: the request written, the response head read and parsed,
//! then the body read straight out of the connection's buffer as the
//! client takes it. No task, no channel and no second buffer sit between
//! the node's socket and the client's (Pingora's design; what hyper's
//! client connection cost, measured, is in docs/data-path.md).
//!
//! The byte-level rules are in [`codec`]; keeping connections between
//! requests is `upstream`'s job.

pub mod codec;
pub mod node_headers;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::spare::{self, Role};
use crate::header_lines::HeaderLines;
use codec::{BodyFraming, CodecError, Decoded, Head, RequestFraming};

/// How a node connection's bytes travel: TCP, or TLS over TCP.
pub type Io = hyper_util::rt::TokioIo<
    hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>,
>;

/// Error type of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as it goes to a node.
pub enum OutBody {
    /// Bytes at hand (an inference request read to classify it): written
    /// with the head, in one write when small.
    Full(Bytes),
    /// The client's stream, written as it comes.
    Stream(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

/// Reads are at least this large (the buffer is reused in place once the
/// client has taken what was read before).
const READ_MIN: usize = 4 * 1024;
/// Reads grow up to this while the node fills every read (a large body);
/// also the largest response head accepted.
pub const READ_MAX: usize = 32 * 1024;
/// Buffered request bodies up to this size are copied behind the head, so
/// head and body leave in one write.
const COPY_BODY_UP_TO: usize = 16 * 1024;

/// Why an exchange failed before the response head.
#[derive(Debug)]
pub struct ExchangeError {
    /// Nothing of the request was written: it may go out again on another
    /// connection.
    pub unsent: bool,
    /// What went wrong.
    pub error: BoxError,
}

impl ExchangeError {
    fn new(error: impl Into<BoxError>) -> ExchangeError {
        ExchangeError {
            unsent: false,
            error: error.into(),
        }
    }
}

/// A response head and what the connection can do after its body.
pub struct Answered {
    /// The parsed head (status, headers, body framing, keep-alive).
    pub head: Head,
    /// The request went out whole (else the connection cannot be reused).
    pub request_sent: bool,
}

/// An HTTP/1.1 connection to a node.
pub struct Conn {
    io: Io,
    /// Bytes read from the node and not yet handed on.
    read: BytesMut,
    /// The size of the next read's room ([`READ_MIN`]..=[`READ_MAX`]).
    read_size: usize,
}

impl Conn {
    /// A connection over `io`, nothing exchanged yet.
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            read: BytesMut::new(),
            read_size: READ_MIN,
        }
    }

    /// Send `request`, with the `shared` headers after its own, and read
    /// the response head. The request body is written while the head is
    /// awaited: a node may answer before it has read it all (then the
    /// connection is not reused).
    pub async fn exchange(
        &mut self,
        request: &mut Request<OutBody>,
        shared: &HeaderMap,
        lines: Option<&HeaderLines>,
    ) -> Result<Answered, ExchangeError> {
        // Write buffers come from the thread (`proxy::spare`): no buffer is
        // held by every connection (a streaming response keeps its
        // connection for minutes), and none is allocated per request.
        let mut writer = Writer::new(request, shared, lines, spare::take(Role::Write));
        let method = request.method().clone();
        let mut body = match request.body_mut() {
            OutBody::Stream(body) => Some(body),
            OutBody::Full(_) => None,
        };
        // Parse only when bytes came since the last try: most polls find
        // nothing new, and a failed parse is not free.
        let mut unparsed = !self.read.is_empty();
        let answered = poll_fn(|cx| {
            if !writer.done {
                if let Poll::Ready(Err(e)) = writer.poll(&mut self.io, body.as_deref_mut(), cx) {
                    return Poll::Ready(Err(ExchangeError {
                        unsent: writer.written == 0,
                        error: e,
                    }));
                }
            }
            loop {
                let parsed = if unparsed {
                    unparsed = false;
                    codec::parse_head(&mut self.read, &method)
                } else {
                    Ok(None)
                };
                match parsed {
                    Ok(Some(head)) => {
                        return Poll::Ready(Ok(Answered {
                            head,
                            request_sent: writer.done,
                        }))
                    }
                    Ok(None) if self.read.len() >= READ_MAX => {
                        return Poll::Ready(Err(ExchangeError::new(CodecError(
                            "response head too large",
                        ))))
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(ExchangeError::new(e))),
                }
                match self.poll_read(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(ExchangeError::new(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "node closed the connection before the response head",
                        ))))
                    }
                    Poll::Ready(Ok(_)) => unparsed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::new(e))),
                }
            }
        })
        .await;
        if writer.done {
            spare::give_back(Role::Write, writer.out);
        }
        answered
    }

    /// The next piece of a response body framed by `framing`. `None` at
    /// its end; after a piece, the end is also known as soon as it is in
    /// the buffer (`framing.is_done()`), without another poll.
    pub fn poll_body(
        &mut self,
        framing: &mut BodyFraming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            match framing.decode(&mut self.read) {
                Ok(Decoded::Data(data)) => {
                    if let Err(e) = framing.settle(&mut self.read) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match self.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if *framing == BodyFraming::ToClose => {
                    *framing = BodyFraming::Empty;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "node closed the connection mid-body",
                    )))))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
        }
    }

    /// Nothing is left over from the last exchange (bytes after a body's
    /// end would be a node out of step with its own framing).
    pub fn is_clean(&self) -> bool {
        self.read.is_empty()
    }

    /// Whether an idle connection is still open: the node has neither
    /// closed it nor sent anything. Costs no system call while the socket
    /// has not become readable (tokio keeps its readiness).
    pub fn is_open_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Ready means a close, an error, or bytes nobody asked for.
        self.poll_read(&mut cx).is_pending()
    }

    /// Let go of a large read buffer before the connection idles (the
    /// buffer of a big body is not kept for every idle connection).
    pub fn trim(&mut self) {
        if self.read.is_empty() && self.read.capacity() > READ_MIN * 2 {
            self.read = BytesMut::new();
            self.read_size = READ_MIN;
        }
    }

    /// Read what the node has sent into the buffer's free room.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_MIN / 4 {
            // Reclaims the buffer in place once what was read before has
            // been taken and dropped.
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        let poll = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read);
        if let Poll::Ready(Ok(n)) = poll {
            // Grow the reads while the node fills them, shrink them back
            // when it does not.
            self.read_size = if n == room {
                (self.read_size * 2).min(READ_MAX)
            } else {
                READ_MIN.max(self.read_size / 2)
            };
        }
        poll
    }
}

/// Writes a request: head and buffered body, or head then the client's
/// stream (with its framing).
struct Writer {
    /// Bytes to write next.
    out: BytesMut,
    /// Then these (a buffered body too large to copy behind the head).
    tail: Bytes,
    framing: RequestFraming,
    /// A streamed body has ended (its framing's end is in `out`).
    body_ended: bool,
    /// Everything was written.
    done: bool,
    /// Bytes written so far.
    written: usize,
}

impl Writer {
    fn new(
        request: &Request<OutBody>,
        shared: &HeaderMap,
        lines: Option<&HeaderLines>,
        mut out: BytesMut,
    ) -> Writer {
        let headers = [request.headers(), shared];
        let method = request.method();
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        // Looked up only where the framing depends on it.
        let has_length = || {
            lines.is_some_and(HeaderLines::has_length)
                || headers
                    .iter()
                    .any(|map| map.contains_key(http::header::CONTENT_LENGTH))
        };
        out.clear();
        let mut tail = Bytes::new();
        let (framing, body_ended) = match request.body() {
            OutBody::Full(bytes) => {
                let framing = if bytes.is_empty() && !expects_body(method) && !has_length() {
                    RequestFraming::None
                } else {
                    RequestFraming::Length(bytes.len() as u64)
                };
                // The length is the bytes' own: a client's header saying
                // otherwise is not passed on.
                let copied = bytes.len() <= COPY_BODY_UP_TO;
                let room = if copied { bytes.len() } else { 0 };
                codec::encode_head(method, path, headers, lines, framing, room, &mut out);
                if copied {
                    out.extend_from_slice(bytes);
                } else {
                    tail = bytes.clone();
                }
                (framing, true)
            }
            OutBody::Stream(body) => {
                let framing = if has_length() {
                    RequestFraming::LengthHeader
                } else if body.is_end_stream() && !expects_body(method) {
                    RequestFraming::None
                } else {
                    RequestFraming::Chunked
                };
                codec::encode_head(method, path, headers, lines, framing, 0, &mut out);
                (
                    framing,
                    body.is_end_stream() && framing != RequestFraming::Chunked,
                )
            }
        };
        Writer {
            out,
            tail,
            framing,
            body_ended,
            done: false,
            written: 0,
        }
    }

    /// Write what there is; take the streamed body's next frame when all
    /// before it is out. Ready(Ok) once the whole request is written.
    fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        mut body: Option<&mut http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            while !self.out.is_empty() || !self.tail.is_empty() {
                let slices = [io::IoSlice::new(&self.out), io::IoSlice::new(&self.tail)];
                let n = match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Box::new(io::Error::from(
                            io::ErrorKind::WriteZero,
                        ))))
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Box::new(e))),
                };
                self.written += n;
                let from_out = n.min(self.out.len());
                bytes::Buf::advance(&mut self.out, from_out);
                bytes::Buf::advance(&mut self.tail, n - from_out);
            }
            if self.body_ended {
                // TLS may hold records it could not write yet: the request
                // is out only once they are.
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Box::new(e))),
                    Poll::Ready(Ok(())) => {}
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let Some(body) = body.as_deref_mut() else {
                self.body_ended = true;
                continue;
            };
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                        return Poll::Ready(Err(Box::new(e)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers of a client's upload are not passed on.
                    if let Ok(data) = frame.into_data() {
                        if self.framing == RequestFraming::Chunked {
                            if !data.is_empty() {
                                codec::encode_chunk(&data, &mut self.out);
                            }
                        } else {
                            self.tail = data;
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    if self.framing == RequestFraming::Chunked {
                        self.out.extend_from_slice(codec::LAST_CHUNK);
                    }
                    self.body_ended = true;
                }
            }
        }
    }
}

/// Methods whose requests carry a body by their meaning: an empty one is
/// sent as `content-length: 0` (as hyper does).
fn expects_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every write; its flush is pending a number of times first, as
    /// TLS's is while it holds records the socket had no room for.
    struct SlowFlush {
        written: Vec<u8>,
        pending_flushes: usize,
    }

    impl AsyncWrite for SlowFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.pending_flushes > 0 {
                self.pending_flushes -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_request_is_written_only_once_the_connection_flushed() {
        let body = Bytes::from(vec![b'x'; 3 * COPY_BODY_UP_TO]);
        let request = Request::post("/v1/completions")
            .body(OutBody::Full(body))
            .unwrap();
        let mut writer = Writer::new(&request, &HeaderMap::new(), None, BytesMut::new());
        let mut io = SlowFlush {
            written: Vec::new(),
            pending_flushes: 2,
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..2 {
            assert!(writer.poll(&mut io, None, &mut cx).is_pending());
            assert!(!writer.done, "done while the flush was pending");
        }
        assert!(matches!(
            writer.poll(&mut io, None, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(writer.done);
        assert_eq!(writer.written, io.written.len());
        assert!(io.written.ends_with(&[b'x'; 64]));
    }
}
