//! Reading NVIDIA dcgm-exporter pages: `DCGM_FI_DEV_POWER_USAGE` (gauge,
//! W) and `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (counter, mJ since boot),
//! one series per GPU labelled `gpu`, `UUID` and `Hostname`; summed per
//! node. Only these two names are read; everything else on the page is
//! skipped line by line. Labels are read by the node metrics scraper's
//! own parser (`fleet::capacity::label`).

use crate::fleet::capacity::label;

/// What one node's GPUs report, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Sum of the GPUs' power draw, watts.
    pub watts: Option<f64>,
    /// Sum of the GPUs' energy counters, millijoules.
    pub energy_mj: Option<f64>,
    /// GPUs seen (distinct `UUID`, else `gpu`, else series).
    pub gpus: usize,
}

/// Most GPUs one page may describe (bounds memory on a hostile page).
const MAX_GPUS: usize = 4096;

/// Sum the page's power series for the GPUs whose `Hostname` label is one
/// of `hosts` (every GPU on the page when `hosts` is empty).
pub fn read(text: &str, hosts: &[&str]) -> Reading {
    let mut gpus: Vec<String> = Vec::new();
    let mut r = Reading::default();
    for line in text.lines() {
        let line = line.trim_start();
        let power = line.starts_with("DCGM_FI_DEV_POWER_USAGE");
        let energy = line.starts_with("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION");
        if !power && !energy {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => match line.rfind('}') {
                Some(close) if close > open => {
                    (&line[..open], &line[open + 1..close], &line[close + 1..])
                }
                _ => continue,
            },
            None => match line.find([' ', '\t']) {
                Some(sp) => (&line[..sp], "", &line[sp..]),
                None => continue,
            },
        };
        if name != "DCGM_FI_DEV_POWER_USAGE" && name != "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" {
            continue;
        }
        if !hosts.is_empty()
            && !label(labels, "Hostname").is_some_and(|h| hosts.contains(&h.as_ref()))
        {
            continue;
        }
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if !v.is_finite() || v < 0.0 {
            continue;
        }
        let id = label(labels, "UUID")
            .or_else(|| label(labels, "gpu"))
            .unwrap_or(std::borrow::Cow::Borrowed(labels));
        if !gpus.iter().any(|g| *g == *id) && gpus.len() < MAX_GPUS {
            gpus.push(id.to_string());
        }
        let slot = if power {
            &mut r.watts
        } else {
            &mut r.energy_mj
        };
        *slot = Some(slot.unwrap_or(0.0) + v);
    }
    r.gpus = gpus.len();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 1980
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 250.5
DCGM_FI_DEV_POWER_USAGE{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 120
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-c",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-2"} 75
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a",Hostname="node-1"} 1000000
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b",Hostname="node-1"} 500000
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-c",Hostname="node-2"} 7
DCGM_FI_DEV_POWER_USAGE_X{gpu="0"} 99999
"#;

    #[test]
    fn sums_per_host_and_whole_page() {
        let one = read(PAGE, &["node-1"]);
        assert_eq!(one.watts, Some(370.5));
        assert_eq!(one.energy_mj, Some(1_500_000.0));
        assert_eq!(one.gpus, 2);
        let all = read(PAGE, &[]);
        assert_eq!(all.watts, Some(445.5));
        assert_eq!(all.gpus, 3);
        assert_eq!(read(PAGE, &["nope"]), Reading::default());
        assert_eq!(
            read("garbage\nDCGM_FI_DEV_POWER_USAGE{gpu=\"0\" 5\n", &[]),
            Reading::default()
        );
        assert_eq!(
            label(r#"a="x\"y",Hostname="h""#, "Hostname").as_deref(),
            Some("h")
        );
    }
}
