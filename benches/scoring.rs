//! Scoring throughput of the detection engine (decode excluded): 10,000 containers in
//! 1,000 peer groups of 10 replicas, four metrics per observation, on warmed baselines.
//!
//! Two orders of the same observations. `…_1k_groups` takes each group's ten replicas
//! one after another, so a group's state, once fetched, serves ten observations.
//! `…_agent_order` takes them as node agents publish: each host's containers together,
//! and no two replicas of a group on one host (as a scheduler spreads them), so
//! consecutive observations belong to different groups and a group's state is fetched
//! again for each of its replicas. A worker consuming a fleet meets the second.
//!
//! `…_model_alone_agent_order` is the ceiling of any engine over today's detection
//! model: the same values in agents' order given straight to the model
//! (`herd_baseline::numeric`), with only what the engine asks of it per metric in peer
//! mode (the peer deviation from the group's median, both views' readiness, three
//! surprises, two inserts) and nothing around it: no group, replica or peer lookup, no
//! peers' statistics (their medians are taken once, outside the measurement), no
//! calibration, latest values or findings.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd_baseline::numeric::{FeatureBaseline, peer_deviation_with, resolution_of, slog};
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

/// A container's four metrics in one round, by name.
type Metrics = [(&'static str, f64); 4];

/// The four metrics of container `i` in round `k`.
fn values(i: usize, k: u64) -> Metrics {
    // Cheap deterministic jitter, no RNG in the loop.
    let j = ((i as u64).wrapping_mul(2654435761).wrapping_add(k * 97) % 1000) as f64 / 1000.0;
    [
        ("cpu_cores", 0.4 + 0.1 * j),
        ("mem_bytes", 2e8 * (1.0 + 0.02 * j)),
        ("net_rx_bytes_per_s", 3e5 * (1.0 + 0.2 * j)),
        ("net_tx_bytes_per_s", 9e5 * (1.0 + 0.2 * j)),
    ]
}

fn round(containers: &[Arc<ContainerRef>], k: u64) -> Vec<Observation> {
    containers
        .iter()
        .enumerate()
        .map(|(i, c)| Observation {
            ts_ms: T0,
            container: Arc::clone(c),
            payload: Payload::Metrics(values(i, k).map(|(n, x)| (n.into(), x)).to_vec()),
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

/// The model alone: each group's four features, and per group and metric the peers'
/// median with its resolution and signed logarithm (as the engine keeps them beside its
/// peers' statistics).
struct Model {
    features: Vec<[FeatureBaseline; 4]>,
    medians: Vec<[(f64, f64, f64); 4]>,
    min_samples: f64,
}

impl Model {
    fn new(half_life_ms: i64, min_samples: f64) -> Self {
        let names = values(0, 0).map(|(n, _)| n);
        Self {
            features: (0..GROUPS)
                .map(|_| names.map(|n| FeatureBaseline::new(n, half_life_ms)))
                .collect(),
            medians: vec![[(0.0, 1.0, 0.0); 4]; GROUPS],
            min_samples,
        }
    }

    /// Each group's medians of `round` (replica `r` of group `g` is container
    /// `g * REPLICAS + r`).
    fn take_medians(&mut self, round: &[Metrics]) {
        for (g, medians) in self.medians.iter_mut().enumerate() {
            for (m, slot) in medians.iter_mut().enumerate() {
                let mut v: Vec<f64> = (0..REPLICAS)
                    .map(|r| round[g * REPLICAS + r][m].1)
                    .collect();
                v.sort_by(f64::total_cmp);
                let median = 0.5 * (v[REPLICAS / 2 - 1] + v[REPLICAS / 2]);
                let res = resolution_of(round[0][m].0);
                *slot = (median, res, slog(median, res));
            }
        }
    }

    /// What the engine asks of the model for one observation in peer mode.
    fn observe(&mut self, i: usize, metrics: &Metrics, now: i64) -> f64 {
        let g = i / REPLICAS;
        let mut sum = 0.0;
        for ((fb, &(median, res, slog_median)), &(_, x)) in self.features[g]
            .iter_mut()
            .zip(&self.medians[g])
            .zip(metrics)
        {
            let dev = peer_deviation_with(x, median, res, || slog_median);
            if fb.values.count() >= self.min_samples && fb.peer_dev.count() >= self.min_samples {
                sum +=
                    fb.value_surprise(x) + fb.peer_surprise(dev, None) + fb.value_surprise(median);
            }
            fb.values.insert(x, now, 1.0);
            fb.peer_dev.insert(dev, now, 1.0);
        }
        sum
    }
}

/// A warmed model, one round of values in agents' order (container, values) and the time.
fn setup_model() -> (Model, Vec<(usize, Metrics)>, i64) {
    let cfg = DetectConfig::default();
    let mut model = Model::new(cfg.baseline.half_life_ms, cfg.min_samples);
    let rounds: Vec<Vec<Metrics>> = (0..8)
        .map(|k| (0..GROUPS * REPLICAS).map(|i| values(i, k)).collect())
        .collect();
    // Agents' order, as `setup(true)` sorts: by host, `node-{i % 50}` compared as text.
    let mut order: Vec<usize> = (0..GROUPS * REPLICAS).collect();
    order.sort_by_key(|i| format!("node-{}", i % 50));
    let mut t = T0;
    for k in 0..40 {
        let r = &rounds[k % rounds.len()];
        model.take_medians(r);
        for &i in &order {
            model.observe(i, &r[i], t);
        }
        t += STEP_MS;
    }
    model.take_medians(&rounds[0]);
    let batch = order.iter().map(|&i| (i, rounds[0][i])).collect();
    (model, batch, t)
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
    let (mut model, batch, mut t) = setup_model();
    g.bench_function("model_alone_agent_order", |b| {
        b.iter(|| {
            t += STEP_MS;
            let mut sum = 0.0;
            for (i, metrics) in &batch {
                sum += model.observe(*i, metrics, t);
            }
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
