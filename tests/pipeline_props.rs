//! Property: the whole pipeline (decode → normalise → detect) never panics and accounts
//! for every line, whatever numbers, times and names real-shaped lines carry.

use herd::pipeline::Pipeline;
use herd_detect::DetectConfig;
use herd_ingest::{Limits, NormalizerConfig};
use proptest::prelude::*;

/// One line of each format, with `{N}` where a number goes, `{T}` a time, `{S}` a name.
const TEMPLATES: [&str; 9] = [
    r#"{"ts":{T},"host":"{S}","container_id":"c{S}","container_name":"{S}","image":"img/{S}:1","labels":{"{S}":"{S}"},"metrics":{"cpu_cores":{N},"{S}":{N}}}"#,
    r#"{"ts":{T},"container_id":"c1","image":"img/a:1","event":{"kind":"exec","process":"{S}","args":["{S}"],"user":"{S}"}}"#,
    r#"{"host":"{S}","container":{"id":"c1","name":"{S}","image":"img/a:1","labels":{"{S}":"{S}"}},"stats":{"read":"2026-11-23T10:00:{T2}Z","cpu_stats":{"cpu_usage":{"total_usage":{N}},"system_cpu_usage":{N},"online_cpus":{N}},"precpu_stats":{"cpu_usage":{"total_usage":{N}},"system_cpu_usage":{N}},"memory_stats":{"usage":{N},"limit":{N},"stats":{"inactive_file":{N}}},"networks":{"eth0":{"rx_bytes":{N},"tx_bytes":{N},"rx_packets":{N},"tx_packets":{N}}},"blkio_stats":{"io_service_bytes_recursive":[{"op":"write","value":{N}}]},"pids_stats":{"current":{N}}}}"#,
    r#"{"read":"2026-11-23T10:00:{T2}Z","id":"c1","name":"/{S}","cpu_stats":{"cpu_usage":{"total_usage":{N}},"system_cpu_usage":{N}},"precpu_stats":{},"memory_stats":{"usage":{N}}}"#,
    r#"{"Type":"container","Action":"{S}","Actor":{"ID":"c1","Attributes":{"image":"img/a:1","name":"{S}","exitCode":"{S}"}},"time":{T},"timeNano":{N}}"#,
    r#"{"ts":{T},"container_id":"c1","image":"img/a:1","event":{"kind":"fs_changes","added":["/tmp/{S}","{S}"],"changed":["/etc/{S}"],"deleted":["{S}"],"total":{N}}}"#,
    r#"{"ts":{T},"container_id":"c1","image":"img/a:1","event":{"kind":"processes","processes":[{"process":"{S}","user":"{S}","parent":"{S}"},{"process":"{S}"}],"total":{N}}}"#,
    r#"{"rule":"{S}","priority":"{S}","time":"2026-11-23T10:00:{T2}Z","output_fields":{"container.id":"c1","container.image.repository":"{S}","proc.exepath":"{S}","fd.sip":"{S}","fd.sport":{N}},"tags":["{S}","T1059"]}"#,
    r#"{"timestamp":"2026-11-23T10:00:{T2}Z","value":"{N}","name":"container_cpu_usage_seconds_total","labels":{"__name__":"container_cpu_usage_seconds_total","id":"/docker/8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f","image":"{S}","name":"{S}"}}"#,
];

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0.0f64..1e12).prop_map(|x| x.to_string()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("1e308".to_owned()),
        Just("-1e308".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("0.000000001".to_owned()),
    ]
}

fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        (1_795_428_000_000i64..1_795_438_000_000).prop_map(|t| t.to_string()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("\"2026-11-23T10:00:00Z\"".to_owned()),
        Just("\"2199-12-31T23:59:59Z\"".to_owned()),
        Just("\"not a time\"".to_owned()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}",
        Just("../../etc/passwd".to_owned()),
        Just("\\u001b[31mred\\n".to_owned()),
        Just("exec_start: sh -c id".to_owned()),
        Just("oom".to_owned()),
        Just("die".to_owned()),
        Just("start".to_owned()),
        Just("Critical".to_owned()),
        Just("x".repeat(5000)),
    ]
}

fn line() -> impl Strategy<Value = String> {
    (
        0..TEMPLATES.len(),
        proptest::collection::vec((number(), time(), name(), 0u8..60), 1..4),
    )
        .prop_map(|(i, fills)| {
            let mut s = TEMPLATES[i].to_owned();
            let mut k = 0;
            while let Some(pos) = ["{N}", "{T2}", "{T}", "{S}"]
                .iter()
                .filter_map(|p| s.find(p).map(|at| (at, *p)))
                .min()
            {
                let (n, t, name, sec) = &fills[k % fills.len()];
                let with = match pos.1 {
                    "{N}" => n.clone(),
                    "{T2}" => format!("{sec:02}"),
                    "{T}" => t.clone(),
                    _ => name.clone(),
                };
                s.replace_range(pos.0..pos.0 + pos.1.len(), &with);
                k += 1;
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_pipeline_never_panics_and_counts_every_line(lines in proptest::collection::vec(line(), 1..60)) {
        let mut cfg = DetectConfig::default();
        cfg.baseline.warmup_ms = 0;
        cfg.min_samples = 1.0;
        let mut p = Pipeline::new(Limits::default(), NormalizerConfig::default(), cfg)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut alerts = Vec::new();
        for l in &lines {
            if let Ok(rec) = p.decode(l.as_bytes()) {
                let _ = p.process(rec, &mut alerts);
            }
        }
        let c = &p.counters;
        prop_assert_eq!(c.lines, lines.len() as u64);
        let decoded: u64 = c.decoded.values().sum();
        prop_assert!(decoded <= c.lines);
        // Every line is accounted for: decoded, filtered or rejected at least once.
        let seen = decoded + c.rejected.values().sum::<u64>() + c.filtered.values().sum::<u64>();
        prop_assert!(seen >= c.lines, "{:?}", c);
        for a in &alerts {
            prop_assert!(a.score.is_finite());
            prop_assert!(!a.explanation.is_empty());
        }
    }
}
