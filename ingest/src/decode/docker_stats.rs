//! Docker Engine stats-API JSON (`GET /containers/{id}/stats`), raw or inside the agent
//! envelope. Only the cumulative counters and gauges are extracted here; rates are
//! derived by the normaliser, which remembers the previous sample of each container.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{
    Identities, Key, LenientStr, Limits, Obj, Record, Reject, RejectReason, Top, bounded_str,
    raw_str, split_image_str, string_map,
};
use crate::model::ContainerRef;

mod fast;
pub(super) use fast::envelope as fast_envelope;

/// Counters and gauges of one stats sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsCounters {
    /// Cumulative container CPU time, ns.
    pub cpu_total_ns: Option<f64>,
    /// Cumulative host CPU time, ns (`system_cpu_usage`).
    pub cpu_system_ns: Option<f64>,
    /// The previous reading of the same two counters (`precpu_stats`), when present.
    pub precpu_total_ns: Option<f64>,
    /// See [`Self::precpu_total_ns`].
    pub precpu_system_ns: Option<f64>,
    /// Online CPUs.
    pub online_cpus: Option<f64>,
    /// Memory working set, bytes (usage minus inactive file, cgroup v1 or v2).
    pub mem_working_set: Option<f64>,
    /// Memory limit, bytes (absent when unlimited).
    pub mem_limit: Option<f64>,
    /// Network rx bytes, tx bytes, rx packets, tx packets, summed over interfaces.
    pub net: Option<[f64; 4]>,
    /// Block IO bytes read and written.
    pub blk: Option<[f64; 2]>,
    /// Current number of pids.
    pub pids: Option<f64>,
}

/// One decoded stats sample.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRecord {
    /// Sample time (`read`).
    pub ts_ms: i64,
    /// Whose sample it is.
    pub source: StatsSource,
    /// The counters.
    pub counters: StatsCounters,
}

/// Whose a stats sample is.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsSource {
    /// The identity the agent's envelope carried (id, name, image, labels, host): for a
    /// known container, the one its decoder already holds, shared, so that a sample
    /// costs no copy of it (one reference count, where its id, name and host apart were
    /// three more and an allocation).
    Identity(Arc<ContainerRef>),
    /// Raw stats: what the stats object says of the container. The normaliser joins it
    /// to the identity its registry learned from the engine's events.
    Raw {
        /// Container id.
        id: Arc<str>,
        /// Container name without Docker's leading `/`.
        name: Option<Arc<str>>,
    },
}

impl StatsRecord {
    /// The container's id.
    pub fn id(&self) -> &Arc<str> {
        match &self.source {
            StatsSource::Identity(c) => &c.id,
            StatsSource::Raw { id, .. } => id,
        }
    }

    /// The identity the envelope carried; `None` for raw stats.
    pub fn container(&self) -> Option<&Arc<ContainerRef>> {
        match &self.source {
            StatsSource::Identity(c) => Some(c),
            StatsSource::Raw { .. } => None,
        }
    }

    /// The container's name, as the identity or the stats object has it.
    pub fn name(&self) -> Option<&str> {
        match &self.source {
            StatsSource::Identity(c) => c.name.as_deref(),
            StatsSource::Raw { name, .. } => name.as_deref(),
        }
    }
}

#[derive(Deserialize)]
struct CpuUsage {
    total_usage: Option<f64>,
    percpu_usage: Option<Count>,
}

#[derive(Deserialize)]
struct CpuStats {
    cpu_usage: Option<CpuUsage>,
    system_cpu_usage: Option<f64>,
    online_cpus: Option<f64>,
}

#[derive(Deserialize)]
struct MemStats {
    usage: Option<f64>,
    limit: Option<f64>,
    stats: Option<MemDetail>,
}

/// The two keys of `memory_stats.stats` herd needs (cgroup v1 and v2); the dozens of
/// others are skipped without being stored.
#[derive(Deserialize)]
struct MemDetail {
    total_inactive_file: Option<f64>,
    inactive_file: Option<f64>,
}

