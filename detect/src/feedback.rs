//! The feedback record (`herd.feedback`, docs/formats.md "Feedback record"): an
//! analyst's verdict on an incident, with the behaviour it is about, taken from the
//! incident's alert lines so that the worker owning the group can apply it without
//! them (the incident may have closed and been forgotten long before).
//!
//! [`Feedback::from_alerts`] builds one; [`Feedback::parse`] reads one with the limits of
//! any input; [`Engine::apply_feedback`](crate::Engine::apply_feedback) applies it to the
//! group's [`Verdicts`](herd_baseline::Verdicts).

use std::collections::BTreeMap;

use herd_baseline::verdicts::{ItemRef, Teaching, ValueRange};
use herd_baseline::{ItemKind, Verdict};
use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::{Error, Result};

/// The format tag of a feedback record.
pub const FORMAT: &str = "herd.feedback/1";

/// Largest feedback record read, in bytes.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Longest string field (ids, names, items), in bytes; the note may hold [`MAX_NOTE`].
const MAX_FIELD: usize = 4096;
/// Longest note, in bytes.
pub const MAX_NOTE: usize = 16 * 1024;

/// How far a taught or marked range reaches beyond the values the incident showed: half
/// of each end's magnitude (a replica seen at 2 cores teaches 1–3 cores), so that the
/// same behaviour on another day, under another load, is covered, while the group's
/// ordinary values (far below a deviation, or they would not have deviated) are not.
pub const RANGE_MARGIN: f64 = 0.5;

/// One verdict on one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// Always [`FORMAT`].
    pub format: String,
    /// The incident judged.
    pub incident_id: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Who gave it.
    pub by: String,
    /// When (RFC 3339).
    pub ts: String,
    /// Why, in their words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The incident's peer group.
    pub group: String,
    /// Its image reference (the routing key is its repository).
    pub image: String,
    /// Its container.
    pub container_id: String,
    /// Values of each deviating feature the verdict covers.
    #[serde(default)]
    pub features: Vec<ValueRange>,
    /// Novel items the verdict covers.
    #[serde(default)]
    pub items: Vec<ItemRef>,
}

fn invalid(why: impl Into<String>) -> Error {
    Error::Feedback(why.into())
}

impl Feedback {
    /// The verdict on the incident whose alert lines are `alerts` (every line of it
    /// that is known; later lines add features and items): each deviating feature's
    /// values, widened by [`RANGE_MARGIN`], and every novel item.
    pub fn from_alerts(
        alerts: &[Alert],
        verdict: Verdict,
        by: &str,
        note: Option<&str>,
        ts_ms: i64,
    ) -> Result<Self> {
        let last = alerts
            .iter()
            .max_by_key(|a| a.seq)
            .ok_or_else(|| invalid("no alert line of the incident"))?;
        if alerts.iter().any(|a| a.incident_id != last.incident_id) {
            return Err(invalid("alert lines of more than one incident"));
        }
        let mut spans: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        let mut items: Vec<ItemRef> = Vec::new();
        for a in alerts {
            for f in a.features.iter().filter(|f| f.value.is_finite()) {
                let s = spans.entry(&f.name).or_insert((f.value, f.value));
                s.0 = s.0.min(f.value);
                s.1 = s.1.max(f.value);
            }
            for n in &a.novel {
                let kind: ItemKind =
                    serde_json::from_value(serde_json::Value::String(n.kind.clone()))
                        .map_err(|_| invalid(format!("unknown item kind {:?}", n.kind)))?;
                let item = ItemRef {
                    kind,
                    value: n.value.clone(),
                };
                if !items.contains(&item) {
                    items.push(item);
                }
            }
        }
        let features = spans
            .into_iter()
            .map(|(name, (lo, hi))| ValueRange {
                feature: name.to_owned(),
                lo: lo - RANGE_MARGIN * lo.abs(),
                hi: hi + RANGE_MARGIN * hi.abs(),
            })
            .collect();
        let fb = Self {
            format: FORMAT.into(),
            incident_id: last.incident_id.clone(),
            verdict,
            by: by.to_owned(),
            ts: herd_ingest::time::format_ms(ts_ms),
            note: note.map(str::to_owned),
            group: last.group.clone(),
            image: last.image.clone(),
            container_id: last.container_id.clone(),
            features,
            items,
        };
        fb.validate()?;
        Ok(fb)
    }

