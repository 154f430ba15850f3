//! Baseline invariants: restore(snapshot(s)) behaves like s; merging is associative.

use herd_baseline::{BaselineConfig, GroupBaseline, ItemKind, TailSketch, Tails, snapshot};
use proptest::prelude::*;

fn group_from(samples: &[(f64, u32)], items: &[(u8, u8)]) -> GroupBaseline {
    let cfg = BaselineConfig::default();
    let mut g = GroupBaseline::new("g", "repo", 0);
    for (i, (x, dt)) in samples.iter().enumerate() {
        let ts = i as i64 * 10_000 + i64::from(*dt);
        if let Some(f) = g.feature_mut(if i % 3 == 0 { "cpu_cores" } else { "custom" }, &cfg) {
            f.values.insert(*x, ts, 1.0);
            f.steps.insert(x.abs(), ts, 1.0);
            f.peer_dev.insert(*x / 10.0, ts, 1.0);
        }
    }
    for (i, (item, replica)) in items.iter().enumerate() {
        g.items.observe(
            ItemKind::Executable,
            &format!("/bin/p{item}"),
            u64::from(*replica),
            i as i64,
            cfg.max_items,
        );
    }
    g
}

fn sketch_from(xs: &[f64], t0: i64) -> TailSketch {
    let mut s = TailSketch::new(86_400_000);
    for (i, x) in xs.iter().enumerate() {
        s.insert(*x, t0 + i as i64 * 1000, 1.0);
    }
    s
}

proptest! {
    #[test]
    fn restore_of_snapshot_behaves_like_the_original(
        samples in proptest::collection::vec((-1e6f64..1e6, 0u32..5000), 1..300),
        items in proptest::collection::vec((0u8..20, 0u8..8), 0..50),
        probes in proptest::collection::vec(-2e6f64..2e6, 1..20),
    ) {
        let cfg = BaselineConfig::default();
        let mut g = group_from(&samples, &items);
        let bytes = snapshot::encode(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut r = snapshot::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&r, &g);
        for name in ["cpu_cores", "custom"] {
            let (Some(a), Some(b)) = (g.feature_mut(name, &cfg), r.feature_mut(name, &cfg)) else {
                continue;
            };
            for p in &probes {
                prop_assert_eq!(a.value_surprise(*p), b.value_surprise(*p));
                prop_assert_eq!(a.step_surprise(p.abs()), b.step_surprise(p.abs()));
            }
        }
        // And they keep behaving alike as learning goes on.
        for (i, p) in probes.iter().enumerate() {
            let ts = 10_000_000 + i as i64;
            if let (Some(a), Some(b)) = (g.feature_mut("custom", &cfg), r.feature_mut("custom", &cfg)) {
                a.values.insert(*p, ts, 1.0);
                b.values.insert(*p, ts, 1.0);
                prop_assert_eq!(a.value_surprise(*p * 2.0), b.value_surprise(*p * 2.0));
            }
        }
    }

    #[test]
    fn merging_sketches_is_associative(
        a in proptest::collection::vec(-1e4f64..1e4, 1..200),
        b in proptest::collection::vec(-1e4f64..1e4, 1..200),
        c in proptest::collection::vec(-1e4f64..1e4, 1..200),
    ) {
        let (sa, sb, sc) = (sketch_from(&a, 0), sketch_from(&b, 500_000), sketch_from(&c, 50_000));
        let mut left = sa.clone();
        left.merge(&sb);
        left.merge(&sc);
        let mut bc = sb.clone();
        bc.merge(&sc);
        let mut right = sa.clone();
        right.merge(&bc);
        prop_assert!((left.count() - right.count()).abs() < 1e-6 * left.count().max(1.0));
        for q in [0.01, 0.1, 0.5, 0.9, 0.99] {
            prop_assert_eq!(left.quantile(q), right.quantile(q));
        }
        let mut l2 = left.clone();
        let mut r2 = right.clone();
        for x in [-2e4, 0.0, 3e3, 2e4] {
            let (sl, sr) = (l2.surprise(x, Tails::Both, 1.0), r2.surprise(x, Tails::Both, 1.0));
            prop_assert!((sl - sr).abs() < 1e-6, "{} vs {}", sl, sr);
        }
    }
}
