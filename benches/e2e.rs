//! End-to-end harness: one machine, one broker (Tansu on a free loopback port), one run.
//!
//! `cargo bench --bench e2e` (add `-- --hours N` for a longer fleet) prints:
//! 1. the raw rdkafka consume rate of a pre-filled topic set (consume and drop);
//! 2. the `herd run` end-to-end rate on the same topics (a worker, in process);
//!    and their ratio;
//! 3. at half of that rate, on a live stream (event time is the wall clock, as in
//!    production: agent envelopes of 3,000 containers, and an exec event a second), the
//!    latency from each record's Kafka timestamp to the end of its scoring
//!    (hdrhistogram), beside the broker's own produce→consume latency measured in the
//!    same run; and, for the replicas that depart from their siblings half-way (one in
//!    every second group, peers compared after 10 s of history instead of an hour),
//!    the alerts' delivery latency and the latency from their sample's event time to
//!    the alert consumed (two trips through the broker).
//!
//! Rates are over the busy span (first record to last), so group joins and checkpoint
//! restores, which both sides pay once, do not dilute them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use herd::config::HerdConfig;
use herd::produce::{Dest, KeyBy, Pace, Window, produce};
use herd::simulate::{SimConfig, simulate};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/broker.rs"]
mod broker;
#[allow(unreachable_pub)]
#[path = "support/live.rs"]
mod live;

use live::{config, drain, live_stream, now_ms};

/// How long the live stream of the latency measurement runs.
const LIVE_SECS: u64 = 30;
/// Its fleet: containers in groups of ten (1,000 per partition).
const LIVE_CONTAINERS: u64 = 3000;

fn dest(cfg: &HerdConfig) -> Dest {
    let i = &cfg.stream.topics.inputs;
    Dest::ByKind {
        samples: i[0].clone(),
        events: i[1].clone(),
        metrics: i[2].clone(),
    }
}

/// Consumes `n` records of `topics` with a plain consumer, dropping them; returns the
/// rate over the busy span and, when `latency` is set, each record's produce→consume
/// latency.
fn raw_consume(
    bootstrap: &str,
    group: &str,
    topics: &[String],
    n: u64,
    mut latency: Option<&mut Histogram<u64>>,
    mut from_event: Option<&mut Histogram<u64>>,
    stop: &AtomicBool,
) -> anyhow::Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    c.subscribe(&names)?;
    let (mut got, mut first, mut last) = (0u64, None, Instant::now());
    while got < n && !stop.load(Ordering::Relaxed) {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                got += 1;
                last = Instant::now();
                first.get_or_insert(last);
                if let (Some(h), Some(ts)) = (latency.as_deref_mut(), m.timestamp().to_millis()) {
                    let _ = h.record((now_ms() - ts).max(1) as u64);
                }
                // An alert's `ts` is its sample's event time: on the live stream, when
                // the sample was produced.
                // Parsed only for the alerts (a tuple of both would parse every record
                // of the broker's own baseline consumer too).
                if let Some(h) = from_event.as_deref_mut()
                    && let Some(ts) = m.payload().and_then(alert_ts_ms)
                {
                    let _ = h.record((now_ms() - ts).max(1) as u64);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => anyhow::bail!("raw consumer: {e}"),
        }
    }
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(got as f64 / span.max(1e-9))
}

/// The `ts` of an alert record, in milliseconds.
fn alert_ts_ms(payload: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Alert<'a> {
        #[serde(borrow)]
        ts: &'a str,
    }
    let a: Alert<'_> = serde_json::from_slice(payload).ok()?;
    herd_ingest::time::parse_rfc3339_ms(a.ts)
}

