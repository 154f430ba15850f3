//! The worker loop: one consumer-group member on a dedicated thread.
//!
//! A `BaseConsumer` is polled in batches on this thread; each record goes to its task
//! (partition number), whose outputs go to one producer. No task per message, no lock
//! on the hot path (the task map's mutex is only ever taken by this thread: the
//! rebalance callbacks run inside `poll`). Backpressure: an input partition with a full
//! buffer is paused until its task has worked it down; librdkafka's producer queue, when
//! full, makes the loop wait.
//!
//! At-least-once: offsets are committed only at a checkpoint, after the producer has
//! flushed every alert, dead letter, forwarded record and checkpoint record that the
//! input before those offsets caused, with no delivery failure. A crash therefore
//! reprocesses at most one checkpoint interval, from state as of that checkpoint;
//! incident ids are deterministic, so reprocessing updates incidents, never doubles them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use herd_respond::sinks::alertmanager::Feed;
use prometheus::IntCounter;

use super::config::StreamConfig;
use super::kafka::{self, HerdProducer, Role};
use super::task::{Checkpoint, OUTCOMES, Out, Task, TaskConfig};
use crate::config::HerdConfig;
use crate::metrics::{Health, WorkerMetrics, raise_to};
use crate::pipeline::Counters;

/// Records taken from the consumer per loop turn before the tasks work on them.
const BATCH: usize = 2048;

/// What a worker did, for its exit summary and for tests.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Counters summed over the tasks this worker held when it stopped, plus those it
    /// handed off.
    pub counters: Counters,
    /// Records forwarded to the repartition topic.
    pub forwarded: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Tasks restored from `herd.baselines` on assignment.
    pub restored: u64,
    /// Records processed after a newer one of the same task.
    pub out_of_order: u64,
    /// Raw stats samples that waited for their container's `start` event.
    pub identity_waits: u64,
    /// Per input: records by outcome ([`OUTCOMES`]), of the tasks handed off or held
    /// at the end.
    pub tally: Vec<[u64; 4]>,
    /// The inputs' topics, in the order of `tally`.
    pub topics: Vec<String>,
    /// Per input: offsets skipped with no record delivered ([`Task::skipped`]),
    /// records lost before they were read unless the topic is compacted.
    pub skipped: Vec<u64>,
    /// Milliseconds from each record's Kafka timestamp to the end of its scoring.
    pub latency_ms: hdrhistogram::Histogram<u64>,
    /// From the first record offered to the last one processed, over all tasks.
    pub busy: Option<(Instant, Instant)>,
    /// Times the worker went back to the last commit in place after the broker refused
    /// deliveries ([`crate::stream::supervise`]); the records after each last commit
    /// were processed again, and are counted again.
    pub restarts: u64,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            counters: Counters::default(),
            forwarded: 0,
            dead_lettered: 0,
            checkpoints: 0,
            restored: 0,
            out_of_order: 0,
            identity_waits: 0,
            tally: Vec::new(),
            topics: Vec::new(),
            skipped: Vec::new(),
            latency_ms: super::task::new_latency_histogram(),
            busy: None,
            restarts: 0,
        }
    }
}

impl Summary {
    /// Adds what another run of the worker did (an in-place restart's predecessor).
    pub fn absorb(&mut self, other: &Summary) {
        self.counters.absorb(&other.counters);
        self.forwarded += other.forwarded;
        self.dead_lettered += other.dead_lettered;
        self.checkpoints += other.checkpoints;
        self.restored += other.restored;
        self.out_of_order += other.out_of_order;
        self.identity_waits += other.identity_waits;
        add_tally(&mut self.tally, &other.tally);
        add_counts(&mut self.skipped, &other.skipped);
        if self.topics.is_empty() {
            self.topics.clone_from(&other.topics);
        }
        let _ = self.latency_ms.add(&other.latency_ms);
        self.busy = match (self.busy, other.busy) {
            (Some((a, b)), Some((x, y))) => Some((a.min(x), b.max(y))),
            (a, b) => a.or(b),
        };
        self.restarts += other.restarts;
    }
}

/// The broker refused deliveries after librdkafka's own retries: some effect of
/// processed input (an alert, a dead letter, a checkpoint record) is not durable, so
/// this run of the worker stopped without committing. Only processing again from the
/// last commit brings those effects back: a restart does that, in place
/// ([`crate::stream::supervise`]) or by the process's supervisor.
#[derive(Debug)]
pub struct Refused {
    /// Deliveries that failed since the last commit.
    pub failed: u64,
    /// What this run did until it stopped.
    pub summary: Summary,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deliveries failed since the last commit: not committing (a restart \
             reprocesses from the last commit)",
            self.failed
        )
    }
}

impl std::error::Error for Refused {}

