//! Analysts' verdicts change later detection as `herd feedback` states: behaviour judged
//! benign raises nothing when it comes back; items judged malicious are raised on every
//! replica that shows them (the catalog alone would let the first replica vouch for the
//! rest); unusual values judged malicious are never learned. Each case runs the same
//! recorded stream with and without the verdict.

use std::sync::Arc;

use herd_baseline::Verdict;
use herd_detect::{Alert, DetectConfig, Detector, Engine, Feedback, FeedbackOutcome};
use herd_ingest::{ContainerRef, Event, Observation, Payload};

const T0: i64 = 1_795_428_000_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn replicas(n: usize) -> Vec<Arc<ContainerRef>> {
    (0..n)
        .map(|i| {
            Arc::new(ContainerRef {
                id: format!("{:064x}", i + 1).into(),
                name: Some(format!("web-{}", i + 1).into()),
                image: "shop/web:1".into(),
                image_digest: Some("sha256:aa".into()),
                labels: Default::default(),
                host: Some("node-1".into()),
            })
        })
        .collect()
}

/// Replica `r`'s CPU at minute `m`: a steady 0.3 cores with a little deterministic jitter.
fn usual(r: usize, m: i64) -> f64 {
    let h = (m as u64 ^ (r as u64) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    0.3 * (1.0 + 0.05 * ((h % 1000) as f64 / 500.0 - 1.0))
}

/// One sample a minute from every replica from `from` to `to` (event time), CPU from
/// `cpu(replica, minute, usual)`, then the events due in each minute.
fn run(
    e: &mut Engine,
    cs: &[Arc<ContainerRef>],
    (from, to): (i64, i64),
    cpu: &dyn Fn(usize, i64, f64) -> f64,
    events: &[(i64, usize, Event)],
) -> Vec<Alert> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let m = (t - T0) / MIN;
        for (r, c) in cs.iter().enumerate() {
            let x = cpu(r, m, usual(r, m));
            e.observe(
                &Observation {
                    ts_ms: t + r as i64 * 100,
                    container: Arc::clone(c),
                    payload: Payload::Metrics(vec![("cpu_cores".into(), x)]),
                },
                &mut out,
            );
        }
        for (at, r, ev) in events.iter().filter(|(at, ..)| (t..t + MIN).contains(at)) {
            e.observe(
                &Observation {
                    ts_ms: *at,
                    container: Arc::clone(&cs[*r]),
                    payload: Payload::Event(ev.clone()),
                },
                &mut out,
            );
        }
        t += MIN;
    }
    out
}

fn process(path: &str) -> Event {
    Event::Process {
        process: path.into(),
        args: vec![],
        user: None,
        parent: None,
    }
}

