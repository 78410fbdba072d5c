//! The client side of HTTP/1.1 as bytes: a request head parsed out of the
//! read buffer (`httparse`) with its body's framing, and a response head
//! written. No I/O here; `h1_server` reads and writes.
//!
//! The framing rules are RFC 9112's, as a proxy must apply them to what it
//! forwards: a `Transfer-Encoding` must end in `chunked` (else 400; another
//! coding before it, 501), and then wins over a `Content-Length`, which is
//! dropped; differing lengths are refused; HTTP/1.0 has no chunked bodies;
//! a request without either framing has no body.

use bytes::{BufMut, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};

use crate::ascii_case::eq_lower;
use crate::header_lines::{HeaderLines, LineKind};
use crate::proxy::headers::HOP_BY_HOP_NAMES;

use crate::proxy::h1::codec::{self, BodyFraming, Chunked};
use crate::proxy::h1::node_headers::NodeHeaders;

/// Most header lines in a request head (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// A parsed request head.
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The header lines as the client sent them.
    pub lines: HeaderLines,
    /// How the body is framed.
    pub body: BodyFraming,
    /// The client keeps the connection after the response.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Why a request head was refused: the status to answer with, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    /// 400, 431 or 501.
    pub status: StatusCode,
    /// What was wrong (for the log and the answer's text).
    pub why: &'static str,
}

fn bad(why: &'static str) -> HeadError {
    HeadError {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

/// Parse a request head from the start of `buf`, taking its bytes out of
/// `buf`. `Ok(None)`: the head is not complete yet. Empty lines before a
/// request are skipped (RFC 9112 §2.2).
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let blank = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if blank > 0 {
        let _ = buf.split_to(blank);
    }
    // Where each header's name and value lie in `buf`: the values are
    // sliced out of the head's bytes without a copy.
    let mut spans = codec::Spans::new();
    let (len, method, target, minor) = {
        // Uninitialized: zeroing 100 headers cost more than parsing a
        // small head.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError {
                    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    why: "too many header lines",
                })
            }
            Err(_) => return Err(bad("malformed request head")),
        };
        let start = buf.as_ptr() as usize;
        codec::header_spans(buf, request.headers, &mut spans);
        let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
            .map_err(|_| bad("invalid method"))?;
        let path = request.path.unwrap_or("");
        let target = (path.as_ptr() as usize - start, path.len());
        (len, method, target, request.version.unwrap_or(1))
    };
    let count = spans.len();
    let bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(bytes.slice(target.0..target.0 + target.1))
        .map_err(|_| bad("invalid request target"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The lines stay in the client's bytes (`header_lines`). httparse let
    // through only token names and values of visible bytes, tabs and
    // obs-text: what `HeaderName` and `HeaderValue` accept, so the lines
    // are forwarded as they are.
    let mut framing = Framing::default();
    let mut kinds = [LineKind::Forward; MAX_HEADERS];
    let text = |at: u32, len: u32| &bytes[at as usize..(at + len) as usize];
    for (kind, &(name, name_len, value, value_len)) in kinds.iter_mut().zip(&spans[..count]) {
        *kind = framing.see(text(name, name_len), text(value, value_len))?;
    }
    let kinds = &mut kinds[..count];
    let body = framing.body(version, kinds)?;
    if framing.connection_names_headers {
        // What a `Connection` line names is hop-by-hop too (the lines the
        // parser took in are no headers to name).
        let is_connection = |i: usize| {
            let (name, name_len, ..) = spans[i];
            is(text(name, name_len), "connection")
        };
        let named = codec::named_by_connection(&bytes, &spans[..count], is_connection);
        for (i, kind) in kinds.iter_mut().enumerate() {
            if named & (1 << i) != 0 && *kind != LineKind::Consumed {
                *kind = LineKind::HopByHop;
            }
        }
    }
    let mut lines = HeaderLines::new(bytes, count);
    for (&kind, &(name, name_len, value, value_len)) in kinds.iter().zip(&spans[..count]) {
        lines.push((name, name_len), (value, value_len), kind);
    }
    // A request framed both ways is answered and the connection closed
    // (RFC 9112 §6.1): whatever read it the other way upstream of us
    // must not get to send a second request on it.
    let keep_alive = !framing.close
        && (version == Version::HTTP_11 || framing.keep_alive)
        && !(framing.transfer_encoding && framing.length.is_some());
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        lines,
        body,
        keep_alive,
        expect_continue: framing.expect_continue && version == Version::HTTP_11,
    }))
}

/// `name` is `lower` (a lowercase name), in any case.
fn is(name: &[u8], lower: &str) -> bool {
    eq_lower(name, lower.as_bytes())
}