/// A plain consumer on its own thread recording produce→consume latency until `stop`
/// (or `n` records); on `alerts`, also the latency from each alert's sample's event
/// time (the payload is parsed only then: the broker's own baseline stays a bare
/// consume).
fn spawn_latency_consumer(
    bootstrap: &str,
    group: &'static str,
    topics: Vec<String>,
    alerts: bool,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<(Histogram<u64>, Histogram<u64>)>> {
    let (b, stop) = (bootstrap.to_owned(), Arc::clone(stop));
    std::thread::spawn(move || {
        let mut h = herd::stream::task::new_latency_histogram();
        let mut e = herd::stream::task::new_latency_histogram();
        let from_event = alerts.then_some(&mut e);
        raw_consume(
            &b,
            group,
            &topics,
            u64::MAX,
            Some(&mut h),
            from_event,
            &stop,
        )?;
        Ok((h, e))
    })
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let hours = args
        .iter()
        .position(|a| a == "--hours")
        .and_then(|i| args.get(i + 1))
        .and_then(|h| h.parse().ok())
        .unwrap_or(48u32);
    let dir = std::env::temp_dir().join(format!("herd-e2e-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = simulate(
        &SimConfig {
            seed: 11,
            hours,
            interval_s: 20,
            recur_after_h: None,
        },
        &dir,
    )?;
    let files: Vec<PathBuf> = [
        "stats.jsonl",
        "stats-raw.jsonl",
        "events.jsonl",
        "falco.jsonl",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    let broker = broker::Broker::start(&dir.join("broker.log"));
    let bootstrap = broker.bootstrap.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let never = AtomicBool::new(false);
    eprintln!(
        "herd e2e: {} lines of a simulated fleet ({hours} h), Tansu at {bootstrap}",
        sim.lines
    );

    // 1 and 2: the same pre-filled topics, consumed raw, then by a herd worker.
    let cfg = config(&bootstrap, "rate");
    rt.block_on(herd::stream::kafka::prepare_topics(&cfg.kafka, &cfg.stream))?;
    let n = produce(
        &cfg.kafka,
        &files,
        &dest(&cfg),
        KeyBy::Route,
        Pace::Fast,
        Window::default(),
        &never,
    )?
    .records;
    let raw = raw_consume(
        &bootstrap,
        "rate-raw",
        &cfg.stream.topics.inputs,
        n,
        None,
        None,
        &never,
    )?;
    let s = drain(&cfg, n)?;
    let span = s
        .busy
        .map_or(0.0, |(a, b)| b.duration_since(a).as_secs_f64());
    let herd_rate = s.counters.lines as f64 / span.max(1e-9);

    // 3: latency at half of herd's rate, broker baseline measured beside it, on a live
    // stream: event time is the wall clock, as in production. (A recorded fleet
    // replayed at this rate runs event time thousands of times faster than the clock,
    // and the event-time merge then rightly waits for an input that looks minutes
    // behind: that measures the replay, not herd.)
    let mut cfg = config(&bootstrap, "lat");
    // Peers are compared after ten seconds of history rather than an hour, so that the
    // replicas that depart half-way raise alerts within the run.
    cfg.detect.baseline.warmup_ms = 10_000;
    rt.block_on(herd::stream::kafka::prepare_topics(&cfg.kafka, &cfg.stream))?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (cfg, stop) = (cfg.clone(), Arc::clone(&stop));
        std::thread::spawn(move || herd::stream::worker::run(&cfg, &cfg.kafka, &stop))
    };
    let base = spawn_latency_consumer(
        &bootstrap,
        "lat-raw",
        cfg.stream.topics.inputs.clone(),
        false,
        &stop,
    );
    let alerts = spawn_latency_consumer(
        &bootstrap,
        "lat-alerts",
        vec![cfg.stream.topics.alerts.clone()],
        true,
        &stop,
    );
    // Let the consumers join before records flow.
    std::thread::sleep(Duration::from_secs(8));
    let half = (herd_rate / 2.0).max(100.0);
    let live_n = live_stream(
        &bootstrap,
        &cfg,
        half,
        Duration::from_secs(LIVE_SECS),
        LIVE_CONTAINERS,
        Some(Duration::from_secs(LIVE_SECS / 2)),
    )?;
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let s = worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    let (base, _) = base
        .join()
        .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    let (alert, sample_alert) = alerts
        .join()
        .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "herd e2e: live stream of {live_n} records at {half:.0}/s, {} alerts",
        s.counters.alerts
    );

    let l = &s.latency_ms;
    println!("herd end-to-end harness (one machine, one Tansu broker, one run; {n} records)");
    println!("  raw rdkafka consume (drop)      {raw:>10.0} records/s");
    println!("  herd run end to end             {herd_rate:>10.0} records/s");
    println!(
        "  ratio                           {:>10.2}",
        herd_rate / raw.max(1e-9)
    );
    println!(
        "latency at half of herd's rate ({half:.0} records/s, a live stream: event time is the clock), milliseconds"
    );
    println!("                                  p50    p99   p99.9    max      n");
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "  {name:<30}{:>5}  {:>5}  {:>6}  {:>5}  {:>5}",
            pct(h, 0.5),
            pct(h, 0.99),
            pct(h, 0.999),
            h.max(),
            h.len()
        );
    };
    row("broker produce→consume", &base);
    row("herd record→scored", l);
    row("herd alert produce→consume", &alert);
    row("herd sample→alert consumed", &sample_alert);
    let above = pct(l, 0.99) as i64 - pct(&base, 0.99) as i64;
    println!("  herd record→scored p99 above the broker's: {above} ms");
    // For `scripts/bench-figures`: figure, herd, baseline, target.
    println!(
        "FIGURE e2e_ratio {:.2} raw {raw:.0}/s herd {herd_rate:.0}/s target >= 0.6",
        herd_rate / raw.max(1e-9)
    );
    println!(
        "FIGURE latency_p99_above_broker_ms {above} broker p99 {} ms target <= 25",
        pct(&base, 0.99)
    );
    Ok(())
}
