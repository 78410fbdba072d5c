//! The consolidation and parking decisions of one pool, once per tick.
//! Pure logic over a snapshot of the nodes (unit-tested here); the monitor
//! task feeds it and applies what it decides.
//!
//! * **Demand** = requests in flight across the pool (scraped running +
//!   waiting where fresh, else the gateway's outstanding count), smoothed
//!   by an EWMA (5 intervals) and predicted `lead` ahead (the tick interval
//!   plus the wake-up time when nodes can be parked) from its trend over
//!   the last `lead` (at least 10 intervals). Not from the instant count
//!   or a per-tick slope: in-flight counts of Poisson traffic jump by
//!   half their mean from one second to the next, and a one-tick slope
//!   extrapolated over a 30 s wake-up time turned every burst into the
//!   whole pool (a burst is absorbed by the request path's spill-over,
//!   `balance::consolidate`, without a member change).
//! * **Nodes needed** = ⌈predicted demand / (target_batch × (1 −
//!   headroom))⌉, at least `min_active`. The active set grows to it at
//!   once; it also grows by one while an active node holding at least
//!   half its planned batch has a peak-EWMA TTFT above `ttft_slo × (1 −
//!   headroom)` (a slow first token on a nearly idle node is its own long
//!   prompt, not a shortage of nodes).
//! * **Hysteresis**: the set shrinks by one node only after the need has
//!   stayed below it for `scale_down_delay`, and not within
//!   `scale_down_delay` of an SLO breach.
//! * **Members**: active nodes stay; new ones are awake available nodes
//!   in config order, then waking ones, then parked ones (which are woken).
//! * **Parking**: an awake node outside the set with nothing in flight
//!   and no new request for `idle_after` (counted from when it was last
//!   busy or last woke) is parkable; with an action configured it is
//!   parked, keeping `spare` idle nodes awake.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::{ConsolidateConfig, ParkingConfig};
use crate::fleet::power::ParkState;

/// What the controller sees of one node this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeView {
    /// Healthy, not ejected, not draining.
    pub available: bool,
    /// Parking state.
    pub state: ParkState,
    /// Requests in flight (running + waiting).
    pub in_flight: f64,
    /// Requests sent to it since start (to notice traffic between ticks).
    pub requests: u64,
    /// Peak-EWMA time to first token, seconds.
    pub ttft: Option<f64>,
    /// Peak-EWMA time per output token, seconds.
    pub tpot: Option<f64>,
}

/// What the controller decided this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// In the active set (requests go there first).
    pub active: Vec<bool>,
    /// Nodes the predicted demand needs.
    pub needed: usize,
    /// Idle long enough to be parked.
    pub parkable: Vec<bool>,
    /// Park these now.
    pub park: Vec<usize>,
    /// Wake these now.
    pub wake: Vec<usize>,
}

/// Controller state of one pool.
#[derive(Debug)]
pub struct Controller {
    consolidate: Option<ConsolidateConfig>,
    parking: Option<ParkingConfig>,
    interval: Duration,
    demand: f64,
    /// Smoothed demand over the trend window, oldest first.
    history: VecDeque<(Instant, f64)>,
    last: Option<Instant>,
    size: usize,
    below_since: Option<Instant>,
    hold_until: Option<Instant>,
    members: Vec<bool>,
    last_busy: Vec<Instant>,
    last_requests: Vec<u64>,
}

impl Controller {
    /// A controller for `nodes` nodes; `None` settings are off.
    pub fn new(
        nodes: usize,
        consolidate: Option<ConsolidateConfig>,
        parking: Option<ParkingConfig>,
        interval: Duration,
        now: Instant,
    ) -> Controller {
        Controller {
            size: consolidate
                .as_ref()
                .map_or(nodes, |c| c.min_active.min(nodes)),
            consolidate,
            parking,
            interval,
            demand: 0.0,
            history: VecDeque::new(),
            last: None,
            below_since: None,
            hold_until: None,
            members: vec![false; nodes],
            last_busy: vec![now; nodes],
            last_requests: vec![0; nodes],
        }
    }

