//! Retrained baselines: what `herd retrain` learned about one group from the archive,
//! as a versioned snapshot ([`FORMAT`]), and how a group's live baseline adopts one
//! ([`GroupBaseline::adopt_retrained`](crate::GroupBaseline::adopt_retrained)).
//! `docs/formats.md` documents the format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the snapshot format. Readers accept every version up to theirs; a newer
/// one is refused (never half-read). 2 added [`Retrained::structure`], 3
/// [`FeatureProfile::seasonal`], 4 [`FeatureProfile::weekday_offset`].
pub const FORMAT: u32 = 4;

/// Robust quantiles of a feature's values over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// 5th percentile.
    pub p05: f64,
    /// 25th percentile.
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// What the archive says of one feature of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    /// Values seen.
    pub count: u64,
    /// Robust quantiles.
    pub quantiles: Quantiles,
    /// Median absolute deviation from the median.
    pub mad: f64,
    /// Median by hour of day (UTC), 0–23; `None` where the hour had too few values.
    pub hour_of_day: Vec<Option<f64>>,
    /// Median by day of week, 0 = Sunday … 6 = Saturday; `None` where too few values.
    pub day_of_week: Vec<Option<f64>>,
    /// How far each day of the week (0 = Sunday) sits from the daily profile: the
    /// median residual `slog(value) − slog(hour's level)` of its values, in the
    /// feature's [`slog`](crate::numeric::slog) units; `None` where the archive held
    /// that weekday on fewer than two dates (format 4; empty before: no weekly view).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekday_offset: Vec<Option<f64>>,
    /// How far replicas sampled in the same minute differ: the median, over minutes
    /// with at least three replicas, of their standard deviation. `None` without such
    /// minutes.
    pub replica_spread: Option<f64>,
    /// How values scatter around their hour's level (format 3; absent before, and
    /// where the archive had too few values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasonal: Option<Seasonal>,
}

/// A feature's values around their expected level: the residuals
/// `slog(value) − slog(level)` ([`slog`](crate::numeric::slog) with the feature's
/// resolution), where the level is the hour's median ([`FeatureProfile::hour_of_day`])
/// moved by the weekday's offset where there is one
/// ([`FeatureProfile::weekday_offset`]); values of an hour without one are not in it,
/// and are not judged by it. A daily peak sits at its hour's level, so it is ordinary;
/// the same value at night is not, and neither is a weekday's load on a quiet Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Seasonal {
    /// Residuals behind the quantiles.
    pub count: u64,
    /// Their quantiles (0.1 % to 99.9 %).
    pub residuals: crate::Summary,
}

/// Fewest residuals a [`Seasonal`] view is trusted with (as many as the online
/// history needs before it scores, several times over: the 99.9th percentile is only
/// estimated from about a thousand).
pub const MIN_SEASONAL_COUNT: u64 = 1000;

impl FeatureProfile {
    /// The median of the hour of day (UTC) of event time `ts_ms`; `None` for an hour
    /// the archive had too few values of (no level is guessed).
    pub fn hour_level_at(&self, ts_ms: i64) -> Option<f64> {
        let hour = (ts_ms.rem_euclid(86_400_000) / 3_600_000) as usize;
        self.hour_of_day
            .get(hour)
            .copied()
            .flatten()
            .filter(|v| v.is_finite())
    }

    /// The offset of the day of week of `ts_ms` from the daily profile, in slog units
    /// (0 where the archive has none: a window shorter than two weeks of that day).
    pub fn weekday_offset_at(&self, ts_ms: i64) -> f64 {
        self.weekday_offset
            .get(weekday(ts_ms))
            .copied()
            .flatten()
            .filter(|v| v.is_finite())
            .unwrap_or(0.0)
    }

    /// The expected level at event time `ts_ms` in slog units of resolution `res`: its
    /// hour's median, moved by its weekday's offset.
    fn expected_slog(&self, ts_ms: i64, res: f64) -> Option<f64> {
        use crate::numeric::slog;
        Some(slog(self.hour_level_at(ts_ms)?, res) + self.weekday_offset_at(ts_ms))
    }

