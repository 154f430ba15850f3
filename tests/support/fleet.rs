//! Simulated fleets for the end-to-end tests: where they are written, and how they are
//! produced to the test's topics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use herd::simulate::{SimConfig, simulate};

use super::broker::{Broker, Names, consume, herd, produce};

/// The worker setting of the tests that compare a stream's incidents with `herd
/// replay`'s. Replay is in event-time order by construction; a worker's merge is in
/// order as long as it waits for a lagging input (`stream.max_task_idle_ms`, 2 s by
/// default) rather than going on without it (it counts those records as out of order).
/// These tests produce the fleet while the workers consume it, on two cores shared
/// with the broker and the other tests. One CI run in many went on without a lagging
/// input and raised one incident more than replay: with the wait cut to 1 ms, a worker
/// raises that same incident (an OOM event scored before the samples that precede it).
/// Ten seconds is well past any stall seen here.
pub const IN_ORDER: (&str, &str) = ("HERD_STREAM__MAX_TASK_IDLE_MS", "10000");

pub const FILES: [&str; 4] = [
    "stats.jsonl",
    "stats-raw.jsonl",
    "events.jsonl",
    "falco.jsonl",
];

pub fn workdir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herd-e2e-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    d
}

/// A two-day fleet at one sample a minute (9 labelled attacks).
pub fn fleet(dir: &Path) -> Vec<PathBuf> {
    simulate(
        &SimConfig {
            seed: 2,
            hours: 48,
            interval_s: 60,
            recur_after_h: None,
        },
        dir,
    )
    .unwrap_or_else(|e| panic!("simulate: {e}"));
    FILES.iter().map(|f| dir.join(f)).collect()
}

/// `--from`/`--until` arguments of `herd produce`.
pub fn window(from: Option<i64>, until: Option<i64>) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, at) in [("--from", from), ("--until", until)] {
        if let Some(at) = at {
            args.extend([flag.to_owned(), at.to_string()]);
        }
    }
    args
}

/// Produces the records of `files` in the event-time window (see [`window`]).
pub fn produce_window(
    names: &Names,
    broker: &Broker,
    files: &[PathBuf],
    from: Option<i64>,
    until: Option<i64>,
) {
    let args = window(from, until);
    produce(
        names,
        broker,
        files,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

pub fn fleet_start_ms(dir: &Path) -> i64 {
    let labels: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("labels.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let start = labels["start"].as_str().unwrap_or_default();
    herd_ingest::time::parse_rfc3339_ms(start).unwrap_or_else(|| panic!("start {start}"))
}

/// `herd replay` of `files` with the archive on, into `archive` (the reference of what
/// an archive of that fleet holds).
pub fn replay_to_archive(files: &[PathBuf], archive: &Path) {
    let out = herd()
        .arg("replay")
        .args(files)
        .env("HERD_ARCHIVE__URL", format!("file://{}", archive.display()))
        .stdout(std::process::Stdio::null())
        .output()
        .expect("herd replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Alerts of `herd replay` on the files: incident id → alert lines.
pub fn replay_alerts(files: &[PathBuf]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let out = herd()
        .arg("replay")
        .arg("--quiet")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("herd replay: {e}"));
    assert!(out.status.success());
    let mut by_incident: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}"));
        by_incident
            .entry(v["incident_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(v);
    }
    by_incident
}

/// The stream raised exactly the incidents `herd replay` raises on the same files. On a
/// difference the message shows each differing incident's first alert (container,
/// time, detectors, features), which says more than its id.
pub fn assert_same_incidents(
    stream: &BTreeMap<String, Vec<serde_json::Value>>,
    files: &[PathBuf],
    context: &str,
) {
    let replay = replay_alerts(files);
    let ids = |m: &BTreeMap<String, Vec<serde_json::Value>>| m.keys().cloned().collect();
    let (s, r): (BTreeSet<String>, BTreeSet<String>) = (ids(stream), ids(&replay));
    if s == r {
        return;
    }
    let first = |m: &BTreeMap<String, Vec<serde_json::Value>>, id: &str| {
        m.get(id)
            .and_then(|v| v.first())
            .map(|a| {
                let mut a = a.clone();
                if let Some(o) = a.as_object_mut() {
                    o.remove("explanation");
                }
                a.to_string()
            })
            .unwrap_or_default()
    };
    let mut msg = format!("{context}\n");
    for id in s.difference(&r) {
        msg += &format!("only in the stream: {id}: {}\n", first(stream, id));
    }
    for id in r.difference(&s) {
        msg += &format!("only in replay: {id}: {}\n", first(&replay, id));
    }
    panic!("the stream's incidents differ from replay's:\n{msg}");
}

/// Alerts on the test's alert topic: incident id → alert lines.
pub fn stream_alerts(names: &Names, broker: &Broker) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_incident: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in consume(names, broker, &names.topic("alerts")) {
        let a = r["payload"].clone();
        let group = a["group"].as_str().unwrap_or_default().to_owned();
        assert_eq!(r["key"].as_str(), Some(group.as_str()), "alert key = group");
        by_incident
            .entry(a["incident_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(a);
    }
    by_incident
}

/// Every labelled attack container has an incident among `alerts`.
pub fn assert_every_attack_alerted(dir: &Path, alerts: &BTreeMap<String, Vec<serde_json::Value>>) {
    let labels: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("labels.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let alerted: BTreeSet<&str> = alerts
        .values()
        .flatten()
        .filter_map(|a| a["container_id"].as_str())
        .collect();
    let attacks = labels["attacks"].as_array().cloned().unwrap_or_default();
    assert!(attacks.len() >= 9);
    for a in &attacks {
        let ids: Vec<&str> = a["container_ids"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        assert!(
            ids.iter().any(|id| alerted.contains(id)),
            "attack {} ({}) was not alerted",
            a["id"],
            a["kind"]
        );
    }
}

pub fn summary_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.starts_with("herd run:") && l.contains(" records, "))
        .unwrap_or_default()
}
