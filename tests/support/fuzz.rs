//! A mutation fuzzer for every input decoder, through the whole scoring path (issue 8).
//!
//! herd's input is attacker-controlled: whoever owns a container chooses its name,
//! labels, process names and, through a compromised agent or a shared topic, the
//! shape of the JSON. This harness starts from real lines of every format herd reads
//! (a simulated fleet's agent envelopes, raw Docker stats, Docker events, Falco, the
//! native format, prometheus-kafka-adapter) and mutates them the ways a fuzzer does
//! (bit flips, token insertions, splices, deep nesting, extreme numbers, hostile
//! strings), then feeds each result through decode, normalisation and the detection
//! engine, with one pipeline for the whole run, so state built from hostile input is
//! exercised too. It checks that:
//!
//! - nothing panics (a panic fails the test, with the seed and the case to replay);
//! - every line ends as a record or a rejection with a reason: the rejection counters
//!   add up to the lines that were not decoded;
//! - memory stays bounded: the engine and the normaliser never track more than their
//!   caps, whatever the input invents.
//!
//! `tests/fuzz_decoders.rs` runs a short pass in CI (20,000 executions, or
//! `HERD_FUZZ_EXECS`); `cargo bench --bench fuzz -- 10000000` runs a long one in
//! release (`HERD_FUZZ_SEED` replays either).

use std::path::Path;

use herd::config::HerdConfig;
use herd::pipeline::Pipeline;
use herd::simulate::{SimConfig, simulate};

/// splitmix64: small, fast and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Tokens a mutation inserts: JSON structure, escapes, and the hostile values of
/// issue 8 (paths, NUL, newlines, ANSI escapes, extreme and non-finite numbers).
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\",
    "\\u0000",
    "\\n",
    "\\u001b[31m",
    "\\ud800",
    "null",
    "true",
    "-",
    "0",
    "-1",
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "1e-400",
    "18446744073709551615",
    "-9223372036854775808",
    "9223372036854775807",
    "\"../../../../etc/passwd\"",
    "\"/\"",
    "\"\\u0000\"",
    "\"a\\nb\"",
    "\"\\u001b]0;pwned\\u0007\"",
    "\"1970-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"0001-01-01T00:00:00Z\"",
    "\"cpu_stats\"",
    "\"precpu_stats\"",
    "\"memory_stats\"",
    "\"networks\"",
    "\"Actor\"",
    "\"Attributes\"",
    "\"output_fields\"",
    "\"metrics\"",
    "\"labels\"",
    "\"container_id\"",
    "\"image\"",
    "\"total_usage\"",
    "\"system_cpu_usage\"",
    "\"online_cpus\"",
    "\"ts\"",
];

/// Numbers a mutation substitutes for a number already in the line.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1e308",
    "-1e308",
    "1e999",
    "5e-324",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967295",
    "253402300800",
    "-62135596800",
    "0.000000000000000000001",
];

/// Strings a mutation substitutes for a string already in the line.
const STRINGS: &[&str] = &[
    "../../../../../../etc/shadow",
    "/",
    "..",
    "a/../../b",
    "\\u0000",
    "x\\u0000y",
    "line\\nforged: alert",
    "\\u001b[2J\\u001b[31mred",
    "\\r\\n",
    "%s%n%x",
    "$(reboot)",
    "`id`",
    "; rm -rf /",
    "\\ud83d\\ude00",
    "\\udfff",
    "CON",
    "",
    " ",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], line: &mut Vec<u8>) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = line.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                line[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                line[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let t = rng.pick(TOKENS).as_bytes();
                line.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                line.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a span in place (repeated keys, doubled objects).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let span = line[i..i + n].to_vec();
                let at = rng.below(line.len() + 1);
                line.splice(at..at, span);
            }
            5 => {
                // Splice with another line (one format's keys in another's body).
                let other = rng.pick(corpus);
                if !other.is_empty() && len > 0 {
                    let cut = rng.below(len);
                    let from = rng.below(other.len());
                    line.truncate(cut);
                    line.extend_from_slice(&other[from..]);
                }
            }
            6 => replace_token(rng, line, b"0123456789-", NUMBERS),
            7 => replace_string(rng, line),
            8 => {
                // Nest a value deeply (within and beyond the depth limit).
                let depth = *rng.pick(&[2usize, 63, 64, 65, 200, 10_000]);
                if let Some(i) = line.iter().position(|b| *b == b':') {
                    let mut v = "[".repeat(depth).into_bytes();
                    v.extend_from_slice(b"1");
                    v.extend(std::iter::repeat_n(b']', depth));
                    v.push(b',');
                    line.splice(i + 1..i + 1, v);
                }
            }
            9 => {
                // A huge string: names and labels of a megabyte.
                if rng.below(50) == 0
                    && let Some(i) = line.iter().position(|b| *b == b'"')
                {
                    let pad = vec![b'A'; 1 << 20];
                    line.splice(i + 1..i + 1, pad);
                }
            }
            _ if len > 0 => {
                // Truncate (a record cut by a buffer or a crash).
                line.truncate(rng.below(len));
            }
            _ => {}
        }
    }
}

/// Replaces one run of `class` bytes with one of `with`.
fn replace_token(rng: &mut Rng, line: &mut Vec<u8>, class: &[u8], with: &[&str]) {
    let starts: Vec<usize> = (0..line.len())
        .filter(|&i| class.contains(&line[i]) && (i == 0 || !class.contains(&line[i - 1])))
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = *rng.pick(&starts);
    let e = (s..line.len())
        .find(|&i| !class.contains(&line[i]))
        .unwrap_or(line.len());
    line.splice(s..e, rng.pick(with).bytes());
}