fn engine() -> Engine {
    Engine::new(DetectConfig::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every alert line of the incident of the first alert that matches.
fn incident_of(alerts: &[Alert], pick: impl Fn(&Alert) -> bool) -> Vec<Alert> {
    let first = alerts
        .iter()
        .find(|a| pick(a))
        .unwrap_or_else(|| panic!("no such alert among {alerts:#?}"));
    alerts
        .iter()
        .filter(|a| a.incident_id == first.incident_id)
        .cloned()
        .collect()
}

/// A day and two hours of ordinary behaviour: the group is locked.
fn learned(cs: &[Arc<ContainerRef>]) -> Engine {
    let mut e = engine();
    let alerts = run(&mut e, cs, (T0, T0 + 26 * HOUR), &|_, _, x| x, &[]);
    assert!(
        alerts.is_empty(),
        "ordinary behaviour is quiet: {alerts:#?}"
    );
    e
}

#[test]
fn behaviour_judged_benign_raises_nothing_when_it_comes_back() {
    let cs = replicas(5);
    // Replica 1 runs a heavy job for half an hour, twice, four hours apart.
    let job = |start: i64| {
        move |r: usize, m: i64, x: f64| {
            let t = T0 + m * MIN;
            if r == 0 && (start..start + 30 * MIN).contains(&t) {
                2.0 + x
            } else {
                x
            }
        }
    };
    let first = (T0 + 26 * HOUR, T0 + 28 * HOUR);
    let second = (T0 + 30 * HOUR, T0 + 32 * HOUR);

    let mut control = learned(&cs);
    let a1 = run(&mut control, &cs, first, &job(first.0), &[]);
    let incident = incident_of(&a1, |a| a.detectors.contains(&Detector::Peer));
    let a2 = run(&mut control, &cs, second, &job(second.0), &[]);
    assert!(
        a2.iter().any(|a| a.container_id == incident[0].container_id
            && a.incident_id != incident[0].incident_id),
        "without a verdict, the job raises a new incident when it comes back: {a2:#?}"
    );

    let mut taught = learned(&cs);
    let b1 = run(&mut taught, &cs, first, &job(first.0), &[]);
    assert_eq!(a1, b1);
    let fb = Feedback::from_alerts(
        &incident,
        Verdict::Benign,
        "alice",
        Some("the nightly reindex"),
        first.1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        taught.apply_feedback(&fb).unwrap_or_else(|e| panic!("{e}")),
        FeedbackOutcome::Applied(1)
    );
    assert_eq!(
        taught.apply_feedback(&fb).unwrap_or_else(|e| panic!("{e}")),
        FeedbackOutcome::Repeated
    );
    let b2 = run(&mut taught, &cs, second, &job(second.0), &[]);
    assert!(
        b2.is_empty(),
        "the job judged benign is expected now: {b2:#?}"
    );

    // The audit record says who taught it, when and why; it survives a checkpoint.
    let group = incident[0].group.clone();
    let bytes = taught
        .export_group(&group)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the group is held"));
    let mut restored = engine();
    restored
        .import_group(&bytes)
        .unwrap_or_else(|e| panic!("{e}"));
    let trail = restored
        .baseline(&group)
        .map(|b| b.verdicts.audit().to_vec())
        .unwrap_or_default();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].by, "alice");
    assert_eq!(trail[0].at_ms, first.1);
    assert_eq!(trail[0].note.as_deref(), Some("the nightly reindex"));
    assert_eq!(trail[0].incident_id, incident[0].incident_id);

    // Values far beyond what was taught are still raised.
    let far = |r: usize, m: i64, x: f64| {
        if r == 0 && (33 * 60..33 * 60 + 30).contains(&m) {
            8.0 + x
        } else {
            x
        }
    };
    let b3 = run(
        &mut taught,
        &cs,
        (T0 + 33 * HOUR, T0 + 34 * HOUR),
        &far,
        &[],
    );
    assert!(
        b3.iter()
            .any(|a| a.features.iter().any(|f| f.name == "cpu_cores")),
        "only the behaviour taught became expected: {b3:#?}"
    );
}

