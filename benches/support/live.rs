//! The live stream of the end-to-end and soak harnesses: agent envelopes whose event
//! time is the wall clock, as in production, produced at a set rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd::config::HerdConfig;
use rdkafka::ClientConfig;

/// Wall-clock milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A configuration for a worker of topics `{prefix}.*`, three partitions.
pub fn config(bootstrap: &str, prefix: &str) -> HerdConfig {
    let mut cfg = HerdConfig::default();
    cfg.kafka
        .insert("bootstrap.servers".into(), bootstrap.to_owned());
    let t = &mut cfg.stream.topics;
    t.inputs = ["samples", "events", "metrics"]
        .iter()
        .map(|n| format!("{prefix}.{n}"))
        .collect();
    t.repartition = format!("{prefix}.repartition");
    t.alerts = format!("{prefix}.alerts");
    t.dlq = format!("{prefix}.dlq");
    t.baselines = format!("{prefix}.baselines");
    cfg.stream.group_id = format!("{prefix}-workers");
    cfg.stream.partitions = 3;
    cfg
}

/// Whether container `i` is one that departs from its siblings: the first replica of
/// every second group (150 of the 3,000 of the latency run).
pub fn departs(i: u64) -> bool {
    i.is_multiple_of(20)
}

/// One agent envelope of container `i` in round `k`, read at `now`; `extra` rounds of
/// four times its siblings' CPU added to its counter, and five times their memory (a
/// replica that departed).
pub fn live_envelope(i: u64, k: u64, extra: u64, now: i64) -> String {
    let g = i / 10;
    let read = herd_ingest::time::format_ms(now);
    let cpu = k * 2_000_000_000 + extra * 8_000_000_000 + i * 1000;
    let sys = k * 40_000_000_000;
    let mem = (200_000_000 + (i % 97) * 100_000) * if extra > 0 { 5 } else { 1 };
    let (rx, tx) = (k * 3_000_000, k * 9_000_000);
    format!(
        r#"{{"host":"node-{h}","container":{{"id":"{i:064x}","name":"live{g}-{i}","image":"bench/live{g}:1","image_digest":"sha256:{g:064x}","labels":{{"app":"live{g}"}}}},"stats":{{"read":"{read}","pids_stats":{{"current":12}},"cpu_stats":{{"cpu_usage":{{"total_usage":{cpu}}},"system_cpu_usage":{sys},"online_cpus":4}},"precpu_stats":{{"cpu_usage":{{"total_usage":0}},"system_cpu_usage":0}},"memory_stats":{{"usage":{mem},"stats":{{"inactive_file":0}},"limit":536870912}},"networks":{{"eth0":{{"rx_bytes":{rx},"rx_packets":{rxp},"tx_bytes":{tx},"tx_packets":{txp}}}}}}}}}"#,
        h = i % 50,
        rxp = rx / 1000,
        txp = tx / 1000,
    )
}

/// Produces the live stream (event time = now) at `rate` records/s for `span`, keyed as
/// `herd produce --key route` keys them; returns the records produced (a primer on
/// every input partition included).
///
/// The fleet: `containers` in groups of ten, all sampled once per round, the rounds as
/// often as the rate asks, plus an exec event a second on the events topic (so the
/// event-time merge has a sparse input to wait or not wait for). From `depart_after`
/// on, the containers [`departs`] names run at five times their siblings' CPU and memory: alerts,
/// for the alert latency.
pub fn live_stream(
    bootstrap: &str,
    cfg: &HerdConfig,
    rate: f64,
    span: Duration,
    containers: u64,
    depart_after: Option<Duration>,
) -> anyhow::Result<u64> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let (samples, events) = (&cfg.stream.topics.inputs[0], &cfg.stream.topics.inputs[1]);
    // A worker's task waits (up to `max_task_idle_ms`) for an input that has delivered
    // nothing yet: a broker's watermarks can say caught up before its first fetch does.
    // That is start-up, paid once; a record on every input partition first keeps it out
    // of the steady state measured here.
    for topic in &cfg.stream.topics.inputs {
        for p in 0..cfg.stream.partitions {
            let line = format!(
                r#"{{"ts":{},"container_id":"{:064x}","image":"bench/primer:1","metrics":{{"x":1}}}}"#,
                now_ms(),
                u64::MAX - p as u64
            );
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(p)
                        .key("bench/primer")
                        .payload(&line),
                )
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let primers = (cfg.stream.topics.inputs.len() as u64) * cfg.stream.partitions as u64;
    std::thread::sleep(Duration::from_secs(4));
    let interval = Duration::from_secs_f64(containers as f64 / rate.max(1.0));
    let start = Instant::now();
    let (mut n, mut round, mut next_event) = (primers, 0u64, start);
    let mut departed: Option<u64> = None;
    while start.elapsed() < span {
        let round_start = start + interval.mul_f64(round as f64);
        if departed.is_none() && depart_after.is_some_and(|d| start.elapsed() >= d) {
            departed = Some(round);
        }
        for i in 0..containers {
            // Spread the round's samples evenly over its interval.
            let due = round_start + interval.mul_f64(i as f64 / containers as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let key = format!("bench/live{}", i / 10);
            let extra = match departed {
                Some(r) if departs(i) => round - r,
                _ => 0,
            };
            let line = live_envelope(i, round + 1, extra, now_ms());
            producer
                .send(BaseRecord::to(samples).key(&key).payload(&line))
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            n += 1;
            if Instant::now() >= next_event {
                next_event += Duration::from_secs(1);
                let t = now_ms();
                let c = (t as u64 / 1000) % containers;
                let ev = format!(
                    r#"{{"Type":"container","Action":"exec_start: sh -c id","Actor":{{"ID":"{c:064x}","Attributes":{{"image":"bench/live{g}:1","name":"live{g}-{c}","execID":"e{t}"}}}},"time":{s},"timeNano":{t}000000}}"#,
                    g = c / 10,
                    s = t / 1000,
                );
                producer
                    .send(
                        BaseRecord::to(events)
                            .key(&format!("bench/live{}", c / 10))
                            .payload(&ev),
                    )
                    .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
                n += 1;
            }
        }
        round += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}

/// Records the group of `cfg` has committed on its inputs.
pub fn committed(cfg: &HerdConfig) -> anyhow::Result<u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka["bootstrap.servers"])
        .set("group.id", &cfg.stream.group_id)
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in &cfg.stream.topics.inputs {
        for p in 0..cfg.stream.partitions {
            tpl.add_partition(t, p);
        }
    }
    Ok(probe
        .committed_offsets(tpl, Duration::from_secs(10))?
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0) as u64)
        .sum())
}

/// Drains a backlog of `n` records on `cfg`'s inputs with an in-process worker, until
/// its group has committed them all; returns the worker's summary (its rate is
/// records over `busy`).
pub fn drain(cfg: &HerdConfig, n: u64) -> anyhow::Result<herd::stream::Summary> {
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (cfg, stop) = (cfg.clone(), Arc::clone(&stop));
        std::thread::spawn(move || herd::stream::worker::run(&cfg, &cfg.kafka, &stop))
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !worker.is_finished() && committed(cfg)? < n {
        anyhow::ensure!(Instant::now() < deadline, "the worker did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))?
}
