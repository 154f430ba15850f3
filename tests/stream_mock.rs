//! The worker against librdkafka's in-process mock cluster, with faults injected at the
//! protocol level that a real broker shows only by chance: produce requests refused
//! after a commit (Tansu answers some with `UNKNOWN_SERVER_ERROR` just after a restart,
//! which librdkafka does not retry). The worker must rejoin in place and lose nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herd::config::HerdConfig;
use herd::produce::{Dest, KeyBy, Pace, Window, produce};
use herd::simulate::{SimConfig, T0, simulate};
use herd::stream::kafka::{Role, client_config};
use herd::stream::{Instruments, supervise};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(300);

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herd-mock-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    d
}

/// Per input partition: (committed offset of the workers' group, end).
fn progress(cfg: &HerdConfig) -> Vec<(i64, i64)> {
    let c: BaseConsumer = client_config(
        &cfg.kafka,
        Role::Consumer {
            group_id: &cfg.stream.group_id,
        },
    )
    .create()
    .unwrap_or_else(|e| panic!("{e}"));
    let mut tpl = TopicPartitionList::new();
    for t in &cfg.stream.topics.inputs {
        for p in 0..PARTITIONS {
            tpl.add_partition(t, p);
        }
    }
    let committed = c
        .committed_offsets(tpl.clone(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    tpl.elements()
        .iter()
        .map(|e| {
            let (_, hi) = c
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{e}"));
            let at = match committed
                .find_partition(e.topic(), e.partition())
                .map(|x| x.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            (at, hi)
        })
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Records of a topic from the beginning: (key, payload).
fn read_all(cfg: &HerdConfig, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let c: BaseConsumer = client_config(&cfg.kafka, Role::Reader)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    c.assign(&tpl).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let mut eof = BTreeSet::new();
    let start = Instant::now();
    while eof.len() < PARTITIONS as usize && start.elapsed() < WAIT {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

fn incidents(lines: impl Iterator<Item = Vec<u8>>) -> BTreeSet<String> {
    lines
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(&l).ok())
        .filter_map(|v| v["incident_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn refused_deliveries_make_the_worker_rejoin_in_place_and_lose_nothing_issue_8() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "herd=warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let dir = dir("refused");
    simulate(
        &SimConfig {
            seed: 2,
            // Past the first attacks (hours 26 and 28): incidents to lose.
            hours: 30,
            interval_s: 60,
            recur_after_h: None,
        },
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let files: Vec<PathBuf> = [
        "stats.jsonl",
        "stats-raw.jsonl",
        "events.jsonl",
        "falco.jsonl",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();

    let mock = MockCluster::new(1).unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = HerdConfig::default();
    cfg.kafka
        .insert("bootstrap.servers".into(), mock.bootstrap_servers());
    cfg.stream.create_topics = false;
    cfg.stream.partitions = PARTITIONS;
    cfg.stream.checkpoint_interval_ms = 1_000;
    let t = cfg.stream.topics.clone();
    for name in t.inputs.iter().chain([
        &t.repartition,
        &t.alerts,
        &t.dlq,
        &t.baselines,
        &t.retrained,
    ]) {
        mock.create_topic(name, PARTITIONS, 1)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let inst = Instruments::detached().unwrap_or_else(|e| panic!("{e}"));
    let worker = {
        let (cfg, stop, inst) = (cfg.clone(), Arc::clone(&stop), inst.clone());
        std::thread::spawn(move || supervise(&cfg, &stop, inst))
    };
    // The fleet in windows of three hours, each produced once the worker has committed
    // the one before: the mock cluster keeps only the newest 5 MB of a partition, and a
    // partition here gets ~25 MB of samples, so a worker further behind than that (a
    // slow build, a busy machine) would find its next records deleted. A window is at
    // most ~3 MB of a partition.
    const HOUR: i64 = 3_600_000;
    let windows = 10;
    let mut produced = 0;
    let mut before_last = Vec::new();
    for w in 0..windows {
        if w == windows - 1 {
            before_last = progress(&cfg);
        }
        produced += produce(
            &cfg.kafka,
            &files,
            &Dest::ByKind {
                samples: t.inputs[0].clone(),
                events: t.inputs[1].clone(),
                metrics: t.inputs[2].clone(),
            },
            KeyBy::Route,
            Pace::Rate(3_000.0),
            Window {
                from_ms: (w > 0).then(|| T0 + w * 3 * HOUR),
                until_ms: (w < windows - 1).then(|| T0 + (w + 1) * 3 * HOUR),
            },
            &AtomicBool::new(false),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .records;
        if w < windows - 1 {
            wait_for("a window committed", || {
                worker.is_finished() || progress(&cfg).iter().all(|(at, end)| at == end)
            });
        }
    }
    // Once every input record is produced (the injected errors must meet only the
    // worker's requests) and some of the last window (past both attacks) committed,
    // the broker refuses the next produce requests: alerts, dead letters, checkpoint
    // records.
    wait_for("a commit in the last window", || {
        progress(&cfg)
            .iter()
            .zip(&before_last)
            .any(|((at, _), (was, _))| at > was)
    });
    // UNKNOWN_SERVER_ERROR (-1 on the wire), as Tansu answers.
    let refusals = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 3];
    mock.request_errors(RDKafkaApiKey::Produce, &refusals);
    wait_for("every input record committed", || {
        worker.is_finished() || progress(&cfg).iter().all(|(at, end)| at == end)
    });
    stop.store(true, Ordering::Relaxed);
    let summary = worker
        .join()
        .unwrap_or_else(|_| panic!("the worker panicked"))
        .unwrap_or_else(|e| panic!("the worker failed: {e:#}"));

    assert!(
        summary.restarts >= 1,
        "no delivery was refused: the test injected nothing"
    );
    assert_eq!(inst.metrics.restarts.get(), summary.restarts);
    // Every record was taken at least once (those after the refused run's last commit
    // twice), and each has one outcome.
    let ends: i64 = progress(&cfg).iter().map(|(_, end)| end).sum();
    assert_eq!(ends as u64, produced);
    assert!(
        summary.skipped.iter().all(|n| *n == 0),
        "offsets skipped {:?} of {:?}: the mock's retention deleted records before the \
         worker read them",
        summary.skipped,
        summary.topics
    );
    let took: u64 = summary.tally.iter().take(t.inputs.len()).flatten().sum();
    assert!(
        took >= produced,
        "took {took} of {produced}: {} restarts, {} checkpoints, tally {:?} of {:?}",
        summary.restarts,
        summary.checkpoints,
        summary.tally,
        summary.topics
    );
    assert_eq!(
        summary.counters.lines, took,
        "lines vs taken: tally {:?} of {:?}",
        summary.tally, summary.topics
    );
    // The effects the broker refused were produced again: the stream's incidents are
    // exactly those of `herd replay` on the same files, and nothing was dead-lettered.
    let replayed = dir.join("replay.jsonl");
    herd::replay::replay(&cfg, &files, Some(&replayed), false, Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let want = incidents(
        std::fs::read_to_string(&replayed)
            .unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .map(|l| l.as_bytes().to_vec()),
    );
    let got = incidents(read_all(&cfg, &t.alerts).into_iter().map(|(_, v)| v));
    assert!(!want.is_empty(), "the fleet has no incident to lose");
    assert_eq!(got, want);
    assert!(read_all(&cfg, &t.dlq).is_empty(), "dead letters");
    let _ = std::fs::remove_dir_all(&dir);
}
