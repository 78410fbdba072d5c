//! HTTP/1.1 on the node side, as bytes: the request head written, the
//! response head parsed (`httparse`), and the response body's framing
//! (length, chunked, to the close) decoded straight out of the read buffer
//! without copying. No I/O here: `h1::conn` reads and writes.
//!
//! The rules are RFC 9112's: no body for HEAD, 1xx, 204 and 304; a
//! `Transfer-Encoding` ending in `chunked` wins over `Content-Length`;
//! differing `Content-Length`s are refused (a response that could be read
//! two ways is how responses get smuggled); without either, the body runs
//! to the close and the connection is not reused.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::node_headers::{Name, NodeHeaders};
use crate::ascii_case::eq_lower;
use crate::header_lines::HeaderLines;

/// Most header lines a response head may have (hyper's default too).
pub(super) const MAX_HEADERS: usize = 100;
// `NodeHeaders` marks the lines not forwarded as bits of a `u128`.
const _: () = assert!(MAX_HEADERS <= 128);
/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after a chunked body (they are read and
/// dropped: trailers mean nothing to an HTTP/1.1 client of the gateway).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a node's bytes could not be read as HTTP/1.1.
#[derive(Debug, PartialEq, Eq)]
pub struct CodecError(pub &'static str);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CodecError {}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// `Content-Length: n` (the header is written here).
    Length(u64),
    /// `Content-Length` as the client sent it (already among the headers).
    LengthHeader,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No body and no header saying so (GET and the like).
    None,
}

/// Write the request head: `METHOD path HTTP/1.1`, the headers of both
/// maps as they are (lower-case names, as hyper writes them; the first
/// map's first), and the framing header. A `Content-Length` among
/// `headers` is written only with
/// [`RequestFraming::LengthHeader`]: otherwise the framing says what is
/// sent, and a second, different length would make the request ambiguous.
/// Room for `then` more bytes (a body copied behind the head) is made in
/// the same allocation.
pub fn encode_head(
    method: &Method,
    path: &str,
    headers: [&HeaderMap; 2],
    lines: Option<&HeaderLines>,
    framing: RequestFraming,
    then: usize,
    out: &mut BytesMut,
) {
    let mut size = method.as_str().len()
        + path.len()
        + 32
        + then
        + lines.map_or(0, HeaderLines::forwarded_len);
    // Loops over each map, not a flattened iterator (which cost more than
    // the lines it went over).
    for map in headers {
        for (name, value) in map {
            size += name.as_str().len() + value.len() + 4;
        }
    }
    out.reserve(size);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let keep_length = framing == RequestFraming::LengthHeader;
    // The client's lines first, as it sent them (they never hold a name
    // the maps do: the gateway's own headers are not among them).
    if let Some(lines) = lines {
        lines.write(keep_length, out);
    }
    for map in headers {
        for (name, value) in map {
            if (name == CONTENT_LENGTH && !keep_length) || name == TRANSFER_ENCODING {
                continue;
            }
            put_header(out, name, value);
        }
    }
    match framing {
        RequestFraming::Length(n) => put_content_length(out, n),
        RequestFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::LengthHeader | RequestFraming::None => {}
    }
    out.put_slice(b"\r\n");
}

/// One header line: `name: value`.
pub(crate) fn put_header(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// A `content-length: n` line.
pub(crate) fn put_content_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    let mut digits = itoa_buffer();
    out.put_slice(itoa(n, &mut digits));
    out.put_slice(b"\r\n");
}

fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

/// `n` in decimal, written into the end of `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Frame one chunk of a chunked request body: size line, data, CRLF.
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    out.reserve(data.len() + 20);
    let mut line = [0u8; 18];
    out.put_slice(chunk_size_line(data.len(), &mut line));
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// A chunk's size line (`1a\r\n`), written into the end of `buf`.
pub(crate) fn chunk_size_line(n: usize, buf: &mut [u8; 18]) -> &[u8] {
    let mut at = 16;
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[at..]
}

/// What a `Connection` header's tokens say.
#[derive(Clone, Copy, Default)]
pub(crate) struct ConnectionTokens {
    /// `close`.
    pub close: bool,
    /// `keep-alive`.
    pub keep_alive: bool,
    /// Another token: a header name, hop-by-hop too (RFC 9110 §7.6.1).
    pub names_headers: bool,
}

impl ConnectionTokens {
    /// The header's whole meaning is in `close`/`keep-alive`: a parser
    /// that took note of them need not keep the header (it is hop-by-hop
    /// and would only be removed again before forwarding).
    pub fn only_options(self) -> bool {
        !self.names_headers
    }
}

/// The tokens of a `Connection` header's value.
pub(crate) fn connection_tokens(value: &[u8]) -> ConnectionTokens {
    let mut tokens = ConnectionTokens::default();
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if eq_lower(token, b"close") {
            tokens.close = true;
        } else if eq_lower(token, b"keep-alive") {
            tokens.keep_alive = true;
        } else if !token.is_empty() {
            tokens.names_headers = true;
        }
    }
    tokens
}