/// What a worker reports besides its outputs: Prometheus series, readiness, and the
/// Alertmanager feed. [`Instruments::detached`] when nobody looks (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct Instruments {
    /// The worker's series.
    pub metrics: Arc<WorkerMetrics>,
    /// Readiness: `assigned` (an assignment adopted, its state restored) and `broker`
    /// (librdkafka reports a broker up).
    pub health: Arc<Health>,
    /// Open incidents for Alertmanager, when configured.
    pub alertmanager: Option<Feed>,
}

impl Instruments {
    /// Readiness conditions of a worker.
    pub const CONDITIONS: [&'static str; 2] = ["assigned", "broker"];

    /// Fresh series and health, no Alertmanager.
    pub fn detached() -> anyhow::Result<Self> {
        Ok(Self {
            metrics: Arc::new(WorkerMetrics::new()?),
            health: Arc::new(Health::new(&Self::CONDITIONS, 120_000)),
            alertmanager: None,
        })
    }
}

/// (high watermark, low watermark, end-of-partition offset) of one partition.
type Watermarks = (i64, i64, i64);

struct Shared {
    tasks: Mutex<BTreeMap<i32, Task>>,
    /// Tasks revoked in the current rebalance: kept if they come straight back.
    parked: Mutex<BTreeMap<i32, Task>>,
    assigned: Mutex<Vec<i32>>,
    producer: HerdProducer,
    topics: Vec<String>,
    cfg: StreamConfig,
    failed_at_commit: Mutex<u64>,
    summary: Mutex<Summary>,
    /// (input index, partition) → watermarks, from librdkafka's statistics.
    watermarks: Mutex<HashMap<(usize, i32), Watermarks>>,
    /// Set by the rebalance callbacks (which run inside `poll`): the loop has an
    /// assignment to adopt or a failure to raise. One atomic load per record instead
    /// of two locks.
    rebalanced: AtomicBool,
    /// A failure inside a rebalance callback, raised by the loop.
    error: Mutex<Option<anyhow::Error>>,
    inst: Instruments,
    /// Lag series currently exported, to remove those of partitions gone.
    lag_series: Mutex<BTreeSet<(String, i32)>>,
    /// When state was last checkpointed and committed.
    last_checkpoint: Mutex<Instant>,
    /// The observation archive, when configured.
    archive: Option<crate::archive::Writer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only the worker thread takes these locks; a poisoned one means that thread
    // already panicked, and the data is still the best there is.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    /// Reaching the end of a partition is normal (empty topics report it at once);
    /// everything else librdkafka reports globally is logged as an error.
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // (librdkafka reports it globally too, as an error code.)
            KafkaError::PartitionEOF(_)
            | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::debug!(reason, "end of partition");
            }
            e => tracing::error!(error = %e, reason, "librdkafka error"),
        }
    }

    fn stats(&self, s: Statistics) {
        let up = s.brokers.values().any(|b| b.state == "UP");
        self.0.inst.health.set("broker", up);
        let lag = &self.0.inst.metrics.consumer_lag;
        let mut now = BTreeSet::new();
        let mut prefetched = 0u64;
        for (name, topic) in &s.topics {
            if !self.0.topics.contains(name) {
                continue;
            }
            for (p, part) in &topic.partitions {
                // Every partition's fetch queue forwards to the consumer's one queue,
                // and librdkafka reports that queue's size for each: the largest, not
                // the sum.
                if *p >= 0 {
                    prefetched = prefetched.max(part.fetchq_size);
                }
                if *p >= 0 && part.desired && part.consumer_lag >= 0 {
                    lag.with_label_values(&[name.as_str(), &p.to_string()])
                        .set(part.consumer_lag);
                    now.insert((name.clone(), *p));
                }
            }
        }
        self.0
            .inst
            .metrics
            .prefetch_bytes
            .set(i64::try_from(prefetched).unwrap_or(i64::MAX));
        let mut exported = lock(&self.0.lag_series);
        for (t, p) in exported.difference(&now) {
            let _ = lag.remove_label_values(&[t.as_str(), &p.to_string()]);
        }
        *exported = now;
        drop(exported);
        let mut wm = lock(&self.0.watermarks);
        for (name, topic) in &s.topics {
            let Some(input) = self.0.topics.iter().position(|t| t == name) else {
                continue;
            };
            for (p, part) in &topic.partitions {
                if *p >= 0 && part.desired {
                    wm.insert(
                        (input, *p),
                        (part.hi_offset, part.lo_offset, part.eof_offset),
                    );
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        self.0.inst.health.set("assigned", false);
        let mut tasks = lock(&self.0.tasks);
        let revoked: Vec<Task> = parts.iter().filter_map(|p| tasks.remove(p)).collect();
        drop(tasks);
        if revoked.is_empty() {
            return;
        }
        let deadline = Duration::from_millis(self.0.cfg.shutdown_deadline_ms);
        let mut revoked = revoked;
        let result = commit(&self.0, consumer, revoked.iter_mut(), deadline);
        let span = tracing::info_span!("revoke", partitions = ?parts);
        let _g = span.enter();
        match result {
            Ok(()) => tracing::info!("checkpointed and committed revoked partitions"),
            Err(e) => {
                tracing::error!(error = %e, "checkpoint on revoke failed");
                lock(&self.0.error).get_or_insert(e);
                self.0.rebalanced.store(true, Ordering::Relaxed);
            }
        }
        // librdkafka drops what it fetched for revoked partitions and fetches again
        // from the committed offsets if they come back: so do the tasks.
        let mut parked = lock(&self.0.parked);
        for mut t in revoked {
            t.rewind();
            parked.insert(t.partition(), t);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                if parts.is_empty() {
                    // A member with nothing to do (more workers than partitions) is
                    // ready: it is a standby, and takes over on the next rebalance.
                    self.0.inst.health.set("assigned", true);
                }
                lock(&self.0.assigned).extend(parts);
                self.0.rebalanced.store(true, Ordering::Relaxed);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Checkpoints the given tasks, waits until the producer has delivered everything sent
/// so far, and commits their positions.
fn commit<'a>(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    tasks: impl Iterator<Item = &'a mut Task>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let r = commit_inner(shared, consumer, tasks, timeout);
    match &r {
        Ok(()) => {
            shared.inst.metrics.checkpoints.inc();
            *lock(&shared.last_checkpoint) = Instant::now();
        }
        Err(_) => shared.inst.metrics.checkpoint_failures.inc(),
    }
    r
}

fn commit_inner<'a>(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    tasks: impl Iterator<Item = &'a mut Task>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut tasks: Vec<&mut Task> = tasks.collect();
    for t in &mut tasks {
        let Checkpoint {
            archive,
            records,
            positions,
        } = t.checkpoint()?;
        // The archive first: offsets are committed only once every row before them is
        // in it.
        write_archive(shared, archive)?;
        for (key, value) in &records {
            let mut r = BaseRecord::<[u8], [u8]>::to(&shared.cfg.topics.baselines)
                .key(key.as_bytes())
                .partition(t.partition());
            if let Some(v) = value {
                r = r.payload(v.as_slice());
            }
            kafka::send(&shared.producer, r)?;
        }
        for (topic, pos) in shared.topics.iter().zip(positions) {
            if let Some(pos) = pos {
                tpl.add_partition_offset(topic, t.partition(), Offset::Offset(pos))?;
            }
        }
    }
    shared
        .producer
        .flush(timeout)
        .context("flushing alerts and checkpoints before a commit")?;
    let failed = shared.producer.context().failed();
    let mut seen = lock(&shared.failed_at_commit);
    anyhow::ensure!(
        failed == *seen,
        "{} deliveries failed since the last commit: not committing (a restart \
         reprocesses from the last commit)",
        failed - *seen
    );
    *seen = failed;
    if tpl.count() > 0 {
        consumer
            .commit(&tpl, CommitMode::Sync)
            .context("committing offsets")?;
    }
    for t in tasks {
        t.committed();
    }
    lock(&shared.summary).checkpoints += 1;
    Ok(())
}

/// Runs one worker until `shutdown` is set, then drains, checkpoints, commits and
/// returns. Errors are external (the broker refused, a checkpoint could not be read)
/// and mean: exit non-zero, a restart resumes from the last commit.
pub fn run(
    cfg: &HerdConfig,
    kafka_cfg: &BTreeMap<String, String>,
    shutdown: &AtomicBool,
) -> anyhow::Result<Summary> {
    run_with(cfg, kafka_cfg, shutdown, Instruments::detached()?)
}

/// [`run`], reporting to the given series, health and Alertmanager feed.
pub fn run_with(
    cfg: &HerdConfig,
    kafka_cfg: &BTreeMap<String, String>,
    shutdown: &AtomicBool,
    inst: Instruments,
) -> anyhow::Result<Summary> {
    let scfg = cfg.stream.clone();
    // Inputs, then the retrained baselines and the feedback, then the repartition
    // topic (always last).
    let mut topics = scfg.topics.inputs.clone();
    topics.push(scfg.topics.retrained.clone());
    topics.push(scfg.topics.feedback.clone());
    topics.push(scfg.topics.repartition.clone());
    let index: HashMap<String, usize> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i))
        .collect();
    let mut policies = None;
    let respond = match &cfg.respond.policy_file {
        Some(path) => {
            let (src, file) = super::respond::PolicySource::open(path)?;
            policies = Some(src);
            Some((cfg.respond.clone(), Arc::new(file)))
        }
        None => None,
    };
    let mut last_policy_poll = Instant::now();
    let mut task_cfg = TaskConfig {
        limits: cfg.limits,
        normalizer: cfg.normalizer.clone(),
        detect: cfg.detect.clone(),
        inputs: topics.len(),
        max_routed_containers: scfg.max_routed_containers,
        max_idle: Duration::from_millis(scfg.max_task_idle_ms),
        respond,
        latency: Some(inst.metrics.latency.clone()),
        archive_rows: cfg.archive.url.as_ref().map(|_| cfg.archive.max_file_rows),
        retrained_input: Some(topics.len() - 3),
        feedback_input: Some(topics.len() - 2),
        max_checkpoint_value: scfg.checkpoint_record_bytes,
        max_future_skew_ms: scfg.max_future_skew_ms,
    };
    let exported = Exported::new(&inst.metrics, &topics);
    let shared = Arc::new(Shared {
        tasks: Mutex::new(BTreeMap::new()),
        parked: Mutex::new(BTreeMap::new()),
        assigned: Mutex::new(Vec::new()),
        producer: kafka::producer(kafka_cfg)?,
        topics: topics.clone(),
        cfg: scfg.clone(),
        failed_at_commit: Mutex::new(0),
        summary: Mutex::new(Summary::default()),
        watermarks: Mutex::new(HashMap::new()),
        rebalanced: AtomicBool::new(false),
        error: Mutex::new(None),
        inst,
        lag_series: Mutex::new(BTreeSet::new()),
        last_checkpoint: Mutex::new(Instant::now()),
        archive: crate::archive::Writer::open(&cfg.archive)?,
    });
    let consumer: BaseConsumer<Ctx> = kafka::client_config(
        kafka_cfg,
        Role::Consumer {
            group_id: &scfg.group_id,
        },
    )
    .create_with_context(Ctx(Arc::clone(&shared)))
    .context("creating the Kafka consumer")?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).context("subscribing")?;
    tracing::info!(topics = ?names, group = %scfg.group_id, "worker started");

    let mut out = Vec::new();
    let mut paused: BTreeSet<(usize, i32)> = BTreeSet::new();
    let mut last_commit = Instant::now();
    let interval = Duration::from_millis(scfg.checkpoint_interval_ms);
    let max_buf = scfg.max_buffered_per_partition;
    let restore_timeout = Duration::from_millis(scfg.shutdown_deadline_ms.max(10_000));

    let mut last_export = Instant::now();
    // Going back to the last commit in place (see `drop_to_last_commit`): when the next
    // attempt is due, how long to wait after a failed one, and how many in a row.
    let mut reset: Option<Instant> = None;
    let mut reset_wait = Duration::from_secs(1);
    let mut resets_in_a_row = 0u32;
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(due) = reset
            && Instant::now() >= due
        {
            match seek_to_last_commit(&shared, &consumer, kafka_cfg, &task_cfg, restore_timeout) {
                Ok(()) => {
                    reset = None;
                    tracing::info!("back at the last commit; processing again from there");
                }
                Err(e) => {
                    reset_wait = (reset_wait * 2).min(super::MAX_RESTART_WAIT);
                    reset = Some(Instant::now() + reset_wait);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        wait_ms = reset_wait.as_millis() as u64,
                        "could not go back to the last commit yet; retrying"
                    );
                }
            }
        }
        shared.inst.health.beat();
        let mut first = Some(Duration::from_millis(100));
        let batch = tracing::debug_span!("batch", records = tracing::field::Empty).entered();
        let mut polled = 0usize;
        for _ in 0..BATCH {
            let msg = consumer.poll(first.take().unwrap_or(Duration::ZERO));
            if shared.rebalanced.swap(false, Ordering::Relaxed) {
                if let Some(e) = lock(&shared.error).take() {
                    return Err(refused_or(&shared, e));
                }
                // (While going back to the last commit, that step adopts them.)
                if reset.is_none() {
                    adopt_assignments(&shared, &consumer, kafka_cfg, &task_cfg, restore_timeout)?;
                }
            }
            let Some(msg) = msg else { break };
            polled += 1;
            let mut tasks = lock(&shared.tasks);
            match msg {
                Ok(m) => {
                    let (Some(&input), p) = (index.get(m.topic()), m.partition()) else {
                        continue;
                    };
                    let Some(task) = tasks.get_mut(&p) else {
                        // Fetched before the seek back to the last commit: it comes again.
                        if reset.is_some() {
                            continue;
                        }
                        anyhow::bail!("a record of {}/{p}, which no task owns", m.topic());
                    };
                    task.offer(
                        input,
                        m.offset(),
                        m.timestamp().to_millis(),
                        m.key(),
                        m.payload().unwrap_or_default(),
                        &mut out,
                    );
                    if task.buffered(input) >= max_buf && paused.insert((input, p)) {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&topics[input], p);
                        consumer.pause(&tpl)?;
                    }
                }
                // The end of a partition, of one of the inputs (see `partition_eof`).
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(t) = tasks.get_mut(&p) {
                        t.partition_eof(super::task::wall_ms());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "consumer error"),
            }
        }
        let now = Instant::now();
        if let Some(src) = &mut policies
            && now.duration_since(last_policy_poll) >= Duration::from_secs(1)
        {
            last_policy_poll = now;
            if let Some(new) = src.poll() {
                for t in lock(&shared.tasks).values_mut() {
                    t.reload_policies(&new);
                }
                task_cfg.respond = Some((cfg.respond.clone(), new));
            }
        }
        {
            let mut tasks = lock(&shared.tasks);
            observe_watermarks(&shared, &mut tasks);
            for t in tasks.values_mut() {
                t.drain(now, task_cfg.max_idle, false, &mut out);
            }
            send_outputs(&shared, &mut out)?;
            let resume: Vec<(usize, i32)> = paused
                .iter()
                .copied()
                .filter(|(i, p)| tasks.get(p).is_none_or(|t| t.buffered(*i) <= max_buf / 2))
                .collect();
            for (i, p) in resume {
                paused.remove(&(i, p));
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topics[i], p);
                // A partition revoked meanwhile cannot be resumed; that is fine.
                let _ = consumer.resume(&tpl);
            }
            if now.duration_since(last_export) >= Duration::from_secs(1) {
                last_export = now;
                exported.publish(&shared, &tasks);
            }
        }
        batch.record("records", polled);
        drop(batch);
        if last_commit.elapsed() >= interval {
            let mut tasks = lock(&shared.tasks);
            let _span = tracing::debug_span!("checkpoint").entered();
            for t in tasks.values() {
                tracing::debug!(
                    partition = t.partition(),
                    records = t.pipeline().counters.lines,
                    buffered = ?(0..topics.len()).map(|i| t.buffered(i)).collect::<Vec<_>>(),
                    positions = ?t.positions(),
                    paused = paused.len(),
                    "task"
                );
            }
            let r = commit(
                &shared,
                &consumer,
                tasks.values_mut(),
                interval.max(Duration::from_secs(10)),
            );
            if r.is_ok() && reset.is_none() {
                resets_in_a_row = 0;
                reset_wait = Duration::from_secs(1);
            }
            if let Err(e) = r {
                // A delivery the broker refused after librdkafka's retries is an effect
                // lost: only reprocessing from the last commit brings it back, so the
                // worker goes back to it in place (`drop_to_last_commit`; beyond
                // `max_restarts` in a row the run ends, `Refused`). Anything else
                // (the broker is restarting, a flush or a commit timed out) is retried
                // at the next interval while the records wait in the producer's queue.
                if shared.producer.context().failed() != *lock(&shared.failed_at_commit) {
                    drop(tasks);
                    if resets_in_a_row >= scfg.max_restarts {
                        return Err(refused_or(&shared, e));
                    }
                    resets_in_a_row += 1;
                    tracing::error!(
                        error = format!("{e:#}"),
                        reset = resets_in_a_row,
                        of = scfg.max_restarts,
                        wait_ms = reset_wait.as_millis() as u64,
                        "the broker refused deliveries; going back to the last commit in place"
                    );
                    drop_to_last_commit(&shared, &consumer, &mut paused, &mut out);
                    reset = Some(Instant::now() + reset_wait);
                    last_commit = Instant::now();
                    continue;
                }
                tracing::warn!(
                    error = format!("{e:#}"),
                    "checkpoint failed; retrying at the next interval"
                );
            }
            last_commit = Instant::now();
        }
    }

    // Shutdown: stop fetching, drain, checkpoint, commit, within the deadline.
    let deadline = Duration::from_millis(scfg.shutdown_deadline_ms);
    let started = Instant::now();
    {
        let mut tasks = lock(&shared.tasks);
        for t in tasks.values_mut() {
            t.drain(Instant::now(), task_cfg.max_idle, true, &mut out);
        }
        send_outputs(&shared, &mut out)?;
        commit(&shared, &consumer, tasks.values_mut(), deadline)?;
        let mut s = lock(&shared.summary);
        for t in tasks.values() {
            add_task(&mut s, t);
        }
    }
    consumer.unsubscribe();
    let mut s = lock(&shared.summary).clone();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        records = s.counters.lines,
        checkpoints = s.checkpoints,
        "worker stopped"
    );
    s.topics = topics;
    Ok(s)
}

