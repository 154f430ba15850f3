//! [`GroupBaseline`]: everything learned about one peer group.

use std::borrow::Cow;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::BaselineConfig;
use crate::categorical::ItemCatalog;
use crate::numeric::FeatureBaseline;

/// Where a group's baseline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Too little history to score numeric features; items are learned silently.
    Warmup,
    /// Numeric features are scored; unseen items are learned, and only items that one
    /// replica shows and its siblings do not are suspect.
    Learning,
    /// Everything is scored; an item never seen in the group is novel.
    Locked,
}

impl Phase {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Learning => "learning",
            Phase::Locked => "locked",
        }
    }
}

/// The baseline of one peer group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupBaseline {
    /// The peer-group key.
    pub key: String,
    /// The image repository (without tag or digest), to recognise rollouts.
    pub repository: String,
    /// When the group was first seen.
    pub created_ms: i64,
    /// When learning (re)started: creation, or the rollout that created this digest.
    pub learning_since_ms: i64,
    /// The group this one inherited its baseline from, after a rollout.
    pub inherited_from: Option<String>,
    /// Latest event time that updated the baseline.
    pub updated_ms: i64,
    /// Each feature with its name: the name a sample brought when it is one of herd's
    /// own (`'static`, so a later sample's name is recognised by its address).
    features: Vec<(Cow<'static, str>, FeatureBaseline)>,
    #[serde(skip)]
    index: FxHashMap<String, usize>,
    /// Categorical items with their replica support.
    pub items: ItemCatalog,
    /// The latest snapshot `herd retrain` made of this group, once adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrained: Option<Box<crate::retrained::Retrained>>,
    /// Analysts' verdicts on the group's incidents, in force, with their audit trail
    /// (inherited on a rollout: they are about the image's behaviour).
    #[serde(default, skip_serializing_if = "crate::verdicts::Verdicts::is_empty")]
    pub verdicts: crate::verdicts::Verdicts,
}

impl PartialEq for GroupBaseline {
    /// Equal when the learned state is equal; the name index is derived.
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
            && self.repository == o.repository
            && self.created_ms == o.created_ms
            && self.learning_since_ms == o.learning_since_ms
            && self.inherited_from == o.inherited_from
            && self.updated_ms == o.updated_ms
            && self.features == o.features
            && self.items == o.items
            && self.retrained == o.retrained
            && self.verdicts == o.verdicts
    }
}

impl GroupBaseline {
    /// A new, empty baseline.
    pub fn new(key: impl Into<String>, repository: impl Into<String>, now_ms: i64) -> Self {
        Self {
            key: key.into(),
            repository: repository.into(),
            created_ms: now_ms,
            learning_since_ms: now_ms,
            inherited_from: None,
            updated_ms: now_ms,
            features: Vec::new(),
            index: FxHashMap::default(),
            items: ItemCatalog::default(),
            retrained: None,
            verdicts: crate::verdicts::Verdicts::default(),
        }
    }

    /// Adopts a retrained snapshot of this group. Merge rules: what was learned online
    /// stays as it is (sketches, items, and the phase: a locked baseline stays locked,
    /// and the archive's history does not end a warm-up, because the snapshot carries no
    /// item catalog: a group locked by it would find every item of its first minutes
    /// novel); the snapshot is held beside the online state, where its structure scores
    /// every sample from the first; a snapshot no newer than the one held is ignored.
    pub fn adopt_retrained(
        &mut self,
        r: crate::retrained::Retrained,
    ) -> crate::retrained::Adoption {
        use crate::retrained::Adoption;
        if self
            .retrained
            .as_ref()
            .is_some_and(|old| old.until_ms >= r.until_ms)
        {
            return Adoption::Stale;
        }
        self.retrained = Some(Box::new(r));
        Adoption::Adopted
    }

    /// Whether the numeric features' learned state equals another's.
    pub fn features_eq(&self, o: &Self) -> bool {
        self.features == o.features && self.items == o.items
    }

