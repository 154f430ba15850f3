//! Scoring throughput of the detection engine (decode excluded): 10,000 containers in
//! 1,000 peer groups of 10 replicas, four metrics per observation, on warmed baselines.
//!
//! Two orders of the same observations. `…_1k_groups` takes each group's ten replicas
//! one after another, so a group's state, once fetched, serves ten observations.
//! `…_agent_order` takes them as node agents publish: each host's containers together,
//! and no two replicas of a group on one host (as a scheduler spreads them), so
//! consecutive observations belong to different groups and a group's state is fetched
//! again for each of its replicas. A worker consuming a fleet meets the second.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd_detect::{DetectConfig, Engine};
use herd_ingest::{ContainerRef, Observation, Payload};

const GROUPS: usize = 1_000;
const REPLICAS: usize = 10;
const T0: i64 = 1_795_428_000_000;
const STEP_MS: i64 = 10_000;

/// 64 hex characters that look like a real id or digest (uniformly spread, so keys do
/// not share long prefixes as zero-padded counters would).
fn hex64(n: u64) -> String {
    let mut x = n;
    (0..4)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

fn round(containers: &[Arc<ContainerRef>], k: u64) -> Vec<Observation> {
    containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // Cheap deterministic jitter, no RNG in the loop.
            let j =
                ((i as u64).wrapping_mul(2654435761).wrapping_add(k * 97) % 1000) as f64 / 1000.0;
            Observation {
                ts_ms: T0,
                container: Arc::clone(c),
                payload: Payload::Metrics(vec![
                    ("cpu_cores".into(), 0.4 + 0.1 * j),
                    ("mem_bytes".into(), 2e8 * (1.0 + 0.02 * j)),
                    ("net_rx_bytes_per_s".into(), 3e5 * (1.0 + 0.2 * j)),
                    ("net_tx_bytes_per_s".into(), 9e5 * (1.0 + 0.2 * j)),
                ]),
            }
        })
        .collect()
}

/// A warmed engine and one round of observations, in the given order.
fn setup(agent_order: bool) -> (Engine, Vec<Observation>, i64) {
    let mut cfg = DetectConfig::default();
    cfg.baseline.warmup_ms = 0;
    cfg.baseline.learning_period_ms = 0;
    let mut engine = Engine::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    let containers: Vec<Arc<ContainerRef>> = (0..GROUPS * REPLICAS)
        .map(|i| {
            Arc::new(ContainerRef {
                id: hex64(i as u64).into(),
                name: Some(format!("svc{}-{}", i / REPLICAS, i % REPLICAS).into()),
                image: format!("bench/svc{}:1", i / REPLICAS).into(),
                image_digest: Some(
                    format!("sha256:{}", hex64(1 << 40 | (i / REPLICAS) as u64)).into(),
                ),
                labels: Default::default(),
                host: Some(format!("node-{}", i % 50).into()),
            })
        })
        .collect();
    let mut rounds: Vec<Vec<Observation>> = (0..8).map(|k| round(&containers, k)).collect();
    if agent_order {
        // Stable: within a host, the agent's own (container) order.
        for r in &mut rounds {
            r.sort_by(|a, b| a.container.host.cmp(&b.container.host));
        }
    }
    let mut alerts = Vec::new();
    let mut t = T0;
    // Warm: enough rounds for every sketch to be past its minimum sample count.
    for k in 0..40 {
        for o in &rounds[k % rounds.len()] {
            let mut o = o.clone();
            o.ts_ms = t;
            engine.observe(&o, &mut alerts);
        }
        t += STEP_MS;
    }
    (engine, rounds.swap_remove(0), t)
}

fn scoring(c: &mut Criterion) {
    let mut g = c.benchmark_group("scoring");
    g.throughput(Throughput::Elements((GROUPS * REPLICAS) as u64));
    g.sample_size(20);
    for (name, agent_order) in [
        ("observe_10k_containers_1k_groups", false),
        ("observe_10k_containers_1k_groups_agent_order", true),
    ] {
        let (mut engine, mut batch, mut t) = setup(agent_order);
        let mut alerts = Vec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                // Only the time moves between rounds: nothing but the engine is measured.
                t += STEP_MS;
                for o in &mut batch {
                    o.ts_ms = t;
                }
                alerts.clear();
                for o in &batch {
                    engine.observe(o, &mut alerts);
                }
                alerts.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
