//! The time now, read at most once per poll of a connection's task.
//!
//! A small proxied request read the clock seven times: when its head
//! came, for its first-byte deadline, its response body, each frame, its
//! node connection's return to the pool, its latency and the wait for the
//! connection's next head. They fall in two polls of its connection's task
//! (the request going out, the answer coming back), microseconds apart,
//! and each read costs a `clock_gettime` (~25 ns here, 3 % of the request
//! path's user time; callgrind counts 2 reads per request with this).
//! A worker polls each connection's task inside [`PerPoll`]; [`now`]
//! there returns the poll's first reading. Elsewhere (other threads,
//! tests, hyper's HTTP/2 stream tasks) it reads the clock each time.
//!
//! Only readings that stamp or time a request come from here; a poll's
//! work is microseconds, so they are off by that at most. Code that waits
//! for time to pass within one poll must not use it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    /// `Some(None)` inside a poll before the first reading, `Some(Some(t))`
    /// after it; `None` outside any [`PerPoll`].
    static READING: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// Now: the current poll's reading when inside a [`PerPoll`], else the
/// clock.
#[inline]
pub fn now() -> Instant {
    match READING.get() {
        Some(Some(t)) => t,
        Some(None) => {
            let t = Instant::now();
            READING.set(Some(Some(t)));
            t
        }
        None => Instant::now(),
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll shares one clock reading ([`now`]).
    pub struct PerPoll<F> {
        #[pin]
        inner: F,
    }
}

impl<F> PerPoll<F> {
    /// Wrap `inner`.
    pub fn new(inner: F) -> PerPoll<F> {
        PerPoll { inner }
    }
}

impl<F: Future> Future for PerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Nested inside another's poll (not done today), the outer one's
        // reading is put back after.
        let outer = READING.replace(Some(None));
        let polled = self.project().inner.poll(cx);
        READING.set(outer);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads the clock twice per poll, with time passing between, and
    /// needs `polls` polls to finish.
    struct Reader {
        polls: usize,
        seen: Vec<(Instant, Instant)>,
    }

    impl Future for Reader {
        type Output = Vec<(Instant, Instant)>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            let second = now();
            self.seen.push((first, second));
            if self.seen.len() == self.polls {
                return Poll::Ready(std::mem::take(&mut self.seen));
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn one_reading_per_poll_inside_and_a_fresh_one_each_poll() {
        let seen = PerPoll::new(Reader {
            polls: 2,
            seen: Vec::new(),
        })
        .await;
        assert_eq!(seen[0].0, seen[0].1, "one poll, one reading");
        assert_eq!(seen[1].0, seen[1].1);
        assert!(
            seen[1].0 >= seen[0].0 + Duration::from_millis(2),
            "the next poll reads again"
        );
        // Outside, the clock is read each time, and no reading is left over.
        let (a, b) = Reader {
            polls: 1,
            seen: Vec::new(),
        }
        .await[0];
        assert!(b >= a + Duration::from_millis(2));
        assert_eq!(READING.get(), None);
    }
}
