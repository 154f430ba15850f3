//! Engine behaviour on hand-built observation streams: novelty while learning (with the
//! sibling corroboration window), rules that alert whatever the baseline says, and
//! learning that stays quiet.

use std::collections::BTreeMap;
use std::sync::Arc;

use herd_detect::{Alert, DetectConfig, Detector, Engine, Severity};
use herd_ingest::{ContainerRef, Event, Observation, Payload};

const T0: i64 = 1_795_428_000_000;
const MIN: i64 = 60_000;

fn replicas(n: usize, image: &str) -> Vec<Arc<ContainerRef>> {
    (0..n)
        .map(|i| {
            Arc::new(ContainerRef {
                id: format!("{:064x}", i + 1).into(),
                name: Some(format!("app-{}", i + 1).into()),
                image: image.into(),
                image_digest: Some("sha256:aa".into()),
                labels: Default::default(),
                host: Some("node-1".into()),
            })
        })
        .collect()
}

fn metrics(c: &Arc<ContainerRef>, ts: i64, cpu: f64) -> Observation {
    Observation {
        ts_ms: ts,
        container: Arc::clone(c),
        payload: Payload::Metrics(vec![("cpu_cores".into(), cpu)]),
    }
}

fn event(c: &Arc<ContainerRef>, ts: i64, e: Event) -> Observation {
    Observation {
        ts_ms: ts,
        container: Arc::clone(c),
        payload: Payload::Event(e),
    }
}

fn process(path: &str) -> Event {
    Event::Process {
        process: path.into(),
        args: vec![],
        user: None,
        parent: None,
    }
}

/// A critical Falco rule (drift: a binary the image did not ship) on `c` at `ts`.
fn drift(c: &Arc<ContainerRef>, ts: i64) -> Observation {
    event(
        c,
        ts,
        Event::Falco {
            rule: "Container Drift Detected".into(),
            priority: "Critical".into(),
            process: Some("/tmp/x".into()),
            cmdline: None,
            user: None,
            dest: None,
            tags: vec!["T1036".into(), "container".into()],
        },
    )
}

/// `minutes` of one-per-minute samples from every replica.
fn samples(cs: &[Arc<ContainerRef>], minutes: i64) -> Vec<Observation> {
    (0..minutes)
        .flat_map(|m| {
            cs.iter().enumerate().map(move |(i, c)| {
                metrics(
                    c,
                    T0 + m * MIN + i as i64,
                    0.3 + 0.01 * ((m + i as i64) % 5) as f64,
                )
            })
        })
        .collect()
}

/// Feeds `minutes` of one-per-minute samples from every replica, plus `extra` events.
fn run(
    engine: &mut Engine,
    cs: &[Arc<ContainerRef>],
    minutes: i64,
    extra: &[Observation],
) -> Vec<Alert> {
    let mut all = samples(cs, minutes);
    all.extend_from_slice(extra);
    all.sort_by_key(|o| o.ts_ms);
    let mut out = Vec::new();
    for o in &all {
        engine.observe(o, &mut out);
    }
    out
}

fn engine() -> Engine {
    let mut cfg = DetectConfig::default();
    cfg.baseline.warmup_ms = 30 * MIN;
    cfg.baseline.learning_period_ms = 6 * 60 * MIN;
    Engine::new(cfg).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_item_only_one_replica_shows_is_suspect_even_while_learning() {
    let cs = replicas(5, "shop/app:1");
    let mut e = engine();
    // At 60 min (learning: after warm-up, before lock) app-2 runs something new.
    let odd = event(&cs[1], T0 + 60 * MIN, process("/tmp/.x/xmrig"));
    let out = run(&mut e, &cs, 90, &[odd]);
    assert_eq!(out.len(), 1, "{out:#?}");
    let a = &out[0];
    assert_eq!(a.container_name, "app-2");
    assert_eq!(a.detectors, vec![Detector::Novelty]);
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(a.novel[0].value, "/tmp/.x/xmrig");
    assert_eq!(a.novel[0].replica_support, 0);
    assert_eq!(a.novel[0].phase, "learning");
    // Raised once the corroboration window (10 min) passed without a sibling showing it.
    let ts = herd_ingest::time::parse_rfc3339_ms(&a.ts).unwrap_or(0);
    assert!(ts >= T0 + 70 * MIN, "{}", a.ts);
}

#[test]
fn an_item_siblings_show_within_the_window_is_learned_quietly() {
    let cs = replicas(5, "shop/app:1");
    let mut e = engine();
    // A job that every replica starts, a few minutes apart.
    let job: Vec<Observation> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            event(
                c,
                T0 + (60 + 2 * i as i64) * MIN,
                process("/usr/local/bin/rotate-logs"),
            )
        })
        .collect();
    assert!(run(&mut e, &cs, 90, &job).is_empty());
    let support = e
        .baseline("shop/app@sha256:aa")
        .and_then(|b| {
            b.items.get(
                herd_baseline::ItemKind::Executable,
                "/usr/local/bin/rotate-logs",
            )
        })
        .map(|s| s.support());
    assert_eq!(support, Some(5));
}

