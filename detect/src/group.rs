//! Live state of one peer group: its baseline, its replicas and their latest values,
//! cached peer statistics, and items waiting for sibling corroboration.

use std::sync::Arc;

use herd_baseline::numeric::{peer_deviation, peer_deviation_with, slog};
use herd_baseline::{GroupBaseline, ItemKind, replica_hash};
use herd_ingest::{ContainerRef, id_hash as hash_id};

use hashbrown::HashTable;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::DetectConfig;
use crate::alert::PeerEvidence;
use crate::calibrate::TestRate;

/// A replica's latest value of one feature.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) struct Latest {
    pub(crate) value: f64,
    pub(crate) ts_ms: i64,
    /// Whether that sample was already beyond the threshold (peer deviations must hold
    /// for two consecutive samples: the first replica to report a fleet-wide change is
    /// compared with peers that have not reported it yet).
    pub(crate) hot: bool,
    /// Moving average of the replica's step sizes (0 until a step was seen).
    pub(crate) rough: f64,
}

/// A replica's latest value of one feature as it is kept: 24 bytes, where an
/// `Option<Latest>` takes 32 (the time and `hot` share a word, and an empty slot is a
/// time no sample has). Every replica holds one per feature of its group. Checkpoints
/// hold the slots as `Option<Latest>`s ([`latest_slots`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LatestSlot {
    value: f64,
    rough: f64,
    /// `ts_ms * 2 + hot`; [`Self::EMPTY`]'s for none.
    stamp: i64,
}

impl LatestSlot {
    pub(crate) const EMPTY: Self = Self {
        value: 0.0,
        rough: 0.0,
        stamp: i64::MIN,
    };
    /// Times within ±2^62 ms (146 million years) are kept as they are; beyond, they are
    /// held at that bound.
    const MAX_TS: i64 = (1 << 62) - 1;

    pub(crate) fn new(l: Latest) -> Self {
        Self {
            value: l.value,
            rough: l.rough,
            stamp: l.ts_ms.clamp(-Self::MAX_TS, Self::MAX_TS) * 2 + i64::from(l.hot),
        }
    }

    pub(crate) fn get(self) -> Option<Latest> {
        (self.stamp != i64::MIN).then(|| Latest {
            value: self.value,
            ts_ms: self.stamp.div_euclid(2),
            hot: self.stamp.rem_euclid(2) == 1,
            rough: self.rough,
        })
    }
}

/// The latest values of the replica whose sample is being scored, taken out of its
/// table for the while (`score_metrics` reads and writes them in place, with one lookup
/// of the replica for the whole sample), with what decides whether it counts as a
/// live peer. The peers' statistics read them from here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InHand<'a> {
    pub(crate) latest: &'a [LatestSlot],
    pub(crate) alive: bool,
    pub(crate) last_seen_ms: i64,
}

/// A replica's latest values in a checkpoint: `Option<Latest>`s, as before they were
/// packed.
pub(crate) mod latest_slots {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Latest, LatestSlot};

    pub(crate) fn serialize<S: Serializer>(slots: &[LatestSlot], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(slots.iter().map(|l| l.get()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Box<[LatestSlot]>, D::Error> {
        let v = Vec::<Option<Latest>>::deserialize(d)?;
        Ok(v.into_iter()
            .map(|l| l.map_or(LatestSlot::EMPTY, LatestSlot::new))
            .collect())
    }
}

/// [`Replica::last_metrics_ms`] before its first metric sample (a sample at this time,
/// 292 million years BC, counts as none).
pub(crate) const NO_SAMPLE: i64 = i64::MIN;
/// A replica's structure figures before its first sample scored under a retrained
/// structure: [`Replica::structure_latest`]'s time is [`NO_SAMPLE`].
pub(crate) const NO_STRUCTURE: (f64, i64) = (0.0, NO_SAMPLE);
/// [`Replica::structure_mode`] when no mode is known.
pub(crate) const NO_MODE: u32 = u32::MAX;

/// A value with one of its own reserved for none: what a replica may not have yet, held
/// without the second word an `Option` of it would take.
pub(crate) trait Sentinel: Copy {
    const NONE: Self;
    fn is_none(&self) -> bool;
}

impl Sentinel for i64 {
    const NONE: Self = NO_SAMPLE;
    fn is_none(&self) -> bool {
        *self == NO_SAMPLE
    }
}

impl Sentinel for u32 {
    const NONE: Self = NO_MODE;
    fn is_none(&self) -> bool {
        *self == NO_MODE
    }
}

impl Sentinel for (f64, i64) {
    const NONE: Self = NO_STRUCTURE;
    fn is_none(&self) -> bool {
        self.1 == NO_SAMPLE
    }
}

/// A [`Sentinel`] in a checkpoint: the `Option` it stands for (`null` for none), as
/// before it was packed.
pub(crate) mod sentinel {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Sentinel;

    pub(crate) fn serialize<T, S>(v: &T, s: S) -> Result<S::Ok, S::Error>
    where
        T: Sentinel + Serialize,
        S: Serializer,
    {
        match v.is_none() {
            true => s.serialize_none(),
            false => s.serialize_some(v),
        }
    }

    pub(crate) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: Sentinel + Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or(T::NONE))
    }

    /// For `#[serde(default)]`: none.
    pub(crate) fn none<T: Sentinel>() -> T {
        T::NONE
    }

    /// For `#[serde(skip_serializing_if)]`.
    pub(crate) fn is_none<T: Sentinel>(v: &T) -> bool {
        v.is_none()
    }
}

