//! The decode ratio of issue 7, measured as a ratio: herd's decoding of a format and
//! serde_json's parsing of the same bytes into `IgnoredAny`, alternated in short turns
//! in one process, so that whatever the machine does meanwhile (another build, a
//! neighbour on the host, a change of clock) falls on both sides of each pair.
//! Criterion's separate runs, seconds apart, each take the machine as it was then; on a
//! machine whose speed drifts by tens of percent their quotient drifts as much.
//!
//! Prints one `FIGURE decode_ratio_<format> <median> …` line per format: the median
//! over 101 pairs of the pair's ratio (IgnoredAny's time over herd's), with the
//! quartiles, and each side's best rate. Measured, never asserted.
//!
//! `cargo bench --bench decode_ratio` (`scripts/bench-figures` runs it).

use std::hint::black_box;
use std::time::Instant;

use herd_ingest::{Decoder, Identities};
use serde::de::IgnoredAny;

#[path = "support/lines.rs"]
mod lines;
use lines::lines;

/// Pairs per format, and lines per turn (a turn lasts a few milliseconds).
const PAIRS: usize = 101;
const TURN: usize = 4_000;

fn main() {
    let d = Decoder::default();
    for (name, line) in lines() {
        let bytes = line.as_bytes();
        // As a worker decodes: the identities it has seen are remembered.
        let mut ids = Identities::new(1024);
        if d.decode_with(bytes, &mut ids).is_err() {
            eprintln!("{name} does not decode");
            std::process::exit(1);
        }
        let herd = |ids: &mut Identities| {
            let t = Instant::now();
            for _ in 0..TURN {
                let _ = black_box(d.decode_with(black_box(bytes), ids));
            }
            t.elapsed().as_secs_f64()
        };
        let reference = || {
            let t = Instant::now();
            for _ in 0..TURN {
                let _ = black_box(serde_json::from_slice::<IgnoredAny>(black_box(bytes)));
            }
            t.elapsed().as_secs_f64()
        };
        // Warm both (caches, the allocator, the clock).
        for _ in 0..5 {
            herd(&mut ids);
            reference();
        }
        let mut ratios = Vec::with_capacity(PAIRS);
        let (mut best_herd, mut best_ref) = (f64::MAX, f64::MAX);
        for i in 0..PAIRS {
            // Alternate which side goes first, so neither always follows the other.
            let (h, r) = if i % 2 == 0 {
                let h = herd(&mut ids);
                (h, reference())
            } else {
                let r = reference();
                (herd(&mut ids), r)
            };
            ratios.push(r / h);
            best_herd = best_herd.min(h);
            best_ref = best_ref.min(r);
        }
        ratios.sort_by(f64::total_cmp);
        let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
        let rate = |t: f64| TURN as f64 / t / 1e3;
        println!(
            "FIGURE decode_ratio_{name} {:.3} quartiles {:.3}-{:.3}; best herd {:.0} k lines/s, best IgnoredAny {:.0} k/s",
            q(0.5),
            q(0.25),
            q(0.75),
            rate(best_herd),
            rate(best_ref),
        );
    }
}