    /// A baseline for a new digest of the same repository, starting from this one:
    /// everything learned online is kept, and learning restarts, so a rollout whose
    /// replicas all change together is learned rather than alerted on. A retrained
    /// snapshot is not inherited: it describes the old version, and the new one would be
    /// judged against it until the next retrain.
    pub fn inherit(&self, key: impl Into<String>, now_ms: i64) -> Self {
        let mut g = self.clone();
        g.retrained = None;
        g.key = key.into();
        g.inherited_from = Some(self.key.clone());
        g.created_ms = now_ms;
        g.learning_since_ms = now_ms;
        g.updated_ms = now_ms;
        g
    }

    /// The phase at event time `now_ms`.
    pub fn phase(&self, now_ms: i64, cfg: &BaselineConfig) -> Phase {
        let age = now_ms - self.learning_since_ms;
        if age < cfg.warmup_ms {
            Phase::Warmup
        } else if age < cfg.learning_period_ms {
            Phase::Learning
        } else {
            Phase::Locked
        }
    }

    /// The baseline of feature `name`, created on first use. `None` once the group holds
    /// `cfg.max_features` features: a producer inventing metric names cannot grow it.
    pub fn feature_mut(
        &mut self,
        name: &str,
        cfg: &BaselineConfig,
    ) -> Option<&mut FeatureBaseline> {
        let i = self.feature_slot(name, cfg)?;
        self.features.get_mut(i).map(|(_, f)| f)
    }

    /// The slot of feature `name` (stable for the life of the baseline), created on first
    /// use; `None` once the group holds `cfg.max_features` features.
    pub fn feature_slot(&mut self, name: &str, cfg: &BaselineConfig) -> Option<usize> {
        self.slot_of(name, || Cow::Owned(name.to_owned()), cfg)
    }

    /// The slot of `name`, its feature created (named `owned()`) on first use.
    fn slot_of(
        &mut self,
        name: &str,
        owned: impl FnOnce() -> Cow<'static, str>,
        cfg: &BaselineConfig,
    ) -> Option<usize> {
        if self.index.len() != self.features.len() {
            self.reindex();
        }
        Some(match self.index.get(name) {
            Some(i) => *i,
            None => {
                if self.features.len() >= cfg.max_features {
                    return None;
                }
                self.features
                    .push((owned(), FeatureBaseline::new(name, cfg.half_life_ms)));
                self.index.insert(name.to_owned(), self.features.len() - 1);
                self.features.len() - 1
            }
        })
    }

    /// [`Self::feature_slot`], trying `hint` first: a sample lists its metrics in the
    /// order they first came, so the slot is usually its metric's position, and one
    /// comparison of names replaces the hash lookup. The index covers every feature
    /// (so names are unique) whenever the hint is taken.
    /// A feature created here keeps a `'static` name as it is, so that the next
    /// sample's name (herd's own names are) is recognised by its address alone.
    #[inline]
    #[allow(clippy::ptr_arg)] // the `Cow` itself: a borrowed `'static` name is kept as it is
    pub fn feature_slot_hinted(
        &mut self,
        name: &Cow<'static, str>,
        hint: usize,
        cfg: &BaselineConfig,
    ) -> Option<usize> {
        if self.index.len() == self.features.len()
            && self.features.get(hint).is_some_and(|(n, _)| {
                (std::ptr::eq(n.as_ptr(), name.as_ptr()) && n.len() == name.len()) || n == name
            })
        {
            return Some(hint);
        }
        self.slot_of(name, || name.clone(), cfg)
    }

    /// The feature in `slot`, with its name.
    pub fn feature_at_mut(&mut self, slot: usize) -> Option<(&str, &mut FeatureBaseline)> {
        self.features.get_mut(slot).map(|(n, f)| (&**n, f))
    }

    /// The feature in `slot`, with its name, beside the group's verdicts (which the
    /// scorers consult while they hold the feature).
    pub fn feature_at_mut_with_verdicts(
        &mut self,
        slot: usize,
    ) -> Option<(&str, &mut FeatureBaseline, &crate::verdicts::Verdicts)> {
        let verdicts = &self.verdicts;
        self.features
            .get_mut(slot)
            .map(|(n, f)| (&**n, f, verdicts))
    }

