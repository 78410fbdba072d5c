//! A request's headers as routing reads them and as they are forwarded.
//!
//! Requests hyper parsed (TLS, HTTP/2) come with a `HeaderMap`. A plain
//! HTTP/1.1 request keeps its header lines in the client's own bytes
//! ([`HeaderLines`]): turning each line into a `HeaderName` and a
//! `HeaderValue`, hashing them into a map and writing them out again for
//! the node was about a tenth of a small request's instructions
//! (callgrind), and the lines the node gets are the client's anyway. What
//! routing asks of headers (classification, route matches, tenants, hash
//! keys, the request id) it asks through [`RequestHeaders`], which reads
//! either; a request has a handful of lines, so a lookup is a short scan.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::ascii_case::eq_lower;

/// What a header line is to the forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Forwarded as it came.
    Forward,
    /// Hop-by-hop (RFC 9110 §7.6.1), or named by `Connection`: not
    /// forwarded.
    HopByHop,
    /// Set by the gateway itself (`X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `X-Request-Id`): the gateway writes its own line instead.
    Gateway,
    /// `Content-Length`: forwarded only when the node gets the client's
    /// body framing as it was declared.
    Length,
    /// Taken in by the parser and no header at all: a `Connection` saying
    /// only close or keep-alive, or a `Content-Length` a transfer coding
    /// overrides.
    Consumed,
}

/// Where one header line lies in the head's bytes.
#[derive(Debug, Clone, Copy)]
struct LineAt {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
    /// Just past the line's LF.
    end: u32,
    kind: LineKind,
}

/// The header lines of a request head, kept in the head's bytes.
#[derive(Debug, Default)]
pub struct HeaderLines {
    bytes: Bytes,
    lines: Vec<LineAt>,
    /// Lines the gateway adds (`name: value` and CRLF each), written after
    /// the client's: cheaper than a map for the two or three it adds.
    added: Vec<u8>,
    /// One bit per name in `lines` (of its first and last letters and
    /// its length, [`name_bit`]): most names looked up are absent (a request id, a
    /// priority, a tenant's key), and the bit says so without a scan of
    /// the lines (~100–175 instructions a lookup before).
    names: u64,
    /// The same for the names in `added`.
    added_names: u64,
}

/// The bit of [`HeaderLines::names`] for a name (case-insensitive): its
/// first and last letters and its length (with the first letter and the
/// length only, `host` and the priority header shared a bit).
fn name_bit(name: &[u8]) -> u64 {
    let letter = |b: Option<&u8>| u32::from(b.map_or(0, u8::to_ascii_lowercase));
    let mixed = letter(name.first()) * 31 + letter(name.last()) * 7 + name.len() as u32;
    1 << (mixed & 63)
}

impl HeaderLines {
    /// Lines in `bytes` (a whole head: request line, header lines and the
    /// empty line ending it), to be added in order with [`push`](Self::push).
    pub fn new(bytes: Bytes, capacity: usize) -> HeaderLines {
        HeaderLines {
            bytes,
            lines: Vec::with_capacity(capacity),
            added: Vec::new(),
            names: 0,
            added_names: 0,
        }
    }

    /// Add the next line: its name and value as (offset, length) in the
    /// head's bytes, the value without the whitespace around it.
    pub fn push(&mut self, name: (u32, u32), value: (u32, u32), kind: LineKind) {
        // A line ends where the next begins; the last one before the
        // head's empty line, CRLF or a bare LF.
        if let Some(last) = self.lines.last_mut() {
            last.end = name.0;
        }
        let len = self.bytes.len() as u32;
        let end = if self.bytes.ends_with(b"\r\n") {
            len - 2
        } else {
            len.saturating_sub(1)
        };
        self.names |= name_bit(self.slice(name.0, name.1));
        self.lines.push(LineAt {
            name: name.0,
            name_len: name.1,
            value: value.0,
            value_len: value.1,
            end,
            kind,
        });
    }

    /// Add a line of the gateway's own. Its name must be one the client's
    /// lines of kind [`LineKind::Gateway`] are (those are not forwarded),
    /// or one the client did not send.
    pub fn add(&mut self, name: &HeaderName, value: &[u8]) {
        self.added_names |= name_bit(name.as_str().as_bytes());
        put_line(&mut self.added, name, &[value]);
    }

