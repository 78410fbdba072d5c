//! Energy results of a policy run on the simulated fleet: totals, joules
//! per output token, SLO attainment, p99 TTFT overall and at the peak of a
//! day-shaped load, the comparison table and an SVG chart of fleet power
//! and awake nodes over time (hand-written SVG, no dependency).

use std::fmt::Write;

use super::measure::Record;
use super::report::{percentile, Slo};

/// One node in a [`EnergySample`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeSample {
    /// Node energy since the run started, joules.
    pub joules: f64,
    /// Parked or waking (no engine steps).
    pub sleeping: bool,
    /// Requests running.
    pub busy: bool,
}

/// One sample of the fleet, taken by the bench while the load runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergySample {
    /// Simulated seconds since the run started.
    pub t: f64,
    /// Fleet power, watts.
    pub watts: f64,
    /// Fleet energy since the run started, joules.
    pub joules: f64,
    /// Nodes not parked.
    pub awake: usize,
    /// Nodes with requests running.
    pub busy: usize,
    /// Per node, in fleet order (empty when not sampled).
    pub nodes: Vec<NodeSample>,
}

/// Where one node's time and energy went over a run, attributed by the
/// state seen at each sample to the interval up to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeUse {
    /// Simulated seconds with requests running.
    pub busy_secs: f64,
    /// Simulated seconds awake with nothing running.
    pub idle_secs: f64,
    /// Simulated seconds parked or waking.
    pub parked_secs: f64,
    /// Joules while busy.
    pub busy_joules: f64,
    /// Joules while awake and idle.
    pub idle_joules: f64,
    /// Joules while parked or waking.
    pub parked_joules: f64,
}

impl NodeUse {
    /// All joules.
    pub fn joules(&self) -> f64 {
        self.busy_joules + self.idle_joules + self.parked_joules
    }
}

/// Per-node time and energy by state, from consecutive samples.
pub fn node_use(samples: &[EnergySample]) -> Vec<NodeUse> {
    let n = samples.iter().map(|s| s.nodes.len()).max().unwrap_or(0);
    let mut out = vec![NodeUse::default(); n];
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let dt = (b.t - a.t).max(0.0);
        for (i, (na, nb)) in a.nodes.iter().zip(&b.nodes).enumerate() {
            let dj = (nb.joules - na.joules).max(0.0);
            let u = &mut out[i];
            if na.sleeping {
                u.parked_secs += dt;
                u.parked_joules += dj;
            } else if na.busy {
                u.busy_secs += dt;
                u.busy_joules += dj;
            } else {
                u.idle_secs += dt;
                u.idle_joules += dj;
            }
        }
    }
    out
}

/// Energy figures of one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyReport {
    /// Policy label.
    pub policy: String,
    /// Fleet energy over the run, joules.
    pub joules: f64,
    /// Simulated seconds covered.
    pub secs: f64,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    /// Share of all requests that succeeded within the SLO (None without one).
    pub slo_attainment: Option<f64>,
    /// p99 time to first token over the run, seconds.
    pub ttft_p99: f64,
    /// p99 TTFT of requests sent in the peak window (middle fifth of the day).
    pub peak_ttft_p99: f64,
    /// Average awake nodes.
    pub avg_awake: f64,
    /// Per node: time and energy busy, idle and parked.
    pub nodes: Vec<NodeUse>,
    /// The samples (for the chart).
    pub samples: Vec<EnergySample>,
}

impl EnergyReport {
    /// Watt-hours.
    pub fn wh(&self) -> f64 {
        self.joules / 3600.0
    }
    /// Average fleet watts.
    pub fn avg_watts(&self) -> f64 {
        if self.secs > 0.0 {
            self.joules / self.secs
        } else {
            0.0
        }
    }
    /// Joules per output token.
    pub fn joules_per_token(&self) -> Option<f64> {
        (self.output_tokens > 0).then(|| self.joules / self.output_tokens as f64)
    }
}

fn ttft(r: &Record) -> Option<f64> {
    r.first_token.map(|f| f - r.start)
}

fn tpot(r: &Record) -> Option<f64> {
    let first = r.first_token?;
    (r.output_tokens > 1).then(|| (r.end - first) / (r.output_tokens - 1) as f64)
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 99.0)
}

