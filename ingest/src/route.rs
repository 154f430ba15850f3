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

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::decode::Record;
use crate::model::repository_of;

/// Learns which repository a container belongs to from the records that say it, so that
/// records that do not (raw Docker stats) can be routed too. Bounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Router {
    /// Container id (full, and its 12-character short form) → repository.
    by_id: FxHashMap<String, String>,
    max_containers: usize,
}

/// Falco and `docker ps` print ids shortened to this many characters.
const SHORT_ID: usize = 12;

impl Router {
    /// A router remembering at most `max_containers` containers (beyond that it forgets
    /// them all and learns again: the map only saves a lookup, it is not state).
    pub fn new(max_containers: usize) -> Self {
        Self {
            by_id: FxHashMap::default(),
            max_containers: max_containers.max(1),
        }
    }

    /// The routing key of a record, or `None` when nothing says where it belongs (it
    /// is then processed where it landed). Borrowed from the record or the router: a
    /// record that arrived under its key costs no allocation here.
    pub fn route<'a>(&'a mut self, rec: &'a Record) -> Option<&'a str> {
        let (id, image) = match rec {
            Record::Native(o) => (o.container.id.as_str(), Some(o.container.image.as_str())),
            Record::Stats(s) => (
                s.id.as_str(),
                s.container.as_ref().map(|c| c.image.as_str()),
            ),
            Record::DockerEvent(e) => (e.id.as_str(), e.image.as_deref()),
            Record::Falco(f) => (f.container_id.as_str(), f.image.as_deref()),
            Record::Prom(p) => (p.container_id.as_str(), p.image.as_deref()),
            Record::Filtered { .. } => return None,
        };
        match image.filter(|i| !i.is_empty()) {
            Some(image) => {
                let repo = repository_of(image);
                if !repo.is_empty() && self.by_id.get(id).is_none_or(|r| r != repo) {
                    self.learn(id, repo);
                }
                (!repo.is_empty()).then_some(repo)
            }
            None => self.by_id.get(id).map(String::as_str),
        }
    }

    fn learn(&mut self, id: &str, repo: &str) {
        if self.by_id.len() + 2 > self.max_containers.saturating_mul(2) {
            self.by_id.clear();
        }
        self.by_id.insert(id.to_owned(), repo.to_owned());
        if id.len() > SHORT_ID
            && let Some(short) = id.get(..SHORT_ID)
        {
            self.by_id.insert(short.to_owned(), repo.to_owned());
        }
    }

    /// Containers remembered (full and short ids count once each).
    pub fn len(&self) -> usize {
        self.by_id.len()
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
