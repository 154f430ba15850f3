//! Decoding throughput per input format (lines/s), with serde_json parsing the same
//! bytes into `IgnoredAny` as the reference for "how fast can JSON be read at all".
//! `herd` is the worker's path (identities of known containers reused);
//! `herd_first_sight` decodes every line as if its container were new.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herd_ingest::{Decoder, Identities};
use serde::de::IgnoredAny;

const RAW_STATS: &str = r#"{"read":"2026-11-23T10:00:10.000000000Z","preread":"2026-11-23T10:00:09.000000000Z","pids_stats":{"current":12,"limit":4096},"blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":4096},{"major":8,"minor":0,"op":"write","value":8192}]},"num_procs":0,"storage_stats":{},"cpu_stats":{"cpu_usage":{"total_usage":2000000000,"usage_in_kernelmode":1,"usage_in_usermode":1},"system_cpu_usage":40000000000,"online_cpus":4,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},"precpu_stats":{"cpu_usage":{"total_usage":1500000000,"usage_in_kernelmode":1,"usage_in_usermode":1},"system_cpu_usage":36000000000,"online_cpus":4,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},"memory_stats":{"usage":104857600,"stats":{"active_anon":0,"anon":90000000,"file":4194304,"inactive_file":4194304},"limit":536870912},"name":"/web-1","id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","networks":{"eth0":{"rx_bytes":1000,"rx_packets":10,"rx_errors":0,"rx_dropped":0,"tx_bytes":2000,"tx_packets":20,"tx_errors":0,"tx_dropped":0}}}"#;

fn lines() -> Vec<(&'static str, String)> {
    vec![
        ("native_metrics", r#"{"ts":"2026-11-23T10:00:00Z","host":"node-1","container_id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","container_name":"web-1","image":"shop/web:1.4","image_digest":"sha256:ab","labels":{"io.kubernetes.pod.namespace":"shop"},"metrics":{"cpu_cores":0.42,"mem_bytes":1.3e8,"net_rx_bytes_per_s":120000,"net_tx_bytes_per_s":340000,"pids":12}}"#.into()),
        ("native_event", r#"{"ts":1763892000000,"container_id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","image":"shop/web:1.4","event":{"kind":"exec","process":"/bin/sh","args":["-c","id"],"user":"root"}}"#.into()),
        ("docker_stats_envelope", format!(r#"{{"host":"node-1","container":{{"id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","name":"web-1","image":"shop/web:1.4","image_digest":"sha256:ab","labels":{{"com.docker.compose.service":"web"}}}},"stats":{RAW_STATS}}}"#)),
        ("docker_stats_raw", RAW_STATS.into()),
        ("docker_event", r#"{"status":"exec_start: sh -c id","id":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","from":"shop/web:1.4","Type":"container","Action":"exec_start: sh -c id","Actor":{"ID":"8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","Attributes":{"execID":"e1","image":"shop/web:1.4","name":"web-1","com.docker.compose.service":"web"}},"scope":"local","time":1795428000,"timeNano":1795428000123456789}"#.into()),
        ("falco", r#"{"uuid":"6a4e1c1e-8c1f-4d4b-9a55-1b2c3d4e5f60","output":"10:00:00.000000000: Notice Redirect stdout/stdin to network connection (user=root process=sh)","priority":"Notice","rule":"Redirect STDOUT/STDIN to Network Connection in Container","time":"2026-11-23T10:00:00.000000000Z","output_fields":{"container.id":"8f2c1a2b3c4d","container.image.repository":"shop/web","container.image.tag":"1.4","container.name":"web-1","evt.time":1795428000000000000,"fd.name":"10.0.0.9:41234->203.0.113.7:4444","fd.sip":"203.0.113.7","fd.sport":4444,"proc.cmdline":"sh -i","proc.exepath":"/bin/sh","proc.name":"sh","proc.pname":"nginx","user.name":"root","k8s.ns.name":"shop","k8s.pod.name":"web-1"},"source":"syscall","tags":["container","network","mitre_execution","T1059"],"hostname":"node-1"}"#.into()),
        ("prometheus", r#"{"timestamp":"2026-11-23T10:00:00Z","value":"12.5","name":"container_cpu_usage_seconds_total","labels":{"__name__":"container_cpu_usage_seconds_total","cpu":"total","id":"/system.slice/docker-8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f.scope","image":"shop/web:1.4","instance":"node-1:8080","job":"cadvisor","name":"web-1","container_label_app":"web"}}"#.into()),
    ]
}

fn decode(c: &mut Criterion) {
    let d = Decoder::default();
    let mut g = c.benchmark_group("decode");
    for (name, line) in lines() {
        assert!(d.decode(line.as_bytes()).is_ok(), "{name} does not decode");
        g.throughput(Throughput::Elements(1));
        // As a worker decodes: its pipeline remembers the identities it has seen, so a
        // known container's envelope reuses its identity.
        let mut ids = Identities::new(1024);
        g.bench_with_input(BenchmarkId::new("herd", name), &line, |b, line| {
            b.iter(|| d.decode_with(std::hint::black_box(line.as_bytes()), &mut ids))
        });
        // A container seen for the first time (every identity built anew).
        g.bench_with_input(
            BenchmarkId::new("herd_first_sight", name),
            &line,
            |b, line| b.iter(|| d.decode(std::hint::black_box(line.as_bytes()))),
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_ignored_any", name),
            &line,
            |b, line| {
                b.iter(|| {
                    serde_json::from_slice::<IgnoredAny>(std::hint::black_box(line.as_bytes()))
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
