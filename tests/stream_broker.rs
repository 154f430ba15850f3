//! The stream service against a real broker (Tansu, started on a free loopback port)
//! with `herd run` workers as separate processes (issue 3):
//!
//! 1. a simulated fleet produced to Kafka yields the same incidents as `herd replay`;
//! 2. of two workers, one leaves: its groups move with their learned state;
//! 3. a worker killed with SIGKILL and restarted: every attack alerted, no incident
//!    opened twice;
//! 4. poison records land in the dead-letter topic with reasons; the stream goes on.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use herd::simulate::{SimConfig, simulate};
use support::broker::{
    Broker, Names, PARTITIONS, Worker, assert_no_dead_letters, consume, produce,
};
use support::fleet::{
    FILES, IN_ORDER, assert_every_attack_alerted, assert_same_incidents, fleet, fleet_start_ms,
    produce_window, stream_alerts, summary_line, workdir,
};

#[test]
fn a_fleet_through_kafka_gives_the_same_incidents_as_replay_issue_3() {
    let dir = workdir("same");
    let files = fleet(&dir.join("fleet"));
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("same");
    let worker = Worker::start_with(&names, &broker, dir.join("worker.log"), &[IN_ORDER]);
    produce(&names, &broker, &files, &[]);
    broker.wait_caught_up(&names, Duration::from_secs(300));
    let log = worker.stop();
    eprintln!("{}", summary_line(&log));
    let alerts = stream_alerts(&names, &broker);
    assert_same_incidents(&alerts, &files, summary_line(&log));
    assert_every_attack_alerted(&dir.join("fleet"), &alerts);
    assert_no_dead_letters(&names, &broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_leaving_worker_hands_its_groups_over_with_their_learned_state_issue_3() {
    let dir = workdir("handoff");
    let files = fleet(&dir.join("fleet"));
    // The first attack starts 26 hours in: learn for 25 hours on two workers.
    let at = fleet_start_ms(&dir.join("fleet")) + 25 * 3_600_000;
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("handoff");
    let a = Worker::start_with(&names, &broker, dir.join("a.log"), &[IN_ORDER]);
    let b = Worker::start_with(&names, &broker, dir.join("b.log"), &[IN_ORDER]);
    produce_window(&names, &broker, &files, None, Some(at));
    broker.wait_caught_up(&names, Duration::from_secs(300));
    // B leaves (SIGTERM): it checkpoints and commits, and A takes its partitions.
    let b_log = b.stop();
    assert!(
        b_log.contains("restored task"),
        "B owned no partition, so nothing would be handed over:\n{b_log}"
    );
    produce_window(&names, &broker, &files, Some(at), None);
    broker.wait_caught_up(&names, Duration::from_secs(300));
    let a_log = a.stop();
    eprintln!("{}", summary_line(&a_log));
    let restored = a_log.matches("restored task").count();
    assert!(
        restored > PARTITIONS as usize - 1,
        "A restored only {restored} tasks; B's partitions must be restored from herd.baselines:\n{a_log}"
    );
    // The learned state moved intact: the incidents are exactly replay's (a relearning
    // worker would miss attacks while learning, or raise others).
    let alerts = stream_alerts(&names, &broker);
    assert_same_incidents(&alerts, &files, summary_line(&a_log));
    assert_every_attack_alerted(&dir.join("fleet"), &alerts);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_killed_mid_stream_and_restarted_alerts_every_attack_once_issue_3() {
    let dir = workdir("kill");
    let files = fleet(&dir.join("fleet"));
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("kill");
    produce(&names, &broker, &files, &[]);
    // Static membership, as a restarted pod of a StatefulSet has: the restarted worker
    // takes the killed one's place at once instead of waiting for its session to expire.
    // Checkpoint records of at most 4 KiB: every group's and task's state is larger, so
    // the restore after the kill reads them all back from parts.
    let member = [
        ("HERD_KAFKA__GROUP_INSTANCE_ID", "worker-0"),
        ("HERD_STREAM__CHECKPOINT_RECORD_BYTES", "4096"),
        IN_ORDER,
    ];
    let first = Worker::start_with(&names, &broker, dir.join("first.log"), &member);
    // Kill it once it has committed some of the stream, before it is done.
    broker.wait_part_committed(&names);
    first.kill();
    let second = Worker::start_with(&names, &broker, dir.join("second.log"), &member);
    broker.wait_caught_up(&names, Duration::from_secs(300));
    let log = second.stop();
    assert!(log.contains("restored task"), "{log}");
    let baselines = consume(&names, &broker, &names.topic("baselines"));
    let key = |r: &serde_json::Value| r["key"].as_str().unwrap_or_default().to_owned();
    assert!(
        baselines.iter().any(|r| key(r).starts_with("~part/")),
        "no checkpoint was written in parts"
    );
    assert!(
        baselines
            .iter()
            .filter(|r| key(r).starts_with("~part/"))
            .all(|r| match r["payload_text"].as_str() {
                Some(text) => text.len() <= 4096,
                None => r["payload"].to_string().len() <= 4096,
            }),
        "a part larger than the configured record size"
    );
    let alerts = stream_alerts(&names, &broker);
    assert_every_attack_alerted(&dir.join("fleet"), &alerts);
    // An incident reopened after the restart would carry a new id.
    assert_same_incidents(&alerts, &files, summary_line(&log));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn poison_records_are_dead_lettered_with_reasons_and_the_stream_goes_on_issue_3() {
    let dir = workdir("poison");
    simulate(
        &SimConfig {
            seed: 3,
            hours: 2,
            interval_s: 60,
            recur_after_h: None,
        },
        &dir.join("fleet"),
    )
    .unwrap_or_else(|e| panic!("simulate: {e}"));
    let files: Vec<PathBuf> = FILES.iter().map(|f| dir.join("fleet").join(f)).collect();
    let mid = fleet_start_ms(&dir.join("fleet")) + 3_600_000;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!("{{\"ts\":1,\"pad\":\"{}\"}}", "x".repeat(300_000));
    let poison: Vec<String> = vec![
        "this is not json".into(),
        "{\"ts\":\"2026-11-23T10:00:00Z\",\"container_id\":\"x\"".into(),
        deep,
        huge,
        "{\"hello\":\"world\"}".into(),
        "{\"ts\":\"yesterday\",\"container_id\":\"c\",\"image\":\"i\",\"metrics\":{\"x\":1}}"
            .into(),
    ];
    let poison_file = dir.join("poison.jsonl");
    std::fs::write(&poison_file, poison.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));

    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("poison");
    let worker = Worker::start_with(
        &names,
        &broker,
        dir.join("worker.log"),
        &[("HERD_LIMITS__MAX_LINE_BYTES", "65536")],
    );
    produce_window(&names, &broker, &files, None, Some(mid));
    let topic = names.topic("samples");
    produce(&names, &broker, &[poison_file], &["--topic", &topic]);
    produce_window(&names, &broker, &files, Some(mid), None);
    broker.wait_caught_up(&names, Duration::from_secs(120));
    let log = worker.stop();

    let dead = consume(&names, &broker, &names.topic("dlq"));
    assert_eq!(dead.len(), poison.len(), "{}", summary_line(&log));
    let reasons: BTreeSet<&str> = dead
        .iter()
        .filter_map(|d| d["headers"]["herd.reason"].as_str())
        .collect();
    assert!(
        reasons.is_subset(&BTreeSet::from([
            "invalid_json",
            "too_deep",
            "too_large",
            "unknown_format",
            "missing_field",
            "invalid_timestamp",
        ])),
        "{reasons:?}"
    );
    assert!(reasons.len() >= 4, "distinct reasons: {reasons:?}");
    let samples = names.topic("samples");
    for d in &dead {
        let h = &d["headers"];
        assert_eq!(h["herd.source.topic"].as_str(), Some(samples.as_str()));
        assert!(
            h["herd.source.partition"]
                .as_str()
                .is_some_and(|p| p.parse::<i32>().is_ok())
        );
        assert!(
            h["herd.source.offset"]
                .as_str()
                .is_some_and(|o| o.parse::<i64>().is_ok())
        );
        assert!(h["herd.detail"].as_str().is_some());
        // The original payload (compared as JSON where it is JSON: the printer
        // re-encodes it).
        let same = |p: &String| match d["payload_text"].as_str() {
            Some(text) => text == p,
            None => {
                serde_json::from_str::<serde_json::Value>(p).ok().as_ref() == Some(&d["payload"])
            }
        };
        assert!(
            poison.iter().any(same),
            "dead letter is not an original record: {:.200}",
            d.to_string()
        );
    }
    // Everything after the poison was scored.
    let line = summary_line(&log);
    let total_valid: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        line.contains(&format!("herd run: {} records", total_valid + poison.len())),
        "{line} (expected {} records)",
        total_valid + poison.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 9 on Kafka: verdicts given with `herd feedback` on the first episodes of a
/// fleet whose attacks recur a day later reach the worker that owns each group through
/// `herd.feedback`, and change what it raises the second time: the cryptominer judged
/// benign is expected, the reverse shell judged malicious is raised (without the
/// verdict its items are known by then). `herd policy from-incident` reads the incident
/// and its verdict back from the topics.
#[test]
fn verdicts_given_on_kafka_change_what_the_workers_raise_next_issue_9() {
    const HOUR: i64 = 3_600_000;
    let dir = workdir("feedback");
    let fleet_dir = dir.join("fleet");
    simulate(
        &SimConfig {
            seed: 2,
            hours: 72,
            interval_s: 60,
            recur_after_h: Some(24),
        },
        &fleet_dir,
    )
    .unwrap_or_else(|e| panic!("simulate: {e}"));
    let files: Vec<PathBuf> = FILES.iter().map(|f| fleet_dir.join(f)).collect();
    let t0 = fleet_start_ms(&fleet_dir);
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("feedback");
    let worker = Worker::start_with(&names, &broker, dir.join("worker.log"), &[IN_ORDER]);
    produce_window(&names, &broker, &files, None, Some(t0 + 48 * HOUR));
    broker.wait_caught_up(&names, Duration::from_secs(300));

    let ts = |a: &serde_json::Value| {
        herd_ingest::time::parse_rfc3339_ms(a["ts"].as_str().unwrap_or_default()).unwrap_or(0)
    };
    // The first alert line on `name` within `[from, to)` hours that `pick` accepts.
    let first = |alerts: &std::collections::BTreeMap<String, Vec<serde_json::Value>>,
                 name: &str,
                 (from, to): (i64, i64),
                 pick: &dyn Fn(&serde_json::Value) -> bool| {
        alerts
            .values()
            .flatten()
            .filter(|a| {
                a["container_name"] == name
                    && (t0 + from * HOUR..t0 + to * HOUR).contains(&ts(a))
                    && pick(a)
            })
            .min_by_key(|a| ts(a))
            .cloned()
    };
    let cpu = |a: &serde_json::Value| {
        a["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["name"] == "cpu_cores"))
    };
    let novel = |a: &serde_json::Value| a["novel"].as_array().is_some_and(|n| !n.is_empty());
    let before = stream_alerts(&names, &broker);
    let miner = first(&before, "web-3", (28, 29), &cpu).expect("the miner is raised");
    let shell = first(&before, "web-5", (44, 45), &novel).expect("the reverse shell is raised");
    for (incident, verdict, by) in [
        (&miner["incident_id"], "benign", "alice"),
        (&shell["incident_id"], "malicious", "bob"),
    ] {
        let out = support::broker::herd()
            .args(["feedback", incident.as_str().unwrap_or_default(), verdict])
            .args(["--by", by, "--note", "issue 9 test"])
            .envs(names.env(&broker))
            .output()
            .unwrap_or_else(|e| panic!("herd feedback: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Applied (and committed) before the second day is produced.
    let feedback = vec![names.topic("feedback")];
    let ends = broker.ends(&feedback[0], PARTITIONS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while broker
        .committed(&names.group(), &feedback, PARTITIONS)
        .iter()
        .zip(&ends)
        .any(|(c, e)| *e > 0 && c < e)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "feedback not consumed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    produce_window(&names, &broker, &files, Some(t0 + 48 * HOUR), None);
    broker.wait_caught_up(&names, Duration::from_secs(300));
    let log = worker.stop();
    assert_eq!(
        log.matches("outcome=\"applied\"").count() + log.matches("outcome=applied").count(),
        2,
        "{log}"
    );

    let after = stream_alerts(&names, &broker);
    assert!(
        first(&after, "web-3", (52, 53), &cpu).is_none(),
        "the miner judged benign is expected the second time"
    );
    let again = first(&after, "web-5", (68, 69), &novel)
        .expect("the shell judged malicious is raised again");
    assert!(
        again["novel"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["marked"] == shell["incident_id"])),
        "{again}"
    );
    assert_no_dead_letters(&names, &broker);

    let out = support::broker::herd()
        .args([
            "policy",
            "from-incident",
            shell["incident_id"].as_str().unwrap_or_default(),
        ])
        .envs(names.env(&broker))
        .output()
        .unwrap_or_else(|e| panic!("herd policy from-incident: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# Judged malicious by bob"), "{text}");
    herd_respond::policy::PolicyFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let _ = std::fs::remove_dir_all(&dir);
}
