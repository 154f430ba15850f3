//! Memory per tracked container and per peer group, the RSS of 100k containers, and the
//! `/metrics` scrape with every series populated.
//!
//! `cargo bench --bench footprint` prints each figure beside its target (issue
//! "Performance to the limit"). Each memory figure is one fresh process (this binary
//! run again with `--child CONTAINERS GROUPS`): a worker's whole pipeline (decoder,
//! normaliser with its registry and counter state, detection engine) fed Docker stats
//! envelopes, the agent's format, for every container over `ROUNDS` samples. Memory is
//! the process's resident set (what an operator's limit sees), before and after.
//! Two runs with the same containers in different numbers of groups separate the cost of
//! a container from the cost of a group: `rss = base + containers·b + groups·c`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use herd::metrics::{Health, WorkerMetrics};
use herd_detect::DetectConfig;
use herd_ingest::{Limits, NormalizerConfig, RejectReason};

/// Samples per container: enough for every sketch to hold a realistic spread of buckets.
const ROUNDS: u64 = 24;
const STEP_S: u64 = 10;
const T0_S: u64 = 1_795_428_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn stamp(s: u64) -> String {
    herd_ingest::time::format_ms((s * 1000) as i64)
}

/// One agent envelope of container `i` (of group `i % groups`) at round `k`. Counters
/// grow at a per-container rate with a deterministic jitter, as a real fleet's do.
fn envelope(i: u64, groups: u64, k: u64) -> String {
    let g = i % groups;
    let j = |salt: u64| {
        (i.wrapping_mul(2_654_435_761)
            .wrapping_add(k.wrapping_mul(40_503))
            .wrapping_add(salt)
            % 1000) as f64
            / 1000.0
    };
    let t = T0_S + k * STEP_S;
    let cpu = (k as f64 * (3.0 + j(1)) * 1e9) as u64;
    let sys = k * 40_000_000_000;
    let mem = (2e8 * (1.0 + 0.05 * j(2))) as u64;
    let rx = (k as f64 * 3e6 * (1.0 + 0.3 * j(3))) as u64;
    let tx = (k as f64 * 9e6 * (1.0 + 0.3 * j(4))) as u64;
    let pids = 10 + (j(5) * 4.0) as u64;
    format!(
        r#"{{"host":"node-{h}","container":{{"id":"{i:064x}","name":"svc{g}-{i}","image":"bench/svc{g}:1","image_digest":"sha256:{g:064x}","labels":{{"app":"svc{g}","io.kubernetes.pod.namespace":"bench"}}}},"stats":{{"read":"{read}","preread":"{pre}","pids_stats":{{"current":{pids}}},"blkio_stats":{{"io_service_bytes_recursive":[{{"major":8,"minor":0,"op":"read","value":{blk}}},{{"major":8,"minor":0,"op":"write","value":{blk}}}]}},"cpu_stats":{{"cpu_usage":{{"total_usage":{cpu}}},"system_cpu_usage":{sys},"online_cpus":4}},"precpu_stats":{{"cpu_usage":{{"total_usage":0}},"system_cpu_usage":0,"online_cpus":4}},"memory_stats":{{"usage":{mem},"stats":{{"inactive_file":4194304}},"limit":536870912}},"name":"/svc{g}-{i}","id":"{i:064x}","networks":{{"eth0":{{"rx_bytes":{rx},"rx_packets":{rxp},"tx_bytes":{tx},"tx_packets":{txp}}}}}}}}}"#,
        h = i % 50,
        read = stamp(t),
        pre = stamp(t.saturating_sub(1)),
        blk = k * 4096,
        rxp = rx / 1000,
        txp = tx / 1000,
    )
}

/// The allocator's count of the bytes the process holds (jemalloc, herd's allocator).
fn heap_bytes() -> anyhow::Result<u64> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(stats::allocated::read().map_err(|e| anyhow::anyhow!("{e}"))? as u64)
}

