//! Numeric behaviour of one feature in one peer group, learned from all replicas.

use serde::{Deserialize, Serialize};

use crate::sketch::{Summary, TailSketch, Tails};

/// Three views of one feature, each a [`TailSketch`]:
/// - `values`: the raw values of every replica (the group's own history; multi-modal
///   groups keep every mode, so switching mode is not a deviation);
/// - `peer_dev`: how far a replica usually sits from its live peers' median, as a
///   difference of [`slog`]s (the group's typical spread between replicas, scale-free so a
///   fleet-wide surge does not widen it);
/// - `steps`: the size of a replica's change between consecutive samples (jumps and
///   variance changes within the usual range).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureBaseline {
    /// Raw values.
    pub values: TailSketch,
    /// Relative deviation from live peers.
    pub peer_dev: TailSketch,
    /// Absolute change between consecutive samples of a replica.
    pub steps: TailSketch,
    /// A replica's recent roughness: the moving average of its step sizes (a series that
    /// goes flat, or becomes jittery, within its usual range).
    pub roughness: TailSketch,
    /// How far the group's median moves from its usual level beyond the group's common
    /// load factor (the median move of all its features, in [`slog`] terms). A surge moves
    /// the load-driven features together; a fleet-wide compromise moves one the others do
    /// not explain.
    pub fleet_dev: TailSketch,
    /// Smallest meaningful difference in this feature's unit (its resolution).
    pub resolution: f64,
}

impl FeatureBaseline {
    /// A fresh baseline for the feature `name`.
    pub fn new(name: &str, half_life_ms: i64) -> Self {
        Self {
            values: TailSketch::new(half_life_ms),
            peer_dev: TailSketch::new(half_life_ms),
            steps: TailSketch::new(half_life_ms),
            roughness: TailSketch::new(half_life_ms),
            fleet_dev: TailSketch::new(half_life_ms),
            resolution: resolution_of(name),
        }
    }

    /// The floor for tail widths of the raw values: the feature's resolution, or a small
    /// share of its usual spread, whichever is larger.
    pub fn value_floor(&mut self) -> f64 {
        let r = self.resolution;
        self.values
            .summary()
            .map_or(r, |s| Self::floor_of_values(r, &s))
    }

    /// [`Self::floor_of_values`] of the resolution behind `resolution`, read only here.
    #[cold]
    #[inline(never)]
    fn floor_of_values_at(resolution: &f64, s: &Summary) -> f64 {
        Self::floor_of_values(*resolution, s)
    }

    fn floor_of_values(resolution: f64, s: &Summary) -> f64 {
        resolution
            .max(0.05 * (s.q90 - s.q10))
            .max(1e-3 * s.q50.abs())
    }

    /// Surprise of a raw value against the group's history (both tails).
    #[inline]
    pub fn value_surprise(&mut self, x: f64) -> f64 {
        // The floor from the same summary the surprise reads (the one refresh, if due,
        // happens either way), computed only for a value in a tail: only then is the
        // resolution read (a field on a cache line of its own, after the sketches, which
        // the compiler loaded ahead of the test while it was read here).
        let r = &self.resolution;
        self.values
            .surprise_with(x, Tails::Both, |s| Self::floor_of_values_at(r, s))
    }

    /// Surprise of a step (absolute change since the replica's previous sample).
    pub fn step_surprise(&mut self, dx: f64) -> f64 {
        let floor = self.value_floor();
        self.steps.surprise(dx, Tails::Upper, floor)
    }

    /// Surprise of a roughness (moving average of step sizes), in both directions.
    /// Its tails are never narrower than 2 % of the usual roughness (or the resolution).
    pub fn roughness_surprise(&mut self, r: f64) -> f64 {
        self.roughness
            .surprise_with(r, Tails::Both, |s| self.resolution.max(0.02 * s.q50.abs()))
    }

    /// Surprise of a deviation from live peers (a [`slog`] difference). The tail is never
    /// modelled narrower than 0.02 (2 % of the peers' level): the resolution of a peer
    /// comparison; nor, where the retrain measured how far replicas sampled together
    /// usually differ (`spread`, in slog units), narrower than a normal distribution of
    /// that spread decays (a decade per 0.33 σ beyond its 99th percentile): a young
    /// online history of deviations does not make the group's replicas look more alike
    /// than the archive saw them.
    #[inline]
    pub fn peer_surprise(&mut self, dev: f64, spread: Option<f64>) -> f64 {
        let gaussian = spread.filter(|s| s.is_finite()).map_or(0.0, |s| 0.33 * s);
        self.peer_dev.surprise(dev, Tails::Both, gaussian.max(0.02))
    }

    /// Surprise of a fleet-wide move beyond the common load factor (upper tail: a whole
    /// group doing more of one thing than its load explains). A median of replicas'
    /// values sampled once a minute is coarser than one replica's value: its tail is never
    /// modelled narrower than 0.1 (a 10 % move beyond the usual band).
    pub fn fleet_surprise(&mut self, dev: f64) -> f64 {
        self.fleet_dev.surprise(dev, Tails::Upper, 0.1)
    }

    /// The expected range of raw values (1st to 99th percentile), for explanations.
    pub fn expected_range(&mut self) -> Option<(f64, f64)> {
        self.values.summary().map(|s: Summary| (s.q01, s.q99))
    }

