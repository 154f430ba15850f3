//! Soak: a `herd run` worker process under a live stream at 80 % of its maximum rate for
//! 30 minutes (issue 8), against a real broker (Tansu with SQLite storage, so that the
//! broker's memory does not grow with the log). On demand, never in CI:
//! `scripts/soak` (or `cargo bench --bench soak -- --minutes 30`).
//!
//! 1. The maximum rate: a backlog of the live stream's records drained by a worker
//!    (records over its busy span), unless `--rate` gives it.
//! 2. The soak: the live stream at `--fraction` (0.8) of that, with enough containers
//!    that each is sampled about once a second, as Docker's stats stream does, by a
//!    worker with a capture policy loaded (so its response loop keeps every container's
//!    observation ring, as in production). Every 10 s the worker's RSS (`/proc`), its
//!    heap as its allocator accounts for it, its consumer lag and the input librdkafka
//!    holds prefetched (`/metrics`) are sampled.
//! 3. At the end the worker is stopped (SIGTERM) and its exit summary read.
//!
//! The soak's log topics keep [`RETENTION`] of records (`cleanup.policy = delete`), and
//! Tansu's maintenance deletes older ones every [`MAINTENANCE`]: 30 minutes at 9,000
//! records/s is ~16 GB of log, and Tansu's SQLite storage exited without a word at 4.7
//! GiB in an earlier run that kept everything.
//!
//! It passes when RSS (its mean over a minute) grew by less than 5 % from the end of the
//! warm-up to the end. The warm-up is a sixth of the run, and at least until every
//! container's observation ring is full (`respond.before_ms + after_ms`, seven minutes,
//! and one more; at most half the run): every container seen, every baseline filled,
//! every bounded buffer at its bound.
//! The lag stayed bounded (its peak over the second half no more than twice that of the
//! first half plus one second of input); and the counters balance (every record
//! produced was taken once and given one outcome). It prints one `SOAK` line per
//! criterion and exits non-zero when one fails.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[allow(dead_code, unreachable_pub)]
mod support {
    #[path = "../../tests/support/broker.rs"]
    pub mod broker;
    #[path = "live.rs"]
    pub mod live;
    #[path = "../../tests/support/monitoring.rs"]
    pub mod monitoring;
}

use support::broker::{Broker, free_port};
use support::live::{config, live_stream};

/// How long the soak's log topics keep records: minutes more than the worker's lag.
const RETENTION: Duration = Duration::from_secs(180);
/// How often Tansu deletes what its retention let go.
const MAINTENANCE: Duration = Duration::from_secs(30);

/// Creates the soak's topics as the worker would (`prepare_topics` then finds them),
/// but with the log topics retaining [`RETENTION`] only.
async fn create_retained_topics(cfg: &herd::config::HerdConfig) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut c = rdkafka::ClientConfig::new();
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let t = &cfg.stream.topics;
    let retention = RETENTION.as_millis().to_string();
    let names: Vec<&str> = t
        .inputs
        .iter()
        .map(String::as_str)
        .chain([t.repartition.as_str(), t.alerts.as_str(), t.dlq.as_str()])
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(n, cfg.stream.partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", "delete")
                .set("retention.ms", &retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(topics.iter(), &opts).await? {
        r.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code}"))?;
    }
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

const MIB: f64 = 1_048_576.0;

/// Resident set of a process, bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// What the soak says when its broker exited `after` the stream began (its logs and
/// database are in `dir`).
fn broker_died(st: std::process::ExitStatus, after: Duration, dir: &std::path::Path) -> String {
    let db = std::fs::metadata(dir.join("broker").join("tansu.db")).map_or(0, |m| m.len());
    format!(
        "the broker exited ({st}) after {:.0} s, its database at {:.2} GiB: the soak \
         measured nothing of herd past this point (logs in {})",
        after.as_secs_f64(),
        db as f64 / f64::from(1u32 << 30),
        dir.display()
    )
}

/// What the soak reads from a worker's `/metrics` every 10 s.
#[derive(Debug, Clone, Copy)]
struct Gauges {
    /// Total consumer lag, records.
    lag: f64,
    /// Input librdkafka holds prefetched, bytes.
    prefetch: f64,
    /// The allocator's heap: allocated by herd, and resident (bytes).
    heap: (f64, f64),
}

/// One sample of the worker, `at` seconds into the stream.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss: u64,
    gauges: Gauges,
}

