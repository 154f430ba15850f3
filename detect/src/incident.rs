//! Incidents: one per container per episode. Anomalies of a container within
//! `incident_quiet_ms` of its previous one belong to the same incident; a line is
//! emitted when the incident opens and whenever it learns something new (a detector, a
//! feature, an item, a higher severity), never for a repeat of what it already said.

use std::collections::{BTreeMap, BTreeSet};

use herd_ingest::ContainerRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alert::{Alert, Detector, FeatureEvidence, NovelEvidence, Severity};
use crate::explain::explain;

/// What one observation (or one due corroboration) found about one container.
#[derive(Debug, Clone, Default)]
pub(crate) struct Finding {
    pub(crate) score: f64,
    pub(crate) threshold: f64,
    pub(crate) severity: Option<Severity>,
    pub(crate) detectors: BTreeSet<Detector>,
    pub(crate) features: Vec<FeatureEvidence>,
    pub(crate) novel: Vec<NovelEvidence>,
    pub(crate) events: Vec<String>,
    pub(crate) attack: BTreeSet<String>,
}

impl Finding {
    pub(crate) fn add(&mut self, d: Detector, sev: Severity, score: f64) {
        self.detectors.insert(d);
        self.severity = Some(self.severity.map_or(sev, |s| s.max(sev)));
        self.score = self.score.max(score);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// Back to [`Finding::default`], touching only the parts that hold something (a
    /// set's `clear` drops and rebuilds it even when empty). Inline: every observation
    /// clears the one finding the engine keeps.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.score = 0.0;
        self.threshold = 0.0;
        self.severity = None;
        if !self.detectors.is_empty() {
            self.detectors.clear();
        }
        self.features.clear();
        self.novel.clear();
        self.events.clear();
        if !self.attack.is_empty() {
            self.attack.clear();
        }
    }
}

/// Severity of a numeric deviation from how far its surprise exceeds the threshold:
/// within 1.5 decades low, within 4 medium, beyond high.
pub(crate) fn numeric_severity(surprise: f64, threshold: f64) -> Severity {
    match surprise - threshold {
        m if m < 1.5 => Severity::Low,
        m if m < 4.0 => Severity::Medium,
        _ => Severity::High,
    }
}

fn family(d: Detector) -> u8 {
    match d {
        Detector::Peer
        | Detector::Baseline
        | Detector::Step
        | Detector::Roughness
        | Detector::Fleet
        | Detector::Structure => 0,
        Detector::Novelty | Detector::Exec | Detector::Falco => 1,
        Detector::Oom | Detector::RestartLoop | Detector::Privileged => 2,
    }
}

const MAX_FEATURES: usize = 16;
const MAX_NOVEL: usize = 32;
const MAX_EVENTS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Open {
    id: String,
    /// How long it stays open without anomalies (depends on the container's sampling).
    quiet_ms: i64,
    group: String,
    opened_ms: i64,
    last_ms: i64,
    seq: u32,
    severity: Severity,
    score: f64,
    threshold: f64,
    detectors: BTreeSet<Detector>,
    features: BTreeMap<String, FeatureEvidence>,
    novel: Vec<NovelEvidence>,
    events: Vec<String>,
    attack: BTreeSet<String>,
}

/// An incident that closed: its container was quiet for the incident's quiet time, or
/// it was the one quiet the longest when `max_open_incidents` was reached. Sinks that
/// keep incidents open (Alertmanager) resolve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    /// The incident's id.
    pub incident_id: String,
    /// Full container id.
    pub container_id: String,
    /// Peer-group key.
    pub group: String,
    /// Its last severity.
    pub severity: Severity,
    /// Event time it closed at: its last anomaly plus its quiet time, or the time it
    /// was evicted.
    pub closed_ms: i64,
}

impl Closed {
    fn of(container_id: &str, o: &Open, closed_ms: i64) -> Self {
        Self {
            incident_id: o.id.clone(),
            container_id: container_id.to_owned(),
            group: o.group.clone(),
            severity: o.severity,
            closed_ms,
        }
    }
}

/// Open incidents by container id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Incidents {
    open: BTreeMap<String, Open>,
}