/// `e` as [`Refused`], with what this run did, when deliveries failed since the last
/// commit; otherwise `e` as it is. (Takes the task locks: call it with none held.)
fn refused_or(shared: &Shared, e: anyhow::Error) -> anyhow::Error {
    let failed = shared.producer.context().failed();
    let seen = *lock(&shared.failed_at_commit);
    if failed == seen {
        return e;
    }
    tracing::error!(error = format!("{e:#}"), "deliveries refused");
    let mut summary = lock(&shared.summary).clone();
    for t in lock(&shared.tasks)
        .values()
        .chain(lock(&shared.parked).values())
    {
        add_dropped_task(&mut summary, t, shared.topics.len());
    }
    summary.topics.clone_from(&shared.topics);
    anyhow::Error::new(Refused {
        failed: failed - seen,
        summary,
    })
}

/// The broker refused deliveries: effects of processed input are lost, and only
/// processing again from the last commit brings them back. Without leaving the group
/// (a new member cannot join until the broker forgets the old one, and Tansu 0.6 does
/// not forget a member whose LeaveGroup was lost while it restarted), every task is
/// dropped, so that nothing is committed past the loss; [`seek_to_last_commit`] then
/// restores them and rewinds the consumer. The tasks' records count in the summary,
/// and count again when processed again.
fn drop_to_last_commit(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    paused: &mut BTreeSet<(usize, i32)>,
    out: &mut Vec<Out>,
) {
    shared.inst.health.set("assigned", false);
    shared.inst.metrics.restarts.inc();
    // Let what is in flight settle: a failure reported after this belongs to input
    // that is processed again anyway, and costs one more reset at most.
    let _ = shared.producer.flush(Duration::from_secs(5));
    *lock(&shared.failed_at_commit) = shared.producer.context().failed();
    let mut s = lock(&shared.summary);
    s.restarts += 1;
    for t in std::mem::take(&mut *lock(&shared.tasks))
        .values()
        .chain(std::mem::take(&mut *lock(&shared.parked)).values())
    {
        add_dropped_task(&mut s, t, shared.topics.len());
    }
    drop(s);
    out.clear();
    for (i, p) in std::mem::take(paused) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&shared.topics[i], p);
        let _ = consumer.resume(&tpl);
    }
}

