//! What analysts said about a group's behaviour (`herd feedback`), and the audit record
//! of who said it and when.
//!
//! A **benign** verdict on an incident teaches the group its behaviour: each deviating
//! feature's values over a range around what the incident showed become expected (a
//! finding there is not raised), and its novel items become known, whatever the
//! catalog forgets later. A **malicious** verdict keeps the behaviour anomalous: its
//! items are novel on every replica that shows them, however many siblings showed them
//! too (a compromise spreading through a group would otherwise vouch for itself), and
//! the unusual values of its features are never learned as the group's normal, not even
//! slowly as a fleet-wide change would be. A later verdict on the same feature range or
//! item replaces an earlier one of the other kind.
//!
//! Everything is bounded: the oldest entry of a list goes first when it is full.

use serde::{Deserialize, Serialize};

use crate::categorical::ItemKind;

/// An analyst's verdict on an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Expected behaviour: teach it.
    Benign,
    /// A compromise: keep it anomalous.
    Malicious,
}

impl Verdict {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Benign => "benign",
            Verdict::Malicious => "malicious",
        }
    }
}

/// Values of one feature, from `lo` to `hi` inclusive, that a verdict is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    /// Feature name.
    pub feature: String,
    /// Lowest value covered.
    pub lo: f64,
    /// Highest value covered.
    pub hi: f64,
}

impl ValueRange {
    /// Whether `x` of `feature` lies in the range.
    pub fn covers(&self, feature: &str, x: f64) -> bool {
        self.feature == feature && self.lo <= x && x <= self.hi
    }

    fn overlaps(&self, o: &ValueRange) -> bool {
        self.feature == o.feature && self.lo <= o.hi && o.lo <= self.hi
    }
}

/// One item a verdict is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRef {
    /// Its kind.
    pub kind: ItemKind,
    /// The item (normalised, as the alert showed it).
    pub value: String,
}

/// The audit record of one verdict: who taught the group what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teaching {
    /// The incident judged.
    pub incident_id: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Who gave it.
    pub by: String,
    /// When (milliseconds since the epoch).
    pub at_ms: i64,
    /// Why, in their words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The container of the incident.
    pub container_id: String,
    /// The feature ranges taught or marked.
    pub features: Vec<ValueRange>,
    /// The items taught or marked.
    pub items: Vec<ItemRef>,
}

/// A range or item with the incident whose verdict put it here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ruled<T> {
    /// What the verdict is about.
    pub what: T,
    /// The incident judged.
    pub incident_id: String,
}

/// What a verdict on an item says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRuling<'a> {
    /// Taught benign by this incident's verdict.
    Taught(&'a str),
    /// Marked malicious by this incident's verdict.
    Marked(&'a str),
}

/// Whether applying a verdict changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Recorded and in force.
    Applied,
    /// The same verdict (incident, verdict, author and time) was applied before:
    /// nothing changed (a record read again after a restart).
    Repeated,
}

/// Most feature ranges per kind of verdict per group.
pub const MAX_RANGES: usize = 64;
/// Most items per kind of verdict per group.
pub const MAX_ITEMS: usize = 256;
/// Most audit records kept per group.
pub const MAX_AUDIT: usize = 128;

/// The verdicts in force for one group, and their audit trail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdicts {
    /// Benign: values expected.
    allowed: Vec<Ruled<ValueRange>>,
    /// Malicious: unusual values never learned.
    refused: Vec<Ruled<ValueRange>>,
    /// Benign: items known.
    taught: Vec<Ruled<ItemRef>>,
    /// Malicious: items novel on every replica.
    marked: Vec<Ruled<ItemRef>>,
    /// Every verdict applied, oldest first.
    audit: Vec<Teaching>,
}

fn push_bounded<T>(v: &mut Vec<T>, x: T, max: usize) {
    if v.len() >= max {
        v.remove(0);
    }
    v.push(x);
}

