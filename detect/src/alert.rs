//! The alert line: the public contract (docs/formats.md, "Alert line").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Investigate.
    Medium,
    /// Act now.
    High,
    /// Act now, several independent signs.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// One step up, saturating.
    pub fn raise(self) -> Self {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
}

/// Which scorer found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// A replica unlike its live peers (and unlike the group's history).
    Peer,
    /// A value unlike the group's own history (groups too small for peers).
    Baseline,
    /// A change between consecutive samples unlike the group's history.
    Step,
    /// A series gone flat or jittery: its recent mean step unlike the usual one.
    Roughness,
    /// The whole group moved in one feature more than its common load explains.
    Fleet,
    /// A sample whose combination of features fits none of the modes (nor the usual
    /// correlations) of the group's retrained structure.
    Structure,
    /// Behaviour never seen for this group, or only on this replica.
    Novelty,
    /// `docker exec` of a command the group does not normally run.
    Exec,
    /// The OOM killer hit the container.
    Oom,
    /// The container keeps restarting.
    RestartLoop,
    /// The container was started privileged.
    Privileged,
    /// A Falco rule of critical priority or above.
    Falco,
}

impl Detector {
    /// Every detector.
    pub const ALL: [Detector; 12] = [
        Detector::Peer,
        Detector::Baseline,
        Detector::Step,
        Detector::Roughness,
        Detector::Fleet,
        Detector::Structure,
        Detector::Novelty,
        Detector::Exec,
        Detector::Oom,
        Detector::RestartLoop,
        Detector::Privileged,
        Detector::Falco,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Peer => "peer",
            Detector::Baseline => "baseline",
            Detector::Step => "step",
            Detector::Roughness => "roughness",
            Detector::Fleet => "fleet",
            Detector::Structure => "structure",
            Detector::Novelty => "novelty",
            Detector::Exec => "exec",
            Detector::Oom => "oom",
            Detector::RestartLoop => "restart_loop",
            Detector::Privileged => "privileged",
            Detector::Falco => "falco",
        }
    }
}

/// The peers of a replica at the time of a deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeerEvidence {
    /// Median of the live replicas' latest values.
    pub median: f64,
    /// Their spread: 1.4826 × median absolute deviation (a robust standard deviation).
    pub spread: f64,
    /// How many live replicas.
    pub n: usize,
}

/// One deviating feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureEvidence {
    /// Feature name.
    pub name: String,
    /// The observed value.
    pub value: f64,
    /// The group's expected range from its history (1st to 99th percentile).
    pub expected: Option<[f64; 2]>,
    /// The live peers, when the group had enough.
    pub peers: Option<PeerEvidence>,
    /// The change since this replica's previous sample, when that was the finding.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<f64>,
    /// The replica's recent mean step size and the group's usual one (median), when the
    /// finding is a series gone flat or jittery.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub roughness: Option<[f64; 2]>,
    /// For a whole-group finding: how far the group's median moved beyond the common
    /// load factor of its features (an `slog` difference; ln(2) ≈ twice as much).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fleet_shift: Option<f64>,
    /// For a finding of the retrained structure: how the sample sat against its modes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub structure: Option<StructureEvidence>,
    /// Surprise (−log10 of the probability of a value at least this extreme).
    pub surprise: f64,
}

/// A sample against the retrained structure of its group (the feature named is the one
/// furthest from the nearest mode).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StructureEvidence {
    /// Modes of the group (mixture components).
    pub modes: usize,
    /// Share of the time the group spends in the nearest mode.
    pub nearest_share: f64,
    /// The nearest mode's usual value of the feature named.
    pub mode_value: f64,
    /// Share of the sample's deviation that lies off the group's principal axes: near 1,
    /// its features broke their usual correlation.
    pub off_axis: f64,
    /// Whether the replica was judged beside its live peers rather than the group's
    /// usual place: they had moved along the principal axes too (a surge), and it stood
    /// out from them even so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beside_peers: bool,
}

/// One novel item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NovelEvidence {
    /// `executable`, `exec_command`, `falco_rule`, `destination`, `listen_port`, `file_write`.
    pub kind: String,
    /// The item (normalised).
    pub value: String,
    /// Distinct other replicas of the group that ever showed it.
    pub replica_support: usize,
    /// Live replicas of the group at the time.
    pub replicas: usize,
    /// Whether the group's baseline was locked (an item new after learning) or still
    /// learning (an item only this replica showed).
    pub phase: String,
    /// The incident whose malicious verdict (`herd feedback`) marked this item: it is
    /// raised on every replica that shows it, however many siblings did too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked: Option<String>,
}

/// An alert line. Later lines with the same `incident_id` update the incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id of the incident (deterministic from container and first anomaly time).
    pub incident_id: String,
    /// RFC 3339 time of the observation that raised or updated the incident.
    pub ts: String,
    /// 0 for the opening alert, then 1, 2, … for updates.
    pub seq: u32,
    /// Full container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// Peer-group key.
    pub group: String,
    /// Image reference.
    pub image: String,
    /// Host, when known.
    pub host: Option<String>,
    /// Severity.
    pub severity: Severity,
    /// Highest surprise behind the incident so far.
    pub score: f64,
    /// The threshold the score was compared with (from the false-alert budget).
    pub threshold: f64,
    /// Detectors that fired, in a stable order.
    pub detectors: Vec<Detector>,
    /// One human sentence.
    pub explanation: String,
    /// Deviating features.
    pub features: Vec<FeatureEvidence>,
    /// Novel items with their replica support.
    pub novel: Vec<NovelEvidence>,
    /// Runtime events behind rule detectors (`oom`, `restart x3`, …).
    pub events: Vec<String>,
    /// ATT&CK technique ids.
    pub attack: Vec<String>,
    /// Kubernetes identity and other labels worth routing on.
    pub labels: BTreeMap<String, String>,
    /// Where the evidence bundle is (or is being) written, when a response policy
    /// captures it (`file:///var/lib/herd/evidence/<incident>/`, `s3://…`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub evidence: Option<String>,
}
