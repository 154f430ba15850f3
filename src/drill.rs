//! `herd drill`: proves in production that detection, response and evidence work end
//! to end, as Falco's event-generator does for Falco rules.
//!
//! A labelled canary replica is started beside a real group (`--like CONTAINER`: the
//! same image, its labels but Kubernetes' own) or in a throwaway group of its own
//! (`--image IMAGE`, with `--replicas` idle siblings, labelled with `agent.label` when
//! the agent watches only labelled containers). After `--settle` it misbehaves,
//! harmlessly and inside its own container: it writes a marker file, copies its shell to
//! `/tmp/.herd-drill/herd-drill` and runs that copy as a busy loop (a CPU burn, by a
//! process no sibling runs; `yes` where a multi-call busybox will not run renamed),
//! capped at half a core. The drill then waits, each step
//! within `--timeout`, for:
//!
//! 1. an alert for the canary on `herd.alerts`;
//! 2. a response on `herd.responses` for every action of the policy that matches that
//!    alert (`respond.policy_file`, the workers' own file): no matching policy fails
//!    the drill, since nothing would respond to a real incident either;
//! 3. when the policy captures, the evidence bundle: its manifest read from the
//!    evidence store (`agent.evidence_url`) and every artifact's hash checked.
//!
//! It prints the time from the misbehaviour to each step, removes every container it
//! started (also when a step failed), and fails loudly, naming the step that never came.
//!
//! The canary's command is a shell script (`sh -c`) in the canary's own container: herd
//! itself runs no process and no `docker exec`. Containers carry `herd.drill=<id>`, so a
//! leftover of a killed drill is found with `docker ps -a --filter label=herd.drill`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use herd_detect::Alert;
use herd_respond::command::{Outcome, Response};
use herd_respond::evidence::{Manifest, Store, sha256_hex};
use herd_respond::policy::PolicyFile;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::HerdConfig;
use crate::stream::kafka::{Role, client_config};

/// The label every container of a drill carries (value: the drill's id).
pub const LABEL: &str = "herd.drill";

/// What the drill drills.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Start the canary beside this running container's group.
    pub like: Option<String>,
    /// Or: a throwaway group of this image.
    pub image: Option<String>,
    /// Idle siblings of the throwaway group.
    pub replicas: usize,
    /// How long the canary behaves before it misbehaves; `None`: at once beside a real
    /// group, the workers' warm-up (`detect.baseline.warmup_ms`) and half a minute in
    /// a throwaway one.
    pub settle: Option<Duration>,
    /// How long each step may take.
    pub timeout: Duration,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// What was waited for (`alert`, `capture`, `pause`, …, `evidence`).
    pub name: String,
    /// From the misbehaviour to the step, when it came.
    pub after: Option<Duration>,
    /// What it said (detectors, an outcome, the artifacts checked) or why it failed.
    pub detail: String,
    /// Whether it came and succeeded.
    pub ok: bool,
}

/// The drill's report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The drill's id (the label's value).
    pub id: String,
    /// The canary's container id.
    pub canary: String,
    /// The incident the canary's alert opened.
    pub incident: Option<String>,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// Whether every step came and succeeded.
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    /// The report as text: one line per step.
    pub fn render(&self) -> String {
        let mut s = format!(
            "herd drill {}: canary {}{}\n",
            self.id,
            self.canary.get(..12).unwrap_or(&self.canary),
            self.incident
                .as_deref()
                .map(|i| format!(", incident {i}"))
                .unwrap_or_default()
        );
        for st in &self.steps {
            let at = st.after.map_or_else(
                || "     never".to_owned(),
                |d| format!("{:>8.1} s", d.as_secs_f64()),
            );
            s.push_str(&format!(
                "  {} {at}  {:<10} {}\n",
                if st.ok { "ok  " } else { "FAIL" },
                st.name,
                st.detail
            ));
        }
        s.push_str(if self.passed() {
            "herd drill: passed\n"
        } else {
            "herd drill: FAILED\n"
        });
        s
    }
}

