//! `[stream]` and `[kafka]`: the stream service's settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Topic names. Every input topic, the repartition topic and `herd.baselines` must have
/// the same number of partitions: a task is one partition number across all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Input topics, any format on any of them.
    pub inputs: Vec<String>,
    /// Internal topic for input that arrived keyed otherwise than by routing key.
    pub repartition: String,
    /// Alert lines, key = peer group.
    pub alerts: String,
    /// Undecodable input: the original payload with the reason in headers.
    pub dlq: String,
    /// Compacted group checkpoints, key = peer group.
    pub baselines: String,
    /// Commands for the agents, key = host.
    pub actions: String,
    /// Outcomes of commands and refusals, key = host.
    pub responses: String,
    /// Retrained baselines (`herd retrain --publish`), key = routing key
    /// (repository), compacted.
    pub retrained: String,
    /// Analysts' verdicts on incidents (`herd feedback`), key = routing key
    /// (repository); kept as the audit trail of what was taught.
    pub feedback: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            inputs: vec![
                "herd.samples".into(),
                "herd.events".into(),
                "herd.metrics".into(),
            ],
            repartition: "herd.repartition".into(),
            alerts: "herd.alerts".into(),
            dlq: "herd.dlq".into(),
            baselines: "herd.baselines".into(),
            actions: "herd.actions".into(),
            responses: "herd.responses".into(),
            retrained: "herd.retrained".into(),
            feedback: "herd.feedback".into(),
        }
    }
}

/// How a worker consumes, checkpoints and stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Topic names.
    pub topics: Topics,
    /// Consumer group of the workers.
    pub group_id: String,
    /// Partitions of the topics herd creates when they are missing (existing topics are
    /// checked, never changed). Twelve lets a deployment grow to twelve workers.
    pub partitions: i32,
    /// Replication factor of created topics (1 for a single test broker).
    pub replication: i32,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    /// State is checkpointed, and offsets committed, this often. Kafka Streams commits
    /// every 30 s; a crash reprocesses at most this much input.
    pub checkpoint_interval_ms: u64,
    /// Records are merged in event time across a task's topics. An input with nothing
    /// buffered that is caught up but far behind in event time is waited for this long
    /// (Kafka Streams' `max.task.idle.ms`); one with records still on the broker, or
    /// whose position is not known yet, ten times as long. A live stream never waits.
    pub max_task_idle_ms: u64,
    /// Records buffered per input partition before that partition is paused
    /// (backpressure to the consumer; bounds memory).
    pub max_buffered_per_partition: usize,
    /// On SIGTERM/SIGINT: drain, checkpoint and commit within this deadline. It must be
    /// shorter than the session timeout, or the group moves on without the checkpoint.
    pub shutdown_deadline_ms: u64,
    /// Containers whose repository the router remembers, per task.
    pub max_routed_containers: usize,
    /// Largest checkpoint value written as one record of the baselines topic; a
    /// larger one (a task tracking thousands of containers, a group of thousands of
    /// replicas) is written as parts of this size. Keep it well under the smallest
    /// `message.max.bytes` of the producer and `max.message.bytes` of the topic.
    pub checkpoint_record_bytes: usize,
    /// When the broker refuses deliveries after librdkafka's own retries (a broker
    /// just restarted can answer some produce requests with an error), the worker
    /// stops without committing and rejoins its group in place, from the last commit,
    /// up to this many times in a row (a run that commits resets the count; the waits
    /// between grow from 1 s to 30 s). Then `herd run` exits non-zero and its
    /// supervisor's restart takes over. 0: exit at the first refusal.
    pub max_restarts: u32,
    /// A record dated further than this ahead of the worker's clock is dead-lettered
    /// (`invalid_timestamp`) instead of scored: detection's time is the newest event
    /// time seen, and one record from a wrong or forged clock must not move it ahead
    /// (see `task::not_ahead`). Ten minutes, as Loki's and Mimir's
    /// `creation_grace_period`: far beyond the skew of hosts' clocks.
    pub max_future_skew_ms: i64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            topics: Topics::default(),
            group_id: "herd".into(),
            partitions: 12,
            replication: 1,
            create_topics: true,
            checkpoint_interval_ms: 30_000,
            max_task_idle_ms: 2_000,
            max_buffered_per_partition: 20_000,
            shutdown_deadline_ms: 20_000,
            max_routed_containers: 100_000,
            checkpoint_record_bytes: super::parts::MAX_VALUE_BYTES,
            max_restarts: 5,
            max_future_skew_ms: 600_000,
        }
    }
}

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

