//! Golden detection cases: `tests/cases/<name>/input.jsonl` → the incidents in
//! `expected.json` (order-insensitive), each run twice: straight through, and with the
//! pipeline snapshotted and restored into a fresh process state half way. Both runs must
//! emit the same alert lines. Regenerate inputs with `scripts/gen_golden.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use herd::config::HerdConfig;
use herd::input::{LineReader, Source, run_ordered};
use herd::pipeline::Pipeline;
use herd_detect::{Alert, Severity};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Expected {
    container_name: String,
    detectors: Vec<String>,
    severity_at_least: Severity,
}

fn source(name: &str, lines: &[&str]) -> Source {
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    Source {
        name: name.to_owned(),
        reader: LineReader::new(Box::new(Cursor::new(bytes)), 1 << 20),
    }
}

fn run(cfg: &HerdConfig, pipeline: &mut Pipeline, src: Source, out: &mut Vec<Alert>) {
    run_ordered(
        vec![src],
        pipeline,
        &cfg.replay,
        |alerts, _| {
            out.extend_from_slice(alerts);
            Ok(())
        },
        |_| {},
    )
    .unwrap_or_else(|e| panic!("replay failed: {e:#}"));
}

fn case(dir: &Path) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cfg_path = dir.join("config.toml");
    let cfg = HerdConfig::load(cfg_path.exists().then_some(cfg_path.as_path()))
        .unwrap_or_else(|e| panic!("{name}: config: {e:#}"));
    let input =
        std::fs::read_to_string(dir.join("input.jsonl")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let lines: Vec<&str> = input.lines().collect();
    let expected: Vec<Expected> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{name}: expected.json: {e}"));

    // Straight through.
    let mut straight = Vec::new();
    let mut p = Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())
        .unwrap_or_else(|e| panic!("{e:#}"));
    run(&cfg, &mut p, source(&name, &lines), &mut straight);
    assert_eq!(
        p.counters.rejected_total(),
        0,
        "{name}: rejected lines: {:?}",
        p.counters.rejected
    );

    // Snapshot and restore half way.
    let half = lines.len() / 2;
    let mut split = Vec::new();
    let mut first = Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())
        .unwrap_or_else(|e| panic!("{e:#}"));
    run(&cfg, &mut first, source(&name, &lines[..half]), &mut split);
    let snap = first
        .snapshot()
        .unwrap_or_else(|e| panic!("{name}: snapshot: {e:#}"));
    drop(first);
    let mut second = Pipeline::restore(cfg.limits, cfg.detect.clone(), &snap)
        .unwrap_or_else(|e| panic!("{name}: restore: {e:#}"));
    run(&cfg, &mut second, source(&name, &lines[half..]), &mut split);
    assert_eq!(
        straight, split,
        "{name}: snapshot/restore changed the alerts"
    );

    // Incidents, order-insensitive.
    let mut incidents: BTreeMap<&str, (String, BTreeSet<String>, Severity)> = BTreeMap::new();
    for a in &straight {
        let e = incidents.entry(a.incident_id.as_str()).or_insert((
            a.container_name.clone(),
            BTreeSet::new(),
            a.severity,
        ));
        e.1.extend(a.detectors.iter().map(|d| d.as_str().to_owned()));
        e.2 = e.2.max(a.severity);
    }
    let got: Vec<_> = incidents.values().collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{name}: expected {} incidents, got {got:#?}",
        expected.len()
    );
    for want in &expected {
        let found = got.iter().any(|(c, dets, sev)| {
            *c == want.container_name
                && want.detectors.iter().all(|d| dets.contains(d))
                && *sev >= want.severity_at_least
        });
        assert!(found, "{name}: no incident matches {want:?}; got {got:#?}");
    }
}

#[test]
fn golden_cases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.jsonl").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 5,
        "golden cases missing under {}",
        root.display()
    );
    for d in dirs {
        case(&d);
    }
}
