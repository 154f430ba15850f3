//! Stateful normalisation: decoded [`Record`]s in event-time order → [`Observation`]s.
//!
//! Owns the container registry (identity joins) and the counter state (rates): a
//! container's counters live in its registry entry, a Prometheus series' beside it. Both
//! are bounded: counter state idle for `container_ttl_ms` of event time is forgotten, a
//! container's identity after `identity_ttl_ms`, and the registry never holds more than
//! `max_containers`.

mod rates;
mod registry;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decode::{
    DockerEventRecord, FalcoRecord, PromRecord, Record, Reject, RejectReason, StatsRecord,
    StatsSource,
};
use crate::model::{ContainerRef, Event, MetricName, Observation, Payload, metric};
use rates::{Ordering, RateState, RateWindow};
use registry::Registry;

/// Normaliser settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizerConfig {
    /// Forget a container's counter state after this much event time without input: no
    /// rate spans that long. One hour outlives any scrape or sampling interval by far.
    pub container_ttl_ms: i64,
    /// Forget a container's identity (image, name, labels) after this much event time
    /// without input. Only a `start` event gives a raw stats sample its identity back,
    /// so this outlasts what can separate a running container's samples from the rest
    /// of the stream: its agent down for hours, or its samples' partition an hour
    /// behind the others in a catch-up (the newest record of any input sets the clock).
    /// Checkpoints leave it out while it is the default, so that the version before it
    /// still reads them.
    #[serde(skip_serializing_if = "is_default_identity_ttl")]
    pub identity_ttl_ms: i64,
    /// Most containers remembered at once (registry and counters), oldest evicted first.
    /// 200k is twice the largest fleet a worker is sized for (issue 7: 100k containers).
    pub max_containers: usize,
    /// Shortest interval between two samples that yields a rate: Docker's stats stream
    /// ticks once a second, and anything much closer is a duplicate with jitter.
    pub min_rate_interval_ms: i64,
    /// Longest interval that still yields a rate: beyond ten minutes the average hides
    /// what happened and most likely spans a restart.
    pub max_rate_interval_ms: i64,
    /// `exec_create` and `exec_start` of one command within this window count once.
    pub exec_dedup_ms: i64,
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        Self {
            container_ttl_ms: 3_600_000,
            identity_ttl_ms: DEFAULT_IDENTITY_TTL_MS,
            max_containers: 200_000,
            min_rate_interval_ms: 500,
            max_rate_interval_ms: 600_000,
            exec_dedup_ms: 5_000,
        }
    }
}

/// A day: a container's identity is a few hundred bytes, and `max_containers` bounds
/// how many are kept however many containers come and go in a day.
const DEFAULT_IDENTITY_TTL_MS: i64 = 86_400_000;

fn is_default_identity_ttl(ms: &i64) -> bool {
    *ms == DEFAULT_IDENTITY_TTL_MS
}

impl NormalizerConfig {
    /// Checks the settings; the error names the field as the configuration spells it.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(crate::Error::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.container_ttl_ms <= 0 {
            return bad("normalizer.container_ttl_ms", "must be positive");
        }
        if self.identity_ttl_ms < self.container_ttl_ms {
            return bad(
                "normalizer.identity_ttl_ms",
                "must be at least normalizer.container_ttl_ms",
            );
        }
        if self.max_containers == 0 {
            return bad("normalizer.max_containers", "must be at least 1");
        }
        if self.min_rate_interval_ms < 0 || self.max_rate_interval_ms <= self.min_rate_interval_ms {
            return bad(
                "normalizer.max_rate_interval_ms",
                "must be greater than normalizer.min_rate_interval_ms (>= 0)",
            );
        }
        Ok(())
    }
}

/// Why a decodable record yielded nothing, beyond decoder filters. Counted, not
/// dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A sample with the same time as the previous one of its container.
    Duplicate,
    /// A sample older than the previous one of its container.
    Late,
    /// The second half of an `exec_create`/`exec_start` pair.
    ExecDuplicate,
}

