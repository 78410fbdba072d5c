//! The shutdown drain as client connections wait for it: a flag, and the
//! wakers of the connections waiting.
//!
//! A connection waits for the drain beside its HTTP work, so the wait is
//! polled every time the connection's task runs, several times per
//! request. A `watch` channel's wait took its shared lock on each of those
//! polls (~1k instructions per small POST under callgrind, on a lock both
//! worker threads share); here a poll that finds nothing new is one atomic
//! load and a waker comparison, and the lock is taken only to register a
//! new waker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// The gateway's drain signal, shared by every client connection.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// Registered wakers by slot, and the free slots.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Drain {
    /// Start draining: every waiting connection is woken, and every wait
    /// from now on ends at once.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            waiters.free.clear();
            waiters.slots.drain(..).flatten().collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A future that ends once the drain starts.
    pub fn wait(&self) -> Drained<'_> {
        Drained {
            drain: self,
            slot: None,
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the drain when dropped.
#[derive(Debug, Default)]
pub struct StartOnDrop(pub Arc<Drain>);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        self.0.start();
    }
}

/// Ends once the drain starts ([`Drain::wait`]).
#[derive(Debug)]
pub struct Drained<'a> {
    drain: &'a Drain,
    /// The registered slot and the waker in it.
    slot: Option<(usize, Waker)>,
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_draining() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.slot {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let drain = self.drain;
        let mut waiters = drain.waiters();
        // Checked again under the lock: `start` sets the flag before it
        // takes the lock, so either it sees this waker or this sees the flag.
        if drain.is_draining() {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        let index = match &self.slot {
            Some((index, _)) => *index,
            None => match waiters.free.pop() {
                Some(index) => index,
                None => {
                    waiters.slots.push(None);
                    waiters.slots.len() - 1
                }
            },
        };
        if let Some(slot) = waiters.slots.get_mut(index) {
            *slot = Some(waker.clone());
        }
        drop(waiters);
        self.slot = Some((index, waker));
        Poll::Pending
    }
}

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        let Some((index, _)) = self.slot.take() else {
            return;
        };
        let mut waiters = self.drain.waiters();
        // After `start` the slots are gone (and freed all at once).
        if let Some(slot) = waiters.slots.get_mut(index) {
            *slot = None;
            waiters.free.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_end_when_the_drain_starts_and_start_at_once_after() {
        let drain = Arc::new(Drain::default());
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let drain = Arc::clone(&drain);
                tokio::spawn(async move { drain.wait().await })
            })
            .collect();
        // Registered, not ended.
        tokio::task::yield_now().await;
        let pending = tokio::time::timeout(Duration::from_millis(20), drain.wait()).await;
        assert!(pending.is_err(), "a wait ended before the drain");
        drain.start();
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiting connection was not woken")
                .unwrap();
        }
        drain.wait().await;
        assert!(drain.is_draining());
    }

    #[tokio::test]
    async fn dropping_the_guard_starts_the_drain() {
        let guard = StartOnDrop::default();
        let drain = Arc::clone(&guard.0);
        let waiting = tokio::spawn(async move { drain.wait().await });
        tokio::task::yield_now().await;
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the wait did not end when the guard was dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn slots_are_reused_and_freed() {
        let drain = Drain::default();
        for _ in 0..100 {
            let wait = drain.wait();
            let _ = tokio::time::timeout(Duration::from_millis(1), wait).await;
        }
        let waiters = drain.waiters();
        assert_eq!(waiters.slots.len(), 1, "one slot, reused");
        assert_eq!(waiters.free, [0]);
        assert!(waiters.slots[0].is_none());
    }
}
