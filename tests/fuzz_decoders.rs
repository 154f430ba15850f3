//! The short pass of the mutation fuzzer in CI (`tests/support/fuzz.rs`: every input
//! format through decode, normalisation and scoring; issue 8). `HERD_FUZZ_EXECS` and
//! `HERD_FUZZ_SEED` change it; `cargo bench --bench fuzz -- 10000000` is the long pass.

#[allow(dead_code)]
#[path = "support/fuzz.rs"]
mod fuzz;

#[test]
fn mutated_input_of_every_format_never_panics_and_is_accounted_for() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    let r = fuzz::run(
        env("HERD_FUZZ_EXECS").unwrap_or(20_000),
        env("HERD_FUZZ_SEED").unwrap_or(8),
    );
    eprintln!("{r:?}");
}
