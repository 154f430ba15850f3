//! Alert → complete evidence bundle, on the real Docker engine (issue 4's benchmark).
//!
//! `cargo bench --bench evidence` (needs Tansu: `HERD_TANSU`, as `scripts/check`
//! installs it; and Docker with the busybox test image, which it imports). It runs a
//! broker, one `herd run` worker and one `herd agent`, `HERD_BENCH_GROUPS` groups (15)
//! of three busybox replicas, and makes every replica misbehave once with an `exec` of
//! its own, a group at a time, three rounds. The policy captures every incident. For
//! each incident it reports the time from the alert's Kafka timestamp (when the worker
//! produced it) to the `created` time of the bundle's `manifest.json` (when the agent
//! finished writing it): the whole path worker → Kafka → agent → Docker API → store.

#[path = "../tests/support/broker.rs"]
#[allow(dead_code, unreachable_pub)]
mod broker;
#[path = "../tests/support/docker.rs"]
#[allow(dead_code, unreachable_pub)]
mod docker;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use broker::{Broker, Names, Worker, consume, herd};

fn main() {
    if std::env::var_os("HERD_TANSU").is_none() {
        eprintln!("evidence bench: set HERD_TANSU to a Tansu binary (scripts/check installs one)");
        return;
    }
    let groups: usize = std::env::var("HERD_BENCH_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Broker::start(&tmp.path().join("broker.log"));
    let names = Names::new("evbench");
    let run = format!("herd-bench-{}", std::process::id());
    let fleet = docker::Fleet::new(&run);
    let evidence = tmp.path().join("evidence");
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[guards]\ngroup_actions_per_minute = 100\n[[policy]]\nname = \"capture-all\"\nactions = [{ action = \"capture\" }]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev_url = format!("file://{}", evidence.display());
    let policy_s = policy.display().to_string();
    let env: Vec<(&str, &str)> = vec![
        ("HERD_RESPOND__POLICY_FILE", &policy_s),
        ("HERD_RESPOND__EVIDENCE_URL", &ev_url),
        ("HERD_DETECT__CORROBORATION_MS", "3000"),
        ("HERD_DETECT__BASELINE__WARMUP_MS", "15000"),
    ];
    let worker = Worker::start_with(&names, &broker, tmp.path().join("worker.log"), &env);
    let agent_log =
        std::fs::File::create(tmp.path().join("agent.log")).unwrap_or_else(|e| panic!("{e}"));
    let state = tmp.path().join("state").display().to_string();
    let mut agent = herd()
        .arg("agent")
        .envs(names.env(&broker))
        .envs(env.iter().copied())
        .envs([
            ("HERD_AGENT__HOST", "bench-host"),
            ("HERD_AGENT__LABEL", &format!("herd.test={run}")),
            ("HERD_AGENT__INTERVAL_MS", "1000"),
            ("HERD_AGENT__EVIDENCE_URL", &ev_url),
            ("HERD_AGENT__STATE_DIR", &state),
            ("HERD_AGENT__MAX_ACTIONS_PER_MINUTE", "1000"),
            (
                "RUST_LOG",
                std::env::var("HERD_BENCH_AGENT_LOG")
                    .as_deref()
                    .unwrap_or("herd=warn"),
            ),
        ])
        .stderr(agent_log)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));

    let images: Vec<String> = (0..groups)
        .map(|g| docker::image(&format!("herd-bench/g{g}"), &format!("g{g}")))
        .collect();
    let replicas: Vec<Vec<String>> = images
        .iter()
        .enumerate()
        .map(|(g, img)| {
            (0..3)
                .map(|r| fleet.start(img, &format!("g{g}r{r}")))
                .collect()
        })
        .collect();
    eprintln!("evidence bench: {groups} groups of 3 replicas started; warming up");
    std::thread::sleep(Duration::from_secs(25));
    for round in 0..3 {
        for (g, rs) in replicas.iter().enumerate() {
            let cmd = format!("echo {g}-{round} > /tmp/marker-{round}; sleep 600");
            fleet.exec_detached(&rs[round], &["/bin/sh", "-c", &cmd]);
        }
        std::thread::sleep(Duration::from_secs(8));
    }
    let want = groups * 3;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut captured = Vec::new();
    while Instant::now() < deadline {
        captured = consume(&names, &broker, &names.topic("responses"))
            .into_iter()
            .filter_map(|r| r.get("payload").cloned())
            .filter(|r| r["action"] == "capture" && r["outcome"] == "ok")
            .collect();
        if captured.len() >= want {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let mut first_alert: BTreeMap<String, i64> = BTreeMap::new();
    for r in consume(&names, &broker, &names.topic("alerts")) {
        let (Some(id), Some(ts)) = (
            r["payload"]["incident_id"].as_str(),
            r["timestamp_ms"].as_i64(),
        ) else {
            continue;
        };
        let e = first_alert.entry(id.to_owned()).or_insert(ts);
        *e = (*e).min(ts);
    }
    let mut lat = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut exec_ms = Vec::new();
    for r in &captured {
        let id = r["incident_id"].as_str().unwrap_or_default();
        let Ok(m) = std::fs::read(evidence.join(id).join("manifest.json")) else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap_or_default();
        let created = m["created"]
            .as_str()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.timestamp_millis());
        if let (Some(c), Some(a)) = (created, first_alert.get(id)) {
            let _ = lat.record((c - a).max(1) as u64);
        }
        exec_ms.push(r["duration_ms"].as_u64().unwrap_or(0));
    }
    exec_ms.sort_unstable();
    let pct = |v: &[u64], q: f64| {
        v.get(
            ((v.len() as f64 * q).ceil() as usize)
                .saturating_sub(1)
                .min(v.len().saturating_sub(1)),
        )
        .copied()
        .unwrap_or(0)
    };
    println!(
        "alert -> complete bundle: n={} of {want} incidents, p50={} ms, p99={} ms, max={} ms",
        lat.len(),
        lat.value_at_quantile(0.5),
        lat.value_at_quantile(0.99),
        lat.max()
    );
    println!(
        "capture itself (agent, Docker API + store): p50={} ms, p99={} ms",
        pct(&exec_ms, 0.5),
        pct(&exec_ms, 0.99)
    );
    let _ = agent.kill();
    let _ = agent.wait();
    if std::env::var_os("HERD_BENCH_KEEP").is_some() {
        eprintln!("logs kept in {}", tmp.keep().display());
    }
    drop(worker);
    drop(fleet);
}
