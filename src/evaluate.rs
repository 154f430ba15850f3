//! `herd evaluate`: alerts against a simulation's labels.
//!
//! An alert line detects an attack when it is about the attacked container and its time
//! falls between the attack's start and ten minutes after its end. An incident is a true
//! positive when any of its lines detects an attack; every other incident is a false
//! alarm, reported with the benign episode of its image it fell in, if any. Precision
//! counts incidents (one per container per episode), not alert lines, because that is
//! what a person handles.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use herd_detect::Alert;
use herd_ingest::model::repository_of;
use herd_ingest::time::{format_ms, parse_rfc3339_ms};
use serde::Serialize;

use crate::simulate::Labels;

/// Grace after an attack's end during which an alert still counts for it.
pub const GRACE_MS: i64 = 10 * 60_000;

/// How one attack fared.
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    /// Label id.
    pub id: String,
    /// Attack kind.
    pub kind: String,
    /// Target container name.
    pub container_name: String,
    /// Whether any alert detected it.
    pub detected: bool,
    /// Seconds from attack start to the first detecting alert.
    pub delay_s: Option<f64>,
    /// The detecting incident.
    pub incident_id: Option<String>,
    /// Its highest severity.
    pub severity: Option<String>,
    /// Its detectors.
    pub detectors: Vec<String>,
}

/// An incident that matched no attack.
#[derive(Debug, Clone, Serialize)]
pub struct FalseAlarm {
    /// Incident id.
    pub incident_id: String,
    /// Container name.
    pub container_name: String,
    /// Image.
    pub image: String,
    /// First alert time.
    pub ts: String,
    /// Highest severity.
    pub severity: String,
    /// Detectors.
    pub detectors: Vec<String>,
    /// The first line's explanation.
    pub explanation: String,
    /// The benign episode it fell in (`surge on shop/web`), if any.
    pub benign_window: Option<String>,
}

/// The evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Attacks labelled.
    pub attacks: usize,
    /// Attacks detected.
    pub detected: usize,
    /// detected / attacks.
    pub recall: f64,
    /// Incidents alerted.
    pub incidents: usize,
    /// Incidents that detected an attack.
    pub true_incidents: usize,
    /// true_incidents / incidents (1 when there are none).
    pub precision: f64,
    /// False alarms inside a benign window.
    pub false_alarms_in_benign_windows: usize,
    /// Mean detection delay over detected attacks, seconds.
    pub mean_delay_s: Option<f64>,
    /// Largest detection delay, seconds.
    pub max_delay_s: Option<f64>,
    /// Per attack.
    pub per_attack: Vec<AttackResult>,
    /// False alarms.
    pub false_alarms: Vec<FalseAlarm>,
}

/// Reads labels and alert lines from files and evaluates.
pub fn evaluate_files(labels: &Path, alerts: &Path) -> anyhow::Result<Evaluation> {
    let labels: Labels = serde_json::from_slice(
        &std::fs::read(labels).with_context(|| format!("reading {}", labels.display()))?,
    )
    .with_context(|| format!("parsing {}", labels.display()))?;
    let f = File::open(alerts).with_context(|| format!("opening {}", alerts.display()))?;
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let a: Alert = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an alert line", alerts.display(), i + 1))?;
        lines.push(a);
    }
    evaluate(&labels, &lines)
}

