//! `capture`: the evidence of one container, collected through the Docker API at once
//! (every call concurrently, so the bundle is complete in the time of the slowest) and
//! written as one bundle ([`crate::evidence`]).

use bollard::Docker;
use bollard::query_parameters::{LogsOptions, StatsOptions, TopOptions};
use futures_util::StreamExt;

use crate::command::Command;
use crate::docker::classify;
use crate::evidence::{BundleWriter, Manifest, Store};
use crate::{Error, Result};

/// What the agent kept of a container it was watching, for when the container is gone
/// by the time the capture runs.
#[derive(Debug, Clone, Default)]
pub struct Cached {
    /// The inspect document taken when the watch began.
    pub inspect: Option<Vec<u8>>,
    /// Log lines followed since the watch began (bounded).
    pub logs: Vec<u8>,
    /// Whether the followed logs were cut at their bound.
    pub logs_truncated: bool,
}

/// The collector's latest stats sample of a container and its age, when it has one.
pub type StatsSource = std::sync::Arc<dyn Fn(&str) -> Option<(u64, Vec<u8>)> + Send + Sync>;

/// Limits and identity of a capture.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// Log lines to keep from the end.
    pub logs_tail: u32,
    /// Also `docker export` the filesystem.
    pub export: bool,
    /// Also commit the container to `herd-evidence:<incident>`.
    pub commit: bool,
    /// Start of the alert window (epoch ms): logs since then go to `logs-window.log`.
    pub window_start_ms: i64,
    /// Most bytes of each log artifact.
    pub max_log_bytes: usize,
    /// Most bytes of a filesystem export.
    pub max_export_bytes: usize,
    /// `policy:<name>`, `die`, `oom`.
    pub trigger: String,
    /// The collecting host.
    pub host: String,
    /// `herd-agent/<version>`.
    pub collector: String,
}

