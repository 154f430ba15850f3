//! A sketch's bucket index without a logarithm: the same integer as
//! `ceil(ln|x| / ln γ)` for every `x`, from a table of the buckets' boundaries.
//!
//! Every insert into a sketch needs its value's bucket, and the logarithm was the
//! costliest part of an insert (~60 instructions of ~170). Each binade `[2^e, 2^(e+1))`
//! is cut into [`SLICES`] slices by the top bits of the mantissa. A slice is narrower
//! than a bucket (a ratio of at most `1 + 1/128` against γ ≈ 1.041), so at most one
//! bucket boundary falls in it, and its entry holds the bucket index below that
//! boundary and the boundary itself, widened to a guard band of [`GUARD`] relative on
//! each side (a slice that starts at a boundary, as `[1, 1 + 1/128)` does, has its band
//! at its start). A value outside the guard band gets its index from one or two
//! comparisons; a value inside it (a few in a billion) or outside the table's range
//! (magnitudes below 2^-30 or from 2^64) gets the logarithm as before.
//!
//! Why that gives the logarithm's integer exactly. Write `q(x) = ln x / g`, with `g`
//! the double `ln γ` the sketch has always divided by. The computed quotient differs
//! from the real `q(x)` by a few units in its last place: below 10^-12 for every
//! magnitude the table covers (|q| < 1,110; glibc's `log` is within one ulp). The
//! index changes where `q` crosses an integer `k`, at `B = exp(k·g)`; the computed `B`
//! is within 10^-14 relative. A value more than [`GUARD`] (10^-10) relative from `B`
//! has `q` more than 2·10^-9 from `k`, orders of magnitude beyond every rounding
//! involved, so its ceiling is the real one, and the comparison with `B` gives it.
//! The same margin at the slice's start decides the index below the boundary. Tests
//! hold the table to the logarithm on random doubles, on every boundary the table
//! covers and the ulps around it, and on every slice's edges.

use std::sync::LazyLock;

/// Slices per binade: the top seven bits of the mantissa.
const SLICE_BITS: u32 = 7;
/// Number of slices per binade.
const SLICES: usize = 1 << SLICE_BITS;
/// Biased exponent of the first binade in the table: 2^-30, below the sketch's
/// smallest magnitude (10^-9, which goes to the zero bucket below it).
const FIRST_EXP: u64 = 1023 - 30;
/// Binades in the table: 2^-30 up to 2^64 (values beyond are rare enough for `ln`).
const BINADES: u64 = 94;
/// Half-width of the band around a boundary where the logarithm decides, relative.
const GUARD: f64 = 1e-10;
/// A slice whose start is this close to a boundary (in units of `q`: four times the
/// guard band's half-width there, and far beyond rounding) is taken to start at it.
const START_MARGIN: f64 = 1e-8;

/// One slice: the index of values up to `lo = b·(1 − GUARD)` is `k`, of values above
/// `hi = b·(1 + GUARD)` it is `k + 1`; between them (the guard band around the
/// boundary `b`) the logarithm decides. A slice without a boundary has its next
/// boundary above it, `lo` above every value in it (or the guard band over its end). A
/// slice that starts at a boundary has `b` there: its values below `lo`, if its start
/// is below `b`, have `q` within 10^-8 of `k` and more than 2·10^-9 below it, so their
/// index is `k`, as the logarithm gives. Both ends are multiplied where they are
/// compared: an entry is 16 bytes, four to a cache line, where one of 24 with both ends
/// missed the cache half as often again for values spread over many slices (a peer
/// deviation's).
#[derive(Debug, Clone, Copy)]
struct Slice {
    b: f64,
    k: i32,
}

impl Slice {
    #[inline]
    fn lo(&self) -> f64 {
        self.b * (1.0 - GUARD)
    }

    #[inline]
    fn hi(&self) -> f64 {
        self.b * (1.0 + GUARD)
    }
}

/// The table, built at first use (12,032 slices: one `ln` and one `exp` each, under a
/// millisecond; 192 KB).
static TABLE: LazyLock<Box<[Slice]>> = LazyLock::new(|| {
    (0..BINADES * SLICES as u64)
        .map(|i| {
            let exp = FIRST_EXP + i / SLICES as u64;
            let s = i % SLICES as u64;
            slice(f64::from_bits(exp << 52 | s << (52 - SLICE_BITS)))
        })
        .collect()
});