/// The canary's script: behave (sleep) for `settle_s`, then misbehave: the marker
/// file, then a busy loop run by a copy of the shell named `herd-drill`. A multi-call
/// binary (busybox) will not run under another name: then `yes` burns the CPU, and
/// failing that the shell itself.
fn canary_script(id: &str, settle_s: u64) -> String {
    format!(
        "trap 'exit 0' TERM; sleep {settle_s}; mkdir -p /tmp/.herd-drill; \
         echo {id} > /tmp/.herd-drill/marker; \
         cp /bin/sh /tmp/.herd-drill/herd-drill && \
         /tmp/.herd-drill/herd-drill -c 'exit 0' 2>/dev/null && \
         exec /tmp/.herd-drill/herd-drill -c 'while :; do :; done'; \
         yes > /dev/null; while :; do :; done"
    )
}

/// An idle sibling of a throwaway group.
const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

/// Runs a drill; the report is printed to `out` as the steps come.
pub fn drill(cfg: &HerdConfig, opts: &DrillOptions, out: &mut dyn Write) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.like.is_some() != opts.image.is_some(),
        "herd drill: give exactly one of --like CONTAINER and --image IMAGE"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cfg, opts, out))
}

async fn run(cfg: &HerdConfig, opts: &DrillOptions, out: &mut dyn Write) -> anyhow::Result<Report> {
    let docker = Docker::connect_with_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("the Docker engine does not answer")?;
    let id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let policies = match &cfg.respond.policy_file {
        Some(p) => Some(PolicyFile::load(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let topics = &cfg.stream.topics;
    // Readers from the current ends, before anything starts: only what the drill causes.
    let alerts = reader_at_end(cfg, &topics.alerts)?;
    let responses = reader_at_end(cfg, &topics.responses)?;

    let mut started: Vec<String> = Vec::new();
    let result = drill_steps(
        cfg,
        opts,
        &docker,
        &id,
        policies.as_ref(),
        &alerts,
        &responses,
        &mut started,
        out,
    )
    .await;
    // Whatever happened: remove what the drill started.
    for c in &started {
        let _ = docker
            .remove_container(
                c,
                Some(RemoveContainerOptions {
                    force: true,
                    ..RemoveContainerOptions::default()
                }),
            )
            .await;
    }
    writeln!(out, "herd drill: removed {} container(s)", started.len())?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn drill_steps(
    cfg: &HerdConfig,
    opts: &DrillOptions,
    docker: &Docker,
    id: &str,
    policies: Option<&PolicyFile>,
    alerts: &BaseConsumer,
    responses: &BaseConsumer,
    started: &mut Vec<String>,
    out: &mut dyn Write,
) -> anyhow::Result<Report> {
    let (image, mut labels, settle) = match (&opts.like, &opts.image) {
        (Some(like), _) => {
            let c = docker
                .inspect_container(like, None::<InspectContainerOptions>)
                .await
                .with_context(|| format!("inspecting {like}"))?;
            let conf = c.config.unwrap_or_default();
            let image = conf
                .image
                .filter(|i| !i.is_empty())
                .or(c.image)
                .with_context(|| format!("{like} has no image"))?;
            // Kubernetes' own labels would make the kubelet take the canary for one
            // of its containers.
            let labels: HashMap<String, String> = conf
                .labels
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| !k.starts_with("io.kubernetes."))
                .collect();
            (image, labels, opts.settle.unwrap_or(Duration::ZERO))
        }
        (None, Some(image)) => {
            let warmup = Duration::from_millis(cfg.detect.baseline.warmup_ms.max(0) as u64);
            let settle = opts.settle.unwrap_or(warmup + Duration::from_secs(30));
            // An agent that watches only labelled containers (`agent.label`) must see
            // the throwaway group.
            let mut labels = HashMap::new();
            if let Some(l) = &cfg.agent.label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_owned(), v.to_owned());
            }
            (image.clone(), labels, settle)
        }
        (None, None) => anyhow::bail!("herd drill: --like or --image"),
    };
    labels.insert(LABEL.to_owned(), id.to_owned());
    if opts.image.is_some() {
        for i in 0..opts.replicas {
            let mut l = labels.clone();
            l.insert(format!("{LABEL}.role"), "replica".into());
            let c = start(
                docker,
                &image,
                &format!("herd-drill-{id}-r{i}"),
                l,
                IDLE,
                started,
            )
            .await?;
            writeln!(
                out,
                "herd drill {id}: sibling {} started",
                c.get(..12).unwrap_or(&c)
            )?;
        }
    }
    labels.insert(format!("{LABEL}.role"), "canary".into());
    let script = canary_script(id, settle.as_secs());
    let canary = start(
        docker,
        &image,
        &format!("herd-drill-{id}-canary"),
        labels,
        &script,
        started,
    )
    .await?;
    writeln!(
        out,
        "herd drill {id}: canary {} of {image} started; misbehaves in {} s (marker file, \
         process `herd-drill`, CPU burn)",
        canary.get(..12).unwrap_or(&canary),
        settle.as_secs()
    )?;
    let misbehaved = Instant::now() + settle;
    let mut report = Report {
        id: id.to_owned(),
        canary: canary.clone(),
        ..Report::default()
    };
    let deadline = |from: Instant| from.max(misbehaved) + opts.timeout;

    // 1. The alert.
    let alert = wait(deadline(Instant::now()), || {
        poll_json::<Alert>(alerts).filter(|a| a.container_id == canary)
    })
    .await;
    let Some(alert) = alert else {
        report.steps.push(Step {
            name: "alert".into(),
            after: None,
            detail: format!(
                "no alert for the canary within {} s of its misbehaviour",
                opts.timeout.as_secs()
            ),
            ok: false,
        });
        write!(out, "{}", report.render())?;
        return Ok(report);
    };
    report.incident = Some(alert.incident_id.clone());
    report.steps.push(Step {
        name: "alert".into(),
        after: Some(Instant::now().saturating_duration_since(misbehaved)),
        detail: format!(
            "{} [{}] {}",
            alert.severity.as_str(),
            alert
                .detectors
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(","),
            alert.explanation
        ),
        ok: true,
    });
    writeln!(out, "herd drill {id}: alerted: {}", alert.explanation)?;

    // 2. The policy's actions.
    let Some(policy) = policies.and_then(|p| p.first_match(&alert)) else {
        report.steps.push(Step {
            name: "policy".into(),
            after: None,
            detail: match policies {
                Some(_) => "no policy of respond.policy_file matches the canary's alert: \
                            nothing would respond to this incident"
                    .into(),
                None => "no respond.policy_file: nothing would respond to this incident".into(),
            },
            ok: false,
        });
        write!(out, "{}", report.render())?;
        return Ok(report);
    };
    let want: Vec<&'static str> = policy.actions.iter().map(|s| s.action.name()).collect();
    let mut got: BTreeMap<&'static str, (Duration, Response)> = BTreeMap::new();
    let _ = wait(deadline(Instant::now()), || {
        if let Some(r) = poll_json::<Response>(responses)
            && r.incident_id == alert.incident_id
            && let Some(name) = want.iter().find(|w| **w == r.action)
        {
            got.entry(name)
                .or_insert((Instant::now().saturating_duration_since(misbehaved), r));
        }
        (got.len() >= want.len()).then_some(())
    })
    .await;
    for name in &want {
        report.steps.push(match got.get(name) {
            Some((after, r)) => Step {
                name: (*name).into(),
                after: Some(*after),
                detail: format!(
                    "{}{}",
                    r.outcome.as_str(),
                    r.detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                ok: matches!(
                    r.outcome,
                    Outcome::Ok | Outcome::DryRun | Outcome::Duplicate
                ),
            },
            None => Step {
                name: (*name).into(),
                after: None,
                detail: format!(
                    "policy `{}` asked for it; no response within {} s",
                    policy.name,
                    opts.timeout.as_secs()
                ),
                ok: false,
            },
        });
    }

    // 3. The evidence bundle.
    if let Some((_, capture)) = got.get("capture") {
        let step = match check_bundle(cfg, &alert.incident_id).await {
            Ok(n) => Step {
                name: "evidence".into(),
                after: Some(Instant::now().saturating_duration_since(misbehaved)),
                detail: format!(
                    "{n} artifacts, every hash matches its manifest ({})",
                    capture.evidence.as_deref().unwrap_or("bundle")
                ),
                ok: true,
            },
            Err(e) => Step {
                name: "evidence".into(),
                after: None,
                detail: format!("{e:#}"),
                ok: false,
            },
        };
        report.steps.push(step);
    }
    write!(out, "{}", report.render())?;
    Ok(report)
}

/// Creates and starts a drill container, capped at half a core and 64 MiB.
async fn start(
    docker: &Docker,
    image: &str,
    name: &str,
    labels: HashMap<String, String>,
    script: &str,
    started: &mut Vec<String>,
) -> anyhow::Result<String> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec!["sh".into(), "-c".into()]),
        cmd: Some(vec![script.to_owned()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            nano_cpus: Some(500_000_000),
            memory: Some(64 << 20),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let c = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_owned()),
                ..CreateContainerOptions::default()
            }),
            body,
        )
        .await
        .with_context(|| format!("creating {name} from {image}"))?;
    started.push(c.id.clone());
    docker
        .start_container(&c.id, None::<StartContainerOptions>)
        .await
        .with_context(|| format!("starting {name}"))?;
    Ok(c.id)
}

