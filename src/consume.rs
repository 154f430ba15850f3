//! `herd consume`: print a topic's records as JSON lines (payload, key, headers, where
//! from), from the beginning to the current end. herd's own tool, because Debian's kcat
//! predates the brokers herd is tested against.

use std::collections::BTreeMap;
use std::io::Write;
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

/// Reads every partition of `topic` from its start to the end it has when called,
/// handing each record to `each`. Returns the number of records.
pub fn read_to_end(
    kafka: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let c: BaseConsumer = client_config(kafka, Role::Reader).create()?;
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .context("fetching metadata")?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} not found");
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
