//! A stream task: one partition number across every input topic (and the repartition
//! topic), with the state of the peer groups routed to it.
//!
//! A task decodes what it is offered, forwards what belongs to another task (re-keying
//! through the repartition topic), and processes the rest through the same
//! [`Pipeline`] `herd replay` uses, merged in event time across its input partitions so
//! that a `start` event is seen before the raw stats it identifies, whichever topic each
//! came on. It does no I/O: the worker hands it records and sends what it returns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use herd_detect::{Alert, DetectConfig};
use herd_ingest::{Limits, NormalizerConfig, Record, Reject, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use std::sync::Arc;

use herd_respond::PolicyFile;

use super::parts::Parts;
use super::respond::{Publish, RespondConfig, Responder};
use crate::pipeline::Pipeline;

/// An input that is caught up but whose newest record is this far behind (in event
/// time) the record about to be processed is waited for, briefly: agents on different
/// hosts flush within seconds of each other, so a larger gap means a backlog.
const MAX_SKEW_MS: i64 = 10_000;

/// A raw stats sample names no image: its container is identified by its `start`
/// event, which comes on another topic and can arrive after it (the events partition
/// lagging the samples partition, a backlog). Such a sample waits, parked, until the
/// event is processed, or until the records that could identify it (everything but raw
/// stats samples) have moved this far past it in event time: then its identity is not
/// coming, and it is dead-lettered as `unknown_container`.
const PARK_GRACE_MS: i64 = 60_000;
/// When the other inputs are quiet (caught up, nothing buffered), a sample is not
/// parked for longer than this much of the stream's event time. While they still hold
/// records (a lagging events partition in a catch-up, whose samples race ahead in event
/// time), it waits for them instead: its start event may be among them. "Caught up" is
/// what the statistics last said, and a stalled fetch leaves them stale while a
/// replay's event time runs minutes a second: so the sample also waits at least as
/// long by the clock as the drain waits for an input known to be behind (ten idle
/// periods). At the live edge five minutes of event time are five by the clock anyway.
const PARK_MAX_MS: i64 = 300_000;
/// Most samples parked in one task; beyond, the oldest is dead-lettered (a flood of
/// samples of containers nobody started must not grow memory).
const MAX_PARKED: usize = 4096;
/// Capacity an input's buffer keeps however little it holds (see [`shed_slack`]).
const BUF_KEEP: usize = 1024;

/// Gives back most of a buffer's capacity once it holds under a quarter of it. A burst
/// (the pause of a checkpoint, a catch-up) fills a buffer up to
/// `max_buffered_per_partition`; without this its peak capacity would stay allocated
/// for the task's life, each new peak a step up in the worker's memory. Shrunk to twice
/// what it holds, it can double its contents before it grows again: no churn.
fn shed_slack<T>(q: &mut VecDeque<T>) {
    if q.capacity() > BUF_KEEP && q.len() < q.capacity() / 4 {
        q.shrink_to((q.len() * 2).max(BUF_KEEP));
    }
}

/// A histogram of milliseconds, 1 ms to an hour, two significant digits.
pub fn new_latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 2)
        .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

/// Format of the task record in `herd.baselines`.
const TASK_FORMAT: u32 = 1;

/// Key of a task's own record in `herd.baselines`. `~` cannot start an image reference,
/// so it cannot collide with a group key.
pub fn task_key(partition: i32) -> String {
    format!("~task/{partition}")
}

/// What the worker must do with the outcome of a record.
#[derive(Debug)]
pub enum Out {
    /// Produce an alert line (key = its group).
    Alert(Box<Alert>),
    /// Produce the original record to the dead-letter topic.
    Dead {
        /// Index of the input the record came from.
        input: usize,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its key.
        key: Option<Vec<u8>>,
        /// The original bytes.
        payload: Vec<u8>,
        /// Why.
        reject: Reject,
    },
    /// Produce a command to the actions topic (key = host).
    Command(Box<herd_respond::Command>),
    /// Produce a response (a refusal) to the responses topic (key = host).
    Response(Box<herd_respond::Response>),
    /// An incident closed (for sinks that keep incidents open: Alertmanager).
    Closed(herd_detect::Closed),
    /// Write these files to the archive (a task's buffer reached `max_file_rows`).
    Archive(Vec<crate::archive::File>),
    /// Produce the original record to the repartition topic under its routing key.
    Forward {
        /// Routing key.
        key: String,
        /// The original bytes.
        payload: Vec<u8>,
    },
}

