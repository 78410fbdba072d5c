//! Capacity signals scraped from the nodes' Prometheus `/metrics`.
//!
//! A scraper task per node ([`spawn_scrapers`], `scrape.rs`) GETs the
//! node's metrics page every `interval`, each GET bounded by its own
//! `timeout` (real vLLM has been seen taking 4.9 s to answer under load, so
//! the timeout is not the interval), and stores running requests, waiting
//! requests and KV cache use ([`parse`]) in the node's [`Capacity`]
//! atomics with the scrape time.
//!
//! # A failed scrape does not forget the node's load
//!
//! A node whose metrics page is slow is usually slow because it is busy;
//! forgetting its last reading then would make a saturated node look idle
//! exactly when it matters. So the last good reading is kept with its age
//! and its *weight* decays as it ages:
//!
//! * full weight while younger than the fresh window
//!   `max(3 × interval, interval + timeout)`;
//! * then halved every fresh window;
//! * dropped (no reading) below 1/16, i.e. four windows later: policies
//!   then fall back to the gateway's own outstanding count and nothing is
//!   saturated by scrapes.
//!
//! The view ([`Capacity::view`]) multiplies the counts and KV use by the
//! weight. Between scrapes the waiting count is kept current with the
//! gateway's own view: waiting = weight × scraped waiting + how many more
//! requests the gateway has in flight to the node than it had at the scrape.
//!
//! Failed scrapes are counted by [`ScrapeFailure`] reason, back off
//! (`scrape.rs`) and give the node a scrape state ([`ScrapeState`]) shown by
//! the API, the dashboard and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use super::NodeLoad;

mod parse;
mod scrape;

pub(crate) use parse::label;
pub use parse::{parse_metrics, Scraped};
pub use scrape::{spawn_scrapers, ScraperHandle};

const NONE: u64 = u64::MAX;
/// KV use is stored in parts per million.
const PPM: f64 = 1_000_000.0;
/// A reading keeps full weight for this many scrape intervals (at least).
const FRESH_INTERVALS: u64 = 3;
/// A KV peak is held for this many scrape intervals, and until this many
/// later readings were taken: long enough to bridge the dips of a node that
/// preempts at full KV, short enough not to keep a node that touched the
/// mark once "full" for the whole fresh window (at the default 5 s timeout,
/// 5.25 s: on bench/peers.sh's fleet, at or over the mark 2-15 % of the
/// time, the trade-off then moved conversations off their cache most of
/// the time). Counting readings too matters when scrapes come late (a
/// loaded vLLM answers `/metrics` in seconds; a loaded machine runs the
/// scraper late): a hold in time alone then ran out before any reading
/// could show the node still full, and one reading in a dip made it look
/// roomy.
const PEAK_INTERVALS: u64 = 3;
/// A reading whose weight fell below this is dropped.
const MIN_WEIGHT: f64 = 1.0 / 16.0;

/// Why a scrape failed: the bounded label set of
/// `infergate_node_scrape_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeFailure {
    /// No complete answer within the scrape timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connect,
    /// The node answered with a status other than 200.
    Status,
    /// The page was not UTF-8 text, too large, or carried none of the
    /// known capacity metrics.
    Parse,
}

impl ScrapeFailure {
    /// Every reason, in label order.
    pub const ALL: [ScrapeFailure; 4] = [
        ScrapeFailure::Timeout,
        ScrapeFailure::Connect,
        ScrapeFailure::Status,
        ScrapeFailure::Parse,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeFailure::Timeout => "timeout",
            ScrapeFailure::Connect => "connect",
            ScrapeFailure::Status => "status",
            ScrapeFailure::Parse => "parse",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Health of a node's scraping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeState {
    /// The pool does not scrape.
    Off,
    /// Scraping, no answer yet.
    Pending,
    /// The last scrape succeeded and is fresh.
    Ok,
    /// The last scrape failed (or is late); the previous reading is still
    /// used with a decaying weight.
    Stale,
    /// Scrapes fail and no usable reading is left.
    Failing,
}

impl ScrapeState {
    /// Name for the API and the `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeState::Off => "off",
            ScrapeState::Pending => "pending",
            ScrapeState::Ok => "ok",
            ScrapeState::Stale => "stale",
            ScrapeState::Failing => "failing",
        }
    }
}

