//! `herd agent`: the node agent. One per Docker host; the only herd process that talks
//! to the Docker socket.
//!
//! - The collector ([`herd_ingest::collect`]) publishes stats samples (agent envelope)
//!   to `herd.samples` and Docker events to `herd.events`, keyed by routing key.
//! - The executor ([`herd_respond::Executor`]) runs the commands of `herd.actions`
//!   whose key is this host, one at a time in order, and publishes each outcome to
//!   `herd.responses`; a command's offset is committed after its response is delivered.
//! - `focus` commands make the collector sample the container every second; a `die` or
//!   `oom` of a watched container captures its evidence at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herd_ingest::collect::{CollectorConfig, Emit};
use herd_respond::command::{Command, FORMAT, Outcome, Response};
use herd_respond::{Executor, ExecutorConfig, Store};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};

use crate::config::HerdConfig;

/// `[agent]`: the node agent's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This host's name in envelopes and on `herd.actions` keys; the machine's host name
    /// when not set.
    pub host: Option<String>,
    /// Sampling interval of every running container: Docker's own stats cadence is one
    /// second; ten keeps a 1,000-container host at 100 requests a second.
    pub interval_ms: u64,
    /// Sampling interval of a container under watch after an alert.
    pub fast_interval_ms: u64,
    /// How long a watch lasts: the two-minute after-window plus margin.
    pub focus_ms: u64,
    /// Stats requests in flight at once.
    pub max_concurrent_stats: usize,
    /// Watch only containers with this label (`key` or `key=value`); all when unset.
    pub label: Option<String>,
    /// Topic of stats samples.
    pub samples_topic: String,
    /// Topic of Docker events.
    pub events_topic: String,
    /// Consumer group for `herd.actions`; `herd-agent.<host>` when not set (each agent
    /// reads every command and keeps those keyed with its host).
    pub group_id: Option<String>,
    /// Commands older than this (record time) are refused as `stale` instead of run: an
    /// agent that starts after a long outage must not pause containers for last week.
    pub max_command_age_ms: i64,
    /// Where bundles are written: `file:///…` or `s3://bucket/prefix`.
    pub evidence_url: String,
    /// Options of an S3-compatible store (`endpoint`, `region`, `allow_http`, …).
    pub evidence_options: BTreeMap<String, String>,
    /// Journal of executed commands and isolation records.
    pub state_dir: std::path::PathBuf,
    /// The alert window before the alert (logs since then are captured).
    pub before_ms: i64,
    /// Most bytes of each log artifact: 16 MiB.
    pub max_log_bytes: usize,
    /// Most bytes of a filesystem export: 1 GiB.
    pub max_export_bytes: usize,
    /// Policy actions per minute on this host.
    pub max_actions_per_minute: u32,
    /// URL prefixes `notify` may post to; empty allows none.
    pub webhook_allow: Vec<String>,
    /// Capture evidence when a watched container dies or is OOM-killed.
    pub capture_on_exit: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            host: None,
            interval_ms: 10_000,
            fast_interval_ms: 1_000,
            focus_ms: 180_000,
            max_concurrent_stats: 16,
            label: None,
            samples_topic: "herd.samples".into(),
            events_topic: "herd.events".into(),
            group_id: None,
            max_command_age_ms: 600_000,
            evidence_url: "file:///var/lib/herd/evidence".into(),
            evidence_options: BTreeMap::new(),
            state_dir: "/var/lib/herd/agent".into(),
            before_ms: 300_000,
            max_log_bytes: 16 << 20,
            max_export_bytes: 1 << 30,
            max_actions_per_minute: 30,
            webhook_allow: Vec::new(),
            capture_on_exit: true,
        }
    }
}

/// The machine's host name (`HOSTNAME`, else `/etc/hostname`).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Most bytes of a command record the agent reads (a capture carries five minutes of
/// observations at one-second sampling: well under this).
const MAX_COMMAND_BYTES: usize = 16 << 20;

/// Runs the agent until SIGTERM or SIGINT.
pub fn serve(cfg: HerdConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cfg))
}