    /// Predicted demand `lead` ahead of `now` (requests in flight): the
    /// smoothed level plus its rising trend over the last `lead`.
    fn predict(&mut self, now: Instant, demand: f64) -> f64 {
        let dt = self
            .last
            .map_or(self.interval, |l| now.saturating_duration_since(l))
            .as_secs_f64()
            .max(1e-3);
        let first = self.last.is_none();
        self.last = Some(now);
        let tau = (self.interval.as_secs_f64() * 5.0).max(1e-3);
        let alpha = 1.0 - (-dt / tau).exp();
        self.demand = if first {
            demand
        } else {
            self.demand + alpha * (demand - self.demand)
        };
        let lead = self.interval
            + self
                .parking
                .as_ref()
                .map_or(Duration::ZERO, |p| p.wake_time);
        let span = lead.max(self.interval * 10);
        self.history.push_back((now, self.demand));
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > span)
        {
            self.history.pop_front();
        }
        let trend = match self.history.front() {
            Some(&(t, level)) if now.saturating_duration_since(t) >= span / 2 => {
                (self.demand - level) / now.saturating_duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        };
        self.demand + trend.max(0.0) * lead.as_secs_f64()
    }

    /// Decide for this tick.
    pub fn tick(&mut self, now: Instant, nodes: &[NodeView]) -> Decision {
        let n = nodes.len();
        for (i, v) in nodes.iter().enumerate() {
            // A parked or waking node's idle time starts when it is back:
            // one woken for a rise that then faded would otherwise be
            // parked again the tick it woke, its wake-up spent for nothing.
            if v.in_flight > 0.0
                || v.requests != self.last_requests[i]
                || v.state != ParkState::Awake
            {
                self.last_busy[i] = now;
            }
            self.last_requests[i] = v.requests;
        }
        let demand: f64 = nodes.iter().map(|v| v.in_flight).sum();
        let predicted = self.predict(now, demand);
        let plan = self.consolidate.clone().unwrap_or_default();
        let per_node = (plan.target_batch * (1.0 - plan.headroom)).max(1e-9);
        let needed = ((predicted / per_node).ceil() as usize).max(plan.min_active);

        let usable = |v: &NodeView| v.available || v.state != ParkState::Awake;
        let mut decision = Decision {
            needed,
            active: vec![true; n],
            parkable: vec![false; n],
            ..Decision::default()
        };
        let consolidating = self.consolidate.is_some();
        if consolidating {
            let slack = 1.0 - plan.headroom;
            // TTFT only: a peak-EWMA time per token jumps at every prefill
            // chunk that stalls the batch's decodes, so it would keep the
            // whole pool awake; the per-token time is bounded by
            // `target_batch` instead (the step time grows with the batch).
            // Only a node holding at least half its planned batch counts:
            // on a lightly loaded node a slow first token comes from its
            // own long prompt, which another node would not make faster,
            // and one such outlier would otherwise wake the whole pool.
            let breach = nodes.iter().zip(&self.members).any(|(v, &m)| {
                m && v.in_flight >= per_node * 0.5
                    && v.ttft
                        .is_some_and(|t| t > plan.ttft_slo.as_secs_f64() * slack)
            });
            let mut want = needed;
            if breach {
                want = want.max(self.size + 1);
                self.hold_until = Some(now + plan.scale_down_delay);
            }
            let held = self.hold_until.is_some_and(|h| now < h);
            if want >= self.size {
                self.size = want;
                self.below_since = None;
            } else if !held {
                let since = *self.below_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= plan.scale_down_delay {
                    self.size -= 1;
                    self.below_since = Some(now);
                }
            }
            let capacity = nodes.iter().filter(|v| usable(v)).count();
            self.size = self
                .size
                .clamp(plan.min_active.min(capacity), capacity.max(1));

            // Keep members that can still serve, then add in order of readiness.
            let mut members = vec![false; n];
            let mut count = 0;
            let order = (0..n)
                .filter(|&i| self.members[i] && usable(&nodes[i]))
                .chain((0..n).filter(|&i| nodes[i].state == ParkState::Awake && nodes[i].available))
                .chain((0..n).filter(|&i| nodes[i].state == ParkState::Waking))
                .chain((0..n).filter(|&i| nodes[i].state == ParkState::Parked));
            for i in order {
                if count >= self.size {
                    break;
                }
                if !members[i] {
                    members[i] = true;
                    count += 1;
                }
            }
            self.members = members;
            decision.active = self.members.clone();
            decision
                .wake
                .extend((0..n).filter(|&i| self.members[i] && nodes[i].state == ParkState::Parked));
        } else {
            self.members = vec![true; n];
            // No consolidation: wake parked nodes when the awake ones fall short.
            let awake = nodes
                .iter()
                .filter(|v| v.state != ParkState::Parked && v.available)
                .count();
            let short = needed.saturating_sub(awake);
            decision.wake.extend(
                (0..n)
                    .filter(|&i| nodes[i].state == ParkState::Parked)
                    .take(short),
            );
        }

        if let Some(parking) = &self.parking {
            let mut idle: Vec<usize> = (0..n)
                .filter(|&i| {
                    let v = &nodes[i];
                    v.state == ParkState::Awake
                        && v.in_flight == 0.0
                        && !(consolidating && self.members[i])
                        && now.saturating_duration_since(self.last_busy[i]) >= parking.idle_after
                })
                .collect();
            for &i in &idle {
                decision.parkable[i] = true;
            }
            if parking.acts() {
                // Keep the first `spare` idle nodes awake; park the rest.
                idle.drain(..parking.spare.min(idle.len()));
                decision.park = idle;
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(in_flight: f64) -> NodeView {
        NodeView {
            available: true,
            state: ParkState::Awake,
            in_flight,
            requests: 0,
            ttft: None,
            tpot: None,
        }
    }

    fn consolidate() -> ConsolidateConfig {
        ConsolidateConfig {
            target_batch: 10.0,
            headroom: 0.2,
            scale_down_delay: Duration::from_secs(5),
            ..ConsolidateConfig::default()
        }
    }

    /// Parking through vLLM's sleep API after `idle` s, waking in `wake` s.
    fn sleep_parking(idle: u64, wake: u64) -> ParkingConfig {
        ParkingConfig {
            idle_after: Duration::from_secs(idle),
            wake_time: Duration::from_secs(wake),
            vllm_sleep: true,
            ..ParkingConfig::default()
        }
    }

    #[test]
    fn low_load_uses_one_node_and_grows_with_demand() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut c = Controller::new(4, Some(consolidate()), None, sec, t0);
        let d = c.tick(t0, &[node(1.0), node(0.0), node(0.0), node(0.0)]);
        assert_eq!(d.active, [true, false, false, false]);
        assert_eq!(d.needed, 1);
        // 20 in flight for a while: 8 per node planned → 3 nodes within
        // a few ticks (the smoothing's time constant).
        let mut d = Decision::default();
        for s in 1..12 {
            d = c.tick(
                t0 + sec * s,
                &[node(10.0), node(10.0), node(0.0), node(0.0)],
            );
        }
        assert!(d.needed >= 3, "{d:?}");
        assert_eq!(d.active.iter().filter(|a| **a).count(), d.needed.min(4));
        // Demand falls: one node leaves per scale_down_delay, not at once.
        let mut active = d.active.iter().filter(|a| **a).count();
        for s in 12..60 {
            let d = c.tick(t0 + sec * s, &[node(1.0), node(0.0), node(0.0), node(0.0)]);
            let now = d.active.iter().filter(|a| **a).count();
            assert!(now + 1 >= active, "one at a time");
            active = now;
        }
        assert_eq!(active, 1);
    }

    #[test]
    fn a_burst_does_not_grow_the_set_but_a_rising_trend_does_ahead_of_wake_up() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let parking = sleep_parking(20, 30);
        let mut c = Controller::new(4, Some(consolidate()), Some(parking), sec, t0);
        let quiet = [node(5.0), node(0.0), node(0.0), node(0.0)];
        for s in 0..40 {
            let d = c.tick(t0 + sec * s, &quiet);
            assert_eq!(d.needed, 1, "tick {s}");
        }
        // One second of 20 in flight (a Poisson burst) then back to 5.
        let burst = [node(12.0), node(8.0), node(0.0), node(0.0)];
        let d = c.tick(t0 + sec * 40, &burst);
        assert!(d.needed <= 2, "a one-tick burst is not a trend: {d:?}");
        for s in 41..80 {
            let d = c.tick(t0 + sec * s, &quiet);
            assert!(d.needed <= 2, "tick {s}: {d:?}");
        }
        // Demand rising by 0.25/s for 40 s: 30 s of wake-up ahead, the
        // set is sized for what will be in flight then.
        let mut d = Decision::default();
        for s in 80..120 {
            let now = 5.0 + 0.25 * (s - 80) as f64;
            d = c.tick(t0 + sec * s, &[node(now), node(0.0), node(0.0), node(0.0)]);
        }
        // Now ~15 in flight (2 nodes of 8); in 31 s ~22 (3 nodes).
        assert!(d.needed >= 3, "{d:?}");
    }

    #[test]
    fn slo_breach_grows_the_set_and_unavailable_nodes_are_replaced() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut c = Controller::new(3, Some(consolidate()), None, sec, t0);
        c.tick(t0, &[node(1.0), node(0.0), node(0.0)]);
        let slow = NodeView {
            ttft: Some(0.9),
            ..node(4.0)
        };
        let d = c.tick(t0 + sec, &[slow, node(0.0), node(0.0)]);
        assert_eq!(
            d.active,
            [true, true, false],
            "0.9 s > 0.8 s = 1 s × (1 − 0.2)"
        );
        let down = NodeView {
            available: false,
            ..node(0.0)
        };
        let d = c.tick(t0 + sec * 2, &[down, node(0.0), node(0.0)]);
        assert_eq!(d.active, [false, true, true]);
    }

