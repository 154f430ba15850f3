//! `herd produce`: recorded lines into a topic, keyed the way herd routes them.
//!
//! Several files are merged in event time (each is read in order), so that a recorded
//! fleet arrives as it happened. Each line is sent as it is; its key is the image
//! repository ([`herd_ingest::Router`]), learnt from earlier lines for raw Docker
//! stats, or none when nothing tells it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herd_ingest::{Decoder, Limits, Router};
use rdkafka::producer::BaseRecord;

use crate::input::Line;
use crate::replay::open_sources;
use crate::stream::kafka;

/// How records are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyBy {
    /// By routing key (image repository), as the agent does.
    Route,
    /// By container id: not herd's key, so workers re-key it (the repartition path).
    Container,
    /// No key.
    None,
}

/// How fast records are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the broker takes them.
    Fast,
    /// At most this many records per second.
    Rate(f64),
    /// Event time played back this many times faster than real time (`herd demo`).
    Speedup(f64),
}

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Every record to one topic.
    Topic(String),
    /// By kind, as the agent publishes: stats and native metrics to `samples`, Docker
    /// events, Falco and native events to `events`, Prometheus samples to `metrics`.
    /// Lines that do not decode go to `samples` (the workers dead-letter them).
    ByKind {
        /// Stats samples.
        samples: String,
        /// Events.
        events: String,
        /// Prometheus samples.
        metrics: String,
    },
}

impl Dest {
    fn topic(&self, rec: Option<&herd_ingest::Record>) -> &str {
        use herd_ingest::{Payload, Record};
        match self {
            Dest::Topic(t) => t,
            Dest::ByKind {
                samples,
                events,
                metrics,
            } => match rec {
                Some(Record::DockerEvent(_) | Record::Falco(_)) => events,
                Some(Record::Native(o)) if matches!(o.payload, Payload::Event(_)) => events,
                Some(Record::Prom(_)) => metrics,
                _ => samples,
            },
        }
    }
}

/// Which records to send, by event time. Records outside are still read, so that what
/// they say about containers keys the records inside the way a producer that had sent
/// everything would. Lines without a time go with the first window (`from` unset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Send records at or after this time (epoch ms).
    pub from_ms: Option<i64>,
    /// Send records before this time (epoch ms).
    pub until_ms: Option<i64>,
}

impl Window {
    fn contains(&self, ts: i64) -> bool {
        if ts == i64::MIN {
            return self.from_ms.is_none();
        }
        self.from_ms.is_none_or(|f| ts >= f) && self.until_ms.is_none_or(|u| ts < u)
    }
}

/// What was produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Produced {
    /// Records acknowledged by the broker.
    pub records: u64,
    /// Of those, records without a key.
    pub unkeyed: u64,
}

/// Produces every line of `inputs` to `dest` at the given pace, until the inputs end
/// or `stop` is set. Waits for every delivery.
pub fn produce(
    kafka_cfg: &BTreeMap<String, String>,
    inputs: &[PathBuf],
    dest: &Dest,
    key_by: KeyBy,
    pace: Pace,
    window: Window,
    stop: &AtomicBool,
) -> anyhow::Result<Produced> {
    let limits = Limits::default();
    let (mut sources, _) = open_sources(inputs, limits.max_line_bytes)?;
    let producer = kafka::producer(kafka_cfg)?;
    let decoder = Decoder::new(limits);
    let mut router = Router::new(1 << 20);
    let mut heads: Vec<Option<(i64, Vec<u8>)>> = vec![None; sources.len()];
    let mut done = vec![false; sources.len()];
    let mut out = Produced::default();
    let started = Instant::now();
    let mut first_ts = None;
    while !stop.load(Ordering::Relaxed) {
        for (i, s) in sources.iter_mut().enumerate() {
            while heads[i].is_none() && !done[i] {
                match s.reader.next_line()? {
                    None => done[i] = true,
                    Some(Line::TooLong(_)) => {} // it could not be sent either
                    Some(Line::Ok(b)) if b.iter().all(u8::is_ascii_whitespace) => {}
                    Some(Line::Ok(b)) => {
                        let ts = decoder
                            .decode(b)
                            .ok()
                            .and_then(|r| r.ts_ms())
                            .unwrap_or(i64::MIN);
                        heads[i] = Some((ts, b.to_vec()));
                    }
                }
            }
        }
        let Some(i) = (0..heads.len())
            .filter(|i| heads[*i].is_some())
            .min_by_key(|i| heads[*i].as_ref().map(|(ts, _)| *ts))
        else {
            break;
        };
        let Some((ts, line)) = heads[i].take() else {
            break;
        };
        let decoded = decoder.decode(&line).ok();
        let key = match (key_by, &decoded) {
            (KeyBy::None, _) | (_, None) => None,
            (KeyBy::Route, Some(r)) => router.route(r),
            (KeyBy::Container, Some(r)) => {
                router.route(r);
                container_of(r)
            }
        };
        if !window.contains(ts) {
            continue;
        }
        let topic = dest.topic(decoded.as_ref());
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(line.as_slice());
        if let Some(k) = key {
            rec = rec.key(k.as_bytes());
        } else {
            out.unkeyed += 1;
        }
        kafka::send(&producer, rec)?;
        out.records += 1;
        let due = match pace {
            Pace::Fast => None,
            Pace::Rate(rate) => Some(Duration::from_secs_f64(out.records as f64 / rate)),
            Pace::Speedup(x) if ts != i64::MIN => {
                let t0 = *first_ts.get_or_insert(ts);
                Some(Duration::from_secs_f64(
                    ((ts - t0).max(0) as f64 / 1000.0) / x,
                ))
            }
            Pace::Speedup(_) => None,
        };
        if let Some(wait) = due.and_then(|d| d.checked_sub(started.elapsed())) {
            std::thread::sleep(wait);
        }
    }
    kafka::flush(&producer, kafka::FLUSH_STALL)
        .context("waiting for the broker to acknowledge every record")?;
    Ok(out)
}

fn container_of(r: &herd_ingest::Record) -> Option<&str> {
    use herd_ingest::Record;
    match r {
        Record::Native(o) => Some(&o.container.id),
        Record::Stats(s) => Some(s.id()),
        Record::DockerEvent(e) => Some(&e.id),
        Record::Falco(f) => Some(&f.container_id),
        Record::Prom(p) => Some(&p.container_id),
        Record::Filtered { .. } => None,
    }
}