fn worker_gauges(port: u16) -> Option<Gauges> {
    let (status, body) = support::monitoring::get(port, "/metrics").ok()?;
    let sum = |name: &str| {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (status == 200).then(|| Gauges {
        lag: sum("herd_consumer_lag_records"),
        prefetch: sum("herd_consumer_prefetch_bytes"),
        heap: (
            sum("herd_heap_allocated_bytes"),
            sum("herd_heap_resident_bytes"),
        ),
    })
}

/// The maximum rate, as the end-to-end harness measures it: a simulated fleet's backlog
/// (twelve hours, a sample every 20 s) drained by an in-process worker, records over
/// its busy span.
fn max_rate(
    bootstrap: &str,
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> anyhow::Result<f64> {
    use herd::produce::{Dest, KeyBy, Pace, Window, produce};
    let cfg = config(bootstrap, "soak-max");
    rt.block_on(herd::stream::kafka::prepare_topics(&cfg.kafka, &cfg.stream))?;
    let sim = dir.join("fleet");
    herd::simulate::simulate(
        &herd::simulate::SimConfig {
            seed: 13,
            hours: 12,
            interval_s: 20,
            recur_after_h: None,
        },
        &sim,
    )?;
    let files: Vec<std::path::PathBuf> = [
        "stats.jsonl",
        "stats-raw.jsonl",
        "events.jsonl",
        "falco.jsonl",
    ]
    .iter()
    .map(|f| sim.join(f))
    .collect();
    let i = &cfg.stream.topics.inputs;
    let dest = Dest::ByKind {
        samples: i[0].clone(),
        events: i[1].clone(),
        metrics: i[2].clone(),
    };
    let never = AtomicBool::new(false);
    let n = produce(
        &cfg.kafka,
        &files,
        &dest,
        KeyBy::Route,
        Pace::Fast,
        Window::default(),
        &never,
    )?
    .records;
    let s = support::live::drain(&cfg, n)?;
    let span = s
        .busy
        .map_or(0.0, |(a, b)| b.duration_since(a).as_secs_f64());
    Ok(s.counters.lines as f64 / span.max(1e-9))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let minutes: f64 = arg(&args, "--minutes").unwrap_or(30.0);
    let fraction: f64 = arg(&args, "--fraction").unwrap_or(0.8);
    let dir = std::env::temp_dir().join(format!("herd-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut broker =
        Broker::start_retaining(&dir.join("broker"), &dir.join("broker.log"), MAINTENANCE);
    let bootstrap = broker.bootstrap.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let max = match arg::<f64>(&args, "--rate") {
        Some(r) => r,
        None => max_rate(&bootstrap, &rt, &dir)?,
    };
    let rate = max * fraction;
    let containers: u64 = arg(&args, "--containers").unwrap_or((rate as u64).max(3000));
    eprintln!(
        "herd soak: maximum {max:.0} records/s; {minutes} min at {rate:.0}/s, {containers} containers"
    );

    // The worker: a process of its own, so its RSS is its own.
    let mut cfg = config(&bootstrap, "soak");
    cfg.stream.topics.actions = "soak.actions".into();
    cfg.stream.topics.responses = "soak.responses".into();
    // A worker in production runs its response loop: a capture policy, so that every
    // container's observation ring is kept (and counted in the RSS) as it would be.
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\nname = \"capture\"\nmatch = { severity = \"high\" }\nactions = [{ action = \"capture\" }]\n",
    )?;
    rt.block_on(create_retained_topics(&cfg))?;
    rt.block_on(herd::stream::kafka::prepare_topics(&cfg.kafka, &cfg.stream))?;
    let port = free_port();
    let t = &cfg.stream.topics;
    let log = std::fs::File::create(dir.join("worker.log"))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("run")
        .env("HERD_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env(
            "HERD_STREAM__TOPICS__INPUTS",
            format!("[\"{}\"]", t.inputs.join("\",\"")),
        )
        .env("HERD_STREAM__TOPICS__REPARTITION", &t.repartition)
        .env("HERD_STREAM__TOPICS__ALERTS", &t.alerts)
        .env("HERD_STREAM__TOPICS__DLQ", &t.dlq)
        .env("HERD_STREAM__TOPICS__BASELINES", &t.baselines)
        .env("HERD_STREAM__TOPICS__ACTIONS", &t.actions)
        .env("HERD_STREAM__TOPICS__RESPONSES", &t.responses)
        .env("HERD_RESPOND__POLICY_FILE", &policy)
        .env("HERD_STREAM__GROUP_ID", &cfg.stream.group_id)
        .env("HERD_STREAM__PARTITIONS", "3")
        .env("HERD_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "herd=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let span = Duration::from_secs_f64(minutes * 60.0);
    let done = Arc::new(AtomicBool::new(false));
    let samples = std::thread::scope(|s| -> anyhow::Result<_> {
        let producer = s.spawn(|| {
            let r = live_stream(&bootstrap, &cfg, rate, span, containers, None);
            done.store(true, Ordering::Relaxed);
            r
        });
        let start = Instant::now();
        let mut samples: Vec<Sample> = Vec::new();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(10));
            // A broker that dies ends the soak: say so, instead of the producer's
            // queue-full error a little later.
            if let Some(st) = broker.exit_status() {
                anyhow::bail!(broker_died(st, start.elapsed(), &dir));
            }
            let (rss, gauges) = (
                rss(pid).unwrap_or(0),
                worker_gauges(port).unwrap_or(Gauges {
                    lag: f64::NAN,
                    prefetch: f64::NAN,
                    heap: (f64::NAN, f64::NAN),
                }),
            );
            let at = start.elapsed().as_secs_f64();
            let db = std::fs::metadata(dir.join("broker").join("tansu.db")).map_or(0, |m| m.len());
            eprintln!(
                "herd soak: {at:>6.0} s  RSS {:>7.1} MiB (heap {:>6.1} allocated, {:>6.1} resident)  lag {:>8.0}  prefetched {:>5.1} MiB  broker db {:.2} GiB",
                rss as f64 / MIB,
                gauges.heap.0 / MIB,
                gauges.heap.1 / MIB,
                gauges.lag,
                gauges.prefetch / MIB,
                db as f64 / f64::from(1u32 << 30)
            );
            samples.push(Sample { at, rss, gauges });
        }
        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))?;
        // The producer's queue fills within seconds of the broker's death, often before
        // the next sample sees it: name the cause, not the symptom.
        let produced = match (produced, broker.exit_status()) {
            (Err(e), Some(st)) => {
                return Err(e.context(broker_died(st, start.elapsed(), &dir)));
            }
            (r, _) => r?,
        };
        Ok((samples, produced))
    })?;
    let (samples, produced) = samples;
    // Let the worker take the tail, then stop it as an orchestrator does.
    std::thread::sleep(Duration::from_secs(15));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait()?;
    let text = std::fs::read_to_string(dir.join("worker.log"))?;
    let taken: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("herd run: input "))
        .filter(|l| !l.contains(" offsets skipped "))
        .filter_map(|l| {
            l.split_once(": ")?
                .1
                .split_once(" records")?
                .0
                .parse::<u64>()
                .ok()
        })
        .sum();

    // Records the broker deleted before the worker read them (retention is three
    // minutes here): the worker counts the offsets it went past with no record.
    let skipped: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("herd run: input "))
        .filter_map(|l| {
            l.split_once(": ")?
                .1
                .split_once(" offsets skipped ")?
                .0
                .parse::<u64>()
                .ok()
        })
        .sum();
    // Until then the rings of the response loop fill (seven minutes of each container's
    // observations): state by design, not growth.
    let ring_s = (cfg.respond.before_ms + cfg.respond.after_ms).max(0) as f64 / 1000.0;
    // (At most half the run: a shorter run measures growth while the rings still fill.)
    let warm = (span.as_secs_f64() / 6.0)
        .max(ring_s + 60.0)
        .min(span.as_secs_f64() / 2.0);
    // RSS over a minute, not one sample: it moves by a few percent from one sample to
    // the next (allocator arenas), as much as the criterion allows. The heap's figures
    // over the same minutes say what the growth was: herd's data (allocated), what the
    // allocator kept (resident less allocated), or neither (librdkafka, stacks).
    let mean = |from: f64, to: f64, of: &dyn Fn(&Sample) -> f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| (from..to).contains(&s.at))
            .map(of)
            .filter(|x| x.is_finite())
            .collect();
        v.iter().sum::<f64>() / (v.len().max(1) as f64)
    };
    let last = samples.last().map_or(0.0, |s| s.at);
    let (early, late) = ((warm, warm + 60.0), (last - 60.0 + 1.0, f64::INFINITY));
    let rss_of = |s: &Sample| s.rss as f64;
    let (base, end) = (
        mean(early.0, early.1, &rss_of),
        mean(late.0, late.1, &rss_of),
    );
    let growth = 100.0 * (end - base) / base.max(1.0);
    let heap = |of: &dyn Fn(&Sample) -> f64| {
        (
            mean(early.0, early.1, of) / MIB,
            mean(late.0, late.1, of) / MIB,
        )
    };
    let allocated = heap(&|s| s.gauges.heap.0);
    let resident = heap(&|s| s.gauges.heap.1);
    let half = span.as_secs_f64() / 2.0;
    let peak = |first: bool| {
        samples
            .iter()
            .filter(|s| (s.at < half) == first && s.gauges.lag.is_finite())
            .map(|s| s.gauges.lag)
            .fold(0.0f64, f64::max)
    };
    let (lag1, lag2) = (peak(true), peak(false));
    let lag_ok = lag2 <= 2.0 * lag1 + rate;
    let rss_ok = growth < 5.0;
    // A run the broker refused deliveries to is processed again from its last commit
    // after it went back to the last commit, and counted again.
    let restarts: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("herd run: went back to the last commit "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let balance_ok = status.success()
        && skipped == 0
        && (taken == produced || (restarts > 0 && taken > produced));
    println!(
        "SOAK rss_growth_pct {growth:.2} ({:.1} MiB the minute after the warm-up of {warm:.0} s, {:.1} MiB the last minute; heap allocated {:.1} -> {:.1}, resident {:.1} -> {:.1}) target < 5 {}",
        base / MIB,
        end / MIB,
        allocated.0,
        allocated.1,
        resident.0,
        resident.1,
        if rss_ok { "ok" } else { "FAILED" }
    );
    println!(
        "SOAK lag_peak first half {lag1:.0} second half {lag2:.0} records (bound {:.0}) {}",
        2.0 * lag1 + rate,
        if lag_ok { "ok" } else { "FAILED" }
    );
    println!(
        "SOAK balance produced {produced} taken {taken} skipped {skipped} (worker exit {status}, {restarts} returns to the last commit) {}",
        if balance_ok { "ok" } else { "FAILED" }
    );
    drop(broker);
    if rss_ok && lag_ok && balance_ok {
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    } else {
        anyhow::bail!("soak failed; the worker's log is in {}", dir.display())
    }
}