#[derive(Debug)]
struct Msg {
    ts: i64,
    /// The record's Kafka timestamp (ms), for the ingest→scored latency.
    created_ms: Option<i64>,
    offset: i64,
    key: Option<Vec<u8>>,
    rec: Record,
    /// Kept for the dead-letter topic: normalisation can still reject the record.
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Input {
    buf: VecDeque<Msg>,
    /// Offset after the last record offered (consumed, whether buffered or not).
    consumed_next: Option<i64>,
    /// Where the input started in this task: its committed offset (`None`: where the
    /// reset policy put it).
    start: Option<i64>,
    /// The partition's high watermark as last known (-1: unknown). While the offset
    /// consumed is below it, the broker holds records this input has not delivered yet.
    high: i64,
    /// Its low watermark as last known: where a group without a committed offset
    /// starts (`auto.offset.reset = earliest`).
    low: i64,
    /// Where librdkafka last signalled the end of the partition (-1: never), from the
    /// high watermark of a fetch response.
    eof: i64,
    /// Event time of the newest record offered on this input.
    last_ts: Option<i64>,
    /// When the buffer last became empty.
    empty_since: Option<Instant>,
}

impl Input {
    /// Caught up: librdkafka reached the end of the partition, everything up to there
    /// was delivered, and no later record is known.
    ///
    /// An end before where the input started is not this task's: the partition came
    /// back after another worker read on (workers added and removed), and the
    /// statistics are from when this worker held it before (the worker's own, or
    /// librdkafka's first report after the assignment, which keeps the high watermark
    /// of its last fetch until it fetches again). Taken as current, they made the input
    /// look caught up before its first fetch, and the merge waited one idle period for
    /// it instead of ten: under load, the other inputs' records went ahead of its
    /// records, out of event-time order.
    fn caught_up(&self) -> bool {
        let pos = self.consumed_next.unwrap_or(self.low);
        self.eof >= 0
            && self.start.is_none_or(|s| self.eof >= s)
            && pos >= self.eof
            && self.high <= self.eof
    }
}

/// The task record: everything of a task's state that is not per group.
#[derive(Serialize)]
struct TaskOut<'a> {
    format: u32,
    normalizer: &'a RawValue,
    router: &'a Router,
    groups: &'a BTreeSet<String>,
}

#[derive(Deserialize)]
struct TaskIn<'a> {
    format: u32,
    #[serde(borrow)]
    normalizer: &'a RawValue,
    router: Router,
    groups: BTreeSet<String>,
}

/// One task. See the module documentation.
#[derive(Debug)]
pub struct Task {
    partition: i32,
    pipeline: Pipeline,
    router: Router,
    inputs: Vec<Input>,
    /// Index of the repartition topic among the inputs (its records are never
    /// forwarded again).
    repartition: usize,
    /// Groups with a record in `herd.baselines` (deleted ones get a tombstone).
    checkpointed: BTreeSet<String>,
    /// The engine's change mark at the last checkpoint: groups changed since then are
    /// written again.
    checkpoint_mark: u64,
    /// Values written as several records, and the parts left to tombstone.
    parts: Parts,
    alerts: Vec<Alert>,
    /// Event time of the newest record processed.
    last_ts: i64,
    /// Records processed after a newer one (an input was idle past the wait, or its
    /// producer was late).
    out_of_order: u64,
    /// Milliseconds from each record's Kafka timestamp to the end of its scoring.
    latency_ms: hdrhistogram::Histogram<u64>,
    /// When the first record was offered and the last one processed (busy span).
    busy: Option<(Instant, Instant)>,
    /// The response loop, when policies are configured.
    responder: Option<Responder>,
    published: Vec<Publish>,
    /// Per input: records by outcome, in the order of [`OUTCOMES`].
    tally: Vec<[u64; 4]>,
    /// The worker's latency histogram, when it exports one.
    latency: Option<prometheus::Histogram>,
    /// Rows for the archive, and the size at which they are written; `None`: no
    /// archive.
    archive: Option<(crate::archive::Buffer, usize)>,
    /// See [`TaskConfig::retrained_input`].
    retrained_input: Option<usize>,
    /// See [`TaskConfig::feedback_input`].
    feedback_input: Option<usize>,
    /// Largest record accepted on the retrained input.
    max_record_bytes: usize,
    /// See [`TaskConfig::max_future_skew_ms`].
    max_future_skew_ms: i64,
    /// The worker's clock as of the last drain (the worker drains after every poll),
    /// against which a record offered is judged ahead ([`not_ahead`]): one clock read
    /// a drain, not one a record.
    clock_ms: i64,
    /// Raw stats samples waiting for their container's identity (input, record), in
    /// the order they were processed; see [`PARK_GRACE_MS`].
    parked: VecDeque<(usize, Msg, Instant)>,
    /// Event time of the newest processed record that can identify a container
    /// (anything but a raw stats sample).
    identity_ts: i64,
    /// Samples parked so far.
    parked_total: u64,
    /// Per input: offsets after where it started or last delivered that no record was
    /// delivered for (see [`Task::skipped`]).
    skipped: Vec<u64>,
}