#[derive(Deserialize)]
struct NetStats {
    rx_bytes: Option<f64>,
    tx_bytes: Option<f64>,
    rx_packets: Option<f64>,
    tx_packets: Option<f64>,
}

#[derive(Deserialize)]
struct BlkEntry<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    value: f64,
}

#[derive(Deserialize)]
struct Blkio {
    io_service_bytes_recursive: Option<BlkSum>,
}

#[derive(Deserialize)]
struct Pids {
    current: Option<f64>,
}

/// The length of an array whose elements are not needed (`percpu_usage`).
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut s: S) -> Result<Count, S::Error> {
                let mut n = 0;
                while s.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The interfaces' counters summed as they are read (rx bytes, tx bytes, rx packets,
/// tx packets), and how many interfaces there were.
struct NetSum {
    sum: [f64; 4],
    n: usize,
}

impl NetSum {
    const EMPTY: Self = Self {
        sum: [0.0; 4],
        n: 0,
    };

    /// Adds one interface's rx bytes, tx bytes, rx packets and tx packets (what is
    /// missing or unusable counts 0).
    fn add(&mut self, counters: [Option<f64>; 4]) {
        self.n += 1;
        for (slot, x) in self.sum.iter_mut().zip(counters) {
            *slot += finite_nonneg(x).unwrap_or(0.0);
        }
    }
}

impl<'de> Deserialize<'de> for NetSum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NetSum;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of interfaces")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<NetSum, M::Error> {
                let mut out = NetSum::EMPTY;
                while m.next_key::<IgnoredAny>()?.is_some() {
                    let n: NetStats = m.next_value()?;
                    out.add([n.rx_bytes, n.tx_bytes, n.rx_packets, n.tx_packets]);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Block IO bytes read and written, summed as the entries are read, and the number of
/// entries.
struct BlkSum {
    rw: [f64; 2],
    n: usize,
}

impl BlkSum {
    const EMPTY: Self = Self { rw: [0.0; 2], n: 0 };

    /// Adds one entry: its bytes to reads or writes by its `op` (any case); other ops
    /// and unusable values are counted as entries only.
    fn add(&mut self, op: &[u8], value: f64) {
        self.n += 1;
        let Some(val) = finite_nonneg(Some(value)) else {
            return;
        };
        if op.eq_ignore_ascii_case(b"read") {
            self.rw[0] += val;
        } else if op.eq_ignore_ascii_case(b"write") {
            self.rw[1] += val;
        }
    }
}

impl<'de> Deserialize<'de> for BlkSum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BlkSum;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of block IO entries")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut s: S) -> Result<BlkSum, S::Error> {
                let mut out = BlkSum::EMPTY;
                while let Some(e) = s.next_element::<BlkEntry<'de>>()? {
                    out.add(e.op.as_bytes(), e.value);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

fn finite_nonneg(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v >= 0.0)
}

/// The parts of a stats-API object herd reads, each typed as it is read (whether at the
/// top level of a raw stats line or inside the envelope's `stats`). The first of
/// repeated keys wins.
#[derive(Default)]
pub(crate) struct StatsParts {
    cpu: Option<Option<CpuStats>>,
    precpu: Option<Option<CpuStats>>,
    mem: Option<Option<MemStats>>,
    nets: Option<Option<NetSum>>,
    blkio: Option<Option<Blkio>>,
    pids: Option<Option<Pids>>,
}

impl StatsParts {
    /// Reads the value of `key` if it is a stats part; `false` (nothing read) otherwise.
    pub(crate) fn read_part<'de, M: serde::de::MapAccess<'de>>(
        &mut self,
        key: &str,
        m: &mut M,
    ) -> Result<bool, M::Error> {
        fn part<'de, T: Deserialize<'de>, M: serde::de::MapAccess<'de>>(
            slot: &mut Option<Option<T>>,
            m: &mut M,
        ) -> Result<bool, M::Error> {
            if slot.is_some() {
                m.next_value::<IgnoredAny>()?;
            } else {
                *slot = Some(m.next_value()?);
            }
            Ok(true)
        }
        match key {
            "cpu_stats" => part(&mut self.cpu, m),
            "precpu_stats" => part(&mut self.precpu, m),
            "memory_stats" => part(&mut self.mem, m),
            "networks" => part(&mut self.nets, m),
            "blkio_stats" => part(&mut self.blkio, m),
            "pids_stats" => part(&mut self.pids, m),
            _ => Ok(false),
        }
    }

    /// Whether these are the parts of a raw stats object (it has CPU figures).
    pub(crate) fn is_raw_stats(&self) -> bool {
        self.cpu.is_some() || self.precpu.is_some()
    }
}

