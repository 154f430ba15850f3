//! herd's own Prometheus series, declared in one place (`docs/metrics.md` lists them),
//! and the liveness and readiness of a process.
//!
//! Handles are resolved once; the hot loop never formats a label. Label sets are
//! bounded: topic names and partitions come from the configuration, reasons, formats,
//! severities, detectors, action kinds and outcomes are closed sets. No container id,
//! container name or image is ever a label.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Kafka timestamp → scored, in seconds: from a millisecond (a live stream) to a minute
/// (a backlog being worked down).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A registry that also remembers the family names registered (a vector with no label
/// set yet is absent from `gather()`, but is still a series herd exports).
#[derive(Debug, Default)]
struct Reg {
    r: Registry,
    names: Vec<String>,
}

impl Reg {
    fn add<C: Collector + Clone + 'static>(&mut self, c: C) -> prometheus::Result<C> {
        self.names
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        self.r.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

fn counter(r: &mut Reg, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    r.add(IntCounter::new(name, help)?)
}

fn counter_vec(
    r: &mut Reg,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    r.add(IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(r: &mut Reg, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    r.add(IntGauge::new(name, help)?)
}

fn gauge_vec(
    r: &mut Reg,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    r.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// `herd_heap_allocated_bytes` and `herd_heap_resident_bytes`: the allocator's account
/// of the heap, read at each scrape. Beside the process's resident set they tell what
/// herd holds (allocated), what the allocator keeps for it (resident, less allocated;
/// an upper bound: pages it wrote and has not returned), and what is neither
/// (librdkafka's buffers, which are C's `malloc`, stacks, code).
#[derive(Clone)]
struct Heap {
    allocated: IntGauge,
    resident: IntGauge,
}

impl Heap {
    fn register(r: &mut Reg) -> prometheus::Result<()> {
        r.add(Self {
            allocated: IntGauge::new(
                "herd_heap_allocated_bytes",
                "Bytes of heap herd has allocated and not freed (jemalloc's stats.allocated).",
            )?,
            resident: IntGauge::new(
                "herd_heap_resident_bytes",
                "Bytes of the allocator's pages it has written and not returned, its metadata included (jemalloc's stats.resident).",
            )?,
        })?;
        Ok(())
    }

    /// The allocator's figures, refreshed (they are cached until its epoch advances).
    fn read() -> Option<(u64, u64)> {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        Some((
            stats::allocated::read().ok()? as u64,
            stats::resident::read().ok()? as u64,
        ))
    }
}

impl Collector for Heap {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.allocated.desc();
        d.extend(self.resident.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some((allocated, resident)) = Self::read() else {
            return Vec::new();
        };
        self.allocated
            .set(i64::try_from(allocated).unwrap_or(i64::MAX));
        self.resident
            .set(i64::try_from(resident).unwrap_or(i64::MAX));
        let mut families = self.allocated.collect();
        families.extend(self.resident.collect());
        families
    }
}

/// What every herd process exports: its build, and its heap.
fn process_series(r: &mut Reg, component: &str) -> prometheus::Result<()> {
    Heap::register(r)?;
    let g = gauge_vec(
        r,
        "herd_build_info",
        "Always 1; the version and component of this process.",
        &["version", "component"],
    )?;
    g.with_label_values(&[env!("CARGO_PKG_VERSION"), component])
        .set(1);
    Ok(())
}

/// Raises a counter to a running total kept elsewhere (task counters, a sink's
/// atomics). A total that went down (a task handed off) is ignored until it passes the
/// counter again, so the series never decreases.
pub fn raise_to(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// The Prometheus text of a registry.
pub fn encode(r: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding our own well-formed families into memory cannot fail.
    let _ = TextEncoder::new().encode(&r.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// The series of `herd run`.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Where they are registered.
    pub registry: Registry,
    /// Every family name registered (for documentation checks).
    pub names: Vec<String>,
    /// `herd_input_records_total{topic,outcome}`: outcome is `scored`, `filtered`,
    /// `dead_lettered` or `forwarded` (re-keyed through the repartition topic).
    pub input_records: IntCounterVec,
    /// `herd_input_offsets_skipped_total{topic}`.
    pub offsets_skipped: IntCounterVec,
    /// `herd_dlq_records_total{reason}`.
    pub dlq_records: IntCounterVec,
    /// `herd_consumer_lag_records{topic,partition}`.
    pub consumer_lag: IntGaugeVec,
    /// `herd_consumer_prefetch_bytes`.
    pub prefetch_bytes: IntGauge,
    /// `herd_processing_latency_seconds`.
    pub latency: Histogram,
    /// `herd_observations_total`.
    pub observations: IntCounter,
    /// `herd_out_of_order_records_total`.
    pub out_of_order: IntCounter,
    /// `herd_identity_waits_total`.
    pub identity_waits: IntCounter,
    /// `herd_identity_waiting_samples`.
    pub identity_waiting: IntGauge,
    /// `herd_groups{phase}`.
    pub groups: IntGaugeVec,
    /// `herd_containers`.
    pub containers: IntGauge,
    /// `herd_incidents_open`.
    pub incidents_open: IntGauge,
    /// `herd_baseline_age_seconds`.
    pub baseline_age: Gauge,
    /// `herd_alerts_total{severity,detector}`.
    pub alerts: IntCounterVec,
    /// `herd_incidents_opened_total{severity}`.
    pub incidents_opened: IntCounterVec,
    /// `herd_incidents_closed_total{severity}`.
    pub incidents_closed: IntCounterVec,
    /// `herd_actions_total{kind,outcome}`.
    pub actions: IntCounterVec,
    /// `herd_checkpoints_total`.
    pub checkpoints: IntCounter,
    /// `herd_checkpoint_failures_total`.
    pub checkpoint_failures: IntCounter,
    /// `herd_worker_restarts_total`.
    pub restarts: IntCounter,
    /// `herd_partitions_assigned`.
    pub partitions: IntGauge,
    /// `herd_archive_files_total`.
    pub archive_files: IntCounter,
    /// `herd_archive_rows_total`.
    pub archive_rows: IntCounter,
    /// `herd_archive_bytes_total`.
    pub archive_bytes: IntCounter,
    /// `herd_archive_write_failures_total`.
    pub archive_failures: IntCounter,
    /// `herd_alertmanager_alerts_sent_total`.
    pub am_sent: IntCounter,
    /// `herd_alertmanager_request_failures_total`.
    pub am_failed: IntCounter,
    /// `herd_alertmanager_alerts_dropped_total`.
    pub am_dropped: IntCounter,
    /// `herd_alertmanager_alerts_pending`.
    pub am_pending: IntGauge,
}

impl WorkerMetrics {
    /// Registers every series in a fresh registry. Series of closed label sets start at
    /// zero, so that `increase()` sees their first event.
    pub fn new() -> prometheus::Result<Self> {
        let m = Self::register()?;
        for sev in herd_detect::Severity::ALL {
            m.incidents_opened.with_label_values(&[sev.as_str()]);
            m.incidents_closed.with_label_values(&[sev.as_str()]);
            for d in herd_detect::Detector::ALL {
                m.alerts.with_label_values(&[sev.as_str(), d.as_str()]);
            }
        }
        Ok(m)
    }

    fn register() -> prometheus::Result<Self> {
        let mut r = Reg::default();
        process_series(&mut r, "worker")?;
        let latency = r.add(Histogram::with_opts(
            HistogramOpts::new(
                "herd_processing_latency_seconds",
                "From a record's Kafka timestamp to the end of its scoring.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?)?;
        let baseline_age = r.add(Gauge::new(
            "herd_baseline_age_seconds",
            "Seconds since the baselines this worker holds were last persisted to the \
             baselines topic (a checkpoint); grows without bound when checkpoints fail.",
        )?)?;
        Ok(Self {
            input_records: counter_vec(
                &mut r,
                "herd_input_records_total",
                "Input records by topic and outcome (scored, filtered, dead_lettered, forwarded).",
                &["topic", "outcome"],
            )?,
            offsets_skipped: counter_vec(
                &mut r,
                "herd_input_offsets_skipped_total",
                "Input offsets with no record delivered, by topic: records deleted by \
                 retention before herd read them (the group lagged past the topic's \
                 retention), unless the topic is compacted or transactional.",
                &["topic"],
            )?,
            dlq_records: counter_vec(
                &mut r,
                "herd_dlq_records_total",
                "Records sent to the dead-letter topic, by reason.",
                &["reason"],
            )?,
            consumer_lag: gauge_vec(
                &mut r,
                "herd_consumer_lag_records",
                "Records between the committed position and the high watermark, per assigned partition (librdkafka statistics).",
                &["topic", "partition"],
            )?,
            prefetch_bytes: gauge(
                &mut r,
                "herd_consumer_prefetch_bytes",
                "Bytes of input in the consumer's queue, fetched ahead of the tasks (librdkafka statistics; bounded by queued.max.messages.kbytes).",
            )?,
            latency,
            observations: counter(&mut r, "herd_observations_total", "Observations scored.")?,
            out_of_order: counter(
                &mut r,
                "herd_out_of_order_records_total",
                "Records processed after a newer one of the same task (an input lagged past the event-time merge's wait).",
            )?,
            identity_waits: counter(
                &mut r,
                "herd_identity_waits_total",
                "Raw stats samples that arrived before their container's start event and waited for it.",
            )?,
            identity_waiting: gauge(
                &mut r,
                "herd_identity_waiting_samples",
                "Raw stats samples waiting now for their container's start event.",
            )?,
            groups: gauge_vec(
                &mut r,
                "herd_groups",
                "Peer groups tracked, by baseline phase (warmup, learning, locked).",
                &["phase"],
            )?,
            containers: gauge(&mut r, "herd_containers", "Containers (replicas) tracked.")?,
            incidents_open: gauge(&mut r, "herd_incidents_open", "Incidents open.")?,
            baseline_age,
            alerts: counter_vec(
                &mut r,
                "herd_alerts_total",
                "Alert lines (openings and updates), by severity and by each detector named.",
                &["severity", "detector"],
            )?,
            incidents_opened: counter_vec(
                &mut r,
                "herd_incidents_opened_total",
                "Incidents opened, by severity at opening.",
                &["severity"],
            )?,
            incidents_closed: counter_vec(
                &mut r,
                "herd_incidents_closed_total",
                "Incidents closed, by last severity.",
                &["severity"],
            )?,
            actions: counter_vec(
                &mut r,
                "herd_actions_total",
                "Response actions by kind and outcome (worker: sent or refused).",
                &["kind", "outcome"],
            )?,
            checkpoints: counter(&mut r, "herd_checkpoints_total", "Checkpoints committed.")?,
            checkpoint_failures: counter(
                &mut r,
                "herd_checkpoint_failures_total",
                "Checkpoints that failed (nothing was committed).",
            )?,
            restarts: counter(
                &mut r,
                "herd_worker_restarts_total",
                "Times the worker rejoined its group in place, from the last commit, after \
                 the broker refused deliveries.",
            )?,
            partitions: gauge(
                &mut r,
                "herd_partitions_assigned",
                "Partitions (tasks) this worker owns.",
            )?,
            archive_files: counter(
                &mut r,
                "herd_archive_files_total",
                "Parquet files written to the observation archive.",
            )?,
            archive_rows: counter(
                &mut r,
                "herd_archive_rows_total",
                "Rows written to the observation archive.",
            )?,
            archive_bytes: counter(
                &mut r,
                "herd_archive_bytes_total",
                "Bytes written to the observation archive.",
            )?,
            archive_failures: counter(
                &mut r,
                "herd_archive_write_failures_total",
                "Archive writes that failed (the worker stops; nothing after the last commit is lost).",
            )?,
            am_sent: counter(
                &mut r,
                "herd_alertmanager_alerts_sent_total",
                "Alerts (firing or resolved) Alertmanager accepted.",
            )?,
            am_failed: counter(
                &mut r,
                "herd_alertmanager_request_failures_total",
                "Posts to Alertmanager that failed (each is retried).",
            )?,
            am_dropped: counter(
                &mut r,
                "herd_alertmanager_alerts_dropped_total",
                "Incidents no longer tracked for Alertmanager because too many were.",
            )?,
            am_pending: gauge(
                &mut r,
                "herd_alertmanager_alerts_pending",
                "Incidents tracked for Alertmanager (firing plus awaiting resolution).",
            )?,
            names: r.names,
            registry: r.r,
        })
    }
}

/// The series of `herd agent`.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Where they are registered.
    pub registry: Registry,
    /// Every family name registered (for documentation checks).
    pub names: Vec<String>,
    /// `herd_agent_samples_total`.
    pub samples: IntCounter,
    /// `herd_agent_sampling_errors_total{reason}`.
    pub sampling_errors: IntCounterVec,
    /// `herd_agent_events_total`.
    pub events: IntCounter,
    /// `herd_agent_inventories_total{kind}`.
    pub inventories: IntCounterVec,
    /// `herd_agent_inventory_errors_total{reason}`.
    pub inventory_errors: IntCounterVec,
    /// `herd_agent_containers`.
    pub containers: IntGauge,
    /// `herd_agent_publish_failures_total{topic}`.
    pub publish_failures: IntCounterVec,
    /// `herd_agent_publish_pending`.
    pub publish_pending: IntGauge,
    /// `herd_actions_total{kind,outcome}`.
    pub actions: IntCounterVec,
    /// `herd_evidence_bytes_total`.
    pub evidence_bytes: IntCounter,
    /// `herd_dlq_records_total{reason}`.
    pub dlq_records: IntCounterVec,
}

impl AgentMetrics {
    /// Registers every series in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let mut r = Reg::default();
        process_series(&mut r, "agent")?;
        Ok(Self {
            samples: counter(
                &mut r,
                "herd_agent_samples_total",
                "Stats samples taken and handed to the producer.",
            )?,
            sampling_errors: counter_vec(
                &mut r,
                "herd_agent_sampling_errors_total",
                "Stats requests that gave no sample, by reason.",
                &["reason"],
            )?,
            inventories: counter_vec(
                &mut r,
                "herd_agent_inventories_total",
                "Inventories taken and handed to the producer, by kind (fs_changes, processes).",
                &["kind"],
            )?,
            inventory_errors: counter_vec(
                &mut r,
                "herd_agent_inventory_errors_total",
                "Inventory requests that failed, by reason.",
                &["reason"],
            )?,
            events: counter(
                &mut r,
                "herd_agent_events_total",
                "Docker events published.",
            )?,
            containers: gauge(
                &mut r,
                "herd_agent_containers",
                "Running containers this agent samples.",
            )?,
            publish_failures: counter_vec(
                &mut r,
                "herd_agent_publish_failures_total",
                "Records the producer could not deliver, by topic.",
                &["topic"],
            )?,
            publish_pending: gauge(
                &mut r,
                "herd_agent_publish_pending",
                "Records handed to the producer that the broker has not acknowledged yet.",
            )?,
            actions: counter_vec(
                &mut r,
                "herd_actions_total",
                "Response actions by kind and outcome (agent: ok, dry_run, duplicate, refused, failed).",
                &["kind", "outcome"],
            )?,
            evidence_bytes: counter(
                &mut r,
                "herd_evidence_bytes_total",
                "Bytes of evidence written to the evidence store.",
            )?,
            dlq_records: counter_vec(
                &mut r,
                "herd_dlq_records_total",
                "Unreadable commands sent to the dead-letter topic, by reason.",
                &["reason"],
            )?,
            names: r.names,
            registry: r.r,
        })
    }
}

/// Conditions of readiness, each set by the part of the process that knows it.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the main loop's last turn.
    heartbeat_ms: AtomicI64,
    /// How long the loop may go without a turn before the process is not live.
    stall_ms: i64,
    conditions: Vec<(&'static str, AtomicBool)>,
}

impl Health {
    /// A health record with these readiness conditions, all false.
    pub fn new(conditions: &[&'static str], stall_ms: i64) -> Self {
        Self {
            started: Instant::now(),
            heartbeat_ms: AtomicI64::new(0),
            stall_ms,
            conditions: conditions
                .iter()
                .map(|c| (*c, AtomicBool::new(false)))
                .collect(),
        }
    }

    /// Sets one condition (unknown names are a programming error and ignored).
    pub fn set(&self, condition: &str, value: bool) {
        if let Some((_, v)) = self.conditions.iter().find(|(n, _)| *n == condition) {
            v.store(value, Ordering::Relaxed);
        }
    }

    /// The main loop made a turn.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    /// Live: the main loop turned within the stall limit.
    pub fn live(&self) -> Result<(), String> {
        let since =
            self.started.elapsed().as_millis() as i64 - self.heartbeat_ms.load(Ordering::Relaxed);
        if since > self.stall_ms {
            return Err(format!("main loop stalled for {since} ms"));
        }
        Ok(())
    }

    /// Ready: live and every condition holds; the error names the ones that do not.
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        let missing: Vec<&str> = self
            .conditions
            .iter()
            .filter(|(_, v)| !v.load(Ordering::Relaxed))
            .map(|(n, _)| *n)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not ready: {}", missing.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_herd_and_encodes() {
        let w = WorkerMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        w.input_records
            .with_label_values(&["herd.samples", "scored"])
            .inc();
        w.latency.observe(0.004);
        let text = encode(&w.registry);
        assert!(
            text.contains("herd_input_records_total{outcome=\"scored\",topic=\"herd.samples\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herd_build_info{component=\"worker\""),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("herd_"), "{line}");
        }
        let a = AgentMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        a.samples.inc();
        assert!(encode(&a.registry).contains("herd_agent_samples_total 1"));
    }

    /// The value of an unlabelled series in Prometheus text.
    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    #[test]
    fn the_heap_gauges_count_what_the_process_holds() {
        let w = WorkerMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        // Written, so resident. (Other tests of this binary allocate and free
        // meanwhile: only what this one holds is certain.)
        let held = vec![1u8; 64 << 20];
        let text = encode(&w.registry);
        let mib64 = f64::from(64u32 << 20);
        let allocated = value(&text, "herd_heap_allocated_bytes");
        assert!(allocated >= mib64, "{allocated}");
        assert!(value(&text, "herd_heap_resident_bytes") >= mib64, "{text}");
        assert_eq!(held.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
        drop(held);
        let agent = AgentMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        assert!(value(&encode(&agent.registry), "herd_heap_resident_bytes") > 0.0);
    }

    #[test]
    fn raising_to_a_total_never_decreases() {
        let c = IntCounter::new("x", "x").unwrap_or_else(|e| panic!("{e}"));
        raise_to(&c, 5);
        raise_to(&c, 3);
        assert_eq!(c.get(), 5);
        raise_to(&c, 9);
        assert_eq!(c.get(), 9);
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let h = Health::new(&["assigned", "broker"], 60_000);
        h.beat();
        assert_eq!(h.ready(), Err("not ready: assigned, broker".into()));
        h.set("assigned", true);
        h.set("broker", true);
        assert_eq!(h.ready(), Ok(()));
        assert_eq!(h.live(), Ok(()));
        let stalled = Health::new(&[], -1);
        assert!(stalled.live().is_err() && stalled.ready().is_err());
    }
}
