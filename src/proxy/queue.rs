//! The admission queue of a pool: where requests wait when every candidate
//! node is at its concurrency limit.
//!
//! Bounded and priority-ordered. A waiter is woken when a node of the pool
//! frees a slot (an [`InFlight`](crate::fleet::InFlight) guard drops) and
//! then tries to pick a node again. Critical requests are woken before
//! standard ones, standard before sheddable; within a priority, first come
//! first served. When the queue is full, a new request may displace the
//! newest waiter of a lower priority (which is shed at once); otherwise the
//! newcomer is shed. Nothing waits past its deadline.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::classify::Priority;

/// Why a request could not be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full of requests of equal or higher priority.
    QueueFull,
    /// A higher-priority request took this one's place.
    Displaced,
    /// The deadline passed while waiting.
    TimedOut,
}

/// What a woken waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// A slot may be free: try to pick again.
    Retry,
    /// Displaced by a higher-priority request.
    Displaced,
}

struct Waiter {
    id: u64,
    wake: oneshot::Sender<Wake>,
}

/// A bounded, priority-ordered wait queue.
pub struct AdmissionQueue {
    /// Waiters by priority: index 0 sheddable, 1 standard, 2 critical.
    classes: Mutex<[VecDeque<Waiter>; 3]>,
    next_id: AtomicU64,
    /// Wake-ups issued while nobody was waiting, so a waiter arriving right
    /// after a slot freed does not sleep through it.
    waiting: AtomicU64,
}

impl Default for AdmissionQueue {
    fn default() -> Self {
        AdmissionQueue {
            classes: Mutex::new([VecDeque::new(), VecDeque::new(), VecDeque::new()]),
            next_id: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }
}

fn class_index(priority: Priority) -> usize {
    match priority {
        Priority::Sheddable => 0,
        Priority::Standard => 1,
        Priority::Critical => 2,
    }
}

impl AdmissionQueue {
    /// Requests waiting now.
    pub fn len(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Join the queue. Check for a free node once more after this (a slot
    /// may have freed in between), then [`Ticket::wait`]. Fails at once when
    /// the queue is full of requests of equal or higher priority.
    pub fn enqueue(&self, priority: Priority, capacity: usize) -> Result<Ticket<'_>, Shed> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = classes.iter().map(VecDeque::len).sum();
        if total >= capacity {
            // Displace the newest waiter of the lowest lower priority.
            let mine = class_index(priority);
            let victim = (0..mine).find(|&c| !classes[c].is_empty());
            match victim.and_then(|c| classes[c].pop_back()) {
                Some(victim) => {
                    let _ = victim.wake.send(Wake::Displaced);
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                None => return Err(Shed::QueueFull),
            }
        }
        classes[class_index(priority)].push_back(Waiter { id, wake: tx });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            queue: self,
            priority,
            id,
            rx: Some(rx),
        })
    }

    /// Join the queue and wait (tests and simple callers).
    pub async fn wait(
        &self,
        priority: Priority,
        capacity: usize,
        deadline: Instant,
    ) -> Result<(), Shed> {
        self.enqueue(priority, capacity)?.wait(deadline).await
    }

    /// Remove a waiter; false when it was no longer queued.
    fn remove(&self, priority: Priority, id: u64) -> bool {
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        let class = &mut classes[class_index(priority)];
        match class.iter().position(|w| w.id == id) {
            Some(pos) => {
                class.remove(pos);
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// A slot freed: wake the first waiter of the highest priority. Cheap
    /// when nobody waits (one atomic load).
    pub fn notify_one(&self) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        for class in classes.iter_mut().rev() {
            while let Some(waiter) = class.pop_front() {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                // A waiter that timed out already has a closed channel.
                if waiter.wake.send(Wake::Retry).is_ok() {
                    return;
                }
            }
        }
    }
}

/// A place in the queue. Dropping it leaves the queue; a wake-up it
/// received but did not use is passed on to the next waiter.
pub struct Ticket<'a> {
    queue: &'a AdmissionQueue,
    priority: Priority,
    id: u64,
    rx: Option<oneshot::Receiver<Wake>>,
}

/// What [`Ticket::wait_some`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// Woken to try again; the ticket has left the queue.
    Woken,
    /// Displaced by a higher-priority request; the ticket has left the queue.
    Displaced,
    /// `until` passed; the ticket keeps its place in the queue.
    Elapsed,
}

impl Ticket<'_> {
    /// Wait until woken, displaced, or `until`, keeping the place in the
    /// queue on `Elapsed` (for a caller that re-checks now and then).
    pub async fn wait_some(&mut self, until: Instant) -> Waited {
        let Some(rx) = self.rx.as_mut() else {
            return Waited::Woken;
        };
        match tokio::time::timeout_at(until, rx).await {
            Ok(outcome) => {
                self.rx = None;
                match outcome {
                    Ok(Wake::Retry) | Err(_) => Waited::Woken,
                    Ok(Wake::Displaced) => Waited::Displaced,
                }
            }
            Err(_) => Waited::Elapsed,
        }
    }

