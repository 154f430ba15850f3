//! The multivariate structure of a group, as `herd retrain` fitted it with linfa: a
//! probabilistic PCA of its standardised feature vectors (the principal axes a load
//! moves along, and an isotropic residual off them) with a Gaussian mixture over the
//! principal scores (one component per mode: a batch worker's idle and busy). Scoring
//! is plain arithmetic on the stored parameters, so the stream scorer needs no linfa.
//!
//! A sample's score is its negative log-density under the model; the score's own
//! distribution on held-out training vectors calibrates it into a surprise
//! (`-log10 p`), the unit every other scorer reports.

use serde::{Deserialize, Serialize};

use crate::numeric::{resolution_of, slog};

/// Most features in a vector (the model is dense in them).
pub const MAX_FEATURES: usize = 12;

/// One mixture component, over the principal scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Mixing weight (the share of time in this mode).
    pub weight: f64,
    /// Mean of the principal scores.
    pub mean: Vec<f64>,
    /// Precision matrix (inverse covariance), row-major, `q × q`.
    pub precision: Vec<f64>,
    /// `ln det` of the precision matrix.
    pub log_det_precision: f64,
}

/// How the score is turned into a probability: quantiles of the score on held-out
/// training vectors, and an exponential tail beyond the 99th.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Held-out vectors scored.
    pub n: u64,
    /// Median score.
    pub q50: f64,
    /// 90th percentile.
    pub q90: f64,
    /// 99th percentile.
    pub q99: f64,
    /// Decay of the tail beyond the 99th percentile: nats of score per factor e of
    /// probability (never below 1, a Gaussian's).
    pub tail_scale: f64,
}

/// The fitted structure of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Structure {
    /// The features of a vector, in order.
    pub features: Vec<String>,
    /// Standardisation of each feature's [`slog`]: its median over the sample.
    pub center: Vec<f64>,
    /// And its robust scale (1.4826 × MAD, floored).
    pub scale: Vec<f64>,
    /// Mean of the standardised vectors (the PCA's centre).
    pub mean: Vec<f64>,
    /// Principal axes kept (unit rows of length `features.len()`), strongest first.
    pub axes: Vec<Vec<f64>>,
    /// Share of the variance each kept axis explains.
    pub explained: Vec<f64>,
    /// Variance of the residual off the kept axes, per dimension.
    pub residual_variance: f64,
    /// Mixture components over the principal scores (k chosen by BIC).
    pub components: Vec<Component>,
    /// BIC of each k tried, `(k, bic)`.
    pub bic: Vec<(usize, f64)>,
    /// Score calibration.
    pub calibration: Calibration,
    /// Vectors the model was fitted on.
    pub samples: u64,
}

/// What scoring one vector found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StructureScore {
    /// `-log10` of the calibrated probability of a score at least this high.
    pub surprise: f64,
    /// The component that explains the vector best.
    pub nearest: usize,
    /// Share of the vector's squared standardised distance that lies off the principal
    /// axes (near 1: the features broke their usual correlation).
    pub residual_share: f64,
    /// The feature whose standardised value is furthest from the nearest mode.
    pub lead: usize,
    /// Principal scores (the vector's position along each principal axis; the first
    /// `axes.len()` entries), so that replicas can be compared with their peers.
    pub position: [f64; MAX_FEATURES],
    /// Squared standardised distance off the principal axes.
    pub residual: f64,
}

/// What [`Structure::evaluate`] finds of one standardised vector.
struct Evaluated {
    nll: f64,
    nearest: usize,
    residual_share: f64,
    position: [f64; MAX_FEATURES],
    residual: f64,
}

const LN_2PI: f64 = 1.837_877_066_409_345_5;