impl Verdicts {
    /// Whether no verdict was ever applied (the scorers skip every lookup then).
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty()
    }

    /// The audit trail, oldest first.
    pub fn audit(&self) -> &[Teaching] {
        &self.audit
    }

    /// Applies a verdict: a benign one teaches its ranges and items (and lifts earlier
    /// malicious marks on them), a malicious one marks them (and lifts earlier benign
    /// teaching on them); the record joins the audit trail.
    pub fn apply(&mut self, t: Teaching) -> Applied {
        if self.audit.iter().any(|a| {
            a.incident_id == t.incident_id
                && a.verdict == t.verdict
                && a.by == t.by
                && a.at_ms == t.at_ms
        }) {
            return Applied::Repeated;
        }
        let (add_ranges, lift_ranges, add_items, lift_items) = match t.verdict {
            Verdict::Benign => (
                &mut self.allowed,
                &mut self.refused,
                &mut self.taught,
                &mut self.marked,
            ),
            Verdict::Malicious => (
                &mut self.refused,
                &mut self.allowed,
                &mut self.marked,
                &mut self.taught,
            ),
        };
        for r in &t.features {
            lift_ranges.retain(|x| !x.what.overlaps(r));
            push_bounded(
                add_ranges,
                Ruled {
                    what: r.clone(),
                    incident_id: t.incident_id.clone(),
                },
                MAX_RANGES,
            );
        }
        for i in &t.items {
            lift_items.retain(|x| x.what != *i);
            add_items.retain(|x| x.what != *i);
            push_bounded(
                add_items,
                Ruled {
                    what: i.clone(),
                    incident_id: t.incident_id.clone(),
                },
                MAX_ITEMS,
            );
        }
        push_bounded(&mut self.audit, t, MAX_AUDIT);
        Applied::Applied
    }

    /// The benign verdict that makes `x` of `feature` expected, if any (its incident).
    pub fn allows(&self, feature: &str, x: f64) -> Option<&str> {
        self.allowed
            .iter()
            .rev()
            .find(|r| r.what.covers(feature, x))
            .map(|r| r.incident_id.as_str())
    }

    /// Whether a malicious verdict keeps `x` of `feature` from being learned.
    pub fn refuses(&self, feature: &str, x: f64) -> bool {
        self.refused.iter().any(|r| r.what.covers(feature, x))
    }

    /// What a verdict says of an item, if any.
    pub fn item(&self, kind: ItemKind, value: &str) -> Option<ItemRuling<'_>> {
        fn find<'a>(v: &'a [Ruled<ItemRef>], kind: ItemKind, value: &str) -> Option<&'a str> {
            v.iter()
                .find(|r| r.what.kind == kind && r.what.value == value)
                .map(|r| r.incident_id.as_str())
        }
        if let Some(id) = find(&self.marked, kind, value) {
            return Some(ItemRuling::Marked(id));
        }
        find(&self.taught, kind, value).map(ItemRuling::Taught)
    }

    /// Heap bytes held, roughly.
    pub fn heap_bytes(&self) -> usize {
        let ranges = |v: &[Ruled<ValueRange>]| {
            v.iter()
                .map(|r| r.what.feature.capacity() + r.incident_id.capacity() + 64)
                .sum::<usize>()
        };
        let items = |v: &[Ruled<ItemRef>]| {
            v.iter()
                .map(|r| r.what.value.capacity() + r.incident_id.capacity() + 64)
                .sum::<usize>()
        };
        ranges(&self.allowed)
            + ranges(&self.refused)
            + items(&self.taught)
            + items(&self.marked)
            + self
                .audit
                .iter()
                .map(|a| {
                    a.incident_id.capacity()
                        + a.by.capacity()
                        + a.note.as_ref().map_or(0, String::capacity)
                        + a.container_id.capacity()
                        + a.features.len() * 48
                        + a.items
                            .iter()
                            .map(|i| i.value.capacity() + 32)
                            .sum::<usize>()
                        + 128
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teaching(incident: &str, verdict: Verdict, at_ms: i64) -> Teaching {
        Teaching {
            incident_id: incident.into(),
            verdict,
            by: "alice".into(),
            at_ms,
            note: None,
            container_id: "c1".into(),
            features: vec![ValueRange {
                feature: "cpu_cores".into(),
                lo: 1.0,
                hi: 3.0,
            }],
            items: vec![ItemRef {
                kind: ItemKind::Executable,
                value: "/tmp/xmrig".into(),
            }],
        }
    }

    #[test]
    fn benign_teaches_malicious_marks_and_the_later_verdict_wins() {
        let mut v = Verdicts::default();
        assert!(v.is_empty());
        assert_eq!(
            v.apply(teaching("i1", Verdict::Benign, 10)),
            Applied::Applied
        );
        assert_eq!(v.allows("cpu_cores", 2.0), Some("i1"));
        assert_eq!(v.allows("cpu_cores", 3.5), None);
        assert_eq!(v.allows("mem_bytes", 2.0), None);
        assert!(!v.refuses("cpu_cores", 2.0));
        assert_eq!(
            v.item(ItemKind::Executable, "/tmp/xmrig"),
            Some(ItemRuling::Taught("i1"))
        );
        assert_eq!(v.item(ItemKind::Process, "/tmp/xmrig"), None);

        // The same record again (read twice after a restart) changes nothing.
        let before = v.clone();
        assert_eq!(
            v.apply(teaching("i1", Verdict::Benign, 10)),
            Applied::Repeated
        );
        assert_eq!(v, before);

        // A malicious verdict on the same behaviour lifts the teaching.
        v.apply(teaching("i2", Verdict::Malicious, 20));
        assert_eq!(v.allows("cpu_cores", 2.0), None);
        assert!(v.refuses("cpu_cores", 2.0));
        assert_eq!(
            v.item(ItemKind::Executable, "/tmp/xmrig"),
            Some(ItemRuling::Marked("i2"))
        );
        let trail: Vec<(&str, Verdict)> = v
            .audit()
            .iter()
            .map(|a| (a.incident_id.as_str(), a.verdict))
            .collect();
        assert_eq!(
            trail,
            vec![("i1", Verdict::Benign), ("i2", Verdict::Malicious)]
        );
    }

    #[test]
    fn every_list_is_bounded() {
        let mut v = Verdicts::default();
        for i in 0..(MAX_AUDIT as i64 + 10) {
            let mut t = teaching(&format!("i{i}"), Verdict::Benign, i);
            t.items[0].value = format!("/bin/x{i}");
            t.features[0].feature = format!("f{i}");
            v.apply(t);
        }
        assert_eq!(v.audit().len(), MAX_AUDIT);
        assert_eq!(v.allowed.len(), MAX_RANGES);
        assert!(v.taught.len() <= MAX_ITEMS);
        // The newest survive.
        let last = MAX_AUDIT as i64 + 9;
        assert!(v.allows(&format!("f{last}"), 2.0).is_some());
        assert!(v.allows("f0", 2.0).is_none());
    }
}