/// What a request head's framing headers say, gathered header by header.
#[derive(Default)]
struct Framing {
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    /// A `Connection` header names other headers.
    connection_names_headers: bool,
    /// A `Transfer-Encoding` was sent.
    transfer_encoding: bool,
    /// Its last coding is `chunked`.
    chunked_last: bool,
    /// It names a coding other than `chunked`.
    other_coding: bool,
    length: Option<u64>,
}

impl Framing {
    /// Take note of one header; what the line is to the forwarding.
    fn see(&mut self, name: &[u8], value: &[u8]) -> Result<LineKind, HeadError> {
        // Most names are told apart by their length alone.
        let len = name.len();
        if is(name, "connection") {
            let tokens = codec::connection_tokens(value);
            self.close |= tokens.close;
            self.keep_alive |= tokens.keep_alive;
            if tokens.only_options() {
                return Ok(LineKind::Consumed);
            }
            self.connection_names_headers = true;
            return Ok(LineKind::HopByHop);
        } else if is(name, "transfer-encoding") {
            self.transfer_encoding = true;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if self.chunked_last {
                    // `chunked` must come last, and only once.
                    return Err(bad("transfer-encoding after chunked"));
                }
                if eq_lower(coding, b"chunked") {
                    self.chunked_last = true;
                } else {
                    self.other_coding = true;
                }
            }
            return Ok(LineKind::HopByHop);
        } else if is(name, "content-length") {
            self.length = Some(codec::content_length(value, self.length).map_err(bad)?);
            return Ok(LineKind::Length);
        } else if is(name, "expect") {
            self.expect_continue |= eq_lower(value.trim_ascii(), b"100-continue");
        } else if (len == 12 || len == 15 || len == 17)
            && (is(name, "x-request-id")
                || is(name, "x-forwarded-for")
                || is(name, "x-forwarded-proto"))
        {
            return Ok(LineKind::Gateway);
        } else if HOP_BY_HOP_NAMES.iter().any(|h| is(name, h)) {
            return Ok(LineKind::HopByHop);
        }
        Ok(LineKind::Forward)
    }

    /// How the body is delimited (RFC 9112 §6.3); a length that a
    /// transfer coding overrides is not forwarded.
    fn body(&self, version: Version, kinds: &mut [LineKind]) -> Result<BodyFraming, HeadError> {
        if self.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err(bad("transfer-encoding in an HTTP/1.0 request"));
            }
            if !self.chunked_last {
                return Err(bad("transfer-encoding does not end in chunked"));
            }
            if self.other_coding {
                return Err(HeadError {
                    status: StatusCode::NOT_IMPLEMENTED,
                    why: "unsupported transfer-coding",
                });
            }
            for kind in kinds.iter_mut().filter(|k| **k == LineKind::Length) {
                *kind = LineKind::Consumed;
            }
            return Ok(BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 }));
        }
        Ok(match self.length {
            Some(0) | None => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
        })
    }
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304); the headers as they are.
    NoBody,
    /// `Content-Length: n`, written here.
    Length(u64),
    /// The response's own `Content-Length` header, `n`.
    LengthHeader(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    ToClose,
}

impl ResponseFraming {
    /// How to frame a response of `status` with `headers` (and a node's
    /// unparsed lines, `node`) whose body's
    /// exact size is `exact` (if known), to a `HEAD` request or not, for
    /// an HTTP/1.1 client or not (hyper's choices).
    pub fn choose(
        status: StatusCode,
        headers: &HeaderMap,
        node: Option<&NodeHeaders>,
        exact: Option<u64>,
        head_request: bool,
        http11: bool,
    ) -> ResponseFraming {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return ResponseFraming::NoBody;
        }
        let declared = declared_length(headers, node);
        if head_request {
            // The headers as they are: a length there is the GET's.
            return ResponseFraming::NoBody;
        }
        match (declared, exact) {
            (Some(n), _) => ResponseFraming::LengthHeader(n),
            (None, Some(n)) => ResponseFraming::Length(n),
            (None, None) if http11 => ResponseFraming::Chunked,
            (None, None) => ResponseFraming::ToClose,
        }
    }

    /// Whether body bytes are written at all.
    pub fn has_body(self) -> bool {
        !matches!(self, ResponseFraming::NoBody)
            && !matches!(
                self,
                ResponseFraming::Length(0) | ResponseFraming::LengthHeader(0)
            )
    }
}

/// The length a response head declares: the map's `Content-Length` or
/// the node's.
fn declared_length(headers: &HeaderMap, node: Option<&NodeHeaders>) -> Option<u64> {
    match headers.get(CONTENT_LENGTH) {
        Some(value) => value.to_str().ok().and_then(|v| v.parse::<u64>().ok()),
        None => node.and_then(NodeHeaders::length),
    }
}