    /// The expected level at event time `ts_ms`, in the feature's unit (`res` its
    /// resolution): the hour-of-day median moved by the weekday's offset; `None` for an
    /// hour the archive had too few values of.
    pub fn level_at(&self, ts_ms: i64, res: f64) -> Option<f64> {
        self.expected_slog(ts_ms, res)
            .map(|l| crate::numeric::slog_inverse(l, res))
    }

    /// How far replicas sampled in the same minute usually differ
    /// ([`FeatureProfile::replica_spread`]), in slog units of resolution `res` around
    /// the feature's median: the scale a deviation from live peers is measured against.
    pub fn replica_spread_slog(&self, res: f64) -> Option<f64> {
        use crate::numeric::slog;
        let (sd, m) = (self.replica_spread?, self.quantiles.p50);
        (sd.is_finite() && m.is_finite() && sd >= 0.0)
            .then(|| slog(m.abs() + sd, res) - slog(m.abs(), res))
    }

    /// The usual range at event time `ts_ms` (the residuals' 1st to 99th percentile
    /// around the expected level), in the feature's unit, for explanations.
    pub fn band_at(&self, ts_ms: i64, res: f64) -> Option<(f64, f64)> {
        use crate::numeric::slog_inverse;
        let s = self.seasonal?;
        let l = self.expected_slog(ts_ms, res)?;
        Some((
            slog_inverse(l + s.residuals.q01, res),
            slog_inverse(l + s.residuals.q99, res),
        ))
    }

    /// Surprise of `x` at event time `ts_ms` against the archive's history of this
    /// feature for that hour: `-log10` of the probability of a residual at least as far
    /// from the hour's level, in either direction, with the tail model of
    /// [`TailSketch::surprise`](crate::TailSketch::surprise) (empirical inside the
    /// 1–99 % band, an exponential tail beyond, never narrower than `floor` in slog
    /// terms). `None` without a trusted seasonal view.
    pub fn seasonal_surprise(&self, x: f64, ts_ms: i64, res: f64, floor: f64) -> Option<f64> {
        use crate::numeric::slog;
        use crate::sketch::tail_p;
        let s = self.seasonal.filter(|s| s.count >= MIN_SEASONAL_COUNT)?;
        let level = self.expected_slog(ts_ms, res)?;
        if !x.is_finite() {
            return None;
        }
        let r = s.residuals;
        let d = slog(x, res) - level;
        let widen = (1.0 + 1000.0 / s.count as f64).sqrt();
        // Fraction beyond `d` inside the band: log-linear between the quantiles.
        let between = |d: f64, (a, pa): (f64, f64), (b, pb): (f64, f64)| -> f64 {
            if b <= a {
                return pb;
            }
            let t = ((d - a) / (b - a)).clamp(0.0, 1.0);
            10f64.powf(pa.log10() + t * (pb.log10() - pa.log10()))
        };
        let to_surprise = |p: f64| -p.clamp(f64::MIN_POSITIVE, 1.0).log10();
        let upper = if d > r.q90 {
            let empirical = if d <= r.q99 {
                between(d, (r.q90, 0.1), (r.q99, 0.01))
            } else if d <= r.q999 {
                between(d, (r.q99, 0.01), (r.q999, 0.001))
            } else {
                0.0
            };
            to_surprise(tail_p(d - r.q99, r.q999 - r.q99, empirical, floor, widen))
        } else {
            0.0
        };
        let lower = if d < r.q10 {
            let empirical = if d >= r.q01 {
                between(-d, (-r.q10, 0.1), (-r.q01, 0.01))
            } else if d >= r.q001 {
                between(-d, (-r.q01, 0.01), (-r.q001, 0.001))
            } else {
                0.0
            };
            to_surprise(tail_p(r.q01 - d, r.q01 - r.q001, empirical, floor, widen))
        } else {
            0.0
        };
        Some(upper.max(lower))
    }
}

