//! The worker's side of the response loop, per task: the observation ring buffer, the
//! policy decision on every alert line, and the after-window attachments.
//!
//! - Every observation the task scores is kept per container for `before_ms + after_ms`
//!   of event time (bounded per container and per task), compactly: a sample is its
//!   time and its values against the container's metric names, shared between samples
//!   (`Ring`): 24 bytes and 8 per value, where a whole observation is ~500 bytes for
//!   a Docker sample's ten metrics (seven minutes at one sample a second: ~45 KB of
//!   values instead of ~210 KB).
//! - Every alert line goes through the [`Decider`] with the group's live replicas; the
//!   commands it issues go to `herd.actions` (key = host), its refusals to
//!   `herd.responses`. A `capture` carries the container's observations from the
//!   window before the alert.
//! - `after_ms` of event time after a capture, an `attach` command carries the
//!   observations since the alert, which the agent adds to the bundle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use herd_detect::Alert;
use herd_ingest::{ContainerRef, MetricName, Observation, Payload};
use herd_respond::command::{Action, Command, Outcome, Response};
use herd_respond::policy::{DEFAULT_TIMEOUT_MS, Decider, PolicyFile};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `[respond]`: the worker's response settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RespondConfig {
    /// The policy file (TOML); none means alerts only, no actions. Re-read when it
    /// changes, without a restart.
    pub policy_file: Option<std::path::PathBuf>,
    /// Where the agents write bundles, for the alert's `evidence` field (the agents'
    /// `agent.evidence_url` must be the same).
    pub evidence_url: String,
    /// Observations before the alert that a capture carries: five minutes.
    pub before_ms: i64,
    /// Observations after the alert that the `attach` addendum carries: two minutes.
    pub after_ms: i64,
    /// Most observations kept per container: seven minutes at one-second sampling.
    pub max_ring_per_container: usize,
    /// Most containers with a ring per task; beyond it the least recently seen goes.
    pub max_ring_containers: usize,
}

impl Default for RespondConfig {
    fn default() -> Self {
        Self {
            policy_file: None,
            evidence_url: "file:///var/lib/herd/evidence".into(),
            before_ms: 300_000,
            after_ms: 120_000,
            max_ring_per_container: 420,
            max_ring_containers: 50_000,
        }
    }
}

#[derive(Debug)]
struct Pending {
    due_ms: i64,
    cmd: Command,
}

