//! The long pass of the mutation fuzzer (`tests/support/fuzz.rs`; issue 8), in release:
//! `cargo bench --bench fuzz -- 10000000 [SEED]`. Prints the executions, what became of
//! them and the rate; a panic or a broken invariant fails it with the case to replay.

#[allow(dead_code)]
#[path = "../tests/support/fuzz.rs"]
mod fuzz;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let execs = args.first().copied().unwrap_or(1_000_000);
    let seed = args.get(1).copied().unwrap_or(8);
    let t = std::time::Instant::now();
    let r = fuzz::run(execs, seed);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "fuzz: {} executions, 0 crashes, in {secs:.0} s ({:.0}/s), seed {seed}: {} decoded, {} rejected, {} not joined, at most {} containers tracked",
        r.execs,
        r.execs as f64 / secs.max(1e-9),
        r.decoded,
        r.rejected,
        r.unjoined,
        r.most_containers
    );
}