/// The last chunk of a chunked request body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// The status (never an interim 1xx other than 101).
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header lines as they came, those to forward marked.
    pub headers: NodeHeaders,
    /// How its body is framed.
    pub body: BodyFraming,
    /// The node keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parse a response head from the start of `buf`, taking its bytes out of
/// `buf` (interim 1xx responses other than 101 are skipped). `Ok(None)`:
/// the head is not complete yet.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, CodecError> {
    loop {
        let Some(head) = parse_one(buf, method)? else {
            return Ok(None);
        };
        let status = head.status;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        return Ok(Some(head));
    }
}

fn parse_one(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, CodecError> {
    // Where each header's name and value lie in `buf`: the values are then
    // sliced out of the head's bytes without a copy, as hyper does.
    let mut spans = Spans::new();
    let (len, code, minor) = {
        // Uninitialized: zeroing 100 headers (3.2 KB) cost more than
        // parsing a small head.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(CodecError("response head has too many header lines"))
            }
            Err(_) => return Err(CodecError("malformed response head")),
        };
        header_spans(buf, response.headers, &mut spans);
        (
            len,
            response.code.unwrap_or(0),
            response.version.unwrap_or(1),
        )
    };
    let bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| CodecError("invalid status code"))?;
    // The framing is read on the way; the lines stay as they came (see
    // `node_headers`).
    let count = spans.len();
    let spans = &spans[..];
    let mut framing = FramingHeaders::default();
    let mut kinds = [Name::Other; MAX_HEADERS];
    for (&(name, name_len, value, value_len), kind) in spans.iter().zip(&mut kinds) {
        *kind = Name::of(&bytes[name as usize..(name + name_len) as usize]);
        framing.see(*kind, &bytes[value as usize..(value + value_len) as usize])?;
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let body = framing.body(method, status);
    // Not reused after a body running to the close, a switch of protocols
    // (what follows is not HTTP/1.1), or a head with both framings (RFC
    // 9112 §6.3: it may be an attempt at smuggling a response).
    let keep_alive = !framing.close
        && (version == Version::HTTP_11 || framing.keep_alive)
        && body != BodyFraming::ToClose
        && status != StatusCode::SWITCHING_PROTOCOLS
        && !(framing.last_coding.is_some() && framing.length.is_some());
    let headers = NodeHeaders::new(
        bytes,
        spans,
        &kinds[..count],
        framing.names_headers,
        framing.length,
    );
    Ok(Some(Head {
        status,
        version,
        headers,
        body,
        keep_alive,
    }))
}

/// What a response head's `Connection`, `Transfer-Encoding` and
/// `Content-Length` say, gathered header by header.
#[derive(Default)]
struct FramingHeaders {
    close: bool,
    keep_alive: bool,
    /// Whether the last transfer coding named is `chunked` (`None`: no
    /// `Transfer-Encoding`).
    last_coding: Option<bool>,
    length: Option<u64>,
    /// A `Connection` header names other headers (hop-by-hop too).
    names_headers: bool,
}

impl FramingHeaders {
    /// Take note of one header (named `kind`).
    fn see(&mut self, kind: Name, value: &[u8]) -> Result<(), CodecError> {
        match kind {
            Name::Connection => {
                let tokens = connection_tokens(value);
                self.close |= tokens.close;
                self.keep_alive |= tokens.keep_alive;
                self.names_headers |= tokens.names_headers;
            }
            Name::TransferEncoding => {
                let last = value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
                self.last_coding = Some(last.is_some_and(|c| eq_lower(c, b"chunked")));
            }
            Name::ContentLength => {
                self.length = Some(content_length(value, self.length).map_err(CodecError)?);
            }
            _ => {}
        }
        Ok(())
    }

