//! [`Engine`]: observations in event-time order → alerts. Shared by `herd replay`, the
//! stream service and tests; deterministic for a given input and configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use herd_baseline::numeric::slog;
use herd_baseline::verdicts::ItemRuling;
use herd_baseline::{GroupBaseline, ItemKind, Phase};
use herd_ingest::{ContainerRef, Event, MetricName, Observation, Payload};
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Detector, FeatureEvidence, NovelEvidence, Severity};
use crate::alert::{PeerEvidence, StructureEvidence};
use crate::calibrate;
use crate::group::{GroupState, Id, InHand, Latest, LatestSlot, Pending, Replica, median_in_place};
use crate::incident::{Finding, Incidents, numeric_severity};
use crate::novelty::{Verdict, attack_ids, falco_rank, items_of, judge};
use crate::{DetectConfig, Error, Result};

/// Snapshot format of the whole engine.
const FORMAT: u32 = 1;

/// Steps further apart than this are not steps: the series had a gap.
const MAX_STEP_GAP_MS: i64 = 30 * 60_000;

/// Weight of the newest step in a replica's roughness: a moving average over about 24
/// samples (four minutes at the agent's interval, two hours of five-minute data; chosen
/// over 6 and 12 on the even-numbered NAB series).
const ROUGHNESS_ALPHA: f64 = 1.0 / 24.0;

/// The peers' median is outside the history's central 10–90 % band: the fleet itself
/// moved, and only a deviation from the peers counts.
const FLEET_SHIFT_SURPRISE: f64 = 1.0;
/// The narrowest tail of the archive's daily profile, in slog terms (2 % of the level:
/// the resolution of a peer comparison, too).
const SEASONAL_FLOOR: f64 = 0.02;

/// Housekeeping (forgetting replicas and groups, closing quiet incidents) whenever the
/// engine's event time enters another period of this length. A function of the state's
/// time, not of a count of observations: a quiet incident closes within this long of
/// its quiet time however few samples a stream brings, and a task restored from a
/// checkpoint keeps house at the same observations as the one that kept the partition
/// (a count started again at the restore, and closed incidents at other times).
const HOUSEKEEPING_MS: i64 = 10_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    /// By key (see [`Groups`]).
    groups: Groups,
    /// Latest group key per image repository, to recognise rollouts.
    repos: BTreeMap<String, String>,
    incidents: Incidents,
    now_ms: i64,
}

/// The tracked groups by key. A hash table, since every observation looks its group
/// up (a search of a sorted map compared ~10 keys of ~70 bytes), whose entries hold
/// their key: an observation brings its group key interned and hashed (see
/// [`GroupKeys`]), so finding its group costs no hashing of the key, and no comparison
/// of its bytes when the entry holds the same allocation. Whatever depends on an order
/// (the snapshot, the keys handed out, evictions) takes the keys' order explicitly: it
/// is serialised as a map in key order, as a sorted map is, so that a snapshot's bytes
/// depend only on the state.
#[derive(Debug, Clone, Default)]
struct Groups(HashTable<(Arc<str>, GroupState)>);

/// A group key's hash in [`Groups`].
fn key_hash(key: &str) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl Groups {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, key: &str) -> Option<&GroupState> {
        self.0
            .find(key_hash(key), |(k, _)| **k == *key)
            .map(|(_, g)| g)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut GroupState> {
        self.find_mut(key_hash(key), key)
    }

    /// The group of `key`, whose hash is `hash` ([`key_hash`]).
    fn find_mut(&mut self, hash: u64, key: &str) -> Option<&mut GroupState> {
        self.0
            .find_mut(hash, |(k, _)| std::ptr::eq(&**k, key) || **k == *key)
            .map(|(_, g)| g)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Tracks `group` under `key`, replacing any group of that key.
    fn insert(&mut self, key: Arc<str>, group: GroupState) {
        let hash = key_hash(&key);
        match self.0.entry(hash, |(k, _)| *k == key, |(k, _)| key_hash(k)) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = group,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key, group));
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(e) = self.0.find_entry(key_hash(key), |(k, _)| **k == *key) {
            e.remove();
        }
    }

    /// The key held for `key`'s group (its allocation, for [`GroupKeys`] to share).
    fn key_of(&self, key: &str) -> Option<&Arc<str>> {
        self.0
            .find(key_hash(key), |(k, _)| **k == *key)
            .map(|(k, _)| k)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &GroupState)> {
        self.0.iter().map(|(k, g)| (&**k, g))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut GroupState)> {
        self.0.iter_mut().map(|(k, g)| (&**k, g))
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    fn values(&self) -> impl Iterator<Item = &GroupState> {
        self.0.iter().map(|(_, g)| g)
    }

    fn retain(&mut self, mut keep: impl FnMut(&GroupState) -> bool) {
        self.0.retain(|(_, g)| keep(g));
    }
}

impl PartialEq for Groups {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, g)| other.get(k) == Some(g))
    }
}

impl Serialize for Groups {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut entries: Vec<(&str, &GroupState)> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_map(entries)
    }
}

impl<'de> Deserialize<'de> for Groups {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let m = BTreeMap::<String, GroupState>::deserialize(d)?;
        let mut groups = Groups::default();
        for (k, g) in m {
            groups.insert(k.into(), g);
        }
        Ok(groups)
    }
}

/// Counts for metrics and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Peer groups tracked.
    pub groups: usize,
    /// Containers tracked.
    pub containers: usize,
    /// Incidents open.
    pub open_incidents: usize,
    /// Groups by baseline phase: warm-up, learning, locked.
    pub phases: [usize; 3],
}

/// The detection engine. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: DetectConfig,
    state: State,
    scratch: Vec<f64>,
    /// What the observation in hand found, kept between observations (empty between
    /// them) so that one which finds nothing, nearly all, drops no sets and vectors.
    finding: Finding,
    /// Incidents closed since the last [`Engine::take_closed`] (not state: a restored
    /// engine has reported what it closed before its snapshot).
    closed: Vec<crate::incident::Closed>,
    /// Retrained snapshots of groups not tracked yet, adopted when the group appears.
    /// Not state: the next retrain publishes them again. Bounded by `max_groups`.
    pending_retrained: BTreeMap<String, herd_baseline::retrained::Retrained>,
    /// Each container's group key, computed once per identity (not state: derived).
    keys: GroupKeys,
    /// Whether every repository of `state.repos` names a tracked group: set when
    /// housekeeping has made it so, unset in a restored engine (not state).
    repos_tidy: bool,
    /// Changes to groups so far, numbered (not state: the stream's checkpoints count
    /// on it, see [`Engine::groups_changed_since`]).
    changes: u64,
}

/// The group key of each container identity (`Arc<ContainerRef>`, by address), so that
/// an observation costs no key building and no allocation. The keys are interned: a
/// group's replicas share one string, the one [`Groups`] holds for the group when it is
/// tracked, and each entry carries the key's hash there. Entries whose identity nothing
/// else holds any more go before an identity is added once the table has grown
/// ([`prune`]). The table is keyed by the identity each entry holds (40 bytes a slot,
/// not 48 with an address of its own beside it). Each entry also carries the hash of
/// the container's id in its group's replica table, so that an observation reads
/// neither the id's bytes nor hashes them.
#[derive(Debug, Clone, Default)]
struct GroupKeys {
    by_container: HashTable<(Arc<ContainerRef>, GroupKey)>,
    interned: rustc_hash::FxHashSet<Arc<str>>,
    /// Identities the table held after its last pruning.
    pruned_len: usize,
}

/// Identities a [`GroupKeys`] may hold beyond its growth allowance before it is pruned.
const PRUNE_SLACK: usize = 64;

/// A container's group key, interned, with its hash in [`Groups`], and the hash of the
/// container's id among its group's replicas.
#[derive(Debug, Clone)]
struct GroupKey {
    key: Arc<str>,
    hash: u64,
    id_hash: u64,
}

/// The table's hash of an identity: its address.
fn hash_addr(c: &Arc<ContainerRef>) -> u64 {
    FxBuildHasher.hash_one(Arc::as_ptr(c) as usize)
}

impl GroupKeys {
    /// The group key of `c`, interned: the allocation `groups` holds for it when the
    /// group is tracked (so that finding it compares no bytes). Lent, not cloned: a
    /// clone would write the key's reference count twice an observation, on a line
    /// nothing else reads.
    fn key(
        &mut self,
        by: &herd_ingest::GroupBy,
        c: &Arc<ContainerRef>,
        groups: &Groups,
    ) -> &GroupKey {
        let hash = hash_addr(c);
        let absent = match self
            .by_container
            .find_entry(hash, |(held, _)| Arc::ptr_eq(held, c))
        {
            Ok(e) => return &e.into_mut().1,
            Err(absent) => absent,
        };
        let table = absent.into_table();
        if table.len() >= self.pruned_len + self.pruned_len / 4 + PRUNE_SLACK {
            prune(table, &mut self.interned, &mut self.pruned_len);
        }
        let key = by.key(c);
        let key = match self.interned.get(key.as_str()) {
            Some(k) => Arc::clone(k),
            None => {
                let k: Arc<str> = groups.key_of(&key).map_or_else(|| key.into(), Arc::clone);
                self.interned.insert(Arc::clone(&k));
                k
            }
        };
        let key = GroupKey {
            hash: key_hash(&key),
            key,
            id_hash: Id::new(&c.id).hash(),
        };
        let entry = table.insert_unique(hash, (Arc::clone(c), key), |(held, _)| hash_addr(held));
        &entry.into_mut().1
    }
}