    /// Number of features learned.
    pub fn feature_count(&self) -> usize {
        self.features.len()
    }

    /// The resolution of the feature in `slot` (fixed when it was first learned).
    pub fn resolution_at(&self, slot: usize) -> Option<f64> {
        self.features.get(slot).map(|(_, f)| f.resolution)
    }

    /// The baseline of feature `name`, if learned.
    pub fn feature(&self, name: &str) -> Option<&FeatureBaseline> {
        self.features
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f)
    }

    /// Feature names learned, in first-seen order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|(n, _)| &**n)
    }

    fn reindex(&mut self) {
        self.index = self
            .features
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.to_string(), i))
            .collect();
    }

    /// Merges another baseline of the same group (a retrained or a peer worker's
    /// snapshot): numeric sketches and item catalogs are united; the earlier creation and
    /// learning start win, so a locked baseline stays locked.
    pub fn merge(&mut self, other: &GroupBaseline, cfg: &BaselineConfig) {
        self.created_ms = self.created_ms.min(other.created_ms);
        self.learning_since_ms = self.learning_since_ms.min(other.learning_since_ms);
        self.updated_ms = self.updated_ms.max(other.updated_ms);
        for (name, f) in &other.features {
            if let Some(mine) = self.feature_mut(name, cfg) {
                mine.merge(f);
            }
        }
        self.items.merge(&other.items);
    }

    /// Heap bytes held, roughly (for the memory budget).
    pub fn heap_bytes(&self) -> usize {
        self.features
            .iter()
            .map(|(n, f)| {
                let name = match n {
                    Cow::Owned(n) => n.capacity(),
                    Cow::Borrowed(_) => 0,
                };
                name + f.heap_bytes() + std::mem::size_of::<FeatureBaseline>()
            })
            .sum::<usize>()
            + self.items.heap_bytes()
            + self.verdicts.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feature keeps a `'static` name as it came, finds it again by address or by its
    /// text, and holds a name that came owned as its own copy.
    #[test]
    fn a_feature_is_found_by_its_name_however_the_name_is_held() {
        let cfg = BaselineConfig::default();
        let mut g = GroupBaseline::new("k", "r".to_owned(), 0);
        let cpu: Cow<'static, str> = Cow::Borrowed("cpu_cores");
        let mem: Cow<'static, str> = Cow::Owned("mem_bytes".to_owned());
        assert_eq!(g.feature_slot_hinted(&cpu, 0, &cfg), Some(0));
        assert_eq!(g.feature_slot_hinted(&mem, 1, &cfg), Some(1));
        let bytes_with_borrowed = g.heap_bytes();
        // The same names held otherwise; a wrong hint.
        let cpu_owned: Cow<'static, str> = Cow::Owned("cpu_cores".to_owned());
        assert_eq!(g.feature_slot_hinted(&cpu_owned, 0, &cfg), Some(0));
        assert_eq!(
            g.feature_slot_hinted(&Cow::Borrowed("mem_bytes"), 1, &cfg),
            Some(1)
        );
        assert_eq!(g.feature_slot_hinted(&cpu, 1, &cfg), Some(0));
        assert_eq!(g.feature_slot("mem_bytes", &cfg), Some(1));
        assert_eq!(
            g.feature_names().collect::<Vec<_>>(),
            ["cpu_cores", "mem_bytes"]
        );
        assert_eq!(g.heap_bytes(), bytes_with_borrowed);
        // A checkpoint holds the names as text; restored, they are found the same way.
        let back: GroupBaseline =
            serde_json::from_slice(&serde_json::to_vec(&g).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(back == g);
        let mut back = back;
        assert_eq!(back.feature_slot_hinted(&cpu, 0, &cfg), Some(0));
        assert_eq!(back.feature_slot_hinted(&mem, 1, &cfg), Some(1));
    }
}
