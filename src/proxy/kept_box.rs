//! A request's future boxed in memory its worker thread keeps between
//! requests.
//!
//! Each request's future is boxed so that a connection holds only a
//! pointer between requests. On the gateway's own HTTP/1.1 (`h1_server`)
//! that box is a `KeptBox`; hyper's connections (TLS, HTTP/2) take a
//! `Box<dyn Future>` and are not served from here. The future is about
//! 5 KB, past jemalloc's fast path (size classes up to 4 KiB come from the
//! thread cache in ~25 instructions): callgrind counted ~190 instructions
//! for the allocation and as many for the free of every request's box
//! (small POST, 5,000 requests). The blocks freed here go to a short list
//! of their thread and are reused by its next requests, as the thread's
//! buffers and header maps are (`spare`).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks kept per thread and layout: more than the requests a thread runs
/// at once under a typical load; beyond that they go back to the heap.
const KEEP: usize = 64;

/// Freed blocks of one thread, by layout (a thread boxes one or two kinds
/// of future, so a short list of lists).
struct Kept(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for Kept {
    fn drop(&mut self) {
        for (layout, blocks) in self.0.drain(..) {
            for block in blocks {
                // SAFETY: every kept block came from `alloc(layout)` and is
                // owned by this list alone.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static KEPT: RefCell<Kept> = const { RefCell::new(Kept(Vec::new())) };
}

/// A kept block of `layout`, or a new one.
fn take(layout: Layout) -> NonNull<u8> {
    let kept = KEPT
        .try_with(|kept| {
            let mut kept = kept.borrow_mut();
            kept.0
                .iter_mut()
                .find(|(l, _)| *l == layout)
                .and_then(|(_, blocks)| blocks.pop())
        })
        .ok()
        .flatten();
    kept.unwrap_or_else(|| {
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        let block = unsafe { alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| handle_alloc_error(layout))
    })
}

/// Keep `block` for the thread's next [`take`] of `layout`, or free it.
fn give_back(block: NonNull<u8>, layout: Layout) {
    let kept = KEPT
        .try_with(|kept| {
            let mut kept = kept.borrow_mut();
            let lists = &mut kept.0;
            let index = match lists.iter().position(|(l, _)| *l == layout) {
                Some(index) => index,
                None => {
                    lists.push((layout, Vec::new()));
                    lists.len() - 1
                }
            };
            let blocks = &mut lists[index].1;
            if blocks.len() < KEEP {
                blocks.push(block);
                true
            } else {
                false
            }
        })
        // The thread is ending: its list is gone.
        .unwrap_or(false);
    if !kept {
        // SAFETY: `block` came from `take(layout)` and nothing else owns it.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// A pinned, boxed future whose block returns to its thread's list.
pub(crate) struct KeptBox<F: Future> {
    future: NonNull<F>,
}

// SAFETY: a `KeptBox` owns its future as a `Box` does; the block is plain
// heap memory, which any thread may keep or free.
unsafe impl<F: Future + Send> Send for KeptBox<F> {}

impl<F: Future> KeptBox<F> {
    /// Box the future `make` returns, written straight into its block (not
    /// made on the stack and copied).
    pub(crate) fn new(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            let future = NonNull::<F>::dangling();
            // SAFETY: a zero-sized value needs no memory; dangling is
            // aligned and valid for it.
            unsafe { future.as_ptr().write(make()) };
            return KeptBox { future };
        }
        let block = take(layout).cast::<F>();
        // If `make` panics the block is lost to the heap, as a `Box`'s
        // would be: no future was written, so nothing is dropped.
        // SAFETY: the block is valid for writes of `F`, aligned, unused.
        unsafe { block.as_ptr().write(make()) };
        KeptBox { future: block }
    }
}

impl<F: Future> Future for KeptBox<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future never moves out of its block while the box
        // lives (the box is a pointer; moving it does not move the future),
        // and it is dropped in place.
        unsafe { Pin::new_unchecked(&mut *self.future.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for KeptBox<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // Give the block back even if the future's drop panics.
        struct Release(NonNull<u8>, Layout);
        impl Drop for Release {
            fn drop(&mut self) {
                if self.1.size() != 0 {
                    give_back(self.0, self.1);
                }
            }
        }
        let _release = Release(self.future.cast(), layout);
        // SAFETY: the future was written in `new` and is dropped once.
        unsafe { self.future.as_ptr().drop_in_place() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A future that holds a big array and a counter of its drops.
    fn big(drops: &Rc<()>, value: u64) -> impl Future<Output = u64> {
        let guard = Rc::clone(drops);
        let pad = [value as u8; 6000];
        async move {
            let _guard = guard;
            tokio::task::yield_now().await;
            value + u64::from(pad[5999])
        }
    }

    #[tokio::test]
    async fn runs_the_future_and_reuses_its_block() {
        let drops = Rc::new(());
        let first = KeptBox::new(|| big(&drops, 7));
        let first_at = first.future.as_ptr() as usize;
        assert_eq!(first.await, 14);
        assert_eq!(Rc::strong_count(&drops), 1, "the future was dropped");
        // The next box of the same future takes the block just freed.
        let second = KeptBox::new(|| big(&drops, 9));
        assert_eq!(second.future.as_ptr() as usize, first_at);
        assert_eq!(second.await, 18);
    }

    #[tokio::test]
    async fn a_box_dropped_before_it_finishes_drops_its_future() {
        let drops = Rc::new(());
        let mut boxed = KeptBox::new(|| big(&drops, 1));
        // Started (suspended at its yield), then dropped.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut boxed).poll(&mut cx).is_pending());
        assert_eq!(Rc::strong_count(&drops), 2);
        drop(boxed);
        assert_eq!(Rc::strong_count(&drops), 1);
    }

    #[test]
    fn keeps_at_most_keep_blocks_per_layout() {
        let layout = Layout::from_size_align(5000, 8).unwrap();
        let blocks: Vec<_> = (0..KEEP + 5).map(|_| take(layout)).collect();
        for block in blocks {
            give_back(block, layout);
        }
        let kept = KEPT.with(|k| {
            let k = k.borrow();
            k.0.iter()
                .find(|(l, _)| *l == layout)
                .map_or(0, |(_, b)| b.len())
        });
        assert_eq!(kept, KEEP);
    }
}
