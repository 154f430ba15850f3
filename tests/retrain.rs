//! `herd retrain` over simulated history (issue 6): a two-day fleet archived by
//! `herd replay`, retrained with DataFusion; the snapshots hold sane robust statistics
//! (checked against exact ones), the daily curve of the web tier, the spread between
//! replicas; they are written as files (a second run reports nothing changed) and
//! published to Kafka keyed by repository, where a running worker adopts them.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd::retrain::Retrained;
use support::broker::{Broker, Names, Worker, consume, herd};
use support::fleet::{FILES, produce_window, replay_to_archive, workdir};
use support::monitoring::eventually;

fn labels_window(dir: &Path) -> (i64, i64) {
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("labels.json")).expect("labels"))
            .expect("labels");
    let t = |k: &str| {
        herd_ingest::time::parse_rfc3339_ms(labels[k].as_str().expect("time")).expect("time")
    };
    (t("start"), t("end"))
}

/// The first value under `key` anywhere in a JSON document.
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

fn snapshots(dir: &Path) -> BTreeMap<String, Retrained> {
    std::fs::read_dir(dir)
        .expect("out dir")
        .flatten()
        .map(|e| {
            let s = Retrained::parse(&std::fs::read(e.path()).expect("read")).expect("parse");
            (s.group.clone(), s)
        })
        .collect()
}

/// Exact medians per (group, feature) from the archive, with DataFusion's `median`.
fn exact_medians(archive: &Path) -> BTreeMap<(String, String), f64> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        let schema = herd::archive::schema();
        let opts = datafusion::prelude::ParquetReadOptions::default().schema(&schema);
        ctx.register_parquet("obs", &format!("{}/", archive.display()), opts)
            .await
            .expect("register");
        let batches = ctx
            .sql(
                "SELECT \"group\" AS g, feature, CAST(median(value) AS DOUBLE) AS m FROM obs \
                 WHERE feature IS NOT NULL GROUP BY \"group\", feature",
            )
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let mut out = BTreeMap::new();
        for b in batches {
            use datafusion::arrow::array::{Array, Float64Array, StringArray};
            use datafusion::arrow::compute::cast;
            use datafusion::arrow::datatypes::DataType;
            let g = cast(b.column(0), &DataType::Utf8).expect("cast");
            let f = cast(b.column(1), &DataType::Utf8).expect("cast");
            let g = g.as_any().downcast_ref::<StringArray>().expect("g");
            let f = f.as_any().downcast_ref::<StringArray>().expect("f");
            let m = b
                .column(2)
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("m");
            for i in 0..b.num_rows() {
                if m.is_valid(i) {
                    out.insert((g.value(i).to_owned(), f.value(i).to_owned()), m.value(i));
                }
            }
        }
        out
    })
}

