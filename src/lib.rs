//! The `herd` binary's library: command-line interface, configuration, and the wiring
//! between the crates (`herd-ingest` → `herd-baseline` → `herd-detect` → `herd-respond`).
//!
//! - [`pipeline`]: decode → normalise → detect, the one path every command shares;
//! - [`input`]: bounded line reading and event-time ordering of several inputs;
//! - [`replay`]: `herd replay`;
//! - [`backtest`]: `herd backtest`, response policies judged on recorded input;
//! - [`report`]: `herd report`, an evidence bundle as one self-contained HTML page;
//! - [`demo`]: `herd demo`, the stream service on an in-process Kafka with a simulated fleet;
//! - [`archive`]: the Parquet archive of scored observations (for `herd retrain`);
//! - [`retrain`]: `herd retrain`, baselines from the archive with DataFusion SQL;
//! - [`stream`]: `herd run`, the Kafka stream service (and its response loop);
//! - [`agent`]: `herd agent`, the node agent: Docker collector and action executor;
//! - [`drill`]: `herd drill`, a canary that proves detection, response and evidence;
//! - [`metrics`] and [`http`]: the Prometheus series, liveness and readiness, and the
//!   endpoint that serves them (`/metrics`, `/healthz`, `/readyz`);
//! - [`logs`]: log output on one line per event, whatever the input holds;
//! - [`consume`]: `herd consume`, a topic's records as JSON lines;
//! - [`produce`]: `herd produce`, recorded lines into a topic;
//! - [`simulate`]: `herd simulate`, a labelled synthetic fleet in the real formats;
//! - [`evaluate`]: `herd evaluate`, recall/precision/delay of alerts against labels.

/// herd's allocator, for every binary that links this library (the `herd` command, and
/// its tests and benchmarks, so that they measure what runs): jemalloc, for its account
/// of the heap, which `/metrics` exports (`herd_heap_*`): a growth of the resident set
/// can then be told apart as herd's data, what the allocator keeps, or neither
/// (librdkafka's C buffers). Against glibc's malloc it costs less a container and more
/// a group (the A/B in `docs/performance.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod agent;
pub mod archive;
pub mod backtest;
pub mod cli;
pub mod config;
pub mod consume;
pub mod demo;
pub mod drill;
pub mod evaluate;
pub mod feedback;
pub mod http;
pub mod input;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod produce;
pub mod replay;
pub mod report;
pub mod retrain;
pub mod simulate;
pub mod stream;