/// One replica (container) of a group: 128 bytes, one of the allocator's size classes,
/// boxed in its group's table. What a replica may not have yet is a sentinel rather
/// than an `Option` (each `Option` of a word takes a second one), and its rare restart
/// times a boxed slice; a checkpoint holds the `Option`s as before.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Replica {
    pub(crate) cref: Arc<ContainerRef>,
    pub(crate) last_seen_ms: i64,
    pub(crate) alive: bool,
    /// Latest value of each feature slot (exactly the group's features: a slice, not a
    /// vector, since every replica holds one).
    #[serde(with = "latest_slots")]
    pub(crate) latest: Box<[LatestSlot]>,
    pub(crate) rate: TestRate,
    /// Smoothed interval between metric samples, ms (0 until two were seen).
    pub(crate) interval_ms: f64,
    /// When its latest metric sample was, [`NO_SAMPLE`] before the first.
    #[serde(with = "sentinel", default = "sentinel::none")]
    pub(crate) last_metrics_ms: i64,
    /// Recent (re)start times, for restart loops (see [`Replica::restarted`]).
    restarts: Box<[i64]>,
    pub(crate) died: bool,
    /// Whether its previous sample was beyond the threshold of the group's retrained
    /// structure (such a finding must hold for two consecutive samples).
    #[serde(default)]
    pub(crate) structure_hot: bool,
    /// Its latest surprise under the retrained structure, and when ([`NO_STRUCTURE`]
    /// before one): a peer's position and mode count for `fleet_shift` while this is
    /// recent.
    #[serde(with = "sentinel", default = "sentinel::none")]
    pub(crate) structure_latest: (f64, i64),
    /// Its position along the structure's principal axes at that sample (empty when
    /// unknown), so that a replica is judged beside where its peers are.
    #[serde(default, skip_serializing_if = "<[f64]>::is_empty")]
    pub(crate) structure_position: Box<[f64]>,
    /// The structure's mode nearest that sample ([`NO_MODE`] when unknown): a peer's
    /// shift is measured from the centre of its own mode.
    #[serde(
        with = "sentinel",
        default = "sentinel::none",
        skip_serializing_if = "sentinel::is_none"
    )]
    pub(crate) structure_mode: u32,
}

impl Replica {
    pub(crate) fn new(cref: Arc<ContainerRef>, now_ms: i64) -> Self {
        Self {
            cref,
            last_seen_ms: now_ms,
            alive: true,
            latest: Box::default(),
            rate: TestRate::new(now_ms),
            interval_ms: 0.0,
            last_metrics_ms: NO_SAMPLE,
            restarts: Box::default(),
            died: false,
            structure_hot: false,
            structure_latest: NO_STRUCTURE,
            structure_position: Box::default(),
            structure_mode: NO_MODE,
        }
    }

    /// Its id's hash, for the baseline's replica support (computed: it is asked for
    /// only when an item is judged, and would cost every replica a word).
    pub(crate) fn hash(&self) -> u64 {
        replica_hash(&self.cref.id)
    }

    /// Records a (re)start at `now_ms`.
    pub(crate) fn restarted(&mut self, now_ms: i64) {
        let mut v = std::mem::take(&mut self.restarts).into_vec();
        v.push(now_ms);
        self.restarts = v.into_boxed_slice();
    }

    /// Forgets (re)starts older than `window_ms`; how many are left.
    pub(crate) fn restarts_within(&mut self, now_ms: i64, window_ms: i64) -> usize {
        let recent = |t: &i64| now_ms - t <= window_ms;
        if !self.restarts.iter().all(recent) {
            self.restarts = self.restarts.iter().copied().filter(recent).collect();
        }
        self.restarts.len()
    }
}

impl Replica {
    /// Records a metric sample's time and updates the smoothed sampling interval.
    pub(crate) fn sampled(&mut self, now_ms: i64) {
        let last = self.last_metrics_ms;
        if last != NO_SAMPLE && now_ms > last {
            let dt = (now_ms - last) as f64;
            self.interval_ms = if self.interval_ms == 0.0 {
                dt
            } else {
                0.9 * self.interval_ms + 0.1 * dt
            };
        }
        self.last_metrics_ms = last.max(now_ms);
    }

    /// How long an incident of this replica stays open without anomalies.
    pub(crate) fn quiet_ms(&self, cfg: &DetectConfig) -> i64 {
        cfg.incident_quiet_ms
            .max((self.interval_ms * f64::from(cfg.incident_quiet_samples)) as i64)
    }
}

/// A group's replicas, keyed by the id each one's identity holds (no key of their own,
/// so an id is not stored twice) and boxed: a table has up to twice the slots its
/// entries need, and a slot is then 8 bytes rather than a replica's 160 (or a key and
/// a box, 24). Serialised as a map by id, as when it was one.
#[derive(Debug, Clone)]
pub(crate) struct Replicas {
    table: HashTable<Box<Replica>>,
    /// A floor under every replica's `last_seen_ms` (not state): a replica's time only
    /// moves forward, so the floor stays one until a replica comes in below it, and
    /// housekeeping, which visits every group of the engine, skips a group none of
    /// whose replicas can be old enough to forget without touching them.
    seen_floor: i64,
}

