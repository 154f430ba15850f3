//! herd-detect: scoring, calibration, incidents and alerts.
//!
//! [`Engine::observe`] takes one [`herd_ingest::Observation`] at a time, in event-time
//! order, and returns the alert lines it raises or updates. Per observation it:
//! - finds the peer group ([`herd_ingest::GroupBy`]); a new digest of a known repository
//!   inherits that repository's baseline and re-learns (rollout awareness);
//! - scores each metric ([`engine`]): with three or more live replicas, against its peers
//!   *and* the group's history (the smaller surprise of the two, so a fleet-wide surge or
//!   a bimodal worker switching mode stays quiet); with fewer, against the history, the
//!   usual step size between samples and the usual roughness (single-replica images,
//!   spikes, level shifts, variance changes, a series gone flat); once a minute, the
//!   group as a whole against its history (one feature moving fleet-wide beyond what the
//!   others explain: every replica compromised, not a surge);
//! - judges event items for novelty against the group's catalog with its replica
//!   support (`novelty.rs`), applies event rules (OOM, restart loop, privileged start,
//!   critical Falco rules, `docker exec`);
//! - turns surprises into alerts at the threshold the false-alert budget implies
//!   ([`calibrate`]) and folds them into one incident per container per episode
//!   ([`incident`]) with a one-sentence explanation ([`explain`]);
//! - applies analysts' verdicts on incidents ([`feedback`]): behaviour judged benign is
//!   expected from then on, behaviour judged malicious stays anomalous on every replica.
//!
//! What it must not do: I/O, or read a clock. Time is the observations' event time.

pub mod alert;
pub mod calibrate;
pub mod config;
pub mod engine;
pub mod explain;
pub mod feedback;
mod group;
pub mod incident;
mod novelty;

pub use alert::{
    Alert, Detector, FeatureEvidence, NovelEvidence, PeerEvidence, Severity, StructureEvidence,
};
pub use config::DetectConfig;
pub use engine::{Engine, EngineStats};
pub use feedback::{Feedback, FeedbackOutcome};
pub use incident::Closed;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range; `field` names it as the file spells it.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot could not be encoded or decoded.
    #[error("engine snapshot: {0}")]
    Snapshot(#[from] serde_json::Error),
    /// A snapshot format this build does not read.
    #[error("engine snapshot format {0} is not supported")]
    UnsupportedFormat(u32),
    /// A feedback record that cannot be read or built.
    #[error("feedback: {0}")]
    Feedback(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