/// Evaluates alert lines against labels.
pub fn evaluate(labels: &Labels, alerts: &[Alert]) -> anyhow::Result<Evaluation> {
    let ts = |s: &str| parse_rfc3339_ms(s).with_context(|| format!("bad time {s}"));
    struct Inc<'a> {
        first: &'a Alert,
        first_ms: i64,
        severity: herd_detect::Severity,
        detectors: std::collections::BTreeSet<String>,
        matched: bool,
    }
    let mut incidents: BTreeMap<&str, Inc<'_>> = BTreeMap::new();
    let mut per_attack: Vec<AttackResult> = labels
        .attacks
        .iter()
        .map(|a| AttackResult {
            id: a.id.clone(),
            kind: a.kind.clone(),
            container_name: a.container_name.clone(),
            detected: false,
            delay_s: None,
            incident_id: None,
            severity: None,
            detectors: Vec::new(),
        })
        .collect();
    let windows: Vec<(i64, i64)> = labels
        .attacks
        .iter()
        .map(|a| Ok((ts(&a.start)?, ts(&a.end)? + GRACE_MS)))
        .collect::<anyhow::Result<_>>()?;
    for a in alerts {
        let t = ts(&a.ts)?;
        let inc = incidents.entry(a.incident_id.as_str()).or_insert(Inc {
            first: a,
            first_ms: t,
            severity: a.severity,
            detectors: Default::default(),
            matched: false,
        });
        inc.severity = inc.severity.max(a.severity);
        inc.detectors
            .extend(a.detectors.iter().map(|d| d.as_str().to_owned()));
        for (i, l) in labels.attacks.iter().enumerate() {
            let (s, e) = windows[i];
            let target =
                l.container_id == a.container_id || l.container_ids.contains(&a.container_id);
            if target && s <= t && t <= e {
                inc.matched = true;
                let r = &mut per_attack[i];
                let delay = (t - s) as f64 / 1000.0;
                if r.delay_s.is_none_or(|d| delay < d) {
                    r.detected = true;
                    r.delay_s = Some(delay);
                    r.incident_id = Some(a.incident_id.clone());
                }
            }
        }
    }
    for r in &mut per_attack {
        if let Some(inc) = r.incident_id.as_deref().and_then(|id| incidents.get(id)) {
            r.severity = Some(inc.severity.as_str().to_owned());
            r.detectors = inc.detectors.iter().cloned().collect();
        }
    }
    let mut false_alarms = Vec::new();
    for (id, inc) in &incidents {
        if inc.matched {
            continue;
        }
        let repo = repository_of(&inc.first.image);
        // The most specific episode it fell in: the shortest window that holds it.
        let benign = labels
            .benign
            .iter()
            .filter_map(|b| Some((b, ts(&b.start).ok()?, ts(&b.end).ok()?)))
            .filter(|(b, s, e)| {
                b.repository == repo && *s <= inc.first_ms && inc.first_ms <= e + GRACE_MS
            })
            .min_by_key(|(_, s, e)| e - s)
            .map(|(b, _, _)| format!("{} on {}", b.kind, b.repository));
        false_alarms.push(FalseAlarm {
            incident_id: (*id).to_owned(),
            container_name: inc.first.container_name.clone(),
            image: inc.first.image.clone(),
            ts: format_ms(inc.first_ms),
            severity: inc.severity.as_str().to_owned(),
            detectors: inc.detectors.iter().cloned().collect(),
            explanation: inc.first.explanation.clone(),
            benign_window: benign,
        });
    }
    let detected = per_attack.iter().filter(|r| r.detected).count();
    let delays: Vec<f64> = per_attack.iter().filter_map(|r| r.delay_s).collect();
    let true_incidents = incidents.values().filter(|i| i.matched).count();
    Ok(Evaluation {
        attacks: labels.attacks.len(),
        detected,
        recall: if labels.attacks.is_empty() {
            1.0
        } else {
            detected as f64 / labels.attacks.len() as f64
        },
        incidents: incidents.len(),
        true_incidents,
        precision: if incidents.is_empty() {
            1.0
        } else {
            true_incidents as f64 / incidents.len() as f64
        },
        false_alarms_in_benign_windows: false_alarms
            .iter()
            .filter(|f| f.benign_window.is_some())
            .count(),
        mean_delay_s: (!delays.is_empty())
            .then(|| delays.iter().sum::<f64>() / delays.len() as f64),
        max_delay_s: delays.iter().copied().reduce(f64::max),
        per_attack,
        false_alarms,
    })
}