/// The envelope's `stats`: a stats-API object, read in one typed pass (strings borrowed
/// from the line; every key herd does not read skipped without being stored).
pub(crate) struct StatsDoc<'a> {
    read: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    parts: StatsParts,
}

impl<'de: 'a, 'a> Deserialize<'de> for StatsDoc<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = StatsDoc<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a stats object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut doc = StatsDoc {
                    read: None,
                    id: None,
                    name: None,
                    parts: StatsParts::default(),
                };
                while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
                    let slot = match k.as_ref() {
                        "read" => &mut doc.read,
                        "id" => &mut doc.id,
                        "name" => &mut doc.name,
                        other => {
                            if !doc.parts.read_part(other, &mut m)? {
                                m.next_value::<IgnoredAny>()?;
                            }
                            continue;
                        }
                    };
                    let v = m.next_value::<LenientStr<'de>>()?.0;
                    if slot.is_none() {
                        *slot = v;
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

pub(super) fn decode_envelope(
    top: Top<'_>,
    l: &Limits,
    ids: &mut Identities,
) -> Result<Record, Reject> {
    let v = &top.obj;
    let c = v
        .obj("container")?
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "container"))?;
    let id = c
        .get("id")
        .and_then(raw_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "container.id"))?;
    let id = bounded_str(&id, l.max_string_bytes);
    let host = v.get("host").and_then(raw_str);
    let host = host.as_deref().map(|h| bounded_str(h, l.max_string_bytes));
    let cref = match ids.get(id) {
        Some(known) if same_identity(known, &c, host, l) => Arc::clone(known),
        _ => {
            let image = c
                .str("image", l)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Reject::new(RejectReason::MissingField, "container.image"))?;
            let (image, digest_in_image) = split_image_str(&image);
            let digest = c.str("image_digest", l).filter(|s| !s.is_empty());
            let digest = digest.as_deref().or(digest_in_image);
            let cref = Arc::new(ContainerRef {
                id: id.into(),
                name: c.str("name", l).map(|n| n.trim_start_matches('/').into()),
                image: ids.intern(image),
                image_digest: digest.map(|d| ids.intern(d)),
                labels: string_map(c.get("labels"), l, &[])?.into(),
                host: host.map(|h| ids.intern(h)),
            });
            ids.remember(&cref);
            cref
        }
    };
    let Some(Some(doc)) = top.stats else {
        return Err(Reject::new(RejectReason::MissingField, "stats"));
    };
    stats_record(doc, l, Some(cref))
}

