//! The agent's action executor: runs [`Command`]s on the local Docker engine and says
//! how each ended in a [`Response`].
//!
//! - **Idempotence** by command id (`<incident>/<action>`): ids executed are appended to
//!   a journal in the agent's state directory before the response is published, and a
//!   redelivered command with a known id answers `duplicate` without acting. Evidence is
//!   write-once besides, so even a lost journal cannot rewrite a bundle.
//! - **Dry run, timeout, retries:** every action can be a dry run; each has a timeout;
//!   failures that another attempt can fix (engine unreachable, a 5xx) are retried with
//!   back-off within the timeout, the others (container gone) are not.
//! - **Concurrency:** commands run concurrently; the caller keeps the commands of one
//!   container in order, and copies of one command never run at once.
//! - **Rate limit** per host: at most `max_actions_per_minute` policy actions.
//! - **Watches** (`focus`): the inspect document is taken at once and the logs are
//!   followed into a bounded buffer, so that a container that dies or is removed right
//!   after its alert still leaves its evidence; a `die` or `oom` of a watched container
//!   captures at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{
    KillContainerOptions, LogsOptions, RestartContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::capture::{Cached, CaptureSpec};
use crate::command::{Action, Command, Outcome, Response};
use crate::docker::classify;
use crate::evidence::Store;
use crate::{Error, Result};

/// How the executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// This host's name (commands for other hosts are not ours).
    pub host: String,
    /// Journal, isolation records.
    pub state_dir: PathBuf,
    /// The alert window before the alert: logs since then are captured.
    pub before_ms: i64,
    /// How long a watch (`focus`) lasts.
    pub focus_ms: u64,
    /// Most bytes of each log artifact and of a watch's log buffer.
    pub max_log_bytes: usize,
    /// Most bytes of a filesystem export.
    pub max_export_bytes: usize,
    /// Policy actions per minute on this host.
    pub max_actions_per_minute: u32,
    /// Webhooks `notify` may post to, as URLs (same scheme, host and port; the path
    /// or under it); empty allows none.
    pub webhook_allow: Vec<String>,
    /// Capture automatically when a watched container dies or is OOM-killed.
    pub capture_on_exit: bool,
}

