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
//! - [`worker`]: the consumer loop, rebalance hand-off, commits and shutdown.
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
                .spawn(move || worker::run_with(&cfg, &cfg.kafka, &stop, inst))?
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