/// The normaliser. Serialisable, so a worker can hand it over with its groups.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(from = "Wire")]
pub struct Normalizer {
    cfg: NormalizerConfig,
    registry: Registry,
    rates: RateState,
    /// Recent execs per container: (dedup key, time).
    recent_execs: rustc_hash::FxHashMap<Arc<str>, Vec<(String, i64)>>,
    max_ts_ms: i64,
    since_evict: u32,
}

/// A normaliser as a checkpoint holds it. The containers' counter state is apart from
/// the registry there (`rates.stats`, by id), as it was before it moved into the
/// registry's entries; restored, it moves back in.
#[derive(Deserialize)]
struct Wire {
    cfg: NormalizerConfig,
    registry: Registry,
    rates: RatesWire,
    recent_execs: rustc_hash::FxHashMap<Arc<str>, Vec<(String, i64)>>,
    max_ts_ms: i64,
    since_evict: u32,
}

#[derive(Deserialize)]
struct RatesWire {
    #[serde(default)]
    stats: rustc_hash::FxHashMap<String, rates::PrevStats>,
    #[serde(default)]
    prom: rustc_hash::FxHashMap<String, (i64, f64)>,
}

impl From<Wire> for Normalizer {
    fn from(w: Wire) -> Self {
        let mut registry = w.registry;
        // A container's counters without its entry (the registry had forgotten it) are
        // not kept: its next sample starts them afresh.
        for (id, p) in w.rates.stats {
            if let Some(slot) = registry.counters_mut(&id) {
                *slot = p;
            }
        }
        Self {
            cfg: w.cfg,
            registry,
            rates: RateState { prom: w.rates.prom },
            recent_execs: w.recent_execs,
            max_ts_ms: w.max_ts_ms,
            since_evict: w.since_evict,
        }
    }
}

impl Serialize for Normalizer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// The containers' counter state by id, read from the registry's entries.
        struct Stats<'a>(&'a Registry);
        impl Serialize for Stats<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.counters())
            }
        }
        #[derive(Serialize)]
        struct Rates<'a> {
            stats: Stats<'a>,
            prom: &'a rustc_hash::FxHashMap<String, (i64, f64)>,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            cfg: &'a NormalizerConfig,
            registry: &'a Registry,
            rates: Rates<'a>,
            recent_execs: &'a rustc_hash::FxHashMap<Arc<str>, Vec<(String, i64)>>,
            max_ts_ms: i64,
            since_evict: u32,
        }
        Out {
            cfg: &self.cfg,
            registry: &self.registry,
            rates: Rates {
                stats: Stats(&self.registry),
                prom: &self.rates.prom,
            },
            recent_execs: &self.recent_execs,
            max_ts_ms: self.max_ts_ms,
            since_evict: self.since_evict,
        }
        .serialize(s)
    }
}

