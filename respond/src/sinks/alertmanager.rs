//! The Alertmanager sink: open incidents as alerts on Alertmanager's API v2
//! (`POST /api/v2/alerts`), resolved when the incident closes.
//!
//! Alertmanager expects a client to keep sending the alerts that still fire (Prometheus
//! resends every minute with `endsAt` a few intervals ahead, so that alerts of a client
//! that died expire by themselves). The sink does the same: a [`Feed`] keeps one entry
//! per open incident; the worker updates it without blocking (a short lock, no I/O),
//! and [`run`] posts what changed at once and everything still firing every
//! `resend_interval_ms`. A closed incident is sent once more with `endsAt` set, which
//! resolves it. A failed post is retried with exponential back-off; meanwhile the feed
//! keeps taking updates (latest state wins), and beyond `max_tracked` incidents the one
//! updated least recently is dropped and counted. A down Alertmanager therefore never
//! slows detection, and never grows memory.
//!
//! Labels: `alertname="HerdIncident"`, `severity`, `group`, `container` (the name),
//! `host` (when known), `incident` (the id), and the configured static labels. A severity change
//! changes the label set, so the previous set is resolved as the new one fires.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use herd_detect::{Alert, Closed};
use serde::{Deserialize, Serialize};

/// `[alertmanager]`: where and how incidents are posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerConfig {
    /// Alertmanager base URLs (`http://alertmanager:9093`); every alert goes to each,
    /// as Prometheus does for an Alertmanager cluster. Empty: no Alertmanager.
    pub urls: Vec<String>,
    /// How often alerts still firing are sent again. Prometheus's own default (1 m).
    pub resend_interval_ms: u64,
    /// One request's time limit.
    pub timeout_ms: u64,
    /// First retry delay after a failed post; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    /// Longest retry delay.
    pub max_backoff_ms: u64,
    /// Most incidents tracked at once (open plus awaiting resolution). Ten thousand open
    /// incidents is far past any incident storm a human reads.
    pub max_tracked: usize,
    /// Most alerts per request (Alertmanager takes any number; smaller requests fail
    /// alone).
    pub max_batch: usize,
    /// Labels added to every alert (`cluster = "prod-eu"`).
    pub labels: BTreeMap<String, String>,
    /// `generatorURL` of every alert (a link to herd's dashboard), when set.
    pub generator_url: Option<String>,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            resend_interval_ms: 60_000,
            timeout_ms: 5_000,
            min_backoff_ms: 500,
            max_backoff_ms: 30_000,
            max_tracked: 10_000,
            max_batch: 500,
            labels: BTreeMap::new(),
            generator_url: None,
        }
    }
}

impl AlertmanagerConfig {
    /// Checks the settings; messages name the field.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::Config(format!("alertmanager.{m}")));
        for u in &self.urls {
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") => {}
                _ => return bad(&format!("urls: {u:?} is not an http(s) URL")),
            }
        }
        if self.resend_interval_ms < 1_000 {
            return bad("resend_interval_ms: must be at least 1000");
        }
        if self.timeout_ms == 0 || self.min_backoff_ms == 0 {
            return bad("timeout_ms and min_backoff_ms: must be positive");
        }
        if self.max_backoff_ms < self.min_backoff_ms {
            return bad("max_backoff_ms: must be at least min_backoff_ms");
        }
        if self.max_tracked == 0 || self.max_batch == 0 {
            return bad("max_tracked and max_batch: must be positive");
        }
        for k in self.labels.keys() {
            if k.is_empty()
                || !k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return bad(&format!("labels: {k:?} is not a valid label name"));
            }
        }
        Ok(())
    }
}

/// One alert as API v2 takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    /// Identity of the alert.
    pub labels: BTreeMap<String, String>,
    /// Everything else a human reads.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339: in the future while firing, the closing time once resolved.
    pub ends_at: String,
    /// Link back to the source, when configured.
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    pub generator_url: Option<String>,
}

/// Counters of the sink, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// Alerts (firing or resolved) Alertmanager accepted.
    pub sent: AtomicU64,
    /// Requests that failed (each is retried).
    pub failed_requests: AtomicU64,
    /// Incidents dropped because `max_tracked` was reached.
    pub dropped: AtomicU64,
    /// Resolutions sent.
    pub resolved: AtomicU64,
}

#[derive(Debug)]
struct Tracked {
    alert: PostableAlert,
    /// When it was last accepted; `None`: changed since, send at once.
    sent: Option<Instant>,
    /// Feed sequence of its last update (eviction order).
    touched: u64,
}