    #[test]
    fn a_slow_first_token_on_a_nearly_idle_node_does_not_grow_the_set() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut c = Controller::new(4, Some(consolidate()), None, sec, t0);
        c.tick(t0, &[node(1.0), node(0.0), node(0.0), node(0.0)]);
        // One long prompt: 0.9 s > 0.8 s, but 1 in flight < half of 8 planned.
        let outlier = NodeView {
            ttft: Some(0.9),
            ..node(1.0)
        };
        for s in 1..10 {
            let d = c.tick(t0 + sec * s, &[outlier, node(0.0), node(0.0), node(0.0)]);
            assert_eq!(d.active, [true, false, false, false], "tick {s}");
        }
    }

    #[test]
    fn idle_nodes_become_parkable_and_parked_ones_wake_for_demand() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let parking = sleep_parking(3, 2);
        let mut c = Controller::new(3, Some(consolidate()), Some(parking), sec, t0);
        let mut d = Decision::default();
        for s in 0..5 {
            d = c.tick(t0 + sec * s, &[node(1.0), node(0.0), node(0.0)]);
        }
        assert_eq!(d.parkable, [false, true, true]);
        assert_eq!(d.park, [1, 2]);
        let parked = NodeView {
            state: ParkState::Parked,
            ..node(0.0)
        };
        let mut woken = Vec::new();
        let mut active = Vec::new();
        for s in 6..16 {
            let d = c.tick(t0 + sec * s, &[node(14.0), parked, parked]);
            woken.extend(d.wake);
            active = d.active;
        }
        woken.dedup();
        assert_eq!(woken, [1], "14 in flight needs 2 nodes");
        assert_eq!(active, [true, true, false]);
    }

    #[test]
    fn a_node_that_just_woke_gets_its_idle_time_before_it_is_parked_again() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let parking = sleep_parking(20, 2);
        let mut c = Controller::new(2, Some(consolidate()), Some(parking), sec, t0);
        let parked = NodeView {
            state: ParkState::Parked,
            ..node(0.0)
        };
        let waking = NodeView {
            state: ParkState::Waking,
            ..node(0.0)
        };
        // Parked for a long time, then woken; by the time it is back the
        // demand that woke it has gone and it has left the active set.
        for s in 0..60 {
            c.tick(t0 + sec * s, &[node(1.0), parked]);
        }
        for s in 60..63 {
            c.tick(t0 + sec * s, &[node(1.0), waking]);
        }
        for s in 63..82 {
            let d = c.tick(t0 + sec * s, &[node(1.0), node(0.0)]);
            assert!(d.park.is_empty() && !d.parkable[1], "tick {s}: {d:?}");
        }
        let d = c.tick(t0 + sec * 83, &[node(1.0), node(0.0)]);
        assert_eq!(d.park, [1], "idle for idle_after since it woke");
    }
}