    /// Add a line of the gateway's own named as client lines may be, with
    /// `value` appended to the first one's value (", "), as
    /// `X-Forwarded-For` is; `value` alone when the client sent none.
    pub fn add_appended(&mut self, name: &HeaderName, value: &[u8]) {
        let name_bytes = name.as_str().as_bytes();
        let bit = name_bit(name_bytes);
        self.added_names |= bit;
        // Offsets first: `self.bytes` is read while `self.added` grows.
        let existing = (self.names & bit != 0)
            .then(|| {
                self.lines
                    .iter()
                    .find(|l| self.is_named(l, name_bytes, false))
                    .map(|l| (l.value as usize, l.value_len as usize))
            })
            .flatten();
        let existing = existing
            .and_then(|(at, len)| self.bytes.get(at..at + len))
            .filter(|v| !v.trim_ascii().is_empty());
        match existing {
            Some(existing) => put_line(&mut self.added, name, &[existing, b", ", value]),
            None => put_line(&mut self.added, name, &[value]),
        }
    }

    /// The lines the gateway added: name and value.
    fn added(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.added.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = memchr::memchr(b':', line)?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
    }

    /// The values of the lines the gateway added named `name` (lowercase).
    fn added_values<'a, 'n>(&'a self, name: &'n [u8]) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        let present = self.added_names & name_bit(name) != 0;
        present
            .then(|| self.added())
            .into_iter()
            .flatten()
            .filter(move |(n, _)| eq_lower(n, name))
            .map(|(_, value)| value)
    }

    fn slice(&self, at: u32, len: u32) -> &[u8] {
        self.bytes
            .get(at as usize..(at + len) as usize)
            .unwrap_or_default()
    }

    /// Whether `line` is named `name` (lowercase) and counts: every line
    /// the parser did not take in, or only the forwarded ones.
    fn is_named(&self, line: &LineAt, name: &[u8], forwarded_only: bool) -> bool {
        // The length first: most lines are told apart by it alone.
        line.name_len as usize == name.len()
            && match line.kind {
                LineKind::Forward | LineKind::Length => true,
                LineKind::HopByHop | LineKind::Gateway => !forwarded_only,
                LineKind::Consumed => false,
            }
            && eq_lower(self.slice(line.name, line.name_len), name)
    }

    /// The values of the client's lines named `name` (lowercase).
    fn values<'a, 'n>(
        &'a self,
        name: &'n [u8],
        forwarded_only: bool,
    ) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        let lines = if self.names & name_bit(name) != 0 {
            &self.lines[..]
        } else {
            &[]
        };
        lines
            .iter()
            .filter(move |l| self.is_named(l, name, forwarded_only))
            .map(|l| self.slice(l.value, l.value_len))
    }

    /// The first value of `name` (lowercase) among the client's lines.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.values(name.as_bytes(), false).next()
    }

    /// A `Content-Length` line is among those that may be forwarded.
    pub fn has_length(&self) -> bool {
        self.lines.iter().any(|l| l.kind == LineKind::Length)
    }

    /// Write the forwarded lines to `out` (the `Content-Length` lines too
    /// if `keep_length`): runs of whole lines as the client wrote them; a
    /// line the client ended with a bare LF is written again with CRLF.
    pub fn write(&self, keep_length: bool, out: &mut BytesMut) {
        // A run is a range of forwarded lines that follow one another.
        let mut run: Option<(usize, usize)> = None;
        for line in &self.lines {
            let forwarded = match line.kind {
                LineKind::Forward => true,
                LineKind::Length => keep_length,
                _ => false,
            };
            if !forwarded {
                continue;
            }
            let (start, end) = (line.name as usize, line.end as usize);
            if self.bytes.get(end.saturating_sub(2)..end) == Some(b"\r\n") {
                match &mut run {
                    Some((_, run_end)) if *run_end == start => *run_end = end,
                    _ => {
                        if let Some((a, b)) = run.replace((start, end)) {
                            out.put_slice(&self.bytes[a..b]);
                        }
                    }
                }
            } else {
                if let Some((a, b)) = run.take() {
                    out.put_slice(&self.bytes[a..b]);
                }
                out.put_slice(self.slice(line.name, line.name_len));
                out.put_slice(b": ");
                out.put_slice(self.slice(line.value, line.value_len));
                out.put_slice(b"\r\n");
            }
        }
        if let Some((a, b)) = run {
            out.put_slice(&self.bytes[a..b]);
        }
        out.put_slice(&self.added);
    }

    /// Bytes the forwarded lines take at most.
    pub fn forwarded_len(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| matches!(l.kind, LineKind::Forward | LineKind::Length))
            .map(|l| (l.end - l.name) as usize + 1)
            .sum::<usize>()
            + self.added.len()
    }

    /// The lines as a map, as hyper would have parsed them (for a node
    /// hyper's client speaks to): every line but those the parser took in.
    /// Lines the parser accepted are valid names and values; one that is
    /// not is left out.
    pub fn to_map(&self) -> HeaderMap {
        self.map_of(|kind| kind != LineKind::Consumed)
    }

    /// The forwarded lines, and those the gateway added, as a map.
    pub fn forwarded_map(&self) -> HeaderMap {
        let mut map = self.map_of(|kind| matches!(kind, LineKind::Forward | LineKind::Length));
        for (name, value) in self.added() {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        }
        map
    }

    fn map_of(&self, keep: impl Fn(LineKind) -> bool) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.lines.len() + 3);
        for line in &self.lines {
            if !keep(line.kind) {
                continue;
            }
            let name = HeaderName::from_bytes(self.slice(line.name, line.name_len));
            let at = line.value as usize;
            let value = self
                .bytes
                .get(at..at + line.value_len as usize)
                .map(|_| self.bytes.slice(at..at + line.value_len as usize))
                .and_then(|v| HeaderValue::from_maybe_shared(v).ok());
            if let (Ok(name), Some(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }
}

/// Append the line `name: value` (the value in `parts`) and CRLF.
fn put_line(out: &mut Vec<u8>, name: &HeaderName, parts: &[&[u8]]) {
    if out.capacity() == 0 {
        // Room for the usual three (forwarded for, proto, request id).
        out.reserve(128);
    }
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// A request's headers to read: a map, the lines of a plain HTTP/1.1
/// request, or both (the gateway's own headers in the map, which win, and
/// the client's lines).
#[derive(Debug, Clone, Copy)]
pub struct RequestHeaders<'a> {
    map: &'a HeaderMap,
    lines: Option<&'a HeaderLines>,
    /// Only the lines that are forwarded count.
    forwarded_only: bool,
}

impl<'a> From<&'a HeaderMap> for RequestHeaders<'a> {
    fn from(map: &'a HeaderMap) -> RequestHeaders<'a> {
        RequestHeaders {
            map,
            lines: None,
            forwarded_only: false,
        }
    }
}

impl<'a> RequestHeaders<'a> {
    /// The headers as the client sent them: its map or its lines.
    pub fn client(map: &'a HeaderMap, lines: Option<&'a HeaderLines>) -> RequestHeaders<'a> {
        RequestHeaders {
            map,
            lines,
            forwarded_only: false,
        }
    }

    /// The headers as a node gets them: the gateway's own in `map`, then
    /// the forwarded ones of the client's `lines`.
    pub fn forwarded(map: &'a HeaderMap, lines: Option<&'a HeaderLines>) -> RequestHeaders<'a> {
        RequestHeaders {
            map,
            lines,
            forwarded_only: true,
        }
    }

    /// Every value of `name` (lowercase), the map's first.
    pub fn get_all<'n>(self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        // An empty map is not asked: a `&str` is parsed on every lookup.
        let from_map = (!self.map.is_empty())
            .then(|| self.map.get_all(name))
            .into_iter()
            .flatten()
            .map(HeaderValue::as_bytes);
        let from_added = self
            .lines
            .filter(|_| self.forwarded_only)
            .into_iter()
            .flat_map(move |lines| lines.added_values(name.as_bytes()));
        let from_lines = self
            .lines
            .into_iter()
            .flat_map(move |lines| lines.values(name.as_bytes(), self.forwarded_only));
        from_map.chain(from_added).chain(from_lines)
    }

    /// The first value of `name` in the lines (those the gateway added
    /// first, in the forwarded view).
    fn first_line(self, name: &[u8]) -> Option<&'a [u8]> {
        let lines = self.lines?;
        let added = self.forwarded_only.then(|| lines.added_values(name).next());
        added
            .flatten()
            .or_else(|| lines.values(name, self.forwarded_only).next())
    }

    /// The first value of `name`, a name made once (a `&str` is parsed
    /// again on every map lookup).
    pub fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        if let Some(value) = self.map.get(name) {
            return Some(value.as_bytes());
        }
        self.first_line(name.as_str().as_bytes())
    }

    /// The first value of `name` (lowercase).
    pub fn get_str(self, name: &str) -> Option<&'a [u8]> {
        if !self.map.is_empty() {
            if let Some(value) = self.map.get(name) {
                return Some(value.as_bytes());
            }
        }
        self.first_line(name.as_bytes())
    }

    /// How many values `name` has.
    pub fn count(self, name: &HeaderName) -> usize {
        self.get_all(name.as_str()).count()
    }
}