#[derive(Debug, Default)]
struct Book {
    firing: HashMap<String, Tracked>,
    /// Resolutions not yet accepted, oldest first.
    resolving: VecDeque<PostableAlert>,
    seq: u64,
}

#[derive(Debug)]
struct Shared {
    cfg: AlertmanagerConfig,
    book: Mutex<Book>,
    wake: tokio::sync::Notify,
    stats: Stats,
}

/// The worker's handle: cheap to clone, never blocks on the network.
#[derive(Debug, Clone)]
pub struct Feed(Arc<Shared>);

fn lock(m: &Mutex<Book>) -> MutexGuard<'_, Book> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Feed {
    /// A feed with nothing tracked.
    pub fn new(cfg: AlertmanagerConfig) -> Self {
        Self(Arc::new(Shared {
            cfg,
            book: Mutex::new(Book::default()),
            wake: tokio::sync::Notify::new(),
            stats: Stats::default(),
        }))
    }

    /// The sink's counters.
    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// Incidents firing and resolutions waiting.
    pub fn tracked(&self) -> (usize, usize) {
        let b = lock(&self.0.book);
        (b.firing.len(), b.resolving.len())
    }

    /// An alert line: opens or updates its incident's alert.
    pub fn fire(&self, a: &Alert) {
        let cfg = &self.0.cfg;
        let mut labels = cfg.labels.clone();
        labels.insert("alertname".into(), "HerdIncident".into());
        labels.insert("severity".into(), a.severity.as_str().into());
        labels.insert("group".into(), a.group.clone());
        labels.insert("container".into(), a.container_name.clone());
        if let Some(h) = a.host.as_ref().filter(|h| !h.is_empty()) {
            labels.insert("host".into(), h.clone());
        }
        labels.insert("incident".into(), a.incident_id.clone());
        let mut ann = BTreeMap::new();
        ann.insert("summary".into(), a.explanation.clone());
        ann.insert(
            "description".into(),
            format!(
                "{} (score {:.1} over threshold {:.1}; image {}; container {})",
                a.explanation, a.score, a.threshold, a.image, a.container_id
            ),
        );
        ann.insert(
            "detectors".into(),
            a.detectors
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        if !a.attack.is_empty() {
            ann.insert("attack".into(), a.attack.join(","));
        }
        if let Some(e) = &a.evidence {
            ann.insert("evidence".into(), e.clone());
        }
        let starts = DateTime::parse_from_rfc3339(&a.ts)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        let mut b = lock(&self.0.book);
        b.seq += 1;
        let seq = b.seq;
        let mut starts_at = rfc3339(starts);
        if let Some(old) = b.firing.remove(&a.incident_id) {
            // The incident began when it was first seen, whatever its updates say.
            starts_at = old.alert.starts_at.clone();
            if old.alert.labels != labels {
                let mut gone = old.alert;
                gone.ends_at = rfc3339(Utc::now());
                b.resolving.push_back(gone);
            }
        }
        b.firing.insert(
            a.incident_id.clone(),
            Tracked {
                alert: PostableAlert {
                    labels,
                    annotations: ann,
                    starts_at,
                    ends_at: String::new(),
                    generator_url: cfg.generator_url.clone(),
                },
                sent: None,
                touched: seq,
            },
        );
        self.bound(&mut b);
        drop(b);
        self.0.wake.notify_one();
    }

    /// An incident closed: its alert is resolved (at its closing time, or now when the
    /// closing time, in event time, is ahead of this clock).
    pub fn resolve(&self, c: &Closed) {
        let mut b = lock(&self.0.book);
        let Some(t) = b.firing.remove(&c.incident_id) else {
            return;
        };
        let now = Utc::now();
        let at = DateTime::<Utc>::from_timestamp_millis(c.closed_ms)
            .filter(|t| *t < now)
            .unwrap_or(now);
        let mut a = t.alert;
        a.ends_at = rfc3339(at);
        b.resolving.push_back(a);
        self.bound(&mut b);
        drop(b);
        self.0.wake.notify_one();
    }

    /// Stops tracking the incidents of groups another worker owns now (a rebalance).
    /// They are not resolved: the new owner updates or closes them, and an alert it
    /// never re-sends expires in Alertmanager at its `endsAt`.
    pub fn forget_groups(&self, groups: &std::collections::BTreeSet<String>) {
        lock(&self.0.book).firing.retain(|_, t| {
            t.alert
                .labels
                .get("group")
                .is_none_or(|g| !groups.contains(g))
        });
    }

    fn bound(&self, b: &mut Book) {
        let max = self.0.cfg.max_tracked;
        while b.firing.len() + b.resolving.len() > max {
            if b.resolving.pop_front().is_none() {
                let Some(k) = b
                    .firing
                    .iter()
                    .min_by_key(|(_, t)| t.touched)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                b.firing.remove(&k);
            }
            self.0.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What to post now: every resolution, every changed alert, and every alert not
    /// sent within the resend interval. Firing alerts get `endsAt` four intervals
    /// ahead. Also returns when the next alert falls due.
    fn due(&self, now: Instant) -> (Vec<PostableAlert>, Vec<String>, Option<Instant>) {
        let cfg = &self.0.cfg;
        let every = Duration::from_millis(cfg.resend_interval_ms);
        let ends = rfc3339(Utc::now() + every * 4);
        let b = lock(&self.0.book);
        let mut out: Vec<PostableAlert> = b.resolving.iter().cloned().collect();
        let mut ids = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, t) in &b.firing {
            match t.sent {
                Some(at) if now.duration_since(at) < every => {
                    let due = at + every;
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
                _ => {
                    let mut a = t.alert.clone();
                    a.ends_at = ends.clone();
                    out.push(a);
                    ids.push(id.clone());
                }
            }
        }
        (out, ids, next)
    }

    /// Marks what a successful post carried as sent.
    fn accepted(&self, resolutions: usize, ids: &[String], at: Instant) {
        let mut b = lock(&self.0.book);
        let n = resolutions.min(b.resolving.len());
        b.resolving.drain(..n);
        for id in ids {
            if let Some(t) = b.firing.get_mut(id) {
                t.sent = Some(at);
            }
        }
        self.0
            .stats
            .sent
            .fetch_add((n + ids.len()) as u64, Ordering::Relaxed);
        self.0.stats.resolved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Posts the feed to Alertmanager until `stop` turns true; a last attempt to deliver
/// what is pending is made then (bounded by one request timeout).
pub async fn run(feed: Feed, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = feed.0.cfg.clone();
    if cfg.urls.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alertmanager client could not be built");
            return;
        }
    };
    let mut backoff = Duration::from_millis(cfg.min_backoff_ms);
    // How long to sleep; while backing off, new alerts wait for the retry too.
    let (mut wait, mut backing_off) = (Duration::ZERO, false);
    loop {
        let stopping = tokio::select! {
            biased;
            _ = stop.changed() => true,
            _ = feed.0.wake.notified(), if !backing_off => false,
            _ = tokio::time::sleep(wait) => false,
        };
        let now = Instant::now();
        let (batch, ids, next) = feed.due(now);
        let resolutions = batch.len() - ids.len();
        if batch.is_empty() {
            backing_off = false;
            wait = next.map_or(Duration::from_secs(3600), |n| {
                n.saturating_duration_since(now)
            });
            if stopping {
                return;
            }
            continue;
        }
        let span = tracing::debug_span!("alertmanager_post", alerts = batch.len());
        match tracing::Instrument::instrument(post(&client, &cfg, &batch), span).await {
            Ok(()) => {
                feed.accepted(resolutions, &ids, now);
                backoff = Duration::from_millis(cfg.min_backoff_ms);
                (wait, backing_off) = (Duration::ZERO, false);
            }
            Err(e) => {
                feed.0.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "alertmanager post failed");
                (wait, backing_off) = (backoff, true);
                backoff = (backoff * 2).min(Duration::from_millis(cfg.max_backoff_ms));
            }
        }
        if stopping {
            return;
        }
    }
}

/// Posts in batches to every URL; succeeds when each batch reached at least one
/// Alertmanager (a cluster shares what one member receives).
async fn post(
    client: &reqwest::Client,
    cfg: &AlertmanagerConfig,
    alerts: &[PostableAlert],
) -> crate::Result<()> {
    for chunk in alerts.chunks(cfg.max_batch) {
        let mut last = None;
        let mut ok = false;
        for base in &cfg.urls {
            let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
            match client.post(&url).json(chunk).send().await {
                Ok(r) if r.status().is_success() => ok = true,
                Ok(r) => last = Some(format!("{url}: HTTP {}", r.status())),
                Err(e) => last = Some(format!("{url}: {e}")),
            }
        }
        if !ok {
            return Err(crate::Error::Http(last.unwrap_or_default()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_detect::Severity;

    fn alert(id: &str, sev: Severity) -> Alert {
        serde_json::from_value(serde_json::json!({
            "incident_id": id, "ts": "2026-11-23T10:00:00.000Z", "seq": 0,
            "container_id": "c1", "container_name": "web-1", "group": "nginx@sha256:ab",
            "image": "nginx:1", "host": "node-a", "severity": sev.as_str(),
            "score": 9.0, "threshold": 5.0, "detectors": ["peer"],
            "explanation": "web-1 sends 40x its peers", "features": [], "novel": [],
            "events": [], "attack": [], "labels": {}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn closed(id: &str) -> Closed {
        Closed {
            incident_id: id.into(),
            container_id: "c1".into(),
            group: "g".into(),
            severity: Severity::High,
            closed_ms: 0,
        }
    }

    fn cfg(max_tracked: usize) -> AlertmanagerConfig {
        AlertmanagerConfig {
            urls: vec!["http://127.0.0.1:9".into()],
            max_tracked,
            ..AlertmanagerConfig::default()
        }
    }

    #[test]
    fn fires_once_resends_after_the_interval_and_resolves_on_close() {
        let f = Feed::new(cfg(10));
        f.fire(&alert("inc-1", Severity::High));
        let t0 = Instant::now();
        let (batch, ids, _) = f.due(t0);
        assert_eq!(batch.len(), 1);
        let a = &batch[0];
        assert_eq!(a.labels["alertname"], "HerdIncident");
        assert_eq!(a.labels["severity"], "high");
        assert_eq!(a.labels["container"], "web-1");
        assert_eq!(a.labels["host"], "node-a");
        assert_eq!(a.labels["incident"], "inc-1");
        assert_eq!(a.annotations["summary"], "web-1 sends 40x its peers");
        assert_eq!(a.starts_at, "2026-11-23T10:00:00.000Z");
        assert!(a.ends_at > rfc3339(Utc::now()), "firing ends in the future");
        f.accepted(0, &ids, t0);
        assert!(f.due(t0 + Duration::from_secs(1)).0.is_empty());
        let (again, _, _) = f.due(t0 + Duration::from_secs(61));
        assert_eq!(again.len(), 1, "resent after the interval");
        f.resolve(&closed("inc-1"));
        let (batch, ids, _) = f.due(t0 + Duration::from_secs(62));
        assert_eq!((batch.len(), ids.len()), (1, 0));
        assert_eq!(batch[0].ends_at, "1970-01-01T00:00:00.000Z");
        f.accepted(1, &ids, t0);
        assert_eq!(f.tracked(), (0, 0));
        assert_eq!(f.stats().resolved.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_severity_change_resolves_the_old_label_set() {
        let f = Feed::new(cfg(10));
        f.fire(&alert("inc-1", Severity::Medium));
        let mut up = alert("inc-1", Severity::Critical);
        up.ts = "2026-11-23T10:05:00.000Z".into();
        f.fire(&up);
        let (batch, ids, _) = f.due(Instant::now());
        assert_eq!((batch.len(), ids.len()), (2, 1));
        assert_eq!(batch[0].labels["severity"], "medium");
        assert!(batch[0].ends_at <= rfc3339(Utc::now()));
        assert_eq!(batch[1].labels["severity"], "critical");
        assert_eq!(batch[1].starts_at, "2026-11-23T10:00:00.000Z");
    }

    #[test]
    fn tracking_is_bounded_and_drops_the_least_recently_updated() {
        let f = Feed::new(cfg(3));
        for i in 0..5 {
            f.fire(&alert(&format!("inc-{i}"), Severity::Low));
        }
        assert_eq!(f.tracked(), (3, 0));
        assert_eq!(f.stats().dropped.load(Ordering::Relaxed), 2);
        let (batch, _, _) = f.due(Instant::now());
        let mut ids: Vec<&str> = batch
            .iter()
            .map(|a| a.labels["incident"].as_str())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["inc-2", "inc-3", "inc-4"]);
    }

    #[test]
    fn groups_handed_off_are_forgotten_without_resolving() {
        let f = Feed::new(cfg(10));
        f.fire(&alert("inc-1", Severity::Low));
        f.forget_groups(&["nginx@sha256:ab".to_owned()].into());
        assert_eq!(f.tracked(), (0, 0));
        assert!(f.due(Instant::now()).0.is_empty());
    }

    #[test]
    fn closing_an_unknown_incident_sends_nothing_and_bad_settings_are_named() {
        let f = Feed::new(cfg(3));
        f.resolve(&closed("never-fired"));
        assert!(f.due(Instant::now()).0.is_empty());
        let mut c = cfg(3);
        c.urls = vec!["ftp://x".into()];
        assert!(c.validate().is_err());
        let mut c = cfg(3);
        c.labels.insert("bad-name".into(), "x".into());
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("alertmanager.labels"), "{e}");
    }
}