/// Scraped signals of one node, with the scrape time, the scrape health
/// and the pool's limits.
#[derive(Debug)]
pub struct Capacity {
    running: AtomicU64,
    waiting: AtomicU64,
    /// The waiting count believed as a queue (see
    /// [`CapacityView::queued_settled`]).
    waiting_settled: AtomicU64,
    kv_ppm: AtomicU64,
    /// Highest KV use lately and when it was read (see [`CapacityView::kv_peak`]).
    kv_peak_ppm: AtomicU64,
    kv_peak_at: AtomicU64,
    /// Readings taken since the peak (up to [`PEAK_INTERVALS`]).
    kv_peak_readings: AtomicU64,
    /// When the peak starts to decay; 0 = held until [`PEAK_INTERVALS`]
    /// later readings were taken.
    kv_peak_release_at: AtomicU64,
    /// Time of the last good scrape ([`super::now_ns`]); 0 = never.
    scraped_at: AtomicU64,
    outstanding_at_scrape: AtomicU64,
    fresh_ns: AtomicU64,
    /// How long a KV peak is held at full weight ([`PEAK_INTERVALS`]
    /// scrape intervals).
    peak_hold_ns: AtomicU64,
    max_queue: AtomicU64,
    max_kv_ppm: AtomicU64,
    enabled: AtomicBool,
    consecutive_failures: AtomicU64,
    /// 1 + index of the last failure reason; 0 = none yet.
    last_failure: AtomicU8,
    failures: [AtomicU64; 4],
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            waiting_settled: AtomicU64::new(0),
            kv_ppm: AtomicU64::new(NONE),
            kv_peak_ppm: AtomicU64::new(0),
            kv_peak_at: AtomicU64::new(0),
            kv_peak_readings: AtomicU64::new(0),
            kv_peak_release_at: AtomicU64::new(0),
            scraped_at: AtomicU64::new(0),
            outstanding_at_scrape: AtomicU64::new(0),
            fresh_ns: AtomicU64::new(3_000_000_000),
            peak_hold_ns: AtomicU64::new(750_000_000),
            max_queue: AtomicU64::new(NONE),
            max_kv_ppm: AtomicU64::new(NONE),
            enabled: AtomicBool::new(false),
            consecutive_failures: AtomicU64::new(0),
            last_failure: AtomicU8::new(0),
            failures: Default::default(),
        }
    }
}

/// A node's scraped signals as policies should use them: decayed by age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityView {
    /// Running requests at the scrape, times the reading's weight.
    pub running: f64,
    /// Waiting requests: weight × scraped waiting + the gateway's net
    /// additions since the scrape.
    pub waiting: f64,
    /// KV cache use (0..1) times the weight, if the node reports it.
    pub kv_usage: Option<f64>,
    /// Waiting requests as scraped, times the weight (without the
    /// gateway's additions since).
    pub queued: f64,
    /// Waiting requests believed to be a queue, times the weight: all of
    /// them when they outnumber this gateway's requests in flight there
    /// at the scrape, otherwise only as many as the reading before also
    /// showed. A node that has room shows a request as waiting from its
    /// arrival until the engine's next step admits it, milliseconds
    /// later; a scrape landing in that moment read a queue on an idle
    /// node (seen: waiting 1, running 1 on a node this gateway sent one
    /// request at a time, on a loaded machine). A queue of this
    /// gateway's own requests lasts from one scrape to the next.
    pub queued_settled: f64,
    /// The highest KV use read within the last [`PEAK_INTERVALS`] scrape
    /// intervals and readings (then halving every [`PEAK_INTERVALS`]
    /// intervals), times the weight. A node near full KV oscillates
    /// (it preempts, drops a little, fills again); one reading below the
    /// mark does not make it roomy.
    pub kv_peak: Option<f64>,
    /// Weight of the reading, 1 when fresh, down to 1/16 (see module docs).
    pub weight: f64,
    /// Age of the reading in seconds.
    pub age_secs: f64,
}

/// Everything known about a node's scraping, for display (API, dashboard,
/// `/metrics`). Values are as scraped, not decayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScrapeReport {
    /// Health of the scraping.
    pub state: ScrapeState,
    /// Reason of the last failure, if the last scrape failed.
    pub reason: Option<ScrapeFailure>,
    /// Failed scrapes in a row.
    pub consecutive_failures: u64,
    /// Failed scrapes since start, by [`ScrapeFailure::ALL`] order.
    pub failures: [u64; 4],
    /// The last good reading, if any is still usable.
    pub reading: Option<Reading>,
}

