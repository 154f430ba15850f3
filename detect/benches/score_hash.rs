//! Whether a change left every score as it was: a fingerprint of the engine's whole
//! output over a workload that reaches its rarer paths, to compare before and after a
//! change meant to be bit for bit (`docs/performance.md` gives each step's).
//!
//! ```sh
//! cargo bench -p herd-detect --bench score_hash   # `FIGURE score_hash <fnv-1a 64> …`
//! ```
//!
//! 100 groups of 10 replicas, four metrics each, 3,000 rounds of ten seconds in the
//! order node agents publish (each host's containers together): about 3 million
//! observations. Into them: a replica whose CPU climbs far beyond its peers', one whose
//! memory steps up and stays, a fleet-wide surge, gaps of 400 s in which nothing
//! arrives, replicas that fall silent and others that start late, NaN and negative
//! values, a metric named twice in one sample and one no feature knows; half way, the
//! engine is checkpointed and restored, so state a checkpoint drops shows. The
//! fingerprint is FNV-1a over every alert (serialised as JSON, in the order the engine
//! gave them) and then the engine's snapshot at the end, its maps in key order; the
//! alert count is printed beside it. A measurement, not a test: nothing here asserts a
//! value, and a change that moves scores on purpose moves the fingerprint with them.

use std::sync::Arc;

use herd_detect::{DetectConfig, Engine};
use herd_ingest::{ContainerRef, Observation, Payload};

const GROUPS: u64 = 100;
const REPLICAS: u64 = 10;
const HOSTS: u64 = 50;
const ROUNDS: u64 = 3_000;
const T0: i64 = 1_795_428_000_000;
const STEP_MS: i64 = 10_000;

/// splitmix64: the workload's only source of variation, so it is the same everywhere.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform value in [0, 1) for (replica, round, metric).
fn unit(i: u64, k: u64, m: u64) -> f64 {
    (mix(i.wrapping_mul(1_000_003) ^ k.wrapping_mul(7_919) ^ m << 56) >> 11) as f64
        / (1u64 << 53) as f64
}

struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Every replica with its group and its index in the group, in the order agents publish.
fn containers() -> Vec<(u64, u64, Arc<ContainerRef>)> {
    let mut all: Vec<(u64, u64, u64, Arc<ContainerRef>)> = (0..GROUPS * REPLICAS)
        .map(|i| {
            let (g, r) = (i / REPLICAS, i % REPLICAS);
            // A scheduler's spread: no two replicas of a group on one host.
            let host = (g * 7 + r * 5) % HOSTS;
            let c = ContainerRef {
                id: format!("{:016x}{:016x}", mix(i), mix(i ^ 1 << 40)).into(),
                name: Some(format!("svc{g}-{r}").into()),
                image: format!("hash/svc{g}:1").into(),
                image_digest: Some(format!("sha256:{:064x}", u128::from(mix(g ^ 1 << 50))).into()),
                labels: Default::default(),
                host: Some(format!("node-{host}").into()),
            };
            (host, g, r, Arc::new(c))
        })
        .collect();
    // As agents publish: host by host, each host's containers in their own order.
    all.sort_by_key(|(host, ..)| *host);
    all.into_iter().map(|(_, g, r, c)| (g, r, c)).collect()
}