/// Forgets the identities only a [`GroupKeys`] table still holds, and the keys neither
/// an identity nor a tracked group holds; asked before an identity is added, once the
/// table has grown by a quarter since it was last pruned. Pruning visits every identity
/// (a cache miss each): at every housekeeping, that was about four misses an
/// observation in the scoring benchmark; this way each identity added pays for a few
/// visits, and the table holds at most a quarter more than the identities in use (and
/// a few: [`PRUNE_SLACK`]). The table is a cache, not state: when it is pruned changes
/// no score, and its bound holds whether housekeeping comes or not (event time can
/// stand still: a record dated years ahead holds it there).
#[cold]
#[inline(never)]
fn prune(
    by_container: &mut HashTable<(Arc<ContainerRef>, GroupKey)>,
    interned: &mut rustc_hash::FxHashSet<Arc<str>>,
    pruned_len: &mut usize,
) {
    by_container.retain(|(c, _)| Arc::strong_count(c) > 1);
    interned.retain(|k| Arc::strong_count(k) > 1);
    *pruned_len = by_container.len();
}

#[derive(Serialize)]
struct SnapOut<'a> {
    format: u32,
    state: &'a State,
}

/// One group's share of the engine: what moves between workers with the group.
#[derive(Serialize)]
struct GroupOut<'a> {
    format: u32,
    key: &'a str,
    /// The repository whose newest digest this group is, for rollout inheritance.
    latest_of: Option<&'a str>,
    now_ms: i64,
    group: &'a GroupState,
    incidents: BTreeMap<String, crate::incident::Open>,
}

#[derive(Deserialize)]
struct GroupIn {
    format: u32,
    key: String,
    latest_of: Option<String>,
    now_ms: i64,
    group: GroupState,
    incidents: BTreeMap<String, crate::incident::Open>,
}

#[derive(Deserialize)]
struct SnapIn<'a> {
    format: u32,
    #[serde(borrow)]
    state: &'a serde_json::value::RawValue,
}

