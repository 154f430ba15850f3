//! The agent's collector (feature `docker`): Docker stats and events of one host, as
//! records for `herd.samples` and `herd.events`.
//!
//! - The running containers are listed at start (and again whenever the event stream
//!   reconnects, since events may have been missed), then followed through `/events`.
//! - Every running container is sampled with a **one-shot** stats request on its own
//!   schedule: every `interval_ms`, or every `fast_interval_ms` while it is watched
//!   after an alert. No stream is held per container, so nothing leaks when containers
//!   come and go; requests in flight are bounded by `max_concurrent`.
//! - One-shot stats carry no `precpu_stats`; the collector fills them from the
//!   container's previous sample, so the record is an ordinary stats-API object.
//! - Each sample is wrapped in the agent envelope with the inspect data (image, image
//!   id as digest, labels, privileged, added capabilities); `start` events carry
//!   `privileged` and `capAdd` attributes from the same inspect.
//! - Every running container's inventories (`docker diff`, `docker top`) are taken every
//!   `inventory_interval_ms`, and at once when it comes under watch after an alert,
//!   summarised by [`crate::inventory`] and emitted as native `fs_changes` and
//!   `processes` events for `herd.events`. One inventory at a time per container, within
//!   the same bound on requests in flight as the stats.
//! - Records are keyed by routing key (the image repository, see [`crate::route`]).
//!
//! Output goes to a bounded channel; the caller publishes it. When the channel is full
//! the collector waits: sampling slows down instead of memory growing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ChangeType, ContainerCpuStats, ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions, StatsOptions, TopOptions};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::inventory::Change;
use crate::model::{ContainerRef, Event, Observation, Payload, repository_of};

/// How the collector samples.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// This host's name (the envelope's `host`).
    pub host: String,
    /// Sampling interval of every running container.
    pub interval_ms: u64,
    /// Sampling interval of a watched container.
    pub fast_interval_ms: u64,
    /// Stats requests in flight at once.
    pub max_concurrent: usize,
    /// Only containers with this label (`key` or `key=value`, Docker's filter syntax)
    /// are watched; none means all. Network events carry no container labels, so with
    /// a filter they are not followed.
    pub label: Option<String>,
    /// Inventories (`docker diff`, `docker top`) of every running container this often;
    /// 0: never.
    pub inventory_interval_ms: u64,
    /// Most paths per list, and processes, of one inventory.
    pub max_inventory_items: usize,
}

/// Something the collector produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    /// A stats sample in the agent envelope, for `herd.samples`.
    Sample {
        /// Routing key.
        key: String,
        /// The envelope's JSON.
        payload: Vec<u8>,
    },
    /// A Docker event, for `herd.events`.
    Event {
        /// Routing key (empty when the event names no image: network events).
        key: String,
        /// The event's JSON.
        payload: Vec<u8>,
    },
    /// A stats request gave no sample (`not_found`: the container went meanwhile;
    /// `docker_error`; `empty`: the engine answered nothing).
    SampleFailed {
        /// Bounded reason.
        reason: &'static str,
    },
    /// An inventory as a native event line, for `herd.events`.
    Inventory {
        /// Routing key.
        key: String,
        /// The native line's JSON.
        payload: Vec<u8>,
        /// `fs_changes` or `processes`.
        kind: &'static str,
    },
    /// An inventory request failed (`not_found`, `docker_error`).
    InventoryFailed {
        /// Bounded reason.
        reason: &'static str,
    },
    /// How many running containers the collector samples now (sent when it changes).
    Tracked(usize),
    /// A container died or was OOM-killed (the executor may capture it).
    Exit {
        /// Full container id.
        id: String,
        /// `die` or `oom`.
        why: &'static str,
    },
}

/// What the collector knows of a running container.
#[derive(Debug, Clone, Serialize)]
struct Info {
    id: String,
    name: String,
    image: String,
    image_digest: Option<String>,
    labels: BTreeMap<String, String>,
    privileged: bool,
    cap_add: Vec<String>,
    #[serde(skip)]
    key: String,
    #[serde(skip)]
    prev_cpu: Option<ContainerCpuStats>,
    #[serde(skip)]
    due: Instant,
    #[serde(skip)]
    in_flight: bool,
    #[serde(skip)]
    inventory_due: Instant,
    #[serde(skip)]
    inventory_in_flight: bool,
    /// Under watch at the last tick (an inventory is taken when it comes under watch).
    #[serde(skip)]
    watched: bool,
}