#[test]
fn an_item_judged_malicious_is_raised_on_every_replica_that_shows_it() {
    let cs = replicas(5);
    let at = |h: i64| T0 + h * HOUR + 30_000;
    let first = (T0 + 26 * HOUR, T0 + 27 * HOUR);
    let later = (T0 + 27 * HOUR, T0 + 29 * HOUR);
    let spread = [
        (at(27), 2, process("/tmp/.x/xmrig")),
        (at(28), 3, process("/tmp/.x/xmrig")),
    ];

    let mut control = learned(&cs);
    let a1 = run(
        &mut control,
        &cs,
        first,
        &|_, _, x| x,
        &[(at(26), 1, process("/tmp/.x/xmrig"))],
    );
    let incident = incident_of(&a1, |a| a.detectors.contains(&Detector::Novelty));
    let a2 = run(&mut control, &cs, later, &|_, _, x| x, &spread);
    assert!(
        a2.is_empty(),
        "without a verdict, the first replica vouches for its siblings: {a2:#?}"
    );

    let mut marked = learned(&cs);
    run(
        &mut marked,
        &cs,
        first,
        &|_, _, x| x,
        &[(at(26), 1, process("/tmp/.x/xmrig"))],
    );
    let fb = Feedback::from_alerts(&incident, Verdict::Malicious, "bob", None, first.1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fb.items.len(), 1);
    marked.apply_feedback(&fb).unwrap_or_else(|e| panic!("{e}"));
    let b2 = run(&mut marked, &cs, later, &|_, _, x| x, &spread);
    let hit: Vec<&str> = b2.iter().map(|a| a.container_name.as_str()).collect();
    assert_eq!(hit, ["web-3", "web-4"], "{b2:#?}");
    for a in &b2 {
        assert_eq!(
            a.novel[0].marked.as_deref(),
            Some(&*incident[0].incident_id)
        );
        assert!(
            a.explanation.contains("judged malicious"),
            "{}",
            a.explanation
        );
    }

    // A later benign verdict on the same behaviour lifts the mark.
    let fb = Feedback::from_alerts(&incident, Verdict::Benign, "carol", None, later.1)
        .unwrap_or_else(|e| panic!("{e}"));
    marked.apply_feedback(&fb).unwrap_or_else(|e| panic!("{e}"));
    let b3 = run(
        &mut marked,
        &cs,
        (later.1, later.1 + HOUR),
        &|_, _, x| x,
        &[(later.1 + 90_000, 4, process("/tmp/.x/xmrig"))],
    );
    assert!(b3.is_empty(), "{b3:#?}");
}

#[test]
fn unusual_values_judged_malicious_are_never_learned_even_fleet_wide() {
    let cs = replicas(5);
    let miner = |from: i64, to: i64, who: &'static [usize]| {
        move |r: usize, m: i64, x: f64| {
            let t = T0 + m * MIN;
            if who.contains(&r) && (from..to).contains(&t) {
                1.6 + x
            } else {
                x
            }
        }
    };
    let first = (T0 + 26 * HOUR, T0 + 27 * HOUR);
    // Then every replica mines for three hours: a fleet-wide move, which the group's
    // history adopts slowly unless it was judged malicious.
    let fleet = (T0 + 27 * HOUR, T0 + 30 * HOUR);
    // The group's usual upper level: the 99th percentile of its history.
    let q99 = |e: &Engine| {
        e.baseline(e.group_keys().next().unwrap_or_default())
            .and_then(|b| b.feature("cpu_cores"))
            .and_then(|f| f.values.quantile(0.99))
            .unwrap_or(f64::NAN)
    };

    let mut control = learned(&cs);
    let a1 = run(
        &mut control,
        &cs,
        first,
        &miner(first.0, first.1, &[0]),
        &[],
    );
    let incident = incident_of(&a1, |a| a.detectors.contains(&Detector::Peer));
    let mut marked = Engine::restore(
        DetectConfig::default(),
        &control.snapshot().unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fb = Feedback::from_alerts(&incident, Verdict::Malicious, "bob", None, first.1)
        .unwrap_or_else(|e| panic!("{e}"));
    marked.apply_feedback(&fb).unwrap_or_else(|e| panic!("{e}"));

    let all: &'static [usize] = &[0, 1, 2, 3, 4];
    let before = q99(&control);
    assert!(before < 0.5, "{before}");
    run(&mut control, &cs, fleet, &miner(fleet.0, fleet.1, all), &[]);
    run(&mut marked, &cs, fleet, &miner(fleet.0, fleet.1, all), &[]);
    assert!(
        q99(&control) > 1.0,
        "without a verdict the fleet-wide level is adopted, slowly: {}",
        q99(&control)
    );
    assert!(
        (q99(&marked) - before).abs() < 0.01,
        "judged malicious, it is not learned at all: {} vs {before}",
        q99(&marked)
    );
}
