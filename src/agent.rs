//! `herd agent`: the node agent. One per Docker host; the only herd process that talks
//! to the Docker socket.
//!
//! - The collector ([`herd_ingest::collect`]) publishes stats samples (agent envelope)
//!   to `herd.samples` and Docker events to `herd.events`, keyed by routing key.
//! - The executor ([`herd_respond::Executor`]) runs the commands of `herd.actions`
//!   whose key is this host and publishes each outcome to `herd.responses`. Commands of one container run in order, different containers
//!   concurrently; an offset is committed once every command up to it is answered.
//! - `focus` commands make the collector sample the container every second; a `die` or
//!   `oom` of a watched container captures its evidence at once.

use std::collections::{BTreeMap, HashMap};
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
use crate::metrics::{AgentMetrics, Health};

/// What `/metrics` and the probes of `herd agent` serve.
struct AgentOps {
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
}

impl crate::http::Ops for AgentOps {
    fn metrics(&self) -> String {
        crate::metrics::encode(&self.metrics.registry)
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

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
    #[serde(deserialize_with = "herd_respond::evidence::deserialize_store_options")]
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
    /// Webhooks `notify` may post to, as URLs (same scheme, host and port; the path
    /// or under it); empty allows none.
    pub webhook_allow: Vec<String>,
    /// Capture evidence when a watched container dies or is OOM-killed.
    pub capture_on_exit: bool,
    /// Inventories of every running container (`docker diff`, `docker top`) this
    /// often, and at once when it comes under watch after an alert; 0: never.
    pub inventory_interval_ms: u64,
    /// Most paths per list (added, changed, deleted), and most processes, of one
    /// inventory; a larger one is summarised (docs/formats.md).
    pub max_inventory_items: usize,
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
            inventory_interval_ms: 300_000,
            max_inventory_items: 256,
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
    let metrics = Arc::new(AgentMetrics::new()?);
    // Ready: the Docker engine answers and a broker is reachable (checked every few
    // seconds); live: that check loop turns.
    let health = Arc::new(Health::new(&["docker", "broker"], 60_000));
    health.beat();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = cfg.http.addr()? {
        let listener = crate::http::bind(addr).await?;
        let ops = Arc::new(AgentOps {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        });
        tokio::spawn(crate::http::serve(listener, ops, stop_rx.clone()));
    }
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
    let latest: herd_ingest::collect::LatestStats = Arc::default();
    let executor = Arc::new(
        Executor::new(
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
        )?
        .with_stats_source({
            let latest = Arc::clone(&latest);
            let fresh = Duration::from_millis(a.interval_ms.saturating_mul(2));
            Arc::new(move |id: &str| {
                let l = latest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                l.get(id)
                    .filter(|(at, _)| at.elapsed() <= fresh)
                    .map(|(at, b)| (at.elapsed().as_millis().max(1) as u64, b.clone()))
            })
        }),
    );
    let producer: FutureProducer =
        crate::stream::kafka::client_config(&cfg.kafka, crate::stream::kafka::Role::Producer)
            .create()
            .context("creating the Kafka producer")?;
    tracing::info!(%host, evidence = %executor.store().url(), "agent started");
    let probe = tokio::spawn(probe(
        docker.clone(),
        producer.clone(),
        Arc::clone(&health),
        stop_rx.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<Emit>(4096);
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
                inventory_interval_ms: a.inventory_interval_ms,
                max_inventory_items: a.max_inventory_items,
            },
            tx,
            move || exec.watched(),
            Arc::clone(&latest),
            stop_rx.clone(),
        ))
    };
    let publisher = tokio::spawn(publish(
        rx,
        producer.clone(),
        Outlets {
            samples: a.samples_topic.clone(),
            events: a.events_topic.clone(),
            responses: topics.responses.clone(),
        },
        Arc::clone(&executor),
        Arc::clone(&metrics),
    ));
    let actions = {
        let group = a
            .group_id
            .clone()
            .unwrap_or_else(|| format!("herd-agent.{host}"));
        let mut c = rdkafka::ClientConfig::new();
        c.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // Commands are few and urgent: do not let the broker hold a fetch long.
            .set("fetch.wait.max.ms", "50");
        for (k, v) in &cfg.kafka {
            if k != "group.id" {
                c.set(k, v);
            }
        }
        let consumer: StreamConsumer = c.create().context("creating the actions consumer")?;
        consumer
            .subscribe(&[topics.actions.as_str()])
            .context("subscribing to the actions topic")?;
        let (exec, producer, mx) = (
            Arc::clone(&executor),
            producer.clone(),
            Arc::clone(&metrics),
        );
        let (responses, dlq) = (topics.responses.clone(), topics.dlq.clone());
        let (host, max_age) = (host.clone(), a.max_command_age_ms);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(i32, i64)>();
            let mut offsets = Offsets::default();
            let mut queues: HashMap<String, tokio::sync::mpsc::Sender<Job>> = HashMap::new();
            let ctx = QueueCtx {
                exec,
                producer: producer.clone(),
                responses: responses.clone(),
                done: done_tx.clone(),
                metrics: Arc::clone(&mx),
            };
            loop {
                let m = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    Some((p, o)) = done_rx.recv() => {
                        offsets.done(&consumer, p, o);
                        continue;
                    }
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
                let (p, o) = (m.partition(), m.offset());
                offsets.seen(p, o);
                if m.key() != Some(host.as_bytes()) {
                    offsets.done(&consumer, p, o);
                    continue;
                }
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
                        publish_response(&producer, &responses, &r, &mx).await;
                        offsets.done(&consumer, p, o);
                    }
                    Ok(cmd) => {
                        // One queue per container keeps its commands in order (capture
                        // before pause); different containers go on concurrently.
                        if queues.len() > 1024 {
                            queues.retain(|_, q| !q.is_closed());
                        }
                        let key = cmd.container_id.clone();
                        let mut job = (cmd, p, o);
                        loop {
                            let q = queues
                                .entry(key.clone())
                                .or_insert_with(|| spawn_queue(ctx.clone()));
                            match q.send(job).await {
                                Ok(()) => break,
                                Err(tokio::sync::mpsc::error::SendError(j)) => {
                                    queues.remove(&key);
                                    job = j;
                                }
                            }
                        }
                    }
                    Err((reason, detail)) => {
                        mx.dlq_records.with_label_values(&[reason]).inc();
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
                                value: Some(&p.to_string()),
                            })
                            .insert(Header {
                                key: "herd.source.offset",
                                value: Some(&o.to_string()),
                            });
                        let rec = FutureRecord::<[u8], [u8]>::to(&dlq)
                            .payload(payload)
                            .headers(headers);
                        let _ = producer
                            .send(rec, Timeout::After(Duration::from_secs(30)))
                            .await;
                        offsets.done(&consumer, p, o);
                    }
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
    // The collector has stopped and dropped its end of the channel: the publisher hands
    // what is left to the producer and ends; the flush below delivers it.
    if tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .is_err()
    {
        tracing::warn!("the publisher did not finish within 10 s; records may be lost");
    }
    probe.abort();
    let _ = rdkafka::producer::Producer::flush(&producer, Timeout::After(Duration::from_secs(10)));
    Ok(())
}