impl Engine {
    /// A new engine; fails on an invalid configuration.
    pub fn new(cfg: DetectConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            state: State::default(),
            scratch: Vec::new(),
            finding: Finding::default(),
            closed: Vec::new(),
            pending_retrained: BTreeMap::new(),
            keys: GroupKeys::default(),
            repos_tidy: false,
            changes: 0,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Counts of what is tracked.
    pub fn stats(&self) -> EngineStats {
        let now = self.state.now_ms;
        EngineStats {
            groups: self.state.groups.len(),
            containers: self.state.groups.values().map(|g| g.replicas.len()).sum(),
            open_incidents: self.state.incidents.len(),
            phases: self.state.groups.values().fold([0; 3], |mut n, g| {
                n[match g.baseline.phase(now, &self.cfg.baseline) {
                    Phase::Warmup => 0,
                    Phase::Learning => 1,
                    Phase::Locked => 2,
                }] += 1;
                n
            }),
        }
    }

    /// The baseline of a group, if tracked.
    pub fn baseline(&self, group: &str) -> Option<&GroupBaseline> {
        self.state.groups.get(group).map(|g| &g.baseline)
    }

    /// A retrained snapshot from `herd retrain`: its group adopts it
    /// ([`GroupBaseline::adopt_retrained`] has the merge rules); a group not tracked
    /// yet adopts it when it appears. Returns `None` when it is held for later.
    pub fn adopt_retrained(
        &mut self,
        r: herd_baseline::retrained::Retrained,
    ) -> Option<herd_baseline::retrained::Adoption> {
        if let Some(g) = self.state.groups.get_mut(&r.group) {
            // Seen now, for checkpoints: the next one carries the adopted snapshot.
            g.last_seen_ms = g.last_seen_ms.max(self.state.now_ms);
            g.mark_changed(&mut self.changes);
            return Some(g.baseline.adopt_retrained(r));
        }
        if self.pending_retrained.len() >= self.cfg.max_groups
            && !self.pending_retrained.contains_key(&r.group)
            && let Some(oldest) = self
                .pending_retrained
                .iter()
                .min_by_key(|(_, p)| p.until_ms)
                .map(|(k, _)| k.clone())
        {
            self.pending_retrained.remove(&oldest);
        }
        match self.pending_retrained.get(&r.group) {
            Some(held) if held.until_ms >= r.until_ms => {}
            _ => {
                self.pending_retrained.insert(r.group.clone(), r);
            }
        }
        None
    }

    /// An analyst's verdict on an incident (`herd feedback`): the incident's group, and
    /// its repository's newest group when a rollout has replaced it since, hold it from
    /// now on ([`herd_baseline::Verdicts`] has what each verdict does) and carry it in
    /// their next checkpoint. Applying the same record again changes nothing.
    pub fn apply_feedback(&mut self, fb: &crate::Feedback) -> Result<crate::FeedbackOutcome> {
        use crate::FeedbackOutcome;
        use herd_baseline::verdicts::Applied;
        let teaching = fb.teaching()?;
        let mut keys = vec![fb.group.clone()];
        if let Some(newest) = self.state.repos.get(fb.routing_key())
            && *newest != fb.group
        {
            keys.push(newest.clone());
        }
        let (mut applied, mut held) = (0, 0);
        for key in keys {
            let Some(g) = self.state.groups.get_mut(&key) else {
                continue;
            };
            held += 1;
            if g.baseline.verdicts.apply(teaching.clone()) == Applied::Applied {
                applied += 1;
                g.mark_changed(&mut self.changes);
            }
        }
        Ok(match (held, applied) {
            (0, _) => FeedbackOutcome::UnknownGroup,
            (_, 0) => FeedbackOutcome::Repeated,
            (_, n) => FeedbackOutcome::Applied(n),
        })
    }

    /// The incidents closed since the last call, oldest first. Bounded by what one
    /// housekeeping pass can close; callers take them after every observation.
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, crate::incident::Closed> {
        self.closed.drain(..)
    }

    /// Whether the container has an open incident (evidence capture on `die` uses it).
    pub fn has_open_incident(&self, container_id: &str) -> bool {
        self.state.incidents.is_open(container_id)
    }

    /// Serialises the whole engine state (baselines, replicas, incidents).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&SnapOut {
            format: FORMAT,
            state: &self.state,
        })?)
    }

    /// Restores an engine from [`Engine::snapshot`] output.
    pub fn restore(cfg: DetectConfig, bytes: &[u8]) -> Result<Self> {
        cfg.validate()?;
        let s: SnapIn<'_> = serde_json::from_slice(bytes)?;
        if s.format != FORMAT {
            return Err(Error::UnsupportedFormat(s.format));
        }
        Ok(Self {
            cfg,
            state: serde_json::from_str(s.state.get())?,
            scratch: Vec::new(),
            finding: Finding::default(),
            closed: Vec::new(),
            pending_retrained: BTreeMap::new(),
            keys: GroupKeys::default(),
            repos_tidy: false,
            changes: 0,
        })
    }

    /// The keys of the tracked groups, in order.
    pub fn group_keys(&self) -> impl Iterator<Item = &str> {
        let mut keys: Vec<&str> = self.state.groups.keys().collect();
        keys.sort_unstable();
        keys.into_iter()
    }

    /// A mark of the changes made so far, for [`Engine::groups_changed_since`].
    pub fn change_mark(&self) -> u64 {
        self.changes
    }

    /// Keys of the groups whose state (or share of the open incidents) changed after
    /// `mark` ([`Engine::change_mark`]) was taken: the ones a periodic checkpoint has
    /// to write again. Counted in changes, not event time: an observation older than
    /// the newest one seen (a late record) changes its group too.
    /// In key order.
    pub fn groups_changed_since(&self, mark: u64) -> impl Iterator<Item = &str> {
        let mut keys: Vec<&str> = self
            .state
            .groups
            .iter()
            .filter(move |(_, g)| g.changed > mark)
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable();
        keys.into_iter()
    }

    /// Numbers a change of `key`'s group.
    fn changed(&mut self, key: &str) {
        if let Some(g) = self.state.groups.get_mut(key) {
            g.mark_changed(&mut self.changes);
        }
    }

    /// Marks the groups of the incidents closed since `from` (an index of `closed`):
    /// their share of the incidents changed.
    fn closed_changed(&mut self, from: usize) {
        let groups: BTreeSet<String> = self
            .closed
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(|c| c.group.clone())
            .collect();
        for g in groups {
            self.changed(&g);
        }
    }

    /// Live replicas of a group (not dead, seen within the replica TTL) at the engine's
    /// latest event time, by container id. The
    /// response policy's quorum guard counts on it.
    pub fn live_replicas(&self, group: &str) -> Vec<&str> {
        let now = self.state.now_ms;
        let ttl = self.cfg.replica_ttl_ms;
        self.state.groups.get(group).map_or_else(Vec::new, |g| {
            g.replicas
                .values()
                .filter(|r| r.alive && now - r.last_seen_ms <= ttl)
                .map(|r| &*r.cref.id)
                .collect()
        })
    }

    /// Latest event time the engine has seen.
    pub fn now_ms(&self) -> i64 {
        self.state.now_ms
    }

    /// Serialises one group (baseline, replicas, open incidents) for hand-off to another
    /// worker; `None` when the group is not tracked.
    pub fn export_group(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(group) = self.state.groups.get(key) else {
            return Ok(None);
        };
        let latest_of = self
            .state
            .repos
            .iter()
            .find(|(_, k)| k.as_str() == key)
            .map(|(r, _)| r.as_str());
        Ok(Some(serde_json::to_vec(&GroupOut {
            format: FORMAT,
            key,
            latest_of,
            now_ms: self.state.now_ms,
            group,
            incidents: self.state.incidents.of_group(key),
        })?))
    }

    /// Adopts a group exported by [`Engine::export_group`] (on this or another worker),
    /// replacing any state of the same group; returns its key.
    pub fn import_group(&mut self, bytes: &[u8]) -> Result<String> {
        let g: GroupIn = serde_json::from_slice(bytes)?;
        if g.format != FORMAT {
            return Err(Error::UnsupportedFormat(g.format));
        }
        self.state.now_ms = self.state.now_ms.max(g.now_ms);
        if let Some(repo) = g.latest_of {
            // The newer of two digests of one repository stays the rollout parent.
            let newer = match self
                .state
                .repos
                .get(&repo)
                .and_then(|k| self.state.groups.get(k))
            {
                Some(other) => other.baseline.created_ms <= g.group.baseline.created_ms,
                None => true,
            };
            if newer {
                self.state.repos.insert(repo, g.key.clone());
            }
        }
        self.state.incidents.remove_group(&g.key);
        self.state.incidents.adopt(g.incidents);
        self.state.groups.insert(g.key.as_str().into(), g.group);
        Ok(g.key)
    }

    /// Forgets a group (its partition moved to another worker).
    pub fn remove_group(&mut self, key: &str) {
        self.state.groups.remove(key);
        self.state.repos.retain(|_, k| k != key);
        self.state.incidents.remove_group(key);
    }

    /// Processes one observation; alerts it raises or updates are appended to `out`.
    pub fn observe(&mut self, obs: &Observation, out: &mut Vec<Alert>) {
        let now = obs.ts_ms;
        let before = self.state.now_ms;
        self.state.now_ms = before.max(now);
        let GroupKey { key, hash, id_hash } =
            self.keys
                .key(&self.cfg.group_by, &obs.container, &self.state.groups);
        let (hash, id_hash) = (*hash, *id_hash);
        let group = match self.state.groups.find_mut(hash, key) {
            Some(g) => g,
            None => {
                ensure_group(
                    &mut self.state,
                    &mut self.pending_retrained,
                    &self.cfg,
                    key,
                    &obs.container,
                    now,
                );
                let Some(g) = self.state.groups.find_mut(hash, key) else {
                    return;
                };
                g
            }
        };
        let key = &**key;
        let cfg = &self.cfg;
        // The id's hash, taken once per identity, for every lookup of its replica below.
        let rid = Id::hashed(&obs.container.id, id_hash);
        group.last_seen_ms = group.last_seen_ms.max(now);
        group.mark_changed(&mut self.changes);
        let closed_from = self.closed.len();
        if group.replicas.len() >= cfg.max_replicas_per_group && !group.replicas.contains_key(rid) {
            group.evict_oldest_replica();
        }
        let mut revived = false;
        // Looked up by `&str`: no key is allocated for a replica already known.
        let replica = group.replicas.get_or_insert_with(rid, || {
            revived = true;
            Replica::new(Arc::clone(&obs.container), now)
        });
        revived |= now - replica.last_seen_ms > cfg.replica_ttl_ms;
        replica.last_seen_ms = replica.last_seen_ms.max(now);
        // The normaliser's identity is adopted whenever it is another allocation (a
        // changed identity, or the first sample after a restore): a container's id and
        // identity are then held once, by the registry (the table's key is the id the
        // replica's identity holds).
        if !Arc::ptr_eq(&replica.cref, &obs.container) {
            replica.cref = Arc::clone(&obs.container);
        }
        if revived {
            group.liveness_changed();
        }
        let phase = group.baseline.phase(now, &cfg.baseline);
        let finding = &mut self.finding;
        finding.clear();
        // A sample's scoring says how long the replica's incident stays quiet (it has
        // the replica in hand); an event's is looked up below.
        let quiet = match &obs.payload {
            Payload::Metrics(m) => {
                score_metrics(group, rid, m, now, phase, cfg, &mut self.scratch, finding)
            }
            Payload::Event(e) => {
                score_event(group, rid, e, now, phase, cfg, finding);
                None
            }
        };
        group.baseline.updated_ms = group.baseline.updated_ms.max(now);
        let mut late = uncorroborated(group, now, cfg);
        if matches!(obs.payload, Payload::Metrics(_))
            && let Some(f) = fleet_check(group, now, phase, cfg, &mut self.scratch)
        {
            late.push(f);
        }
        // An episode ends after the longer of a fixed quiet time and a number of the
        // container's own sampling intervals.
        let quiet = quiet
            .or_else(|| group.replicas.get(rid).map(|r| r.quiet_ms(cfg)))
            .unwrap_or(cfg.incident_quiet_ms);
        let incidents = &mut self.state.incidents;
        let max_open = cfg.max_open_incidents;
        let closed = &mut self.closed;
        // Nearly every observation finds nothing: no call, no move of the finding.
        if !self.finding.is_empty()
            && let Some(a) = incidents.record(
                &obs.container,
                key,
                std::mem::take(&mut self.finding),
                now,
                quiet,
                max_open,
                closed,
            )
        {
            out.push(a);
        }
        for (c, f, q) in late {
            if let Some(a) = incidents.record(&c, key, f, now, q, max_open, closed) {
                out.push(a);
            }
        }
        // Recording can close another group's incident (the oldest, at `max_open`).
        if self.closed.len() > closed_from {
            self.closed_changed(closed_from);
        }
        if housekeeping_due(before, self.state.now_ms) {
            self.housekeeping();
        }
    }

    /// Forgets replicas and groups unseen for long and closes quiet incidents. Out of
    /// line: it comes once in ten seconds of event time
    /// (once in 10,000 observations of the scoring benchmark).
    #[cold]
    #[inline(never)]
    fn housekeeping(&mut self) {
        let now = self.state.now_ms;
        let keep_replicas = (self.cfg.replica_ttl_ms * 10).max(self.cfg.incident_quiet_ms * 2);
        // The groups that forgot replicas are numbered as changed in key order, as
        // every numbering of changes is: the same state, whatever the table's order.
        let mut evicted = Vec::new();
        for (k, g) in self.state.groups.iter_mut() {
            if g.evict_replicas(now, keep_replicas) {
                evicted.push(k.to_owned());
            }
        }
        evicted.sort_unstable();
        for k in evicted {
            self.changed(&k);
        }
        let idle = self.cfg.group_idle_ms;
        let tracked = self.state.groups.len();
        self.state.groups.retain(|g| now - g.last_seen_ms <= idle);
        // Every other removal of a group takes its repository with it: only a group
        // that went here, or a restored state, can leave one naming no group (each
        // look costs a hash of the key and a comparison of its bytes).
        if self.state.groups.len() < tracked || !self.repos_tidy {
            let groups = &self.state.groups;
            self.state.repos.retain(|_, k| groups.contains_key(k));
            self.repos_tidy = true;
        }
        let closed_from = self.closed.len();
        self.state.incidents.close_quiet(now, &mut self.closed);
        self.closed_changed(closed_from);
    }
}

/// Whether the engine's time moving from `before` to `now` entered another
/// housekeeping period ([`HOUSEKEEPING_MS`]). Most observations do not move it: they
/// cost a comparison, not the divisions.
#[inline]
fn housekeeping_due(before: i64, now: i64) -> bool {
    now > before && now.div_euclid(HOUSEKEEPING_MS) != before.div_euclid(HOUSEKEEPING_MS)
}

/// Creates the group of `key` (not tracked yet): a function of the engine's parts, so
/// that the key lent by [`GroupKeys`] stays lent.
fn ensure_group(
    state: &mut State,
    pending_retrained: &mut BTreeMap<String, herd_baseline::retrained::Retrained>,
    cfg: &DetectConfig,
    key: &Arc<str>,
    c: &ContainerRef,
    now: i64,
) {
    let repo = c.repository().to_owned();
    // A new digest of a known repository is a rollout: inherit its baseline.
    let baseline = match state
        .repos
        .get(&repo)
        .and_then(|prev| state.groups.get(prev))
    {
        Some(prev) => prev.baseline.inherit(&**key, now),
        None => GroupBaseline::new(&**key, repo.clone(), now),
    };
    if state.groups.len() >= cfg.max_groups
        && let Some(oldest) = state
            .groups
            .iter()
            .min_by_key(|(k, g)| (g.last_seen_ms, *k))
            .map(|(k, _)| k.to_owned())
    {
        state.groups.remove(&oldest);
        state.repos.retain(|_, k| *k != oldest);
    }
    let mut baseline = baseline;
    if let Some(r) = pending_retrained.remove(&**key) {
        baseline.adopt_retrained(r);
    }
    state.repos.insert(repo, key.to_string());
    state
        .groups
        .insert(Arc::clone(key), GroupState::new(baseline, now));
}

