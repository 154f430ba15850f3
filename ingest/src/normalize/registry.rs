//! The container registry: what herd knows of each container's identity, fed by `start`
//! events, agent envelopes, and any event that carries the image attribute. Raw stats and
//! Falco alerts find their image and peer group here.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::rates::PrevStats;
use crate::model::{ContainerRef, id_hash as hash_id};

/// What herd knows of one container: its identity, when it was last heard of, and the
/// counters of its previous stats sample (for rates; [`PrevStats::NONE`] before one).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    cref: Arc<ContainerRef>,
    last_seen_ms: i64,
    counters: PrevStats,
}

/// Containers by full id, plus Falco's 12-character short ids. Both tables are keyed by
/// what their entries hold (a container's identity holds its id), so an id is stored
/// once and a table slot is only its entry: 88 bytes a container, where a map with a
/// key of its own beside a second map for the counter state took 120 (see
/// `docs/performance.md`). Serialised as the entries alone, the counter state apart
/// (the normaliser's `rates.stats`): the short ids are derived again on restore.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    /// Hashed by [`hash_id`] of the entry's id.
    by_id: HashTable<Entry>,
    /// Full ids, hashed by [`hash_prefix`]: one a prefix, the latest registered.
    short: HashTable<Arc<str>>,
}

/// Falco names a container by the first 12 characters of its id.
const SHORT: usize = 12;

fn hash_prefix(p: &[u8]) -> u64 {
    FxBuildHasher.hash_one(p)
}

/// The short id of `id`: its first 12 bytes; none for a shorter id.
fn prefix(id: &str) -> Option<&[u8]> {
    id.as_bytes().get(..SHORT)
}

/// Points the short id of `id` at it in `short` (the latest container with that prefix
/// wins).
fn index_short(short: &mut HashTable<Arc<str>>, id: &Arc<str>) {
    let Some(p) = prefix(id) else { return };
    let slot = short.entry(
        hash_prefix(p),
        |f| prefix(f) == Some(p),
        |f| hash_prefix(prefix(f).unwrap_or_default()),
    );
    match slot {
        Slot::Occupied(mut o) => *o.get_mut() = Arc::clone(id),
        Slot::Vacant(v) => {
            v.insert(Arc::clone(id));
        }
    }
}

/// What a checkpoint holds (older ones also hold `short`, ignored).
#[derive(Deserialize)]
struct Wire {
    by_id: FxHashMap<String, EntryWire>,
}

#[derive(Serialize, Deserialize)]
struct EntryWire {
    cref: Arc<ContainerRef>,
    last_seen_ms: i64,
}

impl<'de> Deserialize<'de> for Registry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let mut r = Registry::default();
        for e in w.by_id.into_values() {
            r.insert(Entry {
                cref: e.cref,
                last_seen_ms: e.last_seen_ms,
                counters: PrevStats::NONE,
            });
        }
        Ok(r)
    }
}

impl Serialize for Registry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct ById<'a>(&'a HashTable<Entry>);
        impl Serialize for ById<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|e| {
                    let w = EntryWire {
                        cref: Arc::clone(&e.cref),
                        last_seen_ms: e.last_seen_ms,
                    };
                    (&*e.cref.id, w)
                }))
            }
        }
        let mut st = s.serialize_struct("Registry", 1)?;
        st.serialize_field("by_id", &ById(&self.by_id))?;
        st.end()
    }
}

/// The same containers, identities, times and counter state (the short ids follow).
impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.by_id.len() == other.by_id.len()
            && self
                .by_id
                .iter()
                .all(|e| other.find(&e.cref.id).is_some_and(|o| o == e))
    }
}

impl Registry {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn find(&self, id: &str) -> Option<&Entry> {
        self.by_id.find(hash_id(id), |e| *e.cref.id == *id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.by_id.find_mut(hash_id(id), |e| *e.cref.id == *id)
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    pub(crate) fn get(&mut self, id: &str, ts_ms: i64) -> Option<Arc<ContainerRef>> {
        let e = self.find_mut(id)?;
        e.last_seen_ms = e.last_seen_ms.max(ts_ms);
        Some(Arc::clone(&e.cref))
    }

    /// Looks a container up by a full id or a unique prefix of at least 12 characters.
    pub(crate) fn get_by_prefix(&mut self, id: &str, ts_ms: i64) -> Option<Arc<ContainerRef>> {
        if let Some(c) = self.get(id, ts_ms) {
            return Some(c);
        }
        let p = prefix(id)?;
        let full = self
            .short
            .find(hash_prefix(p), |f| prefix(f) == Some(p))
            .map(Arc::clone)?;
        full.starts_with(id)
            .then(|| self.get(&full, ts_ms))
            .flatten()
    }

    /// The counter state of a known container.
    pub(crate) fn counters_mut(&mut self, id: &str) -> Option<&mut PrevStats> {
        self.find_mut(id).map(|e| &mut e.counters)
    }

    /// Every container's counter state, by id (those without any left out).
    pub(crate) fn counters(&self) -> impl Iterator<Item = (&str, &PrevStats)> + '_ {
        self.by_id
            .iter()
            .filter(|e| !e.counters.is_none())
            .map(|e| (&*e.cref.id, &e.counters))
    }

