//! The analyst's loop on a simulated fleet (issue 9), through the `herd` binary: a fleet
//! where every attack happens again a day later; the first episodes are judged with
//! `herd feedback`, and a replay with the verdicts changes what the second episodes
//! raise, as stated: the cryptominer judged benign is expected the second time, the
//! reverse shell judged malicious is raised the second time (without the verdict, the
//! group's catalog already knows its items). `herd policy from-incident` turns the
//! malicious one into a rule that matches it and nothing else of the fleet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herd_detect::Alert;

const HOUR: i64 = 3_600_000;

fn herd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herd"))
}

fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{stderr}",
        out.status.code()
    );
    (stdout, stderr)
}

fn run(cmd: &mut Command) -> (String, String) {
    ok(&cmd.output().unwrap_or_else(|e| panic!("{e}")))
}

const FILES: [&str; 4] = [
    "stats.jsonl",
    "stats-raw.jsonl",
    "events.jsonl",
    "falco.jsonl",
];

fn alerts(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ts(a: &Alert) -> i64 {
    herd_ingest::time::parse_rfc3339_ms(&a.ts).unwrap_or_else(|| panic!("ts {}", a.ts))
}

/// Alerts on `name` within `[from, to)` hours of the fleet's start.
fn on<'a>(all: &'a [Alert], name: &str, t0: i64, (from, to): (i64, i64)) -> Vec<&'a Alert> {
    all.iter()
        .filter(|a| a.container_name == name && (t0 + from * HOUR..t0 + to * HOUR).contains(&ts(a)))
        .collect()
}

fn replay(files: &[PathBuf], out: &Path, feedback: Option<&Path>) -> String {
    let mut cmd = herd();
    cmd.arg("replay").args(files).arg("--out").arg(out);
    if let Some(f) = feedback {
        cmd.arg("--feedback").arg(f);
    }
    run(&mut cmd).1
}

#[test]
fn verdicts_change_later_detection_as_stated_and_a_bookmark_matches_its_incident_issue_9() {
    let dir = std::env::temp_dir().join(format!("herd-feedback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fleet = dir.join("fleet");
    run(herd()
        .args([
            "simulate",
            "--seed",
            "2",
            "--hours",
            "72",
            "--interval-s",
            "60",
        ])
        .args(["--recur-after-h", "24", "--out"])
        .arg(&fleet));
    let files: Vec<PathBuf> = FILES.iter().map(|f| fleet.join(f)).collect();
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fleet.join("labels.json")).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    let t0 = herd_ingest::time::parse_rfc3339_ms(labels["start"].as_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("start"));

    // Without verdicts.
    let control_path = dir.join("control.jsonl");
    replay(&files, &control_path, None);
    let control = alerts(&control_path);
    // The miner on web-3 at 28 h and again at 52 h; the reverse shell on web-5 at 44 h,
    // silent at 68 h: web-5 showed its items before, so the catalog vouches for them.
    let miner = on(&control, "web-3", t0, (28, 29));
    assert!(
        miner
            .iter()
            .any(|a| a.features.iter().any(|f| f.name == "cpu_cores")),
        "{miner:#?}"
    );
    let miner_again = on(&control, "web-3", t0, (52, 53));
    assert!(
        miner_again
            .iter()
            .any(|a| a.features.iter().any(|f| f.name == "cpu_cores")),
        "without a verdict the miner is raised again: {miner_again:#?}"
    );
    let shell = on(&control, "web-5", t0, (44, 45));
    assert!(shell.iter().any(|a| !a.novel.is_empty()), "{shell:#?}");
    assert!(
        on(&control, "web-5", t0, (68, 69)).is_empty(),
        "without a verdict the second reverse shell is silent"
    );

    // The verdicts, an hour after each first episode.
    let fb = dir.join("feedback.jsonl");
    let at = |h: i64| (t0 + h * HOUR).to_string();
    let (printed, said) = run(herd()
        .args(["feedback", &miner[0].incident_id, "benign", "--alerts"])
        .arg(&control_path)
        .args([
            "--by",
            "alice",
            "--note",
            "a batch job",
            "--at",
            &at(30),
            "--out",
        ])
        .arg(&fb));
    assert!(said.contains("judged benign by alice"), "{said}");
    assert!(printed.contains("\"verdict\":\"benign\""), "{printed}");
    run(herd()
        .args(["feedback", &shell[0].incident_id, "malicious", "--alerts"])
        .arg(&control_path)
        .args(["--by", "bob", "--at", &at(46), "--out"])
        .arg(&fb));

    let judged_path = dir.join("judged.jsonl");
    let summary = replay(&files, &judged_path, Some(&fb));
    assert!(summary.contains("feedback: applied=2"), "{summary}");
    let judged = alerts(&judged_path);

    // Nothing changes before the first verdict.
    let before = |v: &[Alert]| -> Vec<Alert> {
        v.iter()
            .filter(|a| ts(a) < t0 + 30 * HOUR)
            .cloned()
            .collect()
    };
    assert_eq!(before(&judged), before(&control));
    // The miner judged benign is expected the second time.
    let again: Vec<&Alert> = on(&judged, "web-3", t0, (52, 53));
    assert!(
        again
            .iter()
            .all(|a| a.features.iter().all(|f| f.name != "cpu_cores")),
        "{again:#?}"
    );
    // The reverse shell judged malicious is raised the second time, marked.
    let shell_again = on(&judged, "web-5", t0, (68, 69));
    assert!(
        shell_again.iter().any(|a| a
            .novel
            .iter()
            .any(|n| n.marked.as_deref() == Some(&*shell[0].incident_id))),
        "{shell_again:#?}"
    );
    // Every other attack's second episode is raised as before.
    for (name, hours) in [("api-4", (64, 65)), ("worker-1", (60, 61))] {
        assert_eq!(
            on(&judged, name, t0, hours).is_empty(),
            on(&control, name, t0, hours).is_empty(),
            "{name}"
        );
    }

    // The bookmark: a rule for the malicious incident, which loads, matches each of its
    // alert lines, and none of the fleet's other incidents.
    let stanza = dir.join("bookmark.toml");
    run(herd()
        .args(["policy", "from-incident", &shell[0].incident_id, "--alerts"])
        .arg(&control_path)
        .arg("--feedback")
        .arg(&fb)
        .arg("--out")
        .arg(&stanza));
    let text = std::fs::read_to_string(&stanza).unwrap_or_default();
    assert!(text.contains("# Judged malicious by bob"), "{text}");
    let rule = herd_respond::policy::PolicyFile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    for a in &control {
        assert_eq!(
            rule.first_match(a).is_some(),
            a.incident_id == shell[0].incident_id,
            "{text}\n{a:#?}"
        );
    }
    assert!(
        rule.first_match(shell_again[0]).is_some(),
        "the rule matches the second episode too"
    );
    // A rule for behaviour judged benign is refused.
    let out = herd()
        .args(["policy", "from-incident", &miner[0].incident_id, "--alerts"])
        .arg(&control_path)
        .arg("--feedback")
        .arg(&fb)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("judged benign"));
    // An incident that is not there is an error that says so.
    let out = herd()
        .args([
            "feedback",
            "no-such-incident",
            "benign",
            "--by",
            "x",
            "--alerts",
        ])
        .arg(&control_path)
        .args(["--out", "-"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no alert line of it"));
    let _ = std::fs::remove_dir_all(&dir);
}