    /// How the body is delimited (RFC 9112 §6.3).
    fn body(&self, method: &Method, status: StatusCode) -> BodyFraming {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return BodyFraming::Empty;
        }
        match (self.last_coding, self.length) {
            (Some(true), _) => BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 }),
            // A coding other than chunked last: the body runs to the close.
            (Some(false), _) => BodyFraming::ToClose,
            (None, Some(0)) => BodyFraming::Empty,
            (None, Some(n)) => BodyFraming::Length(n),
            (None, None) => BodyFraming::ToClose,
        }
    }
}

/// Where one header lies in a head: (name offset, name length, value
/// offset, value length).
pub type Span = (u32, u32, u32, u32);

/// Where a parsed head's header names and values lie in `buf`: (name
/// offset, name length, value offset, value length), so they can be
/// sliced out of the head's bytes without a copy once the parser's
/// borrow of `buf` has ended. Appended to `spans`, as many as it holds.
pub(crate) fn header_spans(buf: &[u8], headers: &[httparse::Header<'_>], spans: &mut Spans) {
    let start = buf.as_ptr() as usize;
    let room = spans.inline_size().saturating_sub(spans.len());
    for header in headers.iter().take(room) {
        let name = header.name.as_ptr() as usize - start;
        let value = header.value.as_ptr() as usize - start;
        spans.push((
            name as u32,
            header.name.len() as u32,
            value as u32,
            header.value.len() as u32,
        ));
    }
}

/// A head's [`Span`]s, on the stack and not zeroed first (1.6 KB of
/// zeroes cost a `memset` per head).
pub(crate) type Spans = smallvec::SmallVec<[Span; MAX_HEADERS]>;

/// The header lines (as bits by index into `spans`, at most 128) that the
/// `Connection` lines (`is_connection(i)`) name: hop-by-hop too (RFC 9110
/// §7.6.1). Used for both heads, a node's and a client's.
pub(crate) fn named_by_connection(
    head: &[u8],
    spans: &[Span],
    is_connection: impl Fn(usize) -> bool,
) -> u128 {
    let text = |at: u32, len: u32| &head[at as usize..(at + len) as usize];
    let mut named = 0u128;
    for (_, &(_, _, value, value_len)) in
        spans.iter().enumerate().filter(|&(i, _)| is_connection(i))
    {
        for token in text(value, value_len).split(|&b| b == b',') {
            let token = token.trim_ascii();
            for (i, &(other, other_len, ..)) in spans.iter().enumerate().take(128) {
                if text(other, other_len).eq_ignore_ascii_case(token) {
                    named |= 1 << i;
                }
            }
        }
    }
    named
}

/// A `Content-Length` value (a list of equal lengths is one length),
/// agreeing with the length `seen` in an earlier one, if any.
pub(crate) fn content_length(value: &[u8], seen: Option<u64>) -> Result<u64, &'static str> {
    let mut length = seen;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
            return Err("invalid content-length");
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|seen| seen != n) {
            return Err("differing content-lengths");
        }
        length = Some(n);
    }
    length.ok_or("invalid content-length")
}

/// Where a response body's decoding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No (more) body.
    Empty,
    /// This many bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// Everything until the node closes the connection.
    ToClose,
}

/// The chunked decoder's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line: bytes of it seen, the size so far.
    Size { line: usize, size: u64 },
    /// In the extensions after the size, up to the line's LF.
    Extension { line: usize, size: u64 },
    /// This many data bytes of the current chunk left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section: bytes seen, and whether at a line's start.
    Trailers { seen: usize, line_start: bool },
}

/// What decoding found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes, taken out of the buffer.
    Data(Bytes),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    More,
}

impl BodyFraming {
    /// The body is complete.
    pub fn is_done(&self) -> bool {
        *self == BodyFraming::Empty
    }

