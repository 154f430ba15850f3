//! Docker Engine stats-API JSON (`GET /containers/{id}/stats`), raw or inside the agent
//! envelope. Only the cumulative counters and gauges are extracted here; rates are
//! derived by the normaliser, which remembers the previous sample of each container.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Limits, Obj, Record, Reject, RejectReason, bounded, container_ref, string_map};
use crate::model::ContainerRef;

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
    /// Container id from the stats object (or the envelope).
    pub id: String,
    /// Container name (stats objects carry `/name`).
    pub name: Option<String>,
    /// Host from the envelope.
    pub host: Option<String>,
    /// Full identity when it came in the agent envelope; `None` for raw stats, which the
    /// normaliser joins through its registry.
    pub container: Option<ContainerRef>,
    /// The counters.
    pub counters: StatsCounters,
}

#[derive(Deserialize)]
struct CpuUsage {
    total_usage: Option<f64>,
    percpu_usage: Option<Vec<f64>>,
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
struct BlkEntry {
    op: String,
    value: f64,
}

#[derive(Deserialize)]
struct Blkio {
    io_service_bytes_recursive: Option<Vec<BlkEntry>>,
}

#[derive(Deserialize)]
struct Pids {
    current: Option<f64>,
}

fn finite_nonneg(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v >= 0.0)
}

pub(super) fn decode_envelope(v: &Obj<'_>, l: &Limits) -> Result<Record, Reject> {
    let c = v
        .obj("container")?
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "container"))?;
    let id = c
        .str("id", l)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "container.id"))?;
    let image = c
        .str("image", l)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "container.image"))?;
    let host = v.str("host", l);
    let mut cref = container_ref(
        id,
        c.str("name", l),
        image,
        string_map(c.get("labels"), l, &[])?,
        host.clone(),
    );
    if let Some(d) = c.str("image_digest", l).filter(|s| !s.is_empty()) {
        cref.image_digest = Some(d);
    }
    let stats = v
        .get("stats")
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "stats"))?;
    decode_raw(stats, l, Some(cref), host)
}

/// The parts of a stats-API object herd reads, in one typed pass over its bytes (strings
/// borrowed from the line; every other key skipped without being stored).
#[derive(Deserialize)]
struct StatsDoc<'a> {
    #[serde(borrow)]
    read: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    cpu_stats: Option<CpuStats>,
    precpu_stats: Option<CpuStats>,
    memory_stats: Option<MemStats>,
    #[serde(borrow)]
    networks: Option<std::collections::BTreeMap<Cow<'a, str>, NetStats>>,
    blkio_stats: Option<Blkio>,
    pids_stats: Option<Pids>,
}

pub(super) fn decode_raw(
    raw: &RawValue,
    l: &Limits,
    container: Option<ContainerRef>,
    host: Option<String>,
) -> Result<Record, Reject> {
    let doc: StatsDoc<'_> = serde_json::from_str(raw.get())
        .map_err(|e| Reject::new(RejectReason::InvalidValue, format!("stats: {e}")))?;
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
    let id = match &container {
        Some(c) => c.id.clone(),
        None => doc
            .id
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| bounded(s.to_owned(), l.max_string_bytes))
            .ok_or_else(|| Reject::new(RejectReason::MissingField, "id"))?,
    };
    let (cpu, precpu, mem, nets, blkio, pids) = (
        doc.cpu_stats,
        doc.precpu_stats,
        doc.memory_stats,
        doc.networks,
        doc.blkio_stats,
        doc.pids_stats,
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
                    .map(|p| p.len() as f64)
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
        if nets.len() > l.max_items {
            return Err(Reject::new(RejectReason::TooManyItems, "networks"));
        }
        let mut sum = [0.0; 4];
        for n in nets.values() {
            for (slot, x) in
                sum.iter_mut()
                    .zip([n.rx_bytes, n.tx_bytes, n.rx_packets, n.tx_packets])
            {
                *slot += finite_nonneg(x).unwrap_or(0.0);
            }
        }
        c.net = Some(sum);
    }
    if let Some(entries) = blkio.and_then(|b| b.io_service_bytes_recursive) {
        if entries.len() > l.max_items {
            return Err(Reject::new(RejectReason::TooManyItems, "blkio"));
        }
        let mut rw = [0.0; 2];
        for e in entries {
            let Some(val) = finite_nonneg(Some(e.value)) else {
                continue;
            };
            if e.op.eq_ignore_ascii_case("read") {
                rw[0] += val;
            } else if e.op.eq_ignore_ascii_case("write") {
                rw[1] += val;
            }
        }
        c.blk = Some(rw);
    }
    c.pids = pids.and_then(|p| finite_nonneg(p.current));
    let name = doc
        .name
        .as_deref()
        .map(|n| bounded(n.trim_start_matches('/').to_owned(), l.max_string_bytes));
    Ok(Record::Stats(Box::new(StatsRecord {
        ts_ms,
        id,
        name,
        host,
        container,
        counters: c,
    })))
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;

    pub(crate) const RAW_V2: &str = r#"{"read":"2026-11-23T10:00:10.000000000Z","preread":"2026-11-23T10:00:09.000000000Z","pids_stats":{"current":12,"limit":4096},"blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":4096},{"major":8,"minor":0,"op":"write","value":8192}]},"num_procs":0,"cpu_stats":{"cpu_usage":{"total_usage":2000000000,"usage_in_kernelmode":1,"usage_in_usermode":1},"system_cpu_usage":40000000000,"online_cpus":4,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},"precpu_stats":{"cpu_usage":{"total_usage":1500000000},"system_cpu_usage":36000000000,"online_cpus":4},"memory_stats":{"usage":104857600,"stats":{"inactive_file":4194304,"anon":90000000},"limit":536870912},"name":"/web-1","id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","networks":{"eth0":{"rx_bytes":1000,"rx_packets":10,"rx_errors":0,"rx_dropped":0,"tx_bytes":2000,"tx_packets":20,"tx_errors":0,"tx_dropped":0}}}"#;

    #[test]
    fn extracts_counters_from_cgroup_v2_stats() {
        let Ok(Record::Stats(s)) = Decoder::default().decode(RAW_V2.as_bytes()) else {
            panic!("not stats")
        };
        assert_eq!(s.name.as_deref(), Some("web-1"));
        assert!(s.container.is_none());
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
            .container
            .as_ref()
            .map(|c| (c.image.as_str(), c.image_digest.as_deref()));
        assert_eq!(c, Some(("shop/web:1.4", Some("sha256:aa"))));
        assert_eq!(s.host.as_deref(), Some("node-1"));
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
