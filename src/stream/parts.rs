//! Checkpoint values too large for one Kafka record, written as several.
//!
//! A task's own record holds the identity and counter state of every container it
//! tracks, and a group's record grows with its replicas: at a few thousand containers
//! a partition either passes the size a broker accepts in one record
//! (`message.max.bytes`, about 1 MB by default), the delivery fails, and the worker
//! can no longer commit. A value larger than [`MAX_VALUE_BYTES`] is therefore written
//! as numbered parts under keys of their own, then a small head under the value's key
//! that names them. The head comes last and names the parts by a generation that no
//! earlier checkpoint used, so a checkpoint cut short leaves the previous head and its
//! parts whole. Parts a head no longer names are tombstoned once the checkpoint that
//! replaced them has been committed ([`Parts::committed`]), at the next checkpoint.
//!
//! Everything here is bytes and keys: no I/O, and the worker sends what it returns.

use std::borrow::Cow;
use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Largest value written as one record; larger ones are split into parts of this size.
/// A quarter of librdkafka's and Kafka's default `message.max.bytes`, so that a record
/// with its key and framing fits whatever the broker's limit was left at.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// How a head starts. Every other value is JSON, which cannot start with this.
const HEAD_MAGIC: &[u8] = b"herd-parts\n";

/// Every part's key starts with this: `~part/{generation}/{index}/{key}`. `~` cannot
/// start an image reference, so no group key can look like a part.
const PREFIX: &str = "~part/";

/// What a head says: the generation and number of its parts, and the value's length.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    generation: u64,
    parts: u32,
    bytes: u64,
}

/// A record to produce to (or read from) the checkpoint topic: key, value (`None`: a
/// tombstone).
pub type Record = (String, Option<Vec<u8>>);

/// A partition read back: each value's key and its value, whole.
pub type Values<'a> = Vec<(&'a str, Cow<'a, [u8]>)>;

/// The parts a task has written, and those waiting to be tombstoned.
#[derive(Debug)]
pub struct Parts {
    max: usize,
    /// The generation the next split value gets.
    generation: u64,
    /// Key → the parts its current head names.
    live: BTreeMap<String, Vec<String>>,
    /// Parts replaced by a checkpoint that is not committed yet.
    replaced: Vec<String>,
    /// Parts replaced by a committed checkpoint: tombstoned at the next one.
    stale: Vec<String>,
}

fn part_key(generation: u64, index: u32, key: &str) -> String {
    format!("{PREFIX}{generation}/{index}/{key}")
}

/// The generation of a part's key, if it is one.
fn part_generation(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.split('/').next()?.parse().ok()
}

/// Whether a key is a part's (not a value's own).
pub fn is_part(key: &str) -> bool {
    key.starts_with(PREFIX)
}