async fn run(cfg: HerdConfig) -> anyhow::Result<()> {
    let a = cfg.agent.clone();
    let host = a.host.clone().unwrap_or_else(hostname);
    let topics = cfg.stream.topics.clone();
    crate::stream::kafka::prepare_topics(&cfg.kafka, &cfg.stream).await?;
    let docker = herd_respond::docker::connect()
        .await
        .context("connecting to the Docker engine")?;
    let store = Store::open(
        &a.evidence_url,
        a.evidence_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .context("opening the evidence store")?;
    let executor = Arc::new(Executor::new(
        docker.clone(),
        store,
        ExecutorConfig {
            host: host.clone(),
            state_dir: a.state_dir.clone(),
            before_ms: a.before_ms,
            focus_ms: a.focus_ms,
            max_log_bytes: a.max_log_bytes,
            max_export_bytes: a.max_export_bytes,
            max_actions_per_minute: a.max_actions_per_minute,
            webhook_allow: a.webhook_allow.clone(),
            capture_on_exit: a.capture_on_exit,
        },
    )?);
    let producer: FutureProducer =
        crate::stream::kafka::client_config(&cfg.kafka, crate::stream::kafka::Role::Producer)
            .create()
            .context("creating the Kafka producer")?;
    tracing::info!(%host, evidence = %executor.store().url(), "agent started");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Emit>(4096);
    let collector = {
        let exec = Arc::clone(&executor);
        tokio::spawn(herd_ingest::collect::run(
            docker.clone(),
            CollectorConfig {
                host: host.clone(),
                interval_ms: a.interval_ms,
                fast_interval_ms: a.fast_interval_ms,
                max_concurrent: a.max_concurrent_stats,
                label: a.label.clone(),
            },
            tx,
            move || exec.watched(),
            stop_rx.clone(),
        ))
    };
    let publisher = {
        let (producer, exec) = (producer.clone(), Arc::clone(&executor));
        let (samples, events, responses) = (
            a.samples_topic.clone(),
            a.events_topic.clone(),
            topics.responses.clone(),
        );
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let (topic, key, payload) = match e {
                    Emit::Sample { key, payload } => (&samples, key, payload),
                    Emit::Event { key, payload } => (&events, key, payload),
                    Emit::Exit { id, why } => {
                        let (exec, producer, responses) =
                            (Arc::clone(&exec), producer.clone(), responses.clone());
                        tokio::spawn(async move {
                            if let Some(r) = exec.on_exit(&id, why).await {
                                publish_response(&producer, &responses, &r).await;
                            }
                        });
                        continue;
                    }
                };
                let mut rec = FutureRecord::<str, [u8]>::to(topic).payload(&payload);
                if !key.is_empty() {
                    rec = rec.key(&key);
                }
                if let Err((e, _)) = producer
                    .send(rec, Timeout::After(Duration::from_secs(30)))
                    .await
                {
                    tracing::warn!(error = %e, topic = %topic, "publish failed");
                }
            }
        })
    };
    let actions = {
        let group = a
            .group_id
            .clone()
            .unwrap_or_else(|| format!("herd-agent.{host}"));
        let mut c = rdkafka::ClientConfig::new();
        c.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &cfg.kafka {
            if k != "group.id" {
                c.set(k, v);
            }
        }
        let consumer: StreamConsumer = c.create().context("creating the actions consumer")?;
        consumer
            .subscribe(&[topics.actions.as_str()])
            .context("subscribing to the actions topic")?;
        let (exec, producer) = (Arc::clone(&executor), producer.clone());
        let (responses, dlq) = (topics.responses.clone(), topics.dlq.clone());
        let (host, max_age) = (host.clone(), a.max_command_age_ms);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => break,
                    m = consumer.recv() => m,
                };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "actions consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                if m.key() == Some(host.as_bytes()) {
                    let payload = m.payload().unwrap_or_default();
                    let age = m
                        .timestamp()
                        .to_millis()
                        .map_or(0, |t| chrono::Utc::now().timestamp_millis() - t);
                    match decode_command(payload) {
                        Ok(cmd) if age > max_age => {
                            let r = Response::to(
                                &cmd,
                                Outcome::Refused,
                                &herd_respond::executor::collector(),
                            )
                            .because("stale", format!("issued {age} ms ago (limit {max_age} ms)"));
                            publish_response(&producer, &responses, &r).await;
                        }
                        Ok(cmd) => {
                            let r = exec.execute(&cmd).await;
                            publish_response(&producer, &responses, &r).await;
                        }
                        Err((reason, detail)) => {
                            tracing::warn!(reason, %detail, "unreadable command sent to the dead-letter topic");
                            let headers = OwnedHeaders::new()
                                .insert(Header {
                                    key: "herd.reason",
                                    value: Some(reason),
                                })
                                .insert(Header {
                                    key: "herd.detail",
                                    value: Some(detail.as_str()),
                                })
                                .insert(Header {
                                    key: "herd.source.topic",
                                    value: Some(m.topic()),
                                })
                                .insert(Header {
                                    key: "herd.source.partition",
                                    value: Some(&m.partition().to_string()),
                                })
                                .insert(Header {
                                    key: "herd.source.offset",
                                    value: Some(&m.offset().to_string()),
                                });
                            let rec = FutureRecord::<[u8], [u8]>::to(&dlq)
                                .payload(payload)
                                .headers(headers);
                            let _ = producer
                                .send(rec, Timeout::After(Duration::from_secs(30)))
                                .await;
                        }
                    }
                }
                if let Err(e) = consumer.commit_message(&m, CommitMode::Async) {
                    tracing::warn!(error = %e, "commit failed");
                }
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = collector => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => anyhow::bail!("the collector failed: {e}"),
        },
    }
    tracing::info!("agent stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), actions).await;
    publisher.abort();
    let _ = rdkafka::producer::Producer::flush(&producer, Timeout::After(Duration::from_secs(10)));
    Ok(())
}

fn decode_command(payload: &[u8]) -> Result<Command, (&'static str, String)> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(("too_large", format!("{} bytes", payload.len())));
    }
    let cmd: Command =
        serde_json::from_slice(payload).map_err(|e| ("invalid_command", e.to_string()))?;
    if cmd.format > FORMAT {
        return Err((
            "unsupported_format",
            format!("command format {} (this agent reads {FORMAT})", cmd.format),
        ));
    }
    Ok(cmd)
}

async fn publish_response(producer: &FutureProducer, topic: &str, r: &Response) {
    let Ok(line) = serde_json::to_vec(r) else {
        return;
    };
    let rec = FutureRecord::to(topic).key(r.host.as_str()).payload(&line);
    if let Err((e, _)) = producer
        .send(rec, Timeout::After(Duration::from_secs(30)))
        .await
    {
        tracing::error!(error = %e, command = %r.command_id, "response not published");
    }
}