fn info_of(c: &ContainerInspectResponse) -> Option<Info> {
    let id = c.id.clone()?;
    let cfg = c.config.as_ref();
    let image = cfg
        .and_then(|c| c.image.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| c.image.clone())?;
    let hc = c.host_config.as_ref();
    Some(Info {
        name: c
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        key: repository_of(&image).to_owned(),
        image,
        image_digest: c.image.clone(),
        labels: cfg
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        privileged: hc.and_then(|h| h.privileged).unwrap_or(false),
        cap_add: hc.and_then(|h| h.cap_add.clone()).unwrap_or_default(),
        id,
        prev_cpu: None,
        due: Instant::now(),
        in_flight: false,
        // The first inventory a minute after the container is first seen: what it
        // writes at start-up is in it, and every replica started together is not
        // inventoried in the same instant.
        inventory_due: Instant::now() + Duration::from_secs(60),
        inventory_in_flight: false,
        watched: false,
    })
}

#[derive(Serialize)]
struct Envelope<'a> {
    host: &'a str,
    container: &'a Info,
    stats: serde_json::Value,
}

/// The latest stats-API object of every container sampled (JSON), with when it was
/// taken: evidence capture reads it instead of asking the engine again. Entries of
/// containers gone for ten minutes are dropped.
pub type LatestStats = Arc<std::sync::Mutex<HashMap<String, (Instant, Vec<u8>)>>>;

/// Runs until `stop` resolves or `out` is closed. `watched` is asked on every tick for
/// the containers to sample fast; `latest` receives every sample's stats object.
pub async fn run(
    docker: Docker,
    cfg: CollectorConfig,
    out: mpsc::Sender<Emit>,
    watched: impl Fn() -> Vec<String>,
    latest: LatestStats,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<()> {
    let mut containers: HashMap<String, Info> = HashMap::new();
    let (ev_tx, mut ev_rx) = mpsc::channel::<Option<EventMessage>>(1024);
    let events = tokio::spawn(follow_events(docker.clone(), cfg.label.clone(), ev_tx));
    let (res_tx, mut res_rx) = mpsc::channel::<(String, Result<serde_json::Value, &'static str>)>(
        cfg.max_concurrent.max(1) * 2,
    );
    let (inv_tx, mut inv_rx) =
        mpsc::channel::<(String, Result<[Event; 2], &'static str>)>(cfg.max_concurrent.max(1) * 2);
    let mut tracked = usize::MAX;
    let sem = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent.max(1)));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    relist(&docker, cfg.label.as_deref(), &mut containers).await;
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            ev = ev_rx.recv() => match ev {
                // The stream (re)connected: events may have been missed.
                Some(None) => relist(&docker, cfg.label.as_deref(), &mut containers).await,
                Some(Some(ev)) => {
                    if on_event(&docker, &cfg, &mut containers, ev, &out).await.is_err() {
                        break Ok(());
                    }
                }
                None => break Ok(()),
            },
            r = res_rx.recv() => {
                let Some((id, stats)) = r else { break Ok(()) };
                let running = containers.len();
                let Some(c) = containers.get_mut(&id) else { continue };
                c.in_flight = false;
                let stats = match stats {
                    Ok(v) => Some(v),
                    Err(reason) => {
                        if out.send(Emit::SampleFailed { reason }).await.is_err() {
                            break Ok(());
                        }
                        None
                    }
                };
                if let Some(v) = &stats
                    && let Ok(bytes) = serde_json::to_vec(v)
                {
                    let mut l = latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    // Gone containers stay ten minutes (a capture after death reads
                    // them), and are pruned once they outnumber the running by 1,024.
                    if l.len() > running + 1024 {
                        l.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(600));
                    }
                    l.insert(id.clone(), (Instant::now(), bytes));
                }
                if let Some(emit) = sample(&cfg.host, c, stats) && out.send(emit).await.is_err() {
                    break Ok(());
                }
            }
            r = inv_rx.recv() => {
                let Some((id, result)) = r else { break Ok(()) };
                let Some(c) = containers.get_mut(&id) else { continue };
                c.inventory_in_flight = false;
                let emits: Vec<Emit> = match result {
                    Ok(events) => events
                        .into_iter()
                        .map(|e| inventory_line(&cfg.host, c, e))
                        .collect(),
                    Err(reason) => vec![Emit::InventoryFailed { reason }],
                };
                let mut closed = false;
                for e in emits {
                    if out.send(e).await.is_err() {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break Ok(());
                }
            }
            _ = tick.tick() => {
                if containers.len() != tracked {
                    tracked = containers.len();
                    if out.send(Emit::Tracked(tracked)).await.is_err() {
                        break Ok(());
                    }
                }
                let fast: HashSet<String> = watched().into_iter().collect();
                let now = Instant::now();
                let every_inventory = (cfg.inventory_interval_ms > 0)
                    .then(|| Duration::from_millis(cfg.inventory_interval_ms.max(1000)));
                // One walk: each container's inventory when due, then its sample.
                for c in containers.values_mut() {
                    let watched = fast.contains(&c.id);
                    if let Some(every) = every_inventory
                        && inventory_due(c, watched, now, every)
                    {
                        let (docker, id, tx, sem, max) = (docker.clone(), c.id.clone(), inv_tx.clone(), Arc::clone(&sem), cfg.max_inventory_items);
                        tokio::spawn(async move {
                            let Ok(_permit) = sem.acquire_owned().await else { return };
                            let r = inventories(&docker, &id, max).await;
                            let _ = tx.send((id, r)).await;
                        });
                    }
                    if c.in_flight || c.due > now {
                        continue;
                    }
                    let every = if watched { cfg.fast_interval_ms } else { cfg.interval_ms };
                    c.due = now + Duration::from_millis(every.max(100));
                    c.in_flight = true;
                    let (docker, id, tx, sem) = (docker.clone(), c.id.clone(), res_tx.clone(), Arc::clone(&sem));
                    tokio::spawn(async move {
                        let Ok(_permit) = sem.acquire_owned().await else { return };
                        let _ = tx.send((id.clone(), stats_of(&docker, &id).await)).await;
                    });
                }
            }
        }
    };
    events.abort();
    result
}

