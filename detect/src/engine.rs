//! [`Engine`]: observations in event-time order → alerts. Shared by `herd replay`, the
//! stream service and tests; deterministic for a given input and configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use herd_baseline::{GroupBaseline, ItemKind, Phase};
use herd_ingest::{ContainerRef, Event, Observation, Payload};
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Detector, FeatureEvidence, NovelEvidence, Severity};
use crate::calibrate;
use crate::group::{GroupState, Pending, Replica};
use crate::incident::{numeric_severity, Finding, Incidents};
use crate::novelty::{attack_ids, falco_rank, items_of, judge, Verdict};
use crate::{DetectConfig, Error, Result};

/// Snapshot format of the whole engine.
const FORMAT: u32 = 1;

/// Steps further apart than this are not steps: the series had a gap.
const MAX_STEP_GAP_MS: i64 = 30 * 60_000;

/// Housekeeping (evictions, closing quiet incidents) every this many observations.
const HOUSEKEEPING_EVERY: u32 = 4096;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    groups: BTreeMap<String, GroupState>,
    /// Latest group key per image repository, to recognise rollouts.
    repos: BTreeMap<String, String>,
    incidents: Incidents,
    now_ms: i64,
    since_housekeeping: u32,
}

/// Counts for metrics and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Peer groups tracked.
    pub groups: usize,
    /// Containers tracked.
    pub containers: usize,
    /// Incidents open.
    pub open_incidents: usize,
}

/// The detection engine. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: DetectConfig,
    state: State,
    scratch: Vec<f64>,
}

#[derive(Serialize)]
struct SnapOut<'a> {
    format: u32,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapIn {
    format: u32,
    state: serde_json::Value,
}

impl Engine {
    /// A new engine; fails on an invalid configuration.
    pub fn new(cfg: DetectConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            state: State::default(),
            scratch: Vec::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Counts of what is tracked.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            groups: self.state.groups.len(),
            containers: self.state.groups.values().map(|g| g.replicas.len()).sum(),
            open_incidents: self.state.incidents.len(),
        }
    }

    /// The baseline of a group, if tracked.
    pub fn baseline(&self, group: &str) -> Option<&GroupBaseline> {
        self.state.groups.get(group).map(|g| &g.baseline)
    }

    /// Whether the container has an open incident (evidence capture on `die` uses it).
    pub fn has_open_incident(&self, container_id: &str) -> bool {
        self.state.incidents.is_open(container_id)
    }

    /// Serialises the whole engine state (baselines, replicas, incidents).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&SnapOut {
            format: FORMAT,
            state: &self.state,
        })?)
    }

    /// Restores an engine from [`Engine::snapshot`] output.
    pub fn restore(cfg: DetectConfig, bytes: &[u8]) -> Result<Self> {
        cfg.validate()?;
        let s: SnapIn = serde_json::from_slice(bytes)?;
        if s.format != FORMAT {
            return Err(Error::UnsupportedFormat(s.format));
        }
        Ok(Self {
            cfg,
            state: serde_json::from_value(s.state)?,
            scratch: Vec::new(),
        })
    }

    /// Processes one observation; alerts it raises or updates are appended to `out`.
    pub fn observe(&mut self, obs: &Observation, out: &mut Vec<Alert>) {
        let now = obs.ts_ms;
        self.state.now_ms = self.state.now_ms.max(now);
        let key = self.cfg.group_by.key(&obs.container);
        self.ensure_group(&key, &obs.container, now);
        let cfg = &self.cfg;
        let Some(group) = self.state.groups.get_mut(&key) else {
            return;
        };
        group.last_seen_ms = group.last_seen_ms.max(now);
        let replica = group
            .replicas
            .entry(obs.container.id.clone())
            .or_insert_with(|| Replica::new(Arc::clone(&obs.container), now));
        replica.last_seen_ms = replica.last_seen_ms.max(now);
        if !Arc::ptr_eq(&replica.cref, &obs.container) && *replica.cref != *obs.container {
            replica.cref = Arc::clone(&obs.container);
        }
        let phase = group.baseline.phase(now, &cfg.baseline);
        let mut finding = Finding::default();
        match &obs.payload {
            Payload::Metrics(m) => {
                score_metrics(group, &obs.container.id, m, now, phase, cfg, &mut self.scratch, &mut finding)
            }
            Payload::Event(e) => score_event(group, &obs.container.id, e, now, phase, cfg, &mut finding),
        }
        group.baseline.updated_ms = group.baseline.updated_ms.max(now);
        let due = group.due_uncorroborated(now);
        let mut late: Vec<(Arc<ContainerRef>, Finding)> = Vec::new();
        if !due.is_empty() {
            let live = group.live_count(now, cfg);
            for p in due {
                let Some(r) = group.replicas.get(&p.container_id) else {
                    continue;
                };
                let threshold = calibrate::threshold(r.rate.per_day(), cfg.false_alerts_per_container_day);
                let support = group
                    .baseline
                    .items
                    .get(p.kind, &p.value)
                    .map_or(0, |s| s.support_excluding(r.hash));
                let mut f = Finding {
                    threshold,
                    ..Finding::default()
                };
                let det = if p.kind == ItemKind::ExecCommand {
                    f.attack.insert("T1609".into());
                    Detector::Exec
                } else {
                    Detector::Novelty
                };
                f.add(det, Severity::Medium, threshold + 1.5);
                f.novel.push(NovelEvidence {
                    kind: p.kind.as_str().into(),
                    value: p.value,
                    replica_support: support,
                    replicas: live,
                    phase: Phase::Learning.as_str().into(),
                });
                late.push((Arc::clone(&r.cref), f));
            }
        }
        let quiet = cfg.incident_quiet_ms;
        if let Some(a) = self.state.incidents.record(&obs.container, &key, finding, now, quiet) {
            out.push(a);
        }
        for (c, f) in late {
            if let Some(a) = self.state.incidents.record(&c, &key, f, now, quiet) {
                out.push(a);
            }
        }
        self.state.since_housekeeping += 1;
        if self.state.since_housekeeping >= HOUSEKEEPING_EVERY {
            self.housekeeping();
        }
    }

    fn ensure_group(&mut self, key: &str, c: &ContainerRef, now: i64) {
        if self.state.groups.contains_key(key) {
            return;
        }
        let repo = c.repository().to_owned();
        // A new digest of a known repository is a rollout: inherit its baseline.
        let baseline = match self
            .state
            .repos
            .get(&repo)
            .and_then(|prev| self.state.groups.get(prev))
        {
            Some(prev) => prev.baseline.inherit(key, now),
            None => GroupBaseline::new(key, repo.clone(), now),
        };
        self.state.repos.insert(repo, key.to_owned());
        self.state
            .groups
            .insert(key.to_owned(), GroupState::new(baseline, now));
    }

    fn housekeeping(&mut self) {
        self.state.since_housekeeping = 0;
        let now = self.state.now_ms;
        let keep_replicas = (self.cfg.replica_ttl_ms * 10).max(self.cfg.incident_quiet_ms * 2);
        for g in self.state.groups.values_mut() {
            g.evict_replicas(now, keep_replicas);
        }
        let idle = self.cfg.group_idle_ms;
        self.state.groups.retain(|_, g| now - g.last_seen_ms <= idle);
        let groups = &self.state.groups;
        self.state.repos.retain(|_, k| groups.contains_key(k));
        self.state.incidents.close_quiet(now, self.cfg.incident_quiet_ms);
    }
}

