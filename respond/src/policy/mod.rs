//! Response policies: which alerts lead to which actions, and the guards around them.
//!
//! A policy file (TOML) holds an ordered list of policies; the **first** whose matcher
//! accepts an alert decides its actions, in the order written (so a catch-all goes
//! last). Alerts update as an incident grows (a later line may be more severe), so every
//! line is evaluated, and each action is issued at most once per incident.
//!
//! ```toml
//! [guards]
//! max_contained_share = 0.5   # of a group's live replicas, at once
//! min_running_replicas = 1    # never contain the last one
//! group_actions_per_minute = 20
//!
//! [[policy]]
//! name = "contain-miners"
//! match = { severity = "high", detectors = ["peer"], group = "shop/*" }
//! actions = [
//!   { action = "capture" },
//!   { action = "pause", timeout_ms = 5000 },
//!   { action = "stop", dry_run = true },
//! ]
//! ```
//!
//! - [`glob`]: the matcher language;
//! - [`decide`]: the stateful decision (once per incident and action, quorum guards,
//!   per-group rate limits), pure: event time comes with the alert.

pub mod decide;
pub mod glob;

use std::collections::BTreeMap;

use herd_baseline::ItemKind;
use herd_detect::{Alert, Detector, Severity};
use serde::{Deserialize, Serialize};

use crate::command::Action;
use crate::{Error, Result};

pub use decide::{Decider, Decision, Refusal};

/// A whole policy file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Guards that apply to every policy.
    #[serde(default)]
    pub guards: Guards,
    /// The policies, first match wins.
    #[serde(default, rename = "policy")]
    pub policies: Vec<Policy>,
}

/// Guards around containment and the pace of actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guards {
    /// Most of a group's live replicas contained (paused, isolated, stopped, restarted,
    /// killed) at once. Half keeps a service up while one bad replica of two is held.
    pub max_contained_share: f64,
    /// Fewest replicas of a group left running after a containment. One: never the last.
    pub min_running_replicas: usize,
    /// Actions issued per group per minute (event time), `focus`/`attach` excluded. An
    /// incident storm in one group cannot turn into a storm of actions.
    pub group_actions_per_minute: u32,
    /// A containment is remembered this long (event time) unless released; a stopped
    /// container leaves the live set earlier and stops counting then.
    pub containment_memory_ms: i64,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            max_contained_share: 0.5,
            min_running_replicas: 1,
            group_actions_per_minute: 20,
            containment_memory_ms: 3_600_000,
        }
    }
}

/// One policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Name, recorded with every command it issues.
    pub name: String,
    /// Which alerts it takes.
    #[serde(rename = "match", default)]
    pub matcher: Matcher,
    /// What it does, in order.
    #[serde(default)]
    pub actions: Vec<Step>,
}

/// An alert matcher: every field given must accept the alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Matcher {
    /// Lowest severity.
    pub severity: Option<Severity>,
    /// Any of these detectors (by name: `peer`, `exec`, `novelty`, …).
    pub detectors: Vec<String>,
    /// Glob over the peer-group key.
    pub group: Option<String>,
    /// Glob over the image reference.
    pub image: Option<String>,
    /// Label name → glob over its value; every one must match.
    pub labels: BTreeMap<String, String>,
    /// Glob over the image's repository (the reference without tag or digest): every
    /// version of one image, and no other image whose name starts the same.
    pub repository: Option<String>,
    /// Globs over deviating feature names; any one must name a feature of the alert
    /// (`cpu_cores`, `net_tx_bytes_per_s`, …).
    pub features: Vec<String>,
    /// `KIND:GLOB` over the alert's novel items (`executable:/tmp/*`,
    /// `destination:203.0.113.*`); any one must match one of them.
    pub items: Vec<String>,
}

impl Matcher {
    /// Whether the alert is accepted.
    pub fn accepts(&self, a: &Alert) -> bool {
        self.severity.is_none_or(|s| a.severity >= s)
            && (self.detectors.is_empty()
                || a.detectors
                    .iter()
                    .any(|d| self.detectors.iter().any(|n| n == d.as_str())))
            && self
                .group
                .as_deref()
                .is_none_or(|g| glob::matches(g, &a.group))
            && self
                .image
                .as_deref()
                .is_none_or(|g| glob::matches(g, &a.image))
            && self.labels.iter().all(|(k, g)| {
                a.labels
                    .get(k)
                    .is_some_and(|v| glob::matches(g, v.as_str()))
            })
            && self
                .repository
                .as_deref()
                .is_none_or(|g| glob::matches(g, herd_ingest::model::repository_of(&a.image)))
            && (self.features.is_empty()
                || a.features
                    .iter()
                    .any(|f| self.features.iter().any(|g| glob::matches(g, &f.name))))
            && (self.items.is_empty()
                || a.novel.iter().any(|n| {
                    self.items.iter().any(|i| {
                        i.split_once(':')
                            .is_some_and(|(kind, g)| kind == n.kind && glob::matches(g, &n.value))
                    })
                }))
    }
}