/// Day of week of epoch milliseconds `ts_ms`, UTC, 0 = Sunday (as SQL's `dow`).
pub fn weekday(ts_ms: i64) -> usize {
    // 1970-01-01 was a Thursday.
    (ts_ms.div_euclid(86_400_000) + 4).rem_euclid(7) as usize
}

/// What [`GroupBaseline::adopt_retrained`](crate::GroupBaseline::adopt_retrained) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The snapshot is now the group's.
    Adopted,
    /// The group holds a snapshot as recent or more: ignored.
    Stale,
}

/// One group's retrained baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrained {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// Peer-group key.
    pub group: String,
    /// Image repository of the group (its routing key is derived from it).
    pub repository: String,
    /// When the retrain ran (RFC 3339).
    pub trained_at: String,
    /// Event-time window of the data, epoch ms, `[since, until)`.
    pub since_ms: i64,
    /// End of the window.
    pub until_ms: i64,
    /// First and last observation in the window.
    pub first_ms: i64,
    /// Last observation in the window.
    pub last_ms: i64,
    /// Archive rows of the group in the window.
    pub rows: u64,
    /// Distinct containers (replicas) in the window.
    pub replicas: u64,
    /// Per feature.
    pub features: BTreeMap<String, FeatureProfile>,
    /// The multivariate structure of the group's feature vectors (format 2; absent
    /// when the group had too few complete vectors, or in a format 1 snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<crate::structure::Structure>,
}

