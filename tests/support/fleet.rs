//! Simulated fleets for the end-to-end tests: where they are written, and how they are
//! produced to the test's topics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use herd::simulate::{SimConfig, simulate};

use super::broker::{Broker, Names, consume, herd, produce};

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

/// Incident ids of `herd replay` on the files.
pub fn replay_incidents(files: &[PathBuf]) -> BTreeSet<String> {
    let out = herd()
        .arg("replay")
        .arg("--quiet")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("herd replay: {e}"));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}"));
            v["incident_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
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