/// A deterministic incident id: the same container and first anomaly time give the same
/// id on every worker and after every replay.
pub fn incident_id(container_id: &str, opened_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update(b"|");
    h.update(opened_ms.to_be_bytes());
    let d = h.finalize();
    let mut s = String::with_capacity(20);
    s.push_str("inc-");
    for b in &d[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Incidents {
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// The open incidents of one group, by container (for a group's checkpoint).
    pub(crate) fn of_group(&self, group: &str) -> BTreeMap<String, Open> {
        self.open
            .iter()
            .filter(|(_, o)| o.group == group)
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    /// Drops the open incidents of one group (its state moved to another worker).
    pub(crate) fn remove_group(&mut self, group: &str) {
        self.open.retain(|_, o| o.group != group);
    }

    /// Adds incidents restored from a group's checkpoint; an incident already open here
    /// for the same container is kept when it is newer.
    pub(crate) fn adopt(&mut self, open: BTreeMap<String, Open>) {
        for (k, o) in open {
            match self.open.get(&k) {
                Some(mine) if mine.last_ms >= o.last_ms => {}
                _ => {
                    self.open.insert(k, o);
                }
            }
        }
    }

    /// Whether the container has an open incident.
    pub(crate) fn is_open(&self, container_id: &str) -> bool {
        self.open.contains_key(container_id)
    }

    /// Folds a finding into the container's incident; returns the line to emit, if any.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of finding; a parameter struct would only rename them"
    )]
    pub(crate) fn record(
        &mut self,
        c: &ContainerRef,
        group: &str,
        f: Finding,
        now_ms: i64,
        quiet_ms: i64,
        max_open: usize,
        closed: &mut Vec<Closed>,
    ) -> Option<Alert> {
        if f.is_empty() {
            return None;
        }
        let sev = f.severity.unwrap_or(Severity::Low);
        // Past the incident's own quiet time (what housekeeping closes it by), not the
        // new finding's: whether an episode goes on must not depend on whether
        // housekeeping came between, and a closing is never dated after the finding.
        let stale = self
            .open
            .get(&*c.id)
            .is_some_and(|o| now_ms - o.last_ms > o.quiet_ms);
        if stale && let Some(o) = self.open.remove(&*c.id) {
            closed.push(Closed::of(&c.id, &o, o.last_ms + o.quiet_ms));
        }
        if !self.open.contains_key(&*c.id)
            && self.open.len() >= max_open
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, o)| o.last_ms)
                .map(|(k, _)| k.clone())
            && let Some(o) = self.open.remove(&oldest)
        {
            closed.push(Closed::of(&oldest, &o, now_ms));
        }
        let mut changed = false;
        let o = self.open.entry(c.id.to_string()).or_insert_with(|| {
            changed = true;
            Open {
                id: incident_id(&c.id, now_ms),
                quiet_ms,
                group: group.to_owned(),
                opened_ms: now_ms,
                last_ms: now_ms,
                seq: 0,
                severity: sev,
                score: f.score,
                threshold: f.threshold,
                detectors: BTreeSet::new(),
                features: BTreeMap::new(),
                novel: Vec::new(),
                events: Vec::new(),
                attack: BTreeSet::new(),
            }
        });
        let opening = changed;
        o.last_ms = o.last_ms.max(now_ms);
        o.quiet_ms = quiet_ms;
        o.score = o.score.max(f.score);
        if f.threshold > 0.0 {
            o.threshold = f.threshold;
        }
        for d in &f.detectors {
            changed |= o.detectors.insert(*d);
        }
        for fe in f.features {
            let room = o.features.len() < MAX_FEATURES;
            match o.features.get_mut(&fe.name) {
                Some(old) if fe.surprise > old.surprise => *old = fe,
                Some(_) => {}
                None if room => {
                    o.features.insert(fe.name.clone(), fe);
                    changed = true;
                }
                None => {}
            }
        }
        for n in f.novel {
            if o.novel.len() < MAX_NOVEL
                && !o
                    .novel
                    .iter()
                    .any(|x| x.kind == n.kind && x.value == n.value)
            {
                o.novel.push(n);
                changed = true;
            }
        }
        for e in f.events {
            if o.events.len() < MAX_EVENTS && !o.events.contains(&e) {
                o.events.push(e);
                changed = true;
            }
        }
        for a in f.attack {
            changed |= o.attack.insert(a);
        }
        let families: BTreeSet<u8> = o.detectors.iter().map(|d| family(*d)).collect();
        let mut severity = o.severity.max(sev);
        if families.len() >= 2 && severity < Severity::Critical && !o.detectors.is_empty() {
            severity = severity.max(sev.raise());
        }
        if severity > o.severity {
            o.severity = severity;
            changed = true;
        }
        if !changed {
            return None;
        }
        if !opening {
            o.seq += 1;
        }
        Some(to_alert(o, c, now_ms))
    }

    /// Closes incidents quiet for longer than their quiet time; returns how many.
    pub(crate) fn close_quiet(&mut self, now_ms: i64, closed: &mut Vec<Closed>) -> usize {
        let n = self.open.len();
        self.open.retain(|k, o| {
            let keep = now_ms - o.last_ms <= o.quiet_ms;
            if !keep {
                closed.push(Closed::of(k, o, o.last_ms + o.quiet_ms));
            }
            keep
        });
        n - self.open.len()
    }
}

