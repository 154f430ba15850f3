//! Retrained baselines: what `herd retrain` learned about one group from the archive,
//! as a versioned snapshot ([`FORMAT`]), and how a group's live baseline adopts one
//! ([`GroupBaseline::adopt_retrained`](crate::GroupBaseline::adopt_retrained)).
//! `docs/formats.md` documents the format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the snapshot format. Readers accept every version up to theirs; a newer
/// one is refused (never half-read). 2 added [`Retrained::structure`].
pub const FORMAT: u32 = 2;

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
    /// How far replicas sampled in the same minute differ: the median, over minutes
    /// with at least three replicas, of their standard deviation. `None` without such
    /// minutes.
    pub replica_spread: Option<f64>,
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