impl Default for Replicas {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
            // No floor known: the first eviction looks at every replica.
            seen_floor: i64::MIN,
        }
    }
}

/// A container id with its hash, computed once per observation however often its
/// replica is looked up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Id<'a> {
    pub(crate) id: &'a str,
    hash: u64,
}

impl<'a> Id<'a> {
    pub(crate) fn new(id: &'a str) -> Self {
        Self {
            id,
            hash: hash_id(id),
        }
    }

    /// `id` with its hash taken before (`Id::new(id).hash()`).
    #[inline]
    pub(crate) fn hashed(id: &'a str, hash: u64) -> Self {
        debug_assert_eq!(hash, hash_id(id));
        Self { id, hash }
    }

    /// The id's hash in a replica table.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// Whether a replica's id is this one: the same allocation (the replica adopts the
    /// registry's identity, so almost always) or the same text.
    fn is(&self, other: &str) -> bool {
        std::ptr::eq(self.id, other) || self.id == other
    }
}

impl Replicas {
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn contains_key(&self, id: Id<'_>) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn get(&self, id: Id<'_>) -> Option<&Replica> {
        self.table
            .find(id.hash, |r| id.is(&r.cref.id))
            .map(|r| &**r)
    }

    pub(crate) fn get_mut(&mut self, id: Id<'_>) -> Option<&mut Replica> {
        self.table
            .find_mut(id.hash, |r| id.is(&r.cref.id))
            .map(|r| &mut **r)
    }

    /// Replica `id`, made by `new` (whose identity must hold `id`) when there is none.
    #[inline]
    pub(crate) fn get_or_insert_with(
        &mut self,
        id: Id<'_>,
        new: impl FnOnce() -> Replica,
    ) -> &mut Replica {
        let slot = self
            .table
            .entry(id.hash, |r| id.is(&r.cref.id), |r| hash_id(&r.cref.id));
        match slot {
            hashbrown::hash_table::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let r = new();
                self.seen_floor = self.seen_floor.min(r.last_seen_ms);
                insert_boxed(e, r)
            }
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Replica> + '_ {
        self.table.iter().map(|r| &**r)
    }

    pub(crate) fn remove(&mut self, id: Id<'_>) -> Option<Box<Replica>> {
        self.table
            .find_entry(id.hash, |r| id.is(&r.cref.id))
            .ok()
            .map(|e| e.remove().0)
    }

    /// Forgets the replicas not seen for more than `keep_ms` before `now_ms`; whether it
    /// forgot any. Touches no replica when the floor says none is that old.
    pub(crate) fn forget_unseen(&mut self, now_ms: i64, keep_ms: i64) -> bool {
        if now_ms.saturating_sub(self.seen_floor) <= keep_ms {
            return false;
        }
        let n = self.len();
        let mut floor = i64::MAX;
        self.table.retain(|r| {
            let keep = now_ms - r.last_seen_ms <= keep_ms;
            if keep {
                floor = floor.min(r.last_seen_ms);
            }
            keep
        });
        self.seen_floor = floor;
        self.len() < n
    }
}

/// A new replica into its vacant slot: out of line, since nearly every sample finds its
/// replica there.
#[cold]
#[inline(never)]
fn insert_boxed<'t>(
    e: hashbrown::hash_table::VacantEntry<'t, Box<Replica>>,
    r: Replica,
) -> &'t mut Replica {
    e.insert(Box::new(r)).into_mut()
}

/// The same replicas in the same state.
impl PartialEq for Replicas {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .values()
                .all(|r| other.get(Id::new(&r.cref.id)) == Some(r))
    }
}

impl Serialize for Replicas {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.values().map(|r| (&*r.cref.id, r)))
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Keyed by the id each replica's identity holds, as the map was.
        let map = FxHashMap::<String, Box<Replica>>::deserialize(d)?;
        let mut t = Replicas::default();
        t.table.reserve(map.len(), |r| hash_id(&r.cref.id));
        for r in map.into_values() {
            let hash = hash_id(&r.cref.id);
            match t
                .table
                .entry(hash, |x| x.cref.id == r.cref.id, |x| hash_id(&x.cref.id))
            {
                hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = r,
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(r);
                }
            }
        }
        Ok(t)
    }
}

/// An item one replica showed first during learning, waiting to see whether a sibling
/// shows it too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Pending {
    pub(crate) container_id: String,
    pub(crate) kind: ItemKind,
    pub(crate) value: String,
    pub(crate) deadline_ms: i64,
}

/// A feature slot's peer statistics as cached ([`GroupState::peer_stats`]), with what
/// comparing a replica with them needs beside them: the feature's resolution and the
/// [`slog`] of the peers' median, each computed once for the statistics (not state:
/// NaN until first asked, invisible to equality and checkpoints). One cache line per
/// slot: a sample's peer test reads this and the feature's sketches, where the
/// resolution (a field of its own line after the feature's five sketches) and a
/// separate table of medians' logarithms cost two lines more.
///
/// [`slog`]: herd_baseline::numeric::slog
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct PeerSlot {
    /// Whether statistics were computed for the slot (the checkpoint's `Some`).
    cached: bool,
    at_ms: i64,
    stats: Option<PeerEvidence>,
    res: f64,
    slog_median: f64,
}