/// The collector version recorded in manifests and responses.
pub fn collector() -> String {
    format!("herd-agent/{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug)]
struct Watch {
    incident_id: String,
    container_name: String,
    until: Instant,
    inspect: Option<Vec<u8>>,
    logs: Arc<Mutex<LogBuf>>,
    follower: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct LogBuf {
    bytes: VecDeque<u8>,
    truncated: bool,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Networks an `isolate` took away, kept for `release`.
#[derive(Debug, Serialize, Deserialize)]
struct Isolation {
    container_id: String,
    networks: Vec<(String, Option<EndpointSettings>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// See the module documentation.
pub struct Executor {
    docker: Docker,
    store: Store,
    cfg: ExecutorConfig,
    done: Mutex<HashSet<String>>,
    journal: Mutex<std::fs::File>,
    watches: Mutex<HashMap<String, Watch>>,
    bucket: Mutex<Bucket>,
    http: reqwest::Client,
    /// The collector's latest stats samples.
    latest_stats: Option<crate::capture::StatsSource>,
    /// Command ids executing now: a copy of a command (a redelivery, or the capture a
    /// container's death triggers while the policy's capture runs) waits for the first
    /// and then answers `duplicate`.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("cfg", &self.cfg)
            .field("store", &self.store)
            .field("watches", &lock(&self.watches).len())
            .field("executed", &lock(&self.done).len())
            .finish_non_exhaustive()
    }
}

/// Most ids the journal keeps (older ones are dropped when it is compacted at start).
const JOURNAL_KEEP: usize = 200_000;

impl Executor {
    /// An executor over an engine and a bundle store; reads the journal.
    pub fn new(docker: Docker, store: Store, cfg: ExecutorConfig) -> Result<Self> {
        let io = |source| Error::Io {
            sink: "agent state",
            source,
        };
        std::fs::create_dir_all(cfg.state_dir.join("isolated")).map_err(io)?;
        let path = cfg.state_dir.join("executed.journal");
        let mut ids: Vec<String> = match std::fs::read_to_string(&path) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        if ids.len() > JOURNAL_KEEP {
            ids.drain(..ids.len() - JOURNAL_KEEP);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, ids.join("\n") + "\n").map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(Self {
            docker,
            store,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(cfg.max_actions_per_minute),
                at: Instant::now(),
            }),
            cfg,
            done: Mutex::new(ids.into_iter().collect()),
            journal: Mutex::new(journal),
            watches: Mutex::new(HashMap::new()),
            http,
            inflight: Mutex::new(HashMap::new()),
            latest_stats: None,
        })
    }

    /// Where captures read the collector's latest stats sample from.
    pub fn with_stats_source(mut self, f: crate::capture::StatsSource) -> Self {
        self.latest_stats = Some(f);
        self
    }

    /// The bundle store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Containers watched now (the collector samples them every second).
    pub fn watched(&self) -> Vec<String> {
        let now = Instant::now();
        let mut w = lock(&self.watches);
        w.retain(|_, v| {
            let live = v.until > now;
            if !live {
                v.follower.abort();
            }
            live
        });
        w.keys().cloned().collect()
    }

    fn remember(&self, id: &str) -> Result<()> {
        let mut j = lock(&self.journal);
        writeln!(j, "{id}")
            .and_then(|()| j.sync_data())
            .map_err(|source| Error::Io {
                sink: "agent journal",
                source,
            })?;
        lock(&self.done).insert(id.to_owned());
        Ok(())
    }

    /// Runs one command and says how it ended. Never fails: every failure is an outcome.
    pub async fn execute(&self, cmd: &Command) -> Response {
        let span = tracing::info_span!(
            "action",
            action = cmd.action.name(),
            incident = %cmd.incident_id,
            container = %cmd.container_name,
            dry_run = cmd.dry_run
        );
        tracing::Instrument::instrument(self.execute_in_span(cmd), span).await
    }

    async fn execute_in_span(&self, cmd: &Command) -> Response {
        let started = Instant::now();
        let slot = Arc::clone(lock(&self.inflight).entry(cmd.id.clone()).or_default());
        let mut r = {
            let _one_copy_at_a_time = slot.lock().await;
            self.execute_inner(cmd).await
        };
        {
            let mut inflight = lock(&self.inflight);
            if Arc::strong_count(&slot) == 2 {
                inflight.remove(&cmd.id);
            }
        }
        r.duration_ms = started.elapsed().as_millis() as u64;
        if matches!(r.outcome, Outcome::Ok | Outcome::DryRun)
            && !matches!(cmd.action, Action::Focus)
            && let Err(e) = self.remember(&cmd.id)
        {
            tracing::error!(error = %e, id = %cmd.id, "journal write failed");
        }
        tracing::info!(
            action = cmd.action.name(),
            incident = %cmd.incident_id,
            outcome = r.outcome.as_str(),
            reason = r.reason.as_deref().unwrap_or(""),
            duration_ms = r.duration_ms,
            "action"
        );
        r
    }

    async fn execute_inner(&self, cmd: &Command) -> Response {
        let by = collector();
        if cmd.host != self.cfg.host {
            return Response::to(cmd, Outcome::Refused, &by)
                .because("wrong_host", format!("this agent is {}", self.cfg.host));
        }
        if lock(&self.done).contains(&cmd.id) {
            return Response::to(cmd, Outcome::Duplicate, &by)
                .because("duplicate", "already executed for this incident");
        }
        let policy_action = !matches!(cmd.action, Action::Focus | Action::Attach);
        if policy_action && !self.take_token() {
            return Response::to(cmd, Outcome::Refused, &by).because(
                "rate_limit",
                format!(
                    "host {} used its {} actions of the last minute",
                    self.cfg.host, self.cfg.max_actions_per_minute
                ),
            );
        }
        if let Action::Notify { url } = &cmd.action
            && !webhook_allowed(url, &self.cfg.webhook_allow)
        {
            return Response::to(cmd, Outcome::Refused, &by).because(
                "not_allowed",
                "the webhook is not in the agent's allow-list",
            );
        }
        if cmd.dry_run {
            let mut r = Response::to(cmd, Outcome::DryRun, &by);
            r.detail = Some(format!("would {}", cmd.action.name()));
            return r;
        }
        let timeout = Duration::from_millis(cmd.timeout_ms.max(1));
        let deadline = Instant::now() + timeout;
        let mut attempts = 0;
        let mut backoff = Duration::from_millis(250);
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let res = tokio::time::timeout(left, self.run(cmd)).await;
            let mut r = match res {
                Ok(Ok((details, evidence))) => {
                    let mut r = Response::to(cmd, Outcome::Ok, &by);
                    r.details = details;
                    r.evidence = evidence;
                    r
                }
                Ok(Err(Error::AlreadyWritten(what))) => Response::to(cmd, Outcome::Duplicate, &by)
                    .because("duplicate", format!("{what} was already written")),
                Ok(Err(e)) => {
                    let (reason, retry) = match &e {
                        Error::Docker { reason, .. } => (
                            *reason,
                            matches!(*reason, "docker_unreachable" | "docker_error" | "timeout"),
                        ),
                        Error::Http(_) => ("webhook_error", true),
                        _ => ("internal", false),
                    };
                    if retry && Instant::now() + backoff < deadline {
                        tracing::warn!(error = %e, attempt = attempts, "action failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                        continue;
                    }
                    Response::to(cmd, Outcome::Failed, &by).because(reason, e.to_string())
                }
                Err(_) => Response::to(cmd, Outcome::Failed, &by).because(
                    "timeout",
                    format!("gave up after {} ms", timeout.as_millis()),
                ),
            };
            r.attempts = attempts;
            return r;
        }
    }

    fn take_token(&self) -> bool {
        let per_min = f64::from(self.cfg.max_actions_per_minute);
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * per_min / 60.0).min(per_min);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    fn spec(&self, cmd: &Command, trigger: String) -> CaptureSpec {
        let (logs_tail, export, commit) = match &cmd.action {
            Action::Capture {
                logs_tail,
                export,
                commit,
            } => (*logs_tail, *export, *commit),
            _ => (500, false, false),
        };
        CaptureSpec {
            logs_tail,
            export,
            commit,
            window_start_ms: cmd.alert_ms - self.cfg.before_ms,
            max_log_bytes: self.cfg.max_log_bytes,
            max_export_bytes: self.cfg.max_export_bytes,
            trigger,
            host: self.cfg.host.clone(),
            collector: collector(),
        }
    }

    fn cached(&self, container_id: &str) -> Option<Cached> {
        let w = lock(&self.watches);
        w.get(container_id).map(|w| {
            let logs = lock(&w.logs);
            Cached {
                inspect: w.inspect.clone(),
                logs: logs.bytes.iter().copied().collect(),
                logs_truncated: logs.truncated,
            }
        })
    }

    /// One attempt. Returns the response's details and evidence location.
    async fn run(&self, cmd: &Command) -> Result<(serde_json::Value, Option<String>)> {
        let d = &self.docker;
        let id = cmd.container_id.as_str();
        let docker = |e: bollard::errors::Error| crate::docker::error(&e);
        match &cmd.action {
            Action::Capture { .. } => {
                let cached = self.cached(id);
                let trigger = match cmd.policy.as_str() {
                    "die" | "oom" => cmd.policy.clone(),
                    p => format!("policy:{p}"),
                };
                let spec = self.spec(cmd, trigger);
                let (m, bytes) = crate::capture::capture(
                    d,
                    &self.store,
                    cmd,
                    &spec,
                    cached.as_ref(),
                    self.latest_stats.as_ref(),
                )
                .await?;
                Ok((
                    serde_json::json!({
                        "artifacts": m.artifacts.iter().map(|a| &a.name).collect::<Vec<_>>(),
                        "missing": m.missing,
                        "bytes": bytes,
                    }),
                    Some(self.store.location(&cmd.incident_id)),
                ))
            }
            Action::Attach => {
                let spec = self.spec(cmd, "attach".into());
                let (m, bytes) = crate::capture::attach(&self.store, cmd, &spec).await?;
                Ok((
                    serde_json::json!({ "artifacts": m.artifacts.len(), "bytes": bytes }),
                    Some(self.store.location(&cmd.incident_id)),
                ))
            }
            Action::Focus => {
                self.watch(cmd).await;
                Ok((serde_json::json!({ "watch_ms": self.cfg.focus_ms }), None))
            }
            Action::Pause => match d.pause_container(id).await {
                Err(e) if conflict_means_done(&e, "paused") => {
                    Ok((serde_json::json!({"already": true}), None))
                }
                r => r.map(|()| (serde_json::Value::Null, None)).map_err(docker),
            },
            Action::Unpause => match d.unpause_container(id).await {
                Err(e) if conflict_means_done(&e, "not paused") => {
                    Ok((serde_json::json!({"already": true}), None))
                }
                r => r.map(|()| (serde_json::Value::Null, None)).map_err(docker),
            },
            Action::Stop { grace_s } => {
                let opts = StopContainerOptions {
                    signal: None,
                    t: i32::try_from(*grace_s).ok(),
                };
                d.stop_container(id, Some(opts)).await.map_err(docker)?;
                Ok((serde_json::Value::Null, None))
            }
            Action::Restart { grace_s } => {
                let opts = RestartContainerOptions {
                    signal: None,
                    t: i32::try_from(*grace_s).ok(),
                };
                d.restart_container(id, Some(opts)).await.map_err(docker)?;
                Ok((serde_json::Value::Null, None))
            }
            Action::Kill { signal } => {
                let opts = KillContainerOptions {
                    signal: signal.clone().unwrap_or_else(|| "SIGKILL".into()),
                };
                d.kill_container(id, Some(opts)).await.map_err(docker)?;
                Ok((serde_json::Value::Null, None))
            }
            Action::Isolate => self.isolate(id).await,
            Action::Release => self.release(id).await,
            Action::Notify { url } => {
                let resp = self
                    .http
                    .post(url)
                    .json(&cmd.alert)
                    .timeout(Duration::from_millis(cmd.timeout_ms))
                    .send()
                    .await
                    .map_err(|e| Error::Http(e.without_url().to_string()))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(Error::Http(format!("webhook answered {status}")));
                }
                Ok((serde_json::json!({ "status": status.as_u16() }), None))
            }
        }
    }

    fn isolation_path(&self, id: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("isolated")
            .join(format!("{}.json", crate::evidence::safe_name(id)))
    }

    async fn isolate(&self, id: &str) -> Result<(serde_json::Value, Option<String>)> {
        let docker = |e: bollard::errors::Error| crate::docker::error(&e);
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(docker)?;
        let nets: Vec<(String, Option<EndpointSettings>)> = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, ep)| {
                // Keep what a reconnect can restore: aliases, the static addresses, links.
                let keep = EndpointSettings {
                    aliases: ep.aliases,
                    ipam_config: ep.ipam_config,
                    links: ep.links,
                    ..EndpointSettings::default()
                };
                (name, Some(keep))
            })
            .collect();
        // Remember first: a crash between disconnects must not lose what to restore.
        let path = self.isolation_path(id);
        let mut known: Vec<(String, Option<EndpointSettings>)> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Isolation>(&b).ok())
            .map(|i| i.networks)
            .unwrap_or_default();
        for n in &nets {
            if !known.iter().any(|(k, _)| k == &n.0) {
                known.push(n.clone());
            }
        }
        let rec = Isolation {
            container_id: id.to_owned(),
            networks: known,
        };
        std::fs::write(&path, serde_json::to_vec(&rec)?).map_err(|source| Error::Io {
            sink: "isolation record",
            source,
        })?;
        for (name, _) in &nets {
            let req = NetworkDisconnectRequest {
                container: id.to_owned(),
                force: Some(true),
            };
            self.docker
                .disconnect_network(name, req)
                .await
                .map_err(docker)?;
        }
        Ok((
            serde_json::json!({ "disconnected": nets.iter().map(|(n, _)| n).collect::<Vec<_>>() }),
            None,
        ))
    }

    async fn release(&self, id: &str) -> Result<(serde_json::Value, Option<String>)> {
        let docker = |e: bollard::errors::Error| crate::docker::error(&e);
        let path = self.isolation_path(id);
        let rec: Isolation = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((
                    serde_json::json!({ "reconnected": [], "note": "nothing was isolated" }),
                    None,
                ));
            }
            Err(source) => {
                return Err(Error::Io {
                    sink: "isolation record",
                    source,
                });
            }
        };
        let mut done = Vec::new();
        for (name, ep) in &rec.networks {
            let req = NetworkConnectRequest {
                container: id.to_owned(),
                endpoint_config: ep.clone(),
            };
            match self.docker.connect_network(name, req).await {
                Ok(()) => done.push(name.clone()),
                // Already connected (a release retried after a partial one).
                Err(e)
                    if classify(&e).0 == "conflict" || e.to_string().contains("already exists") =>
                {
                    done.push(name.clone())
                }
                Err(e) => return Err(docker(e)),
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok((serde_json::json!({ "reconnected": done }), None))
    }

    /// Starts (or extends) a watch of the command's container.
    async fn watch(&self, cmd: &Command) {
        let until = Instant::now() + Duration::from_millis(self.cfg.focus_ms);
        if let Some(w) = lock(&self.watches).get_mut(&cmd.container_id) {
            w.until = w.until.max(until);
            return;
        }
        let inspect = match self.docker.inspect_container(&cmd.container_id, None).await {
            Ok(v) => serde_json::to_vec_pretty(&v).ok(),
            Err(e) => {
                tracing::warn!(error = %e, "watch: inspect failed");
                None
            }
        };
        let logs = Arc::new(Mutex::new(LogBuf::default()));
        let follower = {
            let docker = self.docker.clone();
            let id = cmd.container_id.clone();
            let logs = Arc::clone(&logs);
            let max = self.cfg.max_log_bytes;
            let since = i32::try_from((cmd.alert_ms - self.cfg.before_ms) / 1000).unwrap_or(0);
            tokio::spawn(async move {
                let opts = LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    timestamps: true,
                    since,
                    tail: "all".into(),
                    ..LogsOptions::default()
                };
                let mut s = docker.logs(&id, Some(opts));
                while let Some(Ok(chunk)) = s.next().await {
                    let b = chunk.into_bytes();
                    let mut buf = lock(&logs);
                    buf.bytes.extend(b.iter());
                    // Keep the newest `max` bytes.
                    if buf.bytes.len() > max {
                        let cut = buf.bytes.len() - max;
                        buf.bytes.drain(..cut);
                        buf.truncated = true;
                    }
                }
            })
        };
        lock(&self.watches).insert(
            cmd.container_id.clone(),
            Watch {
                incident_id: cmd.incident_id.clone(),
                container_name: cmd.container_name.clone(),
                until,
                inspect,
                logs,
                follower,
            },
        );
    }

    /// A container died (`why` = `die`) or was OOM-killed (`oom`): if it is watched, its
    /// evidence is captured now, before it can be removed. `None` when not watched.
    pub async fn on_exit(&self, container_id: &str, why: &str) -> Option<Response> {
        if !self.cfg.capture_on_exit {
            return None;
        }
        let (incident_id, container_name) = {
            let w = lock(&self.watches);
            let w = w.get(container_id)?;
            (w.incident_id.clone(), w.container_name.clone())
        };
        let action = Action::Capture {
            logs_tail: 500,
            export: false,
            commit: false,
        };
        let cmd = Command {
            format: crate::command::FORMAT,
            id: Command::key(&incident_id, &action),
            incident_id,
            action,
            dry_run: false,
            timeout_ms: crate::policy::DEFAULT_TIMEOUT_MS,
            host: self.cfg.host.clone(),
            container_id: container_id.to_owned(),
            container_name,
            group: String::new(),
            policy: why.to_owned(),
            alert_ms: chrono::Utc::now().timestamp_millis(),
            alert: None,
            evidence: None,
            observations: Vec::new(),
        };
        Some(self.execute(&cmd).await)
    }
}

