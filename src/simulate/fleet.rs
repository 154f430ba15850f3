//! The simulated fleet: images, replicas, their workloads, and what attacks do to them.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::formats::{Counters, Gauges, Ident};

pub(crate) const MIB: f64 = 1024.0 * 1024.0;
pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const MIN: i64 = 60_000;

/// What a replica runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// Web frontend: daily curve, health-check execs, periodic Falco noise.
    Web,
    /// API: daily curve, health-check execs; `version` scales its cost (rollout).
    Api { version: f64 },
    /// Batch worker: idle or busy, independently of its siblings.
    Worker,
    /// Cache: steady, memory-heavy, with a memory limit.
    Cache,
    /// A single-replica cron image: near idle with an hourly job.
    Cron,
}

/// How its stats are published.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Format {
    /// The agent envelope (identity included).
    Envelope,
    /// Raw stats-API JSON (identity from the start event).
    Raw,
}

/// Attack and benign effects on metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Effect {
    Miner,
    Exfiltration,
    ForkBomb,
    MemoryLeak,
    DiskBurst,
    CpuSpike,
    Download,
    Surge,
}

/// One simulated container.
#[derive(Debug, Clone)]
pub(crate) struct Container {
    pub(crate) ident: Ident,
    pub(crate) kind: Kind,
    pub(crate) format: Format,
    /// Per-replica cost factor (replicas are alike, not identical).
    pub(crate) rf: f64,
    pub(crate) from_ms: i64,
    pub(crate) to_ms: Option<i64>,
    pub(crate) counters: Counters,
    pub(crate) prev: Option<Counters>,
    pub(crate) busy: bool,
    pub(crate) next_switch_ms: i64,
    pub(crate) hc_offset_ms: i64,
    pub(crate) falco_next_ms: i64,
    pub(crate) restarted_at: Option<i64>,
}

pub(crate) fn hex_id(rng: &mut ChaCha8Rng) -> String {
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

pub(crate) fn ident(
    rng: &mut ChaCha8Rng,
    name: &str,
    image: &str,
    digest: Option<&str>,
    host: usize,
    service: &str,
) -> Ident {
    let mut labels = BTreeMap::new();
    labels.insert("com.docker.compose.project".to_owned(), "shop".to_owned());
    labels.insert("com.docker.compose.service".to_owned(), service.to_owned());
    Ident {
        id: hex_id(rng),
        name: name.to_owned(),
        image: image.to_owned(),
        digest: digest.map(str::to_owned),
        host: format!("node-{}", host % 3 + 1),
        labels,
    }
}

/// Daily load between 0.1 and 1.0, peaking mid-afternoon.
pub(crate) fn daily_load(t_ms: i64) -> f64 {
    let hour = (t_ms.rem_euclid(24 * HOUR)) as f64 / HOUR as f64;
    0.55 + 0.45 * ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin()
}

/// Multiplicative noise with the given relative standard deviation.
pub(crate) fn noise(rng: &mut ChaCha8Rng, rel: f64) -> f64 {
    let z: f64 = StandardNormal.sample(rng);
    (z * rel).exp()
}

/// Instantaneous behaviour of a container.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rates {
    pub(crate) cores: f64,
    pub(crate) rx: f64,
    pub(crate) tx: f64,
    pub(crate) blk_r: f64,
    pub(crate) blk_w: f64,
    pub(crate) mem: f64,
    pub(crate) pids: f64,
    pub(crate) mem_limit: Option<f64>,
}

