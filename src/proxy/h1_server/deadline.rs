//! A plain HTTP/1.1 connection's one timer for its deadlines (the first
//! head, idle, a head's end, a write the client does not take).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// One timer per connection for its deadlines. Deadlines mostly move
/// later (each request pushes the idle one); the timer is re-armed only
/// when it fires before the current deadline or must fire earlier, not on
/// every request.
pub(super) struct Deadline {
    at: Instant,
    timer: Pin<Box<Armed>>,
}

pin_project_lite::pin_project! {
    /// The timer, and the waker it was last polled with: while the timer
    /// is set and wakes that task, polling it again would only register
    /// the same waker again (two locked instructions and a waker clone
    /// per wait). In the timer's box: the connection's task stays as small.
    struct Armed {
        #[pin]
        sleep: Sleep,
        armed_for: Option<std::task::Waker>,
    }
}

impl Deadline {
    pub(super) fn new(at: Instant) -> Deadline {
        Deadline {
            at,
            timer: Box::pin(Armed {
                sleep: tokio::time::sleep_until(at),
                armed_for: None,
            }),
        }
    }

    pub(super) fn set(&mut self, at: Instant) {
        if at < self.timer.sleep.deadline() {
            let timer = self.timer.as_mut().project();
            timer.sleep.reset(at);
            *timer.armed_for = None;
        }
        self.at = at;
    }

    /// Whether the deadline has passed; arms the timer otherwise.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timer = self.timer.as_mut().project();
        let armed = timer
            .armed_for
            .as_ref()
            .is_some_and(|armed| armed.will_wake(cx.waker()));
        if armed && !timer.sleep.is_elapsed() {
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
            sleep.as_mut().reset(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Duration;

    /// A connection whose task spent its budget (tokio's cooperative
    /// scheduling) when its deadline was set is still woken by it.
    #[tokio::test]
    async fn a_deadline_set_with_the_budget_spent_still_fires() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        let mut deadline = Deadline::new(Instant::now() + Duration::from_secs(60));
        let at = Instant::now() + Duration::from_millis(30);
        let mut first = true;
        let expired = std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(_)) = rx.poll_recv(cx) {}
            if std::mem::take(&mut first) {
                deadline.set(at);
            }
            if deadline.poll_expired(cx) {
                Poll::Ready(Instant::now())
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
