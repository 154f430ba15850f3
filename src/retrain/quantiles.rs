//! `herd_quantiles(x)`: the retrain's quantiles, the same whichever order the rows come
//! in.
//!
//! DataFusion's `approx_percentile_cont` is a t-digest: what it answers depends on the
//! order its input arrives in, and a parallel aggregation merges its partitions' partial
//! states in whatever order they finish. The same archive then retrained to slightly
//! different baselines from one run to the next, from a directory and from a bucket
//! (which list their files differently), and with another number of threads.
//!
//! This aggregate puts values into herd's own sketch ([`TailSketch`], the stream
//! scorer's, with no decay: every weight is exactly one) and answers from its buckets.
//! Bucket counts are whole numbers, so adding them is exact in any order and the
//! partitions' partial states merge to the same sketch however they are split or
//! ordered: the same rows give the same quantiles, bit for bit. Each is within the
//! sketch's relative accuracy
//! ([`REL_ACCURACY`](herd_baseline::sketch::REL_ACCURACY), 2 %) of the true value and
//! clamped to the least and greatest value seen, so a feature that never changes gets
//! its exact value and a median absolute deviation of zero.
//!
//! One aggregate answers every quantile the retrain asks ([`Q`]), as a struct; SQL reads
//! one with `get_field(herd_quantiles(x), 'p50')`, and a query that reads several of the
//! same expression aggregates it once.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray as _, BinaryArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float64Type};
use datafusion::common::scalar::ScalarStructBuilder;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use herd_baseline::sketch::TailSketch;

/// The aggregate's name in SQL.
pub const NAME: &str = "herd_quantiles";

/// One quantile the aggregate answers: its field name and probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q(pub &'static str, pub f64);

/// Every quantile of the struct `herd_quantiles` returns, in its field order.
pub const QUANTILES: [Q; 11] = [
    Q("p001", 0.001),
    Q("p01", 0.01),
    Q("p05", 0.05),
    Q("p10", 0.10),
    Q("p25", 0.25),
    Q("p50", 0.50),
    Q("p75", 0.75),
    Q("p90", 0.90),
    Q("p95", 0.95),
    Q("p99", 0.99),
    Q("p999", 0.999),
];

/// The struct's fields: one nullable Float64 per quantile (null where no value was seen).
fn fields() -> Fields {
    static FIELDS: LazyLock<Fields> = LazyLock::new(|| {
        QUANTILES
            .iter()
            .map(|q| Field::new(q.0, DataType::Float64, true))
            .collect()
    });
    FIELDS.clone()
}

/// The aggregate, to register in a session (`ctx.register_udaf`).
pub fn udaf() -> AggregateUDF {
    create_udaf(
        NAME,
        vec![DataType::Float64],
        Arc::new(DataType::Struct(fields())),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(Quantiles::default()))),
        Arc::new(vec![DataType::Binary]),
    )
}

/// No decay: a half-life no event time reaches (every value is inserted at time zero,
/// so every weight is exactly `2^0 = 1`).
const NO_DECAY_MS: i64 = i64::MAX;

/// A partial state is at most this large (a sketch of two full stores is far smaller):
/// a larger one is not one this aggregate wrote.
const MAX_STATE_BYTES: usize = 1 << 20;

/// The accumulator, and the form of its partial state: the sketch, and the least and
/// greatest value it holds (none before the first).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Quantiles {
    sketch: TailSketch,
    bounds: Option<(f64, f64)>,
}

impl Default for Quantiles {
    fn default() -> Self {
        Self {
            sketch: TailSketch::new(NO_DECAY_MS),
            bounds: None,
        }
    }
}