impl StreamConfig {
    /// Cross-field checks; messages name the field.
    pub fn validate(&self, kafka: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let t = &self.topics;
        anyhow::ensure!(
            !t.inputs.is_empty(),
            "stream.topics.inputs: at least one input topic"
        );
        let mut all: Vec<&String> = t.inputs.iter().collect();
        all.extend([
            &t.repartition,
            &t.alerts,
            &t.dlq,
            &t.baselines,
            &t.retrained,
            &t.feedback,
            &t.actions,
            &t.responses,
        ]);
        for name in &all {
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 249
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "stream.topics: {name:?} is not a legal Kafka topic name"
            );
        }
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        anyhow::ensure!(
            dedup.len() == all.len(),
            "stream.topics: every topic must be distinct (an input cannot also be the \
             alert, dead-letter, repartition, baselines, retrained, feedback, actions or \
             responses topic)"
        );
        anyhow::ensure!(
            !self.group_id.is_empty(),
            "stream.group_id: must not be empty"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.partitions),
            "stream.partitions: 1 to 10000"
        );
        anyhow::ensure!(self.replication >= 1, "stream.replication: at least 1");
        anyhow::ensure!(
            self.checkpoint_interval_ms >= 100,
            "stream.checkpoint_interval_ms: at least 100"
        );
        anyhow::ensure!(
            self.max_buffered_per_partition >= 1,
            "stream.max_buffered_per_partition: at least 1"
        );
        anyhow::ensure!(
            self.max_future_skew_ms >= 0,
            "stream.max_future_skew_ms: at least 0"
        );
        anyhow::ensure!(
            self.checkpoint_record_bytes >= 1024,
            "stream.checkpoint_record_bytes: at least 1024"
        );
        if let Some(m) = kafka
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            anyhow::ensure!(
                self.checkpoint_record_bytes <= m / 2,
                "stream.checkpoint_record_bytes ({}) must be at most half of \
                 kafka.\"message.max.bytes\" ({m}), or checkpoints cannot be delivered",
                self.checkpoint_record_bytes
            );
        }
        let session = match kafka.get("session.timeout.ms") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("kafka.\"session.timeout.ms\": not a number: {v}"))?,
            None => DEFAULT_SESSION_TIMEOUT_MS,
        };
        anyhow::ensure!(
            self.shutdown_deadline_ms < session,
            "stream.shutdown_deadline_ms ({}) must be shorter than kafka.\"session.timeout.ms\" \
             ({session}): the group would reassign the partitions before the checkpoint",
            self.shutdown_deadline_ms
        );
        for key in ["enable.auto.commit", "enable.auto.offset.store"] {
            anyhow::ensure!(
                kafka.get(key).is_none_or(|v| v == "false"),
                "kafka.\"{key}\": herd commits offsets itself, after the effects of the \
                 input are durable; it cannot be true"
            );
        }
        anyhow::ensure!(
            kafka
                .get("bootstrap.servers")
                .is_some_and(|v| !v.trim().is_empty()),
            "kafka.\"bootstrap.servers\": required (in the file, HERD_KAFKA__BOOTSTRAP_SERVERS, \
             or --brokers)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> BTreeMap<String, String> {
        BTreeMap::from([("bootstrap.servers".to_owned(), "127.0.0.1:9092".to_owned())])
    }

    #[test]
    fn defaults_are_valid() {
        StreamConfig::default()
            .validate(&kafka())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = StreamConfig::default();
        c.topics.alerts = "herd.samples".into();
        let e = format!(
            "{:#}",
            c.validate(&kafka()).err().unwrap_or_else(|| panic!())
        );
        assert!(e.contains("stream.topics"), "{e}");
        let c = StreamConfig::default();
        let mut k = kafka();
        k.insert("session.timeout.ms".into(), "10000".into());
        let e = format!("{:#}", c.validate(&k).err().unwrap_or_else(|| panic!()));
        assert!(e.contains("stream.shutdown_deadline_ms"), "{e}");
        k.insert("session.timeout.ms".into(), "60000".into());
        k.insert("enable.auto.commit".into(), "true".into());
        let e = format!("{:#}", c.validate(&k).err().unwrap_or_else(|| panic!()));
        assert!(e.contains("enable.auto.commit"), "{e}");
        let e = format!(
            "{:#}",
            c.validate(&BTreeMap::new())
                .err()
                .unwrap_or_else(|| panic!())
        );
        assert!(e.contains("bootstrap.servers"), "{e}");
    }
}