/// The child: feeds `containers` in `groups` through a worker's pipeline (what
/// `herd::pipeline::Pipeline` holds: decoder, its identity cache, normaliser, engine),
/// prints its resident set, then drops the parts one by one and prints the heap each
/// held. The identities the parts share go with the normaliser, which drops last.
fn child(containers: u64, groups: u64) -> anyhow::Result<()> {
    let decoder = herd_ingest::Decoder::new(Limits::default());
    let mut identities = herd_ingest::Identities::new(1 << 18);
    let mut normalizer = herd_ingest::Normalizer::new(NormalizerConfig::default());
    let mut engine = herd_detect::Engine::new(DetectConfig::default())?;
    let mut obs = Vec::new();
    let mut alerts = Vec::new();
    let before = rss_bytes();
    let start = Instant::now();
    for k in 0..ROUNDS {
        for i in 0..containers {
            let line = envelope(i, groups, k);
            let rec = decoder
                .decode_with(line.as_bytes(), &mut identities)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            obs.clear();
            alerts.clear();
            normalizer
                .normalize(rec, &mut obs)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            for o in &obs {
                engine.observe(o, &mut alerts);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = rss_bytes();
    let s = engine.stats();
    drop((obs, alerts));
    let h0 = heap_bytes()?;
    drop(engine);
    let h1 = heap_bytes()?;
    drop(identities);
    let h2 = heap_bytes()?;
    drop(normalizer);
    let h3 = heap_bytes()?;
    println!(
        "{before} {after} {} {} {elapsed:.1} {} {} {}",
        s.containers,
        s.groups,
        h0.saturating_sub(h1),
        h1.saturating_sub(h2),
        h2.saturating_sub(h3),
    );
    Ok(())
}

struct Run {
    delta: f64,
    after: f64,
    containers: f64,
    groups: f64,
    /// Heap held by the engine, the decoder's identity cache and the normaliser.
    heap: [f64; 3],
}

fn run_child(containers: u64, groups: u64) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["--child", &containers.to_string(), &groups.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    anyhow::ensure!(f.len() == 8, "unexpected child output {text:?}");
    println!(
        "  {containers} containers in {groups} groups: RSS {:.1} → {:.1} MiB ({} containers and {} groups tracked, fed in {:.1} s)",
        f[0] / 1048576.0,
        f[1] / 1048576.0,
        f[2],
        f[3],
        f[4]
    );
    Ok(Run {
        delta: f[1] - f[0],
        after: f[1],
        containers: f[2],
        groups: f[3],
        heap: [f[5], f[6], f[7]],
    })
}

/// The endpoint as a worker serves it, with every series of every label set populated.
struct Ops {
    m: WorkerMetrics,
    health: Health,
}

impl herd::http::Ops for Ops {
    fn metrics(&self) -> String {
        herd::metrics::encode(&self.m.registry)
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

fn populated_metrics() -> anyhow::Result<WorkerMetrics> {
    let m = WorkerMetrics::new()?;
    let topics = [
        "herd.samples",
        "herd.events",
        "herd.metrics",
        "herd.repartition",
    ];
    for t in topics {
        for o in ["scored", "filtered", "dead_lettered", "forwarded"] {
            m.input_records.with_label_values(&[t, o]).inc_by(123_456);
        }
        // A worker of a 64-partition deployment that owns every partition.
        for p in 0..64 {
            m.consumer_lag
                .with_label_values(&[t, &p.to_string()])
                .set(p * 10);
        }
    }
    for r in RejectReason::ALL {
        m.dlq_records.with_label_values(&[r.as_str()]).inc_by(7);
    }
    for phase in ["warmup", "learning", "locked"] {
        m.groups.with_label_values(&[phase]).set(1000);
    }
    for kind in ["capture", "pause", "isolate", "stop", "webhook"] {
        for outcome in ["done", "failed", "skipped"] {
            m.actions.with_label_values(&[kind, outcome]).inc();
        }
    }
    for i in 0..10_000 {
        m.latency.observe(f64::from(i) * 1e-4);
    }
    m.containers.set(100_000);
    Ok(m)
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Scrapes the real endpoint (`herd::http::serve`) over loopback, one connection per
/// scrape as Prometheus's default does.
fn scrape() -> anyhow::Result<()> {
    let ops = Arc::new(Ops {
        m: populated_metrics()?,
        health: Health::new(&[], 60_000),
    });
    let bytes = herd::metrics::encode(&ops.m.registry).len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener = rt.block_on(herd::http::bind(
        "127.0.0.1:0".parse().map_err(|e| anyhow::anyhow!("{e}"))?,
    ))?;
    let addr = listener.local_addr()?;
    rt.spawn(herd::http::serve(listener, ops.clone(), stop_rx));
    let mut times = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        anyhow::ensure!(body.starts_with(b"HTTP/1.1 200"), "scrape failed");
        if i >= 20 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let _ = stop_tx.send(true);
    let mut encode = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        std::hint::black_box(herd::metrics::encode(&ops.m.registry));
        encode.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "FIGURE scrape_ms {:.3} p50 {:.3} (encode alone p99 {:.3}; {} series bytes) target <= 10",
        percentile(&mut times, 0.99),
        percentile(&mut times, 0.5),
        percentile(&mut encode, 0.99),
        bytes
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let n = |k: usize| args.get(i + k).and_then(|s| s.parse::<u64>().ok());
        let (Some(c), Some(g)) = (n(1), n(2)) else {
            anyhow::bail!("--child CONTAINERS GROUPS");
        };
        return child(c, g);
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    println!("footprint: {ROUNDS} Docker stats envelopes per container, {STEP_S} s apart");
    let small = run_child(100_000, 1_000)?;
    let many = run_child(100_000, 10_000)?;
    let per_group = (many.delta - small.delta) / (many.groups - small.groups);
    let per_container = (small.delta - per_group * small.groups) / small.containers;
    // The same split for each part's heap: what a container and a group cost in each.
    for (k, part) in [
        "engine",
        "decoder's identity cache",
        "normaliser (with the identities)",
    ]
    .iter()
    .enumerate()
    {
        let g = (many.heap[k] - small.heap[k]) / (many.groups - small.groups);
        let c = (small.heap[k] - g * small.groups) / small.containers;
        println!("  heap of the {part}: {c:.0} bytes a container, {g:.0} a group");
    }
    println!(
        "FIGURE bytes_per_container {per_container:.0} target <= 1024\n\
         FIGURE bytes_per_group {per_group:.0} target <= 65536\n\
         FIGURE rss_100k_containers_mib {:.1} target <= 1024",
        many.after.max(small.after) / 1048576.0
    );
    scrape()
}
