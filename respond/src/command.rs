//! The wire records of the response loop: a [`Command`] on `herd.actions` (key = host),
//! published by the worker that evaluated the policy, and a [`Response`] on
//! `herd.responses` (key = host), published by whoever decided or executed it. Both are
//! public contracts (docs/formats.md, "Response records").

use herd_detect::Alert;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version of the command and response records. A reader refuses a newer one instead of
/// guessing what its fields mean.
pub const FORMAT: u32 = 1;

/// What to do to a container. Policies name them in this order of escalation: evidence
/// first, containment second, destruction never by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Collect the evidence bundle (inspect, processes, filesystem diff, logs, stats,
    /// the observations around the alert; optionally an export and a commit).
    Capture {
        /// Log lines to keep from the end, whatever the alert window holds.
        #[serde(default = "default_logs_tail")]
        logs_tail: u32,
        /// Also export the container's filesystem as a tar (can be large).
        #[serde(default)]
        export: bool,
        /// Also commit the container to an image tagged `herd-evidence:<incident>`.
        #[serde(default)]
        commit: bool,
    },
    /// Freeze every process of the container (cgroup freezer); `unpause` thaws it.
    Pause,
    /// Thaw a paused container.
    Unpause,
    /// Disconnect the container from every network, remembering them for `release`.
    Isolate,
    /// Reconnect the networks `isolate` took away.
    Release,
    /// Stop the container (SIGTERM, then SIGKILL after the grace period).
    Stop {
        /// Seconds between SIGTERM and SIGKILL.
        #[serde(default = "default_grace_s")]
        grace_s: u32,
    },
    /// Restart the container.
    Restart {
        /// Seconds between SIGTERM and SIGKILL.
        #[serde(default = "default_grace_s")]
        grace_s: u32,
    },
    /// Send a signal (SIGKILL unless given).
    Kill {
        /// Signal name, `SIGKILL` by default.
        #[serde(default)]
        signal: Option<String>,
    },
    /// POST the alert as JSON to a webhook (the agent's allow-list must hold its URL).
    Notify {
        /// The webhook's URL.
        url: String,
    },
    /// Not a policy action: tells the agent of an alert, so that it samples the
    /// container every second for a while, keeps its inspect document and logs at hand,
    /// and captures evidence if it dies or is OOM-killed.
    Focus,
    /// Not a policy action: the worker's observations after the alert, added to a
    /// captured bundle once the after-window has passed.
    Attach,
}

/// Five hundred lines: a screenful of context before an alert, kilobytes not megabytes.
fn default_logs_tail() -> u32 {
    500
}

/// Docker's own default grace period.
fn default_grace_s() -> u32 {
    10
}

impl Action {
    /// The action's name (`kind` on the wire, the `action` label in metrics).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Capture { .. } => "capture",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Isolate => "isolate",
            Action::Release => "release",
            Action::Stop { .. } => "stop",
            Action::Restart { .. } => "restart",
            Action::Kill { .. } => "kill",
            Action::Notify { .. } => "notify",
            Action::Focus => "focus",
            Action::Attach => "attach",
        }
    }

    /// Whether the action takes a replica out of service (the quorum guard counts these).
    pub fn contains(&self) -> bool {
        matches!(
            self,
            Action::Pause
                | Action::Isolate
                | Action::Stop { .. }
                | Action::Restart { .. }
                | Action::Kill { .. }
        )
    }

    /// Whether the action gives a replica back (`unpause`, `release`).
    pub fn releases(&self) -> bool {
        matches!(self, Action::Unpause | Action::Release)
    }
}