    fn insert(&mut self, e: Entry) {
        let id = Arc::clone(&e.cref.id);
        index_short(&mut self.short, &id);
        let slot = self
            .by_id
            .entry(hash_id(&id), |x| *x.cref.id == *id, |x| hash_id(&x.cref.id));
        match slot {
            Slot::Occupied(mut o) => *o.get_mut() = e,
            Slot::Vacant(v) => {
                v.insert(e);
            }
        }
    }

    /// Registers or refreshes a container, returning the shared reference. An identical
    /// identity keeps its existing `Arc`, so steady-state samples allocate nothing here.
    pub(crate) fn upsert(&mut self, c: ContainerRef, ts_ms: i64) -> Arc<ContainerRef> {
        if let Some(e) = self.find_mut(&c.id) {
            e.last_seen_ms = e.last_seen_ms.max(ts_ms);
            if *e.cref != c {
                // The same id: keep its one allocation.
                let mut c = c;
                c.id = Arc::clone(&e.cref.id);
                e.cref = Arc::new(c);
            }
            return Arc::clone(&e.cref);
        }
        let cref = Arc::new(c);
        self.insert(Entry {
            cref: Arc::clone(&cref),
            last_seen_ms: ts_ms,
            counters: PrevStats::NONE,
        });
        cref
    }

    /// [`Self::upsert`] of an identity the decoder already shares (an agent envelope's),
    /// with the container's counter state: one lookup for a stats sample. An equal
    /// identity is adopted by pointer, so the next sample's is the same `Arc` and costs
    /// no comparison.
    pub(crate) fn upsert_shared(
        &mut self,
        c: Arc<ContainerRef>,
        ts_ms: i64,
    ) -> (Arc<ContainerRef>, &mut PrevStats) {
        let slot = self.by_id.entry(
            hash_id(&c.id),
            |x| x.cref.id == c.id,
            |x| hash_id(&x.cref.id),
        );
        let e = match slot {
            Slot::Occupied(o) => {
                let e = o.into_mut();
                e.last_seen_ms = e.last_seen_ms.max(ts_ms);
                if !Arc::ptr_eq(&e.cref, &c) {
                    if !Arc::ptr_eq(&e.cref.id, &c.id) {
                        // Another allocation of the id (the decoder's cache was emptied,
                        // or a restore): the short id points at the adopted one, so it is
                        // held once.
                        index_short(&mut self.short, &c.id);
                    }
                    e.cref = Arc::clone(&c);
                }
                e
            }
            // A new container: the decoder's identity itself, not a copy.
            Slot::Vacant(v) => {
                index_short(&mut self.short, &c.id);
                v.insert(Entry {
                    cref: Arc::clone(&c),
                    last_seen_ms: ts_ms,
                    counters: PrevStats::NONE,
                })
                .into_mut()
            }
        };
        (c, &mut e.counters)
    }

    /// [`Self::get`] with the container's counter state: one lookup for a stats sample.
    pub(crate) fn get_with_counters(
        &mut self,
        id: &str,
        ts_ms: i64,
    ) -> Option<(Arc<ContainerRef>, &mut PrevStats)> {
        let e = self.find_mut(id)?;
        e.last_seen_ms = e.last_seen_ms.max(ts_ms);
        Some((Arc::clone(&e.cref), &mut e.counters))
    }

    /// Registers a container from event attributes, keeping what is already known and
    /// not contradicted (a `start` event has no digest; an envelope may have set it).
    pub(crate) fn upsert_from_event(
        &mut self,
        id: &str,
        name: Option<String>,
        image: Option<String>,
        image_digest: Option<String>,
        labels: BTreeMap<String, String>,
        ts_ms: i64,
    ) -> Option<Arc<ContainerRef>> {
        let known = self.find(id).map(|e| Arc::clone(&e.cref));
        // What is already known is kept as it is (shared), what the event says is new.
        let image: Arc<str> = match (image, &known) {
            (Some(i), Some(k)) if *k.image == *i => Arc::clone(&k.image),
            (Some(i), _) => i.into(),
            (None, Some(k)) => Arc::clone(&k.image),
            (None, None) => return None,
        };
        let same_image = known
            .as_ref()
            .is_some_and(|k| Arc::ptr_eq(&k.image, &image));
        let c = ContainerRef {
            id: known
                .as_ref()
                .map_or_else(|| id.into(), |k| Arc::clone(&k.id)),
            name: match (name, &known) {
                (Some(n), Some(k)) if k.name.as_deref() == Some(n.as_str()) => k.name.clone(),
                (Some(n), _) => Some(n.into()),
                (None, k) => k.as_ref().and_then(|k| k.name.clone()),
            },
            image_digest: match (image_digest, &known) {
                (Some(d), Some(k)) if k.image_digest.as_deref() == Some(d.as_str()) => {
                    k.image_digest.clone()
                }
                (Some(d), _) => Some(d.into()),
                (None, k) => k
                    .as_ref()
                    .filter(|_| same_image)
                    .and_then(|k| k.image_digest.clone()),
            },
            image,
            labels: if labels.is_empty() {
                known.as_ref().map(|k| k.labels.clone()).unwrap_or_default()
            } else {
                labels.into()
            },
            host: known.as_ref().and_then(|k| k.host.clone()),
        };
        Some(self.upsert(c, ts_ms))
    }

