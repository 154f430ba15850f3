//! Counter → rate derivation per container, robust to restarts (counter resets),
//! duplicated deliveries and out-of-order samples: none of them yields a rate; the
//! sample's gauges still count.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::decode::StatsCounters;
use crate::model::{MetricName, metric};

/// What the previous sample of a container left behind, kept in its registry entry for
/// every container tracked: 72 bytes, a counter the sample did not have held as NaN (a
/// decoded counter is never NaN: JSON has none) rather than as an `Option` (104 bytes),
/// and no sample at all as [`Self::NONE`]. Checkpoints hold it as before, absent
/// counters as `null` ([`PrevWire`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "PrevWire", into = "PrevWire")]
pub(crate) struct PrevStats {
    ts_ms: i64,
    cpu_total_ns: f64,
    cpu_system_ns: f64,
    net: [f64; 4],
    blk: [f64; 2],
}

/// [`PrevStats`] in a checkpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct PrevWire {
    ts_ms: i64,
    cpu_total_ns: Option<f64>,
    cpu_system_ns: Option<f64>,
    net: Option<[f64; 4]>,
    blk: Option<[f64; 2]>,
}

/// NaN for an absent counter.
fn held<const N: usize>(c: Option<[f64; N]>) -> [f64; N] {
    c.unwrap_or([f64::NAN; N])
}

/// The counters held, `None` for absent ones (all NaN).
fn present<const N: usize>(c: [f64; N]) -> Option<[f64; N]> {
    (!c.iter().all(|x| x.is_nan())).then_some(c)
}

/// A counter held, `None` for an absent one (NaN).
fn known(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

impl PrevStats {
    /// No previous sample (a sample at this time, 292 million years BC, counts as none:
    /// no rate could span from it).
    pub(crate) const NONE: Self = Self {
        ts_ms: i64::MIN,
        cpu_total_ns: f64::NAN,
        cpu_system_ns: f64::NAN,
        net: [f64::NAN; 4],
        blk: [f64::NAN; 2],
    };

    pub(crate) fn is_none(&self) -> bool {
        self.ts_ms == i64::MIN
    }

    /// Forgets a sample older than `before_ms`.
    pub(crate) fn expire(&mut self, before_ms: i64) {
        if self.ts_ms < before_ms {
            *self = Self::NONE;
        }
    }

    /// A sample at `ts_ms` without counters.
    #[cfg(test)]
    pub(crate) fn at(ts_ms: i64) -> Self {
        Self {
            ts_ms,
            ..Self::NONE
        }
    }

    fn new(ts_ms: i64, c: &StatsCounters) -> Self {
        PrevWire {
            ts_ms,
            cpu_total_ns: c.cpu_total_ns,
            cpu_system_ns: c.cpu_system_ns,
            net: c.net,
            blk: c.blk,
        }
        .into()
    }

    fn cpu_total_ns(&self) -> Option<f64> {
        known(self.cpu_total_ns)
    }

    fn cpu_system_ns(&self) -> Option<f64> {
        known(self.cpu_system_ns)
    }
}

impl From<PrevWire> for PrevStats {
    fn from(w: PrevWire) -> Self {
        Self {
            ts_ms: w.ts_ms,
            cpu_total_ns: w.cpu_total_ns.unwrap_or(f64::NAN),
            cpu_system_ns: w.cpu_system_ns.unwrap_or(f64::NAN),
            net: held(w.net),
            blk: held(w.blk),
        }
    }
}

impl From<PrevStats> for PrevWire {
    fn from(p: PrevStats) -> Self {
        Self {
            ts_ms: p.ts_ms,
            cpu_total_ns: p.cpu_total_ns(),
            cpu_system_ns: p.cpu_system_ns(),
            net: present(p.net),
            blk: present(p.blk),
        }
    }
}

/// Equal as checkpoints hold them (NaN, an absent counter, equals NaN).
impl PartialEq for PrevStats {
    fn eq(&self, other: &Self) -> bool {
        PrevWire::from(*self) == PrevWire::from(*other)
    }
}

/// The outcome of one sample.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Ordering {
    /// Newer than the previous sample: rates derived, state advanced.
    Fresh,
    /// Same time as the previous sample: a duplicate delivery, dropped.
    Duplicate,
    /// Older than the previous sample: late, dropped (its rates would be wrong and its
    /// gauges would overwrite newer ones).
    Late,
}