/// Collects and writes the bundle. Fails without writing anything when the engine is
/// unreachable (the caller may retry); otherwise writes every artifact it could get,
/// records the others as missing, and returns the manifest and the bytes written.
pub async fn capture(
    docker: &Docker,
    store: &Store,
    cmd: &Command,
    spec: &CaptureSpec,
    cached: Option<&Cached>,
    latest_stats: Option<&StatsSource>,
) -> Result<(Manifest, u64)> {
    let t0 = std::time::Instant::now();
    docker.ping().await.map_err(|e| crate::docker::error(&e))?;
    let pinged_ms = t0.elapsed().as_millis() as u64;
    let id = cmd.container_id.as_str();
    let src = |what: &str| format!("docker {what}");

    let inspect = async {
        docker
            .inspect_container(id, None)
            .await
            .map_err(|e| (classify(&e).0, e.to_string()))
            .and_then(|v| serde_json::to_vec_pretty(&v).map_err(|e| ("encoding", e.to_string())))
    };
    let top = async {
        docker
            .top_processes(
                id,
                Some(TopOptions {
                    ps_args: "-ef".into(),
                }),
            )
            .await
            .map_err(|e| (classify(&e).0, e.to_string()))
            .and_then(|v| serde_json::to_vec_pretty(&v).map_err(|e| ("encoding", e.to_string())))
    };
    let changes = async {
        docker
            .container_changes(id)
            .await
            .map_err(|e| (classify(&e).0, e.to_string()))
            .and_then(|v| {
                serde_json::to_vec_pretty(&v.unwrap_or_default())
                    .map_err(|e| ("encoding", e.to_string()))
            })
    };
    let recent = latest_stats.and_then(|f| f(id));
    let stats = async {
        // The collector sampled it within the last interval: no need to ask again (a
        // one-shot stats call of a busy engine takes hundreds of milliseconds).
        if let Some((age_ms, bytes)) = &recent {
            return Ok((bytes.clone(), *age_ms));
        }
        let opts = StatsOptions {
            stream: false,
            one_shot: true,
        };
        match docker.stats(id, Some(opts)).next().await {
            Some(Ok(s)) => serde_json::to_vec_pretty(&s)
                .map(|b| (b, 0))
                .map_err(|e| ("encoding", e.to_string())),
            Some(Err(e)) => Err((classify(&e).0, e.to_string())),
            None => Err(("docker_error", "no stats returned".to_owned())),
        }
    };
    let log = |opts: LogsOptions| {
        let stream = docker
            .logs(id, Some(opts))
            .map(|r| r.map(bollard::container::LogOutput::into_bytes));
        read_bounded(stream, spec.max_log_bytes)
    };
    let tail = log(LogsOptions {
        stdout: true,
        stderr: true,
        timestamps: true,
        tail: spec.logs_tail.to_string(),
        ..LogsOptions::default()
    });
    let window = log(LogsOptions {
        stdout: true,
        stderr: true,
        timestamps: true,
        since: i32::try_from(spec.window_start_ms / 1000).unwrap_or(0),
        tail: "all".into(),
        ..LogsOptions::default()
    });
    let (inspect, top, changes, stats, tail, window) = tokio::join!(
        timed("inspect", inspect),
        timed("top", top),
        timed("changes", changes),
        timed("stats", stats),
        timed("logs_tail", tail),
        timed("logs_window", window)
    );
    let collected_ms = t0.elapsed().as_millis() as u64;

    let mut w = BundleWriter::new(store.clone(), &cmd.incident_id);
    let gone = matches!(inspect, Err(("not_found", _)));
    match (inspect, cached.and_then(|c| c.inspect.clone())) {
        (Ok(b), _) => {
            w.put("inspect.json", b, &src("GET /containers/{id}/json"), false)
                .await?
        }
        (Err(_), Some(b)) => {
            w.put(
                "inspect.json",
                b,
                "herd-agent cache (taken at the alert; the container was gone at capture)",
                false,
            )
            .await?
        }
        (Err((r, e)), _) => w.missing("inspect.json", format!("{r}: {e}")),
    }
    put_or_missing(
        &mut w,
        "processes.json",
        top.map(|b| (b, false)),
        &src("GET /containers/{id}/top"),
    )
    .await?;
    put_or_missing(
        &mut w,
        "changes.json",
        changes.map(|b| (b, false)),
        &src("GET /containers/{id}/changes"),
    )
    .await?;
    match stats {
        Ok((b, 0)) => {
            w.put(
                "stats.json",
                b,
                &src("GET /containers/{id}/stats?one-shot"),
                false,
            )
            .await?
        }
        Ok((b, age)) => {
            let how = format!(
                "herd-agent collector (its latest one-shot stats sample, {age} ms before capture)"
            );
            w.put("stats.json", b, &how, false).await?
        }
        Err((r, e)) => w.missing("stats.json", format!("{r}: {e}")),
    }
    // A container dead or being removed cannot give its logs any more (404, or 409
    // "marked for removal"); what the watch followed stands in for them.
    for (name, api, got) in [
        ("logs-tail.log", "GET /containers/{id}/logs?tail", tail),
        ("logs-window.log", "GET /containers/{id}/logs?since", window),
    ] {
        match (got, cached) {
            (Ok((b, t)), _) => w.put(name, b, &src(api), t).await?,
            (Err(_), Some(c)) if !c.logs.is_empty() => {
                let follower =
                    "herd-agent log follower (from the alert; the container was gone at capture)";
                w.put(name, c.logs.clone(), follower, c.logs_truncated)
                    .await?
            }
            (Err((r, e)), _) => w.missing(name, format!("{r}: {e}")),
        }
    }
    if !cmd.observations.is_empty() {
        w.put(
            "observations-before.jsonl",
            jsonl(&cmd.observations),
            "herd worker ring buffer",
            false,
        )
        .await?;
    }
    let mut notes = serde_json::Map::new();
    if spec.export && !gone {
        match read_bounded(docker.export_container(id), spec.max_export_bytes).await {
            Ok((b, t)) => {
                w.put("filesystem.tar", b, &src("GET /containers/{id}/export"), t)
                    .await?
            }
            Err((r, e)) => w.missing("filesystem.tar", format!("{r}: {e}")),
        }
    }
    if spec.commit && !gone {
        let tag = crate::evidence::safe_name(&cmd.incident_id).to_ascii_lowercase();
        let opts = bollard::query_parameters::CommitContainerOptions {
            container: Some(id.to_owned()),
            repo: Some("herd-evidence".into()),
            tag: Some(tag.clone()),
            comment: Some(format!("herd evidence of incident {}", cmd.incident_id)),
            author: Some(spec.collector.clone()),
            pause: false,
            changes: None,
        };
        match docker
            .commit_container(opts, bollard::models::ContainerConfig::default())
            .await
        {
            Ok(r) => {
                notes.insert("image".into(), format!("herd-evidence:{tag}").into());
                notes.insert("image_id".into(), r.id.into());
            }
            Err(e) => w.missing("image", format!("{}: {e}", classify(&e).0)),
        }
    }
    let manifest = Manifest {
        alert: cmd.alert.as_ref().map(serde_json::to_value).transpose()?,
        notes: if notes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Object(notes)
        },
        ..manifest_of(cmd, spec, &spec.trigger)
    };
    let r = w.finish(manifest, "manifest.json").await;
    tracing::debug!(
        pinged_ms,
        collected_ms,
        written_ms = t0.elapsed().as_millis() as u64,
        "capture timing"
    );
    r
}