    /// Forgets counter state older than `counters_before_ms` (no rate spans that long),
    /// containers not seen since `forget_before_ms`, and the oldest ones beyond `max`.
    pub(crate) fn evict(
        &mut self,
        counters_before_ms: i64,
        forget_before_ms: i64,
        max: usize,
    ) -> usize {
        let n0 = self.by_id.len();
        self.by_id.retain(|e| {
            e.counters.expire(counters_before_ms);
            e.last_seen_ms >= forget_before_ms
        });
        if self.by_id.len() > max {
            let mut seen: Vec<i64> = self.by_id.iter().map(|e| e.last_seen_ms).collect();
            let cut = seen.len() - max;
            seen.select_nth_unstable(cut);
            let threshold = seen[cut];
            self.by_id.retain(|e| e.last_seen_ms >= threshold);
        }
        let by_id = &self.by_id;
        self.short
            .retain(|full| by_id.find(hash_id(full), |e| e.cref.id == *full).is_some());
        n0 - self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> ContainerRef {
        ContainerRef {
            id: "8f2c1a2b3c4d5e6f".into(),
            name: Some(name.into()),
            image: "shop/web:1".into(),
            image_digest: None,
            labels: Default::default(),
            host: None,
        }
    }

    /// However a known container's identity is replaced, the short id points at the id
    /// its current identity holds: one allocation of the id, not one per version.
    #[test]
    fn a_replaced_identity_keeps_one_allocation_of_its_id_issue_7() {
        let keyed_by_own_id = |r: &Registry| {
            r.short
                .iter()
                .all(|v| r.by_id.iter().any(|e| Arc::ptr_eq(v, &e.cref.id)))
        };
        let mut r = Registry::default();
        r.upsert(identity("web-1"), 1);
        r.upsert(identity("web-renamed"), 2);
        assert!(keyed_by_own_id(&r));
        let shared = Arc::new(identity("web-again"));
        let (got, _) = r.upsert_shared(Arc::clone(&shared), 3);
        assert!(Arc::ptr_eq(&got, &shared));
        assert!(keyed_by_own_id(&r));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.get_by_prefix("8f2c1a2b3c4d", 4).map(|c| c.name.clone()),
            Some(Some("web-again".into()))
        );
    }

    #[test]
    fn a_containers_counter_state_lives_and_goes_with_its_entry_issue_7() {
        // One slot a container, no key beside the identity that holds the id.
        assert_eq!(std::mem::size_of::<Entry>(), 88);
        let mut r = Registry::default();
        // Ids that differ in their first character: a short id each.
        let id = |i: u32| format!("{i}{:063}", 0);
        for i in 0..4 {
            let mut c = identity("web");
            c.id = id(i).into();
            r.upsert(c, i64::from(i) * 1_000);
            if let Some(p) = r.counters_mut(&id(i)) {
                *p = PrevStats::at(i64::from(i) * 1_000);
            }
        }
        assert!(r.counters_mut("unknown").is_none());
        assert_eq!(r.counters().count(), 4);
        // Container 1 is heard of again (an event), but its counters are old.
        r.get(&id(1), 5_000);
        // Counters older than 1.5 s go, but no identity: every container was seen at 0
        // or since. Then the containers not seen since 1.5 s go too, and 2 are kept.
        assert_eq!(r.evict(1_500, 0, 4), 0);
        let recent: Vec<&str> = r.counters().map(|(id, _)| id).collect();
        assert_eq!(recent.len(), 2, "the counters of 2 and 3 are recent");
        assert!(r.contains(&id(0)), "an identity outlives its counters");
        assert_eq!(r.evict(1_500, 1_500, 2), 2);
        let kept: Vec<&str> = r.counters().map(|(id, _)| id).collect();
        assert_eq!(kept, vec![id(3).as_str()]);
        assert!(r.contains(&id(1)) && r.contains(&id(3)));
        assert!(!r.contains(&id(2)) && r.get_by_prefix(&id(2)[..12], 6_000).is_none());
        assert_eq!(r.short.len(), 2);
        // A checkpoint holds the entries, not the counters (the normaliser's part).
        let json = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["by_id"][id(3)]["last_seen_ms"], 3_000);
        let back: Registry = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.len(), 2);
        assert_eq!(back.counters().count(), 0);
    }
}