impl PeerSlot {
    /// Nothing computed for the slot yet.
    const EMPTY: Self = Self {
        cached: false,
        at_ms: 0,
        stats: None,
        res: f64::NAN,
        slog_median: f64::NAN,
    };

    fn new(at_ms: i64, stats: Option<PeerEvidence>) -> Self {
        Self {
            cached: true,
            at_ms,
            stats,
            ..Self::EMPTY
        }
    }

    fn get(&self) -> Option<PeerCache> {
        self.cached.then_some(PeerCache {
            at_ms: self.at_ms,
            stats: self.stats,
        })
    }
}

impl PartialEq for PeerSlot {
    fn eq(&self, o: &Self) -> bool {
        self.get() == o.get()
    }
}

/// A slot's peer statistics as a checkpoint holds them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PeerCache {
    at_ms: i64,
    stats: Option<PeerEvidence>,
}

/// [`PeerSlot`]s in a checkpoint: `Option<PeerCache>` each, as before they held more.
mod peer_slots {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{PeerCache, PeerSlot};

    pub(super) fn serialize<S: Serializer>(slots: &[PeerSlot], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(slots.iter().map(PeerSlot::get))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerSlot>, D::Error> {
        let v = Vec::<Option<PeerCache>>::deserialize(d)?;
        Ok(v.into_iter()
            .map(|c| c.map_or(PeerSlot::EMPTY, |c| PeerSlot::new(c.at_ms, c.stats)))
            .collect())
    }
}

/// The state of one group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct GroupState {
    pub(crate) baseline: GroupBaseline,
    pub(crate) replicas: Replicas,
    pub(crate) pending: Vec<Pending>,
    pub(crate) last_seen_ms: i64,
    /// Peer statistics are reused for `peer_refresh_ms`: part of the state, since scores
    /// depend on when they were computed.
    #[serde(default, with = "peer_slots")]
    peer_cache: Vec<PeerSlot>,
    /// When the group-wide check last ran, and which features were beyond the threshold
    /// then (a fleet finding must hold for two checks).
    #[serde(default)]
    pub(crate) fleet_checked_ms: i64,
    #[serde(default)]
    pub(crate) fleet_hot: Vec<bool>,
    /// The live-replica count and when it was taken: reused for `peer_refresh_ms` (part
    /// of the state, like the peer statistics), dropped whenever a replica appears,
    /// goes, starts, dies or reports again after its TTL.
    #[serde(default)]
    live_cache: Option<(i64, usize)>,
    /// The engine's number of this group's last change (not state: see
    /// [`crate::Engine::groups_changed_since`]).
    #[serde(skip)]
    pub(crate) changed: u64,
}

/// Most items pending corroboration per group; beyond it the oldest is judged early.
const MAX_PENDING: usize = 256;

impl GroupState {
    pub(crate) fn new(baseline: GroupBaseline, now_ms: i64) -> Self {
        Self {
            baseline,
            replicas: Replicas::default(),
            pending: Vec::new(),
            last_seen_ms: now_ms,
            peer_cache: Vec::new(),
            fleet_checked_ms: now_ms,
            fleet_hot: Vec::new(),
            live_cache: None,
            changed: 0,
        }
    }

    /// Live replicas: not dead, seen within the replica TTL. Counted at most once per
    /// `peer_refresh_ms` (the scan is O(replicas) and every observation asks).
    pub(crate) fn live_count(&mut self, now_ms: i64, cfg: &DetectConfig) -> usize {
        if let Some((at, n)) = self.live_cache
            && now_ms >= at
            && now_ms - at < cfg.peer_refresh_ms
        {
            return n;
        }
        let n = self
            .replicas
            .values()
            .filter(|r| r.alive && now_ms - r.last_seen_ms <= cfg.replica_ttl_ms)
            .count();
        self.live_cache = Some((now_ms, n));
        n
    }

    /// Drops the live-replica count after a change of liveness.
    pub(crate) fn liveness_changed(&mut self) {
        self.live_cache = None;
    }

    /// Median and spread of the live replicas' latest values of a feature, when at least
    /// `min_peers` replicas have a recent value. Cached for `peer_refresh_ms`: nearly
    /// every call finds them there (inline at the caller; the computation is a call).
    ///
    /// `in_hand`: the latest values of a replica whose sample is being scored, held out
    /// of its table meanwhile ([`InHand`]); `None` when every replica holds its own.
    #[inline]
    pub(crate) fn peer_stats(
        &mut self,
        slot: usize,
        now_ms: i64,
        cfg: &DetectConfig,
        scratch: &mut Vec<f64>,
        in_hand: Option<InHand<'_>>,
    ) -> Option<PeerEvidence> {
        if let Some(c) = self.peer_cache.get(slot)
            && c.cached
            && now_ms >= c.at_ms
            && now_ms - c.at_ms < cfg.peer_refresh_ms
        {
            return c.stats;
        }
        self.compute_peer_stats(slot, now_ms, cfg, scratch, in_hand)
    }

