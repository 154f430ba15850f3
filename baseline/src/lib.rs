//! herd-baseline: what each peer group normally does, learned from all its replicas.
//!
//! A peer group is the set of containers running one image (digest by default). Its
//! [`GroupBaseline`] holds, per numeric feature, a [`FeatureBaseline`] (raw values,
//! deviation from live peers, step sizes: each a decaying [`TailSketch`] whose tails are
//! calibrated probabilities), and an [`ItemCatalog`] of categorical behaviour with the
//! distinct replicas that showed each item. Baselines move from warm-up through learning
//! to locked ([`Phase`]), are inherited by the next digest of the same repository on a
//! rollout, and are snapshotted and restored through a versioned serde format
//! ([`snapshot`]). Analysts' verdicts on incidents (`herd feedback`) are held with the
//! baseline they teach, with their audit trail ([`verdicts`]).
//!
//! What it must not do: I/O of any kind, or read a clock. Every method takes event time
//! as an argument, so the stream service, `herd replay` and the batch job share it and
//! tests can feed it recorded input.

pub mod categorical;
pub mod group;
pub mod numeric;
pub mod retrained;
pub mod sketch;
pub mod snapshot;
pub mod structure;
pub mod verdicts;

use serde::{Deserialize, Serialize};

pub use categorical::{ItemCatalog, ItemKind, ItemStats, Prior, normalize_item, replica_hash};
pub use group::{GroupBaseline, Phase};
pub use numeric::FeatureBaseline;
pub use sketch::{Summary, TailSketch, Tails};
pub use structure::{Structure, StructureScore};
pub use verdicts::{Verdict, Verdicts};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A snapshot could not be encoded or decoded.
    #[error("snapshot encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// A snapshot's format version is not one this build reads.
    #[error("snapshot format {found} is not supported (this build reads {supported})")]
    UnsupportedFormat {
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A snapshot that decodes but does not hold together (dimensions that disagree,
    /// numbers that are not finite).
    #[error("invalid snapshot: {0}")]
    Invalid(&'static str),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How baselines learn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// No numeric scoring before a group has this much history: an hour covers dozens of
    /// samples per replica at the agent's 10 s interval and every periodic job shorter
    /// than that (health checks, scrapes).
    pub warmup_ms: i64,
    /// After this much history a group is locked: items never seen are novel. One day
    /// covers the daily load cycle and daily jobs.
    pub learning_period_ms: i64,
    /// Half-life of numeric history: three days follow a drifting workload while a
    /// weekly job still leaves a trace.
    pub half_life_ms: i64,
    /// Most numeric features per group (a producer cannot grow a group without bound).
    pub max_features: usize,
    /// Most categorical items per group; the least recently seen goes first.
    pub max_items: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            warmup_ms: 3_600_000,
            learning_period_ms: 86_400_000,
            half_life_ms: 3 * 86_400_000,
            max_features: 64,
            max_items: 4096,
        }
    }
}