impl Container {
    /// Its behaviour at `t` with the active effects applied.
    pub(crate) fn rates(
        &mut self,
        t: i64,
        effects: &[(Effect, f64)],
        rng: &mut ChaCha8Rng,
    ) -> Rates {
        let surge = effects
            .iter()
            .find(|(e, _)| *e == Effect::Surge)
            .map_or(1.0, |_| 2.5);
        let load = daily_load(t) * surge;
        let rf = self.rf;
        let mut r = match self.kind {
            Kind::Web => Rates {
                cores: rf * (0.05 + 0.45 * load) * noise(rng, 0.08),
                rx: rf * 300e3 * load * noise(rng, 0.10),
                tx: rf * 900e3 * load * noise(rng, 0.10),
                blk_r: 2e3 * noise(rng, 0.3),
                blk_w: 40e3 * load * noise(rng, 0.2),
                mem: (180.0 * MIB + 40.0 * MIB * load.min(1.5)) * rf * noise(rng, 0.01),
                pids: 12.0 + f64::from(u8::from(rng.random_bool(0.1))),
                mem_limit: None,
            },
            Kind::Api { version } => Rates {
                cores: rf * version * (0.08 + 0.3 * load) * noise(rng, 0.08),
                rx: rf * 500e3 * load * noise(rng, 0.1),
                tx: rf * 400e3 * load * noise(rng, 0.1),
                blk_r: 1e3 * noise(rng, 0.3),
                blk_w: 20e3 * noise(rng, 0.3),
                mem: 250.0 * MIB * version.sqrt() * rf * noise(rng, 0.01),
                pids: 20.0,
                mem_limit: None,
            },
            Kind::Worker => {
                if t >= self.next_switch_ms {
                    self.busy = !self.busy;
                    let mean = if self.busy { 20.0 } else { 40.0 };
                    let minutes = -mean * (1.0 - rng.random::<f64>()).ln();
                    self.next_switch_ms = t + (minutes.max(2.0) * MIN as f64) as i64;
                }
                if self.busy {
                    Rates {
                        cores: 0.88 * noise(rng, 0.05),
                        rx: 2e6 * noise(rng, 0.1),
                        tx: 100e3 * noise(rng, 0.1),
                        blk_r: 1e6 * noise(rng, 0.2),
                        blk_w: 5e6 * noise(rng, 0.2),
                        mem: 600.0 * MIB * noise(rng, 0.02),
                        pids: 8.0,
                        mem_limit: None,
                    }
                } else {
                    Rates {
                        cores: 0.03 * noise(rng, 0.15),
                        rx: 5e3 * noise(rng, 0.2),
                        tx: 5e3 * noise(rng, 0.2),
                        blk_r: 1e3 * noise(rng, 0.3),
                        blk_w: 2e3 * noise(rng, 0.3),
                        mem: 300.0 * MIB * noise(rng, 0.02),
                        pids: 8.0,
                        mem_limit: None,
                    }
                }
            }
            Kind::Cache => Rates {
                cores: rf * (0.04 + 0.08 * load) * noise(rng, 0.08),
                rx: rf * 200e3 * load * noise(rng, 0.1),
                tx: rf * 800e3 * load * noise(rng, 0.1),
                blk_r: 1e3 * noise(rng, 0.3),
                blk_w: 30e3 * noise(rng, 0.3),
                mem: 300.0 * MIB * rf * noise(rng, 0.005),
                pids: 5.0,
                mem_limit: Some(1024.0 * MIB),
            },
            Kind::Cron => {
                let job = t.rem_euclid(HOUR) < 2 * MIN;
                Rates {
                    cores: if job { 0.4 } else { 0.02 } * noise(rng, 0.1),
                    rx: 2e3 * noise(rng, 0.3),
                    tx: 1e3 * noise(rng, 0.3),
                    blk_r: 1e3 * noise(rng, 0.3),
                    blk_w: if job { 2e6 } else { 4e3 } * noise(rng, 0.3),
                    mem: if job { 90.0 } else { 60.0 } * MIB * noise(rng, 0.01),
                    pids: if job { 6.0 } else { 3.0 },
                    mem_limit: None,
                }
            }
        };
        for (e, progress) in effects {
            match e {
                Effect::Miner => {
                    r.cores += 1.6 * noise(rng, 0.03);
                    r.mem += 40.0 * MIB;
                }
                Effect::Exfiltration => r.tx += 20e6 * noise(rng, 0.1),
                Effect::ForkBomb => {
                    r.pids += (4000.0 - r.pids) * (progress * 3.0).min(1.0);
                    r.cores = (r.cores + 2.0 * (progress * 3.0).min(1.0)).min(4.0);
                }
                Effect::MemoryLeak => {
                    let limit = r.mem_limit.unwrap_or(1024.0 * MIB);
                    r.mem += (0.97 * limit - r.mem) * progress;
                }
                Effect::DiskBurst => r.blk_w += 150e6 * noise(rng, 0.1),
                Effect::CpuSpike => r.cores += 1.5 * noise(rng, 0.05),
                Effect::Download => {
                    r.rx += 5e6 * noise(rng, 0.1);
                    r.cores += 0.3;
                }
                Effect::Surge => {}
            }
        }
        r
    }

    /// Advances the counters by `dt_ms` at rates `r` and returns the sample's gauges.
    pub(crate) fn advance(&mut self, r: &Rates, dt_ms: i64) -> Gauges {
        let dt = dt_ms as f64 / 1000.0;
        self.prev = Some(self.counters);
        let c = &mut self.counters;
        c.cpu_ns += r.cores * dt * 1e9;
        c.system_ns += 4.0 * dt * 1e9;
        c.net[0] += r.rx * dt;
        c.net[1] += r.tx * dt;
        c.net[2] += r.rx * dt / 900.0;
        c.net[3] += r.tx * dt / 1100.0;
        c.blk[0] += r.blk_r * dt;
        c.blk[1] += r.blk_w * dt;
        Gauges {
            mem_bytes: r.mem,
            mem_limit: r.mem_limit,
            pids: r.pids,
        }
    }

    /// A restart: the container's counters start again from zero.
    pub(crate) fn reset_counters(&mut self) {
        let system = self.counters.system_ns;
        self.counters = Counters {
            system_ns: system,
            ..Counters::default()
        };
        self.prev = None;
    }
}
