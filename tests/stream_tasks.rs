//! Tasks without Kafka: a fleet split over partitions by routing key and merged per
//! task in event time must give what `herd replay` gives on the whole file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herd::config::HerdConfig;
use herd::simulate::{SimConfig, simulate};
use herd::stream::task::{Out, Task, TaskConfig};
use herd_ingest::{Decoder, Limits, Router};

fn hash(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

#[test]
fn a_fleet_split_by_routing_key_loses_no_record_to_its_partitioning() {
    let dir = std::env::temp_dir().join(format!("herd-tasks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    simulate(
        &SimConfig {
            seed: 2,
            hours: 48,
            interval_s: 60,
        },
        &dir,
    )
    .expect("simulate");
    let cfg = HerdConfig::default();
    let tcfg = TaskConfig {
        limits: cfg.limits,
        normalizer: cfg.normalizer.clone(),
        detect: cfg.detect.clone(),
        inputs: 3,
        max_routed_containers: 1000,
        max_idle: Duration::from_millis(1),
        respond: None,
        latency: None,
        archive_rows: None,
        retrained_input: None,
    };
    let n = 3usize;
    let mut tasks: Vec<Task> = (0..n)
        .map(|p| Task::new(p as i32, &tcfg).expect("task"))
        .collect();
    let decoder = Decoder::new(Limits::default());
    let mut router = Router::new(1000);
    let mut out = Vec::new();
    let mut offsets = vec![[0i64; 3]; n];
    // Keys as `herd produce` gives them (files merged in event time), then arrival in
    // the worst order for the merge: every sample first, then every event.
    let mut lines = Vec::new();
    for file in [
        "stats.jsonl",
        "stats-raw.jsonl",
        "events.jsonl",
        "falco.jsonl",
    ] {
        let input = usize::from(!file.starts_with("stats"));
        for line in std::fs::read_to_string(dir.join(file))
            .expect("read")
            .lines()
        {
            let rec = decoder.decode(line.as_bytes()).expect("decode");
            lines.push((rec.ts_ms().unwrap_or(i64::MIN), input, line.to_owned(), rec));
        }
    }
    lines.sort_by_key(|l| l.0);
    let mut keyed: Vec<(usize, usize, Option<String>, String)> = lines
        .into_iter()
        .map(|(_, input, line, rec)| {
            let key = router.route(&rec);
            let p = key.as_deref().map_or(0, |k| (hash(k) % n as u64) as usize);
            (input, p, key, line)
        })
        .collect();
    keyed.sort_by_key(|k| k.0);
    for (input, p, key, line) in keyed {
        let o = &mut offsets[p][input];
        tasks[p].offer(
            input,
            *o,
            None,
            key.as_deref().map(str::as_bytes),
            line.as_bytes(),
            &mut out,
        );
        *o += 1;
    }
    for t in &mut tasks {
        t.drain(Instant::now(), Duration::ZERO, true, &mut out);
    }
    let mut dead = BTreeMap::new();
    for o in &out {
        if let Out::Dead { reject, .. } = o {
            *dead.entry(reject.reason.as_str()).or_insert(0) += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}
