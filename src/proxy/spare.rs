//! Read and write buffers kept by each worker thread between requests, for
//! both sides of the gateway's own HTTP/1.1 (`h1_server` to clients, `h1`
//! to nodes). Neither an idle connection nor a long response holds one,
//! and a busy thread does not allocate one per request.
//!
//! Reads and writes keep separate lists: a buffer sized for one job (a 4 KB
//! read room; a head with a small body copied behind it) handed to the
//! other was grown again, and a single kept buffer went to only one of the
//! requests a thread runs at a time (callgrind, 4 connections on 2 threads:
//! about 3 `realloc`s per small POST, ~1.5k instructions, before the lists
//! were split and made lists). Freed 4 KB buffers of thousands of parked
//! connections also left the heap too fragmented to give back (15,000 idle
//! connections: 6.8 KB each with a buffer per connection until it parked).
//!
//! Header maps are kept the same way: a request's and its response's map
//! each took two allocations per request (callgrind, small POST: 4
//! `malloc`s and ~1k instructions with their frees).

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// What a buffer is for.
#[derive(Clone, Copy)]
pub enum Role {
    /// Bytes read from a peer (client request heads and bodies).
    Read,
    /// Bytes to write (request heads to nodes, responses to clients).
    Write,
}

/// Buffers kept per thread and role: more than the requests a thread runs
/// at once under a typical load, few enough to be small beside the thread.
const KEEP: usize = 32;
/// Larger buffers (a long head, a large response) are not kept.
const KEEP_UP_TO: usize = 64 * 1024;

/// Maps with room for more headers than this are not kept (a client's
/// 100-line head does not make every later map that large).
const KEEP_MAPS_UP_TO: usize = 64;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

fn with_list<R>(role: Role, f: impl FnOnce(&mut Vec<BytesMut>) -> R) -> R {
    let list = match role {
        Role::Read => &READ,
        Role::Write => &WRITE,
    };
    list.with(|list| f(&mut list.borrow_mut()))
}

/// A buffer for `role`, empty (with room if one was kept).
pub fn take(role: Role) -> BytesMut {
    with_list(role, Vec::pop).unwrap_or_default()
}

/// Keep `buf` for a later [`take`] of `role` if it is worth keeping.
pub fn give_back(role: Role, mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > KEEP_UP_TO {
        return;
    }
    buf.clear();
    with_list(role, |list| {
        if list.len() < KEEP {
            list.push(buf);
        }
    });
}

/// An empty header map with room for `headers` (a kept one if there is).
pub fn take_headers(headers: usize) -> HeaderMap {
    match MAPS.with(|list| list.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(headers);
            map
        }
        None => HeaderMap::with_capacity(headers),
    }
}

/// Keep `map`, emptied, for a later [`take_headers`] if it is worth keeping.
pub fn give_back_headers(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > KEEP_MAPS_UP_TO {
        return;
    }
    map.clear();
    MAPS.with(|list| {
        let mut list = list.borrow_mut();
        if list.len() < KEEP {
            list.push(map);
        }
    });
}

/// A header map that goes back to the thread's list when dropped,
/// whichever way its holder ends.
pub struct KeptHeaders(pub HeaderMap);

impl std::ops::Deref for KeptHeaders {
    type Target = HeaderMap;
    fn deref(&self) -> &HeaderMap {
        &self.0
    }
}

impl std::ops::DerefMut for KeptHeaders {
    fn deref_mut(&mut self) -> &mut HeaderMap {
        &mut self.0
    }
}

impl Drop for KeptHeaders {
    fn drop(&mut self) {
        give_back_headers(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_come_back_empty_and_large_ones_are_not_kept() {
        let mut map = take_headers(8);
        map.insert("x-a", http::HeaderValue::from_static("1"));
        let room = map.capacity();
        give_back_headers(map);
        let map = take_headers(4);
        assert!(map.is_empty());
        assert_eq!(map.capacity(), room, "the kept map was not reused");
        let mut big = HeaderMap::with_capacity(KEEP_MAPS_UP_TO * 2);
        big.insert("x-b", http::HeaderValue::from_static("2"));
        give_back_headers(big);
        give_back_headers(map);
        // The small one comes back, the large one was dropped.
        assert_eq!(take_headers(1).capacity(), room);
        assert_eq!(
            take_headers(1).capacity(),
            HeaderMap::<http::HeaderValue>::with_capacity(1).capacity()
        );
    }

    #[test]
    fn each_role_gets_back_its_own_buffers() {
        let mut read = BytesMut::with_capacity(4096);
        read.extend_from_slice(b"GET / HTTP/1.1\r\n");
        give_back(Role::Read, read);
        give_back(Role::Write, BytesMut::with_capacity(512));
        give_back(Role::Write, BytesMut::with_capacity(1024 * 1024));
        let read = take(Role::Read);
        assert!(read.is_empty() && read.capacity() >= 4096);
        assert_eq!(take(Role::Write).capacity(), 512);
        // The large one was not kept; an empty list gives a new buffer.
        assert_eq!(take(Role::Write).capacity(), 0);
        assert_eq!(take(Role::Read).capacity(), 0);
    }
}