/// What became of an input record: scored (it gave observations), filtered (well
/// formed, nothing to score: duplicates, late records, filtered formats),
/// dead-lettered, or forwarded to the repartition topic.
pub const OUTCOMES: [&str; 4] = ["scored", "filtered", "dead_lettered", "forwarded"];
const SCORED: usize = 0;
const FILTERED: usize = 1;
const DEAD: usize = 2;
const FORWARDED: usize = 3;

/// A task's checkpoint: records for `herd.baselines`, the archive files of everything
/// processed since the last one, and the positions they cover.
#[derive(Debug)]
pub struct Checkpoint {
    /// Archive files to write before the positions are committed.
    pub archive: Vec<crate::archive::File>,
    /// Key → value (`None`: tombstone).
    pub records: Vec<(String, Option<Vec<u8>>)>,
    /// Per input: the offset to commit (everything before it is reflected in the
    /// records above or in outputs already handed to the worker).
    pub positions: Vec<Option<i64>>,
}

/// Settings a task needs.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Decoder limits.
    pub limits: Limits,
    /// Normaliser settings.
    pub normalizer: NormalizerConfig,
    /// Detection settings.
    pub detect: DetectConfig,
    /// Number of inputs (input topics plus the repartition topic, which is last).
    pub inputs: usize,
    /// Router memory.
    pub max_routed_containers: usize,
    /// How long to wait for an idle input before merging without it.
    pub max_idle: Duration,
    /// Response settings and the policies in force, when policies are configured.
    pub respond: Option<(RespondConfig, Arc<PolicyFile>)>,
    /// Where each record's Kafka-timestamp-to-scored latency also goes (`/metrics`).
    pub latency: Option<prometheus::Histogram>,
    /// Archive the observations, in files of at most this many rows.
    pub archive_rows: Option<usize>,
    /// Index of the retrained-baselines topic among the inputs: its records are
    /// adopted by the engine as they come, not merged in event time.
    pub retrained_input: Option<usize>,
    /// Index of the feedback topic among the inputs (`herd feedback`): its records are
    /// applied as they come, like retrained baselines.
    pub feedback_input: Option<usize>,
    /// Largest checkpoint value written as one record; larger ones are written as
    /// parts ([`Parts`]). `stream.checkpoint_record_bytes`.
    pub max_checkpoint_value: usize,
    /// A record dated further than this ahead of the worker's clock is dead-lettered
    /// (`invalid_timestamp`) instead of scored. `stream.max_future_skew_ms`.
    pub max_future_skew_ms: i64,
}