/// A command with the partition and offset it came from.
type Job = (Command, i32, i64);

#[derive(Clone)]
struct QueueCtx {
    exec: Arc<Executor>,
    producer: FutureProducer,
    responses: String,
    done: tokio::sync::mpsc::UnboundedSender<(i32, i64)>,
    metrics: Arc<AgentMetrics>,
}

/// A container's command queue: runs its commands one after another, publishes each
/// response, then reports the offset done. Ends after a minute idle (a later command
/// finds it closed and starts a new one); what is queued when it closes still runs.
fn spawn_queue(ctx: QueueCtx) -> tokio::sync::mpsc::Sender<Job> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(256);
    tokio::spawn(async move {
        let run = |(cmd, p, o): Job| {
            let ctx = ctx.clone();
            async move {
                let r = ctx.exec.execute(&cmd).await;
                publish_response(&ctx.producer, &ctx.responses, &r, &ctx.metrics).await;
                let _ = ctx.done.send((p, o));
            }
        };
        while let Ok(Some(job)) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            run(job).await;
        }
        rx.close();
        while let Ok(job) = rx.try_recv() {
            run(job).await;
        }
    });
    tx
}

/// Offsets of `herd.actions` seen and done, per partition: an offset is committed only
/// when every command before it is done (its response published), so a crash
/// redelivers what was in flight, and idempotence makes that harmless.
#[derive(Default)]
struct Offsets {
    outstanding: BTreeMap<i32, std::collections::BTreeSet<i64>>,
    high: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl Offsets {
    fn seen(&mut self, p: i32, o: i64) {
        self.outstanding.entry(p).or_default().insert(o);
        let h = self.high.entry(p).or_insert(o);
        *h = (*h).max(o);
    }

    fn done(&mut self, consumer: &StreamConsumer, p: i32, o: i64) {
        let set = self.outstanding.entry(p).or_default();
        set.remove(&o);
        let next = match set.first() {
            Some(first) => *first,
            None => self.high.get(&p).map_or(o, |h| *h) + 1,
        };
        if self.committed.get(&p).is_some_and(|c| *c >= next) {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        let Some(topic) = consumer
            .assignment()
            .ok()
            .and_then(|a| a.elements().first().map(|e| e.topic().to_owned()))
        else {
            return;
        };
        if tpl
            .add_partition_offset(&topic, p, rdkafka::Offset::Offset(next))
            .is_ok()
            && consumer.commit(&tpl, CommitMode::Async).is_ok()
        {
            self.committed.insert(p, next);
        }
    }
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

/// Every few seconds: does the Docker engine answer, is a broker reachable? Sets the
/// agent's readiness and beats its liveness.
async fn probe(
    docker: bollard::Docker,
    producer: FutureProducer,
    health: Arc<Health>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        health.beat();
        let up = tokio::time::timeout(Duration::from_secs(3), docker.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        health.set("docker", up);
        let p = producer.clone();
        let broker = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            p.client()
                .fetch_metadata(None, Duration::from_secs(3))
                .is_ok_and(|m| !m.brokers().is_empty())
        })
        .await
        .unwrap_or(false);
        health.set("broker", broker);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Where the publisher sends each kind of record.
struct Outlets {
    samples: String,
    events: String,
    responses: String,
}

/// Publishes what the collector emits until its channel closes. Each record is handed to
/// the producer in the order it came (librdkafka keeps a partition's order) and the
/// deliveries are awaited together. Waiting for each before taking the next would cap a
/// host at one record a round trip: a lone record waits out `linger.ms` (5 ms) before it
/// is sent, so at most 200 a second whatever the broker, and a slow broker would hold an
/// inventory behind every sample queued before it. When librdkafka's queue is full the
/// publisher waits for a delivery before it takes the next record, and the collector
/// waits on the channel: backpressure, not loss.
async fn publish(
    mut rx: tokio::sync::mpsc::Receiver<Emit>,
    producer: FutureProducer,
    out: Outlets,
    exec: Arc<Executor>,
    m: Arc<AgentMetrics>,
) {
    use futures_util::StreamExt as _;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut failures = 0u64;
    loop {
        m.publish_pending.set(pending.len() as i64);
        let e = tokio::select! {
            Some((topic, error)) = pending.next(), if !pending.is_empty() => {
                settle(topic, error, &m, &mut failures);
                continue;
            }
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        let (topic, key, payload) = match e {
            Emit::Sample { key, payload } => {
                m.samples.inc();
                (&out.samples, key, payload)
            }
            Emit::Event { key, payload } => {
                m.events.inc();
                (&out.events, key, payload)
            }
            Emit::Inventory { key, payload, kind } => {
                m.inventories.with_label_values(&[kind]).inc();
                (&out.events, key, payload)
            }
            Emit::SampleFailed { reason } => {
                m.sampling_errors.with_label_values(&[reason]).inc();
                continue;
            }
            Emit::InventoryFailed { reason } => {
                m.inventory_errors.with_label_values(&[reason]).inc();
                continue;
            }
            Emit::Tracked(n) => {
                m.containers.set(n as i64);
                continue;
            }
            Emit::Exit { id, why } => {
                let (exec, producer, responses, m) = (
                    Arc::clone(&exec),
                    producer.clone(),
                    out.responses.clone(),
                    Arc::clone(&m),
                );
                tokio::spawn(async move {
                    if let Some(r) = exec.on_exit(&id, why).await {
                        publish_response(&producer, &responses, &r, &m).await;
                    }
                });
                continue;
            }
        };
        let mut rec = FutureRecord::<str, [u8]>::to(topic).payload(&payload);
        if !key.is_empty() {
            rec = rec.key(&key);
        }
        loop {
            match producer.send_result(rec) {
                Ok(delivery) => {
                    pending.push(async move {
                        let error = match delivery.await {
                            Ok(Ok(_)) => None,
                            Ok(Err((e, _))) => Some(e.to_string()),
                            Err(_) => Some("the producer was dropped".to_owned()),
                        };
                        (topic.as_str(), error)
                    });
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    match pending.next().await {
                        Some((t, error)) => settle(t, error, &m, &mut failures),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => {
                    settle(topic, Some(e.to_string()), &m, &mut failures);
                    break;
                }
            }
        }
    }
    while let Some((topic, error)) = pending.next().await {
        settle(topic, error, &m, &mut failures);
    }
    m.publish_pending.set(0);
}

/// Counts a record that was not delivered (`error` set), and logs it as the worker's
/// producer does.
fn settle(topic: &str, error: Option<String>, m: &AgentMetrics, failures: &mut u64) {
    let Some(error) = error else { return };
    m.publish_failures.with_label_values(&[topic]).inc();
    *failures += 1;
    crate::stream::kafka::log_delivery_failure(*failures, &error, topic);
}

async fn publish_response(producer: &FutureProducer, topic: &str, r: &Response, m: &AgentMetrics) {
    m.actions
        .with_label_values(&[r.action.as_str(), r.outcome.as_str()])
        .inc();
    if r.outcome == Outcome::Ok
        && let Some(bytes) = r.details.get("bytes").and_then(serde_json::Value::as_u64)
    {
        m.evidence_bytes.inc_by(bytes);
    }
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