    /// How far `x` is from the peers' `median` of `slot` ([`peer_deviation`]), the
    /// median being the one [`Self::peer_stats`] just gave: the feature's resolution and
    /// the median's logarithm are taken from beside the statistics, computed once for
    /// them (every replica of a group is compared with the same median until it is
    /// refreshed). `None` for a slot without a feature.
    ///
    /// [`peer_deviation`]: herd_baseline::numeric::peer_deviation
    #[inline]
    pub(crate) fn peer_deviation(&mut self, slot: usize, x: f64, median: f64) -> Option<f64> {
        let Some(c) = self.peer_cache.get_mut(slot).filter(|c| {
            c.stats
                .is_some_and(|s| s.median.to_bits() == median.to_bits())
        }) else {
            let res = self.baseline.resolution_at(slot)?;
            return Some(peer_deviation(x, median, res));
        };
        if c.res.is_nan() {
            c.res = self.baseline.resolution_at(slot)?;
        }
        let res = c.res;
        Some(peer_deviation_with(x, median, res, || {
            if c.slog_median.is_nan() {
                c.slog_median = slog(median, res);
            }
            c.slog_median
        }))
    }

    /// The peer statistics cached for `slot`, if any.
    #[cfg(test)]
    pub(crate) fn cached_peer_stats(&self, slot: usize) -> Option<PeerEvidence> {
        self.peer_cache
            .get(slot)
            .and_then(PeerSlot::get)
            .and_then(|c| c.stats)
    }

    /// [`Self::peer_stats`] computed, and cached.
    #[inline(never)]
    fn compute_peer_stats(
        &mut self,
        slot: usize,
        now_ms: i64,
        cfg: &DetectConfig,
        scratch: &mut Vec<f64>,
        in_hand: Option<InHand<'_>>,
    ) -> Option<PeerEvidence> {
        if self.peer_cache.len() <= slot {
            self.peer_cache.resize(slot + 1, PeerSlot::EMPTY);
        }
        scratch.clear();
        let mut take = |alive: bool, last_seen_ms: i64, latest: &[LatestSlot]| {
            if !alive || now_ms - last_seen_ms > cfg.replica_ttl_ms {
                return;
            }
            if let Some(l) = latest.get(slot).and_then(|l| l.get())
                && now_ms - l.ts_ms <= cfg.peer_window_ms
            {
                scratch.push(l.value);
            }
        };
        // A replica in hand holds no values in the table; its own are taken after the
        // others' (the median and spread do not depend on the values' order).
        for r in self.replicas.values() {
            take(r.alive, r.last_seen_ms, &r.latest);
        }
        if let Some(h) = in_hand {
            take(h.alive, h.last_seen_ms, h.latest);
        }
        let stats = (scratch.len() >= cfg.min_peers).then(|| {
            let (median, mad) = median_and_mad(scratch);
            PeerEvidence {
                median,
                spread: 1.4826 * mad,
                n: scratch.len(),
            }
        });
        self.peer_cache[slot] = PeerSlot::new(now_ms, stats);
        stats
    }

    /// Queues an item for corroboration.
    pub(crate) fn add_pending(&mut self, p: Pending) {
        if self
            .pending
            .iter()
            .any(|q| q.kind == p.kind && q.value == p.value && q.container_id == p.container_id)
        {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push(p);
    }

    /// Removes and returns the pending items due at `now_ms` that no sibling corroborated.
    pub(crate) fn due_uncorroborated(&mut self, now_ms: i64) -> Vec<Pending> {
        if self.pending.is_empty() || self.pending.iter().all(|p| p.deadline_ms > now_ms) {
            return Vec::new();
        }
        let (due, keep): (Vec<_>, Vec<_>) = self
            .pending
            .drain(..)
            .partition(|p| p.deadline_ms <= now_ms);
        self.pending = keep;
        due.into_iter()
            .filter(|p| {
                self.baseline
                    .items
                    .get(p.kind, &p.value)
                    .is_none_or(|s| s.support() < 2)
            })
            .collect()
    }

    /// Forgets the least recently seen replica.
    pub(crate) fn evict_oldest_replica(&mut self) {
        if let Some(id) = self
            .replicas
            .values()
            .min_by_key(|r| r.last_seen_ms)
            .map(|r| Arc::clone(&r.cref.id))
        {
            self.replicas.remove(Id::new(&id));
            self.live_cache = None;
        }
    }

    /// Numbers a change of this group: the engine's next change number (`changes`).
    pub(crate) fn mark_changed(&mut self, changes: &mut u64) {
        *changes += 1;
        self.changed = *changes;
    }

    /// Forgets replicas not seen for `keep_ms`; whether it forgot any. `keep_ms` is at
    /// least the replica TTL, so none of them counted as live: the live-replica count
    /// (and its cache, part of what scores depend on) is left as it is. Housekeeping
    /// runs every so many observations of the whole engine, so whatever it changed in
    /// a score would depend on which groups share a worker.
    pub(crate) fn evict_replicas(&mut self, now_ms: i64, keep_ms: i64) -> bool {
        self.replicas.forget_unseen(now_ms, keep_ms)
    }
}

/// Up to this many values, a median sorts them.
const SMALL: usize = 24;

/// Median of a non-empty slice (reorders it).
pub(crate) fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    if n <= SMALL {
        // A group's replicas, usually: a sort is a few dozen comparisons where the
        // selection's set-up costs hundreds. The same order (`total_cmp`'s, by the
        // integer key it compares, computed once a value rather than twice a
        // comparison), so the same two middle values, so the same median.
        let sorted = sorted_small(v);
        return match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[mid],
            _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
        };
    }
    median_by_selection(v)
}

