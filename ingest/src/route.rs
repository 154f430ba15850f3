//! Routing keys: which worker owns a record.
//!
//! Everything about one peer group must be processed by one worker, so input topics are
//! keyed, and records that arrive keyed otherwise are re-keyed through a repartition
//! topic (as Kafka Streams does). The routing key is the image **repository** (the image
//! reference without tag or digest), not the full group key: a new digest of a
//! repository (a rollout) must land on the worker that holds the previous digest's
//! baseline, so that it can inherit it. Every peer group of a repository is therefore
//! owned by the same worker.
//!
//! Pure: no Kafka here. The stream service asks [`Router::route`] for a record's key and
//! compares it with the key the record arrived with.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::decode::Record;
use crate::model::repository_of;

/// Learns which repository a container belongs to from the records that say it, so that
/// records that do not (raw Docker stats) can be routed too. Bounded.
///
/// A record's own id is kept where it is shared (`Arc<str>`: agent envelopes and native
/// lines), short ids inline, and each repository once: a container costs two table
/// slots here, no string of its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Router {
    /// Container id → repository.
    by_id: FxHashMap<Arc<str>, Arc<str>>,
    /// The first 12 bytes of each id longer than that → repository.
    short: FxHashMap<[u8; SHORT_ID], Arc<str>>,
    /// Every repository once.
    repos: FxHashSet<Arc<str>>,
    max_containers: usize,
}

/// Falco and `docker ps` print ids shortened to this many characters.
const SHORT_ID: usize = 12;

fn short_id(id: &str) -> Option<[u8; SHORT_ID]> {
    id.get(..SHORT_ID)?.as_bytes().try_into().ok()
}

/// The checkpoint form: id → repository, short ids included (as earlier versions wrote
/// it, so that either reads the other's).
#[derive(Serialize, Deserialize)]
struct Wire {
    by_id: FxHashMap<String, String>,
    max_containers: usize,
}

impl Serialize for Router {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Entries<'a>(&'a Router);
        impl Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.by_id.iter().map(|(k, v)| (&**k, &**v)))
            }
        }
        let mut st = s.serialize_struct("Router", 2)?;
        st.serialize_field("by_id", &Entries(self))?;
        st.serialize_field("max_containers", &self.max_containers)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Router {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let mut r = Router::new(w.max_containers);
        for (id, repo) in w.by_id {
            // An earlier version's short-id entries come back as ids of their own.
            r.learn(&id, None, &repo);
        }
        Ok(r)
    }
}

impl Router {
    /// A router remembering at most `max_containers` containers (beyond that it forgets
    /// them all and learns again: the map only saves a lookup, it is not state).
    pub fn new(max_containers: usize) -> Self {
        Self {
            by_id: FxHashMap::default(),
            short: FxHashMap::default(),
            repos: FxHashSet::default(),
            max_containers: max_containers.max(1),
        }
    }

    /// The routing key of a record, or `None` when nothing says where it belongs (it
    /// is then processed where it landed). Borrowed from the record or the router: a
    /// record that arrived under its key costs no allocation here.
    pub fn route<'a>(&'a mut self, rec: &'a Record) -> Option<&'a str> {
        let (id, shared, image) = match rec {
            Record::Native(o) => (
                &*o.container.id,
                Some(&o.container.id),
                Some(&*o.container.image),
            ),
            Record::Stats(s) => (&**s.id(), Some(s.id()), s.container().map(|c| &*c.image)),
            Record::DockerEvent(e) => (e.id.as_str(), None, e.image.as_deref()),
            Record::Falco(f) => (f.container_id.as_str(), None, f.image.as_deref()),
            Record::Prom(p) => (p.container_id.as_str(), None, p.image.as_deref()),
            Record::Filtered { .. } => return None,
        };
        match image.filter(|i| !i.is_empty()) {
            Some(image) => {
                let repo = repository_of(image);
                if !repo.is_empty() && self.lookup(id).is_none_or(|r| r != repo) {
                    self.learn(id, shared, repo);
                }
                (!repo.is_empty()).then_some(repo)
            }
            None => self.lookup(id),
        }
    }

    /// The repository of a full id, or of a 12-character short one.
    fn lookup(&self, id: &str) -> Option<&str> {
        let repo = match self.by_id.get(id) {
            Some(r) => r,
            None if id.len() == SHORT_ID => self.short.get(&short_id(id)?)?,
            None => return None,
        };
        Some(repo)
    }