/// The entry of the slice that starts at `start`.
fn slice(start: f64) -> Slice {
    let g = super::gamma_ln();
    let q = start.ln() / g;
    let nearest = q.round();
    if (q - nearest).abs() < START_MARGIN {
        // The slice starts at a boundary (1.0 does, at index 0): the logarithm decides
        // within the guard band around it, and the rest of the slice is in the bucket
        // above (the next boundary is a bucket's width away, beyond the slice).
        return Slice {
            b: (nearest * g).exp(),
            k: nearest as i32,
        };
    }
    // The index of the slice's start; the next boundary above it is at `exp(k·g)`,
    // within the slice or beyond it (the guard band still applies near its end).
    let k = q.ceil();
    Slice {
        b: (k * g).exp(),
        k: k as i32,
    }
}

/// `ceil(ln|x| / ln γ)`, the sketch's bucket of `x`, as an `i32` (see the module
/// documentation). `x` is any double; what the table does not cover takes `slow`.
#[inline]
pub(super) fn index(x: f64, slow: impl FnOnce(f64) -> i32) -> i32 {
    let a = x.abs();
    let bits = a.to_bits();
    let binade = (bits >> 52).wrapping_sub(FIRST_EXP);
    if binade < BINADES {
        let i = (binade as usize) * SLICES + ((bits >> (52 - SLICE_BITS)) as usize & (SLICES - 1));
        if let Some(s) = TABLE.get(i) {
            if a <= s.lo() {
                return s.k;
            }
            if a > s.hi() {
                return s.k + 1;
            }
        }
    }
    slow(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_ln(x: f64) -> i32 {
        super::super::TailSketch::index_by_ln(x)
    }

    fn check(x: f64) {
        assert_eq!(index(x, by_ln), by_ln(x), "x = {x:e} ({:#x})", x.to_bits());
    }

    /// Doubles `n` ulps away (same sign, finite).
    fn ulps(x: f64, n: i64) -> f64 {
        f64::from_bits((x.to_bits() as i64 + n) as u64)
    }

    #[test]
    fn every_boundary_the_table_covers_and_the_ulps_around_it() {
        let g = super::super::gamma_ln();
        let lo = (f64::from_bits(FIRST_EXP << 52).ln() / g).floor() as i32;
        let hi = (f64::from_bits((FIRST_EXP + BINADES) << 52).ln() / g).ceil() as i32;
        let mut decided = 0usize;
        for k in lo..=hi {
            let b = (f64::from(k) * g).exp();
            for n in -40..=40 {
                check(ulps(b, n));
                check(-ulps(b, n));
            }
            // Just outside the guard band, where the table decides alone.
            for f in [1.0 - 2.0 * GUARD, 1.0 + 2.0 * GUARD, 1.0 - 1e-6, 1.0 + 1e-6] {
                let x = b * f;
                check(x);
                decided += usize::from(slow_not_taken(x));
            }
        }
        // The table answers beside the boundaries, not the logarithm.
        assert!(
            decided > (hi - lo) as usize * 3,
            "{decided} of {}",
            (hi - lo) * 4
        );
    }

    fn slow_not_taken(x: f64) -> bool {
        let mut taken = false;
        index(x, |a| {
            taken = true;
            by_ln(a)
        });
        !taken
    }

    #[test]
    fn a_slice_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Slice>(), 16);
    }

    #[test]
    fn every_slice_edge_and_middle() {
        for exp in FIRST_EXP - 2..FIRST_EXP + BINADES + 2 {
            for s in 0..SLICES as u64 {
                let start = f64::from_bits(exp << 52 | s << (52 - SLICE_BITS));
                for n in [-3, -2, -1, 0, 1, 2, 3, 1 << 20, 1 << 40] {
                    check(ulps(start, n));
                }
                check(start * (1.0 + 0.5 / SLICES as f64));
            }
        }
    }

    #[test]
    fn random_doubles_of_every_magnitude() {
        // splitmix64: every bit pattern of a finite double, and values spread evenly in
        // each binade of the table.
        let mut state = 0x5eed_u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut taken = Vec::new();
        for _ in 0..1_000_000 {
            let bits = next();
            let any = f64::from_bits(bits);
            if any.is_finite() && any != 0.0 {
                check(any);
            }
            let exp = FIRST_EXP + (bits >> 52) % BINADES;
            let x = f64::from_bits(exp << 52 | (bits & ((1 << 52) - 1)));
            check(x);
            if !slow_not_taken(x) {
                taken.push(x);
            }
        }
        // The logarithm is the rare path: the guard bands only.
        assert!(
            taken.len() < 10,
            "{} of a million took the logarithm: {taken:?}",
            taken.len()
        );
    }

    #[test]
    fn what_the_table_does_not_cover_takes_the_logarithm() {
        for x in [1e-12, 2f64.powi(64), 1e300, f64::MIN_POSITIVE, 5e-324] {
            assert!(!slow_not_taken(x), "{x:e}");
            check(x);
        }
        // Zero, infinities and NaN: whatever the logarithm's path gives, unchanged.
        for x in [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            assert_eq!(index(x, by_ln), by_ln(x));
        }
    }
}