/// Every this much event time, a group with peers is checked as a whole.
const FLEET_CHECK_MS: i64 = 60_000;

/// The group as a whole against its own history: for each feature, how far the peers'
/// median moved from its usual level (in `slog` terms), less the common load factor (the
/// median move over all the group's features). A surge moves the load-driven features
/// together and leaves this near its usual value; a fleet-wide compromise moves one
/// feature that the others do not explain. Held for two checks, calibrated like every
/// other score (the group counts as one container tested per feature each check).
/// Returns the finding on a stable representative replica.
fn fleet_check(
    group: &mut GroupState,
    now: i64,
    phase: Phase,
    cfg: &DetectConfig,
    scratch: &mut Vec<f64>,
) -> Option<(Arc<ContainerRef>, Finding, i64)> {
    if now - group.fleet_checked_ms < FLEET_CHECK_MS {
        return None;
    }
    group.fleet_checked_ms = now;
    // The group's own history is trusted only once it covers a learning period (a daily
    // cycle, by default), as for a lone series; it keeps learning before that.
    let scoring = phase == Phase::Locked;
    if group.live_count(now, cfg) < cfg.min_peers {
        return None;
    }
    let n = group.baseline.feature_count();
    let mut moves: Vec<(usize, f64, PeerEvidence, f64)> = Vec::with_capacity(n);
    for slot in 0..n {
        let Some(p) = group.peer_stats(slot, now, cfg, scratch, None) else {
            continue;
        };
        let Some((_, fb)) = group.baseline.feature_at_mut(slot) else {
            continue;
        };
        if fb.values.count() < cfg.min_samples {
            continue;
        }
        let Some(usual) = fb.values.summary() else {
            continue;
        };
        let res = fb.resolution;
        moves.push((
            slot,
            slog(p.median, res) - slog(usual.q50, res),
            p,
            usual.q90,
        ));
    }
    // A common load factor needs several features to be told apart from any one.
    if moves.len() < 3 {
        return None;
    }
    scratch.clear();
    scratch.extend(moves.iter().map(|m| m.1));
    let common = median_in_place(scratch);
    let tests_per_day = moves.len() as f64 * calibrate::DAY_MS / FLEET_CHECK_MS as f64;
    let threshold = calibrate::threshold(tests_per_day, cfg.false_alerts_per_container_day);
    if group.fleet_hot.len() < n {
        group.fleet_hot.resize(n, false);
    }
    let mut finding = Finding {
        threshold,
        ..Finding::default()
    };
    let mut lead: Option<f64> = None;
    for (slot, z, p, q90) in moves {
        let dev = z - common;
        let Some((name, fb, verdicts)) = group.baseline.feature_at_mut_with_verdicts(slot) else {
            continue;
        };
        let s = if scoring && fb.fleet_dev.count() >= cfg.min_samples {
            fb.fleet_surprise(dev)
        } else {
            0.0
        };
        // The fleet moved, not one replica dragging a median: at least two thirds of
        // the live replicas must each be above the group's usual 90th percentile.
        let hot = s >= threshold && share_above(&group.replicas, slot, q90, now, cfg) >= 2.0 / 3.0;
        let held = hot && group.fleet_hot[slot];
        group.fleet_hot[slot] = hot;
        // A fleet-wide level judged malicious is never adopted; one judged benign is
        // expected.
        let w = match hot {
            true if !verdicts.is_empty() && verdicts.refuses(name, p.median) => 0.0,
            true => cfg.anomalous_learn_weight,
            false => 1.0,
        };
        if held && (verdicts.is_empty() || verdicts.allows(name, p.median).is_none()) {
            finding.add(Detector::Fleet, numeric_severity(s, threshold), s);
            finding.features.push(FeatureEvidence {
                name: name.to_owned(),
                value: p.median,
                expected: fb.expected_range().map(|(lo, hi)| [lo, hi]),
                peers: Some(p),
                step: None,
                roughness: None,
                fleet_shift: Some(dev),
                structure: None,
                surprise: (s * 100.0).round() / 100.0,
            });
            lead = Some(lead.map_or(s, |best: f64| best.max(s)));
        }
        fb.fleet_dev.insert(dev, now, w);
    }
    lead?;
    // One incident per fleet episode: the finding goes to a stable representative, the
    // live replica with the smallest id (the explanation names the whole group).
    let rep = group
        .replicas
        .values()
        .filter(|r| r.alive && now - r.last_seen_ms <= cfg.replica_ttl_ms)
        .min_by(|a, b| a.cref.id.cmp(&b.cref.id))?;
    Some((Arc::clone(&rep.cref), finding, rep.quiet_ms(cfg)))
}

/// Share of the live replicas whose latest value of `slot` is above `level`.
fn share_above(
    replicas: &crate::group::Replicas,
    slot: usize,
    level: f64,
    now: i64,
    cfg: &DetectConfig,
) -> f64 {
    let (mut live, mut above) = (0usize, 0usize);
    for r in replicas.values() {
        if !r.alive || now - r.last_seen_ms > cfg.replica_ttl_ms {
            continue;
        }
        live += 1;
        if r.latest
            .get(slot)
            .and_then(|l| l.get())
            .is_some_and(|l| l.value > level)
        {
            above += 1;
        }
    }
    if live == 0 {
        0.0
    } else {
        above as f64 / live as f64
    }
}