impl Structure {
    /// Standardised vector of `values` (looked up by name), `None` unless every feature
    /// of the model is present and finite.
    pub fn standardise(
        &self,
        mut value_of: impl FnMut(&str) -> Option<f64>,
        out: &mut Vec<f64>,
    ) -> bool {
        out.clear();
        for (i, f) in self.features.iter().enumerate() {
            let Some(x) = value_of(f).filter(|x| x.is_finite()) else {
                return false;
            };
            let (Some(c), Some(s)) = (self.center.get(i), self.scale.get(i)) else {
                return false;
            };
            out.push((slog(x, resolution_of(f)) - c) / s);
        }
        true
    }

    /// Negative log-density of a standardised vector, with the nearest component and
    /// the residual share. `None` when the model is malformed for it.
    pub fn nll(&self, z: &[f64]) -> Option<(f64, usize, f64)> {
        self.evaluate(z)
            .map(|e| (e.nll, e.nearest, e.residual_share))
    }

    /// Everything scoring a standardised vector derives: its negative log-density, the
    /// nearest component, the residual share, its principal scores and its squared
    /// distance off the axes.
    fn evaluate(&self, z: &[f64]) -> Option<Evaluated> {
        let (position, residual, total) = self.project(z)?;
        let (lse, nearest) = self.mixture(&position[..self.axes.len()])?;
        let nll = -lse + self.residual_nll(residual);
        nll.is_finite().then_some(Evaluated {
            nll,
            nearest,
            residual_share: if total > 0.0 { residual / total } else { 0.0 },
            position,
            residual,
        })
    }

    /// Principal scores of a standardised vector (the first `axes.len()` entries), its
    /// squared distance off the principal axes, and its squared distance from the
    /// centre. `None` when the model is malformed for it.
    fn project(&self, z: &[f64]) -> Option<([f64; MAX_FEATURES], f64, f64)> {
        let d = self.features.len();
        let q = self.axes.len();
        if z.len() != d || d > MAX_FEATURES || self.mean.len() != d || q == 0 || q > d {
            return None;
        }
        // On the stack: scored for every sample.
        let mut centred = [0.0; MAX_FEATURES];
        for ((c, a), m) in centred.iter_mut().zip(z).zip(&self.mean) {
            *c = a - m;
        }
        let centred = &centred[..d];
        let mut y = [0.0; MAX_FEATURES];
        for (yk, axis) in y.iter_mut().zip(&self.axes) {
            *yk = axis.iter().zip(centred).map(|(a, c)| a * c).sum();
        }
        let total: f64 = centred.iter().map(|c| c * c).sum();
        let on_axes: f64 = y[..q].iter().map(|v| v * v).sum();
        Some((y, (total - on_axes).max(0.0), total))
    }

    /// Negative log-density of the residual off the principal axes.
    fn residual_nll(&self, resid: f64) -> f64 {
        let off = self.features.len().saturating_sub(self.axes.len());
        if off == 0 {
            return 0.0;
        }
        let v = self.residual_variance;
        0.5 * (resid / v + off as f64 * (LN_2PI + v.ln()))
    }

    /// Mixture log-density of principal scores `y`, with the component that explains
    /// them best (a running log-sum-exp). `None` when the model is malformed.
    fn mixture(&self, y: &[f64]) -> Option<(f64, usize)> {
        let q = y.len();
        if q == 0 || q > MAX_FEATURES || self.components.is_empty() {
            return None;
        }
        let (mut best, mut nearest, mut sum) = (f64::NEG_INFINITY, 0usize, 0.0f64);
        let mut diff = [0.0; MAX_FEATURES];
        for (i, c) in self.components.iter().enumerate() {
            if c.mean.len() != q || c.precision.len() != q * q || c.weight <= 0.0 {
                return None;
            }
            for ((dv, a), m) in diff.iter_mut().zip(y).zip(&c.mean) {
                *dv = a - m;
            }
            let diff = &diff[..q];
            let mut maha = 0.0;
            for (r, row) in c.precision.chunks_exact(q).enumerate() {
                maha += diff[r] * row.iter().zip(diff).map(|(p, v)| p * v).sum::<f64>();
            }
            let lp = c.weight.ln() + 0.5 * (c.log_det_precision - q as f64 * LN_2PI - maha);
            if lp > best {
                sum = sum * (best - lp).exp() + 1.0;
                best = lp;
                nearest = i;
            } else {
                sum += (lp - best).exp();
            }
        }
        Some((best + sum.ln(), nearest))
    }

