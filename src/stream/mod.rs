//! The stream service: `herd run`, one member of a Kafka consumer group.
//!
//! - [`config`]: `[stream]` settings (topics, checkpoint interval, backpressure, shutdown);
//! - [`kafka`]: client configuration (every `kafka.*` property passes through), the
//!   producer with delivery accounting, topic creation and the co-partitioning check,
//!   reading checkpoints back;
//! - [`task`]: one partition number across the input topics: routing, event-time merge,
//!   the shared [`Pipeline`](crate::pipeline::Pipeline), checkpoints;
//! - [`parts`]: checkpoint values too large for one record, written as parts;
//! - [`respond`]: per task, the observation ring, the policy decision on every alert and
//!   the `attach` addenda (commands to `herd.actions`, refusals to `herd.responses`);
//! - [`worker`]: the consumer loop, rebalance hand-off, commits and shutdown;
//!   [`supervise`] rejoins the group in place when the broker refused deliveries.
//!
//! Records are routed by image repository ([`herd_ingest::route`]); input keyed
//! otherwise is re-keyed through the repartition topic. State is checkpointed per group
//! to the compacted `herd.baselines` (key = group), in the partition of the task that
//! owns it, and restored from there by the next owner.

pub mod config;
pub mod kafka;
pub mod parts;
pub mod respond;
pub mod task;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use config::{StreamConfig, Topics};
pub use worker::{Instruments, Summary};

use crate::config::HerdConfig;
use crate::metrics::Health;

/// What `/metrics` and the probes of `herd run` serve.
struct WorkerOps(Instruments);

impl crate::http::Ops for WorkerOps {
    fn metrics(&self) -> String {
        crate::metrics::encode(&self.0.metrics.registry)
    }

    fn health(&self) -> &Health {
        &self.0.health
    }
}

/// `herd run`: prepares the topics, serves `/metrics` and the probes, posts incidents
/// to Alertmanager when configured, runs a worker on a dedicated thread, and stops it
/// on SIGTERM or SIGINT. Returns the worker's summary.
pub fn serve(cfg: HerdConfig) -> anyhow::Result<Summary> {
    cfg.stream.validate(&cfg.kafka)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut inst = Instruments::detached()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Bind before anything slow: a taken port fails at start-up.
        if let Some(addr) = cfg.http.addr()? {
            let listener = crate::http::bind(addr).await?;
            let ops = Arc::new(WorkerOps(inst.clone()));
            tokio::spawn(crate::http::serve(listener, ops, stop_rx.clone()));
        }
        let mut notifier = None;
        if !cfg.alertmanager.urls.is_empty() {
            let feed = herd_respond::sinks::alertmanager::Feed::new(cfg.alertmanager.clone());
            inst.alertmanager = Some(feed.clone());
            notifier = Some(tokio::spawn(herd_respond::sinks::alertmanager::run(
                feed,
                stop_rx.clone(),
            )));
        }
        inst.health.beat();
        kafka::prepare_topics(&cfg.kafka, &cfg.stream).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let stop = Arc::clone(&stop);
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name("herd-worker".into())
                .spawn(move || supervise(&cfg, &stop, inst))?
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let finished = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break false,
                _ = term.recv() => break false,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    if worker.is_finished() {
                        break true;
                    }
                }
            }
        };
        if !finished {
            tracing::info!("stopping: draining, checkpointing and committing");
        }
        stop.store(true, Ordering::Relaxed);
        let summary = tokio::task::spawn_blocking(move || worker.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the worker thread panicked"));
        // The last closures and updates go out before the process ends (one request's
        // time at most).
        let _ = stop_tx.send(true);
        if let Some(n) = notifier {
            let _ = n.await;
        }
        summary?
    })
}

/// Longest wait between two in-place restarts.
const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` is set. When the broker refused deliveries after
/// librdkafka's own retries (a broker just restarted can answer some produce requests
/// with an error), effects of processed input are lost: the worker goes back to the last
/// commit in place, keeping its group membership (its tasks restored from the last
/// checkpoint, its consumer rewound), up to `stream.max_restarts` times in a row; a
/// checkpoint committed resets the count. Beyond that the run stops without committing
/// ([`worker::Refused`]) and is started again here, as a supervisor would restart the
/// process: a new consumer and producer join the group and process the input from the
/// last commit. Again at most `stream.max_restarts` in a row (a run that committed
/// resets the count), with waits from 1 s doubling to 30 s; then the error is returned.
/// Any other error is returned at once. The summary adds up every run.
pub fn supervise(
    cfg: &HerdConfig,
    shutdown: &AtomicBool,
    inst: Instruments,
) -> anyhow::Result<Summary> {
    let mut done = Summary::default();
    let mut in_a_row = 0u32;
    let mut wait = Duration::from_secs(1);
    loop {
        let refused = match worker::run_with(cfg, &cfg.kafka, shutdown, inst.clone()) {
            Ok(s) => {
                done.absorb(&s);
                return Ok(done);
            }
            Err(e) => e.downcast::<worker::Refused>()?,
        };
        done.absorb(&refused.summary);
        if refused.summary.checkpoints > 0 {
            in_a_row = 0;
            wait = Duration::from_secs(1);
        }
        if in_a_row >= cfg.stream.max_restarts {
            let restarts = done.restarts;
            return Err(anyhow::Error::new(refused).context(format!(
                "the worker stopped after {restarts} restarts in place \
                 (stream.max_restarts = {})",
                cfg.stream.max_restarts
            )));
        }
        in_a_row += 1;
        done.restarts += 1;
        inst.metrics.restarts.inc();
        inst.health.set("assigned", false);
        tracing::warn!(
            failed = refused.failed,
            records = refused.summary.counters.lines,
            checkpoints = refused.summary.checkpoints,
            restart = in_a_row,
            of = cfg.stream.max_restarts,
            wait_ms = wait.as_millis() as u64,
            "the broker refused deliveries; rejoining the group from the last commit"
        );
        let until = Instant::now() + wait;
        while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            inst.health.beat();
            std::thread::sleep(Duration::from_millis(100));
        }
        if shutdown.load(Ordering::Relaxed) {
            // Stopped before the rejoin: the next worker processes from the last commit.
            return Err(anyhow::Error::new(refused).context("stopped before rejoining the group"));
        }
        wait = (wait * 2).min(MAX_RESTART_WAIT);
    }
}