/// Findings for items one replica showed while the group was learning and no sibling
/// showed within the corroboration window: (container, finding, its incident quiet time).
fn uncorroborated(
    group: &mut GroupState,
    now: i64,
    cfg: &DetectConfig,
) -> Vec<(Arc<ContainerRef>, Finding, i64)> {
    // Nearly always nothing waits: no call.
    if group.pending.is_empty() {
        return Vec::new();
    }
    let due = group.due_uncorroborated(now);
    if due.is_empty() {
        return Vec::new();
    }
    let live = group.live_count(now, cfg);
    let mut out = Vec::with_capacity(due.len());
    for p in due {
        let Some(r) = group.replicas.get(Id::new(&p.container_id)) else {
            continue;
        };
        // Judged benign while it waited for a sibling.
        if matches!(
            group.baseline.verdicts.item(p.kind, &p.value),
            Some(ItemRuling::Taught(_))
        ) {
            continue;
        }
        let threshold = calibrate::threshold(r.rate.per_day(), cfg.false_alerts_per_container_day);
        let support = group
            .baseline
            .items
            .get(p.kind, &p.value)
            .map_or(0, |s| s.support_excluding(r.hash()));
        let mut f = Finding {
            threshold,
            ..Finding::default()
        };
        let det = if p.kind == ItemKind::ExecCommand {
            f.attack.insert("T1609".into());
            Detector::Exec
        } else {
            Detector::Novelty
        };
        // A sensitive path no sibling touched (credentials, binaries, the loader's
        // configuration) is an incident however early in the group's learning.
        let sev = if p.kind == ItemKind::SensitiveFile {
            Severity::High
        } else {
            Severity::Medium
        };
        f.add(det, sev, threshold + 1.5);
        f.novel.push(NovelEvidence {
            kind: p.kind.as_str().into(),
            value: p.value,
            replica_support: support,
            replicas: live,
            phase: Phase::Learning.as_str().into(),
            marked: None,
        });
        out.push((Arc::clone(&r.cref), f, r.quiet_ms(cfg)));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn score_metrics(
    group: &mut GroupState,
    id: Id<'_>,
    metrics: &[(MetricName, f64)],
    now: i64,
    phase: Phase,
    cfg: &DetectConfig,
    scratch: &mut Vec<f64>,
    finding: &mut Finding,
) -> Option<i64> {
    let live = group.live_count(now, cfg);
    let peer_mode = live >= cfg.min_peers;
    // Tests per metric: (history, peers) with peers; (history, step, roughness) alone.
    let tests_per_metric = if peer_mode { 2.0 } else { 3.0 };
    let has_structure = group
        .baseline
        .retrained
        .as_ref()
        .is_some_and(|r| r.structure.is_some());
    // The replica's latest values are taken out of its table, read and written in
    // place, and put back once: one lookup of the replica for the sample, not two for
    // each metric, and no copy. Meanwhile the peers' statistics read them as the
    // replica's (`InHand`): a slot's own statistics come before its value is written, a
    // metric named twice meets its first value, as if each were stored when written.
    let (threshold, quiet, mut latest, alive, last_seen_ms) = match group.replicas.get_mut(id) {
        Some(r) => {
            r.sampled(now);
            r.rate.record(
                metrics.len() as f64 * tests_per_metric + f64::from(u8::from(has_structure)),
                now,
            );
            (
                calibrate::threshold(r.rate.per_day(), cfg.false_alerts_per_container_day),
                r.quiet_ms(cfg),
                std::mem::take(&mut r.latest),
                r.alive,
                r.last_seen_ms,
            )
        }
        None => return None,
    };
    finding.threshold = threshold;
    // The sample as a whole against the group's retrained structure, first: a sample
    // the structure finds ordinary vouches for the features it covers.
    let structure = if has_structure {
        structure_score(group, metrics, scratch)
    } else {
        None
    };
    let vouched = |i: usize| {
        structure.is_some_and(|(sc, covered)| {
            sc.surprise < STRUCTURE_VOUCHES && i < 64 && covered & (1 << i) != 0
        })
    };
    for (i, (name, x)) in metrics.iter().enumerate() {
        let x = *x;
        if !x.is_finite() {
            continue;
        }
        let Some(slot) = group.baseline.feature_slot_hinted(name, i, &cfg.baseline) else {
            continue;
        };
        let prev = latest.get(slot).and_then(|l| l.get());
        let peers = if peer_mode {
            let in_hand = InHand {
                latest: &latest,
                alive,
                last_seen_ms,
            };
            group.peer_stats(slot, now, cfg, scratch, Some(in_hand))
        } else {
            None
        };
        // The archive's view of this hour (a retrained daily profile): the value, and
        // the peers' median, against the feature's usual scatter around its hour's level.
        let profile = group
            .baseline
            .retrained
            .as_ref()
            .and_then(|r| r.features.get(name.as_ref()));
        let seasonal = |v: f64| {
            profile.and_then(|p| {
                let res = herd_baseline::numeric::resolution_of(name);
                p.seasonal_surprise(v, now, res, SEASONAL_FLOOR)
            })
        };
        let (seasonal_x, seasonal_peers) = (seasonal(x), peers.and_then(|p| seasonal(p.median)));
        // How far the archive saw replicas sampled together differ: the peer test's
        // tail is never narrower than that (looked up only when there is a peer test).
        let replica_spread = peers
            .and(profile)
            .and_then(|p| p.replica_spread_slog(herd_baseline::numeric::resolution_of(name)));
        let seasonal_band = seasonal_x.and_then(|_| {
            profile.and_then(|p| p.band_at(now, herd_baseline::numeric::resolution_of(name)))
        });
        // Read before the feature: its resolution is kept beside the peers' statistics.
        let dev = peers.and_then(|p| group.peer_deviation(slot, x, p.median));
        let Some((fname, fb, verdicts)) = group.baseline.feature_at_mut_with_verdicts(slot) else {
            continue;
        };
        // Peers are a reference from the first hour; a lone series' own history is not
        // trusted before it covers a learning period (a daily cycle, by default).
        let scoring = match peers {
            Some(_) => phase != Phase::Warmup,
            None => phase == Phase::Locked,
        };
        let step = prev
            .filter(|l| now > l.ts_ms && now - l.ts_ms <= MAX_STEP_GAP_MS)
            .map(|l| (x - l.value).abs());
        let ready = |n: f64| scoring && n >= cfg.min_samples;
        // Each view's own surprise (0 while it is not ready).
        let values_ready = ready(fb.values.count());
        // The history view: the online history and the archive's daily profile each
        // judge the value; with both, it must surprise both (the profile explains a
        // daily peak the online history has not seen yet; the online history a change
        // learned since the retrain). With the profile alone (a group the workers have
        // just met), the profile judges from the first sample.
        let history_of = |online: Option<f64>, archive: Option<f64>| match (online, archive) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0.0,
        };
        let sb = history_of(values_ready.then(|| fb.value_surprise(x)), seasonal_x);
        let history_known = values_ready || seasonal_x.is_some();
        let sp = match dev {
            Some(d) if ready(fb.peer_dev.count()) => fb.peer_surprise(d, replica_spread),
            _ => 0.0,
        };
        let ss = match step {
            Some(d) if peers.is_none() && ready(fb.steps.count()) => fb.step_surprise(d),
            _ => 0.0,
        };
        let rough = match (prev, step) {
            (Some(l), Some(d)) if l.rough > 0.0 => l.rough + ROUGHNESS_ALPHA * (d - l.rough),
            (_, Some(d)) => d,
            _ => 0.0,
        };
        let sr = if peers.is_none() && step.is_some() && ready(fb.roughness.count()) {
            fb.roughness_surprise(rough)
        } else {
            0.0
        };
        // With peers: unlike the history while the peers are not (when the peers' median
        // is itself outside the history's 10–90 % band, the fleet moved: a surge; whether
        // it moved beyond its load is `fleet_check`'s question), or unlike the peers in a
        // way the group never is. Alone: unlike the history, unlike the usual steps, or
        // unlike the usual roughness.
        let history = match peers {
            Some(p)
                if history_known
                    && history_of(
                        values_ready.then(|| fb.value_surprise(p.median)),
                        seasonal_peers,
                    ) < FLEET_SHIFT_SURPRISE =>
            {
                sb
            }
            _ => 0.0,
        };
        let (surprise, detector) = if peers.is_some() {
            if sp >= history {
                (sp, Detector::Peer)
            } else {
                (history, Detector::Baseline)
            }
        } else if ss >= sb && ss >= sr {
            (ss, Detector::Step)
        } else if sr > sb {
            (sr, Detector::Roughness)
        } else {
            (sb, Detector::Baseline)
        };
        let hot = surprise >= threshold;
        // With peers, a deviation must hold for two consecutive samples: the first
        // replica to report a fleet-wide change is compared with peers that have not
        // reported it yet.
        let anomalous = hot && (peers.is_none() || prev.is_some_and(|l| l.hot));
        // Analysts' verdicts (`herd feedback`), consulted only for an unusual value:
        // one judged benign raises nothing; one judged malicious is never learned.
        let ruled = !verdicts.is_empty() && (hot || sb >= threshold);
        let taught = ruled && verdicts.allows(fname, x).is_some();
        let refused = ruled && verdicts.refuses(fname, x);
        // Each view learns what is ordinary for itself. A value beyond the history that
        // the peers share is a fleet-wide change, adopted slowly; one they do not share
        // is never the group's normal. A lone series adopts lasting level changes slowly.
        let slow = cfg.anomalous_learn_weight;
        let w_values = match (sb >= threshold, peers.is_some(), history >= threshold) {
            _ if refused => 0.0,
            (false, _, _) => 1.0,
            (true, true, true) => 0.0,
            (true, _, _) => slow,
        };
        let peers_object = sp >= threshold;
        // A univariate deviation in a feature the retrained structure covers, on a
        // sample whose whole combination of features the structure finds ordinary, is
        // explained (a daily peak along the load axis, a worker in its other mode): it
        // is learned as usual but raises nothing.
        if anomalous && !vouched(i) && !taught {
            finding.add(detector, numeric_severity(surprise, threshold), surprise);
            finding.features.push(FeatureEvidence {
                name: fname.to_owned(),
                value: x,
                expected: fb
                    .expected_range()
                    .filter(|_| values_ready)
                    .or(seasonal_band)
                    .map(|(lo, hi)| [lo, hi]),
                peers,
                step: (detector == Detector::Step).then_some(step).flatten(),
                roughness: (detector == Detector::Roughness)
                    .then(|| fb.roughness.summary().map(|s| [rough, s.q50]))
                    .flatten(),
                fleet_shift: None,
                structure: None,
                surprise: (surprise * 100.0).round() / 100.0,
            });
        }
        if w_values > 0.0 {
            fb.values.insert(x, now, w_values);
        }
        if let Some(d) = dev
            && !peers_object
            && !refused
        {
            fb.peer_dev.insert(d, now, 1.0);
        }
        // Steps describe how jumpy a series is: a recurring jump is its character and
        // is learned at full weight (the value view still guards the levels).
        // Step and roughness are scored only without peers, so only then learned.
        if let Some(d) = step
            && peers.is_none()
        {
            fb.steps.insert(d, now, 1.0);
            fb.roughness
                .insert(rough, now, if sr >= threshold { slow } else { 1.0 });
        }
        if latest.len() <= slot {
            // Every replica holds exactly its group's features (a vector's doubling
            // growth would leave most of a grown one unused).
            let mut grown = std::mem::take(&mut latest).into_vec();
            grown.resize(slot + 1, LatestSlot::EMPTY);
            latest = grown.into_boxed_slice();
        }
        latest[slot] = LatestSlot::new(Latest {
            value: x,
            ts_ms: now,
            hot,
            rough,
        });
    }
    if let Some(r) = group.replicas.get_mut(id) {
        r.latest = latest;
    }
    if let Some((sc, _)) = structure {
        structure_finding(group, id, metrics, sc, now, threshold, cfg, finding);
    }
    Some(quiet)
}

/// Below this surprise (the sample's whole combination of features is no rarer than
/// one in a thousand of the group's held-out history, far below any alerting threshold),
/// the retrained structure vouches for the features it covers. Tuned on seeds 3, 5 and 6
/// of the simulator (1.0 left most cold-start peer alarms of the batch workers).
const STRUCTURE_VOUCHES: f64 = 3.0;

/// The sample against the group's retrained structure, with the metrics it covers (bit
/// `i` for `metrics[i]`); `None` without a structure or when the sample lacks one of
/// its features.
fn structure_score(
    group: &GroupState,
    metrics: &[(MetricName, f64)],
    scratch: &mut Vec<f64>,
) -> Option<(herd_baseline::StructureScore, u64)> {
    let st = group.baseline.retrained.as_ref()?.structure.as_ref()?;
    let value_of = |f: &str| metrics.iter().find(|(n, _)| n == f).map(|(_, x)| *x);
    let sc = st.score(value_of, scratch)?;
    let covered = metrics
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, (n, _))| st.features.iter().any(|f| f == n))
        .fold(0u64, |m, (i, _)| m | (1 << i));
    Some((sc, covered))
}