/// Whether the envelope's `container` (and `host`) is exactly `known`, as decoding it
/// anew would make it: compared in place, nothing copied. Anything unusual (labels
/// out of order, a label value that is a number, an image without a tag) answers
/// `false`, and the identity is simply decoded again.
fn same_identity(known: &ContainerRef, c: &Obj<'_>, host: Option<&str>, l: &Limits) -> bool {
    let max = l.max_string_bytes;
    let s = |k: &str| c.get(k).and_then(raw_str);
    if known.host.as_deref() != host {
        return false;
    }
    let name = s("name");
    let name = name
        .as_deref()
        .map(|n| bounded_str(n, max).trim_start_matches('/'));
    if known.name.as_deref() != name {
        return false;
    }
    let Some(image) = s("image") else {
        return false;
    };
    let (repo, digest_in_image) = split_image_str(bounded_str(&image, max));
    let digest = s("image_digest");
    let digest = digest
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| bounded_str(d, max))
        .or(digest_in_image);
    if *known.image != *repo || known.image_digest.as_deref() != digest {
        return false;
    }
    let Some(raw) = c.get("labels") else {
        return known.labels.is_empty();
    };
    let Ok(Some(labels)) = Obj::parse(raw) else {
        return false;
    };
    if labels.len() != known.labels.len() {
        return false;
    }
    // Labels are written from a sorted map (the agent's): compared in order, which also
    // proves the keys distinct.
    labels
        .iter()
        .zip(known.labels.iter())
        .all(|((k, v), (kk, kv))| {
            bounded_str(k, max) == kk && raw_str(v).is_some_and(|v| bounded_str(&v, max) == kv)
        })
}

/// A raw stats object: its parts were read with the top level.
pub(super) fn decode_top(top: Top<'_>, l: &Limits) -> Result<Record, Reject> {
    let s = |k: &str| top.obj.get(k).and_then(raw_str);
    let doc = StatsDoc {
        read: s("read"),
        id: s("id"),
        name: s("name"),
        parts: top.parts,
    };
    stats_record(doc, l, None)
}

