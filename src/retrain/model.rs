//! The multivariate step of `herd retrain`: per group, a bounded sample of its feature
//! vectors (one per container sample) from the archive, standardised, fitted with linfa
//! as a probabilistic PCA (the covariance's eigen-decomposition by `linfa-linalg`) with a Gaussian mixture over the principal
//! scores (`linfa-clustering`, k by BIC). The result is a [`Structure`] the stream scorer
//! evaluates without linfa.
//!
//! Sampling is bounded and deterministic: rows stream from DataFusion partition by
//! partition (an observation's rows are adjacent in its archive file); per group the
//! [`SAMPLE`] vectors with the smallest hash of (container, time) are kept, whatever
//! order the partitions arrive in. A quarter of them (by hash) is held out to calibrate
//! the score.

use std::collections::{BTreeMap, BinaryHeap};

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use futures_util::StreamExt as _;
use herd_baseline::numeric::{resolution_of, slog};
use herd_baseline::structure::{Calibration, Component, MAX_FEATURES, Structure};
use linfa::DatasetBase;
use linfa::traits::Fit as _;
use linfa_clustering::GaussianMixtureModel;
use linfa_linalg::eigh::{EigSort as _, EighInto as _};
use ndarray::{Array2, Axis};

use super::sql::{Dialect, Window};

/// Vectors kept per group.
pub const SAMPLE: usize = 4096;
/// Fewest complete vectors a group needs for a structure.
pub const MIN_VECTORS: usize = 200;
/// Most mixture components tried.
pub const MAX_COMPONENTS: usize = 4;
/// Share of the variance the kept principal axes explain.
const EXPLAINED: f64 = 0.9;
/// Smallest robust scale of a feature's `slog`: a 10 % change (a quieter feature still
/// drifts that much from one day to the next, which a window's own spread does not show).
const MIN_SCALE: f64 = 0.1;
/// Smallest residual variance per dimension, in standardised units.
const MIN_RESIDUAL_VARIANCE: f64 = 0.01;

/// One sampled vector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Keyed {
    hash: u64,
    /// Index into the group's vector store.
    slot: usize,
}

#[derive(Debug, Default)]
struct GroupSample {
    heap: BinaryHeap<Keyed>,
    vectors: Vec<Option<Vec<(String, f64)>>>,
    free: Vec<usize>,
}

impl GroupSample {
    fn offer(&mut self, hash: u64, v: Vec<(String, f64)>) {
        if self.heap.len() >= SAMPLE {
            match self.heap.peek() {
                Some(top) if top.hash > hash => {
                    if let Some(old) = self.heap.pop() {
                        self.vectors[old.slot] = None;
                        self.free.push(old.slot);
                    }
                }
                _ => return,
            }
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.vectors[s] = Some(v);
                s
            }
            None => {
                self.vectors.push(Some(v));
                self.vectors.len() - 1
            }
        };
        self.heap.push(Keyed { hash, slot });
    }

    /// The kept vectors in hash order.
    fn into_sorted(self) -> Vec<(u64, Vec<(String, f64)>)> {
        let mut vectors = self.vectors;
        let mut keyed = self.heap.into_sorted_vec();
        keyed.dedup();
        keyed
            .into_iter()
            .filter_map(|k| {
                vectors
                    .get_mut(k.slot)
                    .and_then(Option::take)
                    .map(|v| (k.hash, v))
            })
            .collect()
    }
}