    /// Surprise of a vector judged with its peers' common displacement taken out:
    /// `shift` is how far the fleet moved along the principal axes (for example the
    /// per-axis median, over the live peers, of each peer's offset from the centre of
    /// its own nearest mode: [`Structure::displacement`]). The vector's position less
    /// the shift is scored against the mixture, with its own residual off the axes. A
    /// whole fleet that moved along its principal axes (a load surge beyond the
    /// training range) leaves each replica ordinary here, whatever mode each is in (a
    /// replica that always runs a little hotter than its siblings has its own mode);
    /// one replica far from the rest is as surprising as it would be if the fleet were
    /// in its usual place. `None` unless `score` and `shift` fit the model.
    pub fn relative_surprise(&self, score: &StructureScore, shift: &[f64]) -> Option<f64> {
        let q = self.axes.len();
        if shift.len() != q || shift.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut y = [0.0; MAX_FEATURES];
        for ((o, p), d) in y.iter_mut().zip(&score.position).zip(shift) {
            *o = p - d;
        }
        let (lse, _) = self.mixture(&y[..q])?;
        let nll = -lse + self.residual_nll(score.residual);
        nll.is_finite().then(|| self.surprise_of(nll))
    }

    /// Offset of principal-axis position `position` from the centre of component `k`,
    /// axis `axis`; `None` when they do not fit the model.
    pub fn displacement(&self, position: &[f64], k: usize, axis: usize) -> Option<f64> {
        if position.len() != self.axes.len() {
            return None;
        }
        Some(position.get(axis)? - self.components.get(k)?.mean.get(axis)?)
    }

    /// Calibrated surprise of a score.
    pub fn surprise_of(&self, nll: f64) -> f64 {
        let c = &self.calibration;
        // log10 p at the calibration points, interpolated linearly in the score.
        let points = [(c.q50, 0.5f64), (c.q90, 0.1), (c.q99, 0.01)];
        if nll <= points[0].0 {
            return 0.0;
        }
        if nll >= c.q99 {
            let p = 0.01 * (-(nll - c.q99) / c.tail_scale.max(1.0)).exp();
            return -p.max(f64::MIN_POSITIVE).log10();
        }
        for w in points.windows(2) {
            let ((s0, p0), (s1, p1)) = (w[0], w[1]);
            if nll <= s1 {
                let t = if s1 > s0 { (nll - s0) / (s1 - s0) } else { 1.0 };
                return -(p0.log10() + t * (p1.log10() - p0.log10()));
            }
        }
        2.0
    }

