//! Hostile input through the whole scoring path (issue 8). Whoever owns a container
//! chooses its name, its labels, the processes it runs and, through a compromised agent
//! or a shared topic, the JSON itself. Each case here is what such a producer can send,
//! in the real formats; each must be read as data or rejected with a reason, never
//! panic, never grow memory past the decoder's limits, and never reach an alert line
//! unescaped. (Evidence paths are proven in `respond/src/evidence.rs`, log lines in
//! `src/logs.rs`, mutated input at scale in `tests/fuzz_decoders.rs`.)

use herd::config::HerdConfig;
use herd::pipeline::Pipeline;
use herd_detect::Alert;
use herd_ingest::{Event, Payload, RejectReason};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The strings of issue 8: path parts, NUL, line breaks, ANSI escapes, format
/// specifiers, shell syntax, and 100 KB of text (JSON-escaped where needed; a line of
/// more than a megabyte is rejected whole, below).
fn hostile() -> Vec<String> {
    vec![
        "../../../../etc/passwd".into(),
        "/".into(),
        "..".into(),
        "a\\u0000b".into(),
        "web-1\\n2026-12-01T00:00:00Z  INFO herd: all clear".into(),
        "\\r\\u001b[2J\\u001b[31mred\\u001b]0;title\\u0007".into(),
        "%s%n%x{}{0}".into(),
        "$(reboot); `id` | rm -rf /".into(),
        "x".repeat(100_000),
    ]
}

/// An agent envelope of container `id` named `name` with label `app` = `label`.
fn envelope(id: &str, name: &str, label: &str, ts: &str, cpu: u64, sys: u64) -> String {
    format!(
        r#"{{"host":"node-1","container":{{"id":"{id}","name":"{name}","image":"shop/web:1.4","labels":{{"app":"{label}","{label}":"x"}}}},"stats":{{"read":"{ts}","pids_stats":{{"current":12}},"cpu_stats":{{"cpu_usage":{{"total_usage":{cpu}}},"system_cpu_usage":{sys},"online_cpus":2}},"precpu_stats":{{"cpu_usage":{{"total_usage":0}},"system_cpu_usage":0}},"memory_stats":{{"usage":1000000,"stats":{{"inactive_file":0}}}},"networks":{{"eth0":{{"rx_bytes":{cpu},"tx_bytes":{cpu}}}}}}}}}"#
    )
}

struct Run {
    p: Pipeline,
    alerts: Vec<Alert>,
    rejected: Vec<RejectReason>,
    scored: usize,
    limits: herd_ingest::Limits,
}

impl Run {
    fn new() -> Run {
        let mut cfg = HerdConfig::default();
        // Score from the first sample: the case is minutes long.
        cfg.detect.baseline.warmup_ms = 0;
        cfg.detect.baseline.learning_period_ms = 0;
        Run {
            p: Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())
                .unwrap_or_else(|e| panic!("{e}")),
            alerts: Vec::new(),
            rejected: Vec::new(),
            scored: 0,
            limits: cfg.limits,
        }
    }

    /// Feeds one line; checks what it became.
    fn feed(&mut self, line: &str) {
        match self.p.decode(line.as_bytes()) {
            Err(r) => self.rejected.push(r.reason),
            Ok(rec) => match self.p.process(rec, &mut self.alerts) {
                Err(r) => self.rejected.push(r.reason),
                Ok(()) => {
                    self.scored += 1;
                    self.check_bounded();
                }
            },
        }
    }

    /// Every string kept from the input is within the decoder's limit, and every value
    /// is a finite number.
    fn check_bounded(&self) {
        let max = self.limits.max_string_bytes;
        for o in self.p.observations() {
            let c = &o.container;
            assert!(c.id.len() <= max && c.image.len() <= max);
            assert!(c.name.as_ref().is_none_or(|n| n.len() <= max));
            assert!(c.labels.len() <= self.limits.max_items);
            for (k, v) in &c.labels {
                assert!(
                    k.len() <= max && v.len() <= max,
                    "a label of {} bytes",
                    v.len()
                );
            }
            match &o.payload {
                Payload::Metrics(m) => {
                    for (name, v) in m {
                        assert!(name.len() <= max);
                        assert!(v.is_finite(), "{name} = {v}");
                        // A counter that went backwards or wrapped is a reset, not a
                        // negative rate.
                        if name.ends_with("_per_s") || *name == "cpu_cores" {
                            assert!(*v >= 0.0, "{name} = {v}");
                        }
                    }
                }
                Payload::Event(Event::Exec {
                    process,
                    args,
                    user,
                }) => {
                    assert!(process.len() <= max && args.iter().all(|a| a.len() <= max));
                    assert!(user.as_ref().is_none_or(|u| u.len() <= max));
                }
                Payload::Event(Event::Falco {
                    rule,
                    priority,
                    process,
                    cmdline,
                    user,
                    dest,
                    tags,
                }) => {
                    let opt = |s: &Option<String>| s.as_ref().is_none_or(|s| s.len() <= max);
                    assert!(rule.len() <= max && priority.len() <= max);
                    assert!(opt(process) && opt(cmdline) && opt(user) && opt(dest));
                    assert!(tags.iter().all(|t| t.len() <= max));
                }
                Payload::Event(_) => {}
            }
        }
    }
}