    /// Wait until woken to try again (`Ok`), displaced, or `deadline`.
    pub async fn wait(mut self, deadline: Instant) -> Result<(), Shed> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(Shed::TimedOut);
        };
        let outcome = tokio::time::timeout_at(deadline, rx).await;
        self.rx = None;
        match outcome {
            Ok(Ok(Wake::Retry)) => Ok(()),
            Ok(Ok(Wake::Displaced)) => Err(Shed::Displaced),
            Ok(Err(_)) => Err(Shed::TimedOut),
            Err(_) => {
                self.queue.remove(self.priority, self.id);
                Err(Shed::TimedOut)
            }
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        if !self.queue.remove(self.priority, self.id) {
            // Already popped: if that was a wake-up to retry, hand it on.
            if let Ok(Wake::Retry) = rx.try_recv() {
                self.queue.notify_one();
            }
        }
    }
}

/// Queues by pool name, kept across config reloads so requests waiting
/// when a reload lands are still woken by the new config's traffic.
#[derive(Default)]
pub struct QueueRegistry {
    queues: Mutex<std::collections::HashMap<String, std::sync::Arc<AdmissionQueue>>>,
}

impl QueueRegistry {
    /// The queue of `pool`, created on first use (config build time only).
    pub fn queue_for(&self, pool: &str) -> std::sync::Arc<AdmissionQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        std::sync::Arc::clone(queues.entry(pool.to_string()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn later(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn wakes_by_priority_then_arrival() {
        let q = Arc::new(AdmissionQueue::default());
        let mut order = Vec::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, priority) in [
            ("shed", Priority::Sheddable),
            ("std1", Priority::Standard),
            ("crit", Priority::Critical),
            ("std2", Priority::Standard),
        ] {
            let queue = Arc::clone(&q);
            let done = done_tx.clone();
            tokio::spawn(async move {
                queue.wait(priority, 10, later(5000)).await.unwrap();
                done.send(name).unwrap();
            });
            // Enqueue in a known order.
            while q.len() < order.len() as u64 + 1 {
                tokio::task::yield_now().await;
            }
            order.push(name);
        }
        let mut woken = Vec::new();
        for _ in 0..4 {
            q.notify_one();
            woken.push(done_rx.recv().await.unwrap());
        }
        assert_eq!(woken, vec!["crit", "std1", "std2", "shed"]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn full_queue_sheds_newcomer_or_displaces_lower_priority() {
        let q = Arc::new(AdmissionQueue::default());
        let q1 = Arc::clone(&q);
        let sheddable =
            tokio::spawn(async move { q1.wait(Priority::Sheddable, 1, later(5000)).await });
        while q.is_empty() {
            tokio::task::yield_now().await;
        }
        // Equal priority: the newcomer is shed.
        assert_eq!(
            q.wait(Priority::Sheddable, 1, later(5000)).await,
            Err(Shed::QueueFull)
        );
        // Higher priority displaces the waiting sheddable one.
        let q2 = Arc::clone(&q);
        let critical =
            tokio::spawn(async move { q2.wait(Priority::Critical, 1, later(5000)).await });
        assert_eq!(sheddable.await.unwrap(), Err(Shed::Displaced));
        while q.is_empty() {
            tokio::task::yield_now().await;
        }
        q.notify_one();
        assert_eq!(critical.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn dropped_ticket_leaves_and_passes_its_wakeup_on() {
        let q = Arc::new(AdmissionQueue::default());
        let first = q.enqueue(Priority::Standard, 4).unwrap();
        let q2 = Arc::clone(&q);
        let second = tokio::spawn(async move { q2.wait(Priority::Standard, 4, later(5000)).await });
        while q.len() < 2 {
            tokio::task::yield_now().await;
        }
        q.notify_one(); // goes to `first`, which no longer needs it
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()));
        assert!(q.is_empty());
        let unused = q.enqueue(Priority::Critical, 4).unwrap();
        drop(unused);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn deadline_bounds_the_wait_and_cleans_up() {
        let q = AdmissionQueue::default();
        let start = Instant::now();
        assert_eq!(
            q.wait(Priority::Standard, 4, later(50)).await,
            Err(Shed::TimedOut)
        );
        assert!(start.elapsed() >= Duration::from_millis(45));
        assert!(q.is_empty());
        q.notify_one();
    }
}
