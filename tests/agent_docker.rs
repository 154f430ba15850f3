//! `herd agent` against the real Docker engine and a real broker (issue 4): busybox
//! replicas, one misbehaving per group; samples and events on Kafka, an alert for the
//! misbehaving replica only, an evidence bundle whose hashes match its manifest,
//! containment seen by inspect, the quorum guard, capture of a container removed right
//! after its alert, and Docker failures recorded on `herd.responses`.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use sha2::Digest;
use support::agent::{Agent, payloads, wait_for, wait_for_seen};
use support::broker::{Broker, Names, Worker, consume, herd};
use support::docker::{Fleet, image};

fn response<'a>(rs: &'a [Value], incident: &str, action: &str) -> Option<&'a Value> {
    rs.iter()
        .find(|r| r["incident_id"] == incident && r["action"] == action)
}

/// A one-request HTTP server on 127.0.0.1 that keeps what was posted.
fn webhook() -> (String, std::sync::mpsc::Receiver<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}/hook",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // Headers, then Content-Length bytes of body.
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        let _ = tx.send(text[h + 4..].to_owned());
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, rx)
}

fn produce_command(broker: &Broker, topic: &str, key: &str, cmd: &Value) {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let line = cmd.to_string();
    p.send(BaseRecord::to(topic).key(key).payload(&line))
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    p.flush(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn command(host: &str, id: &str, container: &str, action: Value, timeout_ms: u64) -> Value {
    serde_json::json!({
        "format": 1, "id": id, "incident_id": id.split('/').next().unwrap_or(id),
        "action": action, "dry_run": false, "timeout_ms": timeout_ms, "host": host,
        "container_id": container, "container_name": container, "group": "g",
        "policy": "test", "alert_ms": chrono::Utc::now().timestamp_millis(),
    })
}

fn verify_bundle(dir: &Path, expect: &[&str]) -> Value {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let arts = manifest["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for a in &arts {
        let name = a["name"].as_str().unwrap_or_default();
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let hash: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            a["sha256"],
            hash.as_str(),
            "{name}: hash differs from the manifest"
        );
        assert_eq!(a["size"], bytes.len() as u64, "{name}: size differs");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(name))
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o400, "{name} is not read-only for its owner");
    }
    for want in expect {
        assert!(
            arts.iter().any(|a| a["name"] == *want),
            "{want} missing from the bundle: {manifest:#}"
        );
    }
    manifest
}