#[allow(clippy::too_many_arguments)]
fn score_metrics(
    group: &mut GroupState,
    id: &str,
    metrics: &[(String, f64)],
    now: i64,
    phase: Phase,
    cfg: &DetectConfig,
    scratch: &mut Vec<f64>,
    finding: &mut Finding,
) {
    let live = group.live_count(now, cfg);
    let peer_mode = live >= cfg.min_peers;
    let tests_per_metric = if peer_mode { 1.0 } else { 2.0 };
    let (threshold, replica_hash) = match group.replicas.get_mut(id) {
        Some(r) => {
            r.rate.record(metrics.len() as f64 * tests_per_metric, now);
            (
                calibrate::threshold(r.rate.per_day(), cfg.false_alerts_per_container_day),
                r.hash,
            )
        }
        None => return,
    };
    let _ = replica_hash;
    finding.threshold = threshold;
    for (name, x) in metrics {
        let x = *x;
        if !x.is_finite() {
            continue;
        }
        let Some(slot) = group.baseline.feature_slot(name, &cfg.baseline) else {
            continue;
        };
        let prev = group
            .replicas
            .get(id)
            .and_then(|r| r.latest.get(slot).copied().flatten());
        let peers = if peer_mode {
            group.peer_stats(slot, now, cfg, scratch)
        } else {
            None
        };
        let Some((fname, fb)) = group.baseline.feature_at_mut(slot) else {
            continue;
        };
        let scoring = phase != Phase::Warmup;
        let step = prev
            .filter(|(_, ts)| now > *ts && now - ts <= MAX_STEP_GAP_MS)
            .map(|(v, _)| (x - v).abs());
        let rel = peers.map(|p| (x - p.median) / (p.median.abs() + p.spread + fb.resolution));
        let mut surprise = 0.0;
        let mut detector = Detector::Baseline;
        let mut step_finding = None;
        if scoring && fb.values.count() >= cfg.min_samples {
            let sb = fb.value_surprise(x);
            match rel {
                Some(rel) if fb.peer_dev.count() >= cfg.min_samples => {
                    // Unlike its peers *and* unlike the group's history: a fleet-wide
                    // surge moves the peers too; a mode switch stays within history.
                    surprise = fb.peer_surprise(rel).min(sb);
                    detector = Detector::Peer;
                }
                Some(_) => {}
                None => {
                    surprise = sb;
                    if let Some(d) = step
                        && fb.steps.count() >= cfg.min_samples
                    {
                        let ss = fb.step_surprise(d);
                        if ss > surprise {
                            surprise = ss;
                            detector = Detector::Step;
                            step_finding = Some(d);
                        }
                    }
                }
            }
        }
        let anomalous = surprise >= threshold;
        let w = if anomalous { cfg.anomalous_learn_weight } else { 1.0 };
        if anomalous {
            finding.add(detector, numeric_severity(surprise, threshold), surprise);
            finding.features.push(FeatureEvidence {
                name: fname.to_owned(),
                value: x,
                expected: fb.expected_range().map(|(lo, hi)| [lo, hi]),
                peers,
                step: step_finding,
                surprise: (surprise * 100.0).round() / 100.0,
            });
        }
        fb.values.insert(x, now, w);
        if let Some(rel) = rel {
            fb.peer_dev.insert(rel, now, w);
        }
        if let Some(d) = step {
            fb.steps.insert(d, now, w);
        }
        if let Some(r) = group.replicas.get_mut(id) {
            if r.latest.len() <= slot {
                r.latest.resize(slot + 1, None);
            }
            r.latest[slot] = Some((x, now));
        }
    }
}