/// The bundle's manifest, read from the evidence store, and every artifact hashed
/// against it (waits up to 30 s for the manifest: it is written last). Returns the
/// number of artifacts.
async fn check_bundle(cfg: &HerdConfig, incident: &str) -> anyhow::Result<usize> {
    let store = Store::open(
        &cfg.agent.evidence_url,
        cfg.agent
            .evidence_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .context("opening the evidence store (agent.evidence_url)")?;
    let until = Instant::now() + Duration::from_secs(30);
    while !store
        .exists(incident, "manifest.json")
        .await
        .unwrap_or(false)
    {
        anyhow::ensure!(
            Instant::now() < until,
            "no manifest.json in {}",
            store.location(incident)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m: Manifest = serde_json::from_slice(&store.read(incident, "manifest.json").await?)
        .context("reading manifest.json")?;
    anyhow::ensure!(!m.artifacts.is_empty(), "the bundle holds no artifact");
    for a in &m.artifacts {
        let bytes = store.read(incident, &a.name).await?;
        anyhow::ensure!(
            sha256_hex(&bytes) == a.sha256,
            "{}: its hash does not match the manifest",
            a.name
        );
    }
    Ok(m.artifacts.len())
}

/// Polls `f` until it gives a value or `until` passes.
async fn wait<T>(until: Instant, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    while Instant::now() < until {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The next record of a reader, decoded; `None` when there is none now or it does not
/// decode.
fn poll_json<T: serde::de::DeserializeOwned>(c: &BaseConsumer) -> Option<T> {
    let m = c.poll(Duration::from_millis(100))?.ok()?;
    serde_json::from_slice(m.payload()?).ok()
}

/// An assign-only reader of every partition of `topic`, from its current end.
fn reader_at_end(cfg: &HerdConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = client_config(&cfg.kafka, Role::Reader)
        .create()
        .context("creating a Kafka reader")?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("reading the end of {topic}/{p}"))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_step_that_never_came() {
        let r = Report {
            id: "d1".into(),
            canary: "0123456789abcdef".into(),
            incident: Some("inc-1".into()),
            steps: vec![
                Step {
                    name: "alert".into(),
                    after: Some(Duration::from_millis(21_500)),
                    detail: "high [peer]".into(),
                    ok: true,
                },
                Step {
                    name: "pause".into(),
                    after: None,
                    detail: "policy `p` asked for it; no response within 60 s".into(),
                    ok: false,
                },
            ],
        };
        assert!(!r.passed());
        let text = r.render();
        assert!(
            text.contains("canary 0123456789ab, incident inc-1"),
            "{text}"
        );
        assert!(text.contains("21.5 s  alert"), "{text}");
        assert!(text.contains("FAIL      never  pause"), "{text}");
        assert!(text.ends_with("herd drill: FAILED\n"), "{text}");
        assert!(
            !Report::default().passed(),
            "a drill with no step did not pass"
        );
    }

    #[test]
    fn the_canary_misbehaves_only_after_settling_and_inside_its_own_container() {
        let s = canary_script("abc", 42);
        assert!(s.starts_with("trap 'exit 0' TERM; sleep 42;"), "{s}");
        assert!(s.contains("echo abc > /tmp/.herd-drill/marker"), "{s}");
        assert!(s.contains("exec /tmp/.herd-drill/herd-drill -c"), "{s}");
    }
}