/// One step of a policy: an action and how to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "toml::Table", into = "toml::Table")]
pub struct Step {
    /// What to do.
    pub action: Action,
    /// Decide and record, but change nothing.
    pub dry_run: bool,
    /// The agent gives up after this long.
    pub timeout_ms: u64,
}

/// Thirty seconds: a capture with logs and a diff of a busy container takes seconds; an
/// export can take longer and should be given its own timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

impl TryFrom<toml::Table> for Step {
    type Error = String;

    fn try_from(mut t: toml::Table) -> std::result::Result<Self, String> {
        let dry_run = match t.remove("dry_run") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(v) => return Err(format!("dry_run must be true or false, not {v}")),
        };
        let timeout_ms = match t.remove("timeout_ms") {
            None => DEFAULT_TIMEOUT_MS,
            Some(toml::Value::Integer(n)) if n > 0 => n as u64,
            Some(v) => return Err(format!("timeout_ms must be a positive integer, not {v}")),
        };
        let kind = t.remove("action").ok_or("a step needs `action = \"…\"`")?;
        t.insert("kind".into(), kind);
        let keys: Vec<String> = t.keys().cloned().collect();
        let action: Action = toml::Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        // serde lets an action without fields ignore extra keys; a typo must not pass.
        let known = toml::Table::try_from(&action).unwrap_or_default();
        if let Some(k) = keys.iter().find(|k| !known.contains_key(k.as_str())) {
            return Err(format!(
                "unknown field `{k}` for action `{}`",
                action.name()
            ));
        }
        if matches!(action, Action::Focus | Action::Attach) {
            return Err(format!(
                "`{}` is internal, not a policy action",
                action.name()
            ));
        }
        Ok(Step {
            action,
            dry_run,
            timeout_ms,
        })
    }
}

impl From<Step> for toml::Table {
    fn from(s: Step) -> Self {
        let mut t = toml::Table::try_from(&s.action).unwrap_or_default();
        if let Some(kind) = t.remove("kind") {
            t.insert("action".into(), kind);
        }
        t.insert("dry_run".into(), toml::Value::Boolean(s.dry_run));
        t.insert(
            "timeout_ms".into(),
            toml::Value::Integer(i64::try_from(s.timeout_ms).unwrap_or(i64::MAX)),
        );
        t
    }
}