/// Rewinds the consumer to the committed offsets of its assignment (where there is no
/// commit, to the beginning, as `auto.offset.reset = earliest` does) and restores the
/// tasks from `herd.baselines`. librdkafka drops what it fetched before the seek.
fn seek_to_last_commit(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    kafka_cfg: &BTreeMap<String, String>,
    task_cfg: &TaskConfig,
    timeout: Duration,
) -> anyhow::Result<()> {
    let assignment = consumer.assignment().context("reading the assignment")?;
    if assignment.count() > 0 {
        let committed = consumer
            .committed_offsets(assignment.clone(), timeout)
            .context("reading committed offsets")?;
        let mut to = TopicPartitionList::new();
        for e in committed.elements() {
            let at = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            to.add_partition_offset(e.topic(), e.partition(), at)?;
        }
        for e in consumer
            .seek_partitions(to, timeout)
            .context("seeking to the committed offsets")?
            .elements()
        {
            if let Err(err) = e.error() {
                anyhow::bail!("seeking {}/{}: {err}", e.topic(), e.partition());
            }
        }
    }
    // Exactly what is assigned now: partitions assigned and revoked again while the
    // reset waited must not get a task (it would commit offsets it does not own).
    let parts: BTreeSet<i32> = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    *lock(&shared.assigned) = parts.into_iter().collect();
    adopt_assignments(shared, consumer, kafka_cfg, task_cfg, timeout)?;
    shared.inst.health.set("assigned", true);
    Ok(())
}