/// Replaces the contents of one string literal.
fn replace_string(rng: &mut Rng, line: &mut Vec<u8>) {
    let quotes: Vec<usize> = (0..line.len())
        .filter(|&i| line[i] == b'"' && (i == 0 || line[i - 1] != b'\\'))
        .collect();
    if quotes.len() < 2 {
        return;
    }
    let k = rng.below(quotes.len() / 2) * 2;
    let (s, e) = (quotes[k] + 1, quotes[k + 1]);
    line.splice(s..e, rng.pick(STRINGS).bytes());
}

/// Real lines of every format herd reads.
fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    simulate(
        &SimConfig {
            seed: 11,
            hours: 1,
            interval_s: 60,
            recur_after_h: None,
        },
        dir,
    )
    .unwrap_or_else(|e| panic!("simulate: {e}"));
    let mut lines = Vec::new();
    for f in [
        "stats.jsonl",
        "stats-raw.jsonl",
        "events.jsonl",
        "falco.jsonl",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        // A sample of each file: the first lines (starts, first samples) and a spread.
        let all: Vec<&str> = text.lines().collect();
        let step = (all.len() / 200).max(1);
        lines.extend(all.iter().step_by(step).map(|l| l.as_bytes().to_vec()));
    }
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/peer_cpu_miner/input.jsonl");
    let text = std::fs::read_to_string(golden).unwrap_or_else(|e| panic!("{e}"));
    lines.extend(text.lines().take(100).map(|l| l.as_bytes().to_vec()));
    lines.push(
        br#"{"timestamp":"2026-11-23T10:00:00Z","value":"12.5","name":"container_cpu_usage_seconds_total","labels":{"__name__":"container_cpu_usage_seconds_total","cpu":"total","id":"/system.slice/docker-8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f.scope","image":"shop/web:1.4","instance":"node-1:8080","job":"cadvisor","name":"web-1","container_label_app":"web"}}"#.to_vec(),
    );
    lines.push(
        br#"{"timestamp":"2026-11-23T10:00:01Z","value":"1048576","name":"container_network_receive_bytes_total","labels":{"id":"/kubepods/burstable/pod1/cri-containerd-8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f.scope","image":"shop/web:1.4","instance":"node-1:8080","name":"web-1","interface":"eth0","namespace":"shop","pod":"web-1"}}"#.to_vec(),
    );
    lines
}

/// What a run found.
#[derive(Debug)]
pub(crate) struct Report {
    /// Lines fed.
    pub(crate) execs: u64,
    /// Lines decoded (then normalised and scored).
    pub(crate) decoded: u64,
    /// Lines rejected by the decoder.
    pub(crate) rejected: u64,
    /// Decoded records the normaliser could not join to a container.
    pub(crate) unjoined: u64,
    /// Most containers the engine tracked at a check.
    pub(crate) most_containers: usize,
}

/// Runs `execs` mutated lines from `seed` through one pipeline. Panics, with the seed
/// and the case, if one panics or a cap or a counter does not hold.
pub(crate) fn run(execs: u64, seed: u64) -> Report {
    let dir = std::env::temp_dir().join(format!("herd-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let corpus = corpus(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(corpus.len() > 500, "corpus of {} lines", corpus.len());

    // Small caps, so that the run reaches them: state must stop growing there.
    let mut cfg = HerdConfig::default();
    cfg.normalizer.max_containers = 2_000;
    cfg.detect.max_groups = 200;
    cfg.detect.max_replicas_per_group = 50;
    let mut p = Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng(seed);
    let mut alerts = Vec::new();
    let (mut decoded, mut rejected, mut unjoined, mut most_containers) = (0u64, 0u64, 0u64, 0usize);
    let mut line = Vec::new();
    for n in 0..execs {
        line.clear();
        let seed_line: &Vec<u8> = rng.pick(&corpus);
        line.extend_from_slice(seed_line);
        mutate(&mut rng, &corpus, &mut line);
        let case =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match p.decode(&line) {
                Ok(rec) => {
                    decoded += 1;
                    if p.process(rec, &mut alerts).is_err() {
                        unjoined += 1;
                    }
                }
                Err(_) => rejected += 1,
            }));
        if case.is_err() {
            let shown = String::from_utf8_lossy(&line[..line.len().min(2000)]).into_owned();
            panic!("execution {n} (HERD_FUZZ_SEED={seed}) panicked on: {shown:?}");
        }
        alerts.clear();
        if n % 1024 == 0 {
            let st = p.engine().stats();
            most_containers = most_containers.max(st.containers);
            assert!(st.groups <= 200, "{} groups tracked", st.groups);
            assert!(
                st.containers <= 200 * 50,
                "{} containers tracked",
                st.containers
            );
        }
    }
    let c = &p.counters;
    eprintln!(
        "fuzz: {execs} executions (seed {seed}), {decoded} decoded, {rejected} rejected, \
         {unjoined} not joined to a container, {} observations, at most {most_containers} \
         containers tracked; reasons {:?}",
        c.observations, c.rejected
    );
    assert_eq!(c.lines, execs, "every line is counted");
    // Lines not decoded, and records the normaliser could not take (a sample of a
    // container nobody identified), each counted under a reason: what the worker
    // dead-letters with that reason.
    assert_eq!(
        c.rejected_total(),
        rejected + unjoined,
        "every rejection has a reason"
    );
    assert!(decoded > execs / 20, "mutations so heavy nothing decodes");
    assert!(
        rejected > execs / 20,
        "mutations so light nothing is rejected"
    );
    Report {
        execs,
        decoded,
        rejected,
        unjoined,
        most_containers,
    }
}
