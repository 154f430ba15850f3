//! herd as operators watch it (issue 5), with the real tools: a real Prometheus scrapes
//! a `herd run` worker on loopback while a simulated fleet (and some poison) streams
//! through a real broker, and a real Alertmanager receives an incident from the worker
//! and sees it resolve when the incident closes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::broker::{Broker, Names, PARTITIONS, Worker, consume, free_port, produce};
use support::fleet::{fleet, produce_window, workdir};
use support::monitoring::{Alertmanager, Prometheus, eventually, get};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn prometheus_scrapes_what_a_worker_processed_issue_5() {
    let dir = workdir("prometheus");
    let files = fleet(&dir.join("fleet"));
    let poison = ["not json at all", "{\"hello\":\"world\"}", "[[[[[]]]]"];
    let poison_file = dir.join("poison.jsonl");
    std::fs::write(&poison_file, poison.join("\n") + "\n").expect("poison");

    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("prometheus");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = Worker::start_with(
        &names,
        &broker,
        dir.join("worker.log"),
        &[("HERD_HTTP__LISTEN", listen.as_str())],
    );
    let prom = Prometheus::start(
        &dir.join("prometheus"),
        &[("herd-worker", port)],
        &[repo("deploy/prometheus/rules/herd.rules.yml")],
    );
    // Ready once it owns its partitions with their state restored and a broker is up.
    eventually(Duration::from_secs(60), "the worker to be ready", || {
        matches!(get(port, "/readyz"), Ok((200, _))).then_some(())
    });
    assert!(matches!(get(port, "/healthz"), Ok((200, _))));
    assert!(matches!(get(port, "/nothing"), Ok((404, _))));

    produce(&names, &broker, &files, &[]);
    let samples = names.topic("samples");
    produce(&names, &broker, &[poison_file], &["--topic", &samples]);
    broker.wait_caught_up(&names, Duration::from_secs(300));

    // What the broker holds on each input topic is what the worker counted, by topic.
    let expected: BTreeMap<String, f64> = names
        .inputs()
        .into_iter()
        .map(|t| {
            let n: i64 = broker.ends(&t, PARTITIONS).iter().sum();
            (t, n as f64)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let seen = eventually(
        Duration::from_secs(60),
        "Prometheus to see every input record",
        || {
            let got: BTreeMap<String, f64> = prom
                .query(r#"sum by (topic) (herd_input_records_total{job="herd-worker"})"#)
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(l, v)| (l["topic"].as_str().unwrap_or_default().to_owned(), v))
                .collect();
            (got == expected).then_some(got)
        },
    );
    assert!(seen.len() >= 2, "samples and events at least: {seen:?}");

    let one = |q: &str| prom.scalar(q).unwrap_or_else(|| panic!("no value for {q}"));
    // Every poison record: dead-lettered, counted by reason, from the samples topic.
    assert_eq!(one("sum(herd_dlq_records_total)"), poison.len() as f64);
    assert_eq!(
        one(&format!(
            r#"sum(herd_input_records_total{{topic="{samples}",outcome="dead_lettered"}})"#
        )),
        poison.len() as f64
    );
    // Incidents opened match the opening lines on the alert topic, by severity.
    let mut opened: BTreeMap<String, f64> = BTreeMap::new();
    for r in consume(&names, &broker, &names.topic("alerts")) {
        if r["payload"]["seq"] == 0 {
            let sev = r["payload"]["severity"].as_str().unwrap_or_default();
            *opened.entry(sev.to_owned()).or_default() += 1.0;
        }
    }
    assert!(!opened.is_empty(), "the fleet has attacks");
    let by_sev: BTreeMap<String, f64> = prom
        .query("sum by (severity) (herd_incidents_opened_total)")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(l, v)| (l["severity"].as_str().unwrap_or_default().to_owned(), v))
        .collect();
    assert_eq!(by_sev, opened);
    // Series of closed label sets exist from the start (at zero where nothing happened).
    assert_eq!(
        prom.query(r#"herd_incidents_opened_total{job="herd-worker"}"#)
            .len(),
        4
    );
    assert!(one("sum(herd_alerts_total)") >= opened.values().sum::<f64>());
    // Latency, state, checkpoints, ownership, lag.
    assert!(one("sum(herd_processing_latency_seconds_count)") > 0.0);
    assert!(
        one("histogram_quantile(0.99, sum by (le) (herd_processing_latency_seconds_bucket))")
            .is_finite()
    );
    assert!(one("sum(herd_groups)") >= 3.0);
    assert!(one("herd_containers") >= 10.0);
    assert!(one("herd_checkpoints_total") >= 1.0);
    assert_eq!(one("herd_checkpoint_failures_total"), 0.0);
    assert_eq!(one("herd_partitions_assigned"), PARTITIONS as f64);
    assert!(one("herd_baseline_age_seconds") < 60.0);
    let lag = prom.query("herd_consumer_lag_records");
    let topics: BTreeSet<&str> = lag
        .iter()
        .filter_map(|(l, _)| l["topic"].as_str())
        .collect();
    // One series per assigned partition of each topic with records (librdkafka knows
    // no lag of a partition it never fetched from).
    assert_eq!(topics.len(), seen.len(), "{seen:?} {lag:?}");
    assert_eq!(lag.len(), seen.len() * PARTITIONS as usize, "{lag:?}");
    assert!(lag.iter().all(|(_, v)| *v >= 0.0));
    assert_eq!(one(r#"up{job="herd-worker"}"#), 1.0);
    assert_eq!(one(r#"herd_build_info{component="worker"}"#), 1.0);
    // The shipped rules load and evaluate against herd's real series: every one of them.
    let shipped = std::fs::read_to_string(repo("deploy/prometheus/rules/herd.rules.yml"))
        .unwrap_or_else(|e| panic!("the rules: {e}"))
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(shipped >= 9, "{shipped} rules");
    let rules = eventually(Duration::from_secs(30), "rules evaluated", || {
        let r = prom.rules();
        let all: Vec<Value> = r["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (all.len() == shipped
            && all
                .iter()
                .all(|x| x["lastEvaluation"].as_str() != Some("0001-01-01T00:00:00Z")))
        .then_some(all)
    });
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // The critical-incident rule fires if the fleet raised a critical incident.
    if opened.contains_key("critical") {
        let critical = rules.iter().find(|r| r["name"] == "HerdCriticalIncident");
        assert_eq!(critical.map(|r| r["state"].clone()), Some("firing".into()));
    }
    let log = worker.stop();
    assert!(log.contains("serving /metrics"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alertmanager_shows_an_incident_with_its_labels_and_sees_it_resolve_issue_5() {
    let dir = workdir("alertmanager");
    let files = fleet(&dir.join("fleet"));
    let labels: Value =
        serde_json::from_slice(&std::fs::read(dir.join("fleet/labels.json")).expect("labels"))
            .expect("labels");
    // The first single-replica attack: produce up to ten minutes into it (its incident
    // is open then), then the rest (its container goes quiet and the incident closes).
    let attack = labels["attacks"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter(|x| x["container_ids"].as_array().is_some_and(|c| c.len() == 1))
                .min_by_key(|x| x["start"].as_str().map(str::to_owned))
        })
        .cloned()
        .expect("an attack");
    let start = herd_ingest::time::parse_rfc3339_ms(attack["start"].as_str().expect("start"))
        .expect("start time");
    let name = attack["container_name"].as_str().expect("name").to_owned();
    let cut = start + 10 * 60_000;

    let am = Alertmanager::start(&dir.join("alertmanager"));
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("alertmanager");
    let urls = format!("[\"{}\"]", am.url());
    let worker = Worker::start_with(
        &names,
        &broker,
        dir.join("worker.log"),
        &[
            ("HERD_ALERTMANAGER__URLS", urls.as_str()),
            ("HERD_ALERTMANAGER__RESEND_INTERVAL_MS", "2000"),
            ("HERD_ALERTMANAGER__LABELS__CLUSTER", "test"),
        ],
    );
    produce_window(&names, &broker, &files, None, Some(cut));
    broker.wait_caught_up(&names, Duration::from_secs(300));

    let incident_of = |a: &Value| a["labels"]["incident"].as_str().map(str::to_owned);
    let firing = eventually(
        Duration::from_secs(60),
        "the attack's incident in Alertmanager",
        || {
            am.alerts().into_iter().find(|a| {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                a["labels"]["container"].as_str() == Some(name.as_str())
                    && a["endsAt"].as_str().is_some_and(|e| e > now.as_str())
            })
        },
    );
    let incident = incident_of(&firing).expect("incident label");
    let l = &firing["labels"];
    assert_eq!(l["alertname"], "HerdIncident");
    assert_eq!(l["cluster"], "test");
    assert!(
        ["low", "medium", "high", "critical"].contains(&l["severity"].as_str().unwrap_or("")),
        "{l}"
    );
    // The same incident, container and group as on the alert topic, with its explanation.
    let lines: Vec<Value> = consume(&names, &broker, &names.topic("alerts"))
        .into_iter()
        .map(|r| r["payload"].clone())
        .filter(|a| a["incident_id"].as_str() == Some(incident.as_str()))
        .collect();
    let last = lines.last().expect("the incident is on the alert topic");
    assert_eq!(l["group"], last["group"]);
    // (No host known: no label; Alertmanager drops empty labels anyway.)
    assert_eq!(
        l["host"].as_str(),
        last["host"].as_str().filter(|h| !h.is_empty())
    );
    assert_eq!(last["container_name"].as_str(), Some(name.as_str()));
    assert_eq!(l["severity"], last["severity"]);
    assert_eq!(firing["annotations"]["summary"], last["explanation"]);
    assert!(
        firing["annotations"]["detectors"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    // The rest of the fleet: the attack ends, the container goes quiet, the incident
    // closes, and Alertmanager sees it resolved (gone from its alerts, or ended).
    produce_window(&names, &broker, &files, Some(cut), None);
    broker.wait_caught_up(&names, Duration::from_secs(300));
    eventually(Duration::from_secs(60), "the incident to resolve", || {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let still = am.alerts().into_iter().any(|a| {
            incident_of(&a).as_deref() == Some(incident.as_str())
                && a["endsAt"].as_str().is_some_and(|e| e > now.as_str())
        });
        (!still).then_some(())
    });
    let log = worker.stop();
    assert!(!log.contains("alertmanager post failed"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