fn hash_of(container: &str, ts: i64) -> u64 {
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container.bytes().chain(ts.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The sampling query: every observation row of the window, in file order.
pub fn rows(d: Dialect, w: Window) -> String {
    format!(
        "SELECT \"group\" AS grp, container_id, {e} AS t, feature, value FROM obs \
         WHERE {win} AND feature IS NOT NULL AND value IS NOT NULL",
        e = super::sql::epoch_ms(d, "ts"),
        win = super::sql::window(d, w, ""),
    )
}

/// One observation being assembled from its rows: group, container, time, features.
type Assembling = (String, String, i64, Vec<(String, f64)>);

/// Streams the window and keeps each group's sample.
pub async fn sample(
    ctx: &SessionContext,
    w: Window,
) -> anyhow::Result<BTreeMap<String, Vec<Vec<(String, f64)>>>> {
    let df = ctx.sql(&rows(Dialect::DataFusion, w)).await?;
    let streams = df.execute_stream_partitioned().await?;
    let mut groups: BTreeMap<String, GroupSample> = BTreeMap::new();
    // One assembler per partition: rows of one observation are adjacent within it.
    let mut tagged = futures_util::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |b| (i, b))),
    );
    let mut current: BTreeMap<usize, Assembling> = BTreeMap::new();
    let utf8 = |a: &std::sync::Arc<dyn Array>| -> anyhow::Result<StringArray> {
        let c = cast(a, &DataType::Utf8)?;
        c.as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("not a string column"))
    };
    while let Some((part, batch)) = tagged.next().await {
        let b = batch?;
        let (g, c, f) = (utf8(b.column(0))?, utf8(b.column(1))?, utf8(b.column(3))?);
        let t = cast(b.column(2), &DataType::Int64)?;
        let t = t
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| anyhow::anyhow!("time is not an integer"))?;
        let v = cast(b.column(4), &DataType::Float64)?;
        let v = v
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| anyhow::anyhow!("value is not a number"))?;
        for i in 0..b.num_rows() {
            if !(g.is_valid(i) && c.is_valid(i) && t.is_valid(i) && f.is_valid(i)) {
                continue;
            }
            let (gi, ci, ti) = (g.value(i), c.value(i), t.value(i));
            let cur = current.entry(part).or_default();
            if cur.0 != gi || cur.1 != ci || cur.2 != ti {
                let done = std::mem::replace(cur, (gi.to_owned(), ci.to_owned(), ti, Vec::new()));
                if !done.3.is_empty() {
                    groups
                        .entry(done.0)
                        .or_default()
                        .offer(hash_of(&done.1, done.2), done.3);
                }
            }
            if v.is_valid(i) && v.value(i).is_finite() && cur.3.len() < 4 * MAX_FEATURES {
                cur.3.push((f.value(i).to_owned(), v.value(i)));
            }
        }
    }
    for (_, done) in current {
        if !done.3.is_empty() {
            groups
                .entry(done.0)
                .or_default()
                .offer(hash_of(&done.1, done.2), done.3);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(g, s)| (g, s.into_sorted().into_iter().map(|(_, v)| v).collect()))
        .collect())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let t = pos - lo as f64;
    v[lo] * (1.0 - t) + v[hi.min(v.len() - 1)] * t
}

/// Cholesky factor of a symmetric positive-definite `q × q` matrix (row-major), or
/// `None` when it is not.
fn cholesky(a: &[f64], q: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; q * q];
    for i in 0..q {
        for j in 0..=i {
            let mut s = a[i * q + j];
            for k in 0..j {
                s -= l[i * q + k] * l[j * q + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * q + i] = s.sqrt();
            } else {
                l[i * q + j] = s / l[j * q + j];
            }
        }
    }
    Some(l)
}

/// Fits the structure of one group from its sampled vectors; `None` when there are too
/// few complete vectors, nothing varies, or the numerical libraries give up (a panic of
/// theirs on degenerate data is contained: one group's data cannot end the retrain).
pub fn fit(vectors: &[Vec<(String, f64)>]) -> Option<Structure> {
    std::panic::catch_unwind(|| fit_unguarded(vectors))
        .ok()
        .flatten()
}