fn stats_record(
    doc: StatsDoc<'_>,
    l: &Limits,
    container: Option<Arc<ContainerRef>>,
) -> Result<Record, Reject> {
    let read = doc.read.as_deref().unwrap_or_default();
    // A stopped container's stats carry the zero time and empty counters.
    if read.starts_with("0001-01-01") {
        return Ok(Record::Filtered {
            ts_ms: None,
            reason: "stopped_container",
        });
    }
    let ts_ms = crate::time::parse_rfc3339_ms(read).ok_or_else(|| {
        Reject::new(
            RejectReason::InvalidTimestamp,
            format!("unusable read time {read:?}"),
        )
    })?;
    let source = match container {
        Some(c) => StatsSource::Identity(c),
        None => StatsSource::Raw {
            id: doc
                .id
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| Arc::from(bounded_str(s, l.max_string_bytes)))
                .ok_or_else(|| Reject::new(RejectReason::MissingField, "id"))?,
            name: doc
                .name
                .as_deref()
                .map(|n| Arc::from(bounded_str(n.trim_start_matches('/'), l.max_string_bytes))),
        },
    };
    let p = doc.parts;
    let (cpu, precpu, mem, nets, blkio, pids) = (
        p.cpu.flatten(),
        p.precpu.flatten(),
        p.mem.flatten(),
        p.nets.flatten(),
        p.blkio.flatten(),
        p.pids.flatten(),
    );

    let mut c = StatsCounters::default();
    if let Some(cpu) = cpu {
        let usage = cpu.cpu_usage;
        c.cpu_total_ns = finite_nonneg(usage.as_ref().and_then(|u| u.total_usage));
        c.cpu_system_ns = finite_nonneg(cpu.system_cpu_usage);
        c.online_cpus = finite_nonneg(cpu.online_cpus)
            .filter(|n| *n > 0.0)
            .or_else(|| {
                usage
                    .as_ref()
                    .and_then(|u| u.percpu_usage.as_ref())
                    .map(|p| p.0 as f64)
                    .filter(|n| *n > 0.0)
            });
    }
    if let Some(p) = precpu {
        c.precpu_total_ns = finite_nonneg(p.cpu_usage.and_then(|u| u.total_usage));
        c.precpu_system_ns = finite_nonneg(p.system_cpu_usage);
    }
    if let Some(m) = mem {
        if let Some(usage) = finite_nonneg(m.usage) {
            // cgroup v1 reports total_inactive_file, v2 inactive_file (what `docker stats`
            // and the kubelet subtract to get the working set).
            let inactive = m
                .stats
                .as_ref()
                .and_then(|s| s.total_inactive_file.or(s.inactive_file))
                .and_then(|x| finite_nonneg(Some(x)))
                .unwrap_or(0.0);
            c.mem_working_set = Some((usage - inactive).max(0.0));
        }
        // An unlimited container reports the host's memory or 2^63-ish; only a real limit
        // makes a ratio meaningful, and it is recognised later against the usage.
        c.mem_limit = finite_nonneg(m.limit).filter(|x| *x > 0.0 && *x < 9.0e18);
    }
    if let Some(nets) = nets {
        if nets.n > l.max_items {
            return Err(Reject::new(RejectReason::TooManyItems, "networks"));
        }
        c.net = Some(nets.sum);
    }
    if let Some(entries) = blkio.and_then(|b| b.io_service_bytes_recursive) {
        if entries.n > l.max_items {
            return Err(Reject::new(RejectReason::TooManyItems, "blkio"));
        }
        c.blk = Some(entries.rw);
    }
    c.pids = pids.and_then(|p| finite_nonneg(p.current));
    Ok(Record::Stats(StatsRecord {
        ts_ms,
        source,
        counters: c,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;
    use crate::decode::RejectReason;

    pub(crate) const RAW_V2: &str = r#"{"read":"2026-11-23T10:00:10.000000000Z","preread":"2026-11-23T10:00:09.000000000Z","pids_stats":{"current":12,"limit":4096},"blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":4096},{"major":8,"minor":0,"op":"write","value":8192}]},"num_procs":0,"cpu_stats":{"cpu_usage":{"total_usage":2000000000,"usage_in_kernelmode":1,"usage_in_usermode":1},"system_cpu_usage":40000000000,"online_cpus":4,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},"precpu_stats":{"cpu_usage":{"total_usage":1500000000},"system_cpu_usage":36000000000,"online_cpus":4},"memory_stats":{"usage":104857600,"stats":{"inactive_file":4194304,"anon":90000000},"limit":536870912},"name":"/web-1","id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","networks":{"eth0":{"rx_bytes":1000,"rx_packets":10,"rx_errors":0,"rx_dropped":0,"tx_bytes":2000,"tx_packets":20,"tx_errors":0,"tx_dropped":0}}}"#;

    #[test]
    fn extracts_counters_from_cgroup_v2_stats() {
        let Ok(Record::Stats(s)) = Decoder::default().decode(RAW_V2.as_bytes()) else {
            panic!("not stats")
        };
        assert_eq!(s.name(), Some("web-1"));
        assert!(s.container().is_none());
        let c = &s.counters;
        assert_eq!(c.mem_working_set, Some(104_857_600.0 - 4_194_304.0));
        assert_eq!(c.mem_limit, Some(536_870_912.0));
        assert_eq!(c.net, Some([1000.0, 2000.0, 10.0, 20.0]));
        assert_eq!(c.blk, Some([4096.0, 8192.0]));
        assert_eq!(c.pids, Some(12.0));
        assert_eq!(c.online_cpus, Some(4.0));
    }

    #[test]
    fn cgroup_v1_subtracts_total_inactive_file() {
        let line = RAW_V2.replace(
            r#""inactive_file":4194304"#,
            r#""total_inactive_file":1048576"#,
        );
        let Ok(Record::Stats(s)) = Decoder::default().decode(line.as_bytes()) else {
            panic!("not stats")
        };
        assert_eq!(
            s.counters.mem_working_set,
            Some(104_857_600.0 - 1_048_576.0)
        );
    }

    #[test]
    fn envelope_carries_identity() {
        let line = format!(
            r#"{{"host":"node-1","container":{{"id":"8f2c","name":"web-1","image":"shop/web:1.4","image_digest":"sha256:aa","labels":{{"a":"b"}}}},"stats":{RAW_V2}}}"#
        );
        let Ok(Record::Stats(s)) = Decoder::default().decode(line.as_bytes()) else {
            panic!("not stats")
        };
        let c = s
            .container()
            .map(|c| (&*c.image, c.image_digest.as_deref(), c.host.as_deref()));
        assert_eq!(c, Some(("shop/web:1.4", Some("sha256:aa"), Some("node-1"))));
        assert_eq!((&**s.id(), s.name()), ("8f2c", Some("web-1")));
    }

    fn envelope(labels: &str) -> String {
        format!(
            r#"{{"host":"node-1","container":{{"id":"8f2c","name":"/web-1","image":"shop/web:1.4","image_digest":"sha256:aa","labels":{{{labels}}}}},"stats":{RAW_V2}}}"#
        )
    }

    fn identity(d: &Decoder, line: &str, ids: &mut Identities) -> Arc<ContainerRef> {
        match d.decode_with(line.as_bytes(), ids) {
            Ok(Record::Stats(StatsRecord {
                source: StatsSource::Identity(c),
                ..
            })) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_known_identity_is_shared_and_a_changed_one_decoded_anew() {
        let d = Decoder::default();
        let mut ids = Identities::new(16);
        let line = envelope(r#""a":"1","b":"2""#);
        let first = identity(&d, &line, &mut ids);
        let again = identity(&d, &line, &mut ids);
        assert!(Arc::ptr_eq(&first, &again), "the same identity is shared");
        assert_eq!(first.name.as_deref(), Some("web-1"));
        assert_eq!(first.host.as_deref(), Some("node-1"));
        // Exactly what decoding without the cache makes.
        let fresh = identity(&d, &line, &mut Identities::new(0));
        assert_eq!(*fresh, *first);
        for (changed, why) in [
            (envelope(r#""a":"1","b":"3""#), "a label value"),
            (envelope(r#""a":"1""#), "a label gone"),
            (envelope(r#""b":"2","a":"1""#), "labels out of order"),
            (envelope(r#""a":"1","b":2"#), "a number label"),
            (line.replace("node-1", "node-2"), "the host"),
            (line.replace("/web-1", "/web-2"), "the name"),
            (line.replace("sha256:aa", "sha256:bb"), "the digest"),
            (line.replace("shop/web:1.4", "shop/web:1.5"), "the image"),
        ] {
            let c = identity(&d, &changed, &mut ids);
            let fresh = identity(&d, &changed, &mut Identities::new(0));
            assert_eq!(*c, *fresh, "{why}");
            if why != "labels out of order" && why != "a number label" {
                assert_ne!(*c, *first, "{why}");
            }
            // Back to the first identity: it is decoded as it is, whatever was cached.
            assert_eq!(*identity(&d, &line, &mut ids), *first, "{why}");
        }
    }

    #[test]
    fn the_identity_cache_is_bounded() {
        let d = Decoder::default();
        let mut ids = Identities::new(3);
        for i in 0..20 {
            let line = envelope("").replace("8f2c", &format!("c{i}"));
            identity(&d, &line, &mut ids);
            assert!(ids.len() <= 3);
        }
    }

    #[test]
    fn depth_is_limited_where_herd_reads_not_in_what_it_skips() {
        let d = Decoder::default();
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        // An unknown key inside a part of the stats object: skipped unread.
        let skipped = RAW_V2.replacen(
            r#""cpu_stats":{"#,
            &format!(r#""cpu_stats":{{"x":{deep},"#),
            1,
        );
        assert!(matches!(d.decode(skipped.as_bytes()), Ok(Record::Stats(_))));
        // A label value: read, so limited.
        let read = envelope(&format!(r#""a":{deep}"#));
        assert_eq!(
            d.decode(read.as_bytes()).map(|_| ()).map_err(|r| r.reason),
            Err(RejectReason::TooDeep)
        );
    }

    #[test]
    fn stopped_container_is_filtered() {
        let line = r#"{"read":"0001-01-01T00:00:00Z","id":"x","cpu_stats":{},"precpu_stats":{}}"#;
        assert!(matches!(
            Decoder::default().decode(line.as_bytes()),
            Ok(Record::Filtered { .. })
        ));
    }
}