impl PolicyFile {
    /// Parses and validates a policy file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        f.validate()?;
        Ok(f)
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            sink: "policy file",
            source,
        })?;
        Self::parse(&text).map_err(|e| Error::Policy(format!("{}: {e}", path.display())))
    }

    /// Cross-field rules, each failing with the field it is about.
    pub fn validate(&self) -> Result<()> {
        let g = &self.guards;
        if !(g.max_contained_share > 0.0 && g.max_contained_share <= 1.0) {
            return Err(Error::Policy(
                "guards.max_contained_share must be in (0, 1]".into(),
            ));
        }
        if g.min_running_replicas == 0 {
            return Err(Error::Policy(
                "guards.min_running_replicas must be at least 1: herd never contains the last replica".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.policies {
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(Error::Policy(format!(
                    "policy names must be unique and not empty: {:?}",
                    p.name
                )));
            }
            for d in &p.matcher.detectors {
                if !Detector::ALL.iter().any(|k| k.as_str() == d) {
                    return Err(Error::Policy(format!(
                        "policy {:?}: unknown detector {d:?} (known: {})",
                        p.name,
                        Detector::ALL.map(Detector::as_str).join(", ")
                    )));
                }
            }
            for i in &p.matcher.items {
                let kind = i.split_once(':').map(|(k, _)| k);
                if !kind.is_some_and(|k| ItemKind::ALL.iter().any(|x| x.as_str() == k)) {
                    return Err(Error::Policy(format!(
                        "policy {:?}: item {i:?} must be KIND:GLOB, KIND one of {}",
                        p.name,
                        ItemKind::ALL.map(ItemKind::as_str).join(", ")
                    )));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for s in &p.actions {
                if !seen.insert(s.action.name()) {
                    return Err(Error::Policy(format!(
                        "policy {:?}: action {} listed twice (actions run once per incident)",
                        p.name,
                        s.action.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first policy that accepts the alert.
    pub fn first_match(&self, a: &Alert) -> Option<&Policy> {
        self.policies.iter().find(|p| p.matcher.accepts(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"
[guards]
max_contained_share = 0.5

[[policy]]
name = "miners"
match = { severity = "high", detectors = ["peer", "exec"], group = "shop/*", labels = { env = "prod*" } }
actions = [
  { action = "capture", logs_tail = 100 },
  { action = "pause", timeout_ms = 5000 },
  { action = "stop", dry_run = true, grace_s = 2 },
]

[[policy]]
name = "catch-all"
actions = [{ action = "capture" }]
"#;

    #[test]
    fn parses_and_matches_first_policy() {
        let f = PolicyFile::parse(SAMPLE).expect("test fixture");
        assert_eq!(f.policies.len(), 2);
        let p = &f.policies[0];
        assert_eq!(
            p.actions[0].action,
            Action::Capture {
                logs_tail: 100,
                export: false,
                commit: false
            }
        );
        assert_eq!(p.actions[1].timeout_ms, 5000);
        assert!(p.actions[2].dry_run);
        assert_eq!(p.actions[2].action, Action::Stop { grace_s: 2 });
    }

    #[test]
    fn rejects_typos_and_internal_actions() {
        for bad in [
            "[[policy]]\nname = \"a\"\nactions = [{ action = \"paus\" }]",
            "[[policy]]\nname = \"a\"\nactions = [{ action = \"pause\", dryrun = true }]",
            "[[policy]]\nname = \"a\"\nactions = [{ action = \"focus\" }]",
            "[[policy]]\nname = \"a\"\nmatch = { detector = [\"peer\"] }",
            "[[policy]]\nname = \"a\"\nmatch = { detectors = [\"per\"] }",
            "[[policy]]\nname = \"a\"\n[[policy]]\nname = \"a\"",
            "[guards]\nmin_running_replicas = 0",
            "[[policy]]\nname = \"a\"\nactions = [{ action = \"pause\" }, { action = \"pause\" }]",
        ] {
            assert!(PolicyFile::parse(bad).is_err(), "{bad}");
        }
    }

    /// The fields `herd policy from-incident` writes: the repository (every version of
    /// the image, not another image named alike), the deviating features and the novel
    /// items (`KIND:GLOB`); each must accept the alert. Every detector, the retrained
    /// structure's included, can be named.
    #[test]
    fn matches_repository_features_and_items() {
        let alert = |image: &str, feature: &str, item: (&str, &str)| -> Alert {
            serde_json::from_value(serde_json::json!({
                "incident_id": "i", "ts": "2026-12-05T10:00:00Z", "seq": 0,
                "container_id": "c", "container_name": "web-5", "group": "g",
                "image": image, "host": null, "severity": "high", "score": 9.0,
                "threshold": 6.0, "detectors": ["novelty", "structure"], "explanation": "",
                "features": [{"name": feature, "value": 1.0, "expected": null,
                              "peers": null, "surprise": 9.0}],
                "novel": [{"kind": item.0, "value": item.1, "replica_support": 0,
                           "replicas": 5, "phase": "locked"}],
                "events": [], "attack": [], "labels": {}
            }))
            .expect("test fixture")
        };
        let f = PolicyFile::parse(
            r#"
[[policy]]
name = "bookmark"
match = { repository = "shop/web", detectors = ["structure"], features = ["cpu_*"], items = ["executable:/tmp/*"] }
"#,
        )
        .expect("test fixture");
        let hit = alert("shop/web@sha256:aa", "cpu_cores", ("executable", "/tmp/x"));
        assert!(f.first_match(&hit).is_some());
        for miss in [
            alert("shop/webhook:1", "cpu_cores", ("executable", "/tmp/x")),
            alert("shop/web:2", "mem_bytes", ("executable", "/tmp/x")),
            alert("shop/web:2", "cpu_cores", ("process", "/tmp/x")),
            alert("shop/web:2", "cpu_cores", ("executable", "/usr/bin/x")),
        ] {
            assert!(f.first_match(&miss).is_none(), "{miss:?}");
        }
        let bad = "[[policy]]\nname = \"a\"\nmatch = { items = [\"binary:/tmp/*\"] }";
        assert!(PolicyFile::parse(bad).is_err());
    }

    #[test]
    fn steps_round_trip_through_toml() {
        let f = PolicyFile::parse(SAMPLE).expect("test fixture");
        let text = toml::to_string(&f).expect("test fixture");
        assert_eq!(PolicyFile::parse(&text).expect("test fixture"), f);
    }
}
