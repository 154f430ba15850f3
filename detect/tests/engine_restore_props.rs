//! Property: an engine restored from a snapshot taken at any point emits exactly the
//! alerts the original emits from that point on (caches included: scores may depend on
//! when a cache was refreshed, so a checkpoint must carry it).

use std::sync::Arc;

use herd_detect::{DetectConfig, Engine};
use herd_ingest::{ContainerRef, Event, Observation, Payload};
use proptest::prelude::*;

const T0: i64 = 1_795_428_000_000;

fn container(g: u8, r: u8) -> Arc<ContainerRef> {
    Arc::new(ContainerRef {
        id: format!("{g:02x}{r:062x}").into(),
        name: Some(format!("g{g}-r{r}").into()),
        image: format!("img/{g}:1").into(),
        image_digest: None,
        labels: Default::default(),
        host: None,
    })
}

#[derive(Debug, Clone)]
enum Step {
    Metric { g: u8, r: u8, cpu: f64, dt: u16 },
    Exec { g: u8, r: u8, cmd: u8, dt: u16 },
    Die { g: u8, r: u8, dt: u16 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..3, 0u8..4, 0.0f64..4.0, 0u16..30_000).prop_map(|(g, r, cpu, dt)| Step::Metric { g, r, cpu, dt }),
        1 => (0u8..3, 0u8..4, 0u8..4, 0u16..30_000).prop_map(|(g, r, cmd, dt)| Step::Exec { g, r, cmd, dt }),
        1 => (0u8..3, 0u8..4, 0u16..30_000).prop_map(|(g, r, dt)| Step::Die { g, r, dt }),
    ]
}

fn observations(steps: &[Step]) -> Vec<Observation> {
    let mut t = T0;
    steps
        .iter()
        .map(|s| {
            let (g, r, dt, payload) = match s {
                Step::Metric { g, r, cpu, dt } => {
                    (g, r, dt, Payload::Metrics(vec![("cpu_cores".into(), *cpu)]))
                }
                Step::Exec { g, r, cmd, dt } => (
                    g,
                    r,
                    dt,
                    Payload::Event(Event::Exec {
                        process: format!("/bin/p{cmd}"),
                        args: vec![],
                        user: None,
                    }),
                ),
                Step::Die { g, r, dt } => {
                    (g, r, dt, Payload::Event(Event::Die { exit_code: Some(1) }))
                }
            };
            t += i64::from(*dt);
            Observation {
                ts_ms: t,
                container: container(*g, *r),
                payload,
            }
        })
        .collect()
}

fn config() -> DetectConfig {
    let mut cfg = DetectConfig::default();
    // Short phases and few samples, so that short streams reach every code path.
    cfg.baseline.warmup_ms = 60_000;
    cfg.baseline.learning_period_ms = 600_000;
    cfg.min_samples = 5.0;
    cfg.corroboration_ms = 60_000;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn restore_of_snapshot_continues_exactly_like_the_original(
        steps in proptest::collection::vec(step(), 50..600),
        cut in 0.0f64..1.0,
    ) {
        let obs = observations(&steps);
        let cut = ((obs.len() as f64) * cut) as usize;
        let mut a = Engine::new(config()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut sink = Vec::new();
        for o in &obs[..cut] {
            a.observe(o, &mut sink);
        }
        let snap = a.snapshot().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut b = Engine::restore(config(), &snap).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        for o in &obs[cut..] {
            a.observe(o, &mut out_a);
            b.observe(o, &mut out_b);
        }
        prop_assert_eq!(out_a, out_b);
        // Same state (compared as JSON values: hash-map order is not state).
        let state = |e: &Engine| -> Option<serde_json::Value> {
            serde_json::from_slice(&e.snapshot().ok()?).ok()
        };
        let (sa, sb) = (state(&a), state(&b));
        prop_assert!(sa.is_some() && sa == sb, "states differ after restore");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Issue 3: a partition's groups move to another worker one group at a time
    /// (`herd.baselines`, key = group). The new owner, built only from those exports,
    /// continues exactly like the old one.
    #[test]
    fn groups_exported_one_by_one_continue_on_a_new_engine(
        steps in proptest::collection::vec(step(), 50..600),
        cut in 0.0f64..1.0,
    ) {
        let obs = observations(&steps);
        let cut = ((obs.len() as f64) * cut) as usize;
        let fail = |e: herd_detect::Error| TestCaseError::fail(e.to_string());
        let mut a = Engine::new(config()).map_err(fail)?;
        let mut sink = Vec::new();
        for o in &obs[..cut] {
            a.observe(o, &mut sink);
        }
        let mut b = Engine::new(config()).map_err(fail)?;
        let keys: Vec<String> = a.group_keys().map(str::to_owned).collect();
        for k in &keys {
            let bytes = a.export_group(k).map_err(fail)?;
            prop_assert!(bytes.is_some());
            let got = b.import_group(&bytes.unwrap_or_default()).map_err(fail)?;
            prop_assert_eq!(&got, k);
        }
        prop_assert_eq!(a.stats(), b.stats());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        for o in &obs[cut..] {
            a.observe(o, &mut out_a);
            b.observe(o, &mut out_b);
        }
        prop_assert_eq!(out_a, out_b);
    }
}

#[test]
fn a_removed_group_leaves_nothing_behind() {
    let mut e = Engine::new(config()).expect("config");
    let mut out = Vec::new();
    for o in observations(&[
        Step::Metric {
            g: 1,
            r: 0,
            cpu: 1.0,
            dt: 10,
        },
        Step::Metric {
            g: 2,
            r: 0,
            cpu: 1.0,
            dt: 10,
        },
    ]) {
        e.observe(&o, &mut out);
    }
    assert_eq!(e.stats().groups, 2);
    e.remove_group("img/1:1");
    assert_eq!(e.group_keys().collect::<Vec<_>>(), vec!["img/2:1"]);
    assert_eq!(e.export_group("img/1:1").expect("export"), None);
}
