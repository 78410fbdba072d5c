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
//!
//! The same task also keeps one timer for the deadlines of the futures it
//! polls ([`wake_by`], [`Within`]): a request's first-byte timeout asks
//! its connection's task to be polled again by then, rather than putting
//! a timer of its own into tokio's wheel and taking it out again when the
//! answer comes a millisecond later (~420 instructions and 8 locked ones
//! per request under callgrind). The task's timer moves only when a
//! deadline earlier than the one it is set for is asked; a later one is
//! looked at when the timer fires. A deadline that was asked and is no
//! longer awaited (the answer came) costs one spare poll when it passes.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::time::Sleep;

thread_local! {
    /// `Some(None)` inside a poll before the first reading, `Some(Some(t))`
    /// after it; `None` outside any [`PerPoll`].
    static READING: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
    /// The earliest wake-up asked during the current [`PerPoll`]'s poll:
    /// `Some(None)` when none was, `None` outside any.
    static WAKE_BY: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
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

/// Have the task be polled again by `at`, from a future that is about to
/// return `Pending` until then. False outside a [`PerPoll`]: the caller
/// keeps a timer of its own.
#[inline]
pub fn wake_by(at: Instant) -> bool {
    match WAKE_BY.get() {
        None => false,
        Some(asked) => {
            WAKE_BY.set(Some(Some(asked.map_or(at, |earlier| earlier.min(at)))));
            true
        }
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll shares one clock reading ([`now`]), and
    /// which wakes itself by the deadlines asked inside it ([`wake_by`]).
    pub struct PerPoll<F> {
        #[pin]
        inner: F,
        // The earliest deadline asked and not yet passed.
        due: Option<Instant>,
        // Made at the first deadline asked, then kept: a connection's
        // requests reuse it.
        timer: Option<Deadline>,
    }
}

impl<F> PerPoll<F> {
    /// Wrap `inner`.
    pub fn new(inner: F) -> PerPoll<F> {
        PerPoll {
            inner,
            due: None,
            timer: None,
        }
    }
}

impl<F: Future> Future for PerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Nested inside another's poll (not done today), the outer one's
        // reading and wake-ups are put back after.
        let outer = (READING.replace(Some(None)), WAKE_BY.replace(Some(None)));
        let polled = this.inner.poll(cx);
        let asked = WAKE_BY.get().flatten();
        READING.set(outer.0);
        WAKE_BY.set(outer.1);
        if polled.is_ready() {
            return polled;
        }
        if let Some(at) = asked {
            *this.due = Some(this.due.map_or(at, |due| due.min(at)));
        }
        let Some(due) = *this.due else {
            return Poll::Pending;
        };
        let due = tokio::time::Instant::from_std(due);
        let timer = this.timer.get_or_insert_with(|| Deadline::new(due));
        timer.set(due);
        if timer.poll_expired(cx) {
            // Due: poll the task again, where whoever asked looks at the
            // time; those still waiting ask again.
            *this.due = None;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// One timer for a deadline that mostly moves later (a connection's idle
/// and head deadlines, the earliest deadline a task was asked for): the
/// timer is re-armed only when it fires before the current deadline or
/// must fire earlier, not each time the deadline moves.
pub struct Deadline {
    at: tokio::time::Instant,
    timer: Pin<Box<Armed>>,
}

pin_project_lite::pin_project! {
    /// The timer, and the waker it was last polled with: while the timer
    /// is set and wakes that task, polling it again would only register
    /// the same waker again (two locked instructions and a waker clone
    /// per wait). In the timer's box: a connection's task stays as small.
    struct Armed {
        #[pin]
        sleep: Sleep,
        armed_for: Option<Waker>,
    }
}

impl Deadline {
    /// A deadline at `at`.
    pub fn new(at: tokio::time::Instant) -> Deadline {
        Deadline {
            at,
            timer: Box::pin(Armed {
                sleep: tokio::time::sleep_until(at),
                armed_for: None,
            }),
        }
    }

    /// Move the deadline to `at`.
    pub fn set(&mut self, at: tokio::time::Instant) {
        if at < self.timer.sleep.deadline() {
            let timer = self.timer.as_mut().project();
            timer.sleep.reset(at);
            *timer.armed_for = None;
        }
        self.at = at;
    }

    /// Whether the deadline has passed; arms the timer otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timer = self.timer.as_mut().project();
        let armed = timer
            .armed_for
            .as_ref()
            .is_some_and(|armed| armed.will_wake(cx.waker()));
        if armed && !timer.sleep.is_elapsed() {
            // Set for `at` or earlier, not fired, and it wakes this task.
            return false;
        }
        let mut sleep = timer.sleep;
        loop {
            // Outside the task's budget (`unconstrained`): a timer polled
            // with the budget spent answers `Pending` without taking the
            // waker, and `armed_for` would then stand for nothing.
            let polled = Pin::new(&mut tokio::task::unconstrained(sleep.as_mut())).poll(cx);
            if polled.is_pending() {
                if !armed {
                    *timer.armed_for = Some(cx.waker().clone());
                }
                return false;
            }
            if sleep.deadline() >= self.at {
                return true;
            }
            // It fired for an earlier deadline that no longer holds.
            sleep.as_mut().reset(self.at);
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner`, given up at `at` (`None`), as `tokio::time::timeout_at`,
    /// with the timer of the task's [`PerPoll`] where there is one.
    /// Outside one (hyper's HTTP/2 stream tasks) its own timer is boxed,
    /// one allocation per wait that `timeout_at` kept inline: the waiting
    /// future stays small. `at` is on the system's monotonic clock, which
    /// tokio's paused test clock does not move.
    pub struct Within<F> {
        #[pin]
        inner: F,
        at: Instant,
        // Outside a `PerPoll` only.
        own: Option<Pin<Box<Sleep>>>,
    }
}

impl<F> Within<F> {
    /// `inner` until `at`.
    pub fn new(inner: F, at: Instant) -> Within<F> {
        Within {
            inner,
            at,
            own: None,
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if now() >= *this.at {
            return Poll::Ready(None);
        }
        if wake_by(*this.at) {
            return Poll::Pending;
        }
        let at = tokio::time::Instant::from_std(*this.at);
        let own = this
            .own
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match own.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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

    /// `Within` around a future that never ends, under a guard that fails
    /// the test instead of hanging it.
    async fn times_out(at: Instant, inner: impl Future<Output = ()>) -> Option<()> {
        let guarded = tokio::time::timeout(Duration::from_secs(5), Within::new(inner, at));
        guarded.await.expect("the deadline woke the task")
    }

    #[tokio::test]
    async fn a_deadline_asked_inside_a_per_poll_wakes_its_task() {
        let start = Instant::now();
        let at = start + Duration::from_millis(30);
        // Inside, the task's own timer; no timer of the future's own.
        let out = PerPoll::new(async {
            let mut within = std::pin::pin!(Within::new(std::future::pending::<()>(), at));
            let (out, own) = std::future::poll_fn(|cx| {
                let mut within = within.as_mut();
                match within.as_mut().poll(cx) {
                    Poll::Ready(out) => Poll::Ready((out, within.project().own.is_some())),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            assert!(!own, "a future inside a PerPoll keeps no timer");
            out
        });
        let out = tokio::time::timeout(Duration::from_secs(5), out)
            .await
            .expect("the task's timer woke it");
        assert_eq!(out, None);
        assert!(Instant::now() >= at);
        // Outside, its own.
        let at = Instant::now() + Duration::from_millis(30);
        assert_eq!(times_out(at, std::future::pending()).await, None);
        assert!(Instant::now() >= at);
        // What ends in time is passed on.
        let far = Instant::now() + Duration::from_secs(60);
        let ready = PerPoll::new(Within::new(async { 7 }, far)).await;
        assert_eq!(ready, Some(7));
    }

    #[tokio::test]
    async fn deadlines_no_longer_awaited_do_not_keep_the_next_from_waking() {
        let task = PerPoll::new(async {
            // An answer before its deadline: the task's timer is left set
            // for a deadline nobody waits for.
            let early = Instant::now() + Duration::from_millis(20);
            let answer = tokio::time::sleep(Duration::from_millis(5));
            assert_eq!(Within::new(answer, early).await, Some(()));
            // A later deadline: the timer fires for the stale one first,
            // then is moved to this one.
            let later = Instant::now() + Duration::from_millis(60);
            assert_eq!(Within::new(std::future::pending::<()>(), later).await, None);
            assert!(Instant::now() >= later);
            // An earlier one than the timer is set for moves it back.
            let far = Instant::now() + Duration::from_secs(60);
            let answer = tokio::time::sleep(Duration::from_millis(5));
            assert_eq!(Within::new(answer, far).await, Some(()));
            let soon = Instant::now() + Duration::from_millis(20);
            assert_eq!(Within::new(std::future::pending::<()>(), soon).await, None);
            assert!(Instant::now() >= soon);
            Instant::now() < far
        });
        let before_far = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("every deadline woke the task");
        assert!(before_far);
        assert_eq!(WAKE_BY.get(), None, "nothing asked is left outside");
    }

    /// A task that spent its budget (tokio's cooperative scheduling) in
    /// the poll where a deadline is first asked is still woken by it.
    #[tokio::test]
    async fn a_deadline_asked_with_the_budget_spent_still_wakes_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        let at = Instant::now() + Duration::from_millis(30);
        let task = PerPoll::new(async move {
            let mut within = std::pin::pin!(Within::new(std::future::pending::<()>(), at));
            std::future::poll_fn(|cx| {
                while let Poll::Ready(Some(_)) = rx.poll_recv(cx) {}
                within.as_mut().poll(cx)
            })
            .await
        });
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the deadline woke the task");
        assert_eq!(out, None);
        // The guard's own wake-up would let the future see the time too.
        assert!(
            Instant::now() < at + Duration::from_secs(2),
            "woken by the deadline, not by the guard"
        );
        drop(tx);
    }

    /// A connection whose task spent its budget (tokio's cooperative
    /// scheduling) when its deadline was set is still woken by it.
    #[tokio::test]
    async fn a_deadline_set_with_the_budget_spent_still_fires() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        let mut deadline = Deadline::new(tokio::time::Instant::now() + Duration::from_secs(60));
        let at = tokio::time::Instant::now() + Duration::from_millis(30);
        let mut first = true;
        let expired = std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(_)) = rx.poll_recv(cx) {}
            if std::mem::take(&mut first) {
                deadline.set(at);
            }
            if deadline.poll_expired(cx) {
                Poll::Ready(tokio::time::Instant::now())
            } else {
                Poll::Pending
            }
        });
        let when = tokio::time::timeout(Duration::from_secs(5), expired)
            .await
            .expect("the deadline woke the task");
        assert!(when >= at);
        // The guard's own wake-up would let the deadline be seen too.
        assert!(
            when < at + Duration::from_secs(2),
            "woken by the deadline, not by the guard"
        );
        drop(tx);
    }
}