/// What the responder asks the worker to publish.
#[derive(Debug)]
pub enum Publish {
    /// To `herd.actions`, key = host.
    Command(Box<Command>),
    /// To `herd.responses`, key = host.
    Response(Box<Response>),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Responder {
    cfg: RespondConfig,
    decider: Decider,
    ring: HashMap<Arc<str>, Ring>,
    pending: Vec<Pending>,
}

/// One container's recent observations. A metric sample is a [`Row`]: its time and its
/// metric names (shared with the rows before it while they stay the same, as they do
/// for a container's life), with its values in `values`; an event is kept whole.
#[derive(Debug)]
struct Ring {
    /// The latest event time seen.
    seen: i64,
    container: Arc<ContainerRef>,
    rows: VecDeque<Row>,
    /// The rows' values, each row's `names.len()` of them in turn.
    values: VecDeque<f64>,
    events: VecDeque<Observation>,
}

#[derive(Debug)]
struct Row {
    ts_ms: i64,
    names: Arc<[MetricName]>,
}

/// Makes room for `more` items in `q`: doubling its capacity as `VecDeque` does, but
/// not beyond `bound` items (unless `more` itself needs it).
fn grow_within<T>(q: &mut VecDeque<T>, more: usize, bound: usize) {
    let need = q.len() + more;
    if need > q.capacity() {
        let target = (q.capacity() * 2).max(8).min(bound).max(need);
        q.reserve_exact(target - q.len());
    }
}

impl Ring {
    fn new(container: &Arc<ContainerRef>) -> Self {
        Self {
            seen: i64::MIN,
            container: Arc::clone(container),
            rows: VecDeque::new(),
            values: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        self.rows.len() + self.events.len()
    }

    /// Keeps `o`, then forgets what is older than `keep_ms` before it or beyond the
    /// `max` newest.
    fn push(&mut self, o: &Observation, keep_ms: i64, max: usize) {
        self.seen = self.seen.max(o.ts_ms);
        if !Arc::ptr_eq(&self.container, &o.container) {
            // A new identity (a rename, a label): the rows kept carry it too.
            self.container = Arc::clone(&o.container);
        }
        match &o.payload {
            Payload::Metrics(m) => {
                let names = match self.rows.back() {
                    Some(r)
                        if r.names.len() == m.len()
                            && r.names.iter().zip(m).all(|(a, (b, _))| a == b) =>
                    {
                        Arc::clone(&r.names)
                    }
                    _ => m.iter().map(|(n, _)| n.clone()).collect(),
                };
                // Grown by doubling, but never past the bound (`max` rows and one
                // arriving): the slack beyond it would never be used, yet be written
                // (made resident) as the ring wraps round it, minutes after it filled.
                grow_within(&mut self.rows, 1, max + 1);
                grow_within(&mut self.values, m.len(), (max + 1) * m.len());
                self.values.extend(m.iter().map(|(_, v)| *v));
                self.rows.push_back(Row {
                    ts_ms: o.ts_ms,
                    names,
                });
            }
            Payload::Event(_) => self.events.push_back(o.clone()),
        }
        while let Some((ts, event)) = self.oldest() {
            if self.len() <= max && o.ts_ms - ts <= keep_ms {
                break;
            }
            if event {
                self.events.pop_front();
            } else if let Some(r) = self.rows.pop_front() {
                self.values.drain(..r.names.len().min(self.values.len()));
            }
        }
    }

    /// Capacity of the row and value buffers (tests).
    #[cfg(test)]
    fn capacity(&self) -> (usize, usize) {
        (self.rows.capacity(), self.values.capacity())
    }

    /// The oldest observation's time, and whether it is an event (else a sample).
    fn oldest(&self) -> Option<(i64, bool)> {
        let row = self.rows.front().map(|r| (r.ts_ms, false));
        let event = self.events.front().map(|e| (e.ts_ms, true));
        match (row, event) {
            (Some(r), Some(e)) => Some(if e.0 < r.0 { e } else { r }),
            (r, e) => r.or(e),
        }
    }

    /// The observations in `(from_ms, to_ms]`, in event-time order (a sample before an
    /// event of the same millisecond), rebuilt whole.
    fn window(&self, from_ms: i64, to_ms: i64) -> Vec<Observation> {
        let within = |ts: i64| ts > from_ms && ts <= to_ms;
        let mut out = Vec::new();
        let mut at = 0;
        let mut events = self.events.iter().filter(|e| within(e.ts_ms)).peekable();
        for row in &self.rows {
            let n = row.names.len();
            let (start, end) = (at, at + n);
            at = end;
            if !within(row.ts_ms) {
                continue;
            }
            while let Some(e) = events.next_if(|e| e.ts_ms < row.ts_ms) {
                out.push(e.clone());
            }
            let metrics = row
                .names
                .iter()
                .cloned()
                .zip(
                    self.values
                        .range(start..end.min(self.values.len()))
                        .copied(),
                )
                .collect();
            out.push(Observation {
                ts_ms: row.ts_ms,
                container: Arc::clone(&self.container),
                payload: Payload::Metrics(metrics),
            });
        }
        out.extend(events.cloned());
        out
    }
}

impl Responder {
    /// A responder with its policies.
    pub fn new(cfg: RespondConfig, policies: PolicyFile) -> Self {
        Self {
            decider: Decider::new(policies, cfg.evidence_url.clone()),
            cfg,
            ring: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Replaces the policies (reload).
    pub fn reload(&mut self, policies: PolicyFile) {
        self.decider.reload(policies);
    }

    /// Keeps an observation in its container's ring.
    pub fn record(&mut self, o: &Observation) {
        let keep = self.cfg.before_ms + self.cfg.after_ms;
        if self.ring.len() >= self.cfg.max_ring_containers
            && !self.ring.contains_key(&*o.container.id)
        {
            let now = o.ts_ms;
            self.ring.retain(|_, r| now - r.seen < keep);
            if self.ring.len() >= self.cfg.max_ring_containers
                && let Some(oldest) = self
                    .ring
                    .iter()
                    .min_by_key(|(_, r)| r.seen)
                    .map(|(k, _)| k.clone())
            {
                self.ring.remove(&oldest);
            }
        }
        let max = self.cfg.max_ring_per_container;
        match self.ring.get_mut(&*o.container.id) {
            Some(ring) => ring.push(o, keep, max),
            // Keyed by the identity's own id: shared, not copied.
            None => {
                let mut ring = Ring::new(&o.container);
                ring.push(o, keep, max);
                self.ring.insert(Arc::clone(&o.container.id), ring);
            }
        }
    }

    fn window(&self, container: &str, from_ms: i64, to_ms: i64) -> Vec<Box<RawValue>> {
        self.ring.get(container).map_or_else(Vec::new, |r| {
            r.window(from_ms, to_ms)
                .iter()
                .filter_map(|o| RawValue::from_string(herd_ingest::decode::encode_native(o)).ok())
                .collect()
        })
    }

    /// Decides on one alert line (setting its `evidence` when a capture is issued).
    pub fn on_alert(&mut self, alert: &mut Alert, live: &[&str], out: &mut Vec<Publish>) {
        let d = self.decider.decide(alert, live);
        for mut cmd in d.commands {
            if matches!(cmd.action, Action::Capture { .. }) {
                cmd.observations = self.window(
                    &cmd.container_id,
                    cmd.alert_ms - self.cfg.before_ms,
                    cmd.alert_ms,
                );
                if !cmd.dry_run {
                    self.pending.push(Pending {
                        due_ms: cmd.alert_ms + self.cfg.after_ms,
                        cmd: Command {
                            id: Command::key(&cmd.incident_id, &Action::Attach),
                            action: Action::Attach,
                            timeout_ms: DEFAULT_TIMEOUT_MS,
                            alert: None,
                            observations: Vec::new(),
                            ..cmd.clone()
                        },
                    });
                }
            }
            out.push(Publish::Command(Box::new(cmd)));
        }
        for r in d.refusals {
            let resp =
                Response::to(&r.command, Outcome::Refused, &by()).because(r.reason, r.detail);
            tracing::info!(
                incident = %r.command.incident_id,
                action = r.command.action.name(),
                reason = r.reason,
                "action refused"
            );
            out.push(Publish::Response(Box::new(resp)));
        }
    }

    /// Issues the `attach` commands whose after-window has passed at event time `now_ms`.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Publish>) {
        if self.pending.is_empty() {
            return;
        }
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due_ms <= now_ms);
        self.pending = later;
        for Pending { mut cmd, .. } in due {
            cmd.observations = self.window(
                &cmd.container_id,
                cmd.alert_ms,
                cmd.alert_ms + self.cfg.after_ms,
            );
            out.push(Publish::Command(Box::new(cmd)));
        }
    }