/// Creates the tasks of newly assigned partitions: those revoked just before come back
/// as they were, the others are restored from `herd.baselines` before any of their
/// records is processed.
fn adopt_assignments(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    kafka_cfg: &BTreeMap<String, String>,
    task_cfg: &TaskConfig,
    timeout: Duration,
) -> anyhow::Result<()> {
    let assigned: Vec<i32> = std::mem::take(&mut *lock(&shared.assigned));
    if assigned.is_empty() {
        return Ok(());
    }
    let mut parked = std::mem::take(&mut *lock(&shared.parked));
    let mut tasks = lock(&shared.tasks);
    // Every partition that needs its state from herd.baselines, read with one reader.
    let to_restore: Vec<i32> = assigned
        .iter()
        .copied()
        .filter(|p| !tasks.contains_key(p) && !parked.contains_key(p))
        .collect();
    let mut restored = kafka::read_checkpoints(
        kafka_cfg,
        &shared.cfg.topics.baselines,
        &to_restore,
        timeout,
    )?;
    for p in assigned {
        if tasks.contains_key(&p) {
            continue;
        }
        let mut task = match parked.remove(&p) {
            Some(t) => t,
            None => {
                let records = restored.remove(&p).unwrap_or_default();
                let t = Task::restore(p, task_cfg, &records)
                    .with_context(|| format!("restoring partition {p} from checkpoints"))?;
                tracing::info!(
                    partition = p,
                    keys = records.len(),
                    groups = t.pipeline().engine().stats().groups,
                    "restored task"
                );
                lock(&shared.summary).restored += 1;
                t
            }
        };
        // Where each input starts. How far the broker has it comes from librdkafka's
        // statistics (the fetch responses' high watermarks): some brokers answer
        // ListOffsets with the start of the last batch, which would make an input look
        // caught up when it is not.
        let mut tpl = TopicPartitionList::new();
        for topic in &shared.topics {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .context("reading committed offsets")?;
        for (i, topic) in shared.topics.iter().enumerate() {
            if let Some(Offset::Offset(o)) = committed.find_partition(topic, p).map(|e| e.offset())
            {
                task.start_at(i, o);
            }
        }
        tasks.insert(p, task);
    }
    // Parked tasks that did not come back belong to another worker now.
    let mut s = lock(&shared.summary);
    for t in parked.values() {
        add_task(&mut s, t);
    }
    drop(s);
    if let Some(feed) = &shared.inst.alertmanager
        && !parked.is_empty()
    {
        let gone: BTreeSet<String> = parked
            .values()
            .flat_map(|t| t.pipeline().engine().group_keys().map(str::to_owned))
            .collect();
        feed.forget_groups(&gone);
    }
    shared.inst.health.set("assigned", true);
    Ok(())
}

/// Gives the tasks the high watermarks of librdkafka's last statistics report, so that
/// they know which inputs still have records on the broker.
fn observe_watermarks(shared: &Shared, tasks: &mut BTreeMap<i32, Task>) {
    let wm = lock(&shared.watermarks);
    if wm.is_empty() {
        return;
    }
    for (p, t) in tasks.iter_mut() {
        for i in 0..shared.topics.len() {
            if let Some(&(hi, lo, eof)) = wm.get(&(i, *p))
                && hi >= 0
            {
                t.observe_watermarks(i, lo, hi, eof);
            }
        }
    }
}

/// Produces one JSON line under a key.
fn send_json(
    shared: &Shared,
    topic: &str,
    key: &str,
    v: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let line = serde_json::to_vec(v)?;
    kafka::send(
        &shared.producer,
        BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(line.as_slice()),
    )
}

fn send_outputs(shared: &Shared, out: &mut Vec<Out>) -> anyhow::Result<()> {
    let t = &shared.cfg.topics;
    let (mut forwarded, mut dead) = (0, 0);
    let m = &shared.inst.metrics;
    for o in out.drain(..) {
        match o {
            Out::Alert(a) => {
                let sev = a.severity.as_str();
                for d in &a.detectors {
                    m.alerts.with_label_values(&[sev, d.as_str()]).inc();
                }
                if a.seq == 0 {
                    m.incidents_opened.with_label_values(&[sev]).inc();
                }
                if let Some(feed) = &shared.inst.alertmanager {
                    feed.fire(&a);
                }
                send_json(shared, &t.alerts, &a.group, &a)?
            }
            Out::Archive(files) => write_archive(shared, files)?,
            Out::Closed(c) => {
                m.incidents_closed
                    .with_label_values(&[c.severity.as_str()])
                    .inc();
                if let Some(feed) = &shared.inst.alertmanager {
                    feed.resolve(&c);
                }
            }
            Out::Command(c) => {
                m.actions
                    .with_label_values(&[c.action.name(), "sent"])
                    .inc();
                send_json(shared, &t.actions, &c.host, &c)?
            }
            Out::Response(r) => {
                m.actions
                    .with_label_values(&[r.action.as_str(), r.outcome.as_str()])
                    .inc();
                send_json(shared, &t.responses, &r.host, &r)?
            }
            Out::Forward { key, payload } => {
                forwarded += 1;
                kafka::send(
                    &shared.producer,
                    BaseRecord::to(&t.repartition)
                        .key(key.as_bytes())
                        .payload(payload.as_slice()),
                )?;
            }
            Out::Dead {
                input,
                partition,
                offset,
                key,
                payload,
                reject,
            } => {
                dead += 1;
                let source = shared.topics.get(input).map_or("", String::as_str);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "herd.reason",
                        value: Some(reject.reason.as_str()),
                    })
                    .insert(Header {
                        key: "herd.detail",
                        value: Some(reject.detail.as_str()),
                    })
                    .insert(Header {
                        key: "herd.source.topic",
                        value: Some(source),
                    })
                    .insert(Header {
                        key: "herd.source.partition",
                        value: Some(&partition.to_string()),
                    })
                    .insert(Header {
                        key: "herd.source.offset",
                        value: Some(&offset.to_string()),
                    });
                let mut r = BaseRecord::<[u8], [u8]>::to(&t.dlq)
                    .payload(payload.as_slice())
                    .headers(headers);
                if let Some(k) = &key {
                    r = r.key(k.as_slice());
                }
                kafka::send(&shared.producer, r)?;
            }
        }
    }
    if forwarded + dead > 0 {
        let mut s = lock(&shared.summary);
        s.forwarded += forwarded;
        s.dead_lettered += dead;
    }
    Ok(())
}

