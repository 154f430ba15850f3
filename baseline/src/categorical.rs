//! Categorical behaviour of a peer group: the items its replicas showed (executables,
//! exec commands, Falco rule + process, outbound destinations, listening ports, files
//! written, and from inventories paths added, sensitive paths touched and processes
//! running), each with the distinct replicas that showed it and when.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// What kind of behaviour an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// An executable that ran.
    Executable,
    /// A command run through `docker exec`.
    ExecCommand,
    /// A Falco rule together with the process that triggered it.
    FalcoRule,
    /// An outbound destination.
    Destination,
    /// A listening port.
    ListenPort,
    /// A file written.
    FileWrite,
    /// A path added to the container's filesystem (an inventory's pattern).
    FileAdded,
    /// A sensitive path added, changed or deleted (`added /etc/ld.so.preload`).
    SensitiveFile,
    /// A process an inventory saw running (its name).
    Process,
}

impl ItemKind {
    /// Every kind.
    pub const ALL: [ItemKind; 9] = [
        Self::Executable,
        Self::ExecCommand,
        Self::FalcoRule,
        Self::Destination,
        Self::ListenPort,
        Self::FileWrite,
        Self::FileAdded,
        Self::SensitiveFile,
        Self::Process,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executable => "executable",
            Self::ExecCommand => "exec_command",
            Self::FalcoRule => "falco_rule",
            Self::Destination => "destination",
            Self::ListenPort => "listen_port",
            Self::FileWrite => "file_write",
            Self::FileAdded => "file_added",
            Self::SensitiveFile => "sensitive_file",
            Self::Process => "process",
        }
    }
}

/// Most distinct replicas remembered per item; support beyond it is only counted.
const MAX_REPLICAS_PER_ITEM: usize = 64;

/// What is known of one item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemStats {
    /// First time any replica showed it.
    pub first_seen_ms: i64,
    /// Latest time any replica showed it.
    pub last_seen_ms: i64,
    /// How often it was seen.
    pub count: u64,
    /// Stable hashes of the replicas that showed it (sorted, at most 64).
    replicas: Vec<u64>,
    /// Replicas beyond the remembered ones.
    more_replicas: u32,
}

impl ItemStats {
    /// Distinct replicas that showed the item.
    pub fn support(&self) -> usize {
        self.replicas.len() + self.more_replicas as usize
    }

    /// Whether this replica showed it.
    pub fn seen_on(&self, replica: u64) -> bool {
        self.replicas.binary_search(&replica).is_ok()
    }

    /// Distinct replicas other than `replica` that showed it.
    pub fn support_excluding(&self, replica: u64) -> usize {
        self.support() - usize::from(self.seen_on(replica))
    }
}

/// What the catalog knew of an item just before an observation of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    /// The item's statistics before this observation, `None` if never seen in the group.
    pub stats: Option<ItemStats>,
}

/// The items of one group, bounded: beyond `max_items` the least recently seen item is
/// forgotten first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ItemCatalog {
    items: FxHashMap<String, ItemStats>,
}

fn key(kind: ItemKind, value: &str) -> String {
    let mut k = String::with_capacity(value.len() + 16);
    k.push_str(kind.as_str());
    k.push('\u{1f}');
    k.push_str(value);
    k
}

impl ItemCatalog {
    /// Items known.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is known.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// What is known of an item.
    pub fn get(&self, kind: ItemKind, value: &str) -> Option<&ItemStats> {
        self.items.get(&key(kind, value))
    }

    /// Records that `replica` showed the item at `ts_ms`, and returns what was known
    /// before.
    pub fn observe(
        &mut self,
        kind: ItemKind,
        value: &str,
        replica: u64,
        ts_ms: i64,
        max_items: usize,
    ) -> Prior {
        let k = key(kind, value);
        if !self.items.contains_key(&k) && self.items.len() >= max_items {
            self.evict_oldest();
        }
        let prior = self.items.get(&k).cloned();
        let e = self.items.entry(k).or_insert_with(|| ItemStats {
            first_seen_ms: ts_ms,
            last_seen_ms: ts_ms,
            count: 0,
            replicas: Vec::new(),
            more_replicas: 0,
        });
        e.count += 1;
        e.first_seen_ms = e.first_seen_ms.min(ts_ms);
        e.last_seen_ms = e.last_seen_ms.max(ts_ms);
        if let Err(pos) = e.replicas.binary_search(&replica) {
            if e.replicas.len() < MAX_REPLICAS_PER_ITEM {
                e.replicas.insert(pos, replica);
            } else {
                e.more_replicas = e.more_replicas.saturating_add(1);
            }
        }
        Prior { stats: prior }
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self
            .items
            .iter()
            .min_by_key(|(_, s)| s.last_seen_ms)
            .map(|(k, _)| k.clone())
        {
            self.items.remove(&k);
        }
    }