#[test]
fn retrain_learns_robust_statistics_profiles_and_spread_from_the_archive_issue_6() {
    let dir = workdir("retrain");
    herd::simulate::simulate(
        &herd::simulate::SimConfig {
            seed: 5,
            hours: 48,
            interval_s: 60,
            recur_after_h: None,
        },
        &dir.join("fleet"),
    )
    .expect("simulate");
    let files: Vec<PathBuf> = FILES.iter().map(|f| dir.join("fleet").join(f)).collect();
    let (start, end) = labels_window(&dir.join("fleet"));
    let archive = dir.join("archive");
    replay_to_archive(&files, &archive);

    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("retrain");
    let snaps = dir.join("snapshots");
    let retrain = |publish: bool| {
        let mut cmd = herd();
        cmd.arg("retrain")
            .args(["--archive", &format!("file://{}", archive.display())])
            .args(["--since", "49h", "--until", &(end + 3_600_000).to_string()])
            .args(["--memory-mb", "64"])
            .arg("--out")
            .arg(&snaps)
            .envs(names.env(&broker));
        if publish {
            cmd.arg("--publish");
        }
        let out = cmd.output().expect("herd retrain");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    let summary = retrain(false);
    assert!(summary.contains("herd retrain:"), "{summary}");
    assert!(summary.contains("new"), "{summary}");

    let s = snapshots(&snaps);
    assert!(s.len() >= 5, "{:?}", s.keys().collect::<Vec<_>>());
    let exact = exact_medians(&archive);
    for (g, r) in &s {
        assert_eq!(r.format, herd::retrain::snapshot::FORMAT);
        assert!(r.rows > 0 && r.replicas >= 1, "{g}");
        assert!(
            r.first_ms >= start - 60_000 && r.last_ms <= end + 60_000,
            "{g}"
        );
        assert!(
            !r.repository.is_empty() && !r.repository.contains('@'),
            "{g}"
        );
        for (f, p) in &r.features {
            let q = p.quantiles;
            let ordered = [q.p05, q.p25, q.p50, q.p75, q.p95, q.p99];
            assert!(
                ordered.windows(2).all(|w| w[0] <= w[1] + 1e-9),
                "{g} {f}: {ordered:?}"
            );
            assert!(p.mad >= 0.0, "{g} {f}: mad {}", p.mad);
            // The approximate median against the exact one.
            let m = exact[&(g.clone(), f.clone())];
            let tol = (0.05 * m.abs()).max(0.02 * (q.p95 - q.p05).abs()).max(1e-9);
            assert!((q.p50 - m).abs() <= tol, "{g} {f}: {} vs exact {m}", q.p50);
        }
    }
    // The web tier's daily curve: busier mid-afternoon than at night (UTC).
    let web = s
        .values()
        .filter(|r| r.repository == "shop/web")
        .max_by_key(|r| r.rows)
        .expect("shop/web");
    let cpu = &web.features["cpu_cores"];
    let hours: Vec<f64> = cpu.hour_of_day.iter().flatten().copied().collect();
    assert!(hours.len() >= 20, "{:?}", cpu.hour_of_day);
    let (lo, hi) = hours
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(hi > 2.0 * lo, "daily curve {lo}..{hi}");
    assert!(cpu.day_of_week.iter().flatten().count() >= 2);
    // Around its hour's level a value scatters far less than over the whole day: the
    // daily profile explains the curve, so the afternoon peak is expected at its hour
    // and the same load at night is not.
    let seasonal = cpu.seasonal.expect("residuals around the daily profile");
    let r = seasonal.residuals;
    assert!(seasonal.count > 1000, "{seasonal:?}");
    assert!(r.q01 < 0.0 && r.q50.abs() < 0.05 && 0.0 < r.q99, "{r:?}");
    let day_range = herd_baseline::numeric::slog(cpu.quantiles.p95, 0.01)
        - herd_baseline::numeric::slog(cpu.quantiles.p05, 0.01);
    // (The body: this archive holds day 2's attacks and surge too, in the far tails.)
    assert!(r.q90 - r.q10 < 0.5 * day_range, "{r:?} vs {day_range}");
    let midnight = start - start.rem_euclid(86_400_000);
    let (afternoon, night) = (midnight + 15 * 3_600_000, midnight + 3 * 3_600_000);
    let peak = cpu.level_at(afternoon, 0.01).expect("a level at 15:00");
    let at = |ts: i64| cpu.seasonal_surprise(peak, ts, 0.01, 0.02).expect("judged");
    // (Night's tail is wide here: the window holds a miner's night on one replica.)
    assert!(
        at(afternoon) < 1.0 && at(night) > at(afternoon) + 2.0,
        "{} {}",
        at(afternoon),
        at(night)
    );
    // Six replicas sampled together: their spread is known, and smaller than the
    // fleet's whole range.
    let spread = cpu.replica_spread.expect("spread of shop/web");
    assert!(
        spread > 0.0 && spread < cpu.quantiles.p99 - cpu.quantiles.p05,
        "{spread}"
    );

    // A running worker that has seen only the fleet's last hour (its groups warming
    // up) when the snapshots are published adopts them without a restart: its
    // checkpoints then carry each snapshot, and the groups' own learning start stays.
    let worker = Worker::start(&names, &broker, dir.join("worker.log"));
    produce_window(&names, &broker, &files, Some(end - 3_600_000), None);
    broker.wait_caught_up(&names, Duration::from_secs(120));

    // Again, and published: nothing moved; every snapshot on the topic, keyed by its
    // repository.
    let again = retrain(true);
    assert!(
        again.contains("unchanged") && !again.contains(" new"),
        "{again}"
    );
    let published = consume(&names, &broker, &names.topic("retrained"));
    assert_eq!(published.len(), s.len());
    for r in &published {
        let snap: Retrained = serde_json::from_value(r["payload"].clone()).expect("snapshot");
        assert_eq!(r["key"].as_str(), Some(snap.repository.as_str()));
        assert!(s.contains_key(&snap.group));
    }
    let web_key = web.group.clone();
    eventually(Duration::from_secs(60), "the worker to adopt", || {
        consume(&names, &broker, &names.topic("baselines"))
            .into_iter()
            .rev()
            .find(|r| r["key"].as_str() == Some(web_key.as_str()))
            .and_then(|r| find_key(&r["payload"], "retrained").cloned())
            .filter(|v| v.get("until_ms").is_some())
            .map(|_| ())
    });
    let cp = consume(&names, &broker, &names.topic("baselines"))
        .into_iter()
        .rev()
        .find(|r| r["key"].as_str() == Some(web_key.as_str()))
        .expect("a checkpoint of shop/web");
    let since = find_key(&cp["payload"], "learning_since_ms").and_then(serde_json::Value::as_i64);
    assert!(
        since.is_some_and(|t| t >= end - 3_600_000),
        "the group's own learning start stays: {since:?}"
    );
    let log = worker.stop();
    assert!(log.contains("retrained baseline"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `herd evaluate --json` of an alert file against the labels.
fn evaluate(labels: &Path, alerts: &Path) -> serde_json::Value {
    let out = herd()
        .args(["evaluate", "--json", "--labels"])
        .arg(labels)
        .arg(alerts)
        .output()
        .expect("herd evaluate");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&report).expect("evaluation")
}

fn replay(files: &[PathBuf], alerts: &Path, retrained: Option<&Path>, from_ms: i64) {
    let mut cmd = herd();
    cmd.args(["replay", "--quiet", "--from", &from_ms.to_string(), "--out"])
        .arg(alerts)
        .args(files);
    if let Some(dir) = retrained {
        cmd.arg("--retrained").arg(dir);
    }
    let out = cmd.output().expect("herd replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The issue's evaluation: a retrain over the first day of a simulated fleet (seed 3,
/// one of the tuning seeds; figures on the held-out seed are in the issue's notes), then
/// the following day scored by a worker that starts on it (`herd replay --from`):
/// online-only, its baselines are what it learns that day; retrained, it adopts the
/// first day's snapshots. The retrained run raises fewer false alarms and misses no
/// labelled attack; the structure knows the batch workers' two modes and the web
/// tier's load axis. A worker running since day 1 gets no false alarm more from it.
#[test]
fn retrained_baselines_cut_false_alarms_on_the_following_day_and_miss_no_attack_issue_6() {
    let dir = workdir("retrain-eval");
    let fleet = dir.join("fleet");
    herd::simulate::simulate(
        &herd::simulate::SimConfig {
            seed: 3,
            hours: 48,
            interval_s: 60,
            recur_after_h: None,
        },
        &fleet,
    )
    .expect("simulate");
    let files: Vec<PathBuf> = FILES.iter().map(|f| fleet.join(f)).collect();
    let (start, _) = labels_window(&fleet);
    let day2 = start + 86_400_000;
    let archive = dir.join("archive");
    replay_to_archive(&files, &archive);
    // The nightly run at the end of the first day: the archive of that day only.
    let snaps = dir.join("snapshots");
    let out = herd()
        .arg("retrain")
        .args(["--archive", &format!("file://{}", archive.display())])
        .args(["--since", "30h", "--until", &day2.to_string()])
        .arg("--out")
        .arg(&snaps)
        .output()
        .expect("herd retrain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = snapshots(&snaps);
    let structure = |repo: &str| {
        s.values()
            .filter(|r| r.repository == repo)
            .filter_map(|r| r.structure.as_ref())
            .max_by_key(|st| st.samples)
            .unwrap_or_else(|| panic!("a structure for {repo}"))
    };
    let worker = structure("batch/worker");
    assert!(
        worker.components.len() >= 2,
        "idle and busy: {:?}",
        worker.bic
    );
    let web = structure("shop/web");
    assert!(
        web.explained.first().is_some_and(|e| *e > 0.4),
        "one load axis carries most of the web tier's variance: {:?}",
        web.explained
    );

    let online = dir.join("online.jsonl");
    let retrained = dir.join("retrained.jsonl");
    replay(&files, &online, None, day2);
    replay(&files, &retrained, Some(&snaps), day2);
    let labels = fleet.join("labels.json");
    let (a, b) = (evaluate(&labels, &online), evaluate(&labels, &retrained));
    let false_alarms = |e: &serde_json::Value| e["false_alarms"].as_array().map_or(0, Vec::len);
    let (fa_online, fa_retrained) = (false_alarms(&a), false_alarms(&b));
    eprintln!(
        "online-only: {} of {} attacks, {fa_online} false alarms; retrained: {} of {}, {fa_retrained}",
        a["detected"], a["attacks"], b["detected"], b["attacks"]
    );
    assert_eq!(b["attacks"], 9, "{b}");
    assert_eq!(b["detected"], b["attacks"], "an attack missed: {b}");
    assert!(
        fa_retrained < fa_online,
        "retrained {fa_retrained} vs online-only {fa_online} false alarms:\n{b}\n{a}"
    );
    // What the retrain adds is named in the alerts: the structure's findings.
    let lines = std::fs::read_to_string(&retrained).expect("alerts");
    assert!(lines.contains("\"structure\""), "no structure finding");

    // A worker running since day 1, adopting the snapshots at its end: the retrain
    // adds no false alarm to what its online baselines know by then (day 2 holds a
    // load surge beyond anything day 1 saw), and misses nothing.
    let (warm_online, warm_retrained) = (dir.join("warm-online.jsonl"), dir.join("warm.jsonl"));
    replay(&files, &warm_online, None, start);
    replay(&files, &warm_retrained, Some(&snaps), start);
    let (c, d) = (
        evaluate(&labels, &warm_online),
        evaluate(&labels, &warm_retrained),
    );
    assert_eq!(d["detected"], d["attacks"], "an attack missed: {d}");
    assert!(
        false_alarms(&d) <= false_alarms(&c),
        "running since day 1, retrained {} vs online-only {} false alarms:\n{d}\n{c}",
        false_alarms(&d),
        false_alarms(&c)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