impl Retrained {
    /// Reads a snapshot of any version up to [`FORMAT`].
    pub fn parse(bytes: &[u8]) -> crate::Result<Self> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let h: Head = serde_json::from_slice(bytes)?;
        if !(1..=FORMAT).contains(&h.format) {
            return Err(crate::Error::UnsupportedFormat {
                found: h.format,
                supported: FORMAT,
            });
        }
        let r: Self = serde_json::from_slice(bytes)?;
        if r.structure.as_ref().is_some_and(|s| !s.is_valid()) {
            return Err(crate::Error::Invalid("structure"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_one_reads_and_a_newer_version_is_refused() {
        let v1 = include_bytes!("../../tests/cases/retrain/snapshot-v1.json");
        let s = Retrained::parse(v1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.format, 1);
        assert_eq!(s.features["cpu_cores"].hour_of_day.len(), 24);
        // Round trip.
        let again = Retrained::parse(&serde_json::to_vec(&s).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, s);
        let mut newer: serde_json::Value =
            serde_json::from_slice(v1).unwrap_or_else(|e| panic!("{e}"));
        newer["format"] = (FORMAT + 1).into();
        let e = Retrained::parse(&serde_json::to_vec(&newer).unwrap_or_default());
        assert!(e.is_err_and(|e| e.to_string().contains(&format!("format {}", FORMAT + 1))));
    }

    #[test]
    fn version_two_carries_the_structure_and_a_malformed_one_is_refused() {
        let v2 = include_bytes!("../../tests/cases/retrain/snapshot-v2.json");
        let s = Retrained::parse(v2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.format, 2);
        let st = s
            .structure
            .as_ref()
            .unwrap_or_else(|| panic!("no structure"));
        assert!(st.is_valid() && !st.components.is_empty());
        let mut bad: serde_json::Value =
            serde_json::from_slice(v2).unwrap_or_else(|e| panic!("{e}"));
        bad["structure"]["scale"][0] = 0.0.into();
        let e = Retrained::parse(&serde_json::to_vec(&bad).unwrap_or_default());
        assert!(e.is_err_and(|e| e.to_string().contains("invalid snapshot")));
    }

    #[test]
    fn version_three_carries_the_residuals_around_the_daily_profile() {
        let v3 = include_bytes!("../../tests/cases/retrain/snapshot-v3.json");
        let s = Retrained::parse(v3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.format, 3);
        let cpu = &s.features["cpu_cores"];
        let r = cpu
            .seasonal
            .unwrap_or_else(|| panic!("no seasonal view"))
            .residuals;
        assert!(r.q001 <= r.q01 && r.q01 <= r.q50 && r.q50 <= r.q99 && r.q99 <= r.q999);
        assert!(s.structure.is_some());
        // Earlier versions read without one.
        for old in [
            &include_bytes!("../../tests/cases/retrain/snapshot-v1.json")[..],
            &include_bytes!("../../tests/cases/retrain/snapshot-v2.json")[..],
        ] {
            let s = Retrained::parse(old).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.features.values().all(|f| f.seasonal.is_none()));
        }
    }

    /// The `cpu_cores` profile of the version 1 reference snapshot, to edit.
    fn v1_cpu() -> FeatureProfile {
        Retrained::parse(include_bytes!("../../tests/cases/retrain/snapshot-v1.json"))
            .unwrap_or_else(|e| panic!("{e}"))
            .features
            .remove("cpu_cores")
            .unwrap_or_else(|| panic!("cpu_cores"))
    }

    #[test]
    fn the_daily_profile_expects_each_hour_at_its_own_level() {
        let mut p = v1_cpu();
        // 0.1 cores at night (hour 3), 1.0 in the afternoon (hour 15), ±5 % around.
        p.hour_of_day = (0..24)
            .map(|h| Some(if h < 12 { 0.1 } else { 1.0 }))
            .collect();
        p.hour_of_day[7] = None;
        let residuals = crate::Summary {
            q001: -0.2,
            q01: -0.12,
            q10: -0.05,
            q50: 0.0,
            q90: 0.05,
            q99: 0.12,
            q999: 0.2,
        };
        let h = |hour: i64| hour * 3_600_000 + 86_400_000 * 20_000;
        let s = |p: &FeatureProfile, x: f64, hour: i64| p.seasonal_surprise(x, h(hour), 0.01, 0.02);
        assert_eq!(s(&p, 1.0, 15), None, "no residuals: no view");
        p.seasonal = Some(Seasonal {
            count: 500,
            residuals,
        });
        assert_eq!(s(&p, 1.0, 15), None, "too few residuals to trust");
        p.seasonal = Some(Seasonal {
            count: 50_000,
            residuals,
        });
        let peak = s(&p, 1.0, 15).unwrap_or(f64::NAN);
        assert!(peak < 0.5, "the peak at its hour: {peak}");
        let night = s(&p, 1.0, 3).unwrap_or(f64::NAN);
        assert!(night > 20.0, "the peak at night: {night}");
        let low = s(&p, 0.1, 15).unwrap_or(f64::NAN);
        assert!(low > 20.0, "a night's level in the afternoon: {low}");
        // Inside the band the surprise grows with the distance, up to two decades at
        // the 99th percentile.
        let (a, b) = (
            s(&p, 1.0 * 1.08, 15).unwrap_or(f64::NAN),
            s(&p, 1.0 * 1.12, 15).unwrap_or(f64::NAN),
        );
        assert!(1.0 < a && a < b && b <= 2.1, "{a} {b}");
        assert_eq!(s(&p, 1.0, 7), None, "an hour without a level is not judged");
        assert_eq!(s(&p, f64::NAN, 15), None);
        let (lo, hi) = p.band_at(h(3), 0.01).unwrap_or((f64::NAN, f64::NAN));
        assert!(lo < 0.1 && 0.1 < hi && hi < 0.13, "{lo}..{hi}");
    }

    #[test]
    fn version_four_carries_the_weekday_offsets() {
        let v4 = include_bytes!("../../tests/cases/retrain/snapshot-v4.json");
        let s = Retrained::parse(v4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.format, 4);
        let off = &s.features["cpu_cores"].weekday_offset;
        assert_eq!(off.len(), 7);
        assert!(off.iter().all(Option::is_some), "{off:?}");
        // Earlier versions read without a weekly view.
        for old in [
            &include_bytes!("../../tests/cases/retrain/snapshot-v1.json")[..],
            &include_bytes!("../../tests/cases/retrain/snapshot-v2.json")[..],
            &include_bytes!("../../tests/cases/retrain/snapshot-v3.json")[..],
        ] {
            let s = Retrained::parse(old).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.features.values().all(|f| f.weekday_offset.is_empty()));
        }
    }

    #[test]
    fn the_weekday_offset_moves_the_expected_level() {
        // 2026-11-02T00:00:00Z was a Monday; 1970-01-01 a Thursday.
        let monday = 1_793_577_600_000;
        assert_eq!(weekday(monday), 1);
        assert_eq!(weekday(monday + 5 * 86_400_000), 6);
        assert_eq!(weekday(0), 4);
        assert_eq!(weekday(-1), 3);
        let mut p = v1_cpu();
        p.hour_of_day = vec![Some(1.0); 24];
        let at = |p: &FeatureProfile, day: i64| {
            p.level_at(monday + day * 86_400_000, 0.01)
                .unwrap_or(f64::NAN)
        };
        assert!(
            (at(&p, 5) - 1.0).abs() < 1e-9,
            "no weekly view: the hour's level"
        );
        p.weekday_offset = vec![
            Some(0.4f64.ln()),
            None,
            None,
            None,
            None,
            None,
            Some(0.4f64.ln()),
        ];
        let sat = at(&p, 5);
        assert!(
            (sat - 0.394).abs() < 0.001,
            "Saturday at 40 % of the profile: {sat}"
        );
        assert!((at(&p, 2) - 1.0).abs() < 1e-9, "no offset: on the profile");
    }

    fn snap(first_ms: i64, until_ms: i64) -> Retrained {
        let mut s = Retrained::parse(include_bytes!("../../tests/cases/retrain/snapshot-v1.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        s.first_ms = first_ms;
        s.until_ms = until_ms;
        s
    }

    fn learned(now: i64) -> crate::GroupBaseline {
        let cfg = crate::BaselineConfig::default();
        let mut g = crate::GroupBaseline::new("shop/web@sha256:4f1c", "shop/web", 0);
        for i in 0..200 {
            if let Some(f) = g.feature_mut("cpu_cores", &cfg) {
                f.values
                    .insert(0.3 + (i % 7) as f64 * 0.01, now + i * 10_000, 1.0);
            }
        }
        g
    }

    #[test]
    fn adopting_keeps_online_learning_and_never_unlocks() {
        let cfg = crate::BaselineConfig::default();
        let day = 86_400_000;
        // A group two days old (locked) adopts a snapshot of the last day only: still
        // locked, its learning start unchanged, its sketches untouched.
        let mut g = learned(0);
        let now = 2 * day + 3_600_000;
        assert_eq!(g.phase(now, &cfg), crate::Phase::Locked);
        let before = g.clone();
        assert_eq!(g.adopt_retrained(snap(day, 2 * day)), Adoption::Adopted);
        assert_eq!(g.phase(now, &cfg), crate::Phase::Locked);
        assert_eq!(g.learning_since_ms, before.learning_since_ms);
        assert!(g.features_eq(&before), "online sketches changed");
        assert!(g.retrained.as_ref().is_some_and(|r| r.until_ms == 2 * day));
        // An older or equal snapshot is ignored.
        assert_eq!(g.adopt_retrained(snap(0, day)), Adoption::Stale);
        assert!(g.retrained.as_ref().is_some_and(|r| r.until_ms == 2 * day));

        // A group first seen now (warming up) whose image the archive has watched for
        // two days stays in warm-up: the snapshot holds no items, so locking it would
        // make every item of its first minutes novel. It holds the snapshot.
        let mut fresh = crate::GroupBaseline::new("shop/web@sha256:4f1c", "shop/web", now);
        fresh.adopt_retrained(snap(0, now));
        assert_eq!(fresh.phase(now, &cfg), crate::Phase::Warmup);
        assert_eq!(fresh.learning_since_ms, now);
        assert!(fresh.retrained.is_some());
        // A rollout's new digest starts without it: it describes the old version.
        let next = fresh.inherit("shop/web@sha256:9e02", now);
        assert!(next.retrained.is_none());
    }
}
