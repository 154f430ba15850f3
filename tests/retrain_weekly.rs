//! The retrain's weekly view (issue 6): over two weeks of history, a service that is
//! quiet at weekends gets a weekday offset from its daily profile, so that a Saturday
//! at Saturday's level is expected and the same Saturday at a Wednesday's load is not;
//! a window holding each weekday only once gives no weekly view at all.

mod support;

use std::io::Write as _;
use std::path::Path;

use herd::retrain::Retrained;
use support::broker::herd;
use support::fleet::{replay_to_archive, workdir};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// 2026-11-02T00:00:00Z, a Monday.
const MONDAY: i64 = 1_793_577_600_000;

/// CPU of the synthetic service: a daily curve (busiest mid-afternoon), 40 % of it on
/// Saturdays and Sundays, ±5 % noise.
fn cpu_at(ts: i64, noise: f64) -> f64 {
    let hour = (ts.rem_euclid(DAY) / HOUR) as f64;
    let daily = 0.3 + 0.9 * (-(hour - 15.0).powi(2) / 18.0).exp();
    let weekend = matches!(herd_baseline::retrained::weekday(ts), 0 | 6);
    daily * if weekend { 0.4 } else { 1.0 } * (1.0 + 0.05 * noise)
}

/// `days` days of four replicas of `shop/api`, one native sample each every five
/// minutes, from `MONDAY`.
fn weekly_fleet(path: &Path, days: i64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("fleet file"));
    // A fixed linear congruential sequence: the same history every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut noise = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut ts = MONDAY;
    while ts < MONDAY + days * DAY {
        for r in 0..4 {
            let line = serde_json::json!({
                "ts": ts,
                "host": format!("node-{r}"),
                "container_id": format!("{:064x}", 0xa91_u64 + r),
                "container_name": format!("api-{r}"),
                "image": "shop/api:2.0",
                "metrics": {
                    "cpu_cores": cpu_at(ts, noise()),
                    "mem_bytes": 2.0e8 * (1.0 + 0.02 * noise()),
                },
            });
            writeln!(f, "{line}").expect("write");
        }
        ts += 5 * 60_000;
    }
    f.flush().expect("flush");
}

fn retrain(archive: &Path, out: &Path, since: &str, until_ms: i64) -> Retrained {
    let st = herd()
        .args(["retrain", "--archive"])
        .arg(format!("file://{}", archive.display()))
        .args(["--since", since, "--until", &until_ms.to_string(), "--out"])
        .arg(out)
        .output()
        .expect("herd retrain");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let file = std::fs::read_dir(out)
        .expect("out dir")
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("a snapshot");
    Retrained::parse(&std::fs::read(file.path()).expect("read")).expect("parse")
}

#[test]
fn a_quiet_weekend_is_expected_at_weekends_only_issue_6() {
    let dir = workdir("retrain-weekly");
    let fleet = dir.join("api.jsonl");
    weekly_fleet(&fleet, 15);
    let archive = dir.join("archive");
    replay_to_archive(std::slice::from_ref(&fleet), &archive);
    let end = MONDAY + 15 * DAY;

    let snap = retrain(&archive, &dir.join("two-weeks"), "15d", end);
    let cpu = &snap.features["cpu_cores"];
    let res = herd_baseline::numeric::resolution_of("cpu_cores");
    let off = &cpu.weekday_offset;
    assert_eq!(off.len(), 7, "{off:?}");
    // Saturday and Sunday sit at 40 % of the daily profile (its level is the weekdays':
    // they are most of the window); the weekdays on it.
    for d in [0, 6] {
        let o = off[d].expect("a weekend offset");
        assert!((-1.1..-0.6).contains(&o), "weekday {d}: {o}");
    }
    for (d, o) in off.iter().enumerate().take(6).skip(1) {
        let o = o.expect("a weekday offset");
        assert!(o.abs() < 0.1, "weekday {d}: {o}");
    }
    // The residuals are taken around hour and weekday: the weekend is not in their
    // tails (around the hour alone, a tenth of them would sit near -0.9).
    let r = cpu.seasonal.expect("residuals").residuals;
    assert!(r.q01 > -0.3 && r.q99 < 0.3, "{r:?}");

    // A Saturday and a Wednesday afternoon a week after the window.
    let (sat, wed) = (end + 5 * DAY + 15 * HOUR, end + 2 * DAY + 15 * HOUR);
    let (sat_level, wed_level) = (
        cpu.level_at(sat, res).expect("Saturday's level"),
        cpu.level_at(wed, res).expect("Wednesday's level"),
    );
    assert!(
        (0.3..0.55).contains(&(sat_level / wed_level)),
        "{sat_level} vs {wed_level}"
    );
    let surprise = |x: f64, ts: i64| {
        cpu.seasonal_surprise(x, ts, res, 0.02)
            .expect("judged by the profile")
    };
    assert!(
        surprise(sat_level, sat) < 1.5,
        "{}",
        surprise(sat_level, sat)
    );
    assert!(
        surprise(wed_level, sat) > 4.0,
        "{}",
        surprise(wed_level, sat)
    );
    assert!(
        surprise(sat_level, wed) > 4.0,
        "{}",
        surprise(sat_level, wed)
    );
    let (lo, hi) = cpu.band_at(sat, res).expect("Saturday's band");
    assert!(
        lo < sat_level && sat_level < hi && hi < wed_level,
        "{lo}..{hi}"
    );

    // Two days hold each of their weekdays once: no weekly view, and the daily profile
    // is judged as before.
    let short = retrain(&archive, &dir.join("two-days"), "2d", end);
    let cpu = &short.features["cpu_cores"];
    assert!(cpu.weekday_offset.is_empty(), "{:?}", cpu.weekday_offset);
    assert!(cpu.seasonal.is_some() && cpu.hour_level_at(sat).is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
