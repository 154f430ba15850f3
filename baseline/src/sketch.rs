//! [`TailSketch`]: a decaying, mergeable quantile sketch with a calibrated tail.
//!
//! Values go into logarithmic buckets (relative accuracy [`REL_ACCURACY`], as in
//! DDSketch), positive and negative stores apart, with an exact zero bucket. Older
//! observations fade with an event-time half-life, so a baseline follows slow drift. The
//! sketch answers quantiles, and the probability of a value at least as extreme as `x`:
//! from the buckets where data was seen, and beyond the 99th (or below the 1st)
//! percentile from an exponential tail anchored there with the slope of the 99→99.9 %
//! stretch (a peaks-over-threshold model with shape 0), never rarer than the buckets
//! say. A value far outside everything seen still gets a finite, comparable
//! probability. Scores built on it are `-log10(p)`: "how many decades rarer than usual".

use serde::{Deserialize, Serialize};

mod index;

/// Relative accuracy of bucket boundaries (2 %): ~58 buckets per decade of values.
pub const REL_ACCURACY: f64 = 0.02;
/// Values closer to zero than this share the zero bucket.
const MIN_MAGNITUDE: f64 = 1e-9;
/// Most buckets per store before the lowest magnitudes are collapsed together.
const MAX_BUCKETS: usize = 1024;
/// The empirical tail is trusted only where it holds this many (decayed) observations;
/// thinner tails come from the model, so a few down-weighted anomalies cannot make the
/// next attack of the same size look ordinary.
const MIN_EMPIRICAL_MASS: f64 = 2.0;
/// Weights are stored pre-scaled by 2^(t/half_life); rescale before they overflow.
const RESCALE_AT: f64 = 1e100;

/// `ln γ` of the buckets and `1 + γ`, computed once (the same operations as ever, so
/// the same bits: every bucket index and value is what it was).
static GAMMA: std::sync::LazyLock<(f64, f64)> = std::sync::LazyLock::new(|| {
    let ln = ((1.0 + REL_ACCURACY) / (1.0 - REL_ACCURACY)).ln();
    (ln, 1.0 + ln.exp())
});

fn gamma_ln() -> f64 {
    GAMMA.0
}

/// The first bucket of [`VALUES`] and each bucket's value from it on: the buckets of
/// magnitudes 2^-31 to 2^65, the index table's range (`sketch/index.rs`) and a binade
/// more at each end, ~13 KB built at first use. Each entry is
/// [`TailSketch::value_computed`] of its bucket, the same operations as ever, so the
/// same bits; a quantile refresh reads seven of them where it took seven exponentials.
static VALUES: std::sync::LazyLock<(i32, Box<[f64]>)> = std::sync::LazyLock::new(|| {
    let first = TailSketch::index_by_ln(2f64.powi(-31));
    let last = TailSketch::index_by_ln(2f64.powi(65));
    (
        first,
        (first..=last).map(TailSketch::value_computed).collect(),
    )
});

/// `v.ceil() as i32`, without the library call `ceil` is on a target without SSE4.1's
/// rounding instruction (the default x86-64 one): the same integer for every `v`.
fn ceil_i32(v: f64) -> i32 {
    if v.abs() < f64::from(i32::MAX) {
        // Truncation toward zero, then up one if that was down.
        let t = v as i32;
        if f64::from(t) < v { t + 1 } else { t }
    } else {
        v.ceil() as i32
    }
}

/// Contiguous buckets `offset..offset+counts.len()` of one sign, as a sketch holds
/// them: the buckets on the heap, the offset beside them in the sketch (two fields of
/// [`TailSketch`], so that its first cache line holds the positive store's header and
/// the insert counter in 24 bytes, where a struct of them took 24 with 4 of padding).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Store<'a> {
    offset: i32,
    counts: &'a [f64],
}

/// The same store, to change.
struct StoreMut<'a> {
    offset: &'a mut i32,
    counts: &'a mut Box<[f64]>,
}

impl StoreMut<'_> {
    /// Adds `w` to bucket `idx`: inline for a bucket within the range (nearly every
    /// insert), out of line when the range must grow.
    #[inline]
    fn add(&mut self, idx: i32, w: f64) {
        if idx >= *self.offset
            && let Some(c) = self.counts.get_mut((idx - *self.offset) as usize)
        {
            *c += w;
            return;
        }
        self.grow_and_add(idx, w);
    }

    /// [`Self::add`] beyond the range: the buckets are a boxed slice of exactly the
    /// range (its length is the range's; a vector's capacity would push the header out
    /// of the sketch's first cache line), so a growth reallocates: once per bucket a
    /// sketch's range gains, not per insert.
    #[cold]
    #[inline(never)]
    fn grow_and_add(&mut self, idx: i32, w: f64) {
        let mut counts = std::mem::take(self.counts).into_vec();
        Self::grow_and_add_to(&mut counts, self.offset, idx, w);
        *self.counts = counts.into_boxed_slice();
    }

    fn grow_and_add_to(counts: &mut Vec<f64>, offset: &mut i32, idx: i32, w: f64) {
        if counts.is_empty() {
            *offset = idx;
            counts.push(w);
            return;
        }
        if idx < *offset {
            let grow = (*offset - idx) as usize;
            if counts.len() + grow > MAX_BUCKETS {
                // Collapse: the lowest magnitudes share the lowest bucket.
                counts[0] += w;
                return;
            }
            let len = counts.len();
            counts.reserve_exact(grow);
            counts.resize(len + grow, 0.0);
            counts.copy_within(..len, grow);
            counts[..grow].fill(0.0);
            *offset = idx;
        }
        let pos = (idx - *offset) as usize;
        if pos >= counts.len() {
            counts.reserve_exact(pos + 1 - counts.len());
            counts.resize(pos + 1, 0.0);
        }
        counts[pos] += w;
        if counts.len() > MAX_BUCKETS {
            let excess = counts.len() - MAX_BUCKETS;
            let folded: f64 = counts.drain(..excess).sum();
            counts[0] += folded;
            *offset += excess as i32;
        }
    }

    fn scale(&mut self, f: f64) {
        self.counts.iter_mut().for_each(|c| *c *= f);
    }

    fn merge(&mut self, other: Store<'_>) {
        for (i, c) in other.counts.iter().enumerate() {
            if *c > 0.0 {
                self.add(other.offset + i as i32, *c);
            }
        }
    }
}