#[test]
fn after_learning_a_never_seen_item_is_novel_at_once() {
    let cs = replicas(3, "shop/app:1");
    let mut e = engine();
    let odd = event(
        &cs[0],
        T0 + 400 * MIN,
        Event::Connect {
            dest: "203.0.113.7:4444".into(),
        },
    );
    let out = run(&mut e, &cs, 401, &[odd]);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].severity, Severity::High);
    assert_eq!(out[0].novel[0].phase, "locked");
    assert!(
        out[0].explanation.contains("connected to 203.0.113.7:4444"),
        "{}",
        out[0].explanation
    );
}

#[test]
fn critical_falco_rules_and_privileged_starts_alert_whatever_was_learned() {
    let cs = replicas(3, "shop/app:1");
    let mut e = engine();
    // Seen during warm-up (learned), then again much later: still alerted.
    let extra = [
        drift(&cs[2], T0 + 5 * MIN),
        drift(&cs[2], T0 + 200 * MIN),
        event(
            &cs[1],
            T0 + 210 * MIN,
            Event::Start {
                privileged: Some(true),
            },
        ),
    ];
    let out = run(&mut e, &cs, 220, &extra);
    let falco_alert = out.iter().find(|a| a.container_name == "app-3");
    assert!(
        falco_alert
            .is_some_and(|a| a.detectors.contains(&Detector::Falco) && a.attack == ["T1036"]),
        "{out:#?}"
    );
    let privileged = out.iter().find(|a| a.container_name == "app-2");
    assert!(
        privileged
            .is_some_and(|a| a.detectors == [Detector::Privileged] && a.severity == Severity::High),
        "{out:#?}"
    );
}

#[test]
fn a_lone_replica_running_a_new_exec_while_learning_is_alerted() {
    let cs = replicas(1, "ops/cron:3");
    let mut e = engine();
    let exec = event(
        &cs[0],
        T0 + 60 * MIN,
        Event::Exec {
            process: "/bin/sh".into(),
            args: vec!["-c".into(), "id".into()],
            user: Some("root".into()),
        },
    );
    let out = run(&mut e, &cs, 70, &[exec]);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].detectors, vec![Detector::Exec]);
    assert_eq!(out[0].attack, vec!["T1609".to_owned()]);
}

#[test]
fn invented_images_and_containers_cannot_grow_state_without_bound() {
    let cfg = DetectConfig {
        max_groups: 100,
        max_replicas_per_group: 50,
        ..DetectConfig::default()
    };
    let mut e = Engine::new(cfg).unwrap_or_else(|err| panic!("{err}"));
    let mut out = Vec::new();
    for i in 0..5_000 {
        // A new image every time, and a new container of one image every time.
        let invented = Arc::new(ContainerRef {
            id: format!("g{i}").into(),
            name: None,
            image: format!("junk/{i}:1").into(),
            image_digest: None,
            labels: Default::default(),
            host: None,
        });
        let churn = Arc::new(ContainerRef {
            id: format!("c{i}").into(),
            name: None,
            image: "steady/app:1".into(),
            image_digest: None,
            labels: Default::default(),
            host: None,
        });
        e.observe(&metrics(&invented, T0 + i, 0.1), &mut out);
        e.observe(&metrics(&churn, T0 + i, 0.1), &mut out);
    }
    let s = e.stats();
    assert!(s.groups <= 100, "{s:?}");
    assert!(s.containers <= 100 * 50, "{s:?}");
    assert!(
        e.baseline("steady/app:1").is_some(),
        "the busy group must survive the flood"
    );
}

