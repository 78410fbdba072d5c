//! Give the heap that a wave of closed client connections freed back to
//! the operating system.
//!
//! An allocator keeps freed memory for reuse: glibc's malloc returned only
//! the top of its main arena (after 15,000 idle connections closed, the
//! gateway's RSS stayed at its peak, 308 MB against 19 MB at start,
//! `bench/scale.sh`), and jemalloc (the allocator now) hands dirty pages
//! back only as they age and only while it is in use (148 of 151 MB still
//! held 6 s after 9,000 streams closed). Either reads as a leak on a
//! dashboard. HAProxy calls `malloc_trim` when it releases its pools for
//! the same reason; here jemalloc's arenas are purged. A small task looks
//! at the number of open connections every few seconds and trims once that
//! number has fallen far below its peak since the last trim, so steady
//! churn (open near its peak) never pays for it. The same goes for the
//! connections holding HTTP buffers (open and not parked,
//! `proxy::h1_server`): a wave of connections parking frees their buffers
//! as a wave of closes frees the rest.

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

/// The peaks of open client connections and of those holding buffers
/// since the last trim, raised by the accept loop (two atomic maxes per
/// accepted connection).
#[derive(Debug, Default)]
pub struct Peaks {
    open: AtomicUsize,
    buffered: AtomicUsize,
}

impl Peaks {
    /// `(open, buffered)` connections are open, and holding buffers, now.
    pub fn saw(&self, (open, buffered): (usize, usize)) {
        self.open.fetch_max(open, Ordering::Relaxed);
        self.buffered.fetch_max(buffered, Ordering::Relaxed);
    }
}

/// Whether to trim: `open` has fallen from `peak` by at least
/// [`MIN_CLOSED`] connections and by at least a quarter of the peak.
pub fn should_release(peak: usize, open: usize) -> bool {
    let closed = peak.saturating_sub(open);
    closed >= MIN_CLOSED && closed >= peak / 4
}

/// Every [`EVERY`], compare the open connections (`counts().0`) and
/// those holding buffers (`counts().1`) with their peaks, and trim when
/// [`should_release`] says so for either. Runs until the task is dropped.
pub async fn run(peaks: Arc<Peaks>, counts: impl Fn() -> (usize, usize)) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (open, buffered) = counts();
        if should_release(peaks.open.load(Ordering::Relaxed), open)
            || should_release(peaks.buffered.load(Ordering::Relaxed), buffered)
        {
            peaks.open.store(open, Ordering::Relaxed);
            peaks.buffered.store(buffered, Ordering::Relaxed);
            // Off the runtime: trimming walks every arena under its lock.
            let _ = tokio::task::spawn_blocking(release).await;
            RELEASES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Return free heap memory to the OS (Linux, where jemalloc is the
/// global allocator, see `lib.rs`; elsewhere the allocator decides).
fn release() {
    #[cfg(target_os = "linux")]
    {
        let started = std::time::Instant::now();
        let status = purge();
        tracing::debug!(
            status,
            took_ms = started.elapsed().as_millis() as u64,
            "freed heap returned to the OS after connections closed"
        );
    }
}

/// Purge every jemalloc arena ("arena.<MALLCTL_ARENAS_ALL>.purge"): its
/// unused dirty pages go back to the system now, not after jemalloc's
/// decay time (10 s, and only while the allocator is in use). 0 on
/// success, else mallctl's error number.
#[cfg(target_os = "linux")]
fn purge() -> i32 {
    // SAFETY: a NUL-terminated name and no old or new value (the purge
    // refuses either), as jemalloc's mallctl documents.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
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

    /// The allocations go through jemalloc (its per-thread count of
    /// bytes allocated grows by what a `Vec` takes), and its arenas purge.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_global_allocator_is_jemalloc_and_its_arenas_purge() {
        let allocated = || {
            let mut bytes: u64 = 0;
            let mut len = std::mem::size_of::<u64>();
            // SAFETY: a NUL-terminated name; `bytes` is a u64 and `len`
            // its size, what "thread.allocated" reads into.
            let status = unsafe {
                tikv_jemalloc_sys::mallctl(
                    c"thread.allocated".as_ptr(),
                    (&raw mut bytes).cast(),
                    &mut len,
                    std::ptr::null_mut(),
                    0,
                )
            };
            assert_eq!(status, 0);
            bytes
        };
        let before = allocated();
        let block = std::hint::black_box(vec![1u8; 1 << 20]);
        assert!(allocated() - before >= 1 << 20);
        drop(block);
        assert_eq!(purge(), 0);
    }

    #[test]
    fn the_peak_only_rises() {
        let peaks = Peaks::default();
        peaks.saw((5, 4));
        peaks.saw((3, 2));
        assert_eq!(peaks.open.load(Ordering::Relaxed), 5);
        assert_eq!(peaks.buffered.load(Ordering::Relaxed), 4);
    }

    /// Connections parking give their buffers back as closing ones do:
    /// either wave trims, steady counts never do.
    #[tokio::test(start_paused = true)]
    async fn a_wave_of_parked_connections_trims_as_a_wave_of_closes_does() {
        let peaks = Arc::new(Peaks::default());
        peaks.saw((2_000, 2_000));
        let counts = Arc::new((AtomicUsize::new(2_000), AtomicUsize::new(2_000)));
        let task = {
            let counts = Arc::clone(&counts);
            tokio::spawn(run(Arc::clone(&peaks), move || {
                (
                    counts.0.load(Ordering::Relaxed),
                    counts.1.load(Ordering::Relaxed),
                )
            }))
        };
        let released = |n: u64| async move {
            for _ in 0..10 {
                if releases() >= n {
                    return true;
                }
                tokio::time::sleep(EVERY).await;
            }
            false
        };
        let before = releases();
        tokio::time::sleep(EVERY * 3).await;
        assert_eq!(releases(), before, "steady: no trim");
        // All park, none closes.
        counts.1.store(0, Ordering::Relaxed);
        assert!(released(before + 1).await, "parking did not trim");
        assert_eq!(peaks.open.load(Ordering::Relaxed), 2_000);
        assert_eq!(peaks.buffered.load(Ordering::Relaxed), 0);
        // Then they close.
        counts.0.store(0, Ordering::Relaxed);
        assert!(released(before + 2).await, "closing did not trim");
        task.abort();
    }
}