/// Build the report of one run; `day_secs` is the length of a day-shaped
/// stage in simulated seconds (its middle fifth is the peak window).
pub fn report(
    policy: &str,
    samples: Vec<EnergySample>,
    records: &[Record],
    slo: Slo,
    day_secs: f64,
) -> EnergyReport {
    let (first, last) = (samples.first().cloned(), samples.last().cloned());
    let joules = match (&first, &last) {
        (Some(a), Some(b)) => b.joules - a.joules,
        _ => 0.0,
    };
    let secs = match (&first, &last) {
        (Some(a), Some(b)) => b.t - a.t,
        _ => 0.0,
    };
    let ok: Vec<&Record> = records.iter().filter(|r| r.ok()).collect();
    let output_tokens = ok.iter().map(|r| r.output_tokens).sum();
    let slo_attainment = (slo.ttft.is_some() || slo.tpot.is_some()).then(|| {
        let good = ok
            .iter()
            .filter(|r| {
                slo.ttft.is_none_or(|s| ttft(r).is_some_and(|t| t <= s))
                    && slo.tpot.is_none_or(|s| tpot(r).is_none_or(|t| t <= s))
            })
            .count();
        good as f64 / records.len().max(1) as f64
    });
    let peak = (0.4 * day_secs, 0.6 * day_secs);
    let avg_awake = if samples.is_empty() {
        0.0
    } else {
        samples.iter().map(|s| s.awake as f64).sum::<f64>() / samples.len() as f64
    };
    EnergyReport {
        policy: policy.to_string(),
        joules,
        secs,
        output_tokens,
        slo_attainment,
        ttft_p99: p99(ok.iter().filter_map(|r| ttft(r)).collect()),
        peak_ttft_p99: p99(ok
            .iter()
            .filter(|r| r.scheduled >= peak.0 && r.scheduled < peak.1)
            .filter_map(|r| ttft(r))
            .collect()),
        avg_awake,
        nodes: node_use(&samples),
        samples,
    }
}

/// Where each policy's energy went, node by node: Wh and share of time
/// busy / idle / parked.
pub fn node_table(reports: &[EnergyReport]) -> String {
    let mut out = format!(
        "{:<30} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "policy", "node", "Wh", "busy%", "idle%", "parked%", "busy_Wh", "idle_Wh", "park_Wh"
    );
    for r in reports {
        for (i, u) in r.nodes.iter().enumerate() {
            let total = (u.busy_secs + u.idle_secs + u.parked_secs).max(1e-9);
            let _ = writeln!(
                out,
                "{:<30} {:>5} {:>8.2} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>8.2} {:>8.2}",
                r.policy,
                i,
                u.joules() / 3600.0,
                u.busy_secs / total * 100.0,
                u.idle_secs / total * 100.0,
                u.parked_secs / total * 100.0,
                u.busy_joules / 3600.0,
                u.idle_joules / 3600.0,
                u.parked_joules / 3600.0
            );
        }
    }
    out
}

/// The energy comparison table; savings are against `baseline` (a policy label).
pub fn table(reports: &[EnergyReport], baseline: &str) -> String {
    let base = reports.iter().find(|r| r.policy == baseline);
    let mut out = format!(
        "{:<30} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10} {:>9}\n",
        "policy",
        "energy_Wh",
        "avg_W",
        "J/token",
        "awake",
        "slo%",
        "ttft_p99",
        "peak_p99",
        "saving%"
    );
    for r in reports {
        let saving = base
            .filter(|b| b.joules > 0.0)
            .map_or("-".to_string(), |b| {
                format!("{:.1}", (1.0 - r.joules / b.joules) * 100.0)
            });
        let _ = writeln!(
            out,
            "{:<30} {:>9.2} {:>8.0} {:>8.2} {:>8.2} {:>7} {:>9.0} {:>10.0} {:>9}",
            r.policy,
            r.wh(),
            r.avg_watts(),
            r.joules_per_token().unwrap_or(0.0),
            r.avg_awake,
            r.slo_attainment
                .map_or("-".to_string(), |a| format!("{:.1}", a * 100.0)),
            r.ttft_p99 * 1000.0,
            r.peak_ttft_p99 * 1000.0,
            saving
        );
    }
    out
}

