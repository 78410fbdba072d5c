//! Give the heap that a wave of closed client connections freed back to
//! the operating system.
//!
//! glibc's malloc keeps freed memory in its arenas for reuse; on its own it
//! returns only the top of the main arena. After 15,000 idle connections
//! closed, the gateway's RSS stayed at its peak (308 MB; 19 MB at start,
//! `bench/scale.sh`), which reads as a leak on a dashboard. HAProxy calls
//! `malloc_trim` when it releases its pools for the same reason. Here a
//! small task looks at the number of open connections every few seconds
//! and trims once that number has fallen far below its peak since the last
//! trim, so steady churn (open near its peak) never pays for it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the task looks.
const EVERY: Duration = Duration::from_secs(5);
/// At least this many connections must have closed since the peak.
const MIN_CLOSED: usize = 1_000;

/// Trims done by this process (all listeners).
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// How many times freed heap was given back since the process started.
pub fn releases() -> u64 {
    RELEASES.load(Ordering::Relaxed)
}

/// The peak of open client connections since the last trim, raised by the
/// accept loop (one atomic max per accepted connection).
#[derive(Debug, Default)]
pub struct Peak(AtomicUsize);

impl Peak {
    /// `open` connections are open now.
    pub fn saw(&self, open: usize) {
        self.0.fetch_max(open, Ordering::Relaxed);
    }
}

/// Whether to trim: `open` has fallen from `peak` by at least
/// [`MIN_CLOSED`] connections and by at least a quarter of the peak.
pub fn should_release(peak: usize, open: usize) -> bool {
    let closed = peak.saturating_sub(open);
    closed >= MIN_CLOSED && closed >= peak / 4
}

/// Every [`EVERY`], compare `open()` with the peak and trim when
/// [`should_release`] says so. Runs until the task is dropped.
pub async fn run(peak: Arc<Peak>, open: impl Fn() -> usize) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = open();
        if should_release(peak.0.load(Ordering::Relaxed), now) {
            peak.0.store(now, Ordering::Relaxed);
            // Off the runtime: trimming walks every arena under its lock.
            let _ = tokio::task::spawn_blocking(release).await;
            RELEASES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Return free heap memory to the OS (glibc only; elsewhere the allocator
/// decides).
fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim takes no pointers and is thread-safe.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            took_ms = started.elapsed().as_millis() as u64,
            "freed heap returned to the OS after connections closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_fall_from_the_peak() {
        // Steady churn near the peak: never.
        assert!(!should_release(20_000, 19_500));
        // A wave closed: yes.
        assert!(should_release(15_000, 10));
        // A quarter of a large peak closed, and at least 1,000.
        assert!(should_release(8_000, 6_000));
        assert!(!should_release(8_000, 6_001));
        // Small gateways: under 1,000 closed never counts.
        assert!(!should_release(900, 0));
        assert!(should_release(1_000, 0));
        // Open above the recorded peak (raced with the accept loop).
        assert!(!should_release(10, 50));
    }

    #[test]
    fn the_peak_only_rises() {
        let peak = Peak::default();
        peak.saw(5);
        peak.saw(3);
        assert_eq!(peak.0.load(Ordering::Relaxed), 5);
    }
}