/// Four features of four replicas, one sample a minute, with a daily-ish load wave;
/// `f(minute, replica)` may change them.
fn fleet_run(
    engine: &mut Engine,
    cs: &[Arc<ContainerRef>],
    minutes: i64,
    f: impl Fn(i64, &mut [f64; 4]),
) -> Vec<Alert> {
    let mut out = Vec::new();
    for m in 0..minutes {
        let load = 1.0 + 0.5 * ((m as f64) / 240.0 * std::f64::consts::TAU).sin();
        for (i, c) in cs.iter().enumerate() {
            let jitter = 1.0 + 0.03 * (((m * 7 + i as i64 * 13) % 11) as f64 / 11.0 - 0.5);
            let mut v = [
                0.2 * load * jitter,
                3e5 * load * jitter,
                9e5 * load * jitter,
                2e8 * jitter,
            ];
            f(m, &mut v);
            let o = Observation {
                ts_ms: T0 + m * MIN + i as i64,
                container: Arc::clone(c),
                payload: Payload::Metrics(vec![
                    ("cpu_cores".into(), v[0]),
                    ("net_rx_bytes_per_s".into(), v[1]),
                    ("net_tx_bytes_per_s".into(), v[2]),
                    ("mem_bytes".into(), v[3]),
                ]),
            };
            engine.observe(&o, &mut out);
        }
    }
    out
}