/// The decaying sketch. See the module documentation. Equality covers the quantile
/// cache too: scores depend on when it was refreshed.
///
/// Laid out by hand (`repr(C)`, from the start of a cache line) in the order a sample's
/// scoring reads it: a group's sketches are far more than the caches hold, so each
/// line of one that a sample touches is a read from memory. The first line holds all an
/// in-band sample needs, its `count`, its surprise and its insert of a positive value:
/// the weights' sum, the latest time and its weight, the positive buckets' header, the
/// insert counter and the cached 10th and 90th percentiles (the band a surprise compares
/// with). The second holds the reference and half-life (read when the latest time
/// moves), the zero and negative buckets, and the lower tail's percentiles; the third
/// the rest of the cached quantiles. With the compiler's own order a sample read three
/// lines of each sketch it scored. Serialised as it always was (`SketchRepr`): the
/// layout is not the format.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub struct TailSketch {
    /// Sum of stored (pre-scaled) weights.
    total: f64,
    /// Latest event time inserted (`i64::MIN` before the first insert, exactly when
    /// `ref_ms` is).
    last_ms: i64,
    /// The decay weight of `last_ms` (not state: a pure function of the fields).
    memo: WeightMemo,
    pos_counts: Box<[f64]>,
    pos_offset: i32,
    /// Inserts since the cached quantiles were computed.
    since_cache: u32,
    /// The cached 10th and 90th percentiles; NaN when nothing is cached (no quantile
    /// is NaN). With `lower` and `upper`, the cached [`Summary`], refreshed every few
    /// inserts: part of the state, since scores depend on when it was refreshed.
    band: [f64; 2],
    /// Event time the stored weights are relative to.
    ref_ms: i64,
    half_life_ms: i64,
    zero: f64,
    neg_counts: Box<[f64]>,
    neg_offset: i32,
    /// The cached 0.1th and 1st percentiles.
    lower: [f64; 2],
    /// The cached median, 99th and 99.9th percentiles.
    upper: [f64; 3],
}

/// Nothing cached, in [`TailSketch::band`].
const NO_BAND: [f64; 2] = [f64::NAN; 2];

/// A sketch as checkpoints and baselines have always written it (the fields' order
/// and nesting of the derived format before the layout above): written with the
/// buckets borrowed, read with them owned.
#[derive(Serialize, Deserialize)]
struct SketchRepr<C> {
    pos: StoreRepr<C>,
    neg: StoreRepr<C>,
    zero: f64,
    total: f64,
    ref_ms: i64,
    last_ms: i64,
    half_life_ms: i64,
    #[serde(default)]
    cache: Option<Summary>,
    #[serde(default)]
    since_cache: u32,
}

#[derive(Serialize, Deserialize)]
struct StoreRepr<C> {
    offset: i32,
    counts: C,
}

impl Serialize for TailSketch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SketchRepr::<&[f64]> {
            pos: StoreRepr {
                offset: self.pos_offset,
                counts: &self.pos_counts,
            },
            neg: StoreRepr {
                offset: self.neg_offset,
                counts: &self.neg_counts,
            },
            zero: self.zero,
            total: self.total,
            ref_ms: self.ref_ms,
            last_ms: self.last_ms,
            half_life_ms: self.half_life_ms,
            cache: self.cached(),
            since_cache: self.since_cache,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TailSketch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let i = SketchRepr::<Vec<f64>>::deserialize(d)?;
        let mut s = Self {
            total: i.total,
            last_ms: i.last_ms,
            memo: WeightMemo::NONE,
            pos_counts: i.pos.counts.into_boxed_slice(),
            pos_offset: i.pos.offset,
            since_cache: i.since_cache,
            band: NO_BAND,
            ref_ms: i.ref_ms,
            half_life_ms: i.half_life_ms,
            zero: i.zero,
            neg_counts: i.neg.counts.into_boxed_slice(),
            neg_offset: i.neg.offset,
            lower: [f64::NAN; 2],
            upper: [f64::NAN; 3],
        };
        s.set_cache(i.cache);
        Ok(s)
    }
}

impl PartialEq for TailSketch {
    /// The state, field by field (the cache as the summary it holds, the memo not).
    fn eq(&self, o: &Self) -> bool {
        self.pos() == o.pos()
            && self.neg() == o.neg()
            && self.zero == o.zero
            && self.total == o.total
            && self.ref_ms == o.ref_ms
            && self.last_ms == o.last_ms
            && self.half_life_ms == o.half_life_ms
            && self.cached() == o.cached()
            && self.since_cache == o.since_cache
    }
}

/// `2^((last_ms - ref)/half_life)`: most inserts of a sketch, and every `count` after
/// them, ask for the weight of its latest time. Keyed by the sketch's own `last_ms`
/// (8 bytes, where keyed by the time asked it took 16 and pushed the bucket header
/// out of the first cache line), so it is forgotten ([`WeightMemo::NONE`]) whenever the
/// latest time moves, and whenever the reference does
/// ([`TailSketch::set_reference`]: the first insert, a rescale, a merge). Invisible to
/// equality.
#[derive(Debug, Clone, Copy)]
struct WeightMemo(f64);

impl WeightMemo {
    /// Nothing remembered: no weight is NaN.
    const NONE: Self = Self(f64::NAN);