impl Normalizer {
    /// A normaliser with the given settings.
    pub fn new(cfg: NormalizerConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &NormalizerConfig {
        &self.cfg
    }

    /// Puts other settings in force over the state kept. A checkpoint carries the
    /// settings it was written under; a worker restarted with changed ones restores
    /// the state and applies its own, or a change would never reach a restored task.
    /// Narrower limits (TTLs, `max_containers`) take effect at the next eviction pass.
    pub fn reconfigure(&mut self, cfg: NormalizerConfig) {
        self.cfg = cfg;
    }

    /// Containers currently known.
    pub fn containers(&self) -> usize {
        self.registry.len()
    }

    /// Whether `rec` can be joined to a container now: `false` only for a raw stats
    /// sample (which names no image) of a container no event has identified yet. A
    /// stream whose events come on another topic can hold such a sample back until the
    /// `start` event arrives instead of rejecting it.
    pub fn identifies(&self, rec: &Record) -> bool {
        match rec {
            Record::Stats(s) => s.container().is_some() || self.registry.contains(s.id()),
            _ => true,
        }
    }

    /// Counter series currently remembered: containers with counter state, and
    /// Prometheus series.
    pub fn counter_series(&self) -> usize {
        self.registry.counters().count() + self.rates.len()
    }

    /// Turns one record into zero or more observations appended to `out`.
    /// `Ok(Some(d))` tells why a valid record produced nothing.
    pub fn normalize(
        &mut self,
        rec: Record,
        out: &mut Vec<Observation>,
    ) -> Result<Option<Dropped>, Reject> {
        if let Some(ts) = rec.ts_ms() {
            self.max_ts_ms = self.max_ts_ms.max(ts);
        }
        self.since_evict += 1;
        if self.since_evict >= 4096 {
            self.since_evict = 0;
            let before = self.max_ts_ms - self.cfg.container_ttl_ms;
            let forget = self.max_ts_ms - self.cfg.identity_ttl_ms;
            self.registry.evict(before, forget, self.cfg.max_containers);
            self.rates.evict(before);
            self.recent_execs.clear();
        }
        match rec {
            Record::Native(o) => {
                // The decoder made this identity and nothing else holds it: take it
                // rather than copy it (the registry keeps its own Arc when unchanged).
                let c = Arc::try_unwrap(o.container).unwrap_or_else(|shared| (*shared).clone());
                let cref = self.registry.upsert(c, o.ts_ms);
                out.push(Observation {
                    ts_ms: o.ts_ms,
                    container: cref,
                    payload: o.payload,
                });
                Ok(None)
            }
            Record::Stats(s) => self.stats(s, out),
            Record::DockerEvent(e) => self.docker_event(e, out),
            Record::Falco(f) => self.falco(*f, out),
            Record::Prom(p) => self.prom(*p, out),
            Record::Filtered { .. } => Ok(None),
        }
    }

    fn window(&self) -> RateWindow {
        RateWindow {
            min_dt_ms: self.cfg.min_rate_interval_ms,
            max_dt_ms: self.cfg.max_rate_interval_ms,
        }
    }

    fn stats(
        &mut self,
        s: StatsRecord,
        out: &mut Vec<Observation>,
    ) -> Result<Option<Dropped>, Reject> {
        let w = self.window();
        let (cref, prev) = match s.source {
            StatsSource::Identity(c) => self.registry.upsert_shared(c, s.ts_ms),
            StatsSource::Raw { id, .. } => self
                .registry
                .get_with_counters(&id, s.ts_ms)
                .ok_or_else(|| {
                    Reject::new(
                        RejectReason::UnknownContainer,
                        format!("raw stats of {} before its start event", short(&id)),
                    )
                })?,
        };
        let mut metrics = Vec::with_capacity(11);
        match prev.advance(s.ts_ms, &s.counters, w, &mut metrics) {
            Ordering::Fresh => {}
            Ordering::Duplicate => return Ok(Some(Dropped::Duplicate)),
            Ordering::Late => return Ok(Some(Dropped::Late)),
        }
        if !metrics.is_empty() {
            out.push(Observation {
                ts_ms: s.ts_ms,
                container: cref,
                payload: Payload::Metrics(metrics),
            });
        }
        Ok(None)
    }

    fn docker_event(
        &mut self,
        e: DockerEventRecord,
        out: &mut Vec<Observation>,
    ) -> Result<Option<Dropped>, Reject> {
        let cref = match self.registry.upsert_from_event(
            &e.id,
            e.name,
            e.image,
            e.image_digest,
            e.labels,
            e.ts_ms,
        ) {
            Some(c) => c,
            None => {
                return Err(Reject::new(
                    RejectReason::UnknownContainer,
                    format!(
                        "{} event of unknown container {}",
                        e.event.kind(),
                        short(&e.id)
                    ),
                ));
            }
        };
        if let Event::Exec { process, args, .. } = &e.event {
            let key = e
                .exec_id
                .clone()
                .unwrap_or_else(|| format!("{process} {}", args.join(" ")));
            let recent = self.recent_execs.entry(Arc::clone(&cref.id)).or_default();
            let horizon = e.ts_ms - self.cfg.exec_dedup_ms;
            recent.retain(|(_, ts)| *ts >= horizon);
            if recent.iter().any(|(k, _)| *k == key) {
                return Ok(Some(Dropped::ExecDuplicate));
            }
            if recent.len() < 64 {
                recent.push((key, e.ts_ms));
            }
        }
        if matches!(e.event, Event::Start { .. }) {
            // A started container's counters begin anew.
            if let Some(prev) = self.registry.counters_mut(&cref.id) {
                *prev = rates::PrevStats::NONE;
            }
            self.rates.forget(&cref.id);
        }
        out.push(Observation {
            ts_ms: e.ts_ms,
            container: cref,
            payload: Payload::Event(e.event),
        });
        Ok(None)
    }

    fn falco(
        &mut self,
        f: FalcoRecord,
        out: &mut Vec<Observation>,
    ) -> Result<Option<Dropped>, Reject> {
        let cref = match self.registry.get_by_prefix(&f.container_id, f.ts_ms) {
            Some(c) => c,
            // Not seen through Docker: Falco's own fields still name the image.
            None => match f.image {
                Some(image) => {
                    let c = crate::decode::container_ref(
                        f.container_id,
                        f.container_name,
                        image,
                        f.k8s,
                        f.host,
                    );
                    let mut c = c;
                    if c.image_digest.is_none() {
                        c.image_digest = f.image_digest.map(Into::into);
                    }
                    self.registry.upsert(c, f.ts_ms)
                }
                None => {
                    return Err(Reject::new(
                        RejectReason::UnknownContainer,
                        format!(
                            "falco event of unknown container {}",
                            short(&f.container_id)
                        ),
                    ));
                }
            },
        };
        out.push(Observation {
            ts_ms: f.ts_ms,
            container: cref,
            payload: Payload::Event(f.event),
        });
        Ok(None)
    }

    fn prom(
        &mut self,
        p: PromRecord,
        out: &mut Vec<Observation>,
    ) -> Result<Option<Dropped>, Reject> {
        if !p.value.is_finite() {
            return Ok(None);
        }
        let cref = match self.registry.get(&p.container_id, p.ts_ms) {
            Some(c) => c,
            None => match p.image {
                Some(image) => {
                    let c = crate::decode::container_ref(
                        p.container_id.clone(),
                        p.container_name,
                        image,
                        p.labels,
                        p.host
                            .map(|h| h.split(':').next().unwrap_or_default().to_owned()),
                    );
                    self.registry.upsert(c, p.ts_ms)
                }
                None => {
                    return Err(Reject::new(
                        RejectReason::UnknownContainer,
                        format!("series of unknown container {}", short(&p.container_id)),
                    ));
                }
            },
        };
        let Some((name, counter)) = prom_metric(&p.name, p.series_discriminator.as_deref()) else {
            return Ok(None);
        };
        let value = if counter {
            let key = format!(
                "{}\u{0}{}\u{0}{}",
                cref.id,
                p.name,
                p.series_discriminator.as_deref().unwrap_or_default()
            );
            let w = self.window();
            match self.rates.prom_counter(key, p.ts_ms, p.value, w) {
                (Ordering::Duplicate, _) => return Ok(Some(Dropped::Duplicate)),
                (Ordering::Late, _) => return Ok(Some(Dropped::Late)),
                (Ordering::Fresh, None) => return Ok(None),
                (Ordering::Fresh, Some(rate)) => rate,
            }
        } else {
            p.value
        };
        out.push(Observation {
            ts_ms: p.ts_ms,
            container: cref,
            payload: Payload::Metrics(vec![(name, value)]),
        });
        Ok(None)
    }

    /// Registers a container directly (an agent's inspect, a test fixture).
    pub fn register(&mut self, c: ContainerRef, ts_ms: i64) -> Arc<ContainerRef> {
        self.registry.upsert(c, ts_ms)
    }
}

/// Maps a cAdvisor series to herd's metric name and whether it is a counter.
/// Configuration-like series (`container_spec_*`, start time, last seen) carry no
/// behaviour and are skipped.
fn prom_metric(name: &str, discriminator: Option<&str>) -> Option<(MetricName, bool)> {
    if name.starts_with("container_spec_")
        || matches!(
            name,
            "container_last_seen" | "container_start_time_seconds" | "container_scrape_error"
        )
    {
        return None;
    }
    let canonical = match name {
        "container_cpu_usage_seconds_total" => Some(metric::CPU_CORES),
        "container_memory_working_set_bytes" => Some(metric::MEM_BYTES),
        "container_network_receive_bytes_total" => Some(metric::NET_RX_BPS),
        "container_network_transmit_bytes_total" => Some(metric::NET_TX_BPS),
        "container_network_receive_packets_total" => Some(metric::NET_RX_PPS),
        "container_network_transmit_packets_total" => Some(metric::NET_TX_PPS),
        "container_fs_reads_bytes_total" => Some(metric::BLK_READ_BPS),
        "container_fs_writes_bytes_total" => Some(metric::BLK_WRITE_BPS),
        "container_processes" => Some(metric::PIDS),
        _ => None,
    };
    let counter = name.ends_with("_total");
    let base: MetricName = match canonical {
        Some(c) => c.into(),
        None if counter => format!("{}_per_s", name.trim_end_matches("_total")).into(),
        None => name.to_owned().into(),
    };
    // Per-interface and per-device series stay apart, except the usual single one.
    let name = match discriminator {
        Some(d) if !d.is_empty() && d != "eth0" && canonical != Some(metric::CPU_CORES) => {
            format!("{base}.{d}").into()
        }
        _ => base,
    };
    Some((name, counter))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;

    fn run(n: &mut Normalizer, line: &str) -> Result<Vec<Observation>, Reject> {
        let rec = Decoder::default().decode(line.as_bytes())?;
        let mut out = vec![];
        n.normalize(rec, &mut out)?;
        Ok(out)
    }

    const START: &str = r#"{"Type":"container","Action":"start","Actor":{"ID":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","Attributes":{"image":"shop/web:1.4","name":"web-1","app":"web"}},"time":1795427990}"#;

    #[test]
    fn raw_stats_join_through_the_start_event() {
        let mut n = Normalizer::default();
        let stats = r#"{"read":"2026-11-23T10:00:10Z","id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","name":"/web-1","cpu_stats":{"cpu_usage":{"total_usage":2000000000},"system_cpu_usage":40000000000,"online_cpus":4},"precpu_stats":{"cpu_usage":{"total_usage":1500000000},"system_cpu_usage":36000000000},"memory_stats":{"usage":1000,"stats":{"inactive_file":100}}}"#;
        let err = run(&mut n, stats).map_err(|r| r.reason);
        assert_eq!(err.err(), Some(RejectReason::UnknownContainer));
        let ev = run(&mut n, START).unwrap_or_default();
        assert_eq!(ev.len(), 1);
        let obs = run(&mut n, stats).unwrap_or_default();
        assert_eq!(obs.len(), 1);
        assert_eq!(&*obs[0].container.image, "shop/web:1.4");
        assert_eq!(obs[0].container.labels.get("app"), Some("web"));
        let Payload::Metrics(m) = &obs[0].payload else {
            panic!()
        };
        assert!(m.contains(&(metric::CPU_CORES.into(), 0.5)));
        assert!(m.contains(&(metric::MEM_BYTES.into(), 900.0)));
    }

    /// Envelope samples of `n` containers: each is registered with counter state.
    fn envelopes(norm: &mut Normalizer, n: u64, round: u64) {
        let d = Decoder::default();
        let mut ids = crate::Identities::new(64);
        for i in 0..n {
            let line = format!(
                r#"{{"host":"node-1","container":{{"id":"{i:064x}","name":"web-{i}","image":"shop/web:1.4","image_digest":"sha256:ab","labels":{{"app":"web"}}}},"stats":{{"read":"2026-11-23T10:00:{round:02}Z","cpu_stats":{{"cpu_usage":{{"total_usage":{c}}},"system_cpu_usage":{s},"online_cpus":4}},"precpu_stats":{{"cpu_usage":{{"total_usage":0}},"system_cpu_usage":0}},"memory_stats":{{"usage":1000}}}}}}"#,
                c = round * 1_000_000_000,
                s = round * 4_000_000_000,
            );
            let rec = d
                .decode_with(line.as_bytes(), &mut ids)
                .unwrap_or_else(|e| panic!("{e}"));
            norm.normalize(rec, &mut Vec::new())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_restored_normaliser_is_the_same_and_holds_each_id_once_issue_7() {
        let mut n = Normalizer::default();
        envelopes(&mut n, 3, 10);
        let bytes = serde_json::to_vec(&n).unwrap_or_default();
        let back: Normalizer = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, n);
        // The counter state is in the checkpoint by id, as before it moved into the
        // registry's entries, and restored there.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let stats = v["rates"]["stats"].as_object().map(|m| m.len());
        assert_eq!(stats, Some(3), "{v}");
        assert_eq!(back.counter_series(), 3);
        // A checkpoint of the earlier form (short ids listed) restores the same.
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        v["registry"]["short"] = serde_json::json!({ "000000000000": format!("{:064x}", 1) });
        let old: Normalizer = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old, n);
        // And it goes on deriving rates where the checkpoint left off.
        let mut m = back.clone();
        envelopes(&mut m, 3, 20);
        assert_eq!(m.counter_series(), 3);
    }

    /// `n` envelope samples of one other container, a second apart from `from_s`
    /// seconds past 2026-11-23T00:00:00Z: they move the stream's clock on.
    fn other_input(norm: &mut Normalizer, from_s: u64, n: u64) {
        let d = Decoder::default();
        let mut ids = crate::Identities::new(64);
        for k in 0..n {
            let t = from_s + k;
            let (day, h, m, s) = (23 + t / 86_400, t / 3600 % 24, t / 60 % 60, t % 60);
            let line = format!(
                r#"{{"host":"node-2","container":{{"id":"{:064x}","name":"db-1","image":"shop/db:2"}},"stats":{{"read":"2026-11-{day:02}T{h:02}:{m:02}:{s:02}Z","cpu_stats":{{"cpu_usage":{{"total_usage":{t}000000000}},"system_cpu_usage":{t}000000000,"online_cpus":4}},"memory_stats":{{"usage":1000}}}}}}"#,
                7
            );
            let rec = d
                .decode_with(line.as_bytes(), &mut ids)
                .unwrap_or_else(|e| panic!("{e}"));
            norm.normalize(rec, &mut Vec::new())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// A raw stats sample of the container `START` names, at `hms` on 2026-11-23, its
    /// CPU counter at `secs` seconds.
    fn raw_sample(hms: &str, secs: u64) -> String {
        let (cpu, sys) = (secs * 1_000_000_000, secs * 4_000_000_000);
        format!(
            r#"{{"read":"2026-11-23T{hms}Z","id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","name":"/web-1","cpu_stats":{{"cpu_usage":{{"total_usage":{cpu}}},"system_cpu_usage":{sys},"online_cpus":4}},"memory_stats":{{"usage":1000}}}}"#
        )
    }

    /// A raw stats sample gets its image only from its container's `start` event. The
    /// samples' partition an hour and more behind the others (a catch-up, a stalled
    /// fetch) must not cost a running container its identity for the rest of its life:
    /// its counter state goes after `container_ttl_ms`, its identity only after
    /// `identity_ttl_ms`.
    #[test]
    fn a_raw_container_keeps_its_identity_while_other_inputs_run_hours_ahead() {
        let mut n = Normalizer::default();
        run(&mut n, START).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            run(&mut n, &raw_sample("10:00:10", 10)).map(|o| o.len()),
            Ok(1)
        );
        assert_eq!(n.registry.counters().count(), 1);
        // The other inputs run from 12:30 on: enough records for an eviction pass.
        other_input(&mut n, 12 * 3600 + 1800, 5000);
        assert_eq!(n.registry.counters().count(), 1, "db-1's alone are recent");
        let late = run(&mut n, &raw_sample("10:01:10", 70)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(late.len(), 1);
        assert_eq!(&*late[0].container.image, "shop/web:1.4");
        // A day later, with nothing heard of it since, it is forgotten.
        other_input(&mut n, 86_400 + 11 * 3600, 5000);
        let gone = run(&mut n, &raw_sample("10:02:10", 130)).map_err(|r| r.reason);
        assert_eq!(gone.err(), Some(RejectReason::UnknownContainer));
    }

    #[test]
    fn the_identity_ttl_outlasts_the_counters_and_is_checkpointed_only_when_set() {
        let mut cfg = NormalizerConfig {
            identity_ttl_ms: 1_000,
            ..NormalizerConfig::default()
        };
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("normalizer.identity_ttl_ms"), "{err}");
        // The default is left out of a checkpoint: the version before it reads it.
        let json = |n: &Normalizer| serde_json::to_value(n).unwrap_or_default();
        let default = json(&Normalizer::default());
        assert!(default["cfg"].get("identity_ttl_ms").is_none(), "{default}");
        cfg.identity_ttl_ms = 7_200_000;
        assert_eq!(cfg.validate().ok(), Some(()));
        let set = json(&Normalizer::new(cfg.clone()));
        assert_eq!(set["cfg"]["identity_ttl_ms"], 7_200_000);
        let back: Normalizer = serde_json::from_value(set).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, Normalizer::new(cfg));
    }

    /// A checkpoint carries the settings it was written under; reconfigured after the
    /// restore, the normaliser keeps the state and applies the settings in force.
    #[test]
    fn a_restored_normaliser_takes_the_settings_in_force() {
        let hour = NormalizerConfig {
            identity_ttl_ms: 3_600_000,
            ..NormalizerConfig::default()
        };
        let mut n = Normalizer::new(hour.clone());
        run(&mut n, START).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            run(&mut n, &raw_sample("10:00:10", 10)).map(|o| o.len()),
            Ok(1)
        );
        let bytes = serde_json::to_vec(&n).unwrap_or_default();
        let restore =
            || -> Normalizer { serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}")) };
        // As checkpointed, an hour's silence costs the container its identity...
        let mut kept = restore();
        assert_eq!(kept.config(), &hour);
        other_input(&mut kept, 12 * 3600 + 1800, 5000);
        let gone = run(&mut kept, &raw_sample("10:01:10", 70)).map_err(|r| r.reason);
        assert_eq!(gone.err(), Some(RejectReason::UnknownContainer));
        // ...under the settings in force (a day), it does not.
        let mut now = restore();
        now.reconfigure(NormalizerConfig::default());
        assert_eq!(now.containers(), n.containers());
        other_input(&mut now, 12 * 3600 + 1800, 5000);
        let late = run(&mut now, &raw_sample("10:01:10", 70)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(late.len(), 1);
        assert_eq!(&*late[0].container.image, "shop/web:1.4");
    }

    #[test]
    fn falco_short_ids_join_to_full_ids() {
        let mut n = Normalizer::default();
        run(&mut n, START).unwrap_or_default();
        let falco = r#"{"rule":"Terminal shell in container","priority":"Notice","time":"2026-11-23T10:00:00Z","output_fields":{"container.id":"8f2c1a2b3c4d","proc.exepath":"/bin/sh"}}"#;
        let obs = run(&mut n, falco).unwrap_or_default();
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].container.id.len(), 64);
    }

    #[test]
    fn exec_create_and_start_count_once() {
        let mut n = Normalizer::default();
        run(&mut n, START).unwrap_or_default();
        let create = r#"{"Type":"container","Action":"exec_create: sh -c id","Actor":{"ID":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","Attributes":{"image":"shop/web:1.4","name":"web-1","execID":"e1"}},"time":1795428000}"#;
        let start = create.replace("exec_create", "exec_start");
        assert_eq!(run(&mut n, create).map(|v| v.len()), Ok(1));
        assert_eq!(run(&mut n, &start).map(|v| v.len()), Ok(0));
    }

    #[test]
    fn cadvisor_counters_become_rates() {
        let mut n = Normalizer::default();
        let id = "8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f";
        let line = |ts: &str, v: &str| {
            format!(
                r#"{{"timestamp":"{ts}","value":"{v}","name":"container_cpu_usage_seconds_total","labels":{{"__name__":"container_cpu_usage_seconds_total","id":"/docker/{id}","image":"shop/web:1.4","name":"web-1"}}}}"#
            )
        };
        assert_eq!(
            run(&mut n, &line("2026-11-23T10:00:00Z", "10")).map(|v| v.len()),
            Ok(0)
        );
        let obs = run(&mut n, &line("2026-11-23T10:00:10Z", "15")).unwrap_or_default();
        assert_eq!(
            obs[0].payload,
            Payload::Metrics(vec![(metric::CPU_CORES.into(), 0.5)])
        );
    }
}