    /// Decode what `buf` holds: the next piece of body data (sliced out of
    /// `buf`, no copy), the end, or a need for more bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, CodecError> {
        match self {
            BodyFraming::Empty => Ok(Decoded::End),
            BodyFraming::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = (*left).min(buf.len() as u64);
                *left -= take;
                if *left == 0 {
                    *self = BodyFraming::Empty;
                }
                Ok(Decoded::Data(buf.split_to(take as usize).freeze()))
            }
            BodyFraming::ToClose => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                Ok(Decoded::Data(buf.split().freeze()))
            }
            BodyFraming::Chunked(state) => {
                let (data, ended) = decode_chunked(state, buf, true)?;
                if ended {
                    *self = BodyFraming::Empty;
                }
                Ok(match data {
                    Some(data) => Decoded::Data(data),
                    None if ended => Decoded::End,
                    None => Decoded::More,
                })
            }
        }
    }

    /// Read past what follows data without data of its own (a chunk's
    /// CRLF, the last chunk, trailers) as far as `buf` allows, so a body
    /// whose end has arrived is known complete without another poll.
    pub fn settle(&mut self, buf: &mut BytesMut) -> Result<(), CodecError> {
        let BodyFraming::Chunked(state) = self else {
            return Ok(());
        };
        // Only up to the next data: that is the caller's to take.
        if decode_chunked(state, buf, false)?.1 {
            *self = BodyFraming::Empty;
        }
        Ok(())
    }
}

/// Decode a chunked body from `buf`. Every piece of chunk data the buffer
/// holds is gathered at its front, moved down over the framing between the
/// pieces (in place: no allocation, one short move per chunk), and taken
/// out as one `Data`: a read that brought many small chunks (a token
/// stream) gives one piece, not one per chunk. With `take_data` false, stop
/// (with `More`) at the next data instead of taking it.
///
/// Returns the data (if any) and whether the body ended. Data before a
/// framing error is handed out first; the error comes with the next call.
fn decode_chunked(
    state: &mut Chunked,
    buf: &mut BytesMut,
    take_data: bool,
) -> Result<(Option<Bytes>, bool), CodecError> {
    // buf[..gathered]: data taken so far; buf[gathered..at]: framing read
    // past; buf[at..]: not decoded yet. The state is worked on in a local
    // copy (kept in registers) and stored once.
    let mut gathered = 0;
    let mut at = 0;
    let mut st = *state;
    let ended = loop {
        if st == (Chunked::Size { line: 0, size: 0 }) && take_data {
            // The common case, whole chunks one after the other: a plain
            // size line, the data and its CRLF all at hand, taken in one go.
            while let Some((size, len)) = plain_size_line(&buf[at..]) {
                at += len;
                st = chunk_start(size);
                let end = usize::try_from(size).ok().and_then(|n| n.checked_add(at));
                match end {
                    Some(end)
                        if size != 0
                            && buf.get(end..).is_some_and(|rest| rest.starts_with(b"\r\n")) =>
                    {
                        buf.copy_within(at..end, gathered);
                        gathered += end - at;
                        at = end + 2;
                        st = Chunked::Size { line: 0, size: 0 };
                    }
                    // The last chunk, or one not all here yet: the state
                    // says where it stands, the general way goes on.
                    _ => break,
                }
            }
        }
        match st {
            Chunked::Data(0) => st = Chunked::DataEnd,
            Chunked::Data(left) => {
                let available = buf.len() - at;
                if available == 0 || !take_data {
                    break false;
                }
                // `take` fits in usize: it is at most `available`.
                let take = left.min(available as u64) as usize;
                if gathered != at {
                    buf.copy_within(at..at + take, gathered);
                }
                gathered += take;
                at += take;
                st = Chunked::Data(left - take as u64);
            }
            _ => match chunk_framing(&mut st, &buf[at..]) {
                Ok(Framing::Read(n)) => at += n,
                Ok(Framing::More) => break false,
                Ok(Framing::End(n)) => {
                    at += n;
                    break true;
                }
                Err(e) if gathered == 0 => return Err(e),
                // Hand out the data first; `st` still points at the error.
                Err(_) => break false,
            },
        }
    };
    *state = st;
    let data = (gathered > 0).then(|| buf.split_to(gathered).freeze());
    buf.advance(at - gathered);
    Ok((data, ended))
}

