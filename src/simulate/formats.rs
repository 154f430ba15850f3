//! Lines in the real wire formats: Docker stats (agent envelope and raw), Docker events,
//! Falco JSON as falcosidekick writes it.

use std::collections::BTreeMap;

use herd_ingest::time::format_ms;
use serde_json::json;

/// Cumulative counters of one container at one sample.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) cpu_ns: f64,
    pub(crate) system_ns: f64,
    pub(crate) net: [f64; 4],
    pub(crate) blk: [f64; 2],
}

/// One stats sample's gauges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub(crate) mem_bytes: f64,
    pub(crate) mem_limit: Option<f64>,
    pub(crate) pids: f64,
}

/// Identity of a simulated container.
#[derive(Debug, Clone)]
pub(crate) struct Ident {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) digest: Option<String>,
    pub(crate) host: String,
    pub(crate) labels: BTreeMap<String, String>,
}

const ONLINE_CPUS: u32 = 4;

/// A raw stats-API object. `pre` is the previous sample's counters (Docker's
/// `precpu_stats` in streaming mode); `None` writes the zeroed precpu of a one-shot read.
pub(crate) fn stats_object(
    ts: i64,
    who: &Ident,
    c: &Counters,
    pre: Option<&Counters>,
    g: &Gauges,
) -> String {
    let (pre_cpu, pre_sys) = pre.map_or((0.0, 0.0), |p| (p.cpu_ns, p.system_ns));
    // cgroup v2 memory stats: usage includes page cache; herd subtracts inactive_file.
    let inactive = 8.0 * 1024.0 * 1024.0;
    let limit = g.mem_limit.unwrap_or(25_000_000_000.0);
    format!(
        concat!(
            r#"{{"read":"{read}","preread":"{read}","pids_stats":{{"current":{pids},"limit":4096}},"#,
            r#""blkio_stats":{{"io_service_bytes_recursive":[{{"major":8,"minor":0,"op":"read","value":{br}}},{{"major":8,"minor":0,"op":"write","value":{bw}}}]}},"#,
            r#""num_procs":0,"storage_stats":{{}},"#,
            r#""cpu_stats":{{"cpu_usage":{{"total_usage":{cpu},"usage_in_kernelmode":0,"usage_in_usermode":{cpu}}},"system_cpu_usage":{sys},"online_cpus":{n},"throttling_data":{{"periods":0,"throttled_periods":0,"throttled_time":0}}}},"#,
            r#""precpu_stats":{{"cpu_usage":{{"total_usage":{pcpu},"usage_in_kernelmode":0,"usage_in_usermode":{pcpu}}},"system_cpu_usage":{psys},"online_cpus":{n},"throttling_data":{{"periods":0,"throttled_periods":0,"throttled_time":0}}}},"#,
            r#""memory_stats":{{"usage":{usage},"stats":{{"active_anon":0,"anon":{anon},"file":{inactive},"inactive_file":{inactive}}},"limit":{limit}}},"#,
            r#""name":"/{name}","id":"{id}","#,
            r#""networks":{{"eth0":{{"rx_bytes":{rx},"rx_packets":{rxp},"rx_errors":0,"rx_dropped":0,"tx_bytes":{tx},"tx_packets":{txp},"tx_errors":0,"tx_dropped":0}}}}}}"#
        ),
        read = format_ms(ts),
        pids = g.pids.round(),
        br = c.blk[0].round(),
        bw = c.blk[1].round(),
        cpu = c.cpu_ns.round(),
        sys = c.system_ns.round(),
        n = ONLINE_CPUS,
        pcpu = pre_cpu.round(),
        psys = pre_sys.round(),
        usage = (g.mem_bytes + inactive).round(),
        anon = g.mem_bytes.round(),
        inactive = inactive,
        limit = limit.round(),
        name = who.name,
        id = who.id,
        rx = c.net[0].round(),
        tx = c.net[1].round(),
        rxp = c.net[2].round(),
        txp = c.net[3].round(),
    )
}

/// The agent envelope around a raw stats object.
pub(crate) fn envelope(who: &Ident, stats: &str) -> String {
    let container = json!({
        "id": who.id,
        "name": who.name,
        "image": who.image,
        "image_digest": who.digest,
        "labels": who.labels,
    });
    format!(
        r#"{{"host":"{}","container":{},"stats":{}}}"#,
        who.host, container, stats
    )
}

/// A Docker container event (current API shape, with the legacy fields Docker still sends).
pub(crate) fn docker_event(ts: i64, who: &Ident, action: &str, extra: &[(&str, String)]) -> String {
    let mut attrs: serde_json::Map<String, serde_json::Value> = who
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    // Docker names the image as it was asked for (a tag), not by digest.
    let image = who.image.clone();
    attrs.insert("image".into(), json!(image));
    attrs.insert("name".into(), json!(who.name));
    for (k, v) in extra {
        attrs.insert((*k).into(), json!(v));
    }
    json!({
        "status": action,
        "id": who.id,
        "from": image,
        "Type": "container",
        "Action": action,
        "Actor": {"ID": who.id, "Attributes": attrs},
        "scope": "local",
        "time": ts / 1000,
        "timeNano": ts * 1_000_000,
    })
    .to_string()
}

/// A Falco alert as falcosidekick publishes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn falco(
    ts: i64,
    uuid: &str,
    who: &Ident,
    rule: &str,
    priority: &str,
    proc_path: &str,
    cmdline: &str,
    user: &str,
    fd: Option<(&str, &str, u16)>,
    tags: &[&str],
) -> String {
    let (repo, tag) = who.image.rsplit_once(':').unwrap_or((&who.image, "latest"));
    let short = &who.id[..12];
    let proc_name = proc_path.rsplit('/').next().unwrap_or(proc_path);
    let mut fields = json!({
        "container.id": short,
        "container.image.repository": repo,
        "container.image.tag": tag,
        "container.name": who.name,
        "evt.time": ts * 1_000_000,
        "proc.cmdline": cmdline,
        "proc.exepath": proc_path,
        "proc.name": proc_name,
        "proc.pname": "containerd-shim",
        "user.name": user,
    });
    let mut conn = String::new();
    if let (Some((local, remote, port)), Some(obj)) = (fd, fields.as_object_mut()) {
        obj.insert(
            "fd.name".into(),
            json!(format!("{local}:41234->{remote}:{port}")),
        );
        obj.insert("fd.sip".into(), json!(remote));
        obj.insert("fd.sport".into(), json!(port));
        conn = format!(" connection={local}:41234->{remote}:{port}");
    }
    let output = format!(
        "{}: {} {} (user={} process={} command={}{} container_id={} image={})",
        format_ms(ts),
        priority,
        rule,
        user,
        proc_name,
        cmdline,
        conn,
        short,
        repo
    );
    json!({
        "uuid": uuid,
        "output": output,
        "priority": priority,
        "rule": rule,
        "time": format_ms(ts),
        "output_fields": fields,
        "source": "syscall",
        "tags": tags,
        "hostname": who.host,
    })
    .to_string()
}
