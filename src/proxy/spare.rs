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

use std::cell::RefCell;

use bytes::BytesMut;

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

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
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

#[cfg(test)]
mod tests {
    use super::*;

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
