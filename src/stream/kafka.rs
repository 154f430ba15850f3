//! Kafka plumbing: client configuration, the producer with delivery accounting, topic
//! creation and the co-partitioning check, and reading a partition of `herd.baselines`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::StreamConfig;

/// A client configuration: herd's defaults for the role, then every `kafka.*` property
/// the operator set (TLS, SASL and the rest pass through untouched).
pub fn client_config(kafka: &BTreeMap<String, String>, role: Role<'_>) -> ClientConfig {
    let mut c = ClientConfig::new();
    match role {
        Role::Consumer { group_id } => {
            c.set("group.id", group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                // Range assignment gives one member the same partition number of every
                // subscribed topic: a task's inputs stay together (co-partitioning).
                .set("partition.assignment.strategy", "range")
                // Watermarks and ends of partitions for the event-time merge (and,
                // later, lag metrics).
                .set("statistics.interval.ms", "1000")
                .set("enable.partition.eof", "true")
                // What librdkafka prefetches ahead of the tasks is memory the worker
                // holds for records it has not scored: 64 MiB by default (and the fetch
                // responses of consumed records while they linger), as much as the
                // whole detection state of ten thousand containers. 16 MiB is seconds
                // of input at the maximum rate, plenty to hide a fetch round trip.
                .set("queued.max.messages.kbytes", "16384");
        }
        Role::Reader => {
            c.set("group.id", "herd-restore")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true");
        }
        Role::Producer => {
            // Java clients' partitioner: a key lands on the same partition whichever
            // client produced it, so producers outside herd agree with herd's routing.
            c.set("partitioner", "murmur2_random")
                .set("linger.ms", "5")
                .set("acks", "all")
                // librdkafka queues up to 1 GiB by default; a full queue makes `send`
                // wait for deliveries instead (backpressure), so a slow broker
                // costs throughput, not memory; a checkpoint larger than the queue goes
                // out as earlier parts are delivered.
                .set("queue.buffering.max.kbytes", "65536");
        }
    }
    for (k, v) in kafka {
        if matches!(role, Role::Reader) && k == "group.id" {
            continue;
        }
        c.set(k, v);
    }
    c
}

/// What a client is for.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// A member of the workers' consumer group.
    Consumer {
        /// The group.
        group_id: &'a str,
    },
    /// An assign-only reader (restoring checkpoints); never commits.
    Reader,
    /// The producer of alerts, dead letters, re-keyed input and checkpoints.
    Producer,
}

/// Counts deliveries the broker refused after librdkafka's own retries. A failure
/// means some effect of processed input is not durable: the worker must not commit.
#[derive(Debug, Default, Clone)]
pub struct DeliveryTracker {
    failed: Arc<AtomicU64>,
}

impl DeliveryTracker {
    /// Deliveries that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, msg)) = result {
            let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            log_delivery_failure(n, err, msg.topic());
        }
    }
}

/// Logs the `n`th failed delivery of a producer. A refusal fails every record of a
/// request, so the 1st, 2nd, 4th, 8th… are logged as errors and the others at debug
/// level, not one error per record.
pub fn log_delivery_failure(n: u64, error: &dyn std::fmt::Display, topic: &str) {
    if n.is_power_of_two() {
        tracing::error!(%error, topic, failed = n, "delivery failed");
    } else {
        tracing::debug!(%error, topic, failed = n, "delivery failed");
    }
}

/// The worker's producer.
pub type HerdProducer = ThreadedProducer<DeliveryTracker>;

/// Creates the producer.
pub fn producer(kafka: &BTreeMap<String, String>) -> anyhow::Result<HerdProducer> {
    client_config(kafka, Role::Producer)
        .create_with_context(DeliveryTracker::default())
        .context("creating the Kafka producer")
}

/// Sends one record, waiting (and serving delivery reports) while librdkafka's queue is
/// full: backpressure instead of an error or an unbounded queue.
pub fn send(producer: &HerdProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, r)) => {
                return Err(anyhow::anyhow!("producing to {}: {e}", r.topic));
            }
        }
    }
}

/// How long [`flush`] lets the broker leave every queued record unanswered before it
/// gives up: librdkafka's own request timeout (30 s) twice over, so one lost request
/// and its retry fit.
pub const FLUSH_STALL: Duration = Duration::from_secs(60);

/// Waits until the broker has answered for every queued record, for as long as it keeps
/// answering: fails only after `stall` without one more acknowledgement, or when a
/// delivery failed. A long backlog on a slow broker (a large file at one record per
/// request) is not an error; a broker that stopped answering is. Returns how many
/// records were still in flight when it gave up, in the error.
pub fn flush(producer: &HerdProducer, stall: Duration) -> anyhow::Result<()> {
    use rdkafka::producer::Producer as _;
    let mut left = producer.in_flight_count();
    let mut progressed = Instant::now();
    loop {
        match producer.flush(Duration::from_secs(1)) {
            Ok(()) => break,
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {}
            Err(e) => return Err(e).context("waiting for the broker's acknowledgements"),
        }
        let now = producer.in_flight_count();
        if now < left {
            left = now;
            progressed = Instant::now();
        } else if progressed.elapsed() >= stall {
            anyhow::bail!(
                "the broker acknowledged nothing for {} s; {now} records still in flight",
                stall.as_secs()
            );
        }
    }
    let failed = producer.context().failed();
    anyhow::ensure!(failed == 0, "{failed} records were not delivered");
    Ok(())
}