/// Whether a container's inventory is due now, and if so marks it in flight and sets
/// the next one. A container just put under watch is due at once; the first of any
/// other is due a minute after it was first seen, or sooner with a shorter interval.
fn inventory_due(c: &mut Info, watched: bool, now: Instant, every: Duration) -> bool {
    if watched && !c.watched {
        c.inventory_due = now;
    }
    c.watched = watched;
    c.inventory_due = c.inventory_due.min(now + every);
    if c.inventory_in_flight || c.inventory_due > now {
        return false;
    }
    c.inventory_due = now + every;
    c.inventory_in_flight = true;
    true
}

/// One stats sample of a container (`one_shot`: no second read for `precpu_stats`;
/// the collector fills it from the previous sample).
async fn stats_of(docker: &Docker, id: &str) -> Result<serde_json::Value, &'static str> {
    let opts = StatsOptions {
        stream: false,
        one_shot: true,
    };
    match docker.stats(id, Some(opts)).next().await {
        Some(Ok(s)) => serde_json::to_value(s).map_err(|_| "docker_error"),
        Some(Err(e)) => {
            tracing::debug!(error = %e, container = %id, "stats failed");
            Err(match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => "not_found",
                _ => "docker_error",
            })
        }
        None => Err("empty"),
    }
}