/// One good scrape as read, with its age and current weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Running requests.
    pub running: u64,
    /// Waiting requests.
    pub waiting: u64,
    /// KV cache use (0..1), if reported.
    pub kv_usage: Option<f64>,
    /// Seconds since the scrape.
    pub age_secs: f64,
    /// Weight the policies give it now.
    pub weight: f64,
}

impl Capacity {
    /// Mark the node as scraped every `interval` with `timeout`, and set
    /// the saturation limits.
    pub fn configure(
        &self,
        interval: Duration,
        timeout: Duration,
        max_queue: Option<u64>,
        max_kv: Option<f64>,
    ) {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let fresh = ns(interval)
            .saturating_mul(FRESH_INTERVALS)
            .max(ns(interval).saturating_add(ns(timeout)));
        self.fresh_ns.store(fresh, Ordering::Relaxed);
        self.peak_hold_ns.store(
            ns(interval).saturating_mul(PEAK_INTERVALS),
            Ordering::Relaxed,
        );
        self.max_queue
            .store(max_queue.unwrap_or(NONE), Ordering::Relaxed);
        self.max_kv_ppm.store(
            max_kv.map_or(NONE, |k| (k * PPM).round() as u64),
            Ordering::Relaxed,
        );
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// The pool no longer scrapes (a reload removed `[pools.capacity]`):
    /// forget the reading and show the state as off.
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.scraped_at.store(0, Ordering::Relaxed);
        self.kv_peak_at.store(0, Ordering::Relaxed);
        self.kv_peak_release_at.store(0, Ordering::Relaxed);
    }