fn to_alert(o: &Open, c: &ContainerRef, now_ms: i64) -> Alert {
    let mut features: Vec<FeatureEvidence> = o.features.values().cloned().collect();
    features.sort_by(|a, b| b.surprise.total_cmp(&a.surprise));
    let mut labels = BTreeMap::new();
    for k in [
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.name",
        "io.kubernetes.container.name",
        "com.docker.compose.service",
    ] {
        if let Some(v) = c.labels.get(k) {
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    let mut alert = Alert {
        incident_id: o.id.clone(),
        ts: herd_ingest::time::format_ms(now_ms),
        seq: o.seq,
        container_id: c.id.to_string(),
        container_name: c.display_name().to_owned(),
        group: o.group.clone(),
        image: c.image.to_string(),
        host: c.host.as_deref().map(str::to_owned),
        severity: o.severity,
        score: (o.score * 100.0).round() / 100.0,
        threshold: (o.threshold * 100.0).round() / 100.0,
        detectors: o.detectors.iter().copied().collect(),
        explanation: String::new(),
        features,
        novel: o.novel.clone(),
        events: o.events.clone(),
        attack: o.attack.iter().cloned().collect(),
        labels,
        evidence: None,
    };
    alert.explanation = explain(&alert);
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> ContainerRef {
        ContainerRef {
            id: "abc".into(),
            name: Some("web-1".into()),
            image: "shop/web:1.4".into(),
            image_digest: None,
            labels: herd_ingest::Labels::new(),
            host: Some("node-1".into()),
        }
    }

    fn finding(d: Detector, sev: Severity, feature: &str) -> Finding {
        let mut f = Finding {
            threshold: 5.0,
            ..Finding::default()
        };
        f.add(d, sev, 7.0);
        f.features.push(FeatureEvidence {
            name: feature.into(),
            value: 1.0,
            expected: Some([0.0, 0.5]),
            peers: None,
            step: None,
            roughness: None,
            fleet_shift: None,
            structure: None,
            surprise: 7.0,
        });
        f
    }

    #[test]
    fn repeats_are_folded_and_news_are_updates() {
        let mut inc = Incidents::default();
        let mut closed = Vec::new();
        let q = 60_000;
        let a = inc.record(
            &c(),
            "g",
            finding(Detector::Peer, Severity::Low, "cpu_cores"),
            0,
            q,
            usize::MAX,
            &mut closed,
        );
        let Some(a) = a else { panic!("no alert") };
        assert_eq!(a.seq, 0);
        assert_eq!(a.incident_id, incident_id("abc", 0));
        assert!(
            inc.record(
                &c(),
                "g",
                finding(Detector::Peer, Severity::Low, "cpu_cores"),
                10_000,
                q,
                usize::MAX,
                &mut closed,
            )
            .is_none()
        );
        let u = inc.record(
            &c(),
            "g",
            finding(Detector::Peer, Severity::Low, "net_tx_bytes_per_s"),
            20_000,
            q,
            usize::MAX,
            &mut closed,
        );
        assert_eq!(
            u.as_ref().map(|u| (u.seq, u.incident_id.clone())),
            Some((1, a.incident_id.clone()))
        );
        // After a quiet period, a new episode is a new incident.
        let n = inc.record(
            &c(),
            "g",
            finding(Detector::Peer, Severity::Low, "cpu_cores"),
            200_000,
            q,
            usize::MAX,
            &mut closed,
        );
        assert!(n.is_some_and(|n| n.incident_id != a.incident_id && n.seq == 0));
        // … and the first one is reported closed, at its last anomaly plus its quiet time.
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].incident_id, a.incident_id);
        assert_eq!(closed[0].closed_ms, 20_000 + q);
        assert_eq!(inc.close_quiet(200_000 + q + 1, &mut closed), 1);
        assert_eq!(closed.len(), 2);
    }

    /// An episode goes on or ends by the incident's quiet time, as housekeeping closes
    /// it, whatever quiet time the new finding brings (a container's sampling interval,
    /// which sets it, can change).
    #[test]
    fn an_incident_goes_on_or_ends_by_its_own_quiet_time() {
        let f = || finding(Detector::Peer, Severity::Low, "cpu_cores");
        let (short, long) = (60_000, 120_000);
        // Opened with the short quiet time: a finding 90 s on, with the long one, is a
        // new episode (housekeeping, had it come between, would have closed the first).
        let mut inc = Incidents::default();
        let mut closed = Vec::new();
        let first = inc.record(&c(), "g", f(), 0, short, usize::MAX, &mut closed);
        let next = inc.record(&c(), "g", f(), 90_000, long, usize::MAX, &mut closed);
        assert!(first.is_some() && next.is_some_and(|n| n.seq == 0));
        assert_eq!(
            closed.iter().map(|c| c.closed_ms).collect::<Vec<_>>(),
            [short]
        );
        // Opened with the long quiet time: a finding 90 s on, with the short one, is
        // the same episode; it was not closed, least of all at 120 s, after the finding.
        let mut inc = Incidents::default();
        let mut closed = Vec::new();
        inc.record(&c(), "g", f(), 0, long, usize::MAX, &mut closed);
        let mut later = f();
        later.add(Detector::Novelty, Severity::Low, 7.0);
        let next = inc.record(&c(), "g", later, 90_000, short, usize::MAX, &mut closed);
        assert!(next.is_some_and(|n| n.seq == 1), "an update of the first");
        assert!(closed.is_empty());
        // From then on its quiet time is the newest finding's.
        assert_eq!(inc.close_quiet(90_000 + short, &mut closed), 0);
        assert_eq!(inc.close_quiet(90_000 + short + 1, &mut closed), 1);
    }

    #[test]
    fn open_incidents_are_capped_by_closing_the_quietest() {
        let mut inc = Incidents::default();
        let mut closed = Vec::new();
        for i in 0..10i64 {
            let mut who = c();
            who.id = format!("c{i}").into();
            inc.record(
                &who,
                "g",
                finding(Detector::Peer, Severity::Low, "x"),
                i * 1000,
                60_000,
                3,
                &mut closed,
            );
        }
        assert_eq!(inc.len(), 3);
        assert!(inc.is_open("c9") && inc.is_open("c8") && inc.is_open("c7"));
        let gone: Vec<&str> = closed.iter().map(|c| c.container_id.as_str()).collect();
        assert_eq!(gone, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    }

    #[test]
    fn independent_detector_families_raise_severity() {
        let mut inc = Incidents::default();
        let mut closed = Vec::new();
        inc.record(
            &c(),
            "g",
            finding(Detector::Peer, Severity::Medium, "cpu_cores"),
            0,
            60_000,
            usize::MAX,
            &mut closed,
        );
        let mut f = Finding::default();
        f.add(Detector::Novelty, Severity::High, 9.0);
        let u = inc.record(&c(), "g", f, 1000, 60_000, usize::MAX, &mut closed);
        assert_eq!(u.map(|u| u.severity), Some(Severity::Critical));
    }
}
