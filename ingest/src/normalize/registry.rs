//! The container registry: what herd knows of each container's identity, fed by `start`
//! events, agent envelopes, and any event that carries the image attribute. Raw stats and
//! Falco alerts find their image and peer group here.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::model::ContainerRef;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    cref: Arc<ContainerRef>,
    last_seen_ms: i64,
}

/// Containers by full id, plus Falco's 12-character short ids. Every key is the
/// identity's own id (`Arc<str>`), not a copy. Serialised as the entries alone: the
/// short ids are derived again on restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(from = "Wire")]
pub(crate) struct Registry {
    by_id: FxHashMap<Arc<str>, Entry>,
    #[serde(skip)]
    short: FxHashMap<ShortId, Arc<str>>,
}

/// The first 12 bytes of an id, inline (no allocation a container).
type ShortId = [u8; SHORT];
const SHORT: usize = 12;

fn short_id(id: &str) -> Option<ShortId> {
    id.get(..SHORT)?.as_bytes().try_into().ok()
}

/// What a checkpoint holds (older ones also hold `short`, ignored).
#[derive(Deserialize)]
struct Wire {
    by_id: FxHashMap<String, Entry>,
}

impl From<Wire> for Registry {
    fn from(w: Wire) -> Self {
        let mut r = Registry::default();
        for e in w.by_id.into_values() {
            r.insert(e);
        }
        r
    }
}

impl Registry {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The registry's own copy of `id`, for other maps to key by.
    pub(crate) fn id(&self, id: &str) -> Option<Arc<str>> {
        self.by_id.get(id).map(|e| Arc::clone(&e.cref.id))
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub(crate) fn get(&mut self, id: &str, ts_ms: i64) -> Option<Arc<ContainerRef>> {
        let e = self.by_id.get_mut(id)?;
        e.last_seen_ms = e.last_seen_ms.max(ts_ms);
        Some(Arc::clone(&e.cref))
    }

    /// Looks a container up by a full id or a unique prefix of at least 12 characters.
    pub(crate) fn get_by_prefix(&mut self, id: &str, ts_ms: i64) -> Option<Arc<ContainerRef>> {
        if let Some(c) = self.get(id, ts_ms) {
            return Some(c);
        }
        let full = Arc::clone(self.short.get(&short_id(id)?)?);
        full.starts_with(id)
            .then(|| self.get(&full, ts_ms))
            .flatten()
    }

    fn insert(&mut self, e: Entry) {
        let id = Arc::clone(&e.cref.id);
        if let Some(short) = short_id(&id) {
            self.short.insert(short, Arc::clone(&id));
        }
        self.by_id.insert(id, e);
    }

    /// Registers or refreshes a container, returning the shared reference. An identical
    /// identity keeps its existing `Arc`, so steady-state samples allocate nothing here.
    pub(crate) fn upsert(&mut self, c: ContainerRef, ts_ms: i64) -> Arc<ContainerRef> {
        if let Some(e) = self.by_id.get_mut(&*c.id) {
            e.last_seen_ms = e.last_seen_ms.max(ts_ms);
            if *e.cref != c {
                // The same id: keep its one allocation (the map's key).
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
        });
        cref
    }

    /// [`Self::upsert`] of an identity the decoder already shares (an agent envelope's).
    /// An equal identity is adopted by pointer, so the next sample's is the same `Arc`
    /// and costs no comparison.
    pub(crate) fn upsert_shared(&mut self, c: Arc<ContainerRef>, ts_ms: i64) -> Arc<ContainerRef> {
        if let Some(e) = self.by_id.get_mut(&*c.id) {
            e.last_seen_ms = e.last_seen_ms.max(ts_ms);
            if Arc::ptr_eq(&e.cref, &c) {
                return c;
            }
            if Arc::ptr_eq(&e.cref.id, &c.id) {
                e.cref = Arc::clone(&c);
                return c;
            }
            // Another allocation of the id (the decoder's cache was emptied, or a
            // restore): re-key by the adopted identity's id, so it is held once.
            let last_seen_ms = e.last_seen_ms;
            self.by_id.remove(&*c.id);
            self.insert(Entry {
                cref: Arc::clone(&c),
                last_seen_ms,
            });
            return c;
        }
        // A new container: the decoder's identity itself, not a copy.
        self.insert(Entry {
            cref: Arc::clone(&c),
            last_seen_ms: ts_ms,
        });
        c
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
        let known = self.by_id.get(id).map(|e| Arc::clone(&e.cref));
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

    /// Forgets containers not seen since `before_ms`, and the oldest ones beyond `max`.
    pub(crate) fn evict(&mut self, before_ms: i64, max: usize) -> usize {
        let n0 = self.by_id.len();
        self.by_id.retain(|_, e| e.last_seen_ms >= before_ms);
        if self.by_id.len() > max {
            let mut seen: Vec<i64> = self.by_id.values().map(|e| e.last_seen_ms).collect();
            let cut = seen.len() - max;
            seen.select_nth_unstable(cut);
            let threshold = seen[cut];
            self.by_id.retain(|_, e| e.last_seen_ms >= threshold);
        }
        let by_id = &self.by_id;
        self.short.retain(|_, full| by_id.contains_key(&**full));
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

    /// However a known container's identity is replaced, the registry's key is the id
    /// its current identity holds: one allocation of the id, not one per version.
    #[test]
    fn a_replaced_identity_keeps_one_allocation_of_its_id_issue_7() {
        let keyed_by_own_id = |r: &Registry| {
            r.by_id.iter().all(|(k, e)| Arc::ptr_eq(k, &e.cref.id))
                && r.short.values().all(|v| r.by_id.contains_key(&**v))
        };
        let mut r = Registry::default();
        r.upsert(identity("web-1"), 1);
        r.upsert(identity("web-renamed"), 2);
        assert!(keyed_by_own_id(&r));
        let shared = Arc::new(identity("web-again"));
        let got = r.upsert_shared(Arc::clone(&shared), 3);
        assert!(Arc::ptr_eq(&got, &shared));
        assert!(keyed_by_own_id(&r));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.get_by_prefix("8f2c1a2b3c4d", 4).map(|c| c.name.clone()),
            Some(Some("web-again".into()))
        );
    }
}