#[test]
fn agent_captures_evidence_and_contains_only_as_far_as_policy_says_issue_4() {
    let broker = Broker::start(
        &std::env::temp_dir().join(format!("herd-agent-broker-{}.log", std::process::id())),
    );
    let names = Names::new("agent");
    let run = format!("herd-it-{}", std::process::id());
    let host = format!("{run}-host");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let evidence = tmp.path().join("evidence");
    let (hook_url, hook_rx) = webhook();
    let fleet = Fleet::new(&run);
    let img_a = image("herd-test/a", "a");
    let img_b = image("herd-test/b", "b");
    let img_d = image("herd-test/d", "d");

    let policy = tmp.path().join("policies.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[guards]
max_contained_share = 0.5

[[policy]]
name = "contain-a"
match = {{ image = "herd-test/a:*" }}
actions = [
  {{ action = "capture" }},
  {{ action = "isolate" }},
  {{ action = "pause" }},
  {{ action = "notify", url = "{hook_url}" }},
]

[[policy]]
name = "solo-b"
match = {{ image = "herd-test/b:*" }}
actions = [{{ action = "capture" }}, {{ action = "stop", grace_s = 1 }}]
"#
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev_url = format!("file://{}", evidence.display());
    let common: Vec<(&str, String)> = vec![
        ("HERD_RESPOND__POLICY_FILE", policy.display().to_string()),
        ("HERD_RESPOND__EVIDENCE_URL", ev_url.clone()),
        ("HERD_RESPOND__AFTER_MS", "5000".into()),
        ("HERD_DETECT__CORROBORATION_MS", "5000".into()),
        // Groups here are seconds old: score after 15 s of history instead of an hour.
        ("HERD_DETECT__BASELINE__WARMUP_MS", "15000".into()),
    ];
    let worker_env: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker_log = tmp.path().join("worker.log");
    let worker = Worker::start_with(&names, &broker, worker_log.clone(), &worker_env);
    let mut agent_env = common.clone();
    let agent_port = support::broker::free_port();
    agent_env.extend([
        ("HERD_AGENT__HOST", host.clone()),
        ("HERD_AGENT__LABEL", format!("herd.test={run}")),
        ("HERD_AGENT__INTERVAL_MS", "1000".into()),
        ("HERD_AGENT__EVIDENCE_URL", ev_url),
        (
            "HERD_AGENT__STATE_DIR",
            tmp.path().join("state").display().to_string(),
        ),
        ("HERD_AGENT__WEBHOOK_ALLOW", format!("[\"{hook_url}\"]")),
        ("HERD_HTTP__LISTEN", format!("127.0.0.1:{agent_port}")),
    ]);
    let agent_log = tmp.path().join("agent.log");
    let mut agent = Agent::start(&names, &broker, agent_log.clone(), &agent_env);
    let logs = [worker_log.as_path(), agent_log.as_path()];

    let a: Vec<String> = (0..3)
        .map(|i| fleet.start(&img_a, &format!("a{i}")))
        .collect();
    let b0 = fleet.start(&img_b, "b0");
    let d: Vec<String> = (0..3)
        .map(|i| fleet.start(&img_d, &format!("d{i}")))
        .collect();
    let all: Vec<&String> = a.iter().chain([&b0]).chain(d.iter()).collect();
    let started = Instant::now();

    // Samples (agent envelopes) and events (start) of every container arrive on Kafka.
    wait_for(
        "samples of every container",
        Duration::from_secs(60),
        &logs,
        || {
            let s = payloads(&names, &broker, "samples");
            let ok = all.iter().all(|id| {
                s.iter()
                    .filter(|p| p["container"]["id"] == id.as_str())
                    .count()
                    >= 8
            });
            ok.then_some(())
        },
    );
    let events = payloads(&names, &broker, "events");
    for id in &all {
        assert!(
            events
                .iter()
                .any(|e| e["Actor"]["ID"] == id.as_str() && e["Action"] == "start"),
            "no start event for {id}"
        );
    }
    let sample = payloads(&names, &broker, "samples")
        .into_iter()
        .find(|p| p["container"]["id"] == a[0].as_str())
        .unwrap_or_default();
    assert_eq!(sample["host"], host.as_str());
    assert_eq!(sample["container"]["image"], img_a.as_str());
    assert!(
        sample["container"]["image_digest"]
            .as_str()
            .unwrap_or("")
            .starts_with("sha256:")
    );
    assert_eq!(sample["container"]["privileged"], false);

    // Misbehave, once the groups are past their warm-up: one replica of each group.
    std::thread::sleep(Duration::from_secs(22).saturating_sub(started.elapsed()));
    fleet.exec_detached(
        &a[0],
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/.x && echo pwned > /tmp/.x/miner && yes > /dev/null",
        ],
    );
    fleet.exec_detached(&b0, &["/bin/sh", "-c", "echo hi > /tmp/b; sleep 600"]);
    fleet.exec_detached(&d[0], &["/bin/sh", "-c", "echo bye > /tmp/d; sleep 600"]);

    let incident_of = |alerts: &[Value], id: &str| {
        alerts
            .iter()
            .find(|x| x["container_id"] == id)
            .and_then(|x| x["incident_id"].as_str().map(str::to_owned))
    };
    let (ia, ib, id0) = wait_for(
        "alerts for a0, b0 and d0",
        Duration::from_secs(90),
        &logs,
        || {
            let al = payloads(&names, &broker, "alerts");
            Some((
                incident_of(&al, &a[0])?,
                incident_of(&al, &b0)?,
                incident_of(&al, &d[0])?,
            ))
        },
    );

    // d0: the agent has been told (focus); the container is removed right away. Its
    // inspect and logs are still captured, by the die-triggered capture from the cache.
    wait_for("focus on d0", Duration::from_secs(30), &logs, || {
        let rs = payloads(&names, &broker, "responses");
        response(&rs, &id0, "focus")
            .filter(|r| r["outcome"] == "ok")
            .map(|_| ())
    });
    let removed_at = Instant::now();
    fleet.remove(&d[0]);
    let rd = wait_for(
        "the capture of removed d0",
        Duration::from_secs(30),
        &logs,
        || {
            let rs = payloads(&names, &broker, "responses");
            response(&rs, &id0, "capture").cloned()
        },
    );
    assert_eq!(rd["outcome"], "ok", "{rd:#}");
    let md = verify_bundle(&evidence.join(&id0), &["inspect.json", "logs-window.log"]);
    assert!(md["trigger"] == "die" || md["trigger"] == "oom", "{md:#}");
    let logs_d =
        std::fs::read_to_string(evidence.join(&id0).join("logs-window.log")).unwrap_or_default();
    assert!(
        logs_d.contains("tick"),
        "the logs of the removed container were lost: {logs_d:?}"
    );
    eprintln!(
        "d0 removed; its bundle was complete {} ms later",
        removed_at.elapsed().as_millis()
    );

    // a0: capture, isolate, pause, notify, in that order, each ok.
    let ra = wait_for("a0's actions", Duration::from_secs(60), &logs, || {
        let rs = payloads(&names, &broker, "responses");
        let got: Vec<Value> = ["capture", "isolate", "pause", "notify"]
            .iter()
            .filter_map(|act| response(&rs, &ia, act).cloned())
            .collect();
        (got.len() == 4).then_some(got)
    });
    for r in &ra {
        assert_eq!(r["outcome"], "ok", "{r:#}\n{}", agent.log());
    }
    let insp = fleet.inspect(&a[0]);
    let state = insp.state.clone().unwrap_or_default();
    assert_eq!(state.paused, Some(true), "a0 is not paused");
    let nets = insp
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    assert!(
        nets.is_empty(),
        "a0 is still connected to {:?}",
        nets.keys()
    );
    let posted = hook_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("webhook: {e}"));
    assert!(posted.contains(&ia), "the webhook got {posted}");
    let dir_a = evidence.join(&ia);
    let ma = verify_bundle(
        &dir_a,
        &[
            "inspect.json",
            "processes.json",
            "changes.json",
            "stats.json",
            "logs-tail.log",
            "logs-window.log",
            "observations-before.jsonl",
        ],
    );
    assert_eq!(ma["host"], host.as_str());
    assert_eq!(ma["alert"]["incident_id"], ia.as_str());
    assert!(ma["missing"].as_array().is_none_or(Vec::is_empty), "{ma:#}");
    let changes = std::fs::read_to_string(dir_a.join("changes.json")).unwrap_or_default();
    assert!(changes.contains("/tmp/.x/miner"), "{changes}");
    let procs = std::fs::read_to_string(dir_a.join("processes.json")).unwrap_or_default();
    assert!(procs.contains("yes"), "{procs}");
    // The alert names its bundle.
    let al = payloads(&names, &broker, "alerts");
    assert!(al.iter().any(|x| {
        x["incident_id"] == ia.as_str()
            && x["evidence"]
                .as_str()
                .is_some_and(|e| e.ends_with(&format!("{ia}/")))
    }));
    // The after-window arrives as an addendum chained to the manifest.
    wait_for(
        "a0's after-window addendum",
        Duration::from_secs(60),
        &logs,
        || dir_a.join("manifest-after.json").exists().then_some(()),
    );
    let after: Value = serde_json::from_slice(
        &std::fs::read(dir_a.join("manifest-after.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let first: String =
        sha2::Sha256::digest(std::fs::read(dir_a.join("manifest.json")).unwrap_or_default())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    assert_eq!(after["previous_manifest_sha256"], first.as_str());

    // b0 is its group's only replica: captured, but never stopped.
    let rb = wait_for("b0's actions", Duration::from_secs(60), &logs, || {
        let rs = payloads(&names, &broker, "responses");
        Some((
            response(&rs, &ib, "capture")?.clone(),
            response(&rs, &ib, "stop")?.clone(),
        ))
    });
    assert_eq!(rb.0["outcome"], "ok");
    assert_eq!(rb.1["outcome"], "refused");
    assert_eq!(rb.1["reason"], "quorum");
    assert_eq!(fleet.inspect(&b0).state.and_then(|s| s.running), Some(true));

    // Only the misbehaving replicas were alerted.
    let alerted: std::collections::BTreeSet<String> = payloads(&names, &broker, "alerts")
        .iter()
        .filter_map(|x| x["container_id"].as_str().map(str::to_owned))
        .collect();
    let expected: std::collections::BTreeSet<String> =
        [a[0].clone(), b0.clone(), d[0].clone()].into();
    assert_eq!(alerted, expected, "alerts for well-behaved replicas");

    // A redelivered command does nothing twice.
    let actions = payloads(&names, &broker, "actions");
    let capture_a = actions
        .iter()
        .find(|c| c["incident_id"] == ia.as_str() && c["action"]["kind"] == "capture")
        .cloned()
        .unwrap_or_default();
    produce_command(&broker, &names.topic("actions"), &host, &capture_a);
    // A container that is already gone: recorded, not retried.
    produce_command(
        &broker,
        &names.topic("actions"),
        &host,
        &command(
            &host,
            "gone/pause",
            "no-such-container",
            serde_json::json!({"kind": "pause"}),
            5000,
        ),
    );
    let (dup, gone) = wait_for(
        "the duplicate and the missing container",
        Duration::from_secs(30),
        &logs,
        || {
            let rs = payloads(&names, &broker, "responses");
            let dup = rs
                .iter()
                .filter(|r| r["command_id"] == format!("{ia}/capture"))
                .nth(1)?
                .clone();
            Some((dup, response(&rs, "gone", "pause")?.clone()))
        },
    );
    assert_eq!(dup["outcome"], "duplicate");
    assert_eq!(gone["outcome"], "failed");
    assert_eq!(gone["reason"], "not_found");
    assert_eq!(gone["attempts"], 1);

    // The daemon unreachable: a second agent pointed at a dead socket (its file is
    // there, nothing listens, as when dockerd stopped) records the failure after
    // retrying, and keeps running.
    let dead_sock = tmp.path().join("no-docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead_sock).unwrap_or_else(|e| panic!("{e}")));
    let host2 = format!("{run}-nodocker");
    let mut env2 = agent_env.clone();
    env2.retain(|(k, _)| {
        ![
            "HERD_AGENT__HOST",
            "HERD_AGENT__STATE_DIR",
            "HERD_HTTP__LISTEN",
        ]
        .contains(k)
    });
    let agent2_port = support::broker::free_port();
    env2.extend([
        ("HERD_HTTP__LISTEN", format!("127.0.0.1:{agent2_port}")),
        ("HERD_AGENT__HOST", host2.clone()),
        (
            "HERD_AGENT__STATE_DIR",
            tmp.path().join("state2").display().to_string(),
        ),
        ("DOCKER_HOST", format!("unix://{}", dead_sock.display())),
    ]);
    let mut agent2 = Agent::start(&names, &broker, tmp.path().join("agent2.log"), &env2);
    produce_command(
        &broker,
        &names.topic("actions"),
        &host2,
        &command(
            &host2,
            "nodocker/pause",
            &a[1],
            serde_json::json!({"kind": "pause"}),
            3000,
        ),
    );
    let un = wait_for(
        "the unreachable daemon's failure",
        Duration::from_secs(60),
        &[&tmp.path().join("agent2.log")],
        || {
            let rs = payloads(&names, &broker, "responses");
            response(&rs, "nodocker", "pause").cloned()
        },
    );
    assert_eq!(un["outcome"], "failed", "{un:#}");
    assert_eq!(un["reason"], "docker_unreachable", "{un:#}");
    assert!(
        un["attempts"].as_u64().unwrap_or(0) >= 2,
        "not retried: {un:#}"
    );
    assert!(
        agent2.alive(),
        "the agent died without its Docker engine:\n{}",
        agent2.log()
    );
    assert!(agent.alive(), "{}", agent.log());
    // a1 was never touched by the failed agent.
    assert_eq!(
        fleet.inspect(&a[1]).state.and_then(|s| s.paused),
        Some(false)
    );

    // The pipeline went on: samples kept flowing after all this.
    let before = payloads(&names, &broker, "samples").len();
    wait_for("more samples", Duration::from_secs(20), &logs, || {
        (payloads(&names, &broker, "samples").len() > before + 5).then_some(())
    });

    // What the agents tell Prometheus (issue 5): the one with its engine is ready and
    // counts what it sampled and did; the one without says why it is not ready.
    let metrics = |port: u16| -> BTreeMap<String, f64> {
        let (status, body) = support::monitoring::get(port, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    };
    let m = wait_for(
        "the agent's readiness",
        Duration::from_secs(20),
        &logs,
        || {
            let ready = matches!(
                support::monitoring::get(agent_port, "/readyz"),
                Ok((200, _))
            );
            ready.then(|| metrics(agent_port))
        },
    );
    assert!(m["herd_agent_samples_total"] > 10.0, "{m:?}");
    assert!(m["herd_agent_events_total"] > 0.0, "{m:?}");
    assert!(m["herd_agent_containers"] >= 1.0, "{m:?}");
    assert!(
        m[r#"herd_actions_total{kind="capture",outcome="ok"}"#] >= 1.0,
        "{m:?}"
    );
    assert!(
        m[r#"herd_actions_total{kind="pause",outcome="ok"}"#] >= 1.0,
        "{m:?}"
    );
    assert!(m["herd_evidence_bytes_total"] > 1000.0, "{m:?}");
    assert_eq!(
        m[r#"herd_build_info{component="agent",version="0.1.0"}"#],
        1.0
    );
    assert!(m.keys().all(|k| k.starts_with("herd_")), "{m:?}");
    let (status, why) = wait_for("agent2 not ready", Duration::from_secs(20), &logs, || {
        support::monitoring::get(agent2_port, "/readyz")
            .ok()
            .filter(|(s, body)| *s == 503 && !body.contains("broker"))
    });
    assert_eq!(status, 503);
    assert!(why.contains("docker") && !why.contains("broker"), "{why}");
    let m2 = metrics(agent2_port);
    assert_eq!(
        m2[r#"herd_actions_total{kind="pause",outcome="failed"}"#], 1.0,
        "{m2:?}"
    );
    drop(agent2);
    drop(agent);
    worker.stop();
}

/// Every action kind, sent straight to the agent: stop, restart, kill, unpause,
/// isolate then release (networks restored), a capture with export and commit, a dry
/// run that changes nothing, a timeout, and an unreadable command to the dead letters.
#[test]
fn agent_executes_each_action_as_inspect_sees_it_issue_4() {
    let broker = Broker::start(
        &std::env::temp_dir().join(format!("herd-actions-broker-{}.log", std::process::id())),
    );
    let names = Names::new("actions");
    let run = format!("herd-act-{}", std::process::id());
    let host = format!("{run}-host");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let evidence = tmp.path().join("evidence");
    let fleet = Fleet::new(&run);
    let img = image("herd-test/a", "a");
    let env: Vec<(&str, String)> = vec![
        ("HERD_AGENT__HOST", host.clone()),
        ("HERD_AGENT__LABEL", format!("herd.test={run}")),
        (
            "HERD_AGENT__EVIDENCE_URL",
            format!("file://{}", evidence.display()),
        ),
        (
            "HERD_AGENT__STATE_DIR",
            tmp.path().join("state").display().to_string(),
        ),
    ];
    let agent_log = tmp.path().join("agent.log");
    let agent = Agent::start(&names, &broker, agent_log.clone(), &env);
    let logs = [agent_log.as_path()];
    let c: Vec<String> = (0..6)
        .map(|i| fleet.start(&img, &format!("c{i}")))
        .collect();
    let topic = names.topic("actions");
    let send = |id: &str, container: &str, action: Value, dry: bool, timeout_ms: u64| {
        let mut cmd = command(&host, id, container, action, timeout_ms);
        cmd["dry_run"] = Value::Bool(dry);
        produce_command(&broker, &topic, &host, &cmd);
    };
    let answer = |incident: &str, action: &str| {
        wait_for(
            &format!("{incident}/{action}"),
            Duration::from_secs(60),
            &logs,
            || {
                let rs = payloads(&names, &broker, "responses");
                response(&rs, incident, action).cloned()
            },
        )
    };
    let state = |id: &str| fleet.inspect(id).state.unwrap_or_default();
    let restarted_before = state(&c[2]).started_at.clone();

    send(
        "i-stop/stop",
        &c[0],
        serde_json::json!({"kind": "stop", "grace_s": 1}),
        false,
        30_000,
    );
    send(
        "i-kill/kill",
        &c[1],
        serde_json::json!({"kind": "kill"}),
        false,
        30_000,
    );
    send(
        "i-restart/restart",
        &c[2],
        serde_json::json!({"kind": "restart", "grace_s": 1}),
        false,
        30_000,
    );
    send(
        "i-dry/pause",
        &c[3],
        serde_json::json!({"kind": "pause"}),
        true,
        30_000,
    );
    send(
        "i-iso/isolate",
        &c[4],
        serde_json::json!({"kind": "isolate"}),
        false,
        30_000,
    );
    send(
        "i-exp/capture",
        &c[5],
        serde_json::json!({"kind": "capture", "export": true, "commit": true}),
        false,
        60_000,
    );
    produce_command(
        &broker,
        &topic,
        &host,
        &Value::String("not a command".into()),
    );

    assert_eq!(answer("i-stop", "stop")["outcome"], "ok");
    assert_eq!(state(&c[0]).running, Some(false), "stop did not stop");
    assert_eq!(answer("i-kill", "kill")["outcome"], "ok");
    let killed = state(&c[1]);
    assert_eq!(killed.running, Some(false), "kill did not kill");
    assert_eq!(killed.exit_code, Some(137));
    assert_eq!(answer("i-restart", "restart")["outcome"], "ok");
    let st = state(&c[2]);
    assert_eq!(st.running, Some(true));
    assert_ne!(st.started_at, restarted_before, "restart did not restart");
    let dry = answer("i-dry", "pause");
    assert_eq!(dry["outcome"], "dry_run");
    assert_eq!(
        state(&c[3]).paused,
        Some(false),
        "a dry run paused the container"
    );

    let iso = answer("i-iso", "isolate");
    assert_eq!(iso["outcome"], "ok", "{iso:#}");
    assert_eq!(
        iso["details"]["disconnected"],
        serde_json::json!(["bridge"])
    );
    let nets = |id: &str| {
        fleet
            .inspect(id)
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_keys()
            .collect::<Vec<_>>()
    };
    assert!(nets(&c[4]).is_empty());
    send(
        "i-iso/release",
        &c[4],
        serde_json::json!({"kind": "release"}),
        false,
        30_000,
    );
    assert_eq!(answer("i-iso", "release")["outcome"], "ok");
    assert_eq!(
        nets(&c[4]),
        ["bridge"],
        "release did not restore the network"
    );

    send(
        "i-pause/pause",
        &c[3],
        serde_json::json!({"kind": "pause"}),
        false,
        30_000,
    );
    assert_eq!(answer("i-pause", "pause")["outcome"], "ok");
    assert_eq!(state(&c[3]).paused, Some(true));
    send(
        "i-pause/unpause",
        &c[3],
        serde_json::json!({"kind": "unpause"}),
        false,
        30_000,
    );
    assert_eq!(answer("i-pause", "unpause")["outcome"], "ok");
    assert_eq!(state(&c[3]).paused, Some(false));

    let exp = answer("i-exp", "capture");
    assert_eq!(exp["outcome"], "ok", "{exp:#}");
    let m = verify_bundle(
        &evidence.join("i-exp"),
        &["inspect.json", "filesystem.tar", "changes.json"],
    );
    let image_ref = m["notes"]["image"].as_str().unwrap_or_default().to_owned();
    assert!(image_ref.starts_with("herd-evidence:"), "{m:#}");
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", &image_ref])
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image_ref])
        .output();
    assert!(present, "the committed image {image_ref} is missing");
    let tar = std::fs::read(evidence.join("i-exp").join("filesystem.tar")).unwrap_or_default();
    assert!(
        tar.windows(11).any(|w| w == b"bin/busybox"),
        "the export holds no busybox"
    );

    // A timeout too short for any capture is recorded as one.
    send(
        "i-slow/capture",
        &c[5],
        serde_json::json!({"kind": "capture", "export": true}),
        false,
        1,
    );
    let slow = answer("i-slow", "capture");
    assert_eq!(slow["outcome"], "failed");
    assert_eq!(slow["reason"], "timeout");

    // The unreadable command went to the dead letters with its reason.
    let dlq = wait_for(
        "the dead-lettered command",
        Duration::from_secs(30),
        &logs,
        || {
            consume(&names, &broker, &names.topic("dlq"))
                .into_iter()
                .next()
        },
    );
    assert_eq!(dlq["headers"]["herd.reason"], "invalid_command");
    drop(agent);
}

/// The loop every replica of the inventory test runs: a log file, a pid file and a cache
/// directory of random name (a UUID: the same pattern on every replica, whatever the
/// draw), a line a second.
const COMMON: &str = "mkdir -p /var/log/app /run /var/cache/app/$(cat /proc/sys/kernel/random/uuid); \
    echo $$ > /run/app.pid; \
    i=0; while true; do i=$((i+1)); echo tick $i >> /var/log/app/app.log; echo tick $i; sleep 1; done";

#[test]
fn inventories_alert_on_what_one_replica_does_and_not_on_what_every_replica_writes_issue_10() {
    let broker = Broker::start(
        &std::env::temp_dir().join(format!("herd-inventory-broker-{}.log", std::process::id())),
    );
    let names = Names::new("inventory");
    let run = format!("herd-inv-{}", std::process::id());
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fleet = Fleet::new(&run);
    let img = image("herd-test/inv", "inv");
    let common: Vec<(&str, String)> = vec![
        // Groups here are seconds old: score after 15 s of history instead of an hour,
        // and give siblings 20 s (four inventories) to show the same item.
        ("HERD_DETECT__BASELINE__WARMUP_MS", "15000".into()),
        ("HERD_DETECT__CORROBORATION_MS", "20000".into()),
    ];
    let worker_env: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker_log = tmp.path().join("worker.log");
    let worker = Worker::start_with(&names, &broker, worker_log.clone(), &worker_env);
    let mut agent_env = common.clone();
    agent_env.extend([
        ("HERD_AGENT__HOST", format!("{run}-host")),
        ("HERD_AGENT__LABEL", format!("herd.test={run}")),
        ("HERD_AGENT__INTERVAL_MS", "1000".into()),
        ("HERD_AGENT__INVENTORY_INTERVAL_MS", "5000".into()),
        (
            "HERD_AGENT__STATE_DIR",
            tmp.path().join("state").display().to_string(),
        ),
        (
            "HERD_AGENT__EVIDENCE_URL",
            format!("file://{}", tmp.path().join("evidence").display()),
        ),
    ]);
    let agent_log = tmp.path().join("agent.log");
    let mut agent = Agent::start(&names, &broker, agent_log.clone(), &agent_env);
    let logs = [worker_log.as_path(), agent_log.as_path()];

    // Four replicas; after the group's warm-up, one drops a miner into /tmp and another
    // starts a process no sibling runs. No `docker exec`: only the inventories can see it.
    let quiet: Vec<String> = (0..2)
        .map(|i| fleet.start_script(&img, &format!("r{i}"), COMMON))
        .collect();
    let dropper = fleet.start_script(
        &img,
        "dropper",
        &format!("(sleep 30; mkdir -p /tmp/.x; cp /bin/busybox /tmp/.x/xmrig) & {COMMON}"),
    );
    let runner = fleet.start_script(
        &img,
        "runner",
        &format!("(sleep 30; exec top -b > /dev/null) & {COMMON}"),
    );

    // The agent publishes both inventories of every replica, as native events, with
    // the random cache directory already a pattern.
    wait_for_seen(
        "inventories of every replica",
        Duration::from_secs(60),
        &logs,
        |seen| {
            let ev = payloads(&names, &broker, "events");
            let of = |id: &str, kind: &str| {
                ev.iter().any(|e| {
                    e["container_id"] == id
                        && e["event"]["kind"] == kind
                        && (kind != "fs_changes"
                            || e["event"]["added"]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|p| p == "/var/cache/app/#")))
                })
            };
            let all = [&quiet[0], &quiet[1], &dropper, &runner];
            for id in all {
                let kinds = |kind: &str| {
                    ev.iter()
                        .filter(|e| e["container_id"] == id.as_str() && e["event"]["kind"] == kind)
                        .count()
                };
                let last_added = ev
                    .iter()
                    .rfind(|e| {
                        e["container_id"] == id.as_str() && e["event"]["kind"] == "fs_changes"
                    })
                    .map(|e| e["event"]["added"].to_string());
                seen.push_str(&format!(
                    "{}: {} fs_changes (last added {}), {} processes, {} Docker events\n",
                    &id[..12],
                    kinds("fs_changes"),
                    last_added.as_deref().unwrap_or("-"),
                    kinds("processes"),
                    ev.iter()
                        .filter(|e| e["Actor"]["ID"] == id.as_str())
                        .count(),
                ));
            }
            seen.push_str(&format!("{} records on the events topic", ev.len()));
            all.iter()
                .all(|id| of(id, "fs_changes") && of(id, "processes"))
                .then_some(())
        },
    );

    let novel_of = |alerts: &[Value], id: &str, kind: &str, value: &str| {
        alerts
            .iter()
            .filter(|a| a["container_id"] == id)
            .flat_map(|a| a["novel"].as_array().cloned().unwrap_or_default())
            .find(|n| n["kind"] == kind && n["value"] == value)
    };
    let (file, process) = wait_for(
        "the dropped file and the odd process alerted",
        Duration::from_secs(120),
        &logs,
        || {
            let al = payloads(&names, &broker, "alerts");
            Some((
                novel_of(&al, &dropper, "file_added", "/tmp/.x/xmrig")?,
                novel_of(&al, &runner, "process", "top")?,
            ))
        },
    );
    for n in [&file, &process] {
        assert_eq!(n["replica_support"], 0, "{n:#}");
        assert_eq!(n["replicas"], 4, "{n:#}");
    }
    // Give the quiet replicas' inventories time to be judged too, then: nothing for
    // them, and nothing of what every replica writes.
    std::thread::sleep(Duration::from_secs(25));
    let alerts = payloads(&names, &broker, "alerts");
    for id in &quiet {
        assert!(
            alerts.iter().all(|a| a["container_id"] != id.as_str()),
            "a quiet replica was alerted: {:#?}",
            alerts
                .iter()
                .filter(|a| a["container_id"] == id.as_str())
                .collect::<Vec<_>>()
        );
    }
    for a in &alerts {
        for n in a["novel"].as_array().cloned().unwrap_or_default() {
            let v = n["value"].as_str().unwrap_or("");
            assert!(
                !["/var/log/app", "/run/app.pid", "/var/cache/app"]
                    .iter()
                    .any(|common| v.starts_with(common)),
                "what every replica writes was alerted: {n:#}"
            );
        }
    }
    let explanation = alerts
        .iter()
        .filter(|a| a["container_id"] == dropper.as_str())
        .filter_map(|a| a["explanation"].as_str())
        .next_back()
        .unwrap_or_default()
        .to_owned();
    assert!(
        explanation.contains("added to its filesystem"),
        "{explanation}"
    );
    assert!(agent.alive(), "the agent died:\n{}", agent.log());
    drop(agent);
    worker.stop();
}

#[test]
fn herd_drill_completes_against_a_running_pipeline_and_cleans_up_issue_10() {
    let broker = Broker::start(
        &std::env::temp_dir().join(format!("herd-drill-broker-{}.log", std::process::id())),
    );
    let names = Names::new("drill");
    let run = format!("herd-drill-it-{}", std::process::id());
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fleet = Fleet::new(&run);
    let img = image("herd-test/drill", "drill");
    let policy = tmp.path().join("policies.toml");
    std::fs::write(
        &policy,
        r#"
[[policy]]
name = "drill-capture"
match = { image = "herd-test/drill*" }
actions = [{ action = "capture" }, { action = "pause" }]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev_url = format!("file://{}", tmp.path().join("evidence").display());
    let common: Vec<(&str, String)> = vec![
        ("HERD_RESPOND__POLICY_FILE", policy.display().to_string()),
        ("HERD_RESPOND__EVIDENCE_URL", ev_url.clone()),
        ("HERD_RESPOND__AFTER_MS", "5000".into()),
        ("HERD_DETECT__BASELINE__WARMUP_MS", "15000".into()),
        ("HERD_AGENT__EVIDENCE_URL", ev_url),
    ];
    let worker_env: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker_log = tmp.path().join("worker.log");
    let worker = Worker::start_with(&names, &broker, worker_log.clone(), &worker_env);
    let mut agent_env = common.clone();
    agent_env.extend([
        ("HERD_AGENT__HOST", format!("{run}-host")),
        ("HERD_AGENT__LABEL", format!("herd.test={run}")),
        ("HERD_AGENT__INTERVAL_MS", "1000".into()),
        (
            "HERD_AGENT__STATE_DIR",
            tmp.path().join("state").display().to_string(),
        ),
    ]);
    let agent_log = tmp.path().join("agent.log");
    let mut agent = Agent::start(&names, &broker, agent_log.clone(), &agent_env);
    let logs = [worker_log.as_path(), agent_log.as_path()];

    // A real group of three, past its warm-up.
    let group: Vec<String> = (0..3)
        .map(|i| fleet.start(&img, &format!("g{i}")))
        .collect();
    wait_for(
        "the group's samples",
        Duration::from_secs(60),
        &logs,
        || {
            let s = payloads(&names, &broker, "samples");
            group
                .iter()
                .all(|id| {
                    s.iter()
                        .filter(|p| p["container"]["id"] == id.as_str())
                        .count()
                        >= 20
                })
                .then_some(())
        },
    );

    let out = herd()
        .arg("drill")
        .args(["--like", &group[0], "--timeout", "120s"])
        .envs(names.env(&broker))
        .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("herd drill: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "the drill failed:\n{text}\n{err}\n{}",
        agent.log()
    );
    for step in ["alert", "capture", "pause", "evidence"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(&format!(" s  {step}"))),
            "no timing for {step}:\n{text}"
        );
    }
    assert!(text.contains("herd drill: passed"), "{text}");
    assert!(text.contains("removed 1 container(s)"), "{text}");
    // Nothing of the drill is left.
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=herd.drill"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "drill containers left behind"
    );
    // The siblings were never touched.
    for id in &group {
        let st = fleet.inspect(id).state.unwrap_or_default();
        assert_eq!(st.running, Some(true), "{id} is not running");
        assert_ne!(st.paused, Some(true), "{id} was paused");
    }

    // A throwaway group of its own: three idle siblings and the canary, which waits out
    // the workers' warm-up (15 s here) before it misbehaves.
    let other = image("herd-test/drill-own", "drill-own");
    let out = herd()
        .arg("drill")
        .args(["--image", &other, "--replicas", "3", "--settle", "25s"])
        .args(["--timeout", "120s"])
        .envs(names.env(&broker))
        .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
        .env("HERD_AGENT__LABEL", format!("herd.test={run}"))
        .output()
        .unwrap_or_else(|e| panic!("herd drill: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "the throwaway drill failed:\n{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    assert!(text.contains("sibling"), "{text}");
    assert!(text.contains("removed 4 container(s)"), "{text}");
    assert!(agent.alive(), "the agent died:\n{}", agent.log());
    drop(agent);
    worker.stop();
}