/// Per-series counter state for Prometheus (a Docker container's is its registry
/// entry's [`PrevStats`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct RateState {
    pub(crate) prom: FxHashMap<String, (i64, f64)>,
}

/// Limits on the interval between two samples for a rate to be meaningful.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateWindow {
    pub(crate) min_dt_ms: i64,
    pub(crate) max_dt_ms: i64,
}

impl PrevStats {
    /// Derives the metrics of one Docker stats sample of the container whose previous
    /// sample this is into `out`, and becomes that sample.
    pub(crate) fn advance(
        &mut self,
        ts_ms: i64,
        c: &StatsCounters,
        w: RateWindow,
        out: &mut Vec<(MetricName, f64)>,
    ) -> Ordering {
        if !self.is_none() {
            if ts_ms == self.ts_ms {
                return Ordering::Duplicate;
            }
            if ts_ms < self.ts_ms {
                // Slightly older: late, dropped. Far older: the previous sample's clock
                // was wrong (or reset); start the container's counters afresh rather
                // than drop every sample until that bogus time.
                if self.ts_ms - ts_ms <= w.max_dt_ms {
                    return Ordering::Late;
                }
                *self = Self::NONE;
            }
        }
        let prev = (!self.is_none()).then_some(&*self);
        let dt_ms = prev.map(|p| ts_ms - p.ts_ms);
        let usable = dt_ms.is_some_and(|dt| (w.min_dt_ms..=w.max_dt_ms).contains(&dt));
        let prev = prev.filter(|_| usable);
        let dt_s = dt_ms.unwrap_or(0) as f64 / 1000.0;

        // CPU: Docker's own precpu_stats first (one-shot stats carry it), else our previous
        // sample of the same container.
        let online = c.online_cpus.unwrap_or(1.0);
        let cpu = match (c.cpu_total_ns, c.cpu_system_ns) {
            (Some(total), Some(system)) => {
                let pre = match (c.precpu_total_ns, c.precpu_system_ns) {
                    (Some(pt), Some(ps)) if ps > 0.0 => Some((pt, ps)),
                    _ => prev.and_then(|p| p.cpu_total_ns().zip(p.cpu_system_ns())),
                };
                pre.and_then(|(pt, ps)| {
                    let (dc, ds) = (total - pt, system - ps);
                    (dc >= 0.0 && ds > 0.0).then(|| (dc / ds * online).clamp(0.0, online))
                })
            }
            (Some(total), None) => prev
                .and_then(PrevStats::cpu_total_ns)
                .map(|pt| total - pt)
                .filter(|d| *d >= 0.0 && dt_s > 0.0)
                .map(|d| (d / (dt_s * 1e9)).clamp(0.0, online)),
            _ => None,
        };
        if let Some(cores) = cpu {
            out.push((metric::CPU_CORES.into(), cores));
        }
        if let Some(ws) = c.mem_working_set {
            out.push((metric::MEM_BYTES.into(), ws));
            if let Some(limit) = c.mem_limit.filter(|l| *l >= ws) {
                out.push((metric::MEM_LIMIT_RATIO.into(), ws / limit));
            }
        }
        if let (Some(now), Some(before)) = (c.net, prev.and_then(|p| present(p.net))) {
            let names = [
                metric::NET_RX_BPS,
                metric::NET_TX_BPS,
                metric::NET_RX_PPS,
                metric::NET_TX_PPS,
            ];
            push_rates(&names, &now, &before, dt_s, out);
        }
        if let (Some(now), Some(before)) = (c.blk, prev.and_then(|p| present(p.blk))) {
            push_rates(
                &[metric::BLK_READ_BPS, metric::BLK_WRITE_BPS],
                &now,
                &before,
                dt_s,
                out,
            );
        }
        if let Some(p) = c.pids {
            out.push((metric::PIDS.into(), p));
        }
        *self = Self::new(ts_ms, c);
        Ordering::Fresh
    }
}

