//! `herd demo`: the whole stream service in one process, with nothing to set up.
//!
//! librdkafka's in-process mock cluster stands in for Kafka; the simulator's labelled
//! fleet is produced to it on an accelerated clock (two days of fleet time in about a
//! minute); one `herd run` worker consumes it exactly as in production; alerts are read
//! back from `herd.alerts` and printed as they come, and scored against the labels at
//! the end. The mock cluster is for the demo and functional tests only: it is not a
//! broker to measure.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herd_detect::Alert;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::HerdConfig;
use crate::produce::{Dest, KeyBy, Pace, Window, produce};
use crate::simulate::{SimConfig, simulate};
use crate::stream::kafka::{Role, client_config};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulation seed.
    pub seed: u64,
    /// Wall-clock length of the demo.
    pub duration: Duration,
}

/// Partitions of the demo's topics: enough to show tasks, few enough to be quick.
const PARTITIONS: i32 = 3;
/// Fleet time simulated.
const HOURS: u32 = 48;

/// Runs the demo; alerts and the summary go to `out`.
pub fn demo(
    opts: &DemoOptions,
    out: &mut dyn Write,
) -> anyhow::Result<crate::evaluate::Evaluation> {
    let dir = tempdir()?;
    let result = run(opts, &dir, out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "herd-demo-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn run(
    opts: &DemoOptions,
    dir: &std::path::Path,
    out: &mut dyn Write,
) -> anyhow::Result<crate::evaluate::Evaluation> {
    let fleet = dir.join("fleet");
    let sim = simulate(
        &SimConfig {
            seed: opts.seed,
            hours: HOURS,
            interval_s: 60,
            recur_after_h: None,
        },
        &fleet,
    )?;
    let mock = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let mut cfg = HerdConfig::default();
    cfg.kafka
        .insert("bootstrap.servers".into(), mock.bootstrap_servers());
    cfg.stream.create_topics = false;
    cfg.stream.partitions = PARTITIONS;
    cfg.stream.checkpoint_interval_ms = 5_000;
    let t = cfg.stream.topics.clone();
    for name in t
        .inputs
        .iter()
        .chain([&t.repartition, &t.alerts, &t.dlq, &t.baselines])
    {
        mock.create_topic(name, PARTITIONS, 1)
            .with_context(|| format!("creating {name} on the mock cluster"))?;
    }
    writeln!(
        out,
        "herd demo: {} lines of a simulated fleet ({HOURS} h, seed {}, {} attacks) → in-process Kafka → one worker",
        sim.lines, opts.seed, sim.attacks
    )?;

    let stop_worker = Arc::new(AtomicBool::new(false));
    let worker = {
        let cfg = cfg.clone();
        let stop = Arc::clone(&stop_worker);
        std::thread::Builder::new()
            .name("herd-worker".into())
            .spawn(move || {
                crate::stream::supervise(&cfg, &stop, crate::stream::Instruments::detached()?)
            })?
    };
    // Two days of fleet time in three quarters of the demo.
    let play = opts.duration.as_secs_f64().max(4.0) * 0.75;
    let speedup = f64::from(HOURS) * 3600.0 / play;
    let stop_producers = Arc::new(AtomicBool::new(false));
    let producer = {
        // One producer over every file, merged in event time: it learns each
        // container's image from its events and keys its raw stats samples with it.
        let inputs: Vec<PathBuf> = [
            "stats.jsonl",
            "stats-raw.jsonl",
            "events.jsonl",
            "falco.jsonl",
        ]
        .iter()
        .map(|f| fleet.join(f))
        .collect();
        let kafka = cfg.kafka.clone();
        let stop = Arc::clone(&stop_producers);
        let dest = Dest::ByKind {
            samples: t.inputs[0].clone(),
            events: t.inputs[1].clone(),
            metrics: t.inputs[2].clone(),
        };
        std::thread::spawn(move || {
            produce(
                &kafka,
                &inputs,
                &dest,
                KeyBy::Route,
                Pace::Speedup(speedup),
                Window::default(),
                &stop,
            )
        })
    };

    let alerts_path = dir.join("alerts.jsonl");
    let mut alerts_file = std::io::BufWriter::new(std::fs::File::create(&alerts_path)?);
    let reader = alert_reader(&cfg.kafka, &t.alerts)?;
    let started = Instant::now();
    let mut last_alert = Instant::now();
    let mut shown = 0usize;
    let mut incidents = BTreeMap::new();
    loop {
        let producing = !producer.is_finished();
        if started.elapsed() >= opts.duration
            || (!producing && last_alert.elapsed() > Duration::from_secs(8))
        {
            break;
        }
        let Some(msg) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(e).context("reading herd.alerts"),
        };
        let Some(payload) = msg.payload() else {
            continue;
        };
        alerts_file.write_all(payload)?;
        alerts_file.write_all(b"\n")?;
        last_alert = Instant::now();
        if let Ok(a) = serde_json::from_slice::<Alert>(payload)
            && incidents.insert(a.incident_id.clone(), ()).is_none()
        {
            shown += 1;
            writeln!(
                out,
                "{:>6.1}s  {}  {:<8} {:<14} {:<12} {}",
                started.elapsed().as_secs_f64(),
                a.ts.get(..19).unwrap_or(&a.ts),
                format!("{:?}", a.severity).to_lowercase(),
                a.container_name,
                a.detectors
                    .iter()
                    .map(|d| format!("{d:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(","),
                a.explanation
            )?;
        }
    }
    stop_producers.store(true, Ordering::Relaxed);
    stop_worker.store(true, Ordering::Relaxed);
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??
        .records;
    let summary = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the worker thread panicked"))??;
    alerts_file.flush()?;
    drop(alerts_file);
    let eval = crate::evaluate::evaluate_files(&fleet.join("labels.json"), &alerts_path)?;
    writeln!(
        out,
        "\nherd demo: {produced} records produced, {} scored into {} observations, {} dead-lettered, {} re-keyed, {} checkpoints; {shown} incidents in {:.0} s",
        summary.counters.lines,
        summary.counters.observations,
        summary.dead_lettered,
        summary.forwarded,
        summary.checkpoints,
        started.elapsed().as_secs_f64()
    )?;
    write!(out, "{}", crate::evaluate::render(&eval))?;
    Ok(eval)
}

fn alert_reader(kafka: &BTreeMap<String, String>, topic: &str) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = client_config(kafka, Role::Reader).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}