    /// Store a good scrape taken at `now_ns` while the gateway had
    /// `outstanding` requests in flight to the node. Missing signals count
    /// as 0 (KV: unknown).
    pub fn record(&self, s: &Scraped, outstanding: u64, now_ns: u64) {
        let count = |v: Option<f64>| v.map_or(0, |v| v.max(0.0).round() as u64);
        self.running.store(count(s.running), Ordering::Relaxed);
        let waiting = count(s.waiting);
        // More waiting than this gateway had in flight there is someone
        // else's queue, believed at once (a node flooded from elsewhere);
        // no more than that may be this gateway's own requests caught on
        // their way into the batch, believed once the reading before
        // showed them too. The first reading stands alone.
        let settled = if waiting > outstanding || self.scraped_at.load(Ordering::Relaxed) == 0 {
            waiting
        } else {
            waiting.min(self.waiting.load(Ordering::Relaxed))
        };
        self.waiting_settled.store(settled, Ordering::Relaxed);
        self.waiting.store(waiting, Ordering::Relaxed);
        let kv = s
            .kv_usage
            .map_or(NONE, |k| (k.clamp(0.0, 1.0) * PPM).round() as u64);
        self.kv_ppm.store(kv, Ordering::Relaxed);
        if kv != NONE && kv as f64 >= self.kv_peak_at(now_ns) {
            self.kv_peak_ppm.store(kv, Ordering::Relaxed);
            self.kv_peak_at.store(now_ns.max(1), Ordering::Relaxed);
            self.kv_peak_readings.store(0, Ordering::Relaxed);
            self.kv_peak_release_at.store(0, Ordering::Relaxed);
        } else if self.kv_peak_release_at.load(Ordering::Relaxed) == 0 {
            let later = self.kv_peak_readings.fetch_add(1, Ordering::Relaxed) + 1;
            if later >= PEAK_INTERVALS {
                let held_until = self
                    .kv_peak_at
                    .load(Ordering::Relaxed)
                    .saturating_add(self.peak_hold_ns.load(Ordering::Relaxed));
                self.kv_peak_release_at
                    .store(held_until.max(now_ns).max(1), Ordering::Relaxed);
            }
        }
        self.outstanding_at_scrape
            .store(outstanding, Ordering::Relaxed);
        self.scraped_at.store(now_ns.max(1), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Count a failed scrape; the last good reading stays (and decays).
    /// Returns the failures in a row, this one included.
    pub fn record_failure(&self, reason: ScrapeFailure) -> u64 {
        self.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.last_failure
            .store(reason.index() as u8 + 1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Failed scrapes in a row.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The held KV peak (ppm) at `now_ns`: full for [`PEAK_INTERVALS`]
    /// scrape intervals after it was read and until as many later readings
    /// were taken, then halving every [`PEAK_INTERVALS`] intervals.
    fn kv_peak_at(&self, now_ns: u64) -> f64 {
        if self.kv_peak_at.load(Ordering::Relaxed) == 0 {
            return 0.0;
        }
        let release = self.kv_peak_release_at.load(Ordering::Relaxed);
        let span = self.peak_hold_ns.load(Ordering::Relaxed).max(1);
        let hold = if release == 0 || now_ns <= release {
            1.0
        } else {
            0.5f64.powf((now_ns - release) as f64 / span as f64)
        };
        self.kv_peak_ppm.load(Ordering::Relaxed) as f64 * hold
    }

    /// Age (ns) and weight of the last good reading at `now_ns`, if usable.
    fn age_weight(&self, now_ns: u64) -> Option<(u64, f64)> {
        let at = self.scraped_at.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let age = now_ns.saturating_sub(at);
        let fresh = self.fresh_ns.load(Ordering::Relaxed).max(1);
        let weight = if age <= fresh {
            1.0
        } else {
            0.5f64.powf((age - fresh) as f64 / fresh as f64)
        };
        (weight >= MIN_WEIGHT).then_some((age, weight))
    }

    /// The signals decayed by the reading's age, or `None` when there is
    /// no usable reading (never scraped, or too old).
    pub fn view(&self, load: &NodeLoad, now_ns: u64) -> Option<CapacityView> {
        let (age, weight) = self.age_weight(now_ns)?;
        let since = load
            .outstanding()
            .saturating_sub(self.outstanding_at_scrape.load(Ordering::Relaxed));
        let kv = self.kv_ppm.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed);
        let queued = waiting as f64 * weight;
        // Two stores, not one step: a reader between them may pair a new
        // settled count with the old waiting one.
        let settled = self.waiting_settled.load(Ordering::Relaxed).min(waiting);
        Some(CapacityView {
            running: self.running.load(Ordering::Relaxed) as f64 * weight,
            waiting: queued + since as f64,
            queued,
            queued_settled: settled as f64 * weight,
            kv_usage: (kv != NONE).then(|| kv as f64 / PPM * weight),
            kv_peak: (kv != NONE).then(|| self.kv_peak_at(now_ns) / PPM * weight),
            weight,
            age_secs: age as f64 / 1e9,
        })
    }

    /// True when the decayed reading shows more waiting requests than
    /// `max_queue` or more KV use than `max_kv_usage`.
    pub fn is_saturated(&self, load: &NodeLoad, now_ns: u64) -> bool {
        let Some(v) = self.view(load, now_ns) else {
            return false;
        };
        let max_queue = self.max_queue.load(Ordering::Relaxed);
        let max_kv = self.max_kv_ppm.load(Ordering::Relaxed);
        (max_queue != NONE && v.waiting > max_queue as f64)
            || (max_kv != NONE && v.kv_usage.is_some_and(|k| k * PPM > max_kv as f64))
    }

    /// The scrape state at `now_ns`.
    pub fn state(&self, now_ns: u64) -> ScrapeState {
        if !self.enabled.load(Ordering::Relaxed) {
            return ScrapeState::Off;
        }
        let failing = self.consecutive_failures() > 0;
        match self.age_weight(now_ns) {
            Some((_, w)) if w >= 1.0 && !failing => ScrapeState::Ok,
            Some(_) => ScrapeState::Stale,
            None if failing || self.scraped_at.load(Ordering::Relaxed) != 0 => ScrapeState::Failing,
            None => ScrapeState::Pending,
        }
    }

    /// Everything about the scraping, for display.
    pub fn report(&self, now_ns: u64) -> ScrapeReport {
        let consecutive = self.consecutive_failures();
        let reason = match self.last_failure.load(Ordering::Relaxed) {
            0 => None,
            i => ScrapeFailure::ALL.get(usize::from(i) - 1).copied(),
        };
        let kv = self.kv_ppm.load(Ordering::Relaxed);
        ScrapeReport {
            state: self.state(now_ns),
            reason: reason.filter(|_| consecutive > 0),
            consecutive_failures: consecutive,
            failures: std::array::from_fn(|i| self.failures[i].load(Ordering::Relaxed)),
            reading: self.age_weight(now_ns).map(|(age, weight)| Reading {
                running: self.running.load(Ordering::Relaxed),
                waiting: self.waiting.load(Ordering::Relaxed),
                kv_usage: (kv != NONE).then(|| kv as f64 / PPM),
                age_secs: age as f64 / 1e9,
                weight,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Node;
    use http::uri::Authority;

    const S: u64 = 1_000_000_000;

    fn busy() -> Scraped {
        Scraped {
            running: Some(8.0),
            waiting: Some(5.0),
            kv_usage: Some(0.5),
        }
    }

    /// A slow metrics page makes the fresh window long (interval +
    /// timeout); the KV peak still lets go after three intervals, so a
    /// node that touched the mark once is not "full" for seconds.
    #[test]
    fn kv_peak_is_held_for_three_intervals_not_the_whole_fresh_window() {
        const MS: u64 = 1_000_000;
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let cap = &n.load.ai.capacity;
        cap.configure(
            Duration::from_millis(250),
            Duration::from_secs(5),
            None,
            None,
        );
        let kv = |k: f64| Scraped {
            kv_usage: Some(k),
            ..busy()
        };
        cap.record(&kv(0.95), 0, 10 * S);
        for later in 1..=3 {
            cap.record(&kv(0.5), 0, 10 * S + later * 250 * MS);
        }
        let peak = |at: u64| cap.view(&n.load, at).unwrap().kv_peak.unwrap();
        assert_eq!(peak(10 * S + 700 * MS), 0.95, "held for 750 ms");
        // The reading itself is fresh for 5.25 s; the peak halved by 1.5 s.
        assert_eq!(cap.view(&n.load, 11 * S + 500 * MS).unwrap().weight, 1.0);
        assert!((peak(11 * S + 500 * MS) - 0.475).abs() < 1e-9);
    }

    /// Readings that come late (a slow metrics page, a busy machine) do
    /// not shorten the hold: the peak stays until three later readings
    /// were taken, however long they took, and only then decays.
    #[test]
    fn late_readings_keep_the_kv_peak_until_three_were_taken() {
        const MS: u64 = 1_000_000;
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let cap = &n.load.ai.capacity;
        // Held for 150 ms by time alone; the reading is fresh for 2.05 s.
        cap.configure(
            Duration::from_millis(50),
            Duration::from_secs(2),
            None,
            None,
        );
        let kv = |k: f64| Scraped {
            kv_usage: Some(k),
            ..busy()
        };
        let peak = |at: u64| cap.view(&n.load, at).unwrap().kv_peak.unwrap();
        cap.record(&kv(0.98), 0, 10 * S);
        // One reading in a dip, 400 ms late.
        cap.record(&kv(0.85), 0, 10 * S + 400 * MS);
        assert_eq!(peak(10 * S + 500 * MS), 0.98, "held past 150 ms");
        cap.record(&kv(0.85), 0, 10 * S + 800 * MS);
        assert_eq!(peak(11 * S + 100 * MS), 0.98, "two later readings");
        cap.record(&kv(0.85), 0, 11 * S + 200 * MS);
        assert_eq!(peak(11 * S + 200 * MS), 0.98, "released from now on");
        assert!((peak(11 * S + 350 * MS) - 0.49).abs() < 1e-9);
        // A new peak starts the count again.
        cap.record(&kv(0.97), 0, 12 * S);
        cap.record(&kv(0.5), 0, 13 * S);
        assert_eq!(peak(13 * S + 500 * MS), 0.97);
    }

    #[test]
    fn saturation_needs_a_usable_reading_over_a_limit() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let cap = &n.load.ai.capacity;
        cap.configure(
            Duration::from_secs(1),
            Duration::from_millis(500),
            Some(4),
            Some(0.9),
        );
        // Never scraped: never saturated, no view.
        assert!(!cap.is_saturated(&n.load, 10 * S));
        assert_eq!(cap.view(&n.load, 10 * S), None);
        assert_eq!(cap.state(10 * S), ScrapeState::Pending);
        cap.record(&busy(), 0, 10 * S);
        assert!(cap.is_saturated(&n.load, 10 * S));
        assert_eq!(cap.state(10 * S), ScrapeState::Ok);
        assert!(
            cap.is_saturated(&n.load, 13 * S),
            "full weight for 3 intervals"
        );
        // Recovered at the next scrape.
        let calm = Scraped {
            waiting: Some(4.0),
            ..busy()
        };
        cap.record(&calm, 0, 20 * S);
        assert!(!cap.is_saturated(&n.load, 20 * S));
        // Requests sent since the scrape push it over again.
        let g = n.begin_request();
        assert_eq!(cap.view(&n.load, 20 * S).unwrap().waiting, 5.0);
        assert!(cap.is_saturated(&n.load, 20 * S));
        drop(g);
        // KV over the limit saturates too.
        cap.record(
            &Scraped {
                waiting: Some(0.0),
                kv_usage: Some(0.95),
                ..busy()
            },
            0,
            30 * S,
        );
        assert!(cap.is_saturated(&n.load, 30 * S));
        // The KV peak is held for 3 intervals (3 s here) and 3 readings,
        // then decays.
        for at in [31, 32, 33] {
            cap.record(
                &Scraped {
                    kv_usage: Some(0.5),
                    ..busy()
                },
                0,
                at * S,
            );
        }
        let v = cap.view(&n.load, 32 * S).unwrap();
        assert_eq!((v.kv_usage, v.kv_peak), (Some(0.5), Some(0.95)));
        let v = cap.view(&n.load, 34 * S).unwrap();
        let want = 0.95 * 0.5f64.powf(1.0 / 3.0);
        assert!((v.kv_peak.unwrap() - want).abs() < 1e-9, "{v:?}");
        // Node-level helper with a real clock.
        cap.record(&busy(), 0, crate::fleet::now_ns());
        assert!(n.is_saturated(crate::fleet::now_ns()));
    }

    #[test]
    fn a_failed_scrape_keeps_the_reading_which_decays_with_age() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let cap = &n.load.ai.capacity;
        // Fresh window: max(3 × 1 s, 1 s + 5 s) = 6 s.
        cap.configure(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Some(4),
            None,
        );
        let saturated = Scraped {
            running: Some(16.0),
            waiting: Some(24.0),
            kv_usage: Some(0.8),
        };
        cap.record(&saturated, 0, 100 * S);
        assert_eq!(cap.record_failure(ScrapeFailure::Timeout), 1);
        assert_eq!(cap.record_failure(ScrapeFailure::Timeout), 2);
        // Still saturated on the kept reading, marked stale.
        assert!(cap.is_saturated(&n.load, 101 * S));
        assert_eq!(cap.state(101 * S), ScrapeState::Stale);
        let v = cap.view(&n.load, 106 * S).unwrap();
        assert_eq!((v.weight, v.waiting, v.running), (1.0, 24.0, 16.0));
        // One window later: half weight.
        let v = cap.view(&n.load, 112 * S).unwrap();
        assert!((v.weight - 0.5).abs() < 1e-9, "{v:?}");
        assert_eq!(v.waiting, 12.0);
        assert!((v.kv_usage.unwrap() - 0.4).abs() < 1e-9);
        assert!(cap.is_saturated(&n.load, 112 * S), "12 > 4");
        // Four windows after going stale: dropped, failing, not saturated.
        assert!(cap.view(&n.load, 131 * S).is_none());
        assert_eq!(cap.state(131 * S), ScrapeState::Failing);
        assert!(!cap.is_saturated(&n.load, 131 * S));
        let r = cap.report(131 * S);
        assert_eq!(r.reason, Some(ScrapeFailure::Timeout));
        assert_eq!((r.consecutive_failures, r.failures), (2, [2, 0, 0, 0]));
        assert_eq!(r.reading, None);
        // A good scrape resets the run of failures and the reason.
        cap.record(&saturated, 0, 140 * S);
        let r = cap.report(140 * S);
        assert_eq!((r.state, r.reason), (ScrapeState::Ok, None));
        assert_eq!(r.reading.unwrap().waiting, 24);
        assert_eq!(r.failures, [2, 0, 0, 0]);
    }

    #[test]
    fn unconfigured_capacity_is_off() {
        let cap = Capacity::default();
        assert_eq!(cap.state(S), ScrapeState::Off);
        assert_eq!(cap.report(S).reading, None);
    }
}