/// Writes archive files (nothing without an archive) and counts them.
fn write_archive(shared: &Shared, files: Vec<crate::archive::File>) -> anyhow::Result<()> {
    let Some(w) = &shared.archive else {
        return Ok(());
    };
    if files.is_empty() {
        return Ok(());
    }
    let m = &shared.inst.metrics;
    match w.write(files) {
        Ok(n) => {
            m.archive_files.inc_by(n.files);
            m.archive_rows.inc_by(n.rows);
            m.archive_bytes.inc_by(n.bytes);
            Ok(())
        }
        Err(e) => {
            m.archive_failures.inc();
            Err(e.context("writing the archive"))
        }
    }
}

/// Adds per-input outcome counts.
fn add_tally(into: &mut Vec<[u64; 4]>, from: &[[u64; 4]]) {
    if into.len() < from.len() {
        into.resize(from.len(), [0; 4]);
    }
    for (a, b) in into.iter_mut().zip(from) {
        for k in 0..4 {
            a[k] += b[k];
        }
    }
}

/// Adds per-input counts.
fn add_counts(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// [`add_task`] for a task dropped before the end of its input: the records it had
/// taken but not processed yet (buffered, or waiting for their container's identity)
/// are taken again by whoever processes from the last commit, so they are not counted
/// here as taken.
fn add_dropped_task(into: &mut Summary, t: &Task, inputs: usize) {
    add_task(into, t);
    let pending: usize = (0..inputs).map(|i| t.buffered(i)).sum::<usize>() + t.parked();
    into.counters.lines = into.counters.lines.saturating_sub(pending as u64);
}

fn add_task(into: &mut Summary, t: &Task) {
    add_tally(&mut into.tally, t.tally());
    add_counts(&mut into.skipped, t.skipped());
    into.counters.absorb(&t.pipeline().counters);
    into.out_of_order += t.out_of_order();
    into.identity_waits += t.parked_total();
    let _ = into.latency_ms.add(t.latency_ms());
    if let Some((a, b)) = t.busy() {
        into.busy = Some(match into.busy {
            Some((x, y)) => (x.min(a), y.max(b)),
            None => (a, b),
        });
    }
}

/// The counters a worker exports from its tasks' running totals, with their handles
/// resolved once.
struct Exported {
    /// Per input, per outcome.
    input: Vec<[IntCounter; 4]>,
    /// Per input, offsets skipped.
    skipped: Vec<IntCounter>,
}

impl Exported {
    fn new(m: &WorkerMetrics, topics: &[String]) -> Self {
        Self {
            input: topics
                .iter()
                .map(|t| OUTCOMES.map(|o| m.input_records.with_label_values(&[t.as_str(), o])))
                .collect(),
            skipped: topics
                .iter()
                .map(|t| m.offsets_skipped.with_label_values(&[t.as_str()]))
                .collect(),
        }
    }

    /// Brings the series up to date: totals are what the tasks handed off (the
    /// summary) plus what the tasks held now (and those parked in a rebalance) did.
    fn publish(&self, shared: &Shared, tasks: &BTreeMap<i32, Task>) {
        let m = &shared.inst.metrics;
        let parked = lock(&shared.parked);
        let (mut counters, mut tally, mut skipped, mut out_of_order, mut waits) = {
            let s = lock(&shared.summary);
            (
                s.counters.clone(),
                s.tally.clone(),
                s.skipped.clone(),
                s.out_of_order,
                s.identity_waits,
            )
        };
        let (mut phases, mut containers, mut open) = ([0usize; 3], 0usize, 0usize);
        let mut waiting = 0usize;
        for t in tasks.values().chain(parked.values()) {
            counters.absorb(&t.pipeline().counters);
            add_tally(&mut tally, t.tally());
            add_counts(&mut skipped, t.skipped());
            out_of_order += t.out_of_order();
            waits += t.parked_total();
            waiting += t.parked();
        }
        for t in tasks.values() {
            let st = t.pipeline().engine().stats();
            for (a, b) in phases.iter_mut().zip(st.phases) {
                *a += b;
            }
            containers += st.containers;
            open += st.open_incidents;
        }
        drop(parked);
        for (handles, totals) in self.input.iter().zip(&tally) {
            for (h, v) in handles.iter().zip(totals) {
                raise_to(h, *v);
            }
        }
        for (h, v) in self.skipped.iter().zip(&skipped) {
            raise_to(h, *v);
        }
        for (reason, n) in &counters.rejected {
            raise_to(&m.dlq_records.with_label_values(&[reason.as_str()]), *n);
        }
        raise_to(&m.observations, counters.observations);
        raise_to(&m.out_of_order, out_of_order);
        raise_to(&m.identity_waits, waits);
        m.identity_waiting.set(waiting as i64);
        for (phase, n) in ["warmup", "learning", "locked"].iter().zip(phases) {
            m.groups.with_label_values(&[phase]).set(n as i64);
        }
        m.containers.set(containers as i64);
        m.incidents_open.set(open as i64);
        m.partitions.set(tasks.len() as i64);
        m.baseline_age
            .set(lock(&shared.last_checkpoint).elapsed().as_secs_f64());
        if let Some(feed) = &shared.inst.alertmanager {
            let st = feed.stats();
            raise_to(&m.am_sent, st.sent.load(Ordering::Relaxed));
            raise_to(&m.am_failed, st.failed_requests.load(Ordering::Relaxed));
            raise_to(&m.am_dropped, st.dropped.load(Ordering::Relaxed));
            let (firing, resolving) = feed.tracked();
            m.am_pending.set((firing + resolving) as i64);
        }
    }
}