/// A slice of at most [`SMALL`] values sorted in `total_cmp`'s order (by the integer
/// key it compares, computed once a value rather than twice a comparison), in the
/// first `v.len()` places of the array.
fn sorted_small(v: &[f64]) -> [f64; SMALL] {
    let n = v.len().min(SMALL);
    let mut keys = [0i64; SMALL];
    for (k, x) in keys.iter_mut().zip(v.iter()) {
        *k = total_order_key(*x);
    }
    insertion_sort(&mut keys[..n]);
    let mut sorted = [0.0; SMALL];
    for (x, k) in sorted.iter_mut().zip(keys[..n].iter()) {
        *x = from_total_order_key(*k);
    }
    sorted
}

/// The median of a non-empty slice and the median of its values' absolute deviations
/// from it (may reorder it). Up to [`SMALL`] values, one sort gives both: the deviations of
/// the values below the median, read downwards, and of those above it, read upwards,
/// are each in order, so the middle deviations are found by merging the two (the same
/// values [`median_in_place`] would sort, so the same two middle ones).
pub(crate) fn median_and_mad(v: &mut [f64]) -> (f64, f64) {
    let n = v.len();
    if n == 0 || n > SMALL {
        let median = median_in_place(v);
        for x in v.iter_mut() {
            *x = (*x - median).abs();
        }
        return (median, median_in_place(v));
    }
    let sorted = sorted_small(v);
    let sorted = &sorted[..n];
    let mid = n / 2;
    let median = if n % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    // `below` counts the values below the median (in the order the keys sort in, so
    // every value after them is at least the median, every one before at most it).
    let below = sorted.partition_point(|x| *x < median);
    let dev = |i: usize| (sorted[i] - median).abs();
    // The merge: `lo` walks down from `below`, `hi` up from it, each with the deviation
    // it would take next (none is NaN: the values are finite); the `mid - 1`-th and
    // `mid`-th smallest deviations are the last two taken.
    let (mut lo, mut hi) = (below, below);
    let mut d_lo = if lo > 0 { dev(lo - 1) } else { 0.0 };
    let mut d_hi = if hi < n { dev(hi) } else { 0.0 };
    let mut take = || {
        if hi < n && (lo == 0 || d_hi <= d_lo) {
            let d = d_hi;
            hi += 1;
            if hi < n {
                d_hi = dev(hi);
            }
            d
        } else {
            let d = d_lo;
            lo -= 1;
            if lo > 0 {
                d_lo = dev(lo - 1);
            }
            d
        }
    };
    let mut prev = f64::NAN;
    for _ in 0..mid {
        prev = take();
    }
    let upper = take();
    let mad = if n % 2 == 1 {
        upper
    } else {
        (prev + upper) / 2.0
    };
    (median, mad)
}

/// Sorts a few integers in place.
fn insertion_sort(keys: &mut [i64]) {
    for i in 1..keys.len() {
        let k = keys[i];
        let mut j = i;
        while j > 0 && keys[j - 1] > k {
            keys[j] = keys[j - 1];
            j -= 1;
        }
        keys[j] = k;
    }
}

/// The integer `f64::total_cmp` orders a double by: its bits, with those of a negative
/// value but the sign flipped, so that integers compare as the doubles do.
#[inline]
fn total_order_key(x: f64) -> i64 {
    flip_negative(x.to_bits() as i64)
}

/// The double whose [`total_order_key`] is `k`.
#[inline]
fn from_total_order_key(k: i64) -> f64 {
    f64::from_bits(flip_negative(k) as u64)
}