/// A finding of the retrained structure: its combination of features fits none of the
/// group's modes nor its usual correlations. The structure comes from the archive's
/// history, so it is trusted whatever the online phase; a finding must hold for two
/// consecutive samples of the replica.
#[allow(clippy::too_many_arguments)]
fn structure_finding(
    group: &mut GroupState,
    id: Id<'_>,
    metrics: &[(MetricName, f64)],
    sc: herd_baseline::StructureScore,
    now: i64,
    threshold: f64,
    cfg: &DetectConfig,
    finding: &mut Finding,
) {
    let Some(st) = group
        .baseline
        .retrained
        .as_ref()
        .and_then(|r| r.structure.as_ref())
    else {
        return;
    };
    let value_of = |f: &str| metrics.iter().find(|(n, _)| n == f).map(|(_, x)| *x);
    // A whole group moving along its principal axes (a load surge beyond yesterday's
    // range) is not one replica unlike its siblings. An on-axis deviation is judged
    // with the fleet's common displacement taken out: the live peers' median offset
    // from the centres of their own modes
    // ([`Structure::relative_surprise`](herd_baseline::structure::Structure)). Each
    // peer is measured from its own mode, so a batch worker idling while this one is
    // busy, or a replica that always runs hotter than its siblings, moves the shift
    // only by how far it moved itself. A replica far ahead of its peers still stands
    // out; one moving with them does not, and `fleet_check` judges the group as a
    // whole. A deviation off the axes (metrics that broke their correlation) is judged
    // as it is, even when every replica shows it.
    let q = st.axes.len().min(sc.position.len());
    let beside = (sc.surprise >= threshold && sc.residual_share < 0.5)
        .then(|| fleet_shift(group, st, id.id, q, now, cfg))
        .flatten()
        .and_then(|shift| st.relative_surprise(&sc, &shift));
    let surprise = beside.map_or(sc.surprise, |rel| rel.min(sc.surprise));
    let hot = surprise >= threshold;
    let Some(r) = group.replicas.get_mut(id) else {
        return;
    };
    r.structure_latest = (sc.surprise, now);
    match r.structure_position.len() == q {
        true => r.structure_position.copy_from_slice(&sc.position[..q]),
        false => r.structure_position = sc.position[..q].into(),
    }
    r.structure_mode = u32::try_from(sc.nearest).unwrap_or(crate::group::NO_MODE);
    let held = hot && r.structure_hot;
    r.structure_hot = hot;
    if !held {
        return;
    }
    let Some(name) = st.features.get(sc.lead).cloned() else {
        return;
    };
    let evidence = StructureEvidence {
        modes: st.components.len(),
        nearest_share: st.components.get(sc.nearest).map_or(0.0, |c| c.weight),
        mode_value: st.mode_value(sc.nearest, sc.lead).unwrap_or(f64::NAN),
        off_axis: (sc.residual_share * 100.0).round() / 100.0,
        // The peers had moved when judging beside them took at least a decade of
        // surprise off (where they sit still, the two judgements agree).
        beside_peers: beside.is_some_and(|rel| rel + 1.0 <= sc.surprise),
    };
    let Some(value) = value_of(&name) else {
        return;
    };
    let expected = group
        .baseline
        .feature_slot(&name, &cfg.baseline)
        .and_then(|slot| group.baseline.feature_at_mut(slot))
        .and_then(|(_, fb)| fb.expected_range())
        .map(|(lo, hi)| [lo, hi]);
    if group.baseline.verdicts.allows(&name, value).is_some() {
        return;
    }
    finding.threshold = threshold;
    finding.add(
        Detector::Structure,
        numeric_severity(surprise, threshold),
        surprise,
    );
    finding.features.push(FeatureEvidence {
        name,
        value,
        expected,
        peers: None,
        step: None,
        roughness: None,
        fleet_shift: None,
        structure: Some(evidence),
        surprise: (surprise * 100.0).round() / 100.0,
    });
}

/// How far a replica's live peers moved along the axes of the group's retrained
/// structure: per axis, the median over the peers of each one's offset from the centre
/// of its nearest mode at its latest sample ([`Structure::displacement`]), with at
/// least `min_peers` replicas in all (this one included) and the peers' positions
/// recent. `None` otherwise (the replica is judged as it is).
///
/// [`Structure::displacement`]: herd_baseline::structure::Structure::displacement
fn fleet_shift(
    group: &GroupState,
    st: &herd_baseline::Structure,
    id: &str,
    q: usize,
    now: i64,
    cfg: &DetectConfig,
) -> Option<Vec<f64>> {
    let peers: Vec<(usize, &[f64])> = group
        .replicas
        .values()
        .filter(|r| *r.cref.id != *id && r.alive && now - r.last_seen_ms <= cfg.replica_ttl_ms)
        .filter_map(|r| {
            let (_, t) = r.structure_latest;
            let mode = r.structure_mode as usize;
            (t != crate::group::NO_SAMPLE
                && r.structure_mode != crate::group::NO_MODE
                && now - t <= cfg.peer_window_ms
                && r.structure_position.len() == q)
                .then_some((mode, &*r.structure_position))
        })
        .collect();
    if q == 0 || peers.len() + 1 < cfg.min_peers.max(2) {
        return None;
    }
    let mut column = Vec::with_capacity(peers.len());
    let mut shift = Vec::with_capacity(q);
    for k in 0..q {
        column.clear();
        column.extend(
            peers
                .iter()
                .filter_map(|(mode, p)| st.displacement(p, *mode, k)),
        );
        if column.is_empty() {
            return None;
        }
        shift.push(median_in_place(&mut column));
    }
    Some(shift)
}