/// The sample of replica `r` of group `g` in round `k`, or `None` when it sends none.
fn sample(g: u64, r: u64, k: u64) -> Option<Vec<(&'static str, f64)>> {
    let i = g * REPLICAS + r;
    // Replica 9 of every fifth group falls silent for good at round 1,800; replica 8
    // of every seventh starts at round 600.
    if (g.is_multiple_of(5) && r == 9 && k >= 1_800) || (g.is_multiple_of(7) && r == 8 && k < 600) {
        return None;
    }
    let u = |m| unit(i, k, m);
    let mut cpu = 0.3 + 0.02 * g as f64 / GROUPS as f64 + 0.1 * u(0);
    let mut mem = 1.5e8 * (1.0 + 0.01 * u(1)) + 1e6 * g as f64;
    let mut rx = 2e5 * (1.0 + 0.3 * u(2));
    let tx = 6e5 * (1.0 + 0.3 * u(3));
    // A fleet-wide surge: every replica of every group, for 50 rounds.
    if (2_000..2_050).contains(&k) {
        cpu *= 3.0;
        rx *= 4.0;
    }
    // One replica unlike its siblings: a miner from round 1,200 to 1,260 in group 3,
    // a memory step from round 2,400 on in group 41.
    if g == 3 && r == 2 && (1_200..1_260).contains(&k) {
        cpu = 1.9 + 0.05 * u(4);
    }
    if g == 41 && r == 6 && k >= 2_400 {
        mem *= 3.0;
    }
    let mut metrics = vec![
        ("cpu_cores", cpu),
        ("mem_bytes", mem),
        ("net_rx_bytes_per_s", rx),
        ("net_tx_bytes_per_s", tx),
    ];
    // Rarer shapes of input: NaN, a negative rate, a metric named twice (its second
    // value counts), a metric no feature knows.
    match mix(i ^ k << 20) % 997 {
        0 => metrics[0].1 = f64::NAN,
        1 => metrics[2].1 = -1.0,
        2 => metrics.push(("cpu_cores", cpu * 1.5)),
        3 => metrics.push(("gpu_watts", 120.0)),
        _ => {}
    }
    Some(metrics)
}

fn main() {
    let mut cfg = DetectConfig::default();
    cfg.baseline.warmup_ms = 0;
    cfg.baseline.learning_period_ms = 0;
    let mut engine = Engine::new(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let containers = containers();
    let mut fnv = Fnv(0xcbf2_9ce4_8422_2325);
    let (mut alerts, mut count, mut observations) = (Vec::new(), 0usize, 0u64);
    let mut t = T0;
    for k in 0..ROUNDS {
        // Nothing arrives for 400 s before every 700th round.
        if k > 0 && k.is_multiple_of(700) {
            t += 400_000;
        }
        // Half way, the engine is checkpointed and restored, as a worker handing its
        // partitions over does: the rest is scored by the restored state.
        if k == ROUNDS / 2 {
            let bytes = engine
                .snapshot()
                .unwrap_or_else(|e| panic!("snapshot: {e}"));
            engine =
                Engine::restore(cfg.clone(), &bytes).unwrap_or_else(|e| panic!("restore: {e}"));
        }
        for (g, r, c) in &containers {
            let Some(metrics) = sample(*g, *r, k) else {
                continue;
            };
            let obs = Observation {
                ts_ms: t,
                container: Arc::clone(c),
                payload: Payload::Metrics(
                    metrics.into_iter().map(|(n, v)| (n.into(), v)).collect(),
                ),
            };
            engine.observe(&obs, &mut alerts);
            observations += 1;
        }
        for a in alerts.drain(..) {
            fnv.write(&serde_json::to_vec(&a).unwrap_or_else(|e| panic!("alert: {e}")));
            count += 1;
        }
        t += STEP_MS;
    }
    // The snapshot as a canonical JSON value: a group's replicas are written in their
    // table's order, which depends on the order they were inserted in (a restored
    // table's differs), and a checkpoint's map order means nothing. Floats round-trip
    // exactly (`float_roundtrip`).
    let snapshot = engine
        .snapshot()
        .unwrap_or_else(|e| panic!("snapshot: {e}"));
    let canonical: serde_json::Value =
        serde_json::from_slice(&snapshot).unwrap_or_else(|e| panic!("snapshot: {e}"));
    fnv.write(&serde_json::to_vec(&canonical).unwrap_or_else(|e| panic!("snapshot: {e}")));
    println!(
        "FIGURE score_hash {:016x} after {observations} observations, {count} alerts",
        fnv.0
    );
}