/// Runs a collection step and logs how long it took (debug level).
async fn timed<T>(step: &'static str, f: impl std::future::Future<Output = T>) -> T {
    let t = std::time::Instant::now();
    let r = f.await;
    tracing::debug!(
        step,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "capture step"
    );
    r
}

async fn put_or_missing(
    w: &mut BundleWriter,
    name: &str,
    r: std::result::Result<(Vec<u8>, bool), (&'static str, String)>,
    source: &str,
) -> Result<()> {
    match r {
        Ok((b, t)) => w.put(name, b, source, t).await,
        Err((reason, e)) => {
            w.missing(name, format!("{reason}: {e}"));
            Ok(())
        }
    }
}

/// Reads a stream of byte chunks into at most `max` bytes (what comes past the bound is
/// dropped, and the artifact says it was truncated).
async fn read_bounded<B: AsRef<[u8]>>(
    s: impl futures_util::Stream<Item = std::result::Result<B, bollard::errors::Error>>,
    max: usize,
) -> std::result::Result<(Vec<u8>, bool), (&'static str, String)> {
    let mut s = std::pin::pin!(s);
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| (classify(&e).0, e.to_string()))?;
        let b = chunk.as_ref();
        if out.len() + b.len() > max {
            out.extend_from_slice(&b[..max - out.len()]);
            return Ok((out, true));
        }
        out.extend_from_slice(b);
    }
    Ok((out, false))
}

/// Native lines, one per observation.
fn jsonl(obs: &[Box<serde_json::value::RawValue>]) -> Vec<u8> {
    let mut lines = Vec::with_capacity(obs.iter().map(|o| o.get().len() + 1).sum());
    for o in obs {
        lines.extend_from_slice(o.get().as_bytes());
        lines.push(b'\n');
    }
    lines
}

/// A manifest of the command's container with nothing collected yet (the writer fills
/// in the incident, the artifacts and the time).
fn manifest_of(cmd: &Command, spec: &CaptureSpec, trigger: &str) -> Manifest {
    Manifest {
        format: 0,
        incident_id: String::new(),
        trigger: trigger.to_owned(),
        container_id: cmd.container_id.clone(),
        container_name: cmd.container_name.clone(),
        host: spec.host.clone(),
        collector: spec.collector.clone(),
        created: String::new(),
        alert: None,
        artifacts: Vec::new(),
        missing: Vec::new(),
        previous_manifest_sha256: None,
        notes: serde_json::Value::Null,
    }
}

/// `attach`: the observations after the alert, as an addendum chained to the first
/// manifest by its hash.
pub async fn attach(store: &Store, cmd: &Command, spec: &CaptureSpec) -> Result<(Manifest, u64)> {
    let previous = match store.read(&cmd.incident_id, "manifest.json").await {
        Ok(b) => Some(crate::evidence::sha256_hex(&b)),
        Err(Error::Store(_)) => None,
        Err(e) => return Err(e),
    };
    let mut w = BundleWriter::new(store.clone(), &cmd.incident_id);
    w.put(
        "observations-after.jsonl",
        jsonl(&cmd.observations),
        "herd worker ring buffer",
        false,
    )
    .await?;
    let manifest = Manifest {
        previous_manifest_sha256: previous,
        ..manifest_of(cmd, spec, "attach")
    };
    w.finish(manifest, "manifest-after.json").await
}