impl Task {
    /// A task with no state.
    pub fn new(partition: i32, cfg: &TaskConfig) -> anyhow::Result<Self> {
        Ok(Self {
            partition,
            pipeline: Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())?,
            router: Router::new(cfg.max_routed_containers),
            inputs: (0..cfg.inputs)
                .map(|_| Input {
                    buf: VecDeque::new(),
                    consumed_next: None,
                    start: None,
                    high: -1,
                    low: -1,
                    eof: -1,
                    last_ts: None,
                    empty_since: None,
                })
                .collect(),
            repartition: cfg.inputs.saturating_sub(1),
            checkpointed: BTreeSet::new(),
            checkpoint_mark: 0,
            parts: Parts::new(cfg.max_checkpoint_value),
            alerts: Vec::new(),
            last_ts: i64::MIN,
            out_of_order: 0,
            latency_ms: new_latency_histogram(),
            busy: None,
            responder: cfg
                .respond
                .as_ref()
                .map(|(c, p)| Responder::new(c.clone(), (**p).clone())),
            published: Vec::new(),
            tally: vec![[0; 4]; cfg.inputs],
            latency: cfg.latency.clone(),
            archive: cfg
                .archive_rows
                .map(|n| (crate::archive::Buffer::default(), n)),
            retrained_input: cfg.retrained_input,
            feedback_input: cfg.feedback_input,
            max_record_bytes: cfg.limits.max_line_bytes,
            max_future_skew_ms: cfg.max_future_skew_ms,
            clock_ms: wall_ms(),
            parked: VecDeque::new(),
            identity_ts: i64::MIN,
            parked_total: 0,
            skipped: vec![0; cfg.inputs],
        })
    }

    /// A task restored from the last value of every key of its partition of
    /// `herd.baselines`.
    pub fn restore(
        partition: i32,
        cfg: &TaskConfig,
        records: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> anyhow::Result<Self> {
        let mut t = Self::new(partition, cfg)?;
        let own = task_key(partition);
        let (parts, values) = Parts::assemble(cfg.max_checkpoint_value, records)?;
        t.parts = parts;
        for (key, bytes) in values {
            let bytes = &*bytes;
            if key == own {
                let r: TaskIn<'_> = serde_json::from_slice(bytes)?;
                anyhow::ensure!(
                    r.format == TASK_FORMAT,
                    "task record format {} is not supported",
                    r.format
                );
                t.pipeline
                    .restore_normalizer(r.normalizer.get().as_bytes())?;
                t.router = r.router;
                t.checkpointed.extend(r.groups);
            } else if key.starts_with('~') {
                // Another task's record (the partition count changed): not ours.
                continue;
            } else {
                let got = t.pipeline.engine_mut().import_group(bytes)?;
                anyhow::ensure!(
                    got == key,
                    "checkpoint under key {key:?} holds group {got:?}"
                );
                t.checkpointed.insert(got);
            }
        }
        t.checkpoint_mark = t.pipeline.engine().change_mark();
        Ok(t)
    }

    /// Puts a reloaded policy file in force.
    pub fn reload_policies(&mut self, p: &PolicyFile) {
        if let Some(r) = &mut self.responder {
            r.reload(p.clone());
        }
    }

    /// The partition number.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The shared pipeline (counters, engine statistics).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Records processed after a newer one.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Records buffered on an input.
    pub fn buffered(&self, input: usize) -> usize {
        self.inputs.get(input).map_or(0, |i| i.buf.len())
    }

    /// Where an input starts: its committed offset, or where the reset policy puts it.
    pub fn start_at(&mut self, input: usize, start: i64) {
        if let Some(i) = self.inputs.get_mut(input) {
            i.consumed_next.get_or_insert(start);
            i.start.get_or_insert(start);
        }
    }

    /// What librdkafka's statistics say of an input: its watermarks and where it last
    /// reached the end.
    pub fn observe_watermarks(&mut self, input: usize, low: i64, high: i64, eof: i64) {
        if let Some(i) = self.inputs.get_mut(input) {
            i.high = i.high.max(high);
            i.low = i.low.max(low);
            i.eof = i.eof.max(eof);
        }
    }

    /// librdkafka reached the end of this partition of one of the inputs, and said
    /// which partition but not of which topic (`KafkaError::PartitionEOF` carries only
    /// the partition). Every input of it at the live edge (its newest record within
    /// `MAX_SKEW_MS` of the clock, `wall_ms`) that has delivered all the statistics know
    /// of is taken to be at its end now, instead of at the next statistics report (up
    /// to a second later: a second every record of the other inputs waited). An input
    /// catching up (records far behind the clock), or not reported yet, keeps waiting
    /// for its records as before, so a catch-up keeps its event-time order. If the end
    /// was another topic's, a record of a live input that the statistics have not seen
    /// yet is processed a little out of order (counted), as at the live edge anyway.
    pub fn partition_eof(&mut self, wall_ms: i64) {
        for i in &mut self.inputs {
            if let Some(pos) = i.consumed_next
                && i.high >= 0
                && pos >= i.high
                && i.last_ts
                    .is_some_and(|t| (wall_ms - t).abs() <= MAX_SKEW_MS)
            {
                i.eof = i.eof.max(pos);
            }
        }
    }

    /// Offers one consumed record. It is buffered for processing, or its outcome
    /// (dead letter, forward) is appended to `out` at once.
    pub fn offer(
        &mut self,
        input: usize,
        offset: i64,
        created_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: &[u8],
        out: &mut Vec<Out>,
    ) {
        let control = self.is_control(input);
        let Some(inp) = self.inputs.get_mut(input) else {
            return;
        };
        // A record past the next offset expected: the broker no longer holds those in
        // between (or never held a record there). The retrained topic is compacted, so
        // its gaps are the normal case.
        if let Some(next) = inp.consumed_next
            && offset > next
            && Some(input) != self.retrained_input
        {
            let n = (offset - next) as u64;
            self.skipped[input] += n;
            tracing::warn!(
                partition = self.partition,
                input,
                from = next,
                to = offset,
                skipped = n,
                "offsets skipped: the broker no longer holds them (deleted by retention \
                 before they were read?)"
            );
        }
        inp.consumed_next = Some(offset + 1);
        if control {
            if Some(input) == self.retrained_input {
                self.adopt_retrained(input, offset, key, payload, out);
            } else {
                self.apply_feedback(input, offset, key, payload, out);
            }
            return;
        }
        if self.busy.is_none() {
            let now = Instant::now();
            self.busy = Some((now, now));
        }
        let rec = match self.pipeline.decode(payload).and_then(|r| {
            not_ahead(r, self.clock_ms, self.max_future_skew_ms)
                .inspect_err(|rej| self.pipeline.counters.reject(rej))
        }) {
            Ok(r) => r,
            Err(reject) => {
                out.push(self.dead_letter(input, offset, key, payload, reject));
                return;
            }
        };
        if input != self.repartition
            && let Some(route) = self.router.route(&rec)
            && key != Some(route.as_bytes())
        {
            self.tally[input][FORWARDED] += 1;
            out.push(Out::Forward {
                key: route.to_owned(),
                payload: payload.to_vec(),
            });
            return;
        }
        let inp = &mut self.inputs[input];
        let ts = rec.ts_ms().unwrap_or(i64::MIN);
        if ts != i64::MIN {
            inp.last_ts = Some(inp.last_ts.map_or(ts, |l| l.max(ts)));
        }
        inp.buf.push_back(Msg {
            ts,
            created_ms,
            offset,
            key: key.map(<[u8]>::to_vec),
            rec,
            payload: payload.to_vec(),
        });
        inp.empty_since = None;
    }

    /// A record of the retrained-baselines topic: the engine adopts it now (a baseline
    /// is not an observation; nothing waits for it in event time). Unreadable ones go to
    /// the dead-letter topic like any input.
    fn adopt_retrained(
        &mut self,
        input: usize,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        out: &mut Vec<Out>,
    ) {
        use herd_ingest::{Reject, RejectReason};
        let parsed = if payload.len() > self.max_record_bytes {
            Err(Reject::new(
                RejectReason::TooLarge,
                format!("{} bytes", payload.len()),
            ))
        } else {
            herd_baseline::retrained::Retrained::parse(payload).map_err(|e| match e {
                herd_baseline::Error::UnsupportedFormat { .. } => {
                    Reject::new(RejectReason::UnknownFormat, e.to_string())
                }
                e => Reject::new(RejectReason::InvalidJson, e.to_string()),
            })
        };
        let outcome = match parsed {
            Ok(r) => {
                let group = r.group.clone();
                let adopted = self.pipeline.engine_mut().adopt_retrained(r);
                tracing::info!(partition = self.partition, %group, ?adopted, "retrained baseline");
                match adopted {
                    Some(herd_baseline::retrained::Adoption::Stale) => FILTERED,
                    _ => SCORED,
                }
            }
            Err(reject) => {
                out.push(self.dead_letter(input, offset, key, payload, reject));
                return;
            }
        };
        self.tally[input][outcome] += 1;
    }

    /// Whether `input` carries control records (retrained baselines, feedback), applied
    /// as they come rather than merged in event time: nothing waits for them.
    fn is_control(&self, input: usize) -> bool {
        Some(input) == self.retrained_input || Some(input) == self.feedback_input
    }

    /// A record of the feedback topic: the engine applies the verdict now (an analyst
    /// gives it after the incident, so the stream is already past it). One that cannot
    /// be read, or that is about a group this task does not hold, goes to the
    /// dead-letter topic with the reason.
    fn apply_feedback(
        &mut self,
        input: usize,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        out: &mut Vec<Out>,
    ) {
        use herd_ingest::{Reject, RejectReason};
        let applied = herd_detect::Feedback::parse(payload)
            .map_err(|e| Reject::new(RejectReason::InvalidValue, e.to_string()))
            .and_then(|fb| match self.pipeline.apply_feedback(&fb) {
                Ok(herd_detect::FeedbackOutcome::UnknownGroup) => Err(Reject::new(
                    RejectReason::UnknownGroup,
                    format!(
                        "feedback on incident {}: group {} ({}) is not held by this task",
                        fb.incident_id,
                        fb.group,
                        fb.routing_key()
                    ),
                )),
                Ok(herd_detect::FeedbackOutcome::Repeated) => Ok(FILTERED),
                Ok(herd_detect::FeedbackOutcome::Applied(_)) => Ok(SCORED),
                Err(e) => Err(Reject::new(RejectReason::InvalidValue, e.to_string())),
            });
        match applied {
            Ok(outcome) => self.tally[input][outcome] += 1,
            Err(reject) => out.push(self.dead_letter(input, offset, key, payload, reject)),
        }
    }

    /// A record rejected as it was offered (or given up on while parked): counted, and
    /// its original bytes for the dead-letter topic.
    fn dead_letter(
        &mut self,
        input: usize,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        reject: herd_ingest::Reject,
    ) -> Out {
        self.tally[input][DEAD] += 1;
        Out::Dead {
            input,
            partition: self.partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            reject,
        }
    }

    /// Processes buffered records in event-time order across the inputs, as far as it
    /// can without waiting for an input that may still deliver an earlier record
    /// (`force` processes everything: shutdown). Returns the number processed.
    pub fn drain(
        &mut self,
        now: Instant,
        max_idle: Duration,
        force: bool,
        out: &mut Vec<Out>,
    ) -> usize {
        let mut n = 0;
        // One clock read per call: latency is kept in milliseconds, and a call
        // processes what is ready in far less than one. The records offered until the
        // next call are judged against it too ([`not_ahead`]).
        let wall = wall_ms();
        self.clock_ms = wall;
        loop {
            let best = self
                .inputs
                .iter()
                .enumerate()
                .filter_map(|(j, inp)| inp.buf.front().map(|m| (j, m.ts)))
                .min_by_key(|(_, ts)| *ts);
            let Some((j, ts)) = best else { break };
            let mut wait = false;
            let control = [self.retrained_input, self.feedback_input];
            for (_, inp) in self
                .inputs
                .iter_mut()
                .enumerate()
                .filter(|(k, i)| i.buf.is_empty() && !control.contains(&Some(*k)))
            {
                let since = *inp.empty_since.get_or_insert(now);
                let idle = now.duration_since(since);
                let caught_up = inp.caught_up();
                // Records known to be on the broker, or nothing known yet (the first
                // statistics report comes within a second): wait for them, up to ten
                // idle periods (the end may be a transaction marker that never comes).
                // Caught up, but far behind the record to process in event time (a
                // backlog arriving faster than the statistics tell): wait one idle
                // period for it to catch up. In a live stream neither happens, and
                // nothing waits.
                let patience = if !caught_up {
                    max_idle * 10
                } else if inp.last_ts.is_none_or(|last| ts - last > MAX_SKEW_MS) {
                    // (Nothing delivered yet counts as far behind: a broker's
                    // watermarks can say caught up before its first fetch does.)
                    max_idle
                } else {
                    Duration::ZERO
                };
                if !force && idle < patience {
                    wait = true;
                }
            }
            if wait {
                break;
            }
            let Some(m) = self.inputs[j].buf.pop_front() else {
                break;
            };
            if self.inputs[j].buf.is_empty() {
                self.inputs[j].empty_since = Some(now);
            }
            if m.ts < self.last_ts {
                self.out_of_order += 1;
                tracing::debug!(input = j, behind_ms = self.last_ts - m.ts, "out of order");
            }
            self.last_ts = self.last_ts.max(m.ts);
            if !self.pipeline.identifies(&m.rec) {
                self.park(j, m, now, out);
            } else {
                let identifies = !matches!(&m.rec, Record::Stats(_));
                self.process(j, m, wall, out);
                if identifies && !self.parked.is_empty() {
                    self.release_parked(wall, out);
                }
            }
            self.expire_parked(now, max_idle, out);
            n += 1;
        }
        self.expire_parked(now, max_idle, out);
        for inp in &mut self.inputs {
            shed_slack(&mut inp.buf);
        }
        shed_slack(&mut self.parked);
        if n > 0
            && let Some((_, last)) = &mut self.busy
        {
            *last = Instant::now();
        }
        n
    }

    /// Normalises and scores one record in order, and hands on what it produced.
    fn process(&mut self, j: usize, m: Msg, wall: i64, out: &mut Vec<Out>) {
        if m.ts != i64::MIN && !matches!(&m.rec, Record::Stats(_)) {
            self.identity_ts = self.identity_ts.max(m.ts);
        }
        self.alerts.clear();
        let processed = self.pipeline.process(m.rec, &mut self.alerts);
        self.tally[j][match &processed {
            Err(_) => DEAD,
            Ok(()) if self.pipeline.observations().is_empty() => FILTERED,
            Ok(()) => SCORED,
        }] += 1;
        if let Err(reject) = processed {
            out.push(Out::Dead {
                input: j,
                partition: self.partition,
                offset: m.offset,
                key: m.key,
                payload: m.payload,
                reject,
            });
        }
        if let Some((buf, max)) = &mut self.archive {
            let group_by = &self.pipeline.engine().config().group_by;
            for o in self.pipeline.observations() {
                buf.push(&group_by.key(&o.container), o, (j, m.offset));
            }
            if buf.rows() >= *max {
                out.push(Out::Archive(take_archive(buf, self.partition)));
            }
        }
        if let Some(r) = &mut self.responder {
            for o in self.pipeline.observations() {
                r.record(o);
            }
            for a in &mut self.alerts {
                let live = self.pipeline.engine().live_replicas(&a.group);
                r.on_alert(a, &live, &mut self.published);
            }
            r.tick(self.last_ts, &mut self.published);
        }
        out.extend(self.alerts.drain(..).map(|a| Out::Alert(Box::new(a))));
        out.extend(self.pipeline.engine_mut().take_closed().map(Out::Closed));
        out.extend(self.published.drain(..).map(|p| match p {
            Publish::Command(c) => Out::Command(c),
            Publish::Response(r) => Out::Response(r),
        }));
        if let Some(created) = m.created_ms {
            let ms = wall.saturating_sub(created).max(1);
            let _ = self.latency_ms.record(ms as u64);
            if let Some(h) = &self.latency {
                h.observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Holds back a raw stats sample whose container is not identified yet (see
    /// [`PARK_GRACE_MS`]); the oldest parked one is dead-lettered when they are too many.
    fn park(&mut self, j: usize, m: Msg, now: Instant, out: &mut Vec<Out>) {
        if self.parked.len() >= MAX_PARKED
            && let Some((i, old, _)) = self.parked.pop_front()
        {
            self.reject_parked(i, old, "parked samples full", out);
        }
        self.parked.push_back((j, m, now));
        self.parked_total += 1;
    }

    /// Processes the parked samples whose container is now identified, in their order.
    fn release_parked(&mut self, wall: i64, out: &mut Vec<Out>) {
        let parked = std::mem::take(&mut self.parked);
        for (j, m, since) in parked {
            if self.pipeline.identifies(&m.rec) {
                self.process(j, m, wall, out);
            } else {
                self.parked.push_back((j, m, since));
            }
        }
    }

    /// Dead-letters the parked samples whose identity is not coming: the events have
    /// moved [`PARK_GRACE_MS`] past them, or the stream [`PARK_MAX_MS`] while the other
    /// inputs are quiet and they have waited ten idle periods (a quiet events topic must
    /// not hold a stream's commits back for long; a lagging one is waited for), or every
    /// input is caught up and empty and they have waited `max_idle` (nothing known on
    /// the broker can identify them: a worker that joined after their container
    /// started).
    fn expire_parked(&mut self, now: Instant, max_idle: Duration, out: &mut Vec<Out>) {
        if self.parked.is_empty() {
            return;
        }
        let quiet: Vec<bool> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(k, i)| self.is_control(k) || (i.buf.is_empty() && i.caught_up()))
            .collect();
        let drained = quiet.iter().all(|q| *q);
        // Whether every input but the sample's own is quiet.
        let others_quiet = |j: usize| quiet.iter().enumerate().all(|(k, q)| k == j || *q);
        while let Some((j, m, since)) = self.parked.front() {
            let waited = now.duration_since(*since);
            let gone = m.ts.saturating_add(PARK_GRACE_MS) < self.identity_ts
                || (m.ts.saturating_add(PARK_MAX_MS) < self.last_ts
                    && others_quiet(*j)
                    && waited >= max_idle * 10)
                || (drained && waited >= max_idle);
            if !gone {
                break;
            }
            if let Some((j, m, _)) = self.parked.pop_front() {
                self.reject_parked(j, m, "no start event followed", out);
            }
        }
    }

    /// A parked sample whose identity did not come: the dead-letter topic, with the
    /// reason the normaliser gives (`unknown_container`), counted like any rejection.
    fn reject_parked(&mut self, j: usize, m: Msg, why: &str, out: &mut Vec<Out>) {
        if self.pipeline.identifies(&m.rec) {
            return self.process(j, m, wall_ms(), out);
        }
        let mut none = Vec::new();
        let reject = match self.pipeline.process(m.rec, &mut none) {
            Err(r) => herd_ingest::Reject::new(r.reason, format!("{} ({why})", r.detail)),
            Ok(()) => herd_ingest::Reject::new(herd_ingest::RejectReason::UnknownContainer, why),
        };
        let dead = self.dead_letter(j, m.offset, m.key.as_deref(), &m.payload, reject);
        out.push(dead);
    }

    /// Per input: records by outcome, in the order of [`OUTCOMES`].
    pub fn tally(&self) -> &[[u64; 4]] {
        &self.tally
    }

    /// Per input: offsets skipped, past where the input started (its committed
    /// offset) or its last record, with no record delivered for them. On a topic that
    /// is neither compacted nor transactional these are records lost before herd read
    /// them: retention deleted them while the group lagged (or a reset went back past
    /// the log's start).
    pub fn skipped(&self) -> &[u64] {
        &self.skipped
    }

    /// Latency from Kafka timestamp to scored, in milliseconds.
    pub fn latency_ms(&self) -> &hdrhistogram::Histogram<u64> {
        &self.latency_ms
    }

    /// When the first record was offered and the last one processed.
    pub fn busy(&self) -> Option<(Instant, Instant)> {
        self.busy
    }

    /// Forgets the records buffered but not processed: the consumer lost its partitions
    /// and will fetch again from the committed positions ([`Task::positions`]).
    pub fn rewind(&mut self) {
        let positions = self.positions();
        for (inp, at) in self.inputs.iter_mut().zip(positions) {
            inp.consumed_next = at;
            inp.buf.clear();
            inp.empty_since = None;
        }
        self.parked.clear();
    }

    /// The positions to commit: per input, the first record still buffered or parked,
    /// else the offset after the last one consumed. (A parked sample holds its input's
    /// position back: after a restart it is fetched again, and the samples processed
    /// after it are recognised as duplicates.)
    pub fn positions(&self) -> Vec<Option<i64>> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(j, i)| {
                let parked = self
                    .parked
                    .iter()
                    .filter(|(k, _, _)| *k == j)
                    .map(|(_, m, _)| m.offset)
                    .min();
                match (i.buf.front().map(|m| m.offset), parked) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b).or(i.consumed_next),
                }
            })
            .collect()
    }

    /// Raw stats samples waiting for their container's `start` event.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Raw stats samples that have waited for their container's `start` event.
    pub fn parked_total(&self) -> u64 {
        self.parked_total
    }

    /// The checkpoint: every group changed since the last one, tombstones for groups that
    /// are gone, and the task record; with the positions it covers.
    pub fn checkpoint(&mut self) -> anyhow::Result<Checkpoint> {
        let engine = self.pipeline.engine();
        let mut records = Vec::new();
        let live: BTreeSet<String> = engine.group_keys().map(str::to_owned).collect();
        for key in engine.groups_changed_since(self.checkpoint_mark) {
            if let Some(bytes) = engine.export_group(key)? {
                records.push((key.to_owned(), Some(bytes)));
            }
        }
        for gone in self.checkpointed.difference(&live) {
            records.push((gone.clone(), None));
        }
        let normalizer =
            RawValue::from_string(String::from_utf8(self.pipeline.normalizer_state()?)?)?;
        let task = serde_json::to_vec(&TaskOut {
            format: TASK_FORMAT,
            normalizer: &normalizer,
            router: &self.router,
            groups: &live,
        })?;
        records.push((task_key(self.partition), Some(task)));
        self.checkpoint_mark = engine.change_mark();
        self.checkpointed = live;
        let archive = match &mut self.archive {
            Some((buf, _)) => buf.take_files(self.partition)?,
            None => Vec::new(),
        };
        Ok(Checkpoint {
            archive,
            records: self.parts.frame(records),
            positions: self.positions(),
        })
    }

    /// The last checkpoint's records were delivered and its positions committed: the
    /// parts it replaced can go (see [`Parts`]).
    pub fn committed(&mut self) {
        self.parts.committed();
    }
}