    fn learn(&mut self, id: &str, shared: Option<&Arc<str>>, repo: &str) {
        if self.by_id.len() >= self.max_containers && !self.by_id.contains_key(id) {
            self.by_id.clear();
            self.short.clear();
            self.repos.clear();
        }
        let repo = match self.repos.get(repo) {
            Some(r) => Arc::clone(r),
            None => {
                let r: Arc<str> = repo.into();
                self.repos.insert(Arc::clone(&r));
                r
            }
        };
        if id.len() > SHORT_ID
            && let Some(short) = short_id(id)
        {
            self.short.insert(short, Arc::clone(&repo));
        }
        let id = shared.map_or_else(|| id.into(), Arc::clone);
        self.by_id.insert(id, repo);
    }

    /// Containers remembered (full and short ids count once each).
    pub fn len(&self) -> usize {
        self.by_id.len() + self.short.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, Limits};

    fn rec(line: &str) -> Record {
        Decoder::new(Limits::default())
            .decode(line.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const ID: &str = "8f2c0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";

    #[test]
    fn native_and_events_route_by_repository_not_tag_or_digest() {
        let mut r = Router::new(10);
        let native = format!(
            r#"{{"ts":1795428000000,"container_id":"{ID}","image":"reg:5000/shop/web:1.4","image_digest":"sha256:aa","metrics":{{"cpu_cores":1}}}}"#
        );
        assert_eq!(r.route(&rec(&native)), Some("reg:5000/shop/web"));
        let ev = format!(
            r#"{{"status":"start","id":"{ID}","from":"reg:5000/shop/web:1.5","Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"image":"reg:5000/shop/web:1.5","name":"web-1"}}}},"time":1795428000,"timeNano":1795428000000000000}}"#
        );
        assert_eq!(r.route(&rec(&ev)), Some("reg:5000/shop/web"));
    }

    #[test]
    fn raw_stats_route_through_what_was_learnt_about_their_container() {
        let mut r = Router::new(10);
        let raw = format!(
            r#"{{"id":"{ID}","name":"/web-1","read":"2026-11-23T10:00:00Z","cpu_stats":{{"cpu_usage":{{"total_usage":1}},"system_cpu_usage":1,"online_cpus":1}},"precpu_stats":{{"cpu_usage":{{"total_usage":0}},"system_cpu_usage":0}},"memory_stats":{{"usage":1}}}}"#
        );
        assert_eq!(r.route(&rec(&raw)), None, "unknown container: no route");
        let ev = format!(
            r#"{{"status":"start","id":"{ID}","from":"shop/api:2","Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"image":"shop/api:2"}}}},"time":1795428000,"timeNano":1795428000000000000}}"#
        );
        r.route(&rec(&ev));
        assert_eq!(r.route(&rec(&raw)), Some("shop/api"));
    }

    #[test]
    fn a_checkpointed_router_routes_as_before_and_reads_the_earlier_form() {
        let mut r = Router::new(10);
        let ev = format!(
            r#"{{"status":"start","id":"{ID}","from":"shop/api:2","Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"image":"shop/api:2"}}}},"time":1795428000,"timeNano":1795428000000000000}}"#
        );
        r.route(&rec(&ev));
        let json = serde_json::to_string(&r).unwrap_or_default();
        let mut back: Router = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
        assert_eq!(back.lookup(ID), Some("shop/api"));
        assert_eq!(back.lookup(&ID[..12]), Some("shop/api"));
        // The earlier form listed short ids as entries of their own.
        let old = format!(
            r#"{{"by_id":{{"{ID}":"shop/api","{}":"shop/api"}},"max_containers":10}}"#,
            &ID[..12]
        );
        let old: Router = serde_json::from_str(&old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.lookup(&ID[..12]), Some("shop/api"));
        assert_eq!(old.lookup(ID), Some("shop/api"));
        let falco = rec(&format!(
            r#"{{"output":"x","priority":"Warning","rule":"r","time":"2026-11-23T10:00:00Z","output_fields":{{"container.id":"{}"}}}}"#,
            &ID[..12]
        ));
        assert_eq!(back.route(&falco), Some("shop/api"));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut r = Router::new(3);
        for i in 0..100 {
            let line = format!(
                r#"{{"ts":1795428000000,"container_id":"{i:064x}","image":"a/{i}:1","metrics":{{"x":1}}}}"#
            );
            r.route(&rec(&line));
            assert!(r.len() <= 6);
        }
    }
}