    /// Scores a vector of raw values (looked up by feature name); `None` unless the
    /// model covers it. `scratch` is reused between calls.
    pub fn score(
        &self,
        value_of: impl FnMut(&str) -> Option<f64>,
        scratch: &mut Vec<f64>,
    ) -> Option<StructureScore> {
        if !self.standardise(value_of, scratch) {
            return None;
        }
        let Evaluated {
            nll,
            nearest,
            residual_share,
            position,
            residual,
        } = self.evaluate(scratch)?;
        // The feature furthest from the nearest mode, back in feature space.
        let c = self.components.get(nearest)?;
        let mut mode = [0.0; MAX_FEATURES];
        for (x, m) in mode.iter_mut().zip(&self.mean) {
            *x = *m;
        }
        for (k, axis) in self.axes.iter().enumerate() {
            let m = c.mean.get(k).copied().unwrap_or(0.0);
            for (x, a) in mode.iter_mut().zip(axis) {
                *x += m * a;
            }
        }
        let lead = scratch
            .iter()
            .zip(&mode)
            .map(|(z, m)| (z - m).abs())
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(i, _)| i);
        Some(StructureScore {
            surprise: self.surprise_of(nll),
            nearest,
            residual_share,
            lead,
            position,
            residual,
        })
    }

    /// The value of feature `j` at the centre of component `c`, in the feature's unit.
    pub fn mode_value(&self, c: usize, j: usize) -> Option<f64> {
        let comp = self.components.get(c)?;
        let mut z = *self.mean.get(j)?;
        for (k, axis) in self.axes.iter().enumerate() {
            z += comp.mean.get(k)? * axis.get(j)?;
        }
        let s = self.center.get(j)? + self.scale.get(j)? * z;
        let res = resolution_of(self.features.get(j)?);
        Some(s.signum() * res.max(1e-12) * s.abs().exp_m1())
    }

    /// Whether the model is internally consistent (dimensions agree, numbers finite):
    /// a snapshot read from the wire is checked before a worker trusts it.
    pub fn is_valid(&self) -> bool {
        let d = self.features.len();
        let q = self.axes.len();
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        (1..=MAX_FEATURES).contains(&d)
            && (1..=d).contains(&q)
            && self.center.len() == d
            && self.scale.len() == d
            && self.scale.iter().all(|s| *s > 0.0)
            && self.mean.len() == d
            && finite(&self.center)
            && finite(&self.mean)
            && self.axes.iter().all(|a| a.len() == d && finite(a))
            && self.residual_variance > 0.0
            && self.residual_variance.is_finite()
            && !self.components.is_empty()
            && self.components.iter().all(|c| {
                c.weight > 0.0
                    && c.mean.len() == q
                    && c.precision.len() == q * q
                    && finite(&c.mean)
                    && finite(&c.precision)
                    && c.log_det_precision.is_finite()
            })
            && [
                self.calibration.q50,
                self.calibration.q90,
                self.calibration.q99,
                self.calibration.tail_scale,
            ]
            .iter()
            .all(|x| x.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two features moving together (load), two modes along the load axis.
    fn model() -> Structure {
        let s = std::f64::consts::FRAC_1_SQRT_2;
        Structure {
            features: vec!["cpu_cores".into(), "net_tx_bps".into()],
            center: vec![0.0, 0.0],
            scale: vec![1.0, 1.0],
            mean: vec![0.0, 0.0],
            axes: vec![vec![s, s]],
            explained: vec![0.98],
            residual_variance: 0.01,
            components: vec![
                Component {
                    weight: 0.5,
                    mean: vec![-2.0],
                    precision: vec![4.0],
                    log_det_precision: 4f64.ln(),
                },
                Component {
                    weight: 0.5,
                    mean: vec![2.0],
                    precision: vec![4.0],
                    log_det_precision: 4f64.ln(),
                },
            ],
            bic: vec![(1, 10.0), (2, 5.0)],
            calibration: Calibration {
                n: 1000,
                q50: 0.0,
                q90: 1.5,
                q99: 3.0,
                tail_scale: 1.0,
            },
            samples: 4000,
        }
    }

    #[test]
    fn both_modes_are_ordinary_and_a_broken_correlation_is_not() {
        let m = model();
        assert!(m.is_valid());
        let s = std::f64::consts::FRAC_1_SQRT_2;
        // On the axis at either mode: ordinary.
        let idle = m.nll(&[-2.0 * s, -2.0 * s]).expect("scored");
        let busy = m.nll(&[2.0 * s, 2.0 * s]).expect("scored");
        assert_eq!((idle.1, busy.1), (0, 1));
        assert!(m.surprise_of(idle.0) < 1.0 && m.surprise_of(busy.0) < 1.0);
        // Between the modes: unusual, but on the axis.
        let between = m.nll(&[0.0, 0.0]).expect("scored");
        assert!(between.0 > idle.0 && between.2 < 0.01);
        // Off the axis (cpu up, tx down): the residual dominates, very surprising.
        let off = m.nll(&[1.0, -1.0]).expect("scored");
        assert!(off.2 > 0.99, "{off:?}");
        assert!(m.surprise_of(off.0) > 10.0, "{}", m.surprise_of(off.0));
        // A mode's value back in the feature's unit: slog⁻¹ of the mode's centre.
        let busy_cpu = m.mode_value(1, 0).expect("mode");
        assert!((slog(busy_cpu, 0.01) - 2.0 * s).abs() < 1e-9, "{busy_cpu}");
    }

    #[test]
    fn relative_to_its_peers_a_replica_that_moved_with_the_fleet_is_ordinary() {
        let m = model();
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let mut scratch = Vec::new();
        // Load axis position `y`, `off` across it, back to raw values (centre 0, scale 1).
        let at = |y: f64, off: f64| {
            let z = [(y + off) * s, (y - off) * s];
            move |f: &str| {
                let j = usize::from(f == "net_tx_bps");
                let v = z[j];
                Some(v.signum() * resolution_of(f) * v.abs().exp_m1())
            }
        };
        // The whole fleet at 6 along the axis, 4 beyond the busy mode (2): a replica
        // there is very surprising on its own, ordinary beside its peers.
        let fleet = [m.displacement(&[6.0], 1, 0).expect("displacement")];
        assert!((fleet[0] - 4.0).abs() < 1e-9);
        assert_eq!(m.displacement(&[6.0], 2, 0), None, "no such mode");
        assert_eq!(
            m.displacement(&[6.0, 1.0], 1, 0),
            None,
            "not the model's axes"
        );
        let with = m.score(at(6.2, 0.0), &mut scratch).expect("scored");
        assert!((with.position[0] - 6.2).abs() < 1e-6, "{:?}", with.position);
        assert!(with.surprise > 10.0, "{}", with.surprise);
        let rel = m.relative_surprise(&with, &fleet).expect("relative");
        assert!(rel < 1.0, "moved with the fleet: {rel}");
        // Three units beyond the fleet: surprising relative to it too.
        let ahead = m.score(at(9.0, 0.0), &mut scratch).expect("scored");
        let rel = m.relative_surprise(&ahead, &fleet).expect("relative");
        assert!(rel > 5.0, "ahead of the fleet: {rel}");
        // Off the axis beside the fleet: the residual is its own, still surprising.
        let off = m.score(at(6.0, 1.0), &mut scratch).expect("scored");
        let rel = m.relative_surprise(&off, &fleet).expect("relative");
        assert!(rel > 10.0, "off the axis: {rel}");
        // A fleet position that does not fit the model judges nothing.
        assert_eq!(m.relative_surprise(&with, &[6.0, 1.0]), None);
        assert_eq!(m.relative_surprise(&with, &[f64::NAN]), None);
    }

    #[test]
    fn calibration_is_monotone_and_continuous_at_its_points() {
        let m = model();
        let mut last = 0.0;
        for i in 0..200 {
            let s = m.surprise_of(-1.0 + f64::from(i) * 0.05);
            assert!(s >= last - 1e-12, "not monotone at {i}");
            last = s;
        }
        assert!((m.surprise_of(1.5) - 1.0).abs() < 1e-9);
        assert!((m.surprise_of(3.0) - 2.0).abs() < 1e-9);
        assert!((m.surprise_of(3.0 + 10f64.ln()) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_missing_feature_or_a_malformed_model_scores_nothing() {
        let m = model();
        let mut scratch = Vec::new();
        assert!(
            m.score(|f| (f == "cpu_cores").then_some(1.0), &mut scratch)
                .is_none()
        );
        assert!(
            m.score(|_| Some(f64::NAN), &mut scratch).is_none(),
            "NaN is not a value"
        );
        let mut bad = model();
        bad.components[0].precision.push(1.0);
        assert!(!bad.is_valid());
        assert!(bad.nll(&[0.0, 0.0]).is_none());
    }
}