/// `rec`, unless it is dated more than `skew_ms` ahead of `wall_ms`, the worker's clock.
///
/// The engine's time is the newest event time it has seen, and its housekeeping
/// (forgetting what went away, closing quiet incidents) follows that time: one record
/// from a wrong or forged clock years ahead would hold its time there, and stop the
/// housekeeping until the stream reached that date, through every checkpoint and
/// restart; parked samples would be given up at once, their identity's time run out.
/// A live stream's records are dated at most seconds ahead of the clock (hosts' clocks
/// differ by that), a replay's or a catch-up's behind it, so the clock is the reference,
/// as a time-series database's ingester takes it (Loki's and Mimir's ten-minute
/// `creation_grace_period`).
fn not_ahead(rec: Record, wall_ms: i64, skew_ms: i64) -> Result<Record, Reject> {
    let Some(ts) = rec.ts_ms() else {
        return Ok(rec);
    };
    if ts > wall_ms.saturating_add(skew_ms) {
        return Err(Reject::new(
            herd_ingest::RejectReason::InvalidTimestamp,
            format!(
                "{} is more than {} s ahead of this worker's clock ({})",
                herd_ingest::time::format_ms(ts),
                skew_ms / 1000,
                herd_ingest::time::format_ms(wall_ms)
            ),
        ));
    }
    Ok(rec)
}

