//! Detection settings. Every default says where its number comes from.

use herd_baseline::BaselineConfig;
use herd_ingest::GroupBy;
use serde::{Deserialize, Serialize};

/// How detection decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// How baselines learn.
    pub baseline: BaselineConfig,
    /// How containers are put into peer groups.
    pub group_by: GroupBy,
    /// The false-alert budget: alerts per container per day that pure chance may cost.
    /// Thresholds follow from it and each container's own test rate (see `calibrate`).
    /// 0.05 is one chance alert per container every 20 days; a 1,000-container fleet
    /// then spends about 50 a day on chance before incident grouping folds repeats.
    pub false_alerts_per_container_day: f64,
    /// Fewest live replicas (this one included) for a peer comparison; with fewer, the
    /// group's own history is the only reference. Three is the least for which a median
    /// is robust to one misbehaving replica.
    pub min_peers: usize,
    /// A replica's latest value counts for its peers for this long: six agent sampling
    /// intervals (10 s), so one missed sample does not drop a replica.
    pub peer_window_ms: i64,
    /// Peer medians are recomputed at most this often per group and feature; half the
    /// agent's sampling interval keeps them current at a fraction of the cost.
    pub peer_refresh_ms: i64,
    /// A replica unseen for this long is no longer live (not a peer, not counted in
    /// support ratios): twelve sampling intervals.
    pub replica_ttl_ms: i64,
    /// Fewest (decayed) observations a sketch needs before its tail is trusted.
    pub min_samples: f64,
    /// An incident closes after this much event time without an anomaly; anomalies of
    /// the same container within it update the incident instead of opening another.
    pub incident_quiet_ms: i64,
    /// An incident also stays open for this many of the container's own sampling
    /// intervals, so a series sampled every five minutes or every hour is not split
    /// into one incident per sample. Thirty intervals is five minutes at the agent's
    /// 10 s default, less than `incident_quiet_ms`.
    pub incident_quiet_samples: u32,
    /// While learning, an item one replica shows first is suspect only if no sibling
    /// shows it within this window (periodic jobs start a few minutes apart).
    pub corroboration_ms: i64,
    /// Restarts (or starts after a die) of one container within `restart_window_ms` that
    /// make a restart loop.
    pub restart_loop_count: usize,
    /// See `restart_loop_count`: ten minutes covers Docker's restart back-off up to its
    /// first minute-long delays.
    pub restart_window_ms: i64,
    /// Weight with which an anomalous value is still learned, so a lasting change is
    /// eventually accepted while a short attack barely moves the baseline.
    pub anomalous_learn_weight: f64,
    /// Most peer groups tracked; beyond it the least recently seen group is dropped (its
    /// baseline lives on in checkpoints). A producer inventing image names cannot grow
    /// memory without bound. 20,000 groups is twenty times the 1,000-group fleets the
    /// benchmarks size a worker for.
    pub max_groups: usize,
    /// Most replicas tracked per group; beyond it the least recently seen goes. Ten
    /// thousand replicas of one image is past any real deployment.
    pub max_replicas_per_group: usize,
    /// Most incidents open at once; beyond it the one quiet the longest is closed. An
    /// input that makes every container anomalous cannot grow memory without bound.
    pub max_open_incidents: usize,
    /// Group state (replicas, incidents) idle this long is dropped; the baseline itself
    /// lives on in checkpoints. A week outlives weekends and maintenance windows.
    pub group_idle_ms: i64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            baseline: BaselineConfig::default(),
            group_by: GroupBy::default(),
            false_alerts_per_container_day: 0.05,
            min_peers: 3,
            peer_window_ms: 60_000,
            peer_refresh_ms: 5_000,
            replica_ttl_ms: 120_000,
            min_samples: 50.0,
            incident_quiet_ms: 15 * 60_000,
            incident_quiet_samples: 30,
            corroboration_ms: 10 * 60_000,
            restart_loop_count: 3,
            restart_window_ms: 10 * 60_000,
            anomalous_learn_weight: 0.1,
            group_idle_ms: 7 * 86_400_000,
            max_groups: 20_000,
            max_replicas_per_group: 10_000,
            max_open_incidents: 100_000,
        }
    }
}

impl DetectConfig {
    /// Checks cross-field rules; the message names the field.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(crate::Error::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.false_alerts_per_container_day > 0.0
            && self.false_alerts_per_container_day.is_finite())
        {
            return bad(
                "detect.false_alerts_per_container_day",
                "must be a positive number",
            );
        }
        if self.min_peers < 3 {
            return bad(
                "detect.min_peers",
                "must be at least 3 (a median of two is no peer vote)",
            );
        }
        if self.peer_window_ms <= 0 || self.replica_ttl_ms < self.peer_window_ms {
            return bad(
                "detect.replica_ttl_ms",
                "must be at least detect.peer_window_ms (> 0)",
            );
        }
        if self.baseline.learning_period_ms < self.baseline.warmup_ms {
            return bad(
                "detect.baseline.learning_period_ms",
                "must be at least detect.baseline.warmup_ms",
            );
        }
        if self.baseline.half_life_ms <= 0 {
            return bad("detect.baseline.half_life_ms", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.anomalous_learn_weight) {
            return bad("detect.anomalous_learn_weight", "must be within 0..=1");
        }
        if self.max_open_incidents == 0 {
            return bad("detect.max_open_incidents", "must be at least 1");
        }
        if self.max_groups == 0 || self.max_replicas_per_group < self.min_peers {
            return bad(
                "detect.max_groups",
                "max_groups must be at least 1 and max_replicas_per_group at least min_peers",
            );
        }
        if self.incident_quiet_ms <= 0 {
            return bad("detect.incident_quiet_ms", "must be positive");
        }
        Ok(())
    }
}