fn fit_unguarded(vectors: &[Vec<(String, f64)>]) -> Option<Structure> {
    // Features present in nearly every vector and not constant.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for v in vectors {
        for (f, _) in v {
            *seen.entry(f.as_str()).or_default() += 1;
        }
    }
    let common: Vec<&str> = seen
        .iter()
        .filter(|(_, n)| **n as f64 >= 0.95 * vectors.len() as f64)
        .map(|(f, _)| *f)
        .collect();
    let complete: Vec<Vec<f64>> = vectors
        .iter()
        .filter_map(|v| {
            common
                .iter()
                .map(|f| {
                    v.iter()
                        .find(|(n, _)| n == f)
                        .map(|(_, x)| slog(*x, resolution_of(f)))
                })
                .collect::<Option<Vec<f64>>>()
        })
        .collect();
    if complete.len() < MIN_VECTORS {
        return None;
    }
    // Standardise; drop features that never vary (the univariate tests watch those).
    let mut features = Vec::new();
    let (mut center, mut scale, mut cols) = (Vec::new(), Vec::new(), Vec::new());
    for (j, f) in common.iter().enumerate() {
        let mut col: Vec<f64> = complete.iter().map(|r| r[j]).collect();
        let m = median(&mut col);
        let mut dev: Vec<f64> = col.iter().map(|x| (x - m).abs()).collect();
        let mad = median(&mut dev);
        let spread = col.last().copied().unwrap_or(m) - col.first().copied().unwrap_or(m);
        if spread <= 1e-9 {
            continue;
        }
        features.push((*f).to_owned());
        center.push(m);
        scale.push((1.4826 * mad).max(MIN_SCALE));
        cols.push(j);
        if features.len() == MAX_FEATURES {
            break;
        }
    }
    let d = features.len();
    if d == 0 {
        return None;
    }
    let z: Vec<Vec<f64>> = complete
        .iter()
        .map(|r| {
            cols.iter()
                .enumerate()
                .map(|(k, j)| (r[*j] - center[k]) / scale[k])
                .collect()
        })
        .collect();
    // Every fourth vector (they are in hash order: a random quarter) calibrates.
    let (mut fit_rows, mut hold) = (Vec::new(), Vec::new());
    for (i, r) in z.into_iter().enumerate() {
        if i % 4 == 3 {
            hold.push(r);
        } else {
            fit_rows.push(r);
        }
    }
    let n = fit_rows.len();
    let x = Array2::from_shape_vec((n, d), fit_rows.concat()).ok()?;

    // PCA: the eigen-decomposition of the covariance (linfa-linalg's symmetric
    // solver; d is small, so the exact one, not linfa-reduction's truncated SVD, whose
    // iterative solver fails when asked for every axis). Keep the axes explaining
    // `EXPLAINED` of the variance.
    let mean_row = x.mean_axis(Axis(0))?;
    let centred = &x - &mean_row;
    let cov = centred.t().dot(&centred) / (n as f64 - 1.0).max(1.0);
    if cov.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (vals, vecs) = cov.eigh_into().ok()?.sort_eig_desc();
    let var: Vec<f64> = vals.iter().map(|v| v.max(0.0)).collect();
    let total: f64 = var.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let mut q = 0;
    let mut acc = 0.0;
    while q < d && acc < EXPLAINED * total {
        acc += var[q];
        q += 1;
    }
    let q = q.clamp(1, d);
    let axes: Vec<Vec<f64>> = (0..q).map(|k| vecs.column(k).to_vec()).collect();
    let mean = mean_row.to_vec();
    let residual_variance = if q < d {
        (var[q..].iter().sum::<f64>() / (d - q) as f64).max(MIN_RESIDUAL_VARIANCE)
    } else {
        MIN_RESIDUAL_VARIANCE
    };
    let explained: Vec<f64> = var[..q].iter().map(|v| v / total).collect();
    let project = |r: &[f64]| -> Vec<f64> {
        axes.iter()
            .map(|a| {
                a.iter()
                    .zip(r)
                    .zip(&mean)
                    .map(|((a, x), m)| a * (x - m))
                    .sum()
            })
            .collect()
    };
    let scores: Vec<Vec<f64>> = x.outer_iter().map(|r| project(&r.to_vec())).collect();
    let y = Array2::from_shape_vec((n, q), scores.concat()).ok()?;
    let yds = DatasetBase::from(y);

    // Mixtures of 1..=MAX_COMPONENTS; the lowest BIC wins.
    let mut best: Option<(f64, Structure)> = None;
    let mut bic = Vec::new();
    for k in 1..=MAX_COMPONENTS {
        let Ok(gmm) = GaussianMixtureModel::params(k)
            .n_runs(2)
            .tolerance(1e-3)
            .reg_covariance(1e-3)
            .max_n_iterations(200)
            .fit(&yds)
        else {
            continue;
        };
        let mut components = Vec::with_capacity(k);
        for c in 0..k {
            let prec: Vec<f64> = gmm
                .precisions()
                .index_axis(Axis(0), c)
                .iter()
                .copied()
                .collect();
            let Some(l) = cholesky(&prec, q) else {
                components.clear();
                break;
            };
            let log_det: f64 = (0..q).map(|i| 2.0 * l[i * q + i].ln()).sum();
            components.push(Component {
                weight: gmm.weights()[c],
                mean: gmm.means().row(c).to_vec(),
                precision: prec,
                log_det_precision: log_det,
            });
        }
        if components.len() != k || components.iter().any(|c| c.weight <= 0.0) {
            continue;
        }
        let mut s = Structure {
            features: features.clone(),
            center: center.clone(),
            scale: scale.clone(),
            mean: mean.clone(),
            axes: axes.clone(),
            explained: explained.clone(),
            residual_variance,
            components,
            bic: Vec::new(),
            calibration: Calibration {
                n: 0,
                q50: 0.0,
                q90: 0.0,
                q99: 0.0,
                tail_scale: 1.0,
            },
            samples: n as u64,
        };
        // Log-likelihood of the fitted rows (the residual term is the same for every
        // k: only the mixture tells the candidates apart).
        let ll: f64 = x
            .outer_iter()
            .filter_map(|r| s.nll(&r.to_vec()).map(|(nll, _, _)| -nll))
            .sum();
        let params = (k - 1) + k * q + k * q * (q + 1) / 2;
        let b = -2.0 * ll + params as f64 * (n as f64).ln();
        bic.push((k, b));
        if best.as_ref().is_none_or(|(bb, _)| b < *bb) {
            s.bic = Vec::new();
            best = Some((b, s));
        }
    }
    let (_, mut s) = best?;
    s.bic = bic;
    // Calibrate on the held-out quarter.
    let mut held: Vec<f64> = hold
        .iter()
        .filter_map(|r| s.nll(r).map(|(nll, _, _)| nll))
        .collect();
    if held.len() < MIN_VECTORS / 4 {
        return None;
    }
    held.sort_by(f64::total_cmp);
    let (q50, q90, q99) = (
        quantile_sorted(&held, 0.5),
        quantile_sorted(&held, 0.9),
        quantile_sorted(&held, 0.99),
    );
    // The tail beyond the 99th: the mean excess of the top 1 % (an exponential's scale).
    let top: Vec<f64> = held.iter().copied().filter(|v| *v > q99).collect();
    let excess = if top.is_empty() {
        1.0
    } else {
        top.iter().map(|v| v - q99).sum::<f64>() / top.len() as f64
    };
    s.calibration = Calibration {
        n: held.len() as u64,
        q50,
        q90,
        q99,
        tail_scale: excess.max(1.0),
    };
    s.is_valid().then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};
    use rand_distr::{Distribution as _, StandardNormal};

    /// A batch worker: idle or busy, cpu and network moving together within a mode.
    fn worker(n: usize, seed: u64) -> Vec<Vec<(String, f64)>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let busy = rng.random_bool(0.35);
                let load: f64 = if busy { 0.88 } else { 0.03 };
                let z: f64 = StandardNormal.sample(&mut rng);
                let w: f64 = StandardNormal.sample(&mut rng);
                vec![
                    ("cpu_cores".to_owned(), load * (0.05 * z).exp()),
                    (
                        "net_rx_bps".to_owned(),
                        if busy { 2e6 } else { 5e3 } * (0.1 * w).exp(),
                    ),
                    ("pids".to_owned(), 8.0),
                ]
            })
            .collect()
    }

    #[test]
    fn a_bimodal_group_gets_two_modes_and_an_off_mode_vector_is_surprising() {
        let s = fit(&worker(3000, 5)).expect("fitted");
        assert_eq!(s.features, ["cpu_cores", "net_rx_bps"], "pids never varies");
        assert_eq!(s.components.len(), 2, "BIC: {:?}", s.bic);
        let mut scratch = Vec::new();
        let score = |cpu: f64, rx: f64, scratch: &mut Vec<f64>| {
            s.score(
                |f| match f {
                    "cpu_cores" => Some(cpu),
                    "net_rx_bps" => Some(rx),
                    _ => None,
                },
                scratch,
            )
            .expect("covered")
        };
        // Held-out vectors of both modes are ordinary.
        let mut high = 0;
        for v in worker(500, 99) {
            let get = |n: &str| v.iter().find(|(f, _)| f == n).map(|(_, x)| *x);
            let sc = s.score(get, &mut scratch).expect("covered");
            if sc.surprise > 3.0 {
                high += 1;
            }
        }
        assert!(high <= 5, "{high} of 500 ordinary vectors above 3");
        // Busy cpu with idle network (a miner on an idle worker): far off.
        let miner = score(1.6 + 0.03, 5e3, &mut scratch);
        assert!(miner.surprise > 8.0, "{miner:?}");
        // Mostly off the idle–busy axis: cpu and network broke their correlation.
        assert!(miner.residual_share > 0.5, "{miner:?}");
    }

    #[test]
    fn too_few_vectors_fit_nothing() {
        assert!(fit(&worker(MIN_VECTORS - 1, 1)).is_none());
        assert!(fit(&[]).is_none());
    }

    #[test]
    fn the_sample_is_the_same_whatever_the_order() {
        let vs = worker(10_000, 3);
        let mut a = GroupSample::default();
        let mut b = GroupSample::default();
        for (i, v) in vs.iter().enumerate() {
            a.offer(hash_of("c", i as i64), v.clone());
        }
        for (i, v) in vs.iter().enumerate().rev() {
            b.offer(hash_of("c", i as i64), v.clone());
        }
        let (a, b) = (a.into_sorted(), b.into_sorted());
        assert_eq!(a.len(), SAMPLE);
        assert_eq!(a, b);
    }
}