/// A chunk-size line of hex digits and CRLF, no extension, whole at the
/// start of `input`: the size and the line's length.
#[inline]
fn plain_size_line(input: &[u8]) -> Option<(u64, usize)> {
    let mut size = 0u64;
    // At most 16 digits (a u64); longer lines go the general way, which
    // refuses them.
    for (i, &b) in input.iter().enumerate().take(17) {
        let digit = HEX_DIGITS[usize::from(b)];
        if digit < 16 {
            size = size << 4 | u64::from(digit);
        } else if b == b'\r' && i > 0 && input.get(i + 1) == Some(&b'\n') {
            return Some((size, i + 2));
        } else {
            return None;
        }
    }
    None
}

/// Each byte's value as a hex digit, or 0xFF.
static HEX_DIGITS: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// How far [`chunk_framing`] got.
enum Framing {
    /// This many bytes of framing were read; go on after them.
    Read(usize),
    /// The framing goes on past the bytes at hand.
    More,
    /// The body ended after this many bytes.
    End(usize),
}

/// Read the chunked framing (size line, CRLF after data, trailers) at the
/// start of `input` for `state`, which is not in a chunk's data.
fn chunk_framing(state: &mut Chunked, input: &[u8]) -> Result<Framing, CodecError> {
    if input.is_empty() {
        return Ok(Framing::More);
    }
    match *state {
        Chunked::Data(_) => Ok(Framing::Read(0)),
        Chunked::DataEnd => {
            if input.len() < 2 {
                // A lone CR waits for its LF.
                if input[0] != b'\r' {
                    return Err(CodecError("chunk data not followed by CRLF"));
                }
                return Ok(Framing::More);
            }
            if &input[..2] != b"\r\n" {
                return Err(CodecError("chunk data not followed by CRLF"));
            }
            *state = Chunked::Size { line: 0, size: 0 };
            Ok(Framing::Read(2))
        }
        Chunked::Size { mut line, mut size } => {
            for (i, &b) in input.iter().enumerate() {
                line += 1;
                let digit = Some(HEX_DIGITS[usize::from(b)]).filter(|&d| d < 16);
                match digit {
                    Some(_) if line > 16 => return Err(CodecError("chunk size too large")),
                    Some(d) => size = size * 16 + u64::from(d),
                    None if line == 1 => return Err(CodecError("invalid chunk size")),
                    None if b == b'\n' => {
                        *state = chunk_start(size);
                        return Ok(Framing::Read(i + 1));
                    }
                    None if b == b';' || b == b'\r' || b == b' ' || b == b'\t' => {
                        *state = Chunked::Extension { line, size };
                        return Ok(Framing::Read(i + 1));
                    }
                    None => return Err(CodecError("invalid chunk size")),
                }
            }
            *state = Chunked::Size { line, size };
            Ok(Framing::Read(input.len()))
        }
        Chunked::Extension { line, size } => {
            // Mostly the LF of a CRLF: found without a search.
            let end = if input[0] == b'\n' {
                Some(0)
            } else {
                memchr::memchr(b'\n', input)
            };
            match end {
                Some(at) => {
                    if line + at > MAX_CHUNK_LINE {
                        return Err(CodecError("chunk size line too long"));
                    }
                    *state = chunk_start(size);
                    Ok(Framing::Read(at + 1))
                }
                None => {
                    let line = line + input.len();
                    if line > MAX_CHUNK_LINE {
                        return Err(CodecError("chunk size line too long"));
                    }
                    *state = Chunked::Extension { line, size };
                    Ok(Framing::Read(input.len()))
                }
            }
        }
        Chunked::Trailers { seen, line_start } => {
            let b = input[0];
            if line_start && b == b'\n' {
                return Ok(Framing::End(1));
            }
            if line_start && b == b'\r' {
                if input.len() < 2 {
                    return Ok(Framing::More);
                }
                if input[1] != b'\n' {
                    return Err(CodecError("malformed chunked trailers"));
                }
                return Ok(Framing::End(2));
            }
            // Skip one trailer line.
            let (taken, ended) = match memchr::memchr(b'\n', input) {
                Some(at) => (at + 1, true),
                None => (input.len(), false),
            };
            if seen + taken > MAX_TRAILERS {
                return Err(CodecError("chunked trailers too large"));
            }
            *state = Chunked::Trailers {
                seen: seen + taken,
                line_start: ended,
            };
            Ok(Framing::Read(taken))
        }
    }
}

