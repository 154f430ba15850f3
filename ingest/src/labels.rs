//! A container's labels, packed: every key and value in one string, in key order, and
//! where each ends. Two allocations whatever the count (none when empty), against a
//! `BTreeMap<String, String>`'s node (room for eleven pairs) plus two strings a label:
//! for a sample's usual two labels, ~80 bytes instead of ~540. Every tracked container
//! holds one (issue "Performance to the limit": memory per container).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Labels sorted by key, each key once. Serialised as a JSON object (the same bytes as
/// a `BTreeMap<String, String>`).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Key, value, key, value… in key order, with nothing between them.
    text: Box<str>,
    /// Where each key and each value ends in `text`: key `i` ends at `ends[2 * i]`, its
    /// value at `ends[2 * i + 1]`.
    ends: Box<[u32]>,
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`th part (key `2i`, value `2i + 1`).
    fn part(&self, i: usize) -> &str {
        let start = match i.checked_sub(1) {
            Some(prev) => self.ends.get(prev).copied().unwrap_or(0),
            None => 0,
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    /// The labels in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            labels: self,
            next: 0,
        }
    }

    /// The keys in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.part(2 * i))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.part(2 * mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.part(2 * mid + 1)),
            }
        }
        None
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value` (rebuilds: for construction, not for a hot path).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let mut m = self.to_map();
        m.insert(key.into(), value.into());
        *self = Self::from(m);
    }

    /// The labels as a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Packs labels already sorted by key with no key twice.
    fn from_sorted<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (k, v) in labels {
            // Offsets are u32: a label set of 4 GiB cannot arrive (every decoder bounds
            // its line far below that); were one to, the labels past it are left out
            // rather than read wrong.
            let (Ok(ke), Ok(ve)) = (
                u32::try_from(text.len() + k.len()),
                u32::try_from(text.len() + k.len() + v.len()),
            ) else {
                break;
            };
            text.push_str(k);
            text.push_str(v);
            ends.extend([ke, ve]);
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

/// The labels of a [`Labels`] in key order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    labels: &'a Labels,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        (i < self.labels.len()).then(|| {
            self.next += 1;
            (self.labels.part(2 * i), self.labels.part(2 * i + 1))
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.labels.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(m: BTreeMap<String, String>) -> Self {
        Self::from_sorted(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(m: &BTreeMap<String, String>) -> Self {
        Self::from_sorted(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// A key set twice keeps its last value, as a map's `insert` does.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let m: BTreeMap<String, String> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from(m)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_labels_allocate_nothing_and_find_nothing() {
        let l = Labels::new();
        assert!(l.is_empty());
        assert_eq!(l.get(""), None);
        assert_eq!(l.iter().count(), 0);
        assert_eq!(serde_json::to_string(&l).ok().as_deref(), Some("{}"));
    }

    #[test]
    fn empty_keys_and_values_keep_their_places() {
        let l: Labels = [("", "x"), ("b", ""), ("a", "1")].into_iter().collect();
        assert_eq!(l.get(""), Some("x"));
        assert_eq!(l.get("b"), Some(""));
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.keys().collect::<Vec<_>>(), ["", "a", "b"]);
    }

    #[test]
    fn a_key_set_twice_keeps_its_last_value_and_insert_replaces() {
        let mut l: Labels = [("app", "web"), ("app", "db")].into_iter().collect();
        assert_eq!(l.len(), 1);
        assert_eq!(l.get("app"), Some("db"));
        l.insert("tier", "front");
        l.insert("app", "api");
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [("app", "api"), ("tier", "front")]
        );
    }

    proptest! {
        /// Packed labels say exactly what the map they came from says, and serialise to
        /// the map's own bytes.
        #[test]
        fn labels_are_the_map_they_were_made_from(
            m in proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..12),
            probe in ".{0,12}",
        ) {
            let l = Labels::from(&m);
            prop_assert_eq!(l.len(), m.len());
            prop_assert_eq!(l.to_map(), m.clone());
            prop_assert_eq!(l.get(&probe), m.get(&probe).map(String::as_str));
            for (k, v) in &m {
                prop_assert_eq!(l.get(k), Some(v.as_str()));
            }
            let json = serde_json::to_string(&l).unwrap_or_default();
            prop_assert_eq!(&json, &serde_json::to_string(&m).unwrap_or_default());
            let back: Labels = serde_json::from_str(&json).unwrap_or_default();
            prop_assert_eq!(back, l);
        }
    }
}
