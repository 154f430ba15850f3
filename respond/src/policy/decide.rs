//! The decision: from an alert line to the commands it causes, with every guard applied.
//!
//! Pure and deterministic: time is the alert's event time, the live replicas come from
//! the detection engine, and the state (actions issued per incident, containments in
//! force per group, rate-limit buckets) lives here. The worker owning a group owns its
//! decider state, so quorum and per-group limits need no coordination.

use std::collections::HashMap;

use herd_detect::Alert;

use super::{PolicyFile, Step};
use crate::command::{Action, Command, FORMAT};

/// A command not issued on purpose, recorded on `herd.responses`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The command that would have been issued.
    pub command: Command,
    /// `quorum`, `rate_limit` or `no_host`.
    pub reason: &'static str,
    /// The numbers behind it.
    pub detail: String,
}

/// What one alert line causes.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Commands to publish on `herd.actions`, in order.
    pub commands: Vec<Command>,
    /// Commands refused by a guard.
    pub refusals: Vec<Refusal>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Incidents remembered for once-per-incident issuing are pruned beyond this many (the
/// oldest first); a day of incidents in a large fleet fits.
const MAX_INCIDENTS: usize = 100_000;

/// Evaluates policies on alert lines; see the module documentation.
#[derive(Debug, Clone)]
pub struct Decider {
    file: PolicyFile,
    /// Where bundles go (`file:///…`, `s3://…`), for the alert's `evidence` field.
    evidence_base: String,
    /// Incident → (last event time, names of the actions decided).
    issued: HashMap<String, (i64, Vec<&'static str>)>,
    /// Group → container → since when it is contained.
    contained: HashMap<String, HashMap<String, i64>>,
    buckets: HashMap<String, Bucket>,
}

impl Decider {
    /// A decider with a validated policy file. `evidence_base` is the bundle store's URL
    /// as the agents are configured with it.
    pub fn new(file: PolicyFile, evidence_base: impl Into<String>) -> Self {
        Self {
            file,
            evidence_base: evidence_base.into().trim_end_matches('/').to_owned(),
            issued: HashMap::new(),
            contained: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    /// Replaces the policies (a reload); what was issued and contained stays known.
    pub fn reload(&mut self, file: PolicyFile) {
        self.file = file;
    }

    /// The policies in force.
    pub fn policies(&self) -> &PolicyFile {
        &self.file
    }

    /// Where the bundle of an incident goes.
    pub fn evidence_location(&self, incident_id: &str) -> String {
        format!(
            "{}/{}/",
            self.evidence_base,
            crate::evidence::bundle_name(incident_id)
        )
    }

    /// Containments in force in a group.
    pub fn contained(&self, group: &str) -> usize {
        self.contained.get(group).map_or(0, HashMap::len)
    }

    /// Decides what an alert line causes. `live` are the container ids of the group's
    /// live replicas. When the policy captures evidence, `alert.evidence` is set to the
    /// bundle's location.
    pub fn decide(&mut self, alert: &mut Alert, live: &[&str]) -> Decision {
        let mut d = Decision::default();
        let now = alert_ms(alert);
        let first = !self.issued.contains_key(&alert.incident_id);
        if first {
            self.prune(now);
        }
        let entry = self
            .issued
            .entry(alert.incident_id.clone())
            .or_insert_with(|| (now, Vec::new()));
        entry.0 = entry.0.max(now);
        let already: Vec<&'static str> = entry.1.clone();

        let policy = self.file.first_match(alert).cloned();
        let capture = policy.as_ref().is_some_and(|p| {
            p.actions
                .iter()
                .any(|s| matches!(s.action, Action::Capture { .. }))
        });
        if capture || already.contains(&"capture") {
            alert.evidence = Some(self.evidence_location(&alert.incident_id));
        }
        let host = alert.host.clone().filter(|h| !h.is_empty());
        let make = |step: &Step, name: &str, evidence: Option<String>| Command {
            format: FORMAT,
            id: Command::key(&alert.incident_id, &step.action),
            incident_id: alert.incident_id.clone(),
            action: step.action.clone(),
            dry_run: step.dry_run,
            timeout_ms: step.timeout_ms,
            host: host.clone().unwrap_or_default(),
            container_id: alert.container_id.clone(),
            container_name: alert.container_name.clone(),
            group: alert.group.clone(),
            policy: name.to_owned(),
            alert_ms: now,
            alert: matches!(step.action, Action::Capture { .. } | Action::Notify { .. })
                .then(|| Box::new(alert.clone())),
            evidence,
            observations: Vec::new(),
        };

        let mut decided = Vec::new();
        if first && host.is_some() {
            let focus = Step {
                action: Action::Focus,
                dry_run: false,
                timeout_ms: super::DEFAULT_TIMEOUT_MS,
            };
            d.commands.push(make(&focus, "", None));
        }
        let Some(policy) = policy else {
            return d;
        };
        for step in &policy.actions {
            let name = step.action.name();
            if already.contains(&name) {
                continue;
            }
            decided.push(name);
            let evidence = matches!(step.action, Action::Capture { .. })
                .then(|| self.evidence_location(&alert.incident_id));
            let cmd = make(step, &policy.name, evidence);
            if host.is_none() {
                d.refusals.push(Refusal {
                    command: cmd,
                    reason: "no_host",
                    detail: "the alert names no host, so no agent can act on it".into(),
                });
                continue;
            }
            if let Some((reason, detail)) = self.guard(&cmd, live, now) {
                d.refusals.push(Refusal {
                    command: cmd,
                    reason,
                    detail,
                });
                continue;
            }
            if !cmd.dry_run {
                let set = self.contained.entry(cmd.group.clone()).or_default();
                if cmd.action.contains() {
                    set.insert(cmd.container_id.clone(), now);
                } else if cmd.action.releases() {
                    set.remove(&cmd.container_id);
                }
            }
            d.commands.push(cmd);
        }
        if let Some(e) = self.issued.get_mut(&alert.incident_id) {
            e.1.extend(decided);
        }
        d
    }

    /// The quorum guard and the per-group rate limit; `Some((reason, detail))` refuses.
    fn guard(&mut self, cmd: &Command, live: &[&str], now: i64) -> Option<(&'static str, String)> {
        let g = &self.file.guards;
        if cmd.action.contains() {
            let memory = g.containment_memory_ms;
            let set = self.contained.entry(cmd.group.clone()).or_default();
            // A containment ends when released, when the container leaves the live set
            // (stopped, gone) after its memory, or when the memory runs out.
            set.retain(|id, since| {
                now - *since <= memory && (live.contains(&id.as_str()) || now - *since <= 60_000)
            });
            let already_held = set.contains_key(&cmd.container_id);
            if !already_held {
                let held = set.keys().filter(|id| live.contains(&id.as_str())).count();
                let is_live = live.contains(&cmd.container_id.as_str());
                let running_after = live.len().saturating_sub(held + usize::from(is_live));
                let share = (held + 1) as f64 / live.len().max(1) as f64;
                if running_after < g.min_running_replicas {
                    return Some((
                        "quorum",
                        format!(
                            "{} of {} live replicas already contained; containing this one would leave {running_after} running (minimum {})",
                            held,
                            live.len(),
                            g.min_running_replicas
                        ),
                    ));
                }
                if share > g.max_contained_share {
                    return Some((
                        "quorum",
                        format!(
                            "{} of {} live replicas would be contained at once ({:.0}% > {:.0}%)",
                            held + 1,
                            live.len(),
                            share * 100.0,
                            g.max_contained_share * 100.0
                        ),
                    ));
                }
            }
        }
        let per_min = f64::from(g.group_actions_per_minute);
        let b = self.buckets.entry(cmd.group.clone()).or_insert(Bucket {
            tokens: per_min,
            at_ms: now,
        });
        let elapsed = (now - b.at_ms).max(0) as f64;
        b.tokens = (b.tokens + elapsed * per_min / 60_000.0).min(per_min);
        b.at_ms = b.at_ms.max(now);
        if b.tokens < 1.0 {
            return Some((
                "rate_limit",
                format!(
                    "group {} issued its {} actions of the last minute",
                    cmd.group, g.group_actions_per_minute
                ),
            ));
        }
        b.tokens -= 1.0;
        None
    }

    /// Forgets the oldest incidents beyond [`MAX_INCIDENTS`] and idle buckets.
    fn prune(&mut self, now: i64) {
        if self.issued.len() >= MAX_INCIDENTS {
            let mut ages: Vec<i64> = self.issued.values().map(|(t, _)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.issued.retain(|_, (t, _)| *t > cut);
        }
        if self.buckets.len() > MAX_INCIDENTS {
            self.buckets.retain(|_, b| now - b.at_ms < 60_000);
        }
        self.contained.retain(|_, s| !s.is_empty());
    }
}

/// The alert's event time in epoch milliseconds (0 when unreadable: the decision is
/// then made as if at the epoch, which only affects rate limiting).
fn alert_ms(a: &Alert) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&a.ts).map_or(0, |t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_detect::{Detector, Severity};

    use super::*;

    fn alert(incident: &str, container: &str, ts_s: i64, sev: Severity) -> Alert {
        Alert {
            incident_id: incident.into(),
            ts: chrono::DateTime::from_timestamp(1_800_000_000 + ts_s, 0)
                .expect("test fixture")
                .to_rfc3339(),
            seq: 0,
            container_id: container.into(),
            container_name: container.into(),
            group: "shop/web@sha256:ab".into(),
            image: "shop/web:1".into(),
            host: Some("node-1".into()),
            severity: sev,
            score: 9.0,
            threshold: 6.0,
            detectors: vec![Detector::Peer],
            explanation: String::new(),
            features: vec![],
            novel: vec![],
            events: vec![],
            attack: vec![],
            labels: BTreeMap::new(),
            evidence: None,
        }
    }

    fn decider(extra: &str) -> Decider {
        let text = format!(
            "{extra}\n[[policy]]\nname = \"contain\"\nmatch = {{ severity = \"high\" }}\nactions = [{{ action = \"capture\" }}, {{ action = \"pause\" }}]\n"
        );
        Decider::new(
            PolicyFile::parse(&text).expect("test fixture"),
            "file:///ev",
        )
    }

    fn names(d: &Decision) -> Vec<&str> {
        d.commands.iter().map(|c| c.action.name()).collect()
    }

    #[test]
    fn issues_focus_then_policy_actions_once_per_incident() {
        let mut dec = decider("");
        let live = ["a", "b", "c"];
        let mut a = alert("i1", "a", 0, Severity::Medium);
        let d = dec.decide(&mut a, &live);
        assert_eq!(names(&d), ["focus"], "medium does not match");
        assert!(a.evidence.is_none());
        let mut a = alert("i1", "a", 10, Severity::High);
        let d = dec.decide(&mut a, &live);
        assert_eq!(names(&d), ["capture", "pause"]);
        assert_eq!(a.evidence.as_deref(), Some("file:///ev/i1/"));
        assert_eq!(d.commands[0].evidence.as_deref(), Some("file:///ev/i1/"));
        assert!(d.commands[0].alert.is_some() && d.commands[1].alert.is_none());
        assert_eq!(d.commands[1].id, "i1/pause");
        let mut a = alert("i1", "a", 20, Severity::Critical);
        let d = dec.decide(&mut a, &live);
        assert!(d.commands.is_empty() && d.refusals.is_empty());
        assert_eq!(a.evidence.as_deref(), Some("file:///ev/i1/"));
    }

    #[test]
    fn quorum_never_contains_the_last_replica_nor_too_many() {
        let mut dec = decider("");
        // A single-replica group: capture yes, pause refused.
        let d = dec.decide(&mut alert("solo", "a", 0, Severity::High), &["a"]);
        assert_eq!(names(&d), ["focus", "capture"]);
        assert_eq!(d.refusals.len(), 1);
        assert_eq!(d.refusals[0].reason, "quorum");
        assert_eq!(d.refusals[0].command.action, Action::Pause);

        // Four replicas, half at most: two pauses pass, the third is refused.
        let mut dec = decider("");
        let live = ["a", "b", "c", "d"];
        for (i, c) in ["a", "b"].iter().enumerate() {
            let d = dec.decide(&mut alert(&format!("i{i}"), c, 0, Severity::High), &live);
            assert!(d.refusals.is_empty(), "{d:?}");
        }
        assert_eq!(dec.contained("shop/web@sha256:ab"), 2);
        let d = dec.decide(&mut alert("i9", "c", 0, Severity::High), &live);
        assert_eq!(d.refusals[0].reason, "quorum");
        assert!(
            d.refusals[0].detail.contains("3 of 4"),
            "{}",
            d.refusals[0].detail
        );
    }

    #[test]
    fn dry_runs_do_not_count_as_contained() {
        let text = "[[policy]]\nname = \"p\"\nactions = [{ action = \"pause\", dry_run = true }]";
        let mut dec = Decider::new(PolicyFile::parse(text).expect("test fixture"), "file:///ev");
        let live = ["a", "b"];
        for (i, c) in ["a", "b"].iter().enumerate() {
            let d = dec.decide(
                &mut alert(&format!("i{i}"), c, 0, Severity::Low),
                &["a", "b"],
            );
            assert_eq!(names(&d), ["focus", "pause"], "{live:?}");
            assert!(d.commands[1].dry_run);
        }
        assert_eq!(dec.contained("shop/web@sha256:ab"), 0);
    }

    #[test]
    fn group_rate_limit_refills_in_event_time() {
        let mut dec = decider("[guards]\ngroup_actions_per_minute = 2\nmax_contained_share = 1.0");
        let live: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let live: Vec<&str> = live.iter().map(String::as_str).collect();
        let d = dec.decide(&mut alert("i0", "c0", 0, Severity::High), &live);
        assert_eq!(names(&d), ["focus", "capture", "pause"]);
        let d = dec.decide(&mut alert("i1", "c1", 1, Severity::High), &live);
        assert_eq!(names(&d), ["focus"]);
        assert!(d.refusals.iter().all(|r| r.reason == "rate_limit"));
        // A minute later the bucket is full again.
        let d = dec.decide(&mut alert("i2", "c2", 62, Severity::High), &live);
        assert_eq!(names(&d), ["focus", "capture", "pause"]);
    }

    #[test]
    fn no_host_refuses_everything() {
        let mut dec = decider("");
        let mut a = alert("i", "a", 0, Severity::High);
        a.host = None;
        let d = dec.decide(&mut a, &["a", "b", "c"]);
        assert!(d.commands.is_empty());
        assert_eq!(d.refusals.len(), 2);
        assert!(d.refusals.iter().all(|r| r.reason == "no_host"));
    }
}