    /// The weight remembered, if any.
    #[inline]
    fn get(self) -> Option<f64> {
        (!self.0.is_nan()).then_some(self.0)
    }
}

/// Probability of a value `beyond` past the 99th (or 1st) percentile, whose 99→99.9 %
/// stretch is `gap`: the exponential tail (never narrower than `floor`, widened by
/// `widen` for small samples), or the trusted empirical fraction if that is larger.
/// Inside the band (`beyond <= 0`) it is at least the band edge's 1 %.
pub(crate) fn tail_p(beyond: f64, gap: f64, empirical: f64, floor: f64, widen: f64) -> f64 {
    let model = if beyond > 0.0 {
        let beta = (gap / std::f64::consts::LN_10).max(floor) * widen;
        0.01 * (-beyond / beta).exp()
    } else {
        0.01
    };
    empirical.max(model)
}

/// Cached quantiles of a sketch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// 0.1th percentile.
    pub q001: f64,
    /// 1st percentile.
    pub q01: f64,
    /// 10th percentile.
    pub q10: f64,
    /// Median.
    pub q50: f64,
    /// 90th percentile.
    pub q90: f64,
    /// 99th percentile.
    pub q99: f64,
    /// 99.9th percentile.
    pub q999: f64,
}

impl Summary {
    /// The summary of the seven quantiles in order, `q001` first.
    pub fn from_array(q: [f64; 7]) -> Self {
        let [q001, q01, q10, q50, q90, q99, q999] = q;
        Self {
            q001,
            q01,
            q10,
            q50,
            q90,
            q99,
            q999,
        }
    }

    /// The seven quantiles in order, `q001` first.
    pub fn to_array(self) -> [f64; 7] {
        [
            self.q001, self.q01, self.q10, self.q50, self.q90, self.q99, self.q999,
        ]
    }
}

/// Which tails count as surprising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tails {
    /// Only values above the usual (rates, counts of bad things).
    Upper,
    /// Both directions.
    Both,
}

impl TailSketch {
    /// An empty sketch whose weights halve every `half_life_ms` of event time.
    pub fn new(half_life_ms: i64) -> Self {
        Self {
            total: 0.0,
            last_ms: i64::MIN,
            memo: WeightMemo::NONE,
            pos_counts: Box::default(),
            pos_offset: 0,
            since_cache: 0,
            band: NO_BAND,
            ref_ms: i64::MIN,
            half_life_ms: half_life_ms.max(1),
            zero: 0.0,
            neg_counts: Box::default(),
            neg_offset: 0,
            lower: [f64::NAN; 2],
            upper: [f64::NAN; 3],
        }
    }