    /// Containments in force in a group (for tests and metrics).
    pub fn contained(&self, group: &str) -> usize {
        self.decider.contained(group)
    }
}

/// Who decided: recorded on refusals.
pub fn by() -> String {
    format!("herd-worker/{}", env!("CARGO_PKG_VERSION"))
}

/// A policy file read once and re-read when its modification time changes.
#[derive(Debug)]
pub struct PolicySource {
    path: std::path::PathBuf,
    mtime: Option<std::time::SystemTime>,
}

impl PolicySource {
    /// Reads the file; fails at start-up on an invalid one.
    pub fn open(path: &std::path::Path) -> anyhow::Result<(Self, PolicyFile)> {
        let file = PolicyFile::load(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok((
            Self {
                path: path.to_owned(),
                mtime,
            },
            file,
        ))
    }

    /// A new version when the file changed and is valid; an invalid one is logged and
    /// the policies in force stay.
    pub fn poll(&mut self) -> Option<Arc<PolicyFile>> {
        let m = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if m == self.mtime {
            return None;
        }
        self.mtime = m;
        match PolicyFile::load(&self.path) {
            Ok(f) => {
                tracing::info!(path = %self.path.display(), policies = f.policies.len(), "policies reloaded");
                Some(Arc::new(f))
            }
            Err(e) => {
                tracing::error!(error = %e, "policy file invalid; keeping the policies in force");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_detect::{Detector, Severity};
    use herd_ingest::Event;

    use super::*;

    fn obs(id: &str, ts_ms: i64) -> Observation {
        Observation {
            ts_ms,
            container: Arc::new(ContainerRef {
                id: id.into(),
                name: Some(id.into()),
                image: "shop/web:1".into(),
                image_digest: None,
                labels: Default::default(),
                host: Some("h".into()),
            }),
            payload: Payload::Metrics(vec![("cpu_cores".into(), 0.5)]),
        }
    }

    fn alert(ts_ms: i64) -> Alert {
        Alert {
            incident_id: "inc-1".into(),
            ts: herd_ingest::time::format_ms(ts_ms),
            seq: 0,
            container_id: "a".into(),
            container_name: "a".into(),
            group: "shop/web:1".into(),
            image: "shop/web:1".into(),
            host: Some("h".into()),
            severity: Severity::High,
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

    fn policies(text: &str) -> PolicyFile {
        PolicyFile::parse(text).expect("policy")
    }

    #[test]
    fn capture_carries_the_window_before_and_attach_the_window_after() {
        let cfg = RespondConfig {
            before_ms: 10_000,
            after_ms: 5_000,
            ..RespondConfig::default()
        };
        let mut r = Responder::new(
            cfg,
            policies("[[policy]]\nname = \"p\"\nactions = [{ action = \"capture\" }]"),
        );
        let t0 = 1_800_000_000_000;
        for s in 0..=20 {
            r.record(&obs("a", t0 + s * 1_000));
            r.record(&obs("b", t0 + s * 1_000));
        }
        let mut out = Vec::new();
        let mut a = alert(t0 + 20_000);
        r.on_alert(&mut a, &["a", "b", "c"], &mut out);
        assert_eq!(
            a.evidence.as_deref(),
            Some("file:///var/lib/herd/evidence/inc-1/")
        );
        let kinds: Vec<&str> = out
            .iter()
            .filter_map(|p| match p {
                Publish::Command(c) => Some(c.action.name()),
                Publish::Response(_) => None,
            })
            .collect();
        assert_eq!(kinds, ["focus", "capture"]);
        let Some(Publish::Command(cap)) = out.get(1) else {
            panic!("no capture")
        };
        // Ten seconds before the alert, this container only: samples 11..=20.
        assert_eq!(cap.observations.len(), 10);
        assert!(cap.observations.iter().all(|o| o.get().contains("\"a\"")));
        out.clear();
        for s in 21..30 {
            r.record(&obs("a", t0 + s * 1_000));
        }
        r.tick(t0 + 24_000, &mut out);
        assert!(out.is_empty(), "attach before the after-window passed");
        r.tick(t0 + 25_000, &mut out);
        let Some(Publish::Command(att)) = out.first() else {
            panic!("no attach")
        };
        assert_eq!(att.action, Action::Attach);
        assert_eq!(att.id, "inc-1/attach");
        assert_eq!(att.observations.len(), 5);
    }

    fn event(id: &str, ts_ms: i64, process: &str) -> Observation {
        Observation {
            payload: Payload::Event(Event::Exec {
                process: process.into(),
                args: vec![],
                user: None,
            }),
            ..obs(id, ts_ms)
        }
    }

    fn sample(id: &str, ts_ms: i64, metrics: &[(&'static str, f64)]) -> Observation {
        Observation {
            payload: Payload::Metrics(metrics.iter().map(|(n, v)| ((*n).into(), *v)).collect()),
            ..obs(id, ts_ms)
        }
    }

    #[test]
    fn the_ring_gives_back_what_it_kept_in_event_time_order() {
        let mut r = Responder::new(RespondConfig::default(), PolicyFile::default());
        let t0 = 1_800_000_000_000;
        let kept = [
            sample("a", t0, &[("cpu_cores", 0.5), ("mem_bytes", 2e8)]),
            event("a", t0 + 500, "sh"),
            sample("a", t0 + 1_000, &[("cpu_cores", 0.7), ("mem_bytes", 2.1e8)]),
            // Another layout of names (a producer's own metric appears).
            sample(
                "a",
                t0 + 2_000,
                &[("cpu_cores", 0.6), ("x", -1.0), ("mem_bytes", 3.0)],
            ),
            event("a", t0 + 2_000, "kill"),
            sample("a", t0 + 3_000, &[]),
            sample("a", t0 + 4_000, &[("cpu_cores", f64::MAX)]),
        ];
        for o in &kept {
            r.record(o);
        }
        let ring = &r.ring["a"];
        assert_eq!(ring.window(t0 - 1, t0 + 4_000), kept);
        assert_eq!(ring.window(t0, t0 + 2_000), kept[1..5]);
        assert!(ring.window(t0 + 4_000, i64::MAX).is_empty());
        // The first two samples share their names.
        assert!(Arc::ptr_eq(&ring.rows[0].names, &ring.rows[1].names));
    }

    #[test]
    fn the_ring_forgets_by_age_and_by_count_samples_and_events_alike() {
        // Ten seconds of a sample and an event each second, kept five seconds.
        let filled = |max_ring_per_container: usize| {
            let cfg = RespondConfig {
                before_ms: 3_000,
                after_ms: 2_000,
                max_ring_per_container,
                ..RespondConfig::default()
            };
            let mut r = Responder::new(cfg, PolicyFile::default());
            for s in 0..10 {
                r.record(&obs("a", s * 1_000));
                r.record(&event("a", s * 1_000 + 10, "id"));
            }
            r
        };
        let r = filled(4);
        let ring = &r.ring["a"];
        assert_eq!(ring.len(), 4, "bounded by count");
        assert_eq!(
            ring.values.len(),
            ring.rows.len(),
            "one value per kept sample"
        );
        let w = ring.window(i64::MIN, i64::MAX);
        assert_eq!(w.first().map(|o| o.ts_ms), Some(8_000));
        let w = filled(420).ring["a"].window(i64::MIN, i64::MAX);
        assert_eq!(
            w.first().map(|o| o.ts_ms),
            Some(4_010),
            "bounded by age: 5 s"
        );
        assert_eq!(w.len(), 11);
    }

    /// A ring at its bound holds no capacity beyond it: the slack a doubling buffer
    /// leaves (92 rows and 828 values here, ~9 KB a container) was never used, but
    /// became resident as the ring wrapped round it, a minute or two after the ring
    /// filled (the soak's late RSS rise, issue 8).
    #[test]
    fn a_full_ring_holds_no_capacity_beyond_its_bound() {
        let mut r = Responder::new(RespondConfig::default(), PolicyFile::default());
        let max = RespondConfig::default().max_ring_per_container;
        let mut o = obs("a", 0);
        o.payload = Payload::Metrics((0..9).map(|i| (format!("m{i}").into(), 1.0)).collect());
        // Twenty minutes at a sample a second: past the seven the ring keeps.
        for s in 0..1_200 {
            o.ts_ms = s * 1_000;
            r.record(&o);
        }
        let ring = &r.ring["a"];
        assert_eq!(ring.rows.len(), max);
        let (rows, values) = ring.capacity();
        assert!(rows <= max + 1, "{rows} rows of capacity for {max}");
        assert!(
            values <= (max + 1) * 9,
            "{values} values of capacity for {}",
            max * 9
        );
        // Below the bound it still grows by doubling (a copy per doubling, not per row).
        let mut q: VecDeque<u8> = VecDeque::new();
        let mut grew = 0;
        for _ in 0..1_000 {
            let before = q.capacity();
            grow_within(&mut q, 1, 1_001);
            q.push_back(0);
            grew += usize::from(q.capacity() != before);
        }
        assert!(grew <= 10, "{grew} reallocations for 1,000 pushes");
        assert!(q.capacity() <= 1_001);
    }

    #[test]
    fn refusals_become_responses_and_the_ring_is_bounded() {
        let cfg = RespondConfig {
            max_ring_per_container: 4,
            max_ring_containers: 2,
            ..RespondConfig::default()
        };
        let mut r = Responder::new(
            cfg,
            policies("[[policy]]\nname = \"p\"\nactions = [{ action = \"pause\" }]"),
        );
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            for s in 0..10 {
                r.record(&obs(id, 1_000 * (i as i64 * 10 + s)));
            }
        }
        assert_eq!(r.ring.len(), 2, "oldest container evicted");
        assert!(r.ring.values().all(|q| q.len() == 4 && q.values.len() == 4));
        let mut out = Vec::new();
        r.on_alert(&mut alert(40_000), &["a"], &mut out);
        let refused: Vec<&Response> = out
            .iter()
            .filter_map(|p| match p {
                Publish::Response(x) => Some(x.as_ref()),
                Publish::Command(_) => None,
            })
            .collect();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].outcome, Outcome::Refused);
        assert_eq!(refused[0].reason.as_deref(), Some("quorum"));
    }

    #[test]
    fn a_policy_file_is_reloaded_when_it_changes_and_kept_when_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[[policy]]\nname = \"one\"\n").expect("write");
        let (mut src, first) = PolicySource::open(&path).expect("open");
        assert_eq!(first.policies[0].name, "one");
        assert!(src.poll().is_none(), "unchanged");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "[[policy]]\nname = \"two\"\n").expect("write");
        let set_mtime = |secs: u64| {
            let f = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open");
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .expect("mtime");
        };
        set_mtime(2_000_000_000);
        assert_eq!(src.poll().expect("reloaded").policies[0].name, "two");
        std::fs::write(&path, "[[policy]]\nname = \"three\"\nbogus = 1\n").expect("write");
        set_mtime(2_000_000_100);
        assert!(src.poll().is_none(), "an invalid file is not put in force");
    }
}