impl RateState {
    pub(crate) fn len(&self) -> usize {
        self.prom.len()
    }

    pub(crate) fn forget(&mut self, id: &str) {
        self.prom.retain(|k, _| !k.starts_with(id));
    }

    pub(crate) fn evict(&mut self, before_ms: i64) {
        self.prom.retain(|_, (ts, _)| *ts >= before_ms);
    }

    /// Rate of one cumulative Prometheus series; `None` for the first sample, a reset,
    /// a duplicate or a late sample.
    pub(crate) fn prom_counter(
        &mut self,
        key: String,
        ts_ms: i64,
        value: f64,
        w: RateWindow,
    ) -> (Ordering, Option<f64>) {
        match self.prom.get(&key) {
            Some(&(pts, _)) if ts_ms == pts => return (Ordering::Duplicate, None),
            Some(&(pts, _)) if ts_ms < pts && pts - ts_ms <= w.max_dt_ms => {
                return (Ordering::Late, None);
            }
            Some(&(pts, _)) if ts_ms < pts => {
                self.prom.remove(&key);
            }
            _ => {}
        }
        let rate = self.prom.get(&key).and_then(|&(pts, pv)| {
            let dt = ts_ms - pts;
            ((w.min_dt_ms..=w.max_dt_ms).contains(&dt) && value >= pv)
                .then(|| (value - pv) / (dt as f64 / 1000.0))
        });
        self.prom.insert(key, (ts_ms, value));
        (Ordering::Fresh, rate)
    }
}