    fn pos(&self) -> Store<'_> {
        Store {
            offset: self.pos_offset,
            counts: &self.pos_counts,
        }
    }

    fn neg(&self) -> Store<'_> {
        Store {
            offset: self.neg_offset,
            counts: &self.neg_counts,
        }
    }

    fn pos_mut(&mut self) -> StoreMut<'_> {
        StoreMut {
            offset: &mut self.pos_offset,
            counts: &mut self.pos_counts,
        }
    }

    fn neg_mut(&mut self) -> StoreMut<'_> {
        StoreMut {
            offset: &mut self.neg_offset,
            counts: &mut self.neg_counts,
        }
    }

    /// The cached quantiles, if any.
    fn cached(&self) -> Option<Summary> {
        let [q10, q90] = self.band;
        let [q001, q01] = self.lower;
        let [q50, q99, q999] = self.upper;
        (!q90.is_nan()).then(|| Summary::from_array([q001, q01, q10, q50, q90, q99, q999]))
    }

    fn set_cache(&mut self, s: Option<Summary>) {
        match s.map(Summary::to_array) {
            Some([q001, q01, q10, q50, q90, q99, q999]) => {
                self.band = [q10, q90];
                self.lower = [q001, q01];
                self.upper = [q50, q99, q999];
            }
            // The band alone says whether anything is cached.
            None => self.band = NO_BAND,
        }
    }

    /// The bucket of `x`: `ceil(ln|x| / ln γ)`, from the boundaries' table for nearly
    /// every value (the same integer, without the logarithm: `sketch/index.rs`).
    #[inline]
    fn index(x: f64) -> i32 {
        index::index(x, Self::index_by_ln)
    }

    /// [`Self::index`] by the logarithm: the definition, and the table's rare path.
    #[cold]
    #[inline(never)]
    fn index_by_ln(x: f64) -> i32 {
        ceil_i32(x.abs().ln() / gamma_ln())
    }

    /// The value bucket `idx` stands for: its midpoint in relative terms (DDSketch's
    /// estimator), from [`VALUES`] for every bucket of the index table's range.
    #[inline]
    fn value_of(idx: i32) -> f64 {
        let (first, values) = &*VALUES;
        match values.get(idx.wrapping_sub(*first) as usize) {
            Some(v) => *v,
            None => Self::value_computed(idx),
        }
    }

    /// [`Self::value_of`] by its definition: the table's entries, and every bucket
    /// beyond it.
    fn value_computed(idx: i32) -> f64 {
        2.0 * (idx as f64 * gamma_ln()).exp() / GAMMA.1
    }

    /// `2^((ts - ref)/half_life)`, computed.
    fn weight_computed(&self, ts_ms: i64) -> f64 {
        ((ts_ms - self.ref_ms) as f64 / self.half_life_ms as f64).exp2()
    }

    fn weight_at(&self, ts_ms: i64) -> f64 {
        match self.memo.get() {
            Some(w) if ts_ms == self.last_ms => w,
            _ => self.weight_computed(ts_ms),
        }
    }

    /// [`Self::weight_at`], remembered when `ts_ms` is the latest time (written only
    /// when it was not already: most inserts ask for the time the one before did).
    #[inline]
    fn weight_at_mut(&mut self, ts_ms: i64) -> f64 {
        if ts_ms != self.last_ms {
            return self.weight_computed(ts_ms);
        }
        if let Some(w) = self.memo.get() {
            return w;
        }
        let w = self.weight_computed(ts_ms);
        self.memo = WeightMemo(w);
        w
    }

    /// Adds `x` observed at `ts_ms` with weight `w` (1 = one ordinary observation).
    /// Non-finite values are ignored.
    pub fn insert(&mut self, x: f64, ts_ms: i64, w: f64) {
        // `!x.is_finite() || !w.is_finite() || w <= 0.0`: `x * 0 + w * 0` is zero when
        // both are finite and NaN when either is not. Spelled with `is_finite`, or as
        // comparisons with infinity, the compiler tested the bits of each at length
        // (twenty instructions of every insert).
        #[allow(clippy::float_cmp)]
        if !(x * 0.0 + w * 0.0 == 0.0 && w > 0.0) {
            return;
        }
        // The first insert (`ref_ms` is unset exactly when `last_ms` is, and the
        // latter is in the first cache line).
        if self.last_ms == i64::MIN {
            self.set_reference(ts_ms);
        }
        if ts_ms > self.last_ms {
            self.last_ms = ts_ms;
            self.memo = WeightMemo::NONE;
        }
        let mut scaled = w * self.weight_at_mut(ts_ms);
        if scaled > RESCALE_AT {
            let f = 1.0 / self.weight_at(ts_ms);
            self.rescale(f);
            self.set_reference(ts_ms);
            scaled = w;
        }
        if x.abs() < MIN_MAGNITUDE {
            self.zero += scaled;
        } else if x > 0.0 {
            self.pos_mut().add(Self::index(x), scaled);
        } else {
            self.neg_mut().add(Self::index(x), scaled);
        }
        self.total += scaled;
        self.since_cache += 1;
        if self.since_cache >= 32 {
            self.band = NO_BAND;
        }
    }

    /// Makes `ref_ms` the time the stored weights are relative to: the one place the
    /// reference moves (the first insert, a rescale, a merge), so the decay weight's
    /// memo, computed against the old one, is forgotten with it.
    fn set_reference(&mut self, ref_ms: i64) {
        self.ref_ms = ref_ms;
        self.memo = WeightMemo::NONE;
    }

    fn rescale(&mut self, f: f64) {
        self.pos_mut().scale(f);
        self.neg_mut().scale(f);
        self.zero *= f;
        self.total *= f;
    }

    /// Effective number of observations (decayed) as of the latest insert.
    pub fn count(&self) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        self.total / self.weight_at(self.last_ms)
    }

    /// Latest event time inserted, if any.
    pub fn last_ms(&self) -> Option<i64> {
        (self.last_ms != i64::MIN).then_some(self.last_ms)
    }

    /// The `q` quantile (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total <= 0.0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        for (i, c) in self.neg_counts.iter().enumerate().rev() {
            acc += c;
            if acc >= target && *c > 0.0 {
                return Some(-Self::value_of(self.neg_offset + i as i32));
            }
        }
        acc += self.zero;
        if acc >= target && self.zero > 0.0 {
            return Some(0.0);
        }
        for (i, c) in self.pos_counts.iter().enumerate() {
            acc += c;
            if acc >= target && *c > 0.0 {
                return Some(Self::value_of(self.pos_offset + i as i32));
            }
        }
        // Rounding: the largest value.
        self.pos_counts
            .iter()
            .rposition(|c| *c > 0.0)
            .map(|i| Self::value_of(self.pos_offset + i as i32))
            .or(Some(0.0))
    }

    /// The cached quantile summary (recomputed at most every 32 inserts).
    #[inline]
    pub fn summary(&mut self) -> Option<Summary> {
        self.fill_cache();
        self.cached()
    }

    /// Computes the cached summary if it is due (read in place after it, by
    /// [`Self::surprise_with`], or copied by [`Self::summary`]).
    #[inline]
    fn fill_cache(&mut self) {
        if self.band[1].is_nan() {
            self.refresh();
        }
    }

    #[inline(never)]
    fn refresh(&mut self) {
        let s = self.compute_summary();
        self.set_cache(s);
        self.since_cache = 0;
    }

    /// The quantile summary without touching the cache: the seven quantiles of
    /// [`Self::quantile`] in one walk over the buckets (the same sums in the same
    /// order, so the same values), not seven.
    pub fn compute_summary(&self) -> Option<Summary> {
        const QS: [f64; 7] = [0.001, 0.01, 0.10, 0.50, 0.90, 0.99, 0.999];
        if self.total <= 0.0 {
            return None;
        }
        let targets = QS.map(|q| q * self.total);
        let mut out = [None::<f64>; 7];
        // The next quantile still to find; targets grow, so the ones a bucket settles
        // are always the next ones. `target` is its target (infinite once all seven are
        // found), so that most buckets cost an addition and one comparison: this walk
        // covers every bucket of the sketch and is the costliest step of a refresh.
        let mut next = 0;
        let mut target = targets[0];
        let mut acc = 0.0;
        // Settles the quantiles a bucket of weight `c` reaches (only a bucket with
        // weight settles one); its value is computed only then (an `exp`).
        let mut settle = |acc: f64, c: f64, value: &dyn Fn() -> f64, next: &mut usize| {
            while *next < 7 && acc >= targets[*next] && c > 0.0 {
                out[*next] = Some(value());
                *next += 1;
            }
            targets.get(*next).copied().unwrap_or(f64::INFINITY)
        };
        for (i, c) in self.neg_counts.iter().enumerate().rev() {
            acc += c;
            if acc >= target && *c > 0.0 {
                let idx = self.neg_offset + i as i32;
                target = settle(acc, *c, &|| -Self::value_of(idx), &mut next);
            }
        }
        acc += self.zero;
        if acc >= target && self.zero > 0.0 {
            target = settle(acc, self.zero, &|| 0.0, &mut next);
        }
        for (i, c) in self.pos_counts.iter().enumerate() {
            if next == 7 {
                break;
            }
            acc += c;
            if acc >= target && *c > 0.0 {
                let idx = self.pos_offset + i as i32;
                target = settle(acc, *c, &|| Self::value_of(idx), &mut next);
            }
        }
        // Rounding, as in `quantile`: the largest value.
        let largest = || {
            self.pos_counts
                .iter()
                .rposition(|c| *c > 0.0)
                .map_or(0.0, |i| Self::value_of(self.pos_offset + i as i32))
        };
        Some(Summary::from_array(out.map(|v| v.unwrap_or_else(largest))))
    }

    /// Surprise of `x`: `-log10` of the probability of a value at least as extreme, in
    /// the tails selected. Inside the 1st–99th percentile band it is the empirical tail
    /// fraction (at most 2 decades); beyond it, the larger of the empirical fraction and
    /// an exponential tail anchored at the 99th percentile whose slope is the 99→99.9 %
    /// stretch (so a second mode below the 99th percentile does not widen the tail).
    /// `floor` is the smallest meaningful difference for this series (its resolution):
    /// tails are never modelled narrower than that. Returns 0 for an empty sketch.
    #[inline]
    pub fn surprise(&mut self, x: f64, tails: Tails, floor: f64) -> f64 {
        self.surprise_with(x, tails, |_| floor)
    }

    /// [`Self::surprise`] with the floor computed from the cached summary, and only for
    /// a value in a tail: a value inside the 10–90 % band (most of them) costs a
    /// comparison with the cached quantiles, nothing more (inline at the caller; the
    /// tail's model is a call of its own).
    #[inline]
    pub fn surprise_with(
        &mut self,
        x: f64,
        tails: Tails,
        floor: impl FnOnce(&Summary) -> f64,
    ) -> f64 {
        self.fill_cache();
        // The band alone, from the first cache line; the summary is put together only
        // for a value in a tail.
        let [q10, q90] = self.band;
        if q90.is_nan() {
            return 0.0;
        }
        // Neither tail is scored in the band: the same 0 the full computation gives.
        if !(x > q90 || (tails == Tails::Both && x < q10)) {
            return 0.0;
        }
        let Some(s) = self.cached() else {
            return 0.0;
        };
        let floor = floor(&s);
        self.tail_surprise(x, tails, &s, floor)
    }

    /// [`Self::surprise_with`] of a value in a tail.
    #[inline(never)]
    fn tail_surprise(&self, x: f64, tails: Tails, s: &Summary, floor: f64) -> f64 {
        let to_surprise = |p: f64| -p.clamp(f64::MIN_POSITIVE, 1.0).log10();
        // The 99.9th percentile needs about a thousand observations; with fewer the
        // slope is widened accordingly rather than trusted.
        let widen = (1.0 + 1000.0 / self.count().max(1.0)).sqrt();
        let min_fraction = MIN_EMPIRICAL_MASS / self.count().max(MIN_EMPIRICAL_MASS);
        let trusted = |f: f64| if f >= min_fraction { f } else { 0.0 };
        let upper = if x > s.q90 {
            let empirical = trusted(self.upper_fraction(x));
            to_surprise(tail_p(x - s.q99, s.q999 - s.q99, empirical, floor, widen))
        } else {
            0.0
        };
        if tails == Tails::Upper {
            return upper;
        }
        let lower = if x < s.q10 {
            let empirical = trusted(self.lower_fraction(x));
            to_surprise(tail_p(s.q01 - x, s.q01 - s.q001, empirical, floor, widen))
        } else {
            0.0
        };
        upper.max(lower)
    }

    /// Fraction of the weight at values ≥ `x`'s bucket.
    fn upper_fraction(&self, x: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let mut acc = 0.0;
        if x <= 0.0 {
            return 1.0 - self.lower_fraction_strict(x);
        }
        let idx = Self::index(x);
        for (i, c) in self.pos_counts.iter().enumerate().rev() {
            if self.pos_offset + i as i32 >= idx {
                acc += c;
            } else {
                break;
            }
        }
        acc / self.total
    }

    fn lower_fraction_strict(&self, x: f64) -> f64 {
        // Weight strictly below x (only used for x <= 0).
        let mut acc = 0.0;
        if x < 0.0 {
            let idx = Self::index(x);
            for (i, c) in self.neg_counts.iter().enumerate() {
                if self.neg_offset + i as i32 > idx {
                    acc += c;
                }
            }
        } else {
            acc = self.neg_counts.iter().sum();
        }
        acc / self.total
    }

    /// Fraction of the weight at values ≤ `x`'s bucket.
    fn lower_fraction(&self, x: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        // Only the buckets that count are visited, in the order they always were (the
        // same sums, so the same bits).
        let acc = if x < 0.0 {
            let from = Self::index(x).saturating_sub(self.neg_offset).max(0) as usize;
            self.neg_counts.get(from..).unwrap_or(&[]).iter().sum()
        } else {
            let neg: f64 = self.neg_counts.iter().sum();
            if x < MIN_MAGNITUDE {
                neg + self.zero
            } else {
                let below = i64::from(Self::index(x)) - i64::from(self.pos_offset) + 1;
                let upto = (below.max(0) as usize).min(self.pos_counts.len());
                neg + self.zero + self.pos_counts[..upto].iter().sum::<f64>()
            }
        };
        acc / self.total
    }

    /// Merges another sketch into this one (weights brought to a common time base).
    /// Merging is commutative and associative up to floating-point rounding.
    pub fn merge(&mut self, other: &TailSketch) {
        if other.total <= 0.0 {
            return;
        }
        if self.total <= 0.0 {
            let hl = self.half_life_ms;
            *self = other.clone();
            self.half_life_ms = hl;
            self.band = NO_BAND;
            // The reference is the other's, but the memo was computed with its
            // half-life.
            self.set_reference(other.ref_ms);
            return;
        }
        // Bring both to the earlier reference time.
        let (mut a, mut b) = (self.clone(), other.clone());
        let base = a.ref_ms.min(b.ref_ms);
        let fa = ((base - a.ref_ms) as f64 / a.half_life_ms as f64).exp2();
        let fb = ((base - b.ref_ms) as f64 / a.half_life_ms as f64).exp2();
        a.rescale(fa);
        b.rescale(fb);
        a.set_reference(base);
        a.pos_mut().merge(b.pos());
        a.neg_mut().merge(b.neg());
        a.zero += b.zero;
        a.total += b.total;
        a.last_ms = a.last_ms.max(b.last_ms);
        a.band = NO_BAND;
        *self = a;
    }

    /// Bytes of heap held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        (self.pos_counts.len() + self.neg_counts.len()) * std::mem::size_of::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn filled(values: impl IntoIterator<Item = f64>) -> TailSketch {
        let mut s = TailSketch::new(7 * DAY);
        for (i, v) in values.into_iter().enumerate() {
            s.insert(v, i as i64 * 1000, 1.0);
        }
        s
    }

    #[test]
    fn a_buckets_value_from_the_table_is_its_value_computed_bit_for_bit() {
        let (first, values) = &*VALUES;
        let last = *first + values.len() as i32 - 1;
        // The table covers every bucket the index table gives (2^-30 up to 2^64).
        assert!(*first <= TailSketch::index(2f64.powi(-30)));
        assert!(last >= TailSketch::index(2f64.powi(64)));
        // Every bucket in it, and beyond it either side, down to the smallest magnitude
        // kept and up past the largest double.
        let lowest = TailSketch::index(MIN_MAGNITUDE) - 2;
        for idx in lowest.min(*first - 50)..=last + 20_000 {
            assert_eq!(
                TailSketch::value_of(idx).to_bits(),
                TailSketch::value_computed(idx).to_bits(),
                "bucket {idx}"
            );
        }
    }

    /// Fraction at values ≤ `x`'s bucket as it was computed before the walk stopped at
    /// `x`'s bucket: every bucket visited, the ones beyond filtered out.
    fn lower_fraction_by_filter(s: &TailSketch, x: f64) -> f64 {
        let neg: f64 = s.neg_counts.iter().sum();
        let acc = if x < 0.0 {
            let idx = TailSketch::index(x);
            s.neg_counts
                .iter()
                .enumerate()
                .filter(|(i, _)| s.neg_offset + *i as i32 >= idx)
                .map(|(_, c)| c)
                .sum()
        } else if x < MIN_MAGNITUDE {
            neg + s.zero
        } else {
            let idx = TailSketch::index(x);
            neg + s.zero
                + s.pos_counts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| s.pos_offset + *i as i32 <= idx)
                    .map(|(_, c)| c)
                    .sum::<f64>()
        };
        acc / s.total
    }

    #[test]
    fn the_lower_fraction_is_the_filtered_sum_bit_for_bit() {
        // Decayed (fractional) weights of both signs over many decades, and probes
        // below, inside and beyond every store.
        let mut s = TailSketch::new(3_600_000);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as f64 / u64::MAX as f64
        };
        for i in 0..5_000 {
            let v = (next() - 0.4) * 10f64.powf(next() * 8.0 - 4.0);
            s.insert(if i % 97 == 0 { 0.0 } else { v }, i * 1_000, 1.0);
        }
        let probes = [-1e6, -3.0, -1e-3, -1e-12, 0.0, 1e-12, 1e-3, 0.7, 3.0, 1e6];
        for p in probes
            .into_iter()
            .chain((0..2_000).map(|_| (next() - 0.5) * 200.0))
        {
            assert_eq!(
                s.lower_fraction(p).to_bits(),
                lower_fraction_by_filter(&s, p).to_bits(),
                "{p}"
            );
        }
    }

    #[test]
    fn inside_the_band_the_floor_is_not_asked_for() {
        let mut s = filled((1..=1000).map(f64::from));
        let asked = std::cell::Cell::new(0);
        let floor = |_: &Summary| {
            asked.set(asked.get() + 1);
            0.1
        };
        assert_eq!(s.surprise_with(500.0, Tails::Both, floor), 0.0);
        assert_eq!(s.surprise_with(5.0, Tails::Upper, floor), 0.0);
        assert_eq!(asked.get(), 0);
        for x in [1e4, -5.0, 950.0] {
            let with = s.surprise_with(x, Tails::Both, floor);
            assert_eq!(with.to_bits(), s.surprise(x, Tails::Both, 0.1).to_bits());
        }
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn ceil_i32_is_ceil() {
        let edge = f64::from(i32::MAX);
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.3,
            -2.3,
            1e-300,
            -1e-300,
            edge,
            -edge,
            edge - 0.5,
            -edge + 0.5,
            edge + 1.0,
            -edge - 1.0,
            1e300,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        cases.extend((0..10_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as f64 / u64::MAX as f64 - 0.5) * 1e4
        }));
        for v in cases {
            assert_eq!(ceil_i32(v), v.ceil() as i32, "{v}");
        }
    }

    #[test]
    fn an_insert_of_a_value_or_weight_not_finite_or_a_weight_not_positive_is_ignored() {
        let mut s = TailSketch::new(DAY);
        let bad = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN];
        for x in bad {
            s.insert(x, 0, 1.0);
        }
        for w in bad.into_iter().chain([0.0, -0.0, -1.0, -f64::MAX]) {
            s.insert(1.0, 0, w);
            s.insert(-0.0, 0, w);
        }
        assert_eq!(s, TailSketch::new(DAY));
        assert_eq!(s.count(), 0.0);
        // The extremes that are finite count.
        for x in [f64::MAX, -f64::MAX, 5e-324, -0.0] {
            s.insert(x, 0, 1.0);
        }
        s.insert(1.0, 0, 5e-324);
        assert!((s.count() - 4.0).abs() < 1e-9, "{}", s.count());
    }

    #[test]
    fn quantiles_are_within_relative_accuracy() {
        let s = filled((1..=10_000).map(f64::from));
        for (q, want) in [(0.01, 100.0), (0.5, 5000.0), (0.99, 9900.0)] {
            let got = s.quantile(q).unwrap_or(f64::NAN);
            assert!((got - want).abs() / want < 0.03, "q{q}: {got} vs {want}");
        }
    }

    #[test]
    fn negative_and_zero_values() {
        let s = filled((-500..=500).map(f64::from));
        let med = s.quantile(0.5).unwrap_or(f64::NAN);
        assert!(med.abs() <= 2.0, "{med}");
        assert!(s.quantile(0.01).unwrap_or(0.0) < -480.0);
    }

    #[test]
    fn surprise_grows_with_distance_and_is_zero_inside() {
        let mut s = filled((0..5000).map(|i| 100.0 + f64::from(i % 21) - 10.0));
        assert_eq!(s.surprise(100.0, Tails::Both, 0.1), 0.0);
        let near = s.surprise(115.0, Tails::Both, 0.1);
        let far = s.surprise(200.0, Tails::Both, 0.1);
        assert!(near < far, "{near} {far}");
        assert!(far > 10.0);
        assert!(s.surprise(0.0, Tails::Both, 0.1) > 10.0);
        assert_eq!(s.surprise(0.0, Tails::Upper, 0.1), 0.0);
    }

    #[test]
    fn the_summary_is_the_seven_quantiles_exactly() {
        // Mixed signs, zeros, gaps between buckets, and a decayed history.
        let mut s = TailSketch::new(3_600_000);
        let mut x: u64 = 7;
        for i in 0..20_000i64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            let v = match i % 5 {
                0 => 0.0,
                1 => -(1.0 + 1000.0 * u),
                _ => (u * 12.0).exp(),
            };
            s.insert(v, i * 1000, 1.0 + u);
            if i % 997 == 0 {
                let want = [0.001, 0.01, 0.10, 0.50, 0.90, 0.99, 0.999].map(|q| s.quantile(q));
                let got = s
                    .compute_summary()
                    .map(|m| [m.q001, m.q01, m.q10, m.q50, m.q90, m.q99, m.q999].map(Some));
                assert_eq!(got, Some(want), "after {i} inserts");
            }
        }
        for only in [5.0, -5.0, 0.0] {
            let mut t = TailSketch::new(1000);
            t.insert(only, 0, 1.0);
            let m = t.compute_summary().map(|m| [m.q001, m.q50, m.q999]);
            assert_eq!(
                m,
                Some(
                    [t.quantile(0.001), t.quantile(0.5), t.quantile(0.999)]
                        .map(|v| v.unwrap_or(f64::NAN))
                )
            );
        }
        assert_eq!(TailSketch::new(1000).compute_summary(), None);
    }

    #[test]
    fn decay_forgets_old_values() {
        let mut s = TailSketch::new(100_000);
        for i in 0..1000 {
            s.insert(10.0, i, 1.0);
        }
        for i in 0..1000 {
            s.insert(1000.0, 2_000_000 + i, 1.0);
        }
        // 20 half-lives later the old level weighs ~1e-6 of the new one.
        let med = s.quantile(0.5).unwrap_or(0.0);
        assert!((med - 1000.0).abs() < 30.0, "{med}");
        assert!(s.count() < 1001.0 && s.count() > 990.0, "{}", s.count());
    }

    #[test]
    fn long_streams_rescale_without_overflow() {
        let mut s = TailSketch::new(1000);
        for i in 0..100_000 {
            s.insert(5.0, i * 100, 1.0);
        }
        assert!(s.count().is_finite());
        assert!((s.quantile(0.5).unwrap_or(0.0) - 5.0).abs() < 0.2);
    }

    /// `s` and a copy without its weight memo (a checkpoint's round trip skips it)
    /// given the same insert: every bit of the state and every answer the same.
    fn same_with_and_without_the_memo(s: &mut TailSketch, x: f64, ts_ms: i64) {
        let bytes = serde_json::to_vec(s).unwrap_or_else(|e| panic!("{e}"));
        let mut fresh: TailSketch =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        s.insert(x, ts_ms, 1.0);
        fresh.insert(x, ts_ms, 1.0);
        let (a, b) = (serde_json::to_vec(s), serde_json::to_vec(&fresh));
        assert_eq!(a.ok(), b.ok(), "the state after an insert at {ts_ms}");
        assert_eq!(s.count().to_bits(), fresh.count().to_bits());
        assert_eq!(s.compute_summary(), fresh.compute_summary());
    }

    #[test]
    fn a_sketch_is_written_as_the_derived_format_was() {
        // The bytes `077ccb4`'s derived `Serialize` wrote for this sketch (its fields in
        // declaration order, the stores nested, the cache an option): the layout above
        // is not the format, and a checkpoint's bytes do not change with it.
        let mut s = TailSketch::new(3_600_000);
        for (i, x) in [2.5, -1.0, 0.0, 7.0, 2.5].into_iter().enumerate() {
            s.insert(x, 1_000 * i as i64, 1.0);
        }
        s.summary();
        s.insert(3.0, 9_000, 1.0);
        let zeros = |n: usize| vec!["0.0"; n].join(",");
        let expected = format!(
            concat!(
                r#"{{"pos":{{"offset":23,"counts":[2.0007704601860423,{},1.001734370234696,"#,
                r#"{},1.0005777895065548]}},"neg":{{"offset":0,"counts":[1.0001925594206744]}},"#,
                r#""zero":1.0003851559204795,"total":6.003660335268448,"ref_ms":0,"#,
                r#""last_ms":9000,"half_life_ms":3600000,"cache":{{"q001":-0.98,"q01":-0.98,"#,
                r#""q10":-0.98,"q50":2.4594063232272307,"q90":6.959159383043828,"#,
                r#""q99":6.959159383043828,"q999":6.959159383043828}},"since_cache":1}}"#
            ),
            zeros(4),
            zeros(20)
        );
        let written = serde_json::to_string(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written, expected);
        let back: TailSketch = serde_json::from_str(&written).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, s);
        // Without a cache, `null`; read back as none.
        let empty = serde_json::to_string(&TailSketch::new(5)).unwrap_or_default();
        assert!(empty.contains(r#""cache":null,"since_cache":0"#), "{empty}");
        let back: TailSketch = serde_json::from_str(&empty).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.cached(), None);
    }

    #[test]
    fn an_in_band_sample_reads_one_cache_line_of_a_sketch() {
        use std::mem::{align_of, offset_of, size_of};
        // The layout the type's documentation describes: a reorder of the fields, or one
        // grown, would spread them again without failing any other test.
        assert_eq!(align_of::<TailSketch>(), 64);
        let end = |offset: usize, size: usize| offset + size;
        for (field, end) in [
            ("total", end(offset_of!(TailSketch, total), 8)),
            ("last_ms", end(offset_of!(TailSketch, last_ms), 8)),
            (
                "memo",
                end(offset_of!(TailSketch, memo), size_of::<WeightMemo>()),
            ),
            ("pos_counts", end(offset_of!(TailSketch, pos_counts), 16)),
            ("pos_offset", end(offset_of!(TailSketch, pos_offset), 4)),
            ("since_cache", end(offset_of!(TailSketch, since_cache), 4)),
            ("band", end(offset_of!(TailSketch, band), 16)),
        ] {
            assert!(end <= 64, "{field} ends at {end}");
        }
        assert_eq!(size_of::<TailSketch>(), 192);
    }

    #[test]
    fn the_weight_memo_is_forgotten_whenever_the_reference_moves() {
        // A rescale moves the reference to the time that overflowed, with that time's
        // weight remembered against the old reference (~2^340): the next insert at the
        // same time must weigh 1, not that.
        let mut s = TailSketch::new(1000);
        s.insert(1.0, 0, 1.0);
        s.insert(2.0, 340_000, 1.0);
        same_with_and_without_the_memo(&mut s, 3.0, 340_000);
        assert!((s.count() - 2.0).abs() < 1e-9, "{}", s.count());
        // A merge with an older sketch moves the reference back.
        let mut a = TailSketch::new(DAY);
        for i in 0..50 {
            a.insert(f64::from(i), 5 * DAY + i64::from(i), 1.0);
        }
        let mut older = TailSketch::new(DAY);
        older.insert(7.0, 0, 1.0);
        a.merge(&older);
        same_with_and_without_the_memo(&mut a, 8.0, 5 * DAY + 49);
        // The first insert sets the reference (and finds nothing remembered).
        let mut e = TailSketch::new(DAY);
        same_with_and_without_the_memo(&mut e, 1.0, 3 * DAY);
        same_with_and_without_the_memo(&mut e, 1.0, 3 * DAY);
    }

    #[test]
    fn merge_equals_inserting_everything() {
        let a = filled((0..1000).map(f64::from));
        let mut b = TailSketch::new(7 * DAY);
        for i in 0..1000 {
            b.insert(f64::from(i) * 3.0, i64::from(i) * 1000, 1.0);
        }
        let mut all = a.clone();
        for i in 0..1000 {
            all.insert(f64::from(i) * 3.0, i64::from(i) * 1000, 1.0);
        }
        let mut m = a;
        m.merge(&b);
        for q in [0.1, 0.5, 0.9] {
            assert_eq!(m.quantile(q), all.quantile(q));
        }
    }

    #[test]
    fn a_store_grown_downward_holds_what_one_grown_upward_does() {
        // Magnitudes spanning 1e-8..1e8 (~930 buckets, under the cap), arriving smallest
        // first in one sketch and largest first in the other: every bucket the same.
        let values: Vec<f64> = (0..=160)
            .map(|i| 10f64.powf(-8.0 + 0.1 * f64::from(i)))
            .collect();
        let fill = |vs: &mut dyn Iterator<Item = &f64>| {
            let mut s = TailSketch::new(DAY);
            for v in vs {
                s.insert(*v, 0, 1.0);
                s.insert(-*v, 0, 1.0);
            }
            s
        };
        let (up, down) = (fill(&mut values.iter()), fill(&mut values.iter().rev()));
        assert_eq!(up.pos(), down.pos());
        assert_eq!(up.neg(), down.neg());
        assert!(up.pos_counts.len() > 900 && up.pos_counts.len() <= MAX_BUCKETS);
        assert_eq!(up.pos_counts.iter().sum::<f64>(), 161.0);
        // Beyond the cap, the lowest magnitudes share the lowest bucket either way
        // (which ones depends on the order they came in), nothing is lost, and the
        // upper quantiles are untouched.
        let wide: Vec<f64> = (0..=190)
            .map(|i| 10f64.powf(-8.95 + 0.1 * f64::from(i)))
            .collect();
        let (up, down) = (fill(&mut wide.iter()), fill(&mut wide.iter().rev()));
        for s in [&up, &down] {
            assert!(s.pos_counts.len() <= MAX_BUCKETS);
            assert_eq!(s.pos_counts.iter().sum::<f64>(), 191.0);
        }
        for q in [0.9, 0.99, 1.0] {
            assert_eq!(up.quantile(q), down.quantile(q));
        }
    }
}