/// After a chunk-size line: the chunk's data, or the trailers after the
/// last (zero-size) chunk.
fn chunk_start(size: u64) -> Chunked {
    if size == 0 {
        Chunked::Trailers {
            seen: 0,
            line_start: true,
        }
    } else {
        Chunked::Data(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, CodecError> {
        parse_head(&mut BytesMut::from(text), &Method::POST)
    }

    #[test]
    fn framing_and_connection_options_are_taken_in_not_kept() {
        let plain = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(plain.keep_alive);
        assert!(matches!(plain.body, BodyFraming::Chunked(_)));
        let names: Vec<_> = plain.headers.forwarded().map(|l| l.name).collect();
        assert_eq!(names, [b"X-A"]);
        // Headers a Connection names are not forwarded either.
        let naming = head(
            "HTTP/1.1 200 OK\r\nConnection: close, x-a\r\nX-A: b\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!naming.keep_alive);
        assert_eq!(naming.headers.forwarded().count(), 0);
    }

    /// Decode all of `wire` fed `step` bytes at a time.
    fn decode_all(
        mut framing: BodyFraming,
        wire: &[u8],
        step: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Data(data) => {
                    body.extend_from_slice(&data);
                    framing.settle(&mut buf)?;
                }
                Decoded::End => return Ok(body),
                Decoded::More => {
                    if fed == wire.len() {
                        return Err(CodecError("ran out"));
                    }
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn request_heads_are_written_with_their_framing() {
        let mut own = HeaderMap::new();
        own.insert("host", HeaderValue::from_static("node:8000"));
        let mut shared = HeaderMap::new();
        shared.insert("x-request-id", HeaderValue::from_static("abc"));
        shared.insert("content-length", HeaderValue::from_static("99"));
        let mut out = BytesMut::new();
        encode_head(
            &Method::POST,
            "/v1/chat/completions?x=1",
            [&own, &shared],
            None,
            RequestFraming::Length(1234567),
            0,
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: node:8000\r\nx-request-id: abc\r\ncontent-length: 1234567\r\n\r\n"
        );
        out.clear();
        encode_head(
            &Method::GET,
            "/",
            [&HeaderMap::new(), &HeaderMap::new()],
            None,
            RequestFraming::None,
            0,
            &mut out,
        );
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\n\r\n");
        out.clear();
        encode_head(
            &Method::PUT,
            "/",
            [&HeaderMap::new(), &HeaderMap::new()],
            None,
            RequestFraming::Chunked,
            0,
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        encode_chunk(&[b'x'; 300], &mut out);
        assert_eq!(&out[..5], b"12c\r\n");
        assert_eq!(out.len(), 5 + 300 + 2);
        let mut digits = itoa_buffer();
        assert_eq!(itoa(0, &mut digits), b"0");
        assert_eq!(itoa(u64::MAX, &mut digits), b"18446744073709551615");
    }

    #[test]
    fn a_response_head_is_parsed_with_its_framing() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 5\r\n\r\nhello",
        );
        let head = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers.content_type(), Some(&b"application/json"[..]));
        assert_eq!(head.body, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");

        let head = head_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(head.body, BodyFraming::Chunked(_)));
        // Transfer-Encoding wins over Content-Length.
        let head =
            head_of("HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(matches!(head.body, BodyFraming::Chunked(_)));
        assert!(
            !head.keep_alive,
            "a head with both framings ends the connection"
        );
        let head = head_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(head.body, BodyFraming::ToClose);
        assert!(!head.keep_alive, "a body to the close ends the connection");
        let head = head_of("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(head.body, BodyFraming::ToClose);
        let head = head_of("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(head.body, BodyFraming::Empty);
        assert!(head.keep_alive);
        let head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        assert_eq!(head.body, BodyFraming::Empty);
        assert!(!head.keep_alive);
        let head = head_of("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n");
        assert!(
            !head.keep_alive,
            "HTTP/1.0 closes unless it says keep-alive"
        );
        let head =
            head_of("HTTP/1.0 200 OK\r\ncontent-length: 2\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(head.keep_alive);
        let head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n");
        assert_eq!(head.body, BodyFraming::Length(7));
        // A HEAD response has no body whatever its headers say.
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        let head = parse_head(&mut buf, &Method::HEAD).unwrap().unwrap();
        assert_eq!(head.body, BodyFraming::Empty);
    }

    fn head_of(text: &str) -> Head {
        head(text).unwrap().expect("a complete head")
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        );
        let created = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(created.status, 201);
        assert!(buf.is_empty());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        let head = head_of("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n");
        assert_eq!(head.status, 101);
        assert!(!head.keep_alive, "after 101 the connection is not HTTP/1.1");
    }

    #[test]
    fn heads_that_could_be_read_two_ways_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        let too_many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(head(&too_many).is_err());
    }

    #[test]
    fn a_sized_body_is_sliced_out_and_ends_at_its_length() {
        let mut buf = BytesMut::from("hello, world and the next response");
        let mut framing = BodyFraming::Length(12);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("hello, world"))
        );
        assert!(framing.is_done());
        assert_eq!(framing.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b" and the next response");
        for step in [1, 3, 100] {
            assert_eq!(
                decode_all(BodyFraming::Length(12), b"hello, world", step).unwrap(),
                b"hello, world"
            );
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire =
            b"5\r\nhello\r\n1;name=value\r\n,\r\nD\r\n world, again\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 1000] {
            let body = decode_all(
                BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 }),
                &wire[..wire.len() - 4],
                step,
            )
            .unwrap();
            assert_eq!(body, b"hello, world, again", "step {step}");
        }
        // The end is known as soon as it is in the buffer, and nothing
        // after it is taken.
        let mut buf = BytesMut::from(&wire[..]);
        let mut framing = BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 });
        let mut body = Vec::new();
        while let Decoded::Data(data) = framing.decode(&mut buf).unwrap() {
            body.extend_from_slice(&data);
            framing.settle(&mut buf).unwrap();
            if framing.is_done() {
                break;
            }
        }
        assert!(framing.is_done());
        assert_eq!(&buf[..], b"NEXT");
        // Bare LF line ends are read too (as hyper does).
        assert_eq!(
            decode_all(
                BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 }),
                b"2\nhi\r\n0\n\n",
                1
            )
            .unwrap(),
            b"hi"
        );
    }

    #[test]
    fn the_chunks_a_read_brought_are_taken_as_one_piece() {
        let chunked = || BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 });
        // Small chunks (a token stream), an extension, the end: one piece,
        // and the end known with it.
        let mut framing = chunked();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\n1;x=y\r\nf\r\n0\r\n\r\nNEXT"[..]);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("abcdef"))
        );
        assert!(framing.is_done());
        assert_eq!(&buf[..], b"NEXT");
        // A chunk cut by the read: what is here now, the rest later.
        let mut framing = chunked();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n4\r\nde"[..]);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("abcde"))
        );
        assert!(buf.is_empty());
        buf.extend_from_slice(b"fg\r\n0\r\n\r\n");
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("fg"))
        );
        assert!(framing.is_done());
        // Data before broken framing is handed out, then the error.
        let mut framing = chunked();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\nzz\r\n"[..]);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("abc"))
        );
        assert!(framing.decode(&mut buf).is_err());
        // Sizes up to 16 hex digits take the quick way; 17 are refused.
        let mut framing = chunked();
        let mut buf = BytesMut::from(&b"0000000000000002\r\nhi\r\n"[..]);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("hi"))
        );
        let mut buf = BytesMut::from(&b"00000000000000002\r\nhi\r\n"[..]);
        assert!(chunked().decode(&mut buf).is_err());
        // The largest size a line can name: the data at hand, no overflow.
        let mut framing = chunked();
        let mut buf = BytesMut::from(&b"FFFFFFFFFFFFFFFF\r\nhi"[..]);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("hi"))
        );
        assert_eq!(framing, BodyFraming::Chunked(Chunked::Data(u64::MAX - 2)));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        let chunked = || BodyFraming::Chunked(Chunked::Size { line: 0, size: 0 });
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            b"0\r\n\rx",
        ] {
            assert!(decode_all(chunked(), bad, 1).is_err(), "{bad:?}");
        }
        let long_extension = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(decode_all(chunked(), long_extension.as_bytes(), 100).is_err());
        let long_trailers = format!("0\r\n{}", "x-t: v\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert!(decode_all(chunked(), long_trailers.as_bytes(), 100).is_err());
    }
}