/// `value` as text if it is visible ASCII (and tabs), as
/// `HeaderValue::to_str` takes it.
pub fn visible_str(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `head` as a parser would give them, with `kinds`.
    fn lines_of(head: &'static [u8], kinds: &[LineKind]) -> HeaderLines {
        let bytes = Bytes::from_static(head);
        let mut lines = HeaderLines::new(bytes.clone(), 4);
        let mut at = memchr::memchr(b'\n', head).map_or(0, |i| i + 1);
        for &kind in kinds {
            let end = at + memchr::memchr(b'\n', &head[at..]).unwrap_or(0);
            let colon = at + memchr::memchr(b':', &head[at..end]).unwrap_or(0);
            let value = head[colon + 1..end].trim_ascii();
            let value_at = value.as_ptr() as usize - head.as_ptr() as usize;
            lines.push(
                (at as u32, (colon - at) as u32),
                (value_at as u32, value.len() as u32),
                kind,
            );
            at = end + 1;
        }
        lines
    }

    /// The name bits only skip scans: names present are found in any
    /// case, absent ones are not, also when their bit is shared.
    #[test]
    fn lookups_find_present_names_and_skip_absent_ones() {
        use LineKind::*;
        let lines = lines_of(
            b"GET / HTTP/1.1\r\nHOST: a\r\nX-Priority: high\r\nx-b: 1\r\nx-B: 2\r\n\r\n",
            &[Forward, Forward, Forward, Forward],
        );
        assert_eq!(lines.get("host"), Some(&b"a"[..]));
        assert_eq!(lines.get("x-priority"), Some(&b"high"[..]));
        assert_eq!(lines.values(b"x-b", false).count(), 2);
        // Absent, with a bit of its own and with the bit of a present
        // name.
        assert_eq!(lines.get("authorization"), None);
        let shares_a_bit = (b'a'..=b'z')
            .flat_map(|a| (b'a'..=b'z').map(move |b| [a, b'-', b]))
            .find(|n| n != b"x-b" && name_bit(n) == name_bit(b"x-b"))
            .expect("a name sharing the bit of x-b");
        let shares_a_bit = std::str::from_utf8(&shares_a_bit).unwrap_or_default();
        assert_eq!(lines.get(shares_a_bit), None);
        assert_eq!(HeaderLines::default().get("host"), None);
    }

    #[test]
    fn forwarded_lines_are_written_as_runs_of_the_clients_bytes() {
        use LineKind::*;
        let lines = lines_of(
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: x-b\r\nX-B: 1\r\nContent-Length: 2\r\nAccept: */*\r\nX-Forwarded-For: 9.9.9.9\r\nUser-Agent: t\r\n\r\n",
            &[Forward, HopByHop, HopByHop, Length, Forward, Gateway, Forward],
        );
        let mut out = BytesMut::new();
        lines.write(false, &mut out);
        assert_eq!(&out[..], b"Host: a\r\nAccept: */*\r\nUser-Agent: t\r\n");
        out.clear();
        lines.write(true, &mut out);
        assert_eq!(
            &out[..],
            b"Host: a\r\nContent-Length: 2\r\nAccept: */*\r\nUser-Agent: t\r\n"
        );
        assert!(out.len() <= lines.forwarded_len());
        assert!(lines.has_length());
        let mut lines = lines;
        lines.add(
            &HeaderName::from_static("x-forwarded-for"),
            b"9.9.9.9, 1.2.3.4",
        );
        out.clear();
        lines.write(false, &mut out);
        assert_eq!(
            &out[..],
            b"Host: a\r\nAccept: */*\r\nUser-Agent: t\r\nx-forwarded-for: 9.9.9.9, 1.2.3.4\r\n"
        );
        assert!(out.len() <= lines.forwarded_len());
        assert_eq!(lines.forwarded_map()["x-forwarded-for"], "9.9.9.9, 1.2.3.4");
        // The client's X-Forwarded-For, with the address appended.
        let mut lines = lines_of(
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7\r\nHost: a\r\n\r\n",
            &[Gateway, Forward],
        );
        lines.add_appended(&HeaderName::from_static("x-forwarded-for"), b"10.0.0.1");
        out.clear();
        lines.write(false, &mut out);
        assert_eq!(
            &out[..],
            b"Host: a\r\nx-forwarded-for: 203.0.113.7, 10.0.0.1\r\n"
        );
    }

    #[test]
    fn a_line_ended_by_a_bare_lf_is_written_with_crlf() {
        use LineKind::*;
        let lines = lines_of(
            b"GET / HTTP/1.1\nHost: a\nAccept: b\n\n",
            &[Forward, Forward],
        );
        let mut out = BytesMut::new();
        lines.write(true, &mut out);
        assert_eq!(&out[..], b"Host: a\r\nAccept: b\r\n");
    }

    #[test]
    fn lookups_ignore_case_and_the_forwarded_view_skips_dropped_lines() {
        use LineKind::*;
        let lines = lines_of(
            b"GET / HTTP/1.1\r\nHOST: a\r\nCookie: x=1\r\nKeep-Alive: 5\r\ncookie: y=2\r\nConnection: close\r\n\r\n",
            &[Forward, Forward, HopByHop, Forward, Consumed],
        );
        let empty = HeaderMap::new();
        let client = RequestHeaders::client(&empty, Some(&lines));
        assert_eq!(client.get(&http::header::HOST), Some(&b"a"[..]));
        assert_eq!(
            client.get_all("cookie").collect::<Vec<_>>(),
            [&b"x=1"[..], b"y=2"]
        );
        assert_eq!(client.get_str("keep-alive"), Some(&b"5"[..]));
        assert_eq!(client.get_str("connection"), None, "taken in by the parser");
        let mut own = HeaderMap::new();
        own.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let forwarded = RequestHeaders::forwarded(&own, Some(&lines));
        assert_eq!(forwarded.get_str("keep-alive"), None);
        assert_eq!(forwarded.get_str("x-forwarded-proto"), Some(&b"http"[..]));
        assert_eq!(forwarded.count(&http::header::COOKIE), 2);
        // Lines the gateway added count in the forwarded view only.
        let mut lines = lines;
        lines.add(&http::header::COOKIE, b"z=3");
        lines.add(&HeaderName::from_static("x-request-id"), b"r1");
        let empty = HeaderMap::new();
        let forwarded = RequestHeaders::forwarded(&empty, Some(&lines));
        assert_eq!(forwarded.get_str("x-request-id"), Some(&b"r1"[..]));
        assert_eq!(forwarded.count(&http::header::COOKIE), 3);
        assert_eq!(
            forwarded.get_all("cookie").collect::<Vec<_>>(),
            [&b"z=3"[..], b"x=1", b"y=2"]
        );
        let client = RequestHeaders::client(&empty, Some(&lines));
        assert_eq!(client.get_str("x-request-id"), None);
        assert_eq!(client.count(&http::header::COOKIE), 2);
    }

    #[test]
    fn the_map_form_has_every_line_but_those_taken_in() {
        use LineKind::*;
        let lines = lines_of(
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
            &[Forward, HopByHop, Consumed],
        );
        let map = lines.to_map();
        assert_eq!(map.len(), 2);
        assert_eq!(map["te"], "trailers");
        let forwarded = lines.forwarded_map();
        assert_eq!(forwarded.len(), 1);
        assert_eq!(forwarded["host"], "a");
    }

    #[test]
    fn visible_str_takes_what_header_value_to_str_takes() {
        for value in [&b"abc def"[..], b"a\tb", b"", b"caf\xc3\xa9", b"a\x7f"] {
            let expected = HeaderValue::from_bytes(value)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_owned));
            assert_eq!(visible_str(value).map(str::to_owned), expected);
        }
    }
}