    /// Effective number of raw values learned.
    pub fn samples(&self) -> f64 {
        self.values.count()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.values.heap_bytes()
            + self.peer_dev.heap_bytes()
            + self.steps.heap_bytes()
            + self.roughness.heap_bytes()
            + self.fleet_dev.heap_bytes()
    }

    /// Merges another baseline of the same feature.
    pub fn merge(&mut self, other: &FeatureBaseline) {
        self.values.merge(&other.values);
        self.peer_dev.merge(&other.peer_dev);
        self.steps.merge(&other.steps);
        self.roughness.merge(&other.roughness);
        self.fleet_dev.merge(&other.fleet_dev);
    }
}

/// Signed logarithm with resolution `res`: `sign(v)·ln(1 + |v|/res)`. Differences of it
/// are log-ratios for values well above the resolution and linear near zero, so a peer
/// comparison is scale-free (a fleet-wide surge does not widen it) without dividing by a
/// level that may be zero.
#[inline]
pub fn slog(v: f64, res: f64) -> f64 {
    v.signum() * (v.abs() / res.max(1e-12)).ln_1p()
}

/// How far `x` is from its live peers' `median`, as a [`slog`] difference, with the
/// first resolution unit of the gap taken as no gap: two replicas a packet a second, a
/// pid or a hundredth of a core apart measured the same thing (one of them sampled a
/// broadcast the other missed). Beyond it the gap is shortened by that unit, so the
/// deviation grows continuously from zero; for gaps of many units it is the plain
/// difference of signed logarithms.
pub fn peer_deviation(x: f64, median: f64, res: f64) -> f64 {
    peer_deviation_with(x, median, res, || slog(median, res))
}

/// [`peer_deviation`], with `slog(median, res)` from the caller, asked for only when
/// the gap exceeds a unit: every replica of a group is compared with the same median,
/// whose logarithm a caller can keep.
pub fn peer_deviation_with(
    x: f64,
    median: f64,
    res: f64,
    slog_median: impl FnOnce() -> f64,
) -> f64 {
    let gap = x - median;
    if gap.abs() <= res {
        return 0.0;
    }
    slog(x - res.copysign(gap), res) - slog_median()
}

/// The inverse of [`slog`]: the value whose signed logarithm is `s`.
pub fn slog_inverse(s: f64, res: f64) -> f64 {
    s.signum() * s.abs().exp_m1() * res.max(1e-12)
}

/// The resolution of herd's own features: differences smaller than this are noise of
/// the measurement itself (one hundredth of a core, a mebibyte, a kilobyte per second,
/// one pid). Other metrics get no absolute floor ([`DEFAULT_RESOLUTION`]); a relative one
/// applies.
pub const RESOLUTIONS: [(&str, f64); 10] = {
    use herd_ingest::model::metric::*;
    [
        (CPU_CORES, 0.01),
        (MEM_BYTES, 1_048_576.0),
        (MEM_LIMIT_RATIO, 0.01),
        (NET_RX_BPS, 1024.0),
        (NET_TX_BPS, 1024.0),
        (BLK_READ_BPS, 1024.0),
        (BLK_WRITE_BPS, 1024.0),
        (NET_RX_PPS, 1.0),
        (NET_TX_PPS, 1.0),
        (PIDS, 1.0),
    ]
};

/// The resolution of a metric without one in [`RESOLUTIONS`].
pub const DEFAULT_RESOLUTION: f64 = 1e-9;

/// The resolution of feature `name` ([`RESOLUTIONS`]).
pub fn resolution_of(name: &str) -> f64 {
    RESOLUTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(DEFAULT_RESOLUTION, |(_, r)| *r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_within_one_resolution_unit_is_no_deviation() {
        // A replica that missed the one broadcast packet a second its siblings saw.
        assert_eq!(peer_deviation(0.0, 0.98, 1.0), 0.0);
        assert_eq!(peer_deviation(2.0, 1.0, 1.0), 0.0);
        assert_eq!(peer_deviation(0.995, 1.0, 0.01), 0.0);
    }

    #[test]
    fn beyond_it_the_deviation_grows_from_zero_and_keeps_its_sign() {
        let up = |x: f64| peer_deviation(x, 1.0, 1.0);
        assert!(up(2.0 + 1e-9) > 0.0 && up(2.0 + 1e-9) < 1e-6);
        assert!(up(3.0) < up(4.0) && up(4.0) < up(40.0));
        assert!(peer_deviation(-5.0, 1.0, 1.0) < 0.0);
        // Many units apart it is the plain log-ratio: a miner's core beside idle peers.
        let miner = peer_deviation(1.0, 0.02, 0.01);
        let plain = slog(1.0, 0.01) - slog(0.02, 0.01);
        assert!((miner - plain).abs() < 0.01, "{miner} vs {plain}");
    }

    #[test]
    fn it_is_finite_for_any_finite_input() {
        for &(x, m) in &[
            (0.0, 0.0),
            (f64::MAX, -f64::MAX),
            (-1e300, 1e300),
            (1e-300, 0.0),
        ] {
            assert!(peer_deviation(x, m, 1.0).is_finite(), "{x} {m}");
        }
    }
}