/// `docker diff` and `docker top` of one container, summarised.
async fn inventories(docker: &Docker, id: &str, max: usize) -> Result<[Event; 2], &'static str> {
    let reason = |e: &bollard::errors::Error| match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => "not_found",
        _ => "docker_error",
    };
    let changes = docker.container_changes(id).await.map_err(|e| {
        tracing::debug!(error = %e, container = %id, "docker diff failed");
        reason(&e)
    })?;
    let changes = changes.unwrap_or_default().into_iter().map(|c| {
        let kind = match c.kind {
            ChangeType::_1 => Change::Added,
            ChangeType::_2 => Change::Deleted,
            ChangeType::_0 => Change::Changed,
        };
        (kind, c.path)
    });
    let fs = crate::inventory::summarise_changes(changes, max);
    // The kernel's process name and the parent's pid where the host's `ps` gives them
    // (procps); Docker's default columns otherwise.
    let mut top = None;
    for args in ["-eo pid,ppid,user,comm", "-ef"] {
        let opts = TopOptions {
            ps_args: args.to_owned(),
        };
        match docker.top_processes(id, Some(opts)).await {
            Ok(t) => {
                top = Some(t);
                break;
            }
            Err(e) if reason(&e) == "not_found" => return Err("not_found"),
            Err(e) => tracing::debug!(error = %e, container = %id, args, "docker top failed"),
        }
    }
    let top = top.ok_or("docker_error")?;
    let procs = crate::inventory::summarise_processes(
        &top.titles.unwrap_or_default(),
        &top.processes.unwrap_or_default(),
        max,
    );
    Ok([fs, procs])
}

/// An inventory event as a native line of the container.
fn inventory_line(host: &str, c: &Info, event: Event) -> Emit {
    let kind = event.kind();
    let o = Observation {
        ts_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        container: Arc::new(ContainerRef {
            id: c.id.as_str().into(),
            name: Some(c.name.as_str())
                .filter(|n| !n.is_empty())
                .map(Into::into),
            image: c.image.as_str().into(),
            image_digest: c.image_digest.as_deref().map(Into::into),
            labels: (&c.labels).into(),
            host: Some(host.into()),
        }),
        payload: Payload::Event(event),
    };
    Emit::Inventory {
        key: c.key.clone(),
        payload: crate::decode::encode_native(&o).into_bytes(),
        kind,
    }
}

/// Turns a stats object into an envelope; fills `precpu_stats` from the previous sample.
fn sample(host: &str, c: &mut Info, stats: Option<serde_json::Value>) -> Option<Emit> {
    let mut stats = stats?;
    let cpu: Option<ContainerCpuStats> = stats
        .get("cpu_stats")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if let (Some(prev), Some(obj)) = (c.prev_cpu.take(), stats.as_object_mut()) {
        let empty = obj
            .get("precpu_stats")
            .and_then(|p| p.get("system_cpu_usage"))
            .is_none_or(|v| v.as_u64().unwrap_or(0) == 0);
        if empty && let Ok(v) = serde_json::to_value(prev) {
            obj.insert("precpu_stats".into(), v);
        }
    }
    c.prev_cpu = cpu;
    let payload = serde_json::to_vec(&Envelope {
        host,
        container: c,
        stats,
    })
    .ok()?;
    Some(Emit::Sample {
        key: c.key.clone(),
        payload,
    })
}

async fn relist(docker: &Docker, label: Option<&str>, containers: &mut HashMap<String, Info>) {
    let filters = label.map(|l| HashMap::from([("label".to_owned(), vec![l.to_owned()])]));
    let listed = match docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters,
            ..ListContainersOptions::default()
        }))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing containers failed");
            return;
        }
    };
    let running: Vec<String> = listed.into_iter().filter_map(|c| c.id).collect();
    containers.retain(|id, _| running.contains(id));
    for id in running {
        if containers.contains_key(&id) {
            continue;
        }
        if let Ok(i) = docker.inspect_container(&id, None).await
            && let Some(info) = info_of(&i)
        {
            containers.insert(id, info);
        }
    }
    tracing::info!(containers = containers.len(), "containers listed");
}