const COLORS: &[&str] = &[
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// An SVG with two panels sharing the time axis: fleet power (W) and
/// awake nodes, one line per policy.
pub fn svg(reports: &[EnergyReport], nodes: usize) -> String {
    let (w, h, left, right, top, gap, panel) = (900.0, 560.0, 70.0, 20.0, 40.0, 60.0, 200.0);
    let t_max = reports
        .iter()
        .filter_map(|r| r.samples.last().map(|s| s.t))
        .fold(1.0, f64::max);
    let w_max = reports
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.watts))
        .fold(1.0, f64::max)
        * 1.1;
    let n_max = (nodes.max(1)) as f64;
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let y1 = |v: f64| top + panel * (1.0 - v / w_max);
    let y2 = |v: f64| top + panel + gap + panel * (1.0 - v / n_max);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">Fleet power (W) and awake nodes over the day-shaped load (simulated seconds)</text>\n"
    );
    for (label, y0, max, unit) in [
        ("fleet W", top, w_max, "W"),
        ("awake nodes", top + panel + gap, n_max, ""),
    ] {
        let _ = writeln!(
            out,
            "<rect x=\"{left}\" y=\"{y0}\" width=\"{}\" height=\"{panel}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"5\" y=\"{}\">{label}</text><text x=\"5\" y=\"{}\">{max:.0}{unit}</text><text x=\"5\" y=\"{}\">0</text>",
            w - left - right,
            y0 + panel / 2.0,
            y0 + 12.0,
            y0 + panel
        );
    }
    for i in 0..=4 {
        let t = t_max * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.0}s</text>",
            x(t),
            h - 20.0
        );
    }
    for (k, r) in reports.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts = |f: &dyn Fn(&EnergySample) -> (f64, f64)| {
            r.samples
                .iter()
                .map(|s| {
                    let (px, py) = f(s);
                    format!("{px:.1},{py:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{} ({:.1} Wh)</text>",
            pts(&|s| (x(s.t), y1(s.watts))),
            pts(&|s| (x(s.t), y2(s.awake as f64 + 0.03 * k as f64))),
            left + 10.0 + 280.0 * k as f64,
            h - 4.0,
            r.policy,
            r.wh()
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(start: f64, first: f64, end: f64, tokens: u64) -> Record {
        Record {
            scheduled: start,
            start,
            first_token: Some(first),
            end,
            status: 200,
            output_tokens: tokens,
            ..Record::default()
        }
    }

    #[test]
    fn totals_attainment_peak_and_chart() {
        let samples = vec![
            EnergySample {
                t: 0.0,
                watts: 100.0,
                joules: 0.0,
                awake: 2,
                busy: 0,
                nodes: Vec::new(),
            },
            EnergySample {
                t: 10.0,
                watts: 300.0,
                joules: 2000.0,
                awake: 1,
                busy: 1,
                nodes: Vec::new(),
            },
        ];
        let records = vec![rec(1.0, 1.1, 2.0, 10), rec(5.0, 7.0, 8.0, 10)];
        let r = report(
            "a",
            samples,
            &records,
            Slo {
                ttft: Some(0.5),
                tpot: None,
            },
            10.0,
        );
        assert_eq!(r.joules, 2000.0);
        assert_eq!(r.avg_watts(), 200.0);
        assert_eq!(r.joules_per_token(), Some(100.0));
        assert_eq!(r.slo_attainment, Some(0.5));
        assert!(
            (r.peak_ttft_p99 - 2.0).abs() < 1e-9,
            "only the request sent at 5 s is in the peak"
        );
        let mut cheaper = r.clone();
        cheaper.policy = "b".into();
        cheaper.joules = 1000.0;
        let t = table(&[r.clone(), cheaper.clone()], "a");
        assert!(
            t.lines().nth(2).unwrap().trim_end().ends_with("50.0"),
            "{t}"
        );
        let s = svg(&[r, cheaper], 2);
        assert!(s.starts_with("<svg") && s.matches("<polyline").count() == 4);
    }

    #[test]
    fn node_use_attributes_each_interval_to_the_state_at_its_start() {
        let at = |t: f64, nodes: Vec<NodeSample>| EnergySample {
            t,
            watts: 0.0,
            joules: 0.0,
            awake: 0,
            busy: 0,
            nodes,
        };
        let n = |joules: f64, sleeping: bool, busy: bool| NodeSample {
            joules,
            sleeping,
            busy,
        };
        let samples = vec![
            at(0.0, vec![n(0.0, false, true), n(0.0, false, false)]),
            at(1.0, vec![n(300.0, false, false), n(110.0, true, false)]),
            at(3.0, vec![n(520.0, false, true), n(120.0, true, false)]),
        ];
        let u = node_use(&samples);
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].busy_secs, u[0].idle_secs), (1.0, 2.0));
        assert_eq!((u[0].busy_joules, u[0].idle_joules), (300.0, 220.0));
        assert_eq!((u[1].idle_secs, u[1].parked_secs), (1.0, 2.0));
        assert_eq!((u[1].idle_joules, u[1].parked_joules), (110.0, 10.0));
        assert_eq!(u[1].joules(), 120.0);
    }
}
