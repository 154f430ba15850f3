//! Simulated fleets for the end-to-end tests: where they are written, and how they are
//! produced to the test's topics.

use std::path::{Path, PathBuf};

use herd::simulate::{SimConfig, simulate};

use super::broker::{Broker, Names, herd, produce};

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
