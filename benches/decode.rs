//! Decoding throughput per input format (lines/s), with serde_json parsing the same
//! bytes into `IgnoredAny` as the reference for "how fast can JSON be read at all".
//! `herd` is the worker's path (identities of known containers reused);
//! `herd_first_sight` decodes every line as if its container were new.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herd_ingest::{Decoder, Identities};
use serde::de::IgnoredAny;

#[path = "support/lines.rs"]
mod lines;
use lines::lines;

fn decode(c: &mut Criterion) {
    let d = Decoder::default();
    let mut g = c.benchmark_group("decode");
    for (name, line) in lines() {
        assert!(d.decode(line.as_bytes()).is_ok(), "{name} does not decode");
        g.throughput(Throughput::Elements(1));
        // As a worker decodes: its pipeline remembers the identities it has seen, so a
        // known container's envelope reuses its identity.
        let mut ids = Identities::new(1024);
        g.bench_with_input(BenchmarkId::new("herd", name), &line, |b, line| {
            b.iter(|| d.decode_with(std::hint::black_box(line.as_bytes()), &mut ids))
        });
        // A container seen for the first time (every identity built anew).
        g.bench_with_input(
            BenchmarkId::new("herd_first_sight", name),
            &line,
            |b, line| b.iter(|| d.decode(std::hint::black_box(line.as_bytes()))),
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_ignored_any", name),
            &line,
            |b, line| {
                b.iter(|| {
                    serde_json::from_slice::<IgnoredAny>(std::hint::black_box(line.as_bytes()))
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