/// All bits but the sign flipped when the sign is set: its own inverse.
#[inline]
fn flip_negative(b: i64) -> i64 {
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// The median of a non-empty slice by selection (reorders it).
fn median_by_selection(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *m;
    if n % 2 == 1 {
        upper
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_deviation_is_the_same_from_the_slot_as_computed() {
        let mut g = GroupState::new(GroupBaseline::new("g", "r", 0), 0);
        let cfg = herd_baseline::BaselineConfig::default();
        let slot = g
            .baseline
            .feature_slot(herd_ingest::model::metric::NET_RX_BPS, &cfg)
            .unwrap_or_else(|| panic!("a slot"));
        let res = g.baseline.resolution_at(slot).unwrap_or(f64::NAN);
        let peers = |median: f64| PeerEvidence {
            median,
            spread: 1.0,
            n: 5,
        };
        let same = |g: &mut GroupState, x: f64, median: f64| {
            let from_slot = g.peer_deviation(slot, x, median).map(f64::to_bits);
            assert_eq!(from_slot, Some(peer_deviation(x, median, res).to_bits()));
        };
        // Nothing cached: computed from the feature.
        same(&mut g, 9e5, 3e5);
        g.peer_cache = vec![PeerSlot::new(10, Some(peers(3e5)))];
        // The first comparison fills the slot's resolution and logarithm, the next ones
        // read them; within one resolution unit the logarithm is not needed.
        for x in [9e5, 3e5 + 10.0, 1e3, 9e5] {
            same(&mut g, x, 3e5);
        }
        assert_eq!(
            g.peer_cache[0].slog_median.to_bits(),
            slog(3e5, res).to_bits()
        );
        // New statistics forget both.
        g.peer_cache[0] = PeerSlot::new(20, Some(peers(5e5)));
        assert!(g.peer_cache[0].slog_median.is_nan() && g.peer_cache[0].res.is_nan());
        same(&mut g, 9e5, 5e5);
        // A median other than the slot's is computed, not read.
        same(&mut g, 9e5, 4e5);
        assert_eq!(
            g.peer_cache[0].slog_median.to_bits(),
            slog(5e5, res).to_bits()
        );
        // A slot without a feature has no deviation.
        assert_eq!(g.peer_deviation(slot + 1, 1.0, 2.0), None);
    }

    #[test]
    fn peer_slots_are_checkpointed_as_the_options_they_were() {
        let slots = vec![
            PeerSlot::EMPTY,
            PeerSlot::new(
                7,
                Some(PeerEvidence {
                    median: 2.0,
                    spread: 0.5,
                    n: 3,
                }),
            ),
            PeerSlot::new(9, None),
        ];
        let mut bytes = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut bytes);
        peer_slots::serialize(&slots, &mut ser).unwrap_or_else(|e| panic!("{e}"));
        let as_options: Vec<Option<PeerCache>> = slots.iter().map(PeerSlot::get).collect();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).ok(),
            serde_json::to_value(&as_options).ok()
        );
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let back = peer_slots::deserialize(&mut de).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, slots);
        assert!(back[2].cached && back[2].stats.is_none() && !back[0].cached);
    }

    #[test]
    fn the_total_order_key_orders_as_total_cmp_and_is_undone() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            -5e-324,
            -0.0,
            0.0,
            5e-324,
            1.0,
            f64::INFINITY,
            f64::NAN,
            -f64::NAN,
        ];
        for a in xs {
            assert_eq!(
                from_total_order_key(total_order_key(a)).to_bits(),
                a.to_bits()
            );
            for b in xs {
                assert_eq!(
                    total_order_key(a).cmp(&total_order_key(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_in_place(&mut [5.0]), 5.0);
    }

    proptest::proptest! {
        /// Sorting a small slice gives the selection's median (how every median was
        /// taken before) bit for bit, signed zeros and repeated values included (scores
        /// depend on it).
        #[test]
        fn a_small_median_is_the_selections_bit_for_bit(
            v in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::f64::NORMAL,
                    proptest::sample::select(vec![0.0, -0.0, 1.0, -1.0, 0.5]),
                ],
                1..40,
            )
        ) {
            let (mut a, mut b) = (v.clone(), v);
            proptest::prop_assert_eq!(
                median_in_place(&mut a).to_bits(),
                median_by_selection(&mut b).to_bits()
            );
        }

        /// The median and the median absolute deviation from one sort are the two
        /// medians taken one after the other (how the peers' spread was taken before),
        /// bit for bit: signed zeros, repeated values, values at the median, and values
        /// whose median or deviations overflow included.
        #[test]
        fn the_median_and_mad_are_the_two_medians_bit_for_bit(
            v in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::f64::NORMAL,
                    proptest::sample::select(vec![0.0, -0.0, 1.0, -1.0, 0.5, 2.0, f64::MAX, -f64::MAX]),
                    (0.0..1.0f64),
                ],
                1..40,
            )
        ) {
            let (mut a, mut b) = (v.clone(), v);
            let (median, mad) = median_and_mad(&mut a);
            let m = median_in_place(&mut b);
            for x in b.iter_mut() {
                *x = (*x - m).abs();
            }
            proptest::prop_assert_eq!(median.to_bits(), m.to_bits());
            proptest::prop_assert_eq!(mad.to_bits(), median_in_place(&mut b).to_bits());
        }
    }

    /// Forgetting unseen replicas gives what a scan of every replica gives, whatever
    /// came in below the floor (a late sample's new replica) and after a checkpoint
    /// round trip (no floor known), and skips the scan only where none could go.
    #[test]
    fn forgetting_unseen_replicas_is_the_scan_it_skips() {
        let c = |id: &str| {
            Arc::new(ContainerRef {
                id: id.into(),
                name: None,
                image: "img".into(),
                image_digest: None,
                labels: Default::default(),
                host: None,
            })
        };
        let add = |t: &mut Replicas, id: &str, seen: i64| {
            let c = c(id);
            t.get_or_insert_with(Id::new(&c.id), || Replica::new(Arc::clone(&c), seen));
        };
        let ids = |t: &Replicas| {
            let mut v: Vec<String> = t.values().map(|r| r.cref.id.to_string()).collect();
            v.sort();
            v
        };
        let mut t = Replicas::default();
        add(&mut t, "a", 100);
        add(&mut t, "b", 200);
        // Nothing old enough: none goes, and the floor (100) is kept.
        assert!(!t.forget_unseen(150, 60));
        assert_eq!(ids(&t), ["a", "b"]);
        assert!(t.forget_unseen(161, 60));
        assert_eq!(ids(&t), ["b"]);
        // A late replica below the floor (200) lowers it: it goes when it is due.
        add(&mut t, "late", 120);
        assert!(t.forget_unseen(181, 60));
        assert_eq!(ids(&t), ["b"]);
        // A replica seen again keeps its place however old its first sighting.
        add(&mut t, "c", 230);
        if let Some(r) = t.get_mut(Id::new("b")) {
            r.last_seen_ms = 300;
        }
        assert!(!t.forget_unseen(290, 60));
        assert_eq!(ids(&t), ["b", "c"]);
        assert!(t.forget_unseen(291, 60));
        assert_eq!(ids(&t), ["b"]);
        // After a round trip the floor is unknown: the first call looks at every one.
        let text = serde_json::to_string(&t).unwrap_or_default();
        let mut back: Replicas = serde_json::from_str(&text).unwrap_or_default();
        assert!(back == t);
        assert!(back.forget_unseen(361, 60));
        assert_eq!(back.len(), 0);
        // And an empty table skips every later call.
        assert!(!back.forget_unseen(i64::MAX, 0));
    }

    #[test]
    fn a_replica_id_is_found_by_its_text_in_another_allocation() {
        let mut t = Replicas::default();
        let c = Arc::new(ContainerRef {
            id: "c1".into(),
            name: None,
            image: "img".into(),
            image_digest: None,
            labels: Default::default(),
            host: None,
        });
        t.get_or_insert_with(Id::new(&c.id), || Replica::new(Arc::clone(&c), 0));
        let copy = String::from("c1");
        assert!(t.contains_key(Id::new(&copy)));
        assert!(t.contains_key(Id::new(&c.id)));
        assert!(!t.contains_key(Id::new("c")));
        assert!(t.remove(Id::new(&copy)).is_some());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_latest_slot_keeps_what_an_option_of_latest_held_in_less() {
        assert_eq!(std::mem::size_of::<LatestSlot>(), 24);
        assert_eq!(std::mem::size_of::<Option<Latest>>(), 32);
        let cases = [
            Latest {
                value: 0.25,
                ts_ms: 1_733_000_000_123,
                hot: true,
                rough: 0.5,
            },
            Latest {
                value: -3.0,
                ts_ms: -1,
                hot: false,
                rough: 0.0,
            },
            Latest {
                value: 1e300,
                ts_ms: 0,
                hot: true,
                rough: f64::MIN_POSITIVE,
            },
        ];
        for l in cases {
            assert_eq!(LatestSlot::new(l).get(), Some(l));
        }
        assert_eq!(LatestSlot::EMPTY.get(), None);
        // Times beyond ±2^62 ms are held at the bound, never taken for an empty slot.
        for (ts, hot) in [(i64::MIN, false), (i64::MAX, true)] {
            let l = LatestSlot::new(Latest {
                value: 1.0,
                ts_ms: ts,
                hot,
                rough: 0.0,
            })
            .get()
            .unwrap_or_else(|| panic!("{ts} read as empty"));
            assert_eq!((l.ts_ms.signum(), l.hot), (ts.signum(), hot));
            assert_eq!(l.ts_ms.abs(), LatestSlot::MAX_TS);
        }
    }

    #[test]
    fn a_replica_fits_its_allocation_class_and_keeps_its_checkpoint_form() {
        // Every container tracked holds one, boxed: 128 bytes is one of the allocator's
        // size classes (168 took a 192-byte one).
        assert_eq!(std::mem::size_of::<Replica>(), 128);
        let cref = Arc::new(ContainerRef {
            id: "c1".into(),
            name: None,
            image: "shop/web:1".into(),
            image_digest: None,
            labels: Default::default(),
            host: None,
        });
        let mut r = Replica::new(cref, 1_000);
        let mut fresh = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
        // What it does not have yet is `null` or left out, as it was as `Option`s.
        assert_eq!(fresh["last_metrics_ms"], serde_json::Value::Null);
        assert_eq!(fresh["structure_latest"], serde_json::Value::Null);
        assert!(fresh.get("structure_mode").is_none(), "{fresh}");
        assert_eq!(fresh["restarts"], serde_json::json!([]));
        // Older checkpoints also hold the id's hash: read, and computed again.
        fresh["hash"] = serde_json::json!(r.hash());
        r.sampled(11_000);
        r.sampled(21_000);
        assert_eq!(r.interval_ms, 10_000.0);
        r.structure_latest = (2.5, 21_000);
        r.structure_mode = 1;
        r.restarted(15_000);
        r.restarted(20_000);
        assert_eq!(r.restarts_within(21_000, 5_000), 1);
        let json = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["last_metrics_ms"], 21_000);
        assert_eq!(json["structure_latest"], serde_json::json!([2.5, 21_000]));
        assert_eq!(json["structure_mode"], 1);
        assert_eq!(json["restarts"], serde_json::json!([20_000]));
        let back: Replica = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
        let mut before: Replica = serde_json::from_value(fresh).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(before.last_metrics_ms, NO_SAMPLE);
        assert_eq!(
            (before.structure_latest.1, before.structure_mode),
            (NO_SAMPLE, NO_MODE)
        );
        // The first sample after a restore gives no interval, as before.
        before.sampled(5_000);
        assert_eq!((before.interval_ms, before.last_metrics_ms), (0.0, 5_000));
    }

    #[test]
    fn a_replicas_latest_values_keep_their_checkpoint_form() {
        #[derive(serde::Serialize)]
        struct Before<'a>(&'a [Option<Latest>]);
        #[derive(Serialize, Deserialize)]
        struct After(#[serde(with = "latest_slots")] Box<[LatestSlot]>);
        let l = Latest {
            value: 2.5,
            ts_ms: 60_000,
            hot: true,
            rough: 0.125,
        };
        let old = [None, Some(l), None];
        let packed = After(
            old.iter()
                .map(|o| o.map_or(LatestSlot::EMPTY, LatestSlot::new))
                .collect(),
        );
        let json = serde_json::to_string(&packed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            json,
            serde_json::to_string(&Before(&old)).unwrap_or_else(|e| panic!("{e}"))
        );
        let back: After = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.0, packed.0);
    }
}