impl Parts {
    /// No parts written yet; values larger than `max` bytes are split.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            generation: 0,
            live: BTreeMap::new(),
            replaced: Vec::new(),
            stale: Vec::new(),
        }
    }

    /// The records to produce for one checkpoint, in order: tombstones for stale parts,
    /// then each value, split when it is too large (its parts before its head).
    pub fn frame(&mut self, records: Vec<Record>) -> Vec<Record> {
        let mut out: Vec<Record> = self.stale.drain(..).map(|k| (k, None)).collect();
        let generation = self.generation;
        let mut split_any = false;
        for (key, value) in records {
            if let Some(old) = self.live.remove(&key) {
                self.replaced.extend(old);
            }
            match value {
                Some(v) if v.len() > self.max => {
                    split_any = true;
                    let chunks = v.chunks(self.max);
                    let n = chunks.len() as u32;
                    let mut names = Vec::with_capacity(n as usize);
                    for (i, chunk) in chunks.enumerate() {
                        let name = part_key(generation, i as u32, &key);
                        out.push((name.clone(), Some(chunk.to_vec())));
                        names.push(name);
                    }
                    let mut head = HEAD_MAGIC.to_vec();
                    // Serialising three integers cannot fail.
                    let _ = serde_json::to_writer(
                        &mut head,
                        &Head {
                            generation,
                            parts: n,
                            bytes: v.len() as u64,
                        },
                    );
                    out.push((key.clone(), Some(head)));
                    self.live.insert(key, names);
                }
                v => out.push((key, v)),
            }
        }
        if split_any {
            self.generation += 1;
        }
        out
    }

    /// The last checkpoint framed was committed: the parts it replaced are no longer
    /// named by any head a restore could read, and go at the next checkpoint.
    pub fn committed(&mut self) {
        self.stale.append(&mut self.replaced);
    }

    /// Reads a partition back (the last value of every key): every value's key with
    /// its value reassembled from its parts, tombstones left out; and the state that
    /// tombstones the parts no head names at the next checkpoint.
    pub fn assemble<'a>(
        max: usize,
        records: &'a BTreeMap<String, Option<Vec<u8>>>,
    ) -> anyhow::Result<(Self, Values<'a>)> {
        let mut parts = Self::new(max);
        let mut values = Vec::new();
        let mut named = std::collections::BTreeSet::new();
        let mut newest = None::<u64>;
        for (key, value) in records {
            if is_part(key) {
                newest = newest.max(part_generation(key));
                continue;
            }
            let Some(v) = value else { continue };
            let Some(head) = v.strip_prefix(HEAD_MAGIC) else {
                values.push((key.as_str(), Cow::Borrowed(v.as_slice())));
                continue;
            };
            let head: Head = serde_json::from_slice(head)
                .with_context(|| format!("the head of checkpoint {key:?} is not readable"))?;
            newest = newest.max(Some(head.generation));
            let mut whole = Vec::with_capacity(usize::try_from(head.bytes).unwrap_or(0));
            let mut names = Vec::with_capacity(head.parts as usize);
            for i in 0..head.parts {
                let name = part_key(head.generation, i, key);
                let Some(Some(chunk)) = records.get(&name) else {
                    anyhow::bail!(
                        "checkpoint {key:?} is missing part {i} of {} (generation {})",
                        head.parts,
                        head.generation
                    );
                };
                whole.extend_from_slice(chunk);
                named.insert(name.clone());
                names.push(name);
            }
            anyhow::ensure!(
                whole.len() as u64 == head.bytes,
                "checkpoint {key:?}: its parts hold {} bytes, its head says {}",
                whole.len(),
                head.bytes
            );
            parts.live.insert(key.clone(), names);
            values.push((key.as_str(), Cow::Owned(whole)));
        }
        parts.stale = records
            .iter()
            .filter(|(k, v)| is_part(k) && v.is_some() && !named.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        parts.generation = newest.map_or(0, |g| g + 1);
        Ok((parts, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies produced records to a compacted partition (last value of every key).
    fn apply(topic: &mut BTreeMap<String, Option<Vec<u8>>>, records: &[Record]) {
        for (k, v) in records {
            topic.insert(k.clone(), v.clone());
        }
    }

    fn live_parts(topic: &BTreeMap<String, Option<Vec<u8>>>) -> usize {
        topic
            .iter()
            .filter(|(k, v)| is_part(k) && v.is_some())
            .count()
    }

    fn read(topic: &BTreeMap<String, Option<Vec<u8>>>) -> BTreeMap<String, Vec<u8>> {
        let (_, values) = Parts::assemble(10, topic).expect("readable");
        values
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn a_small_value_is_one_record_and_a_large_one_is_parts_then_a_head() {
        let mut p = Parts::new(10);
        let out = p.frame(vec![
            ("g".into(), Some(b"{\"a\":1}".to_vec())),
            ("~task/0".into(), Some(vec![b'x'; 25])),
        ]);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "g",
                "~part/0/0/~task/0",
                "~part/0/1/~task/0",
                "~part/0/2/~task/0",
                "~task/0"
            ]
        );
        assert!(
            out.iter()
                .filter(|(k, _)| is_part(k))
                .all(|(_, v)| v.as_ref().is_some_and(|v| v.len() <= 10))
        );
        let mut topic = BTreeMap::new();
        apply(&mut topic, &out);
        let back = read(&topic);
        assert_eq!(back["g"], b"{\"a\":1}");
        assert_eq!(back["~task/0"], vec![b'x'; 25]);
        assert_eq!(back.len(), 2, "parts are not values of their own");
    }

    #[test]
    fn a_checkpoint_cut_short_leaves_the_previous_value_whole() {
        let mut p = Parts::new(10);
        let mut topic = BTreeMap::new();
        apply(&mut topic, &p.frame(vec![("k".into(), Some(vec![1; 35]))]));
        p.committed();
        // The next checkpoint's parts land, its head does not.
        let next = p.frame(vec![("k".into(), Some(vec![2; 35]))]);
        assert_eq!(
            next.last().map(|r| r.0.as_str()),
            Some("k"),
            "the head is last"
        );
        apply(&mut topic, &next[..next.len() - 1]);
        assert_eq!(read(&topic)["k"], vec![1; 35]);
        // A restore from there writes a generation of its own and tombstones the
        // orphaned parts once it has committed.
        let (mut q, _) = Parts::assemble(10, &topic).expect("readable");
        let out = q.frame(vec![("k".into(), Some(vec![3; 35]))]);
        assert!(
            out.iter()
                .filter(|(_, v)| v.is_some())
                .all(|(k, _)| !topic.contains_key(k) || k == "k"),
            "no part of a readable head is overwritten"
        );
        apply(&mut topic, &out);
        assert_eq!(read(&topic)["k"], vec![3; 35]);
        q.committed();
        apply(&mut topic, &q.frame(vec![]));
        assert_eq!(
            live_parts(&topic),
            4,
            "only the parts of the last head remain"
        );
    }

    #[test]
    fn replaced_parts_are_tombstoned_only_after_the_replacing_checkpoint_is_committed() {
        let mut p = Parts::new(10);
        let mut topic = BTreeMap::new();
        apply(&mut topic, &p.frame(vec![("k".into(), Some(vec![1; 25]))]));
        p.committed();
        // Replaced by a small value: the old parts stay until that is committed.
        let out = p.frame(vec![("k".into(), Some(vec![2; 5]))]);
        assert!(out.iter().all(|(_, v)| v.is_some()));
        apply(&mut topic, &out);
        let out = p.frame(vec![]);
        assert!(out.is_empty(), "not committed yet: nothing is tombstoned");
        p.committed();
        let out = p.frame(vec![("k".into(), None)]);
        assert_eq!(out.iter().filter(|(_, v)| v.is_none()).count(), 4);
        apply(&mut topic, &out);
        assert_eq!(live_parts(&topic), 0);
        assert!(!read(&topic).contains_key("k"));
    }

    #[test]
    fn a_missing_or_short_part_is_an_error_not_a_wrong_state() {
        let mut p = Parts::new(10);
        let mut topic = BTreeMap::new();
        apply(&mut topic, &p.frame(vec![("k".into(), Some(vec![1; 25]))]));
        let mut missing = topic.clone();
        missing.remove("~part/0/1/k");
        assert!(Parts::assemble(10, &missing).is_err());
        let mut short = topic.clone();
        short.insert("~part/0/2/k".into(), Some(vec![1; 2]));
        assert!(Parts::assemble(10, &short).is_err());
        let mut garbled = topic;
        garbled.insert("k".into(), Some(b"herd-parts\n{".to_vec()));
        assert!(Parts::assemble(10, &garbled).is_err());
    }
}