/// The human report.
pub fn render(e: &Evaluation) -> String {
    let mut s = format!(
        "recall {:.2} ({}/{} attacks)   precision {:.2} ({}/{} incidents)   false alarms {} ({} in benign windows)\n",
        e.recall,
        e.detected,
        e.attacks,
        e.precision,
        e.true_incidents,
        e.incidents,
        e.false_alarms.len(),
        e.false_alarms_in_benign_windows
    );
    if let (Some(mean), Some(max)) = (e.mean_delay_s, e.max_delay_s) {
        s.push_str(&format!(
            "detection delay: mean {mean:.0} s, max {max:.0} s\n"
        ));
    }
    s.push_str("\nattack                     container   detected  delay   severity  detectors\n");
    for r in &e.per_attack {
        s.push_str(&format!(
            "{:<26} {:<11} {:<9} {:<7} {:<9} {}\n",
            r.kind,
            r.container_name,
            if r.detected { "yes" } else { "NO" },
            r.delay_s.map_or("-".into(), |d| format!("{d:.0}s")),
            r.severity.as_deref().unwrap_or("-"),
            r.detectors.join(",")
        ));
    }
    if !e.false_alarms.is_empty() {
        s.push_str("\nfalse alarms:\n");
        for f in &e.false_alarms {
            s.push_str(&format!(
                "  {} {} {} [{}] {}{}\n",
                f.ts,
                f.container_name,
                f.severity,
                f.detectors.join(","),
                f.explanation,
                f.benign_window
                    .as_ref()
                    .map_or(String::new(), |b| format!("  (during {b})"))
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_detect::{Detector, Severity};

    use super::*;
    use crate::simulate::{AttackLabel, BenignLabel};

    fn alert(id: &str, container: &str, image: &str, ts: &str, seq: u32) -> Alert {
        Alert {
            incident_id: id.into(),
            ts: ts.into(),
            seq,
            container_id: container.into(),
            container_name: container.into(),
            group: image.into(),
            image: image.into(),
            host: None,
            severity: Severity::High,
            score: 9.0,
            threshold: 6.0,
            detectors: vec![Detector::Peer],
            explanation: "x".into(),
            features: vec![],
            novel: vec![],
            events: vec![],
            attack: vec![],
            labels: BTreeMap::new(),
            evidence: None,
        }
    }

    fn labels() -> Labels {
        let benign = |kind: &str, start: &str, end: &str| BenignLabel {
            kind: kind.into(),
            repository: "shop/web".into(),
            start: start.into(),
            end: end.into(),
        };
        Labels {
            seed: 0,
            start: "2026-11-02T00:00:00Z".into(),
            end: "2026-11-04T00:00:00Z".into(),
            attacks: ["a", "b"]
                .iter()
                .map(|c| AttackLabel {
                    id: format!("atk-{c}"),
                    kind: "cryptominer".into(),
                    container_id: (*c).into(),
                    container_ids: vec![(*c).into()],
                    container_name: (*c).into(),
                    image: "shop/web:1".into(),
                    start: "2026-11-03T10:00:00Z".into(),
                    end: "2026-11-03T10:30:00Z".into(),
                })
                .collect(),
            benign: vec![
                benign(
                    "healthcheck_exec",
                    "2026-11-02T00:00:00Z",
                    "2026-11-04T00:00:00Z",
                ),
                benign("surge", "2026-11-03T14:00:00Z", "2026-11-03T14:40:00Z"),
            ],
        }
    }

    #[test]
    fn matching_grace_incidents_and_the_most_specific_benign_window() {
        let alerts = [
            // Detects a, 2 minutes in; its update 30 minutes later counts once.
            alert("i1", "a", "shop/web:1", "2026-11-03T10:02:00Z", 0),
            alert("i1", "a", "shop/web:1", "2026-11-03T10:32:00Z", 1),
            // On b, but 11 minutes after the attack's end: past the grace, a false alarm.
            alert("i2", "b", "shop/web:1", "2026-11-03T10:41:00Z", 0),
            // During the surge.
            alert("i3", "c", "shop/web:1", "2026-11-03T14:10:00Z", 0),
        ];
        let e = evaluate(&labels(), &alerts).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (e.attacks, e.detected, e.incidents, e.true_incidents),
            (2, 1, 3, 1)
        );
        assert!((e.recall - 0.5).abs() < 1e-9 && (e.precision - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.per_attack[0].delay_s, Some(120.0));
        assert!(!e.per_attack[1].detected);
        let windows: Vec<_> = e
            .false_alarms
            .iter()
            .map(|f| f.benign_window.clone())
            .collect();
        assert_eq!(
            windows,
            vec![
                Some("healthcheck_exec on shop/web".to_owned()),
                Some("surge on shop/web".to_owned())
            ]
        );
        assert!(render(&e).contains("recall 0.50"));
    }
}