/// Encodes a full archive buffer. Encoding in-memory columns cannot fail short of a bug;
/// if it does, the rows stay out of the archive and the error is logged (detection goes
/// on).
fn take_archive(buf: &mut crate::archive::Buffer, partition: i32) -> Vec<crate::archive::File> {
    buf.take_files(partition).unwrap_or_else(|e| {
        tracing::error!(error = %e, partition, "encoding archive rows failed");
        Vec::new()
    })
}

/// Wall-clock milliseconds since the epoch: for latency against Kafka timestamps, and
/// to refuse records dated ahead of it ([`not_ahead`]). Detection never reads a clock.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_buffer_gives_back_its_peak_but_keeps_room_to_work() {
        let mut q: VecDeque<[u8; 200]> = VecDeque::new();
        q.extend(std::iter::repeat_n([0u8; 200], 20_000));
        let peak = q.capacity();
        // A quarter full or more: kept whole (no churn as a buffer rises and falls).
        q.truncate(peak / 4);
        shed_slack(&mut q);
        assert_eq!(q.capacity(), peak);
        // Drained below: back to twice what it holds.
        q.truncate(3_000);
        shed_slack(&mut q);
        assert!(
            (6_000..peak / 2).contains(&q.capacity()),
            "{}",
            q.capacity()
        );
        assert_eq!(q.len(), 3_000);
        // Empty: the room every buffer keeps, no less.
        q.clear();
        shed_slack(&mut q);
        assert!(
            (BUF_KEEP..2 * BUF_KEEP).contains(&q.capacity()),
            "{}",
            q.capacity()
        );
        // A small buffer is left alone.
        let mut small: VecDeque<u8> = VecDeque::with_capacity(BUF_KEEP);
        let cap = small.capacity();
        shed_slack(&mut small);
        assert_eq!(small.capacity(), cap);
    }
}