fn push_rates(
    names: &[&'static str],
    now: &[f64],
    before: &[f64],
    dt_s: f64,
    out: &mut Vec<(MetricName, f64)>,
) {
    for ((name, n), b) in names.iter().zip(now).zip(before) {
        // A counter that went down was reset (restart, interface recreated): no rate.
        if *n >= *b && dt_s > 0.0 {
            out.push(((*name).into(), (n - b) / dt_s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: RateWindow = RateWindow {
        min_dt_ms: 500,
        max_dt_ms: 600_000,
    };

    fn sample(total: f64, system: f64, rx: f64) -> StatsCounters {
        StatsCounters {
            cpu_total_ns: Some(total),
            cpu_system_ns: Some(system),
            online_cpus: Some(2.0),
            net: Some([rx, 0.0, 0.0, 0.0]),
            ..Default::default()
        }
    }

    fn get(out: &[(MetricName, f64)], name: &str) -> Option<f64> {
        out.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    #[test]
    fn rates_from_previous_sample_and_reset_handling() {
        let mut r = PrevStats::NONE;
        let mut out = vec![];
        assert_eq!(
            r.advance(10_000, &sample(0.0, 0.0, 0.0), W, &mut out),
            Ordering::Fresh
        );
        assert_eq!(get(&out, metric::CPU_CORES), None);
        out.clear();
        // 10 s later: 5 s of CPU over 20 s of host CPU on 2 CPUs → 0.5 cores; 10 kB/s rx.
        r.advance(20_000, &sample(5e9, 20e9, 100_000.0), W, &mut out);
        assert_eq!(get(&out, metric::CPU_CORES), Some(0.5));
        assert_eq!(get(&out, metric::NET_RX_BPS), Some(10_000.0));
        out.clear();
        // Restart: counters start again from zero: no absurd negative or huge rate.
        r.advance(30_000, &sample(1e8, 40e9, 10.0), W, &mut out);
        assert_eq!(get(&out, metric::CPU_CORES), None);
        assert_eq!(get(&out, metric::NET_RX_BPS), None);
        out.clear();
        // Duplicate and late deliveries are dropped.
        assert_eq!(
            r.advance(30_000, &sample(1e8, 40e9, 10.0), W, &mut out),
            Ordering::Duplicate
        );
        assert_eq!(
            r.advance(25_000, &sample(1e8, 40e9, 10.0), W, &mut out),
            Ordering::Late
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_sample_from_a_wrong_clock_does_not_block_the_container() {
        let mut r = PrevStats::NONE;
        let mut out = vec![];
        r.advance(10_000, &sample(0.0, 0.0, 0.0), W, &mut out);
        // A year in the future: accepted as the newest sample...
        r.advance(31_536_000_000, &sample(1e9, 4e9, 0.0), W, &mut out);
        out.clear();
        // ...but the real samples that follow are not dropped as late forever.
        assert_eq!(
            r.advance(20_000, &sample(2e9, 8e9, 0.0), W, &mut out),
            Ordering::Fresh
        );
        assert_eq!(
            r.advance(30_000, &sample(3e9, 12e9, 100.0), W, &mut out),
            Ordering::Fresh
        );
        assert!(out.iter().any(|(n, _)| n == metric::CPU_CORES), "{out:?}");
    }

    #[test]
    fn precpu_is_preferred_and_cpu_is_clamped() {
        let mut r = PrevStats::NONE;
        let mut out = vec![];
        let c = StatsCounters {
            cpu_total_ns: Some(2e9),
            cpu_system_ns: Some(40e9),
            precpu_total_ns: Some(1.5e9),
            precpu_system_ns: Some(36e9),
            online_cpus: Some(4.0),
            ..Default::default()
        };
        r.advance(1, &c, W, &mut out);
        assert_eq!(get(&out, metric::CPU_CORES), Some(0.5));
        out.clear();
        let wild = StatsCounters {
            precpu_total_ns: Some(0.0),
            precpu_system_ns: Some(39e9),
            ..c
        };
        r.advance(2_000, &wild, W, &mut out);
        assert_eq!(get(&out, metric::CPU_CORES), Some(4.0));
    }

    #[test]
    fn no_previous_sample_gives_no_rate_and_is_forgotten_with_age() {
        let mut r = PrevStats::NONE;
        assert!(r.is_none());
        let mut out = vec![];
        // Even a sample at the sentinel's own time is taken as a first one.
        assert_eq!(
            r.advance(i64::MIN, &sample(1e9, 4e9, 0.0), W, &mut out),
            Ordering::Fresh
        );
        assert_eq!(get(&out, metric::CPU_CORES), None);
        r.advance(10_000, &sample(1e9, 4e9, 0.0), W, &mut out);
        r.expire(10_000);
        assert!(!r.is_none());
        r.expire(10_001);
        assert!(r.is_none());
    }

    #[test]
    fn counter_state_is_small_and_keeps_its_checkpoint_form() {
        // Held for every container tracked: no `Option` padding.
        assert_eq!(std::mem::size_of::<PrevStats>(), 72);
        let mut r = PrevStats::NONE;
        let mut out = vec![];
        let no_net = StatsCounters {
            net: None,
            blk: Some([4096.0, 0.0]),
            ..sample(1e9, 4e9, 0.0)
        };
        r.advance(10_000, &no_net, W, &mut out);
        // Absent counters are `null` in a checkpoint, as they were as `Option`s.
        let json = serde_json::to_string(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            json,
            r#"{"ts_ms":10000,"cpu_total_ns":1000000000.0,"cpu_system_ns":4000000000.0,"net":null,"blk":[4096.0,0.0]}"#
        );
        let mut back: PrevStats = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
        // The restored state derives what the original does: CPU and block rates, and
        // no network rate from a counter the previous sample did not have.
        let next = StatsCounters {
            blk: Some([8192.0, 0.0]),
            ..sample(2e9, 8e9, 100.0)
        };
        let (mut a, mut b) = (vec![], vec![]);
        r.advance(20_000, &next, W, &mut a);
        back.advance(20_000, &next, W, &mut b);
        assert_eq!(a, b);
        assert_eq!(get(&a, metric::BLK_READ_BPS), Some(409.6));
        assert_eq!(get(&a, metric::NET_RX_BPS), None);
        assert!(get(&a, metric::CPU_CORES).is_some());
    }
}