/// What the connection says in the response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Nothing (HTTP/1.1 keeps the connection).
    None,
    /// `connection: close`.
    Close,
    /// `connection: keep-alive` (an HTTP/1.0 client that asked for it).
    KeepAlive,
}

/// Write a response head: status line, the headers as they are (names in
/// lower case, as hyper writes them) except the framing and connection
/// headers this side decides, then those, and a `Date` when there is none.
pub fn encode_response(
    status: StatusCode,
    headers: &HeaderMap,
    node: Option<&NodeHeaders>,
    framing: ResponseFraming,
    connection: ConnectionHeader,
    out: &mut BytesMut,
) {
    let mut size = 96 + node.map_or(0, NodeHeaders::len);
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    out.reserve(size);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        status
            .canonical_reason()
            .unwrap_or("<unknown status code>")
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    let keep_length = matches!(
        framing,
        ResponseFraming::LengthHeader(_) | ResponseFraming::NoBody
    ) && status != StatusCode::NO_CONTENT
        && !status.is_informational();
    let mut has_date = false;
    let mut has_length = false;
    for (name, value) in headers {
        has_length |= name == CONTENT_LENGTH;
        if name == TRANSFER_ENCODING
            || name == CONNECTION
            || (name == CONTENT_LENGTH && !keep_length)
        {
            continue;
        }
        has_date |= name == DATE;
        codec::put_header(out, name, value);
    }
    if let Some(node) = node {
        // The node's lines as it wrote them, less those the map replaces
        // (the gateway's request id and rate-limit headers).
        node.write(headers, out);
        has_date |= node.has_date();
        // Its length line was not kept among them (see `choose`).
        if keep_length && !has_length {
            if let Some(n) = node.length() {
                codec::put_content_length(out, n);
            }
        }
    }
    match framing {
        ResponseFraming::Length(n) => codec::put_content_length(out, n),
        ResponseFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    match connection {
        ConnectionHeader::None => {}
        ConnectionHeader::Close => out.put_slice(b"connection: close\r\n"),
        ConnectionHeader::KeepAlive => out.put_slice(b"connection: keep-alive\r\n"),
    }
    if !has_date {
        out.put_slice(b"date: ");
        date::now(|date| out.put_slice(date));
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// A bare answer to a head that could not be read: status, a short text,
/// and the connection closing.
pub fn encode_refusal(error: HeadError, out: &mut BytesMut) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    let body = error.why.as_bytes();
    encode_response(
        error.status,
        &headers,
        None,
        ResponseFraming::Length(body.len() as u64 + 1),
        ConnectionHeader::Close,
        out,
    );
    out.put_slice(body);
    out.put_u8(b'\n');
}

/// The `Date` header's value, formatted once per second per thread (as
/// hyper does).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    /// Call `use_it` with the current date in the IMF-fixdate form.
    pub fn now(use_it: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = second;
                }
            }
            use_it(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(text))
    }

    fn status(text: &str) -> StatusCode {
        match parse(text) {
            Err(e) => e.status,
            Ok(_) => StatusCode::OK,
        }
    }

    #[test]
    fn a_request_head_is_taken_out_of_the_buffer_and_the_body_stays() {
        let mut buf = BytesMut::from(
            "\r\nPOST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}GET",
        );
        let head = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"{}GET");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/v1/chat/completions");
        assert_eq!(head.uri.query(), Some("x=1"));
        assert_eq!(head.lines.get("x-a"), Some(&b"b"[..]));
        assert_eq!(head.body, BodyFraming::Length(2));
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn connection_options_are_taken_in_not_kept() {
        let options = parse("GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(options.keep_alive);
        assert_eq!(options.lines.get("connection"), None);
        // A Connection naming headers stays, and what it names is not
        // forwarded either.
        let naming = parse(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-a\r\nX-A: b\r\nX-Forwarded-For: 1.2.3.4\r\nKeep-Alive: 5\r\nX-B: c\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!naming.keep_alive);
        assert_eq!(naming.lines.get("connection"), Some(&b"close, x-a"[..]));
        let mut forwarded = BytesMut::new();
        naming.lines.write(true, &mut forwarded);
        assert_eq!(&forwarded[..], b"Host: a\r\nX-B: c\r\n");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked =
            parse("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(matches!(chunked.body, BodyFraming::Chunked(_)));
        assert!(
            !chunked.lines.has_length() && chunked.lines.get("content-length").is_none(),
            "the overridden length is not forwarded"
        );
        assert!(!chunked.keep_alive, "nor is the connection kept");
        let none = parse("GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(none.body, BodyFraming::Empty);
        let same = parse("POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(same.body, BodyFraming::Length(3));
        for refused in [
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(refused), StatusCode::BAD_REQUEST, "{refused:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            StatusCode::NOT_IMPLEMENTED
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn keep_alive_and_continue_by_version() {
        let close = parse("GET / HTTP/1.1\r\nconnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!close.keep_alive);
        let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_kept = parse("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(old_kept.keep_alive);
        let expect = parse("POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(expect.expect_continue);
        let expect10 =
            parse("POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(!expect10.expect_continue, "HTTP/1.0 clients get no 100");
    }

    fn written(
        status: StatusCode,
        headers: &[(&'static str, &'static str)],
        framing: ResponseFraming,
        connection: ConnectionHeader,
    ) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(*n, HeaderValue::from_static(v));
        }
        let mut out = BytesMut::new();
        encode_response(status, &map, None, framing, connection, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn response_heads_say_their_framing_once() {
        let text = written(
            StatusCode::OK,
            &[
                ("content-type", "application/json"),
                ("content-length", "9"),
                ("connection", "x"),
            ],
            ResponseFraming::Length(2),
            ConnectionHeader::None,
        );
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("content-length: 2\r\n"), "{text}");
        assert!(!text.contains("connection"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        let chunked = written(
            StatusCode::OK,
            &[("transfer-encoding", "chunked"), ("date", "x")],
            ResponseFraming::Chunked,
            ConnectionHeader::Close,
        );
        assert_eq!(
            chunked,
            "HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let kept = written(
            StatusCode::NOT_MODIFIED,
            &[("content-length", "5"), ("date", "x")],
            ResponseFraming::NoBody,
            ConnectionHeader::KeepAlive,
        );
        assert_eq!(
            kept,
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\ndate: x\r\nconnection: keep-alive\r\n\r\n"
        );
        let no_content = written(
            StatusCode::NO_CONTENT,
            &[("content-length", "0"), ("date", "x")],
            ResponseFraming::NoBody,
            ConnectionHeader::None,
        );
        assert_eq!(no_content, "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
    }

    #[test]
    fn a_nodes_lines_are_written_as_they_came_less_what_the_gateway_sets() {
        let node = codec::parse_head(
            &mut BytesMut::from(
                "HTTP/1.1 200 OK\r\nServer: n\r\nContent-Length: 5\r\nX-Request-Id: node\r\n\
                 Connection: keep-alive\r\nDate: d\r\n\r\n",
            ),
            &Method::POST,
        )
        .unwrap()
        .unwrap()
        .headers;
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("gw"));
        // The head written to a GET (`head_request` false) or a HEAD.
        let write = |head_request: bool, exact: Option<u64>| {
            let framing = ResponseFraming::choose(
                StatusCode::OK,
                &map,
                Some(&node),
                exact,
                head_request,
                true,
            );
            let mut out = BytesMut::new();
            let connection = ConnectionHeader::None;
            encode_response(
                StatusCode::OK,
                &map,
                Some(&node),
                framing,
                connection,
                &mut out,
            );
            (framing, out)
        };
        let (framing, out) = write(false, Some(5));
        assert_eq!(framing, ResponseFraming::LengthHeader(5));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nx-request-id: gw\r\nServer: n\r\nDate: d\r\n\
             content-length: 5\r\n\r\n"
        );
        // To a HEAD request the length is the GET's, and said as such.
        let (_, out) = write(true, None);
        assert!(out.ends_with(b"content-length: 5\r\n\r\n"));
    }

    #[test]
    fn framing_is_chosen_as_hyper_does() {
        use ResponseFraming::*;
        let mut with_length = HeaderMap::new();
        with_length.insert(CONTENT_LENGTH, HeaderValue::from_static("7"));
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        assert_eq!(
            ResponseFraming::choose(ok, &with_length, None, None, false, true),
            LengthHeader(7)
        );
        assert_eq!(
            ResponseFraming::choose(ok, &none, None, Some(3), false, true),
            Length(3)
        );
        assert_eq!(
            ResponseFraming::choose(ok, &none, None, None, false, true),
            Chunked
        );
        assert_eq!(
            ResponseFraming::choose(ok, &none, None, None, false, false),
            ToClose
        );
        assert_eq!(
            ResponseFraming::choose(ok, &with_length, None, None, true, true),
            NoBody
        );
        assert_eq!(
            ResponseFraming::choose(ok, &none, None, Some(0), true, true),
            NoBody
        );
        assert_eq!(
            ResponseFraming::choose(StatusCode::NO_CONTENT, &none, None, Some(0), false, true),
            NoBody
        );
        assert!(!Length(0).has_body());
        assert!(Length(3).has_body() && Chunked.has_body() && !NoBody.has_body());
    }
}