async fn on_event(
    docker: &Docker,
    cfg: &CollectorConfig,
    containers: &mut HashMap<String, Info>,
    mut ev: EventMessage,
    out: &mpsc::Sender<Emit>,
) -> Result<(), ()> {
    let action = ev.action.clone().unwrap_or_default();
    let id = ev
        .actor
        .as_ref()
        .and_then(|a| a.id.clone())
        .unwrap_or_default();
    let is_container = matches!(
        ev.typ,
        Some(bollard::models::EventMessageTypeEnum::CONTAINER)
    );
    let mut key = String::new();
    if is_container {
        match action.as_str() {
            "start" => {
                if let Ok(i) = docker.inspect_container(&id, None).await
                    && let Some(info) = info_of(&i)
                {
                    if let Some(attrs) = ev.actor.as_mut().and_then(|a| a.attributes.as_mut()) {
                        attrs.insert("privileged".into(), info.privileged.to_string());
                        if !info.cap_add.is_empty() {
                            attrs.insert("capAdd".into(), info.cap_add.join(","));
                        }
                    }
                    containers.insert(id.clone(), info);
                }
            }
            "die" | "oom" => {
                let why = if action == "oom" { "oom" } else { "die" };
                out.send(Emit::Exit {
                    id: id.clone(),
                    why,
                })
                .await
                .map_err(|_| ())?;
            }
            _ => {}
        }
        key = containers.get(&id).map_or_else(
            || {
                ev.actor
                    .as_ref()
                    .and_then(|a| a.attributes.as_ref())
                    .and_then(|a| a.get("image"))
                    .map(|i| repository_of(i).to_owned())
                    .unwrap_or_default()
            },
            |c| c.key.clone(),
        );
        if matches!(action.as_str(), "die" | "destroy") {
            containers.remove(&id);
        }
    } else if let Some(c) = ev
        .actor
        .as_ref()
        .and_then(|a| a.attributes.as_ref())
        .and_then(|a| a.get("container"))
        .and_then(|cid| containers.get(cid))
    {
        key = c.key.clone();
    }
    let _ = cfg;
    let Ok(payload) = serde_json::to_vec(&ev) else {
        return Ok(());
    };
    out.send(Emit::Event { key, payload }).await.map_err(|_| ())
}

/// Follows `/events` (containers and networks), reconnecting with back-off. `None` on
/// the channel says "(re)connected: list again".
async fn follow_events(
    docker: Docker,
    label: Option<String>,
    tx: mpsc::Sender<Option<EventMessage>>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut filters = HashMap::new();
        match &label {
            Some(l) => {
                filters.insert("type".to_owned(), vec!["container".to_owned()]);
                filters.insert("label".to_owned(), vec![l.clone()]);
            }
            None => {
                filters.insert(
                    "type".to_owned(),
                    vec!["container".to_owned(), "network".to_owned()],
                );
            }
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let mut s = docker.events(Some(EventsOptions {
            since: Some(since),
            until: None,
            filters: Some(filters),
        }));
        if tx.send(None).await.is_err() {
            return;
        }
        while let Some(ev) = s.next().await {
            match ev {
                Ok(ev) => {
                    backoff = Duration::from_millis(250);
                    if tx.send(Some(ev)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "docker events stream failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fill_precpu_from_the_previous_one_and_decode() {
        let mut c = Info {
            id: "abc".into(),
            name: "web-1".into(),
            image: "shop/web:1".into(),
            image_digest: Some("sha256:aa".into()),
            labels: BTreeMap::new(),
            privileged: false,
            cap_add: vec![],
            key: "shop/web".into(),
            prev_cpu: None,
            due: Instant::now(),
            in_flight: false,
            inventory_due: Instant::now(),
            inventory_in_flight: false,
            watched: false,
        };
        let s = |total: u64, sys: u64| {
            serde_json::json!({"read":"2026-11-23T10:00:10Z","id":"abc",
                "cpu_stats":{"cpu_usage":{"total_usage":total},"system_cpu_usage":sys,"online_cpus":2},
                "precpu_stats":{"cpu_usage":{"total_usage":0}},
                "memory_stats":{"usage":1000}})
        };
        let Some(Emit::Sample { key, .. }) = sample("h", &mut c, Some(s(1_000, 10_000))) else {
            panic!("no sample")
        };
        assert_eq!(key, "shop/web");
        let Some(Emit::Sample { payload, .. }) = sample("h", &mut c, Some(s(3_000, 14_000))) else {
            panic!("no sample")
        };
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("test fixture");
        assert_eq!(v["stats"]["precpu_stats"]["system_cpu_usage"], 10_000);
        assert_eq!(v["container"]["image_digest"], "sha256:aa");
        let rec = crate::Decoder::new(crate::Limits::default()).decode(&payload);
        assert!(matches!(rec, Ok(crate::Record::Stats(_))), "{rec:?}");
    }
}
