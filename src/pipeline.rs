//! decode → normalise → detect: the path every command shares, with its counters.

use std::collections::BTreeMap;

use herd_detect::{Alert, DetectConfig, Engine};
use herd_ingest::normalize::Dropped;
use herd_ingest::{Decoder, Limits, Normalizer, NormalizerConfig, Observation, Record, Reject};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What happened to the input, for the summary and, later, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Lines read.
    pub lines: u64,
    /// Lines decoded, by format.
    pub decoded: BTreeMap<String, u64>,
    /// Lines rejected (dead-lettered), by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Well-formed lines with nothing to score, by reason.
    pub filtered: BTreeMap<String, u64>,
    /// Observations scored.
    pub observations: u64,
    /// Alert lines emitted.
    pub alerts: u64,
    /// Feedback records (`herd feedback`) applied, by outcome.
    pub feedback: BTreeMap<String, u64>,
}

impl Counters {
    /// Records a rejected line.
    pub fn reject(&mut self, r: &Reject) {
        *self
            .rejected
            .entry(r.reason.as_str().to_owned())
            .or_default() += 1;
    }

    fn count_feedback(&mut self, outcome: herd_detect::FeedbackOutcome) {
        *self
            .feedback
            .entry(outcome.as_str().to_owned())
            .or_default() += 1;
    }

    fn filter(&mut self, reason: &str) {
        *self.filtered.entry(reason.to_owned()).or_default() += 1;
    }