/// The smallest range holding both.
fn widen(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<(f64, f64)> {
    match (a, b) {
        (Some((lo, hi)), Some((l, h))) => Some((lo.min(l), hi.max(h))),
        (a, b) => a.or(b),
    }
}

impl Quantiles {
    fn merge(&mut self, other: &Quantiles) {
        self.sketch.merge(&other.sketch);
        self.bounds = widen(self.bounds, other.bounds);
    }

    /// Quantile `p` from the buckets, within the values seen.
    fn quantile(&self, p: f64) -> Option<f64> {
        let (lo, hi) = self.bounds?;
        self.sketch.quantile(p).map(|v| v.clamp(lo, hi))
    }
}

impl Accumulator for Quantiles {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(v) = values.first() else {
            return Ok(());
        };
        let v = v.as_primitive_opt::<Float64Type>().ok_or_else(|| {
            DataFusionError::Internal(format!("{NAME}: {} is not Float64", v.data_type()))
        })?;
        // The sketch ignores what is not finite; so do the bounds.
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for x in v.iter().flatten().filter(|x| x.is_finite()) {
            self.sketch.insert(x, 0, 1.0);
            lo = lo.min(x);
            hi = hi.max(x);
        }
        if lo <= hi {
            self.bounds = widen(self.bounds, Some((lo, hi)));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut out = ScalarStructBuilder::new();
        for (field, q) in fields().iter().zip(QUANTILES) {
            out = out.with_scalar(Arc::clone(field), ScalarValue::Float64(self.quantile(q.1)));
        }
        out.build()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_bytes()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| DataFusionError::Internal(format!("{NAME}: state: {e}")))?;
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(s) = states.first() else {
            return Ok(());
        };
        let s: &BinaryArray = s.as_binary_opt().ok_or_else(|| {
            DataFusionError::Internal(format!("{NAME}: state {} is not Binary", s.data_type()))
        })?;
        for bytes in s.iter().flatten() {
            if bytes.len() > MAX_STATE_BYTES {
                return Err(DataFusionError::Internal(format!(
                    "{NAME}: a partial state of {} bytes",
                    bytes.len()
                )));
            }
            let state: Quantiles = serde_json::from_slice(bytes)
                .map_err(|e| DataFusionError::Internal(format!("{NAME}: state: {e}")))?;
            self.merge(&state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StructArray};
    use herd_baseline::sketch::REL_ACCURACY;

    fn col(v: &[f64]) -> ArrayRef {
        Arc::new(Float64Array::from(v.to_vec()))
    }

    fn answers(acc: &mut Quantiles) -> Vec<Option<f64>> {
        let ScalarValue::Struct(s) = acc.evaluate().expect("evaluate") else {
            panic!("not a struct");
        };
        let s: &StructArray = &s;
        (0..s.num_columns())
            .map(|i| {
                let c = s.column(i).as_primitive::<Float64Type>();
                (!c.is_null(0)).then(|| c.value(0))
            })
            .collect()
    }

    /// A deterministic spread of values: a heavy right tail, negatives and zeros.
    fn values(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let u = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64
                    / (1u64 << 53) as f64;
                match i % 17 {
                    0 => 0.0,
                    1 => -u * 3.0,
                    _ => (1.0 / (1.0 - u)).ln() * 40.0,
                }
            })
            .collect()
    }

    #[test]
    fn any_split_and_order_of_the_rows_gives_the_same_quantiles_bit_for_bit() {
        let v = values(20_000);
        let mut whole = Quantiles::default();
        whole.update_batch(&[col(&v)]).expect("update");
        let want = answers(&mut whole);

        // Partitions of uneven sizes, batches within them, merged in reverse order.
        let mut parts: Vec<Quantiles> = Vec::new();
        for chunk in v.rchunks(3_001) {
            let mut p = Quantiles::default();
            for batch in chunk.chunks(512).rev() {
                p.update_batch(&[col(batch)]).expect("update");
            }
            parts.push(p);
        }
        let states: Vec<ScalarValue> = parts
            .iter_mut()
            .rev()
            .map(|p| p.state().expect("state").remove(0))
            .collect();
        let mut merged = Quantiles::default();
        merged
            .merge_batch(&[ScalarValue::iter_to_array(states).expect("array")])
            .expect("merge");
        assert_eq!(answers(&mut merged), want);
    }

    #[test]
    fn each_quantile_is_within_the_sketchs_accuracy_and_the_values_seen() {
        let v = values(20_000);
        let mut acc = Quantiles::default();
        acc.update_batch(&[col(&v)]).expect("update");
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        for (q, got) in QUANTILES.iter().zip(answers(&mut acc)) {
            let got = got.expect("a value");
            // The exact quantile by rank, and its neighbours (bucket edges fall between).
            let rank = ((q.1 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            let exact = sorted[rank];
            let slack = REL_ACCURACY * exact.abs() + 1e-9;
            assert!(
                (got - exact).abs() <= slack * 1.01,
                "{}: {got} vs {exact}",
                q.0
            );
        }
    }

    #[test]
    fn a_constant_is_exact_and_no_value_is_null() {
        let mut acc = Quantiles::default();
        acc.update_batch(&[col(&[12.0; 50])]).expect("update");
        assert!(answers(&mut acc).iter().all(|q| *q == Some(12.0)));

        let mut empty = Quantiles::default();
        let nulls: ArrayRef = Arc::new(Float64Array::from(vec![None, Some(f64::NAN)]));
        empty.update_batch(&[nulls]).expect("update");
        assert!(answers(&mut empty).iter().all(Option::is_none));
    }

    #[test]
    fn a_state_it_did_not_write_is_an_error_not_a_panic() {
        let mut acc = Quantiles::default();
        let big = vec![b' '; MAX_STATE_BYTES + 1];
        for bad in [b"{".as_slice(), b"[1,2]".as_slice(), big.as_slice()] {
            let a: ArrayRef = Arc::new(BinaryArray::from(vec![Some(bad)]));
            assert!(acc.merge_batch(&[a]).is_err());
        }
        assert!(acc.merge_batch(&[col(&[1.0])]).is_err());
        let text: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec!["x"]));
        assert!(acc.update_batch(&[text]).is_err());
    }
}