/// One command on `herd.actions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    /// [`FORMAT`].
    pub format: u32,
    /// `<incident_id>/<action>`: the idempotence key. A redelivered command with an id
    /// already executed does nothing.
    pub id: String,
    /// The incident.
    pub incident_id: String,
    /// What to do.
    pub action: Action,
    /// Decide and record, but change nothing.
    pub dry_run: bool,
    /// The agent gives up on the action after this long (the response says so).
    pub timeout_ms: u64,
    /// The host whose agent executes it (also the record key).
    pub host: String,
    /// Full container id.
    pub container_id: String,
    /// Container name (display only: chosen by whoever runs the container).
    pub container_name: String,
    /// Peer group.
    pub group: String,
    /// The policy that asked for it (empty for `focus` and `attach`).
    pub policy: String,
    /// Event time of the alert, epoch milliseconds.
    pub alert_ms: i64,
    /// The alert, for `capture` (its manifest records it) and `notify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Box<Alert>>,
    /// Where the bundle goes, for `capture` and `attach` (the alert names the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Observations of the container from the worker's ring buffer, as native lines:
    /// before the alert for `capture`, after it for `attach`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<Box<RawValue>>,
}

impl Command {
    /// The idempotence key of an action on an incident.
    pub fn key(incident_id: &str, action: &Action) -> String {
        format!("{incident_id}/{}", action.name())
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Dry run: recorded what would have been done.
    DryRun,
    /// Already done for this incident (a redelivered command).
    Duplicate,
    /// Not done on purpose: a quorum guard, a rate limit, an allow-list.
    Refused,
    /// Tried and failed (after the retries that made sense).
    Failed,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::DryRun => "dry_run",
            Outcome::Duplicate => "duplicate",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One record on `herd.responses`: the audit trail of every decision and action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`FORMAT`].
    pub format: u32,
    /// The command's id (`<incident_id>/<action>`).
    pub command_id: String,
    /// The incident.
    pub incident_id: String,
    /// The action's name.
    pub action: String,
    /// Host.
    pub host: String,
    /// Full container id.
    pub container_id: String,
    /// The policy that asked for it.
    pub policy: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or failed, as a bounded token (`quorum`, `rate_limit`,
    /// `not_allowed`, `not_found`, `docker_unreachable`, `timeout`, `docker_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The error or refusal in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Attempts made (0 when refused before trying).
    pub attempts: u32,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// When execution started (RFC 3339, wall clock of the deciding process).
    pub started: String,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
    /// The bundle written, for `capture` and `attach`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Who decided or executed it: `herd-agent/<version>` or `herd-worker/<version>`.
    pub by: String,
    /// Action-specific facts (the networks `isolate` disconnected, the artifacts
    /// `capture` wrote, …).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Response {
    /// A response to `cmd` with the given outcome and nothing else filled in.
    pub fn to(cmd: &Command, outcome: Outcome, by: &str) -> Self {
        Self {
            format: FORMAT,
            command_id: cmd.id.clone(),
            incident_id: cmd.incident_id.clone(),
            action: cmd.action.name().to_owned(),
            host: cmd.host.clone(),
            container_id: cmd.container_id.clone(),
            policy: cmd.policy.clone(),
            outcome,
            reason: None,
            detail: None,
            attempts: 0,
            dry_run: cmd.dry_run,
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            duration_ms: 0,
            evidence: None,
            by: by.to_owned(),
            details: serde_json::Value::Null,
        }
    }

    /// With a reason and its words.
    pub fn because(mut self, reason: &str, detail: impl Into<String>) -> Self {
        self.reason = Some(reason.to_owned());
        self.detail = Some(detail.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_with_defaults() {
        let a: Action = serde_json::from_str(r#"{"kind":"capture"}"#).expect("test fixture");
        assert_eq!(
            a,
            Action::Capture {
                logs_tail: 500,
                export: false,
                commit: false
            }
        );
        let s: Action =
            serde_json::from_str(r#"{"kind":"stop","grace_s":3}"#).expect("test fixture");
        assert_eq!(s, Action::Stop { grace_s: 3 });
        assert!(s.contains() && !s.releases());
        assert!(Action::Release.releases());
        assert!(serde_json::from_str::<Action>(r#"{"kind":"stop","grace":3}"#).is_err());
        assert!(serde_json::from_str::<Action>(r#"{"kind":"rm"}"#).is_err());
        let back: Action = serde_json::from_str(&serde_json::to_string(&a).expect("test fixture"))
            .expect("test fixture");
        assert_eq!(back, a);
    }

    #[test]
    fn command_key_is_incident_and_action() {
        assert_eq!(Command::key("i-1", &Action::Pause), "i-1/pause");
    }
}