    /// Reads a record, within [`MAX_RECORD_BYTES`] and the field limits.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(invalid(format!(
                "{} bytes, more than the {MAX_RECORD_BYTES} a feedback record may hold",
                bytes.len()
            )));
        }
        let fb: Feedback =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a record: {e}")))?;
        fb.validate()?;
        Ok(fb)
    }

    /// The record as one JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Its time, in milliseconds since the epoch.
    pub fn ts_ms(&self) -> Result<i64> {
        herd_ingest::time::parse_rfc3339_ms(&self.ts)
            .ok_or_else(|| invalid(format!("ts {:?} is not an RFC 3339 time", self.ts)))
    }

    /// The routing key of the group's worker: the image's repository.
    pub fn routing_key(&self) -> &str {
        herd_ingest::model::repository_of(&self.image)
    }

    /// Every rule a record must keep, each failing with what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(invalid(format!(
                "format {:?}, this build reads {FORMAT:?}",
                self.format
            )));
        }
        for (name, v) in [
            ("incident_id", &self.incident_id),
            ("by", &self.by),
            ("group", &self.group),
            ("image", &self.image),
            ("container_id", &self.container_id),
        ] {
            if v.is_empty() || v.len() > MAX_FIELD {
                return Err(invalid(format!("{name} must hold 1 to {MAX_FIELD} bytes")));
            }
        }
        if self.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE) {
            return Err(invalid(format!("note longer than {MAX_NOTE} bytes")));
        }
        self.ts_ms()?;
        if self.features.len() > herd_baseline::verdicts::MAX_RANGES
            || self.items.len() > herd_baseline::verdicts::MAX_ITEMS
        {
            return Err(invalid(format!(
                "at most {} features and {} items",
                herd_baseline::verdicts::MAX_RANGES,
                herd_baseline::verdicts::MAX_ITEMS
            )));
        }
        for r in &self.features {
            if r.feature.is_empty() || r.feature.len() > MAX_FIELD {
                return Err(invalid("a feature name must hold 1 to 4096 bytes"));
            }
            if !(r.lo.is_finite() && r.hi.is_finite() && r.lo <= r.hi) {
                return Err(invalid(format!(
                    "feature {}: lo and hi must be finite, lo ≤ hi",
                    r.feature
                )));
            }
        }
        if self
            .items
            .iter()
            .any(|i| i.value.is_empty() || i.value.len() > MAX_FIELD)
        {
            return Err(invalid("an item must hold 1 to 4096 bytes"));
        }
        Ok(())
    }

    /// The audit record the group keeps.
    pub fn teaching(&self) -> Result<Teaching> {
        Ok(Teaching {
            incident_id: self.incident_id.clone(),
            verdict: self.verdict,
            by: self.by.clone(),
            at_ms: self.ts_ms()?,
            note: self.note.clone(),
            container_id: self.container_id.clone(),
            features: self.features.clone(),
            items: self.items.clone(),
        })
    }
}

/// What applying a feedback record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackOutcome {
    /// In force in this many groups (the incident's, and its repository's newest digest
    /// after a rollout).
    Applied(usize),
    /// Applied before: nothing changed.
    Repeated,
    /// No group of the incident's image is held here (idle and forgotten, or the record
    /// was keyed to another worker's partition).
    UnknownGroup,
}

impl FeedbackOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Applied(_) => "applied",
            FeedbackOutcome::Repeated => "repeated",
            FeedbackOutcome::UnknownGroup => "unknown_group",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{FeatureEvidence, NovelEvidence, Severity};

    pub(crate) fn alert(seq: u32, cpu: f64, item: Option<(&str, &str)>) -> Alert {
        Alert {
            incident_id: "inc1".into(),
            ts: "2026-12-05T10:00:00Z".into(),
            seq,
            container_id: "c".repeat(64),
            container_name: "web-3".into(),
            group: "sha256:aa".into(),
            image: "shop/web:1".into(),
            host: Some("node-1".into()),
            severity: Severity::High,
            score: 9.0,
            threshold: 6.0,
            detectors: vec![crate::Detector::Peer],
            explanation: String::new(),
            features: vec![FeatureEvidence {
                name: "cpu_cores".into(),
                value: cpu,
                expected: Some([0.1, 0.5]),
                peers: None,
                step: None,
                roughness: None,
                fleet_shift: None,
                structure: None,
                surprise: 9.0,
            }],
            novel: item
                .map(|(k, v)| NovelEvidence {
                    kind: k.into(),
                    value: v.into(),
                    replica_support: 0,
                    replicas: 5,
                    phase: "locked".into(),
                    marked: None,
                })
                .into_iter()
                .collect(),
            events: Vec::new(),
            attack: Vec::new(),
            labels: BTreeMap::new(),
            evidence: None,
        }
    }

    #[test]
    fn built_from_every_line_of_the_incident_and_read_back() {
        let lines = [
            alert(0, 2.0, None),
            alert(1, 2.5, Some(("executable", "/tmp/xmrig"))),
        ];
        let fb = Feedback::from_alerts(
            &lines,
            Verdict::Benign,
            "alice",
            Some("load test"),
            1_790_000_000_000,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fb.routing_key(), "shop/web");
        assert_eq!(fb.features.len(), 1);
        assert_eq!((fb.features[0].lo, fb.features[0].hi), (1.0, 3.75));
        assert_eq!(fb.items.len(), 1);
        assert_eq!(fb.items[0].kind, ItemKind::Executable);
        let back = Feedback::parse(fb.to_line().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, fb);
        let t = back.teaching().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.at_ms, 1_790_000_000_000);
        assert_eq!(t.by, "alice");
    }

    #[test]
    fn bad_records_are_refused_with_the_reason() {
        let fb = Feedback::from_alerts(
            &[alert(0, 2.0, None)],
            Verdict::Malicious,
            "a",
            None,
            1_790_000_000_000,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(&fb).unwrap_or_default();
            edit(&mut v);
            Feedback::parse(v.to_string().as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad(&|v| v["format"] = "herd.feedback/9".into()).contains("format"));
        assert!(bad(&|v| v["verdict"] = "maybe".into()).contains("not a record"));
        assert!(bad(&|v| v["by"] = "".into()).contains("by"));
        assert!(bad(&|v| v["ts"] = "yesterday".into()).contains("ts"));
        assert!(bad(&|v| v["features"][0]["lo"] = 9.0.into()).contains("lo ≤ hi"));
        assert!(bad(&|v| v["extra"] = 1.into()).contains("unknown field"));
        assert!(
            Feedback::parse(&vec![b' '; MAX_RECORD_BYTES + 1])
                .err()
                .is_some_and(|e| e.to_string().contains("more than"))
        );
        // Nesting deeper than serde_json's limit is an error, not a crash.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Feedback::parse(deep.as_bytes()).is_err());
        assert!(Feedback::from_alerts(&[], Verdict::Benign, "a", None, 0).is_err());
    }
}