fn score_event(
    group: &mut GroupState,
    id: Id<'_>,
    ev: &Event,
    now: i64,
    phase: Phase,
    cfg: &DetectConfig,
    finding: &mut Finding,
) {
    let live = group.live_count(now, cfg);
    let Some(r) = group.replicas.get_mut(id) else {
        return;
    };
    let threshold = calibrate::threshold(r.rate.per_day(), cfg.false_alerts_per_container_day);
    finding.threshold = threshold;
    let hash = r.hash();
    match ev {
        Event::Start { privileged } => {
            if r.died {
                r.restarted(now);
            }
            r.alive = true;
            r.died = false;
            if *privileged == Some(true) {
                finding.add(Detector::Privileged, Severity::High, threshold + 3.0);
                finding.events.push("started privileged".into());
                finding.attack.insert("T1611".into());
            }
        }
        Event::Restart => r.restarted(now),
        Event::Die { .. } => {
            r.alive = false;
            r.died = true;
        }
        Event::Oom => {
            finding.add(Detector::Oom, Severity::Medium, threshold + 1.5);
            finding.events.push("killed by the OOM killer".into());
        }
        _ => {}
    }
    let restarts = r.restarts_within(now, cfg.restart_window_ms);
    if matches!(ev, Event::Start { .. } | Event::Restart) && restarts >= cfg.restart_loop_count {
        finding.add(Detector::RestartLoop, Severity::Medium, threshold + 1.5);
        finding.events.push(format!(
            "restarting repeatedly ({} or more restarts within {} minutes)",
            cfg.restart_loop_count,
            cfg.restart_window_ms / 60_000
        ));
    }
    if let Event::Falco { priority, tags, .. } = ev {
        if falco_rank(priority) >= 5 {
            finding.add(Detector::Falco, Severity::High, threshold + 3.0);
        }
        // Kept only if something alerts on this event (cleared below otherwise).
        finding.attack.extend(attack_ids(tags).cloned());
    }
    for (kind, value) in items_of(ev) {
        let prior = group
            .baseline
            .items
            .observe(kind, &value, hash, now, cfg.baseline.max_items);
        // An analyst's verdict on the item overrides what the catalog knows of it: one
        // judged benign is known, one judged malicious is raised on every replica.
        let ruling = match group.baseline.verdicts.item(kind, &value) {
            Some(ItemRuling::Taught(_)) => continue,
            Some(ItemRuling::Marked(incident)) => Some(incident.to_owned()),
            None => None,
        };
        let verdict = match ruling {
            Some(_) => Verdict::Novel,
            None => judge(kind, &prior, phase, live, cfg.min_peers),
        };
        let (det, sev, score) = match verdict {
            Verdict::Quiet => continue,
            Verdict::Corroborate => {
                group.add_pending(Pending {
                    container_id: id.id.to_owned(),
                    kind,
                    value,
                    deadline_ms: now + cfg.corroboration_ms,
                });
                continue;
            }
            Verdict::Novel => (Detector::Novelty, Severity::High, threshold + 3.0),
            Verdict::LoneExec => (Detector::Exec, Severity::Medium, threshold + 1.5),
        };
        let det = if kind == ItemKind::ExecCommand {
            finding.attack.insert("T1609".into());
            Detector::Exec
        } else {
            det
        };
        let sev = match ev {
            Event::Falco { priority, .. } if falco_rank(priority) >= 4 => sev.max(Severity::High),
            _ => sev,
        };
        finding.add(det, sev, score);
        finding.novel.push(NovelEvidence {
            kind: kind.as_str().into(),
            value,
            replica_support: prior
                .stats
                .as_ref()
                .map_or(0, |s| s.support_excluding(hash)),
            replicas: live,
            phase: phase.as_str().into(),
            marked: ruling,
        });
    }
    if matches!(ev, Event::Start { .. } | Event::Die { .. }) {
        group.liveness_changed();
    }
    if finding.is_empty() {
        finding.attack.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_ingest::Labels;

    fn container(i: u32) -> Arc<ContainerRef> {
        Arc::new(ContainerRef {
            id: format!("{i:064x}").into(),
            name: Some(format!("web-{i}").into()),
            image: "shop/web:1".into(),
            image_digest: Some("sha256:aa".into()),
            labels: Labels::new(),
            host: None,
        })
    }

    fn sample(c: &Arc<ContainerRef>, ts_ms: i64) -> Observation {
        Observation {
            ts_ms,
            container: Arc::clone(c),
            payload: Payload::Metrics(vec![("cpu_cores".into(), 0.5)]),
        }
    }

    /// The groups' table finds a group by its key's text whatever allocation holds it,
    /// replaces a group inserted again under its key, and compares and serialises by
    /// key whatever order the groups were inserted in.
    #[test]
    fn the_groups_table_is_a_map_by_key() {
        let g = |ms: i64| GroupState::new(GroupBaseline::new("k", "r".to_owned(), ms), ms);
        let (mut a, mut b) = (Groups::default(), Groups::default());
        for (k, ms) in [("b", 2), ("a", 1), ("c", 3)] {
            a.insert(k.into(), g(ms));
        }
        for (k, ms) in [("c", 3), ("a", 9), ("b", 2), ("a", 1)] {
            b.insert(k.into(), g(ms));
        }
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 3);
        assert!(a == b);
        let text = |g: &Groups| serde_json::to_string(g).unwrap_or_default();
        assert_eq!(text(&a), text(&b));
        assert!(text(&a).find("\"a\"") < text(&a).find("\"b\""));
        let back: Groups = serde_json::from_str(&text(&a)).unwrap_or_default();
        assert!(back == a);
        // Found by text, through another allocation, and by its hash.
        let other: String = "a".into();
        assert_eq!(b.get(&other).map(|g| g.last_seen_ms), Some(1));
        assert_eq!(
            b.find_mut(key_hash(&other), &other).map(|g| g.last_seen_ms),
            Some(1)
        );
        b.remove("a");
        assert!(!b.contains_key("a"));
        assert!(a != b);
        assert_eq!(b.keys().count(), 2);
    }

    /// Four replicas of one group reporting `cpu_cores` 1, 1, 3 and 3, with peers'
    /// statistics taken afresh for every comparison: the engine and the replicas.
    fn four_cpu_peers() -> (Engine, Vec<Arc<ContainerRef>>) {
        let cfg = DetectConfig {
            peer_refresh_ms: 0,
            ..DetectConfig::default()
        };
        let mut e = Engine::new(cfg).unwrap_or_else(|err| panic!("{err}"));
        let cs: Vec<_> = (0..4).map(container).collect();
        let mut alerts = Vec::new();
        for (c, v) in cs.iter().zip([1.0, 1.0, 3.0, 3.0]) {
            e.observe(&cpu_sample(c, PEERS_T0, &[v]), &mut alerts);
        }
        (e, cs)
    }

    /// The cached peers' statistics of the only group's first feature: median, number
    /// of peers.
    fn cached_peers(e: &Engine) -> Option<(f64, usize)> {
        let g = e.state.groups.values().next()?;
        g.cached_peer_stats(0).map(|p| (p.median, p.n))
    }

    const PEERS_T0: i64 = 1_795_428_000_000;

    /// A sample of `c` at `ts_ms` naming `cpu_cores` once for each of `values`.
    fn cpu_sample(c: &Arc<ContainerRef>, ts_ms: i64, values: &[f64]) -> Observation {
        Observation {
            ts_ms,
            container: Arc::clone(c),
            payload: Payload::Metrics(values.iter().map(|v| ("cpu_cores".into(), *v)).collect()),
        }
    }

    /// A replica's latest values are taken out of its table while its sample is scored
    /// and put back once; a metric the sample names twice is still compared with peers
    /// that hold the replica's first value of it, as when every value was stored at
    /// once (seen with statistics taken afresh for every comparison).
    #[test]
    fn a_metric_named_twice_meets_peers_holding_its_first_value() {
        let (mut e, cs) = four_cpu_peers();
        assert_eq!(e.group_keys().count(), 1);
        let median = |e: &Engine| cached_peers(e).map(|(m, _)| m);
        let mut alerts = Vec::new();
        // Before it: the peers are 1, 1, 3, 3.
        e.observe(&cpu_sample(&cs[1], PEERS_T0 + 1_000, &[1.0]), &mut alerts);
        assert_eq!(median(&e), Some(2.0));
        // The second `cpu_cores` is compared with 5, 1, 3, 3: the median is 3.
        e.observe(
            &cpu_sample(&cs[0], PEERS_T0 + 2_000, &[5.0, 5.0]),
            &mut alerts,
        );
        assert_eq!(median(&e), Some(3.0));
    }

    /// While a replica's sample is scored its latest values are out of its table; the
    /// peers' statistics its sample takes still count its previous value (not its new
    /// one, and not none), as when the values were copied out and stored back after.
    #[test]
    fn a_replica_in_hand_counts_among_its_peers_with_its_previous_value() {
        let (mut e, cs) = four_cpu_peers();
        assert_eq!(e.group_keys().count(), 1);
        let mut alerts = Vec::new();
        // The second replica's 7 meets 1, 1, 3, 3 (without its 1: 1, 3, 3; with its 7
        // already: 1, 7, 3, 3; the median 3 either way).
        e.observe(&cpu_sample(&cs[1], PEERS_T0 + 1_000, &[7.0]), &mut alerts);
        assert_eq!(cached_peers(&e), Some((2.0, 4)));
        // And it is put back: the next sample's peers hold the 7.
        e.observe(&cpu_sample(&cs[2], PEERS_T0 + 2_000, &[3.0]), &mut alerts);
        assert_eq!(cached_peers(&e), Some((3.0, 4)));
        let replica = e.state.groups.values().next().and_then(|g| {
            g.replicas
                .values()
                .find(|r| r.cref.id == cs[1].id)
                .and_then(|r| r.latest.first().and_then(|l| l.get()))
        });
        assert_eq!(
            replica.map(|l| (l.value, l.ts_ms)),
            Some((7.0, PEERS_T0 + 1_000))
        );
    }

    /// The identities cache forgets identities no one else holds (neither a sample nor
    /// a replica) once it has grown by a quarter: under churn (three samples in four
    /// from a new container, each gone after its sample; replicas forgotten after
    /// `replica_ttl_ms * 10`) it never holds more than a quarter and a few more than
    /// the most identities in use, and what it keeps for those in use is their
    /// group's key and id hash.
    #[test]
    fn the_identities_cache_stays_bounded_under_churn() {
        let mut e = Engine::new(DetectConfig::default()).unwrap_or_else(|err| panic!("{err}"));
        let held: Vec<_> = (0..100).map(container).collect();
        let mut alerts = Vec::new();
        let (mut most, mut peak_in_use) = (0, 0);
        for k in 0..40_000u32 {
            let c = match k % 4 {
                0 => Arc::clone(&held[(k as usize / 4) % held.len()]),
                _ => container(1_000 + k),
            };
            e.observe(&sample(&c, 1_000 * i64::from(k)), &mut alerts);
            drop(c);
            peak_in_use = peak_in_use.max(replicas_held(&e));
            most = most.max(e.keys.by_container.len());
            assert_identities_bounded(&e, peak_in_use);
        }
        // Replicas were forgotten, and so were their identities.
        assert!(
            peak_in_use > held.len() && peak_in_use < 10_000,
            "{peak_in_use}"
        );
        assert!(most > 0 && most < 15_000, "{most}");
        for c in &held {
            let GroupKey { key, hash, id_hash } =
                e.keys.key(&e.cfg.group_by, c, &e.state.groups).clone();
            assert_eq!(hash, key_hash(&key));
            assert_eq!(id_hash, Id::new(&c.id).hash());
            assert!(e.state.groups.contains_key(&key));
        }
    }

    /// A record dated years ahead holds the engine's event time, and with it
    /// housekeeping, until that date: the identities' cache is pruned as it grows all
    /// the same, so that under churn it holds at most a quarter and a few more than the
    /// identities in use (the group's replicas, at most `max_replicas_per_group`).
    #[test]
    fn the_identities_cache_stays_bounded_while_event_time_stands_still() {
        let cfg = DetectConfig {
            max_replicas_per_group: 50,
            ..DetectConfig::default()
        };
        let mut e = Engine::new(cfg).unwrap_or_else(|err| panic!("{err}"));
        let mut alerts = Vec::new();
        // 9999-12-31T23:59:59Z.
        e.observe(&sample(&container(0), 253_402_300_799_000), &mut alerts);
        for k in 1..20_000u32 {
            let c = container(k);
            e.observe(&sample(&c, 1_000 * i64::from(k)), &mut alerts);
            drop(c);
            let in_use = replicas_held(&e);
            assert!(in_use <= 50, "{in_use} replicas");
            assert_identities_bounded(&e, 50);
        }
    }

    /// The replicas `e`'s groups hold.
    fn replicas_held(e: &Engine) -> usize {
        e.state.groups.values().map(|g| g.replicas.len()).sum()
    }

    /// `e`'s identities' cache holds at most the identities in use when it was last
    /// pruned (at most `replicas` replicas, and the sample being scored) and a quarter
    /// and a few more.
    fn assert_identities_bounded(e: &Engine, replicas: usize) {
        let in_use = replicas + 1;
        assert!(
            e.keys.by_container.len() <= in_use + in_use / 4 + PRUNE_SLACK,
            "{} identities, at most {replicas} replicas",
            e.keys.by_container.len()
        );
    }

    /// A repository naming no tracked group goes at housekeeping: one whose group went
    /// idle, and one a restored state brought (housekeeping looks at them all once
    /// after a restore, then only when a group went).
    #[test]
    fn housekeeping_forgets_repositories_whose_group_went() {
        let cfg = DetectConfig::default();
        let idle = cfg.group_idle_ms;
        let mut e = Engine::new(cfg.clone()).unwrap_or_else(|err| panic!("{err}"));
        let mut alerts = Vec::new();
        let (web, api) = (container(1), {
            let mut c = (*container(2)).clone();
            c.image = "shop/api:1".into();
            c.image_digest = Some("sha256:bb".into());
            Arc::new(c)
        });
        e.observe(&sample(&web, 1_000), &mut alerts);
        e.observe(&sample(&api, 1_000), &mut alerts);
        let repos = |e: &Engine| e.state.repos.keys().cloned().collect::<Vec<_>>();
        assert_eq!(repos(&e), ["shop/api", "shop/web"]);
        // A restored state with a repository whose group is not there.
        let mut snap: serde_json::Value =
            serde_json::from_slice(&e.snapshot().unwrap_or_default()).unwrap_or_default();
        snap["state"]["repos"]["ghost/app"] = "sha256:gone".into();
        let bytes = serde_json::to_vec(&snap).unwrap_or_default();
        let mut e = Engine::restore(cfg, &bytes).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(repos(&e), ["ghost/app", "shop/api", "shop/web"]);
        // Nothing until the engine's time enters another housekeeping period.
        e.observe(&sample(&web, 2_000), &mut alerts);
        assert_eq!(repos(&e), ["ghost/app", "shop/api", "shop/web"]);
        e.observe(&sample(&web, 2_000 + HOUSEKEEPING_MS), &mut alerts);
        assert_eq!(repos(&e), ["shop/api", "shop/web"]);
        // `shop/api` goes idle while `shop/web` samples on.
        e.observe(&sample(&web, 1_000 + idle + HOUSEKEEPING_MS), &mut alerts);
        assert_eq!(repos(&e), ["shop/web"]);
    }

    /// Groups live in a hash map; everything that has an order takes the keys' order:
    /// the snapshot's bytes are the same whatever order the groups arrived in and after
    /// a restore, and the keys handed out are sorted.
    #[test]
    fn groups_are_in_key_order_wherever_an_order_shows() {
        let images: Vec<Arc<ContainerRef>> = (0..40)
            .map(|i| {
                let mut c = (*container(i)).clone();
                c.image = format!("shop/svc{:02}:1", (i * 17) % 40).into();
                c.image_digest = None;
                Arc::new(c)
            })
            .collect();
        let fed = |order: &mut dyn Iterator<Item = &Arc<ContainerRef>>| {
            let mut e = Engine::new(DetectConfig::default()).unwrap_or_else(|err| panic!("{err}"));
            let mut out = Vec::new();
            for c in order {
                e.observe(&sample(c, 1_000), &mut out);
            }
            e
        };
        let forward = fed(&mut images.iter());
        let backward = fed(&mut images.iter().rev());
        let snap = |e: &Engine| e.snapshot().unwrap_or_else(|err| panic!("{err}"));
        assert!(snap(&forward) == snap(&backward), "the arrival order shows");
        let restored = Engine::restore(DetectConfig::default(), &snap(&forward))
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(
            snap(&restored) == snap(&forward),
            "a restore changes the bytes"
        );
        let keys: Vec<&str> = backward.group_keys().collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!((keys.len(), &keys), (40, &sorted));
        // In the snapshot too.
        let text = String::from_utf8(snap(&backward)).unwrap_or_default();
        let at: Vec<usize> = sorted
            .iter()
            .map(|k| text.find(&format!("\"{k}\":{{")).unwrap_or(usize::MAX))
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1] && w[1] != usize::MAX),
            "{at:?}"
        );
        let changed: Vec<&str> = backward.groups_changed_since(0).collect();
        assert_eq!(changed, sorted);
    }

    /// A snapshot an earlier herd wrote, which counted the observations to the next
    /// housekeeping in its state, restores: the count is read past, and the state is
    /// the same.
    #[test]
    fn a_snapshot_that_counted_observations_to_housekeeping_restores() {
        let cfg = DetectConfig::default();
        let mut e = Engine::new(cfg.clone()).unwrap_or_else(|err| panic!("{err}"));
        let mut alerts = Vec::new();
        for k in 0..20 {
            let c = container(k % 4);
            e.observe(&sample(&c, 1_000 * i64::from(k)), &mut alerts);
        }
        let mut snap: serde_json::Value =
            serde_json::from_slice(&e.snapshot().unwrap_or_default()).unwrap_or_default();
        snap["state"]["since_housekeeping"] = 17.into();
        let bytes = serde_json::to_vec(&snap).unwrap_or_default();
        let restored = Engine::restore(cfg, &bytes).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(restored.snapshot().ok(), e.snapshot().ok());
    }

    /// A checkpoint writes the groups changed since the last one. A late observation
    /// (older than the newest the engine has seen) changes its group as much as any:
    /// selected by event time, it was left out, and a worker that took the group over
    /// restored it without that change.
    #[test]
    fn a_late_observation_marks_its_group_for_the_next_checkpoint() {
        let mut e = Engine::new(DetectConfig::default()).unwrap_or_else(|err| panic!("{err}"));
        let web = container(1);
        let mut db = (*container(2)).clone();
        db.image = "shop/db:1".into();
        let db = Arc::new(db);
        let mut out = Vec::new();
        e.observe(&sample(&web, 10_000), &mut out);
        e.observe(&sample(&db, 20_000), &mut out);
        let mark = e.change_mark();
        assert_eq!(e.groups_changed_since(mark).count(), 0);
        e.observe(&sample(&web, 15_000), &mut out);
        let changed: Vec<&str> = e.groups_changed_since(mark).collect();
        let web_key = e.cfg.group_by.key(&web);
        assert_eq!(changed, vec![web_key.as_str()]);
        // Before the mark, both.
        assert_eq!(e.groups_changed_since(0).count(), 2);
    }

    /// After a restore, the first sample of a replica hands the engine the normaliser's
    /// identity, which the replica adopts (and with it the id its table is keyed by):
    /// each container's id and identity are held once again, as before the checkpoint.
    #[test]
    fn a_restored_replica_adopts_the_shared_identity_and_its_id_issue_7() {
        let mut e = Engine::new(DetectConfig::default()).unwrap_or_else(|err| panic!("{err}"));
        let cs: Vec<_> = (0..3).map(container).collect();
        let mut out = Vec::new();
        for c in &cs {
            e.observe(&sample(c, 1_000), &mut out);
        }
        let bytes = e.snapshot().unwrap_or_else(|err| panic!("{err}"));
        let mut back =
            Engine::restore(DetectConfig::default(), &bytes).unwrap_or_else(|err| panic!("{err}"));
        let shared = |e: &Engine, c: &Arc<ContainerRef>| {
            e.state.groups.values().any(|g| {
                g.replicas
                    .get(Id::new(&c.id))
                    .is_some_and(|r| Arc::ptr_eq(&r.cref, c))
            })
        };
        assert!(cs.iter().all(|c| !shared(&back, c)));
        for c in &cs {
            back.observe(&sample(c, 2_000), &mut out);
        }
        assert!(cs.iter().all(|c| shared(&back, c)));
        assert_eq!(back.stats().containers, 3);
    }
}