/// Creates the missing topics (compacted `herd.baselines`) and checks that every topic
/// of a task has the same number of partitions. Returns that number.
pub async fn prepare_topics(
    kafka: &BTreeMap<String, String>,
    cfg: &StreamConfig,
) -> anyhow::Result<i32> {
    let t = &cfg.topics;
    let mut tasked: Vec<&str> = t.inputs.iter().map(String::as_str).collect();
    tasked.push(&t.repartition);
    tasked.push(&t.baselines);
    tasked.push(&t.retrained);
    tasked.push(&t.feedback);
    let others = [
        t.alerts.as_str(),
        t.dlq.as_str(),
        t.actions.as_str(),
        t.responses.as_str(),
    ];

    let admin: AdminClient<DefaultClientContext> = {
        let mut c = ClientConfig::new();
        for (k, v) in kafka {
            c.set(k, v);
        }
        c.create().context("creating the Kafka admin client")?
    };
    let all: Vec<&str> = tasked.iter().chain(&others).copied().collect();
    let missing = |counts: &BTreeMap<String, i32>| -> Vec<&str> {
        all.iter()
            .copied()
            .filter(|t| !counts.contains_key(*t))
            .collect()
    };
    if cfg.create_topics {
        let missing = missing(&partition_counts(&admin, all.iter().copied())?);
        if !missing.is_empty() {
            let new: Vec<NewTopic<'_>> = missing
                .iter()
                .map(|name| {
                    let n = NewTopic::new(
                        name,
                        cfg.partitions,
                        TopicReplication::Fixed(cfg.replication),
                    );
                    if *name == t.baselines || *name == t.retrained {
                        n.set("cleanup.policy", "compact")
                    } else {
                        n
                    }
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for r in admin.create_topics(new.iter(), &opts).await? {
                match r {
                    Ok(name) => tracing::info!(topic = %name, "created topic"),
                    Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        tracing::debug!(topic = %name, "topic exists")
                    }
                    Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
                }
            }
        }
    }
    // Topics can take a moment to show in metadata after creation.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = partition_counts(&admin, all.iter().copied())?;
        let missing = missing(&counts);
        if missing.is_empty() {
            return co_partitioned(&counts, &tasked);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "topics missing: {} (create them, or set stream.create_topics = true)",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn co_partitioned(counts: &BTreeMap<String, i32>, tasked: &[&str]) -> anyhow::Result<i32> {
    let mut n = None;
    for t in tasked {
        let c = counts.get(*t).copied().unwrap_or(0);
        match n {
            None => n = Some(c),
            Some(m) if m == c => {}
            Some(m) => anyhow::bail!(
                "topic {t} has {c} partitions, but {} has {m}: every input topic, the \
                 repartition topic and the baselines topic must have the same number \
                 (a worker owns one partition number of all of them)",
                tasked[0]
            ),
        }
    }
    n.filter(|n| *n > 0)
        .ok_or_else(|| anyhow::anyhow!("no partitions"))
}

fn partition_counts<'a>(
    admin: &AdminClient<DefaultClientContext>,
    topics: impl Iterator<Item = &'a str>,
) -> anyhow::Result<BTreeMap<String, i32>> {
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching metadata from the brokers")?;
    let wanted: Vec<&str> = topics.collect();
    Ok(md
        .topics()
        .iter()
        .filter(|t| wanted.contains(&t.name()) && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// Checkpoints of one partition: the last value of every key (`None` for a tombstone).
pub type Checkpoints = BTreeMap<String, Option<Vec<u8>>>;

/// Reads the given partitions of the compacted checkpoint topic, with one reader, from
/// their start to their current end.
///
/// The end is where librdkafka reports end-of-partition (from the fetch responses),
/// not a watermark asked for up front: some brokers (Tansu) answer ListOffsets for the
/// latest offset with the start of the last batch, and stopping there would restore
/// a state older than the committed offsets.
pub fn read_checkpoints(
    kafka: &BTreeMap<String, String>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, Checkpoints>> {
    let mut out: BTreeMap<i32, Checkpoints> =
        partitions.iter().map(|p| (*p, BTreeMap::new())).collect();
    if partitions.is_empty() {
        return Ok(out);
    }
    let reader: BaseConsumer = client_config(kafka, Role::Reader)
        .create()
        .context("creating the checkpoint reader")?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut open: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + timeout;
    while !open.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "restoring {topic} partitions {open:?}: not read to their end before the deadline"
        );
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if let Some(part) = out.get_mut(&m.partition()) {
                    part.insert(key.to_owned(), m.payload().map(<[u8]>::to_vec));
                }
            }
            // At the end (compaction can leave the last offsets empty).
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e).context("reading checkpoints"),
            None => {}
        }
    }
    Ok(out)
}