#[test]
fn hostile_names_labels_and_processes_are_data_bounded_and_escaped_in_alerts() {
    let mut r = Run::new();
    let mut t = 0u64;
    for (i, h) in hostile().iter().enumerate() {
        // Ten replicas, one with the hostile name and label, sampled for a while.
        for k in 0..30u64 {
            for rep in 0..10 {
                let id = format!("{:064x}", 1000 * i + rep);
                let name = if rep == 0 {
                    h.clone()
                } else {
                    format!("web-{rep}")
                };
                let ts = herd_ingest::time::format_ms(1_795_428_000_000 + (t as i64) * 10_000);
                let busy = if rep == 0 && k > 20 { 40 } else { 2 };
                r.feed(&envelope(
                    &id,
                    &name,
                    h,
                    &ts,
                    k * busy * 1_000_000_000,
                    k * 40_000_000_000,
                ));
            }
            t += 1;
        }
        // A process of that name in the hostile replica.
        let ts = 1_795_428_000 + t as i64 * 10;
        r.feed(&format!(
            r#"{{"Type":"container","Action":"exec_start: {h} --flag {h}","Actor":{{"ID":"{:064x}","Attributes":{{"image":"shop/web:1.4","name":"{h}","execID":"e{i}"}}}},"time":{ts},"timeNano":{ts}000000000}}"#,
            1000 * i
        ));
        // And Falco's word for it.
        r.feed(&format!(
            r#"{{"time":"2026-11-23T10:00:00.000000000Z","rule":"{h}","priority":"Critical","output":"{h}","output_fields":{{"container.id":"{}","container.name":"{h}","container.image.repository":"shop/web","proc.name":"{h}","proc.cmdline":"{h}","user.name":"{h}"}},"tags":["{h}"]}}"#,
            &format!("{:064x}", 1000 * i)[..12]
        ));
    }
    assert!(r.scored > 2500, "scored {}: {:?}", r.scored, r.rejected);
    // Nothing is rejected for what its strings hold...
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    // ...and a line of more than a megabyte is too large, whatever it holds.
    let big = "y".repeat(1 << 20);
    r.feed(&envelope(ID, &big, "a", "2026-11-23T12:00:00Z", 1, 1));
    assert_eq!(r.rejected, [RejectReason::TooLarge]);
    // Alerts carry the hostile names as JSON strings: one line each, control
    // characters escaped.
    assert!(
        !r.alerts.is_empty(),
        "the busy hostile replicas are alerted"
    );
    for a in &r.alerts {
        let line = serde_json::to_string(a).unwrap_or_else(|e| panic!("{e}"));
        assert!(!line.contains('\n') && !line.contains('\u{1b}') && !line.contains('\0'));
        assert!(line.len() < 64 * 1024, "an alert of {} bytes", line.len());
    }
}

#[test]
fn deep_json_extreme_numbers_and_impossible_times_are_rejected_or_read_safely() {
    let mut r = Run::new();
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!("{}{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let lines = [
        // Nesting 10,000 levels deep, where herd reads and where it skips.
        format!(
            r#"{{"ts":"2026-11-23T10:00:00Z","container_id":"{ID}","image":"i","metrics":{deep}}}"#
        ),
        format!(r#"{{"host":"h","container":{deep_obj},"stats":{{}}}}"#),
        format!(r#"{{"read":"2026-11-23T10:00:00Z","id":"{ID}","cpu_stats":{deep}}}"#),
        deep.clone(),
        deep_obj.clone(),
        // Numbers: beyond f64, beyond u64, negative counters, NaN spelled out.
        format!(
            r#"{{"ts":"2026-11-23T10:00:00Z","container_id":"{ID}","image":"i","metrics":{{"cpu_cores":1e999,"mem_bytes":-1e308,"x":-0.0}}}}"#
        ),
        format!(
            r#"{{"timestamp":"2026-11-23T10:00:00Z","value":"NaN","name":"container_cpu_usage_seconds_total","labels":{{"id":"/docker/{ID}","image":"i","name":"n"}}}}"#
        ),
        format!(
            r#"{{"timestamp":"2026-11-23T10:00:00Z","value":"+Inf","name":"container_memory_usage_bytes","labels":{{"id":"/docker/{ID}","image":"i","name":"n"}}}}"#
        ),
        envelope(ID, "n", "a", "2026-11-23T10:00:00Z", u64::MAX, u64::MAX),
        envelope(ID, "n", "a", "2026-11-23T10:00:10Z", 5, 10),
        envelope(
            ID,
            "n",
            "a",
            "2026-11-23T10:00:20Z",
            18446744073709551615,
            20,
        ),
        // Times: the far past, the far future, before the epoch, not a time.
        envelope(ID, "n", "a", "0001-01-01T00:00:00Z", 1, 1),
        envelope(ID, "n", "a", "9999-12-31T23:59:59Z", 2, 2),
        envelope(ID, "n", "a", "1969-12-31T23:59:59Z", 3, 3),
        envelope(ID, "n", "a", "2026-02-30T25:61:61Z", 4, 4),
        format!(
            r#"{{"Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"image":"i"}}}},"time":-9223372036854775808,"timeNano":-1}}"#
        ),
        format!(
            r#"{{"Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"image":"i"}}}},"time":9223372036854775807,"timeNano":18446744073709551615}}"#
        ),
    ];
    for l in &lines {
        r.feed(l);
    }
    // Every deep line is rejected, as too deep or as a shape herd does not read.
    let deep_rejected = r
        .rejected
        .iter()
        .filter(|x| **x == RejectReason::TooDeep)
        .count();
    assert!(deep_rejected >= 4, "{:?}", r.rejected);
    // Whatever was read, every value kept is finite and no counter that went
    // backwards or wrapped became a rate (checked per line in `feed`); every line is
    // accounted for.
    assert_eq!(r.scored + r.rejected.len(), lines.len());
}