/// A 409 (or 304) whose message says the wanted state already holds.
fn conflict_means_done(e: &bollard::errors::Error, state: &str) -> bool {
    matches!(classify(e).0, "conflict" | "not_modified") && e.to_string().contains(state)
}

/// Whether `target` is under one of the allow-list's entries: the same scheme, host and
/// port, and a path under the entry's at a segment boundary (`https://hooks.example/a`
/// allows `/a` and `/a/b`, not `/ab`). A target with credentials in it, or one that is
/// not a URL, is never allowed. Compared parsed, not as strings: a prefix of text would
/// let `https://hooks.example.attacker.net/` through an entry `https://hooks.example`.
fn webhook_allowed(target: &str, allow: &[String]) -> bool {
    let Ok(t) = url::Url::parse(target) else {
        return false;
    };
    if !t.username().is_empty() || t.password().is_some() || !matches!(t.scheme(), "http" | "https")
    {
        return false;
    }
    allow.iter().any(|entry| {
        let Ok(e) = url::Url::parse(entry) else {
            return false;
        };
        let (ep, tp) = (e.path(), t.path());
        e.scheme() == t.scheme()
            && e.host() == t.host()
            && e.port_or_known_default() == t.port_or_known_default()
            && (tp == ep
                || ep.ends_with('/') && tp.starts_with(ep)
                || tp
                    .strip_prefix(ep)
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(dir: &std::path::Path, per_minute: u32) -> Executor {
        // An engine address nothing listens on: these tests never reach Docker.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .expect("client");
        let store = Store::open(dir.join("ev").to_str().expect("utf-8"), []).expect("store");
        Executor::new(
            docker,
            store,
            ExecutorConfig {
                host: "h".into(),
                state_dir: dir.join("state"),
                before_ms: 300_000,
                focus_ms: 1_000,
                max_log_bytes: 1 << 20,
                max_export_bytes: 1 << 20,
                max_actions_per_minute: per_minute,
                webhook_allow: vec!["https://hooks.example/".into()],
                capture_on_exit: true,
            },
        )
        .expect("executor")
    }

    fn cmd(id: &str, action: Action, host: &str, dry_run: bool) -> Command {
        Command {
            format: crate::command::FORMAT,
            id: Command::key(id, &action),
            incident_id: id.into(),
            action,
            dry_run,
            timeout_ms: 1_000,
            host: host.into(),
            container_id: "c".into(),
            container_name: "c".into(),
            group: "g".into(),
            policy: "p".into(),
            alert_ms: 0,
            alert: None,
            evidence: None,
            observations: Vec::new(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn refuses_other_hosts_unlisted_webhooks_and_beyond_the_host_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ex = executor(dir.path(), 2);
        rt().block_on(async {
            let r = ex.execute(&cmd("i0", Action::Pause, "other", true)).await;
            assert_eq!(
                (r.outcome, r.reason.as_deref()),
                (Outcome::Refused, Some("wrong_host"))
            );
            let hook = Action::Notify {
                url: "http://127.0.0.1:1/steal".into(),
            };
            let r = ex.execute(&cmd("i1", hook, "h", true)).await;
            assert_eq!(
                (r.outcome, r.reason.as_deref()),
                (Outcome::Refused, Some("not_allowed"))
            );
            // The refused webhook took the first token; one more action fits the minute.
            let r = ex.execute(&cmd("i2", Action::Pause, "h", true)).await;
            assert_eq!(r.outcome, Outcome::DryRun);
            let r = ex.execute(&cmd("i3", Action::Pause, "h", true)).await;
            assert_eq!(
                (r.outcome, r.reason.as_deref()),
                (Outcome::Refused, Some("rate_limit"))
            );
            // Focus is not a policy action: never rate-limited.
            let r = ex.execute(&cmd("i4", Action::Focus, "h", true)).await;
            assert_eq!(r.outcome, Outcome::DryRun);
        });
    }

    #[test]
    fn a_command_done_is_a_duplicate_even_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cmd("inc", Action::Pause, "h", true);
        {
            let ex = executor(dir.path(), 60);
            let r = rt().block_on(ex.execute(&c));
            assert_eq!(r.outcome, Outcome::DryRun);
            assert_eq!(rt().block_on(ex.execute(&c)).outcome, Outcome::Duplicate);
        }
        // A new executor reads the journal.
        let ex = executor(dir.path(), 60);
        assert_eq!(rt().block_on(ex.execute(&c)).outcome, Outcome::Duplicate);
    }

    #[test]
    fn an_unreachable_engine_fails_after_retries_within_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ex = executor(dir.path(), 60);
        let r = rt().block_on(ex.execute(&cmd("inc", Action::Unpause, "h", false)));
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.reason.as_deref(), Some("docker_unreachable"));
        assert!(r.attempts >= 2, "{r:?}");
        assert!(r.duration_ms < 2_000, "{r:?}");
    }

    #[test]
    fn webhook_targets_are_matched_as_urls_not_as_text() {
        let allow = vec![
            "https://hooks.example".to_owned(),
            "https://chat.example:8443/hooks/herd".to_owned(),
        ];
        for ok in [
            "https://hooks.example/",
            "https://hooks.example/any/path?x=1",
            "https://HOOKS.example:443/a",
            "https://chat.example:8443/hooks/herd",
            "https://chat.example:8443/hooks/herd/team-a",
        ] {
            assert!(webhook_allowed(ok, &allow), "{ok}");
        }
        for refused in [
            "https://hooks.example.attacker.net/",
            "https://hooks.example@attacker.net/",
            "https://user:pw@hooks.example/",
            "http://hooks.example/",
            "https://hooks.example:8443/",
            "https://chat.example:8443/hooks/herdsman",
            "https://chat.example:8443/hooks",
            "https://chat.example/hooks/herd",
            "file:///etc/passwd",
            "hooks.example/x",
            "",
        ] {
            assert!(!webhook_allowed(refused, &allow), "{refused}");
        }
        assert!(!webhook_allowed("https://hooks.example/", &[]));
    }
}