    /// Merges another catalog (support sets united, counts added).
    pub fn merge(&mut self, other: &ItemCatalog) {
        for (k, o) in &other.items {
            let e = self.items.entry(k.clone()).or_insert_with(|| ItemStats {
                first_seen_ms: o.first_seen_ms,
                last_seen_ms: o.last_seen_ms,
                count: 0,
                replicas: Vec::new(),
                more_replicas: 0,
            });
            e.count += o.count;
            e.first_seen_ms = e.first_seen_ms.min(o.first_seen_ms);
            e.last_seen_ms = e.last_seen_ms.max(o.last_seen_ms);
            for r in &o.replicas {
                if let Err(pos) = e.replicas.binary_search(r) {
                    if e.replicas.len() < MAX_REPLICAS_PER_ITEM {
                        e.replicas.insert(pos, *r);
                    } else {
                        e.more_replicas = e.more_replicas.saturating_add(1);
                    }
                }
            }
            e.more_replicas = e.more_replicas.saturating_add(o.more_replicas);
        }
    }

    /// Heap bytes held, roughly.
    pub fn heap_bytes(&self) -> usize {
        self.items
            .iter()
            .map(|(k, s)| k.capacity() + s.replicas.capacity() * 8 + 64)
            .sum()
    }
}

/// A stable 64-bit hash (FNV-1a) of a replica's container id: the same on every worker
/// and across versions, so snapshots stay valid.
pub fn replica_hash(container_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Collapses the parts of an item value that vary between identical replicas or runs
/// (long digit runs, hex ids, temp-name suffixes) into `#`, so they do not make every
/// replica look unique.
pub fn normalize_item(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(512));
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digits = run.bytes().filter(u8::is_ascii_digit).count();
        let hexlike = run.len() >= 8 && run.bytes().all(|b| b.is_ascii_hexdigit()) && digits > 0;
        if digits >= 4 && digits * 2 >= run.len() || hexlike {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for ch in value.chars().take(512) {
        if ch.is_ascii_alphanumeric() {
            run.push(ch);
        } else {
            flush(&mut run, &mut out);
            out.push(ch);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_counts_distinct_replicas() {
        let mut c = ItemCatalog::default();
        let (a, b) = (replica_hash("a"), replica_hash("b"));
        assert!(
            c.observe(ItemKind::Executable, "/bin/sh", a, 1, 10)
                .stats
                .is_none()
        );
        let p = c.observe(ItemKind::Executable, "/bin/sh", a, 2, 10);
        assert_eq!(p.stats.map(|s| s.support()), Some(1));
        c.observe(ItemKind::Executable, "/bin/sh", b, 3, 10);
        let s = c.get(ItemKind::Executable, "/bin/sh");
        assert_eq!(s.map(ItemStats::support), Some(2));
        assert_eq!(s.map(|s| s.support_excluding(a)), Some(1));
        assert_eq!(s.map(|s| s.count), Some(3));
    }

    #[test]
    fn catalog_is_bounded() {
        let mut c = ItemCatalog::default();
        for i in 0..100 {
            c.observe(ItemKind::FileWrite, &format!("/f{i}"), 1, i, 10);
        }
        assert_eq!(c.len(), 10);
        assert!(c.get(ItemKind::FileWrite, "/f99").is_some());
        assert!(c.get(ItemKind::FileWrite, "/f0").is_none());
    }

    #[test]
    fn normalisation_collapses_random_parts() {
        assert_eq!(normalize_item("/tmp/tmp.8f3a9c2e1d/x"), "/tmp/tmp.#/x");
        assert_eq!(
            normalize_item("curl -f http://localhost:8080/health"),
            "curl -f http://localhost:#/health"
        );
        assert_eq!(normalize_item("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(normalize_item("10.0.0.7:443"), "10.0.0.7:443");
    }
}