fn score_event(
    group: &mut GroupState,
    id: &str,
    ev: &Event,
    now: i64,
    phase: Phase,
    cfg: &DetectConfig,
    finding: &mut Finding,
) {
    let live = group.live_count(now, cfg);
    let Some(r) = group.replicas.get_mut(id) else {
        return;
    };
    let threshold = calibrate::threshold(r.rate.per_day(), cfg.false_alerts_per_container_day);
    finding.threshold = threshold;
    let hash = r.hash;
    match ev {
        Event::Start { privileged } => {
            if r.died {
                r.restarts.push(now);
            }
            r.alive = true;
            r.died = false;
            if *privileged == Some(true) {
                finding.add(Detector::Privileged, Severity::High, threshold + 3.0);
                finding.events.push("started privileged".into());
                finding.attack.insert("T1611".into());
            }
        }
        Event::Restart => r.restarts.push(now),
        Event::Die { exit_code } => {
            r.alive = false;
            r.died = true;
            let _ = exit_code;
        }
        Event::Oom => {
            finding.add(Detector::Oom, Severity::Medium, threshold + 1.5);
            finding.events.push("killed by the OOM killer".into());
        }
        _ => {}
    }
    r.restarts.retain(|t| now - t <= cfg.restart_window_ms);
    if matches!(ev, Event::Start { .. } | Event::Restart) && r.restarts.len() >= cfg.restart_loop_count {
        finding.add(Detector::RestartLoop, Severity::Medium, threshold + 1.5);
        finding.events.push(format!(
            "restarted {} times within {} minutes",
            r.restarts.len(),
            cfg.restart_window_ms / 60_000
        ));
    }
    if let Event::Falco { priority, tags, .. } = ev {
        let rank = falco_rank(priority);
        if rank >= 5 {
            finding.add(Detector::Falco, Severity::High, threshold + 3.0);
        }
        if rank >= 5 || matches!(ev, Event::Falco { .. }) {
            // Techniques are recorded only if something alerts on this event.
            for t in attack_ids(tags) {
                finding.attack.insert(t.clone());
            }
        }
    }
    for (kind, value) in items_of(ev) {
        let prior = group
            .baseline
            .items
            .observe(kind, &value, hash, now, cfg.baseline.max_items);
        let verdict = judge(kind, &prior, phase, live, cfg.min_peers);
        let (det, sev, score) = match verdict {
            Verdict::Quiet => continue,
            Verdict::Corroborate => {
                group.add_pending(Pending {
                    container_id: id.to_owned(),
                    kind,
                    value,
                    deadline_ms: now + cfg.corroboration_ms,
                });
                continue;
            }
            Verdict::Novel => (Detector::Novelty, Severity::High, threshold + 3.0),
            Verdict::LoneExec => (Detector::Exec, Severity::Medium, threshold + 1.5),
        };
        let det = if kind == ItemKind::ExecCommand {
            finding.attack.insert("T1609".into());
            Detector::Exec
        } else {
            det
        };
        let sev = match ev {
            Event::Falco { priority, .. } if falco_rank(priority) >= 4 => sev.max(Severity::High),
            _ => sev,
        };
        finding.add(det, sev, score);
        finding.novel.push(NovelEvidence {
            kind: kind.as_str().into(),
            value,
            replica_support: prior.stats.as_ref().map_or(0, |s| s.support_excluding(hash)),
            replicas: live,
            phase: phase.as_str().into(),
        });
    }
    if finding.is_empty() {
        finding.attack.clear();
    }
}