#[test]
fn a_fleet_wide_surge_is_quiet_and_a_fleet_wide_compromise_is_not() {
    let cs = replicas(4, "shop/app:1");
    let mut cfg = DetectConfig::default();
    cfg.baseline.warmup_ms = 30 * MIN;
    cfg.baseline.learning_period_ms = 8 * 60 * MIN;
    let surge = |m: i64, v: &mut [f64; 4]| {
        if (600..630).contains(&m) {
            v[0] *= 3.0;
            v[1] *= 3.0;
            v[2] *= 3.0;
        }
    };
    let mut quiet = Engine::new(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let out = fleet_run(&mut quiet, &cs, 700, surge);
    assert!(
        out.is_empty(),
        "a surge of the whole fleet alerted: {out:#?}"
    );

    // Every replica mines: CPU triples while the traffic that would explain it does not.
    let mine = |m: i64, v: &mut [f64; 4]| {
        if (600..630).contains(&m) {
            v[0] += 0.8;
        }
    };
    let mut e = Engine::new(cfg).unwrap_or_else(|err| panic!("{err}"));
    let out = fleet_run(&mut e, &cs, 700, mine);
    let fleet: Vec<&Alert> = out
        .iter()
        .filter(|a| a.detectors.contains(&Detector::Fleet))
        .collect();
    assert_eq!(fleet.len(), 1, "{out:#?}");
    let f = &fleet[0].features[0];
    assert_eq!(f.name, "cpu_cores");
    assert!(f.fleet_shift.is_some_and(|s| s > 1.0), "{f:?}");
    assert!(
        fleet[0].explanation.contains("all 4 live replicas"),
        "{}",
        fleet[0].explanation
    );
}

/// A retrained snapshot published before its group's first sample is held and adopted
/// when the group appears; one for a tracked group is adopted at once; the online phase
/// stays the group's own (issue 6).
#[test]
fn retrained_snapshots_are_adopted_now_or_when_their_group_appears_issue_6() {
    let mut engine = Engine::new(DetectConfig::default()).expect("engine");
    let cs = replicas(3, "shop/web:1.4");
    let key = DetectConfig::default().group_by.key(&cs[0]);
    let snap = |until: i64| herd_baseline::retrained::Retrained {
        format: 1,
        group: key.clone(),
        repository: "shop/web".into(),
        trained_at: "2026-11-23T03:00:00Z".into(),
        since_ms: T0 - 3 * 86_400_000,
        until_ms: until,
        first_ms: T0 - 3 * 86_400_000,
        last_ms: until - 1,
        rows: 1000,
        replicas: 3,
        features: BTreeMap::new(),
        structure: None,
    };
    assert_eq!(
        engine.adopt_retrained(snap(T0)),
        None,
        "held: no such group yet"
    );
    run(&mut engine, &cs, 2, &[]);
    let b = engine.baseline(&key).expect("group");
    assert_eq!(b.retrained.as_ref().map(|r| r.until_ms), Some(T0));
    assert_eq!(
        b.phase(T0 + 2 * MIN, &DetectConfig::default().baseline),
        herd_baseline::Phase::Warmup,
        "the snapshot carries no items: the group's own learning decides its phase"
    );
    assert_eq!(
        engine.adopt_retrained(snap(T0 + MIN)),
        Some(herd_baseline::retrained::Adoption::Adopted)
    );
    assert_eq!(
        engine.adopt_retrained(snap(T0)),
        Some(herd_baseline::retrained::Adoption::Stale)
    );
}

/// A daily level: low at night, peaking mid-afternoon (UTC).
fn daily_level(hour: usize) -> f64 {
    0.55 + 0.45 * ((hour as f64 - 9.0) / 24.0 * std::f64::consts::TAU).sin()
}

/// A snapshot of a group whose `cpu_cores` follows [`daily_level`], scattering ±5 %
/// (in slog terms) around its hour's level.
fn daily_snapshot(key: &str) -> herd_baseline::retrained::Retrained {
    use herd_baseline::retrained::{FeatureProfile, Quantiles, Retrained, Seasonal};
    let profile = FeatureProfile {
        count: 20_000,
        quantiles: Quantiles {
            p05: 0.12,
            p25: 0.25,
            p50: 0.55,
            p75: 0.85,
            p95: 0.98,
            p99: 1.0,
        },
        mad: 0.3,
        hour_of_day: (0..24).map(|h| Some(daily_level(h))).collect(),
        day_of_week: vec![None; 7],
        weekday_offset: Vec::new(),
        replica_spread: None,
        seasonal: Some(Seasonal {
            count: 20_000,
            residuals: herd_baseline::Summary {
                q001: -0.2,
                q01: -0.12,
                q10: -0.05,
                q50: 0.0,
                q90: 0.05,
                q99: 0.12,
                q999: 0.2,
            },
        }),
    };
    Retrained {
        format: herd_baseline::retrained::FORMAT,
        group: key.into(),
        repository: "ops/cron".into(),
        trained_at: "2026-11-23T03:00:00Z".into(),
        since_ms: T0 - 7 * 86_400_000,
        until_ms: T0,
        first_ms: T0 - 7 * 86_400_000,
        last_ms: T0 - 1,
        rows: 20_000,
        replicas: 1,
        features: [("cpu_cores".to_owned(), profile)].into(),
        structure: None,
    }
}

/// A lone replica followed through a day from 10:00 UTC, one sample a minute at its
/// hour's level; from 03:00 for ten minutes it runs at the afternoon's peak instead.
fn lone_day(engine: &mut Engine, c: &Arc<ContainerRef>) -> Vec<Alert> {
    let mut out = Vec::new();
    for m in 0..20 * 60 {
        let ts = T0 + m * MIN;
        let hour = (ts.rem_euclid(86_400_000) / 3_600_000) as usize;
        let jitter = 1.0 + 0.02 * ((m * 7 % 11) as f64 / 11.0 - 0.5);
        let cpu = if (17 * 60..17 * 60 + 10).contains(&m) {
            daily_level(15)
        } else {
            daily_level(hour) * jitter
        };
        engine.observe(&metrics(c, ts, cpu), &mut out);
    }
    out
}

/// The retrained daily profile: the afternoon peak is expected at its hour, and the
/// same load at night is not; a lone series is judged by it from its first sample,
/// where the online history alone waits out its learning day (issue 6).
#[test]
fn a_retrained_daily_profile_expects_the_peak_and_flags_it_at_night_issue_6() {
    assert_eq!(T0.rem_euclid(86_400_000) / 3_600_000, 10, "T0 is 10:00 UTC");
    let c = &replicas(1, "ops/cron:3")[0];
    let key = DetectConfig::default().group_by.key(c);

    let mut online = Engine::new(DetectConfig::default()).expect("engine");
    assert!(
        lone_day(&mut online, c).is_empty(),
        "without a profile a lone series is not judged on its first day"
    );

    let mut retrained = Engine::new(DetectConfig::default()).expect("engine");
    assert_eq!(retrained.adopt_retrained(daily_snapshot(&key)), None);
    let out = lone_day(&mut retrained, c);
    assert!(!out.is_empty(), "the night-time peak went unnoticed");
    for a in &out {
        let ts = herd_ingest::time::parse_rfc3339_ms(&a.ts).unwrap_or(0);
        assert!(
            (T0 + 17 * 60 * MIN..T0 + 17 * 60 * MIN + 30 * MIN).contains(&ts),
            "an alert outside the night-time peak (the afternoon must be quiet): {a:#?}"
        );
        assert_eq!(a.detectors, vec![Detector::Baseline], "{a:#?}");
        let f = &a.features[0];
        assert_eq!(f.name, "cpu_cores");
        // The expected range is the hour's (03:00), not the day's.
        let [lo, hi] = f.expected.expect("an expected range");
        assert!(
            lo < daily_level(3) && daily_level(3) < hi && hi < 0.3,
            "{lo}..{hi}"
        );
    }
}

/// A snapshot whose structure ties `cpu_cores` to `net_rx_bytes_per_s` (one load axis,
/// around 0.3 cores and 300 kB/s, a narrow residual off it).
fn load_axis_snapshot(key: &str) -> herd_baseline::retrained::Retrained {
    use herd_baseline::numeric::slog;
    use herd_baseline::structure::{Calibration, Component, Structure};
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let structure = Structure {
        features: vec!["cpu_cores".into(), "net_rx_bytes_per_s".into()],
        center: vec![slog(0.3, 0.01), slog(3e5, 1024.0)],
        scale: vec![0.3, 0.3],
        mean: vec![0.0, 0.0],
        axes: vec![vec![h, h]],
        explained: vec![0.95],
        residual_variance: 0.05,
        components: vec![Component {
            weight: 1.0,
            mean: vec![0.0],
            precision: vec![0.5],
            log_det_precision: 0.5f64.ln(),
        }],
        bic: vec![(1, 0.0)],
        // The score's quantiles for such a Gaussian: χ² with two degrees of freedom.
        calibration: Calibration {
            n: 1000,
            q50: 1.14,
            q90: 3.0,
            q99: 5.3,
            tail_scale: 1.0,
        },
        samples: 4000,
    };
    assert!(structure.is_valid());
    herd_baseline::retrained::Retrained {
        format: herd_baseline::retrained::FORMAT,
        group: key.into(),
        repository: "shop/app".into(),
        trained_at: "2026-11-23T03:00:00Z".into(),
        since_ms: T0 - 86_400_000,
        until_ms: T0,
        first_ms: T0 - 86_400_000,
        last_ms: T0 - 1,
        rows: 8000,
        replicas: 4,
        features: BTreeMap::new(),
        structure: Some(structure),
    }
}

/// Four replicas on the load axis for 50 minutes (the online baseline still warming
/// up: only the structure judges); `f(minute, replica, [cpu, rx])` may change them.
fn axis_run(f: impl Fn(i64, usize, &mut [f64; 2])) -> Vec<Alert> {
    let cs = replicas(4, "shop/app:1");
    let mut engine = Engine::new(DetectConfig::default()).expect("engine");
    let key = DetectConfig::default().group_by.key(&cs[0]);
    engine.adopt_retrained(load_axis_snapshot(&key));
    let mut out = Vec::new();
    for m in 0..50 {
        for (i, c) in cs.iter().enumerate() {
            let jitter = 1.0 + 0.04 * (((m * 7 + i as i64 * 13) % 11) as f64 / 11.0 - 0.5);
            let mut v = [0.3 * jitter, 3e5 * jitter];
            f(m, i, &mut v);
            let o = Observation {
                ts_ms: T0 + m * MIN + i as i64,
                container: Arc::clone(c),
                payload: Payload::Metrics(vec![
                    ("cpu_cores".into(), v[0]),
                    ("net_rx_bytes_per_s".into(), v[1]),
                ]),
            };
            engine.observe(&o, &mut out);
        }
    }
    out
}

/// The structure's peer rule: a move along the load axis that every replica makes is
/// the fleet's (a surge), one that a single replica makes is a finding (in a surge,
/// judged by its offset from where its peers are), and a move off
/// the axis (CPU without the traffic that explains it) is a finding even when every
/// replica makes it (issue 6).
#[test]
fn the_structure_tells_a_fleet_surge_from_one_replica_unlike_its_siblings_issue_6() {
    let during = |m: i64| (20..30).contains(&m);
    let structure_alerts = |out: &[Alert]| -> Vec<String> {
        let names: std::collections::BTreeSet<String> = out
            .iter()
            .filter(|a| a.detectors.contains(&Detector::Structure))
            .map(|a| a.container_name.clone())
            .collect();
        names.into_iter().collect()
    };
    let evidence = |out: &[Alert]| {
        out.iter()
            .flat_map(|a| &a.features)
            .find_map(|f| f.structure)
            .expect("structure evidence")
    };
    assert!(axis_run(|_, _, _| {}).is_empty(), "a quiet fleet alerted");

    let surge = axis_run(|m, _, v| {
        if during(m) {
            v[0] *= 10.0;
            v[1] *= 10.0;
        }
    });
    assert!(
        structure_alerts(&surge).is_empty(),
        "a fleet-wide surge along the load axis: {surge:#?}"
    );

    let one = axis_run(|m, i, v| {
        if during(m) && i == 2 {
            v[0] *= 10.0;
            v[1] *= 10.0;
        }
    });
    assert_eq!(structure_alerts(&one), vec!["app-3"], "{one:#?}");
    let s = evidence(&one);
    assert!(s.off_axis < 0.5 && !s.beside_peers, "on the axis: {s:?}");

    // In a surge, each replica is judged beside its peers: one that surges a little
    // more than its siblings moved with them, one far ahead of them stands out.
    let uneven = axis_run(|m, i, v| {
        if during(m) {
            let k = if i == 2 { 14.0 } else { 10.0 };
            v[0] *= k;
            v[1] *= k;
        }
    });
    assert!(
        structure_alerts(&uneven).is_empty(),
        "a replica moving with a surging fleet: {uneven:#?}"
    );
    let ahead = axis_run(|m, i, v| {
        if during(m) {
            let k = if i == 2 { 100.0 } else { 10.0 };
            v[0] *= k;
            v[1] *= k;
        }
    });
    assert_eq!(structure_alerts(&ahead), vec!["app-3"], "{ahead:#?}");
    let s = evidence(&ahead);
    assert!(
        s.off_axis < 0.5 && s.beside_peers,
        "judged beside its peers: {s:?}"
    );
    let why = ahead
        .iter()
        .find(|a| a.detectors.contains(&Detector::Structure))
        .map(|a| a.explanation.clone())
        .unwrap_or_default();
    assert!(why.contains("which had moved too"), "{why}");

    let mining = axis_run(|m, _, v| {
        if during(m) {
            v[0] *= 10.0;
            v[1] *= 0.5;
        }
    });
    assert_eq!(
        structure_alerts(&mining),
        vec!["app-1", "app-2", "app-3", "app-4"],
        "a fleet-wide move off the axis: {mining:#?}"
    );
    let s = evidence(&mining);
    assert!(s.off_axis > 0.5, "off the axis: {s:?}");
}

/// Each replica's filesystem inventory every five minutes: what every replica writes
/// (a log named by date, a pid file, a cache file of random name, a temp dir) plus
/// `own` for one replica.
fn inventories(
    cs: &[Arc<ContainerRef>],
    from_min: i64,
    until_min: i64,
    odd: usize,
    own: &[&str],
) -> Vec<Observation> {
    let mut out = Vec::new();
    for m in (from_min..until_min).step_by(5) {
        for (i, c) in cs.iter().enumerate() {
            let mut added = vec![
                format!("/var/log/app/2026-12-0{}.log", 1 + i % 3),
                "/run/app.pid".to_owned(),
                format!("/var/cache/app/{:016x}.blob", (i as u64 + 7) * 0x9e37_79b9),
                format!("/tmp/tmp.{}k{}Q{}z", i * 7 + 11, i + 3, i * 13 + 17),
            ];
            let mut changed = vec!["/var/log/app".to_owned()];
            if i == odd {
                for p in own {
                    if let Some(p) = p.strip_prefix("C ") {
                        changed.push(p.to_owned());
                    } else {
                        added.push((*p).to_owned());
                    }
                }
            }
            out.push(event(
                c,
                T0 + m * MIN + 30_000 + i as i64 * 1_000,
                Event::FsChanges {
                    added,
                    changed,
                    deleted: vec![],
                    total: None,
                },
            ));
        }
    }
    out
}

#[test]
fn a_file_one_replica_drops_is_alerted_and_what_every_replica_writes_is_not_issue_10() {
    let cs = replicas(5, "shop/app:1");
    let mut e = engine();
    // From the end of warm-up, inventories; app-3 holds a miner and a changed passwd.
    let inv = inventories(
        &cs,
        30,
        120,
        2,
        &["/tmp/.x", "/tmp/.x/xmrig", "C /etc/passwd"],
    );
    let out = run(&mut e, &cs, 120, &inv);
    assert!(!out.is_empty(), "nothing alerted");
    assert!(
        out.iter().all(|a| a.container_name == "app-3"),
        "a sibling was alerted: {out:#?}"
    );
    let novel: Vec<(&str, &str, usize, usize)> = out
        .iter()
        .flat_map(|a| &a.novel)
        .map(|n| {
            (
                n.kind.as_str(),
                n.value.as_str(),
                n.replica_support,
                n.replicas,
            )
        })
        .collect();
    for (kind, value) in [
        ("file_added", "/tmp/.x"),
        ("file_added", "/tmp/.x/xmrig"),
        ("sensitive_file", "changed /etc/passwd"),
    ] {
        assert!(
            novel.iter().any(|(k, v, support, replicas)| *k == kind
                && *v == value
                && *support == 0
                && *replicas == 5),
            "{kind} {value} not alerted with its replica support: {novel:?}"
        );
    }
    let passwd = out
        .iter()
        .find(|a| a.novel.iter().any(|n| n.kind == "sensitive_file"))
        .unwrap_or_else(|| panic!("no sensitive alert"));
    assert_eq!(passwd.severity, Severity::High);
    assert!(
        passwd
            .explanation
            .contains("/etc/passwd changed, a sensitive path"),
        "{}",
        passwd.explanation
    );
}

#[test]
fn a_process_no_sibling_runs_is_alerted_issue_10() {
    let cs = replicas(4, "shop/app:1");
    let mut e = engine();
    let entry = |p: &str, user: &str| herd_ingest::ProcessEntry {
        process: p.into(),
        user: Some(user.into()),
        parent: None,
    };
    let mut inv = Vec::new();
    for m in (30..120).step_by(5) {
        for (i, c) in cs.iter().enumerate() {
            let mut processes = vec![entry("nginx", "root"), entry("nginx", "www-data")];
            if i == 1 && m >= 60 {
                processes.push(entry("kdevtmpfsi", "www-data"));
            }
            inv.push(event(
                c,
                T0 + m * MIN + 45_000 + i as i64,
                Event::Processes {
                    processes,
                    total: None,
                },
            ));
        }
    }
    let out = run(&mut e, &cs, 120, &inv);
    assert_eq!(out.len(), 1, "{out:#?}");
    let a = &out[0];
    assert_eq!(a.container_name, "app-2");
    assert_eq!(a.novel[0].kind, "process");
    assert_eq!(a.novel[0].value, "kdevtmpfsi");
    assert_eq!(a.novel[0].replica_support, 0);
    assert!(
        a.explanation.contains("was running process `kdevtmpfsi`"),
        "{}",
        a.explanation
    );
}

/// Replicas that see the same broadcast packet a second, one of which stops seeing it,
/// and then one that sends forty times as many: the first is a difference of one
/// packet a second (the metric's resolution), noise; the second is not.
#[test]
fn a_replica_one_resolution_unit_from_its_peers_is_quiet_and_one_far_from_them_is_not() {
    let cs = replicas(5, "shop/quiet:1");
    let run = |odd: fn(i64) -> Option<f64>| {
        let mut e = engine();
        let mut out = Vec::new();
        for m in 0..8 * 60 {
            for (i, c) in cs.iter().enumerate() {
                let pps = match (i, odd(m)) {
                    (0, Some(v)) => v,
                    _ => 1.0 + 0.004 * ((m + i as i64) % 3) as f64,
                };
                let o = Observation {
                    ts_ms: T0 + m * MIN + i as i64,
                    container: Arc::clone(c),
                    payload: Payload::Metrics(vec![
                        ("cpu_cores".into(), 0.2),
                        ("net_rx_packets_per_s".into(), pps),
                    ]),
                };
                e.observe(&o, &mut out);
            }
        }
        out
    };
    let missed = run(|m| (m >= 7 * 60).then_some(0.0));
    assert!(missed.is_empty(), "a missed broadcast alerted: {missed:#?}");
    let loud = run(|m| (m >= 7 * 60).then_some(40.0));
    assert!(
        loud.iter().any(|a| a.detectors.contains(&Detector::Peer)
            && a.features.iter().any(|f| f.name == "net_rx_packets_per_s")),
        "{loud:#?}"
    );
}

/// A quiet incident closes when its quiet time is over, by the stream's event time,
/// however few samples the stream brings: three replicas sampled once a minute (a small
/// deployment, three observations a minute) close one within a minute of it. Until
/// then the container has an open incident (evidence capture on `die` asks), and after
/// it none.
#[test]
fn a_quiet_incident_closes_on_time_in_a_slow_stream() {
    let cs = replicas(3, "shop/app:1");
    let mut e = engine();
    // Two hours of samples; each incident closed, and whether the attacked replica has
    // an open one, as of each observation.
    let mut all = samples(&cs, 120);
    all.push(drift(&cs[2], T0 + 5 * MIN + 30_000));
    all.sort_by_key(|o| o.ts_ms);
    let (mut out, mut closed, mut open) = (Vec::new(), Vec::new(), Vec::new());
    for o in &all {
        e.observe(o, &mut out);
        closed.extend(e.take_closed().map(|c| (o.ts_ms, c)));
        open.push((o.ts_ms, e.has_open_incident(&cs[2].id)));
    }
    let alert = out
        .iter()
        .find(|a| a.container_name == "app-3")
        .unwrap_or_else(|| panic!("no alert: {out:#?}"));
    let [(at, c)] = closed.as_slice() else {
        panic!("one incident closed, not {closed:#?}");
    };
    assert_eq!(c.incident_id, alert.incident_id);
    assert_eq!(c.container_id, &*cs[2].id);
    // Its quiet time after its one finding: thirty of the container's own intervals
    // (a minute each), longer than the fixed quiet time.
    let cfg = DetectConfig::default();
    let quiet_ms = cfg
        .incident_quiet_ms
        .max(MIN * i64::from(cfg.incident_quiet_samples));
    assert_eq!(quiet_ms, 30 * MIN);
    assert_eq!(c.closed_ms, T0 + 5 * MIN + 30_000 + quiet_ms);
    assert!(
        *at > c.closed_ms && *at <= c.closed_ms + MIN,
        "closed at {at}, quiet from {}",
        c.closed_ms
    );
    for (ts, open) in open {
        assert_eq!(
            open,
            (T0 + 5 * MIN + 30_000..*at).contains(&ts),
            "open incident at {ts}"
        );
    }
}