    /// Adds another pipeline's counters (a worker sums its tasks').
    pub fn absorb(&mut self, other: &Counters) {
        self.lines += other.lines;
        self.observations += other.observations;
        self.alerts += other.alerts;
        for (mine, theirs) in [
            (&mut self.decoded, &other.decoded),
            (&mut self.rejected, &other.rejected),
            (&mut self.filtered, &other.filtered),
            (&mut self.feedback, &other.feedback),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// Total rejected lines.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Container identities a pipeline's decoder remembers: more than a worker tracks, so
/// that the cache does not empty itself in steady state (an identity is shared with the
/// registry; the cache adds a table slot each).
const IDENTITIES: usize = 1 << 18;

/// The shared pipeline. Serialisable state: normaliser and engine.
#[derive(Debug)]
pub struct Pipeline {
    decoder: Decoder,
    /// Container identities the decoder shares between lines (not state: a cache).
    identities: herd_ingest::Identities,
    normalizer: Normalizer,
    engine: Engine,
    obs: Vec<Observation>,
    /// Only observations in this event-time range are scored; the others are
    /// normalised (they teach who is who) and dropped. Its start: `herd replay
    /// --from`, a worker starting with empty baselines there; its end: `herd backtest
    /// --until`, the end of the range judged.
    scored: std::ops::Range<i64>,
    /// Retrained snapshots waiting for event time to reach the end of their window,
    /// latest first (`herd replay --retrained`).
    scheduled: Vec<crate::retrain::Retrained>,
    /// Feedback records waiting for event time to reach them, latest first
    /// (`herd replay --feedback`).
    feedback: Vec<(i64, herd_detect::Feedback)>,
    /// Counters of everything that passed through.
    pub counters: Counters,
}

#[derive(Serialize)]
struct SnapOut<'a> {
    format: u32,
    normalizer: &'a Normalizer,
    /// The engine's own snapshot, embedded as it is.
    engine: &'a RawValue,
}

#[derive(Deserialize)]
struct SnapIn<'a> {
    format: u32,
    normalizer: Normalizer,
    #[serde(borrow)]
    engine: &'a RawValue,
}

impl Pipeline {
    /// A fresh pipeline.
    pub fn new(
        limits: Limits,
        norm: NormalizerConfig,
        detect: DetectConfig,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            decoder: Decoder::new(limits),
            identities: herd_ingest::Identities::new(IDENTITIES),
            normalizer: Normalizer::new(norm),
            engine: Engine::new(detect)?,
            obs: Vec::new(),
            scored: i64::MIN..i64::MAX,
            scheduled: Vec::new(),
            feedback: Vec::new(),
            counters: Counters::default(),
        })
    }

    /// Scores only observations at or after `ts_ms` from now on; earlier ones are
    /// normalised and dropped (counted as filtered `before_from`).
    pub fn score_from(&mut self, ts_ms: i64) {
        self.scored.start = ts_ms;
    }

    /// Scores only observations before `ts_ms` from now on; later ones are normalised
    /// and dropped (counted as filtered `after_until`).
    pub fn score_until(&mut self, ts_ms: i64) {
        self.scored.end = ts_ms;
    }

    /// Adopts retrained snapshot `r` when event time reaches the end of its window
    /// (`until_ms`), as a worker adopts a nightly retrain when it is published: a
    /// replay never scores a record with a baseline trained on that record's future.
    pub fn schedule_retrained(&mut self, r: crate::retrain::Retrained) {
        self.scheduled.push(r);
        self.scheduled
            .sort_by_key(|r| std::cmp::Reverse(r.until_ms));
    }

    /// Applies feedback record `fb` when event time reaches its time, as a worker
    /// applies it when it arrives (`herd replay --feedback`): recorded data judges a
    /// verdict on what came after it.
    pub fn schedule_feedback(&mut self, fb: herd_detect::Feedback) -> anyhow::Result<()> {
        let at = fb.ts_ms()?;
        self.feedback.push((at, fb));
        self.feedback.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        Ok(())
    }

    /// Applies a feedback record now (the stream service, as it arrives); counted by
    /// outcome.
    pub fn apply_feedback(
        &mut self,
        fb: &herd_detect::Feedback,
    ) -> anyhow::Result<herd_detect::FeedbackOutcome> {
        let outcome = self.engine.apply_feedback(fb)?;
        self.counters.count_feedback(outcome);
        tracing::info!(
            incident = %fb.incident_id,
            verdict = fb.verdict.as_str(),
            by = %fb.by,
            group = %fb.group,
            outcome = outcome.as_str(),
            "feedback"
        );
        Ok(outcome)
    }

    /// Applies the scheduled feedback records due at `ts` (all of them with
    /// `i64::MAX`: the end of a replay).
    pub fn apply_feedback_due(&mut self, ts: i64) -> anyhow::Result<()> {
        while self.feedback.last().is_some_and(|(t, _)| *t <= ts) {
            if let Some((_, fb)) = self.feedback.pop() {
                self.apply_feedback(&fb)?;
            }
        }
        Ok(())
    }

    /// The decoder (for callers that decode before ordering).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Whether the normaliser can join `rec` to a container now (see
    /// [`herd_ingest::Normalizer::identifies`]).
    pub fn identifies(&self, rec: &Record) -> bool {
        self.normalizer.identifies(rec)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Decodes one line; rejections are counted. Used before event-time ordering.
    pub fn decode(&mut self, line: &[u8]) -> Result<Record, Reject> {
        self.counters.lines += 1;
        let r = self.decoder.decode_with(line, &mut self.identities);
        match &r {
            Ok(Record::Filtered { reason, .. }) => self.counters.filter(reason),
            Ok(rec) => {
                *self
                    .counters
                    .decoded
                    .entry(rec.format().to_owned())
                    .or_default() += 1
            }
            Err(rej) => self.counters.reject(rej),
        }
        r
    }

    /// Normalises and scores one decoded record (in event-time order); alerts are
    /// appended to `alerts`.
    pub fn process(&mut self, rec: Record, alerts: &mut Vec<Alert>) -> Result<(), Reject> {
        self.obs.clear();
        match self.normalizer.normalize(rec, &mut self.obs) {
            Ok(None) => {}
            Ok(Some(d)) => self.counters.filter(match d {
                Dropped::Duplicate => "duplicate",
                Dropped::Late => "late",
                Dropped::ExecDuplicate => "exec_duplicate",
            }),
            Err(rej) => {
                self.counters.reject(&rej);
                return Err(rej);
            }
        }
        if let Some(ts) = self.obs.first().map(|o| o.ts_ms) {
            while self.scheduled.last().is_some_and(|r| r.until_ms <= ts) {
                if let Some(r) = self.scheduled.pop() {
                    self.engine.adopt_retrained(r);
                }
            }
            // Records were checked when scheduled: applying one does not fail.
            if let Err(e) = self.apply_feedback_due(ts) {
                tracing::warn!(error = %e, "feedback record not applied");
            }
        }
        if self.obs.iter().any(|o| !self.scored.contains(&o.ts_ms)) {
            let early = self
                .obs
                .first()
                .is_some_and(|o| o.ts_ms < self.scored.start);
            self.obs.retain(|o| self.scored.contains(&o.ts_ms));
            if self.obs.is_empty() {
                self.counters
                    .filter(if early { "before_from" } else { "after_until" });
            }
        }
        let before = alerts.len();
        for o in &self.obs {
            self.engine.observe(o, alerts);
        }
        self.counters.observations += self.obs.len() as u64;
        self.counters.alerts += (alerts.len() - before) as u64;
        Ok(())
    }

    /// The observations the last [`Pipeline::process`] scored.
    pub fn observations(&self) -> &[Observation] {
        &self.obs
    }

    /// Serialises normaliser and engine state.
    pub fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        let engine = String::from_utf8(self.engine.snapshot()?)?;
        let engine = RawValue::from_string(engine)?;
        Ok(serde_json::to_vec(&SnapOut {
            format: 1,
            normalizer: &self.normalizer,
            engine: &engine,
        })?)
    }

    /// The engine, for per-group hand-off (export, import, remove).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The normaliser's state (container registry, counter state) alone: the part of a
    /// stream task's checkpoint that is not per group.
    pub fn normalizer_state(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&self.normalizer)?)
    }

    /// Replaces the normaliser's state with one from [`Pipeline::normalizer_state`],
    /// keeping the settings this pipeline was made with: the checkpoint's are those of
    /// the worker that wrote it.
    pub fn restore_normalizer(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let cfg = self.normalizer.config().clone();
        self.normalizer = serde_json::from_slice(bytes)?;
        self.normalizer.reconfigure(cfg);
        Ok(())
    }

    /// Restores a pipeline from [`Pipeline::snapshot`] output.
    pub fn restore(limits: Limits, detect: DetectConfig, bytes: &[u8]) -> anyhow::Result<Self> {
        let s: SnapIn<'_> = serde_json::from_slice(bytes)?;
        anyhow::ensure!(
            s.format == 1,
            "pipeline snapshot format {} is not supported",
            s.format
        );
        let engine = Engine::restore(detect, s.engine.get().as_bytes())?;
        Ok(Self {
            decoder: Decoder::new(limits),
            identities: herd_ingest::Identities::new(IDENTITIES),
            normalizer: s.normalizer,
            engine,
            obs: Vec::new(),
            scored: i64::MIN..i64::MAX,
            scheduled: Vec::new(),
            feedback: Vec::new(),
            counters: Counters::default(),
        })
    }
}
