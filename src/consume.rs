//! `herd consume`: print a topic's records as JSON lines (payload, key, headers, where
//! from), from the beginning to the current end. herd's own tool, because Debian's kcat
//! predates the brokers herd is tested against.
//!
//! Also the reader of a topic as input lines ([`topic_sources`]): each partition from its
//! start to the end it has when opened, for `herd backtest --from-topics`.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::stream::kafka::{Role, client_config};

/// One record as printed.
#[derive(Debug, Serialize)]
struct Printed<'a> {
    partition: i32,
    offset: i64,
    /// The record's Kafka timestamp, epoch milliseconds.
    timestamp_ms: Option<i64>,
    key: Option<std::borrow::Cow<'a, str>>,
    headers: BTreeMap<&'a str, std::borrow::Cow<'a, str>>,
    /// The payload as JSON when it parses, else as a string (lossy).
    payload: Option<Box<serde_json::value::RawValue>>,
    payload_text: Option<std::borrow::Cow<'a, str>>,
}

/// The partitions of `topic`; fails when it has none (it does not exist).
fn partitions(c: &BaseConsumer, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("fetching the metadata of {topic}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} not found");
    Ok(parts)
}

/// Every line of the file `from` (bounded by `max_line`; longer ones are skipped), or
/// else every payload of `topic` read to its end, to `each`. Returns where from, for
/// messages (`the file's path`, `topic NAME`).
pub fn lines_or_topic(
    kafka: &BTreeMap<String, String>,
    from: Option<&std::path::Path>,
    topic: &str,
    max_line: usize,
    mut each: impl FnMut(&[u8]),
) -> anyhow::Result<String> {
    use crate::input::{Line, LineReader};
    match from {
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut r = LineReader::new(io::BufReader::new(f), max_line);
            while let Some(line) = r.next_line()? {
                if let Line::Ok(bytes) = line {
                    each(bytes);
                }
            }
            Ok(path.display().to_string())
        }
        None => {
            read_to_end(kafka, topic, Duration::from_secs(120), |m| {
                if let Some(p) = m.payload() {
                    each(p);
                }
                Ok(())
            })?;
            Ok(format!("topic {topic}"))
        }
    }
}

/// Reads every partition of `topic` from its start to the end it has when called,
/// handing each record to `each`. Returns the number of records.
pub fn read_to_end(
    kafka: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let c: BaseConsumer = client_config(kafka, Role::Reader).create()?;
    let parts = partitions(&c, topic, timeout)?;
    // The end is where librdkafka reports end-of-partition (from the fetch responses'
    // high watermarks), not a watermark asked for up front: some brokers answer a
    // ListOffsets for the latest offset with the start of the last batch.
    let mut open: std::collections::BTreeSet<i32> = parts.iter().copied().collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut n = 0;
    while !open.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic}: not read to its end in time"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                open.remove(&p);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        each(&m)?;
        n += 1;
    }
    Ok(n)
}

/// Reads every partition of `topic` from its start to the end it has when called, and
/// writes one JSON line per record to `out`. Returns the number of records.
pub fn consume(
    kafka: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    read_to_end(kafka, topic, timeout, |m| {
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for hd in h.iter() {
                headers.insert(
                    hd.key,
                    String::from_utf8_lossy(hd.value.unwrap_or_default()),
                );
            }
        }
        let payload = m.payload().unwrap_or_default();
        // Embedded as JSON only when it parses within serde_json's nesting limit, so
        // that every printed line can be read back.
        let json = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|_| serde_json::from_slice::<Box<serde_json::value::RawValue>>(payload).ok());
        let text = json.is_none().then(|| String::from_utf8_lossy(payload));
        serde_json::to_writer(
            &mut *out,
            &Printed {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key().map(String::from_utf8_lossy),
                headers,
                payload: json,
                payload_text: text,
            },
        )?;
        out.write_all(b"\n")?;
        Ok(())
    })
}

/// How long a partition may give nothing before its end before reading it fails.
const PARTITION_IDLE: Duration = Duration::from_secs(60);

/// One partition's payloads as input lines: from its start to the end it has when
/// opened (librdkafka's end-of-partition), a line per record. A payload is one JSON
/// document, so a line break inside it can only be whitespace between tokens (JSON
/// strings cannot hold one raw): it becomes a space; an empty payload is skipped.
struct PartitionLines {
    consumer: BaseConsumer,
    what: String,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl PartitionLines {
    fn open(kafka: &BTreeMap<String, String>, topic: &str, partition: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client_config(kafka, Role::Reader).create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            what: format!("{topic}[{partition}]"),
            buf: Vec::with_capacity(1 << 16),
            pos: 0,
            done: false,
        })
    }
}

impl BufRead for PartitionLines {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let mut idle_until = Instant::now() + PARTITION_IDLE;
        while self.pos >= self.buf.len() && !self.done {
            self.buf.clear();
            self.pos = 0;
            match self.consumer.poll(Duration::from_millis(200)) {
                None if Instant::now() > idle_until => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: not read to its end in time", self.what),
                    ));
                }
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => self.done = true,
                Some(Err(e)) => return Err(io::Error::other(format!("{}: {e}", self.what))),
                Some(Ok(m)) => {
                    idle_until = Instant::now() + PARTITION_IDLE;
                    if let Some(p) = m.payload().filter(|p| !p.is_empty()) {
                        self.buf.extend(p.iter().map(|&b| match b {
                            b'\n' | b'\r' => b' ',
                            b => b,
                        }));
                        self.buf.push(b'\n');
                    }
                }
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

impl Read for PartitionLines {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Every partition of `topics` as an input source (see `PartitionLines`), for the
/// event-time merge of `herd backtest --from-topics`: one reader per partition, so the
/// merge takes each partition's records in their order.
pub fn topic_sources(
    kafka: &BTreeMap<String, String>,
    topics: &[String],
    max_line: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<crate::input::Source>> {
    let meta: BaseConsumer = client_config(kafka, Role::Reader).create()?;
    let mut out = Vec::new();
    for topic in topics {
        for p in partitions(&meta, topic, timeout)? {
            let r = PartitionLines::open(kafka, topic, p)?;
            out.push(crate::input::Source {
                name: r.what.clone(),
                reader: crate::input::LineReader::new(Box::new(r), max_line),
            });
        }
    }
    Ok(out)
}
