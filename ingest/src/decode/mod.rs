//! Stateless decoding: one input line → one [`Record`] with an event time, or a
//! [`Reject`] whose [`RejectReason`] is a bounded label fit for a metric.
//!
//! The format is detected per line from the keys of the top-level object, so any mix of
//! formats can share a topic or a file. Limits are enforced before parsing: line size and
//! nesting depth (scanned without building anything), then counts and string sizes while
//! converting.

mod docker_events;
mod docker_stats;
mod falco;
mod native;
mod prometheus;

use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::model::{ContainerRef, Observation};

pub use docker_events::DockerEventRecord;
pub use docker_stats::{StatsCounters, StatsRecord, StatsSource};
pub use falco::FalcoRecord;
pub use native::{NativeLine, encode_native};
pub use prometheus::PromRecord;

/// Size and shape limits for every decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest accepted line. Docker stats objects are ~2–5 KiB; 1 MiB leaves room for a
    /// container with hundreds of labels while bounding one record's memory.
    pub max_line_bytes: usize,
    /// Deepest accepted JSON nesting of every part of a line herd reads. Every supported
    /// format is at most 5 levels deep. (Keys of a Docker stats object that herd does not
    /// read are skipped unread, at any depth, without recursion.)
    pub max_depth: usize,
    /// Most metrics in one native line or labels on one container.
    pub max_items: usize,
    /// Longest accepted name or value string (ids, labels, commands). Longer ones are
    /// truncated on a character boundary, not rejected: hostile names are still data.
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 1 << 20,
            max_depth: 16,
            max_items: 512,
            max_string_bytes: 4096,
        }
    }
}

/// Why a line was not decoded. A closed set: it is used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Longer than [`Limits::max_line_bytes`].
    TooLarge,
    /// Nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// Not valid JSON (or not UTF-8).
    InvalidJson,
    /// Valid JSON, but not an object of any known format.
    UnknownFormat,
    /// A required field is missing or has the wrong type.
    MissingField,
    /// The event time is absent, unparsable or outside 2000..2200.
    InvalidTimestamp,
    /// A value is out of range (negative counter, non-finite number, empty id).
    InvalidValue,
    /// More metrics or labels than [`Limits::max_items`].
    TooManyItems,
    /// A raw stats sample or event of a container whose image is not known yet.
    UnknownContainer,
    /// A feedback record (`herd feedback`) about a peer group the worker reading it
    /// does not hold (forgotten when idle, or keyed to another worker's partition).
    UnknownGroup,
}

impl RejectReason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [RejectReason; 10] = [
        Self::TooLarge,
        Self::TooDeep,
        Self::InvalidJson,
        Self::UnknownFormat,
        Self::MissingField,
        Self::InvalidTimestamp,
        Self::InvalidValue,
        Self::TooManyItems,
        Self::UnknownContainer,
        Self::UnknownGroup,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::TooDeep => "too_deep",
            Self::InvalidJson => "invalid_json",
            Self::UnknownFormat => "unknown_format",
            Self::MissingField => "missing_field",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::InvalidValue => "invalid_value",
            Self::TooManyItems => "too_many_items",
            Self::UnknownContainer => "unknown_container",
            Self::UnknownGroup => "unknown_group",
        }
    }
}

/// A rejected line: the reason and a short, escaped detail for the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The bounded reason.
    pub reason: RejectReason,
    /// Human detail, at most 200 bytes, control characters escaped.
    pub detail: String,
}

impl Reject {
    /// A rejection; the detail is escaped and bounded.
    pub fn new(reason: RejectReason, detail: impl AsRef<str>) -> Self {
        Self {
            reason,
            detail: sanitize_detail(detail.as_ref()),
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// Escapes control characters (no forged log lines) and bounds the length.
fn sanitize_detail(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(200));
    for ch in s.chars() {
        if out.len() >= 200 {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// `s` cut to at most `max` bytes on a character boundary, as [`bounded`] cuts it.
pub(crate) fn bounded_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Truncates a string to at most `max` bytes on a character boundary.
pub(crate) fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Why a decodable line carries nothing herd scores. Counted, not dead-lettered.
pub type FilterReason = &'static str;

/// A decoded line, before the stateful normalisation.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A native line: already a complete observation.
    Native(Observation),
    /// A Docker stats-API sample (raw, or inside the agent envelope). Not boxed: no
    /// larger than a Docker event, so it costs the enum nothing and a line no allocation.
    Stats(StatsRecord),
    /// A Docker engine event about a container.
    DockerEvent(DockerEventRecord),
    /// A Falco alert.
    Falco(Box<FalcoRecord>),
    /// One prometheus-kafka-adapter sample.
    Prom(Box<PromRecord>),
    /// Well-formed but irrelevant (an image event, a host-level Falco event, a stopped
    /// container's empty stats): counted as filtered.
    Filtered {
        /// Event time when the line had one.
        ts_ms: Option<i64>,
        /// Why it was filtered.
        reason: FilterReason,
    },
}

impl Record {
    /// Event time of the record, for event-time ordering.
    pub fn ts_ms(&self) -> Option<i64> {
        match self {
            Record::Native(o) => Some(o.ts_ms),
            Record::Stats(s) => Some(s.ts_ms),
            Record::DockerEvent(e) => Some(e.ts_ms),
            Record::Falco(f) => Some(f.ts_ms),
            Record::Prom(p) => Some(p.ts_ms),
            Record::Filtered { ts_ms, .. } => *ts_ms,
        }
    }

    /// The input format's name, a bounded label.
    pub fn format(&self) -> &'static str {
        match self {
            Record::Native(_) => "native",
            Record::Stats(s) if s.container().is_some() => "docker_stats_envelope",
            Record::Stats(_) => "docker_stats",
            Record::DockerEvent(_) => "docker_event",
            Record::Falco(_) => "falco",
            Record::Prom(_) => "prometheus",
            Record::Filtered { .. } => "filtered",
        }
    }
}

/// The line decoder. Cheap to clone; holds only limits.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
}

impl Decoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one line (without its newline). Never panics.
    pub fn decode(&self, line: &[u8]) -> Result<Record, Reject> {
        self.decode_with(line, &mut Identities::new(0))
    }

    /// [`Self::decode`], reusing the identities of containers decoded before (a
    /// pipeline keeps one [`Identities`] for all its lines).
    pub fn decode_with(&self, line: &[u8], ids: &mut Identities) -> Result<Record, Reject> {
        if line.len() > self.limits.max_line_bytes {
            return Err(Reject::new(
                RejectReason::TooLarge,
                format!("{} bytes > {}", line.len(), self.limits.max_line_bytes),
            ));
        }
        // The agent's envelope of a known container, in its plain form: one scan.
        if let Some(r) = docker_stats::fast_envelope(line, &self.limits, ids) {
            return Ok(r);
        }
        self.decode_general(line, ids)
    }

    /// [`Self::decode_with`] without its fast path: every format, every form.
    fn decode_general(&self, line: &[u8], ids: &mut Identities) -> Result<Record, Reject> {
        let max_depth = self.limits.max_depth;
        // A line that cannot be read is too deep first, if it is.
        let fail = |r: Reject| check_depth(line, max_depth).err().unwrap_or(r);
        let text = std::str::from_utf8(line).map_err(|e| {
            fail(Reject::new(
                RejectReason::InvalidJson,
                format!("not UTF-8: {e}"),
            ))
        })?;
        // One pass over the line: the top level's keys with their raw values, and the
        // parts of a Docker stats object typed on the way (see `Top`).
        if !text.trim_start().starts_with('{') {
            return Err(fail(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => Reject::new(RejectReason::UnknownFormat, "not a JSON object"),
                Err(e) => Reject::new(RejectReason::InvalidJson, e.to_string()),
            }));
        }
        let top: Top<'_> = serde_json::from_str(text).map_err(|e| {
            fail(match e.classify() {
                // Only the typed stats parts can hold a value of the wrong type.
                serde_json::error::Category::Data => {
                    Reject::new(RejectReason::InvalidValue, format!("stats: {e}"))
                }
                _ => Reject::new(RejectReason::InvalidJson, e.to_string()),
            })
        })?;
        // The depth limit holds for every part of the line that is read further: the
        // raw values kept for the formats' own parsing. The typed stats parts have a
        // fixed shape; what they skip unread (a key herd does not know), serde_json
        // skips without recursion at any depth, its size bounded by `max_line_bytes`.
        if max_depth == 0 {
            return Err(check_depth(line, 0)
                .err()
                .unwrap_or_else(|| Reject::new(RejectReason::TooDeep, "nesting deeper than 0")));
        }
        for (_, v) in top.obj.iter() {
            check_depth(v.get().as_bytes(), max_depth - 1).map_err(|_| {
                Reject::new(
                    RejectReason::TooDeep,
                    format!("nesting deeper than {max_depth}"),
                )
            })?;
        }
        let (obj, l) = (&top.obj, &self.limits);
        if top.stats.is_some() && obj.has("container") {
            docker_stats::decode_envelope(top, l, ids)
        } else if top.parts.is_raw_stats() {
            docker_stats::decode_top(top, l)
        } else if obj.has("output_fields") && obj.has("rule") {
            falco::decode(obj, l)
        } else if obj.has("container_id") && obj.has("ts") {
            native::decode(obj, l)
        } else if (obj.has("Action") && obj.has("Type"))
            || (obj.has("status") && obj.has("id") && obj.has("time"))
        {
            docker_events::decode(obj, l)
        } else if obj.has("labels") && obj.has("value") {
            prometheus::decode(obj, l)
        } else {
            Err(Reject::new(
                RejectReason::UnknownFormat,
                "no known format has these keys",
            ))
        }
    }
}

/// Container identities decoded before. An agent envelope repeats its container's
/// whole identity (id, name, image, digest, labels, host) in every sample; when it is
/// exactly the identity decoded last time, the same `Arc<ContainerRef>` is handed on:
/// no string of it is copied, and the normaliser's registry, seeing the same `Arc`,
/// compares nothing. Bounded: emptied when it holds `max` identities (it only saves
/// work; nothing depends on what it holds).
///
/// It also interns the strings that replicas share (image, digest, host): a group's
/// replicas then hold one allocation of each between them, in the registry and the
/// engine alike.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_id: rustc_hash::FxHashSet<ById>,
    strings: rustc_hash::FxHashSet<Arc<str>>,
    max: usize,
}

/// An identity keyed by its container id (no second copy of the id).
#[derive(Debug, Clone)]
struct ById(Arc<ContainerRef>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.id.hash(h);
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl Identities {
    /// Remembers up to `max` identities (0: none).
    pub fn new(max: usize) -> Self {
        Self {
            by_id: rustc_hash::FxHashSet::default(),
            strings: rustc_hash::FxHashSet::default(),
            max,
        }
    }

    fn get(&self, id: &str) -> Option<&Arc<ContainerRef>> {
        self.by_id.get(id).map(|b| &b.0)
    }

    fn remember(&mut self, c: &Arc<ContainerRef>) {
        if self.max == 0 {
            return;
        }
        if self.by_id.len() >= self.max && !self.by_id.contains(&*c.id) {
            self.by_id.clear();
        }
        self.by_id.replace(ById(Arc::clone(c)));
    }

    /// The shared copy of `s` (a new one the first time). Bounded like the identities:
    /// emptied when it holds `max` strings, after which sharing starts afresh.
    fn intern(&mut self, s: &str) -> Arc<str> {
        if self.max == 0 {
            return s.into();
        }
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        if self.strings.len() >= self.max {
            self.strings.clear();
        }
        let shared: Arc<str> = s.into();
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    /// Identities held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The top level of a line, read in one pass. Every key keeps its raw value, borrowed
/// from the line, except the parts of a Docker stats object (the agent envelope's
/// `stats`, or `cpu_stats`, `memory_stats`… of a raw one): no other format has those
/// keys, so they are read typed on the way, and a stats sample is scanned once.
pub(crate) struct Top<'a> {
    /// The other keys.
    pub(crate) obj: Obj<'a>,
    /// The envelope's `stats` (`Some(None)` when it is not an object).
    pub(crate) stats: Option<Option<docker_stats::StatsDoc<'a>>>,
    /// The parts of a raw stats object at the top level.
    pub(crate) parts: docker_stats::StatsParts,
}

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Top<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(16);
                let mut stats = None;
                let mut parts = docker_stats::StatsParts::default();
                while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
                    // The first of repeated keys wins, as in `Obj::get`.
                    if k == "stats" && stats.is_none() {
                        stats = Some(m.next_value::<Lenient<docker_stats::StatsDoc<'de>>>()?.0);
                    } else if !parts.read_part(&k, &mut m)? {
                        let v: &'de RawValue = m.next_value()?;
                        fields.push((k, v));
                    }
                }
                Ok(Top {
                    obj: Obj { fields },
                    stats,
                    parts,
                })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The visitor methods of a lenient value for arrays (drained unread) and scalars:
/// each is `$none`, not an error.
macro_rules! other_values_are_none {
    ($none:expr) => {
        fn visit_seq<S: serde::de::SeqAccess<'de>>(
            self,
            mut s: S,
        ) -> Result<Self::Value, S::Error> {
            while s.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// An object read as `T`; any other JSON value as `None` (skipped, not an error).
pub(crate) struct Lenient<T>(pub(crate) Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                m: M,
            ) -> Result<Self::Value, M::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(|t| Lenient(Some(t)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            other_values_are_none!(Lenient(None));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON object read without building a tree: its keys, each with the raw JSON text of
/// its value, borrowed from the line. Nested objects are parsed only when asked for, and
/// typed parts (`serde::Deserialize` structs) straight from their raw text.
#[derive(Debug)]
pub(crate) struct Obj<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Obj<'a> {
    /// Parses `raw` as an object; `Ok(None)` when it is valid JSON of another type.
    pub(crate) fn parse(raw: &'a RawValue) -> Result<Option<Self>, Reject> {
        if !raw.get().trim_start().starts_with('{') {
            return Ok(None);
        }
        let fields: ObjFields<'a> = serde_json::from_str(raw.get())
            .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
        Ok(Some(Self { fields: fields.0 }))
    }

    /// The raw value of `key` (the first, if a producer repeated it).
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Whether `key` is present.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The object at `key`, if it is one.
    pub(crate) fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, Reject> {
        match self.get(key) {
            Some(raw) => Obj::parse(raw),
            None => Ok(None),
        }
    }

    /// The string at `key`, bounded; `None` if absent or not a string.
    pub(crate) fn str(&self, key: &str, l: &Limits) -> Option<String> {
        self.get(key)
            .and_then(raw_string)
            .map(|s| bounded(s, l.max_string_bytes))
    }

    /// The fields, in the order of the line.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Number of fields.
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }
}

/// A string value, borrowed from the line unless it holds escapes; any other JSON value
/// as `None` (skipped, not an error).
pub(crate) struct LenientStr<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = LenientStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            other_values_are_none!(LenientStr(None));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The string a raw JSON value holds, borrowed unless it holds escapes.
pub(crate) fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get().trim();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(t).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The string a raw JSON value holds, if it is a string.
pub(crate) fn raw_string(raw: &RawValue) -> Option<String> {
    raw_str(raw).map(Cow::into_owned)
}

/// A scalar rendered as a label value: strings as they are, numbers and booleans as
/// their JSON text; objects, arrays and null have none.
pub(crate) fn raw_scalar(raw: &RawValue) -> Option<String> {
    let t = raw.get().trim();
    match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(t).ok(),
        Some(b't' | b'f') => Some(t.to_owned()),
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<serde_json::Number>(t)
            .ok()
            .map(|n| n.to_string()),
        _ => None,
    }
}

/// The number a raw JSON value holds, if it is a number.
pub(crate) fn raw_f64(raw: &RawValue) -> Option<f64> {
    let t = raw.get().trim();
    match t.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<f64>(t).ok(),
        _ => None,
    }
}

struct ObjFields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// An object key, borrowed from the line unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ObjFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = ObjFields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(m.size_hint().unwrap_or(8).min(64));
                while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = m.next_value()?;
                    fields.push((k, v));
                }
                Ok(ObjFields(fields))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Rejects lines nested deeper than `max` without parsing them: a byte scan that jumps
/// over string contents (`memchr`). serde_json would stop at 128 levels (and skips
/// unread values at any depth); herd's formats need far fewer.
fn check_depth(line: &[u8], max: usize) -> Result<(), Reject> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                // To the closing quote, past escaped characters. An unterminated string
                // ends the scan: the parser rejects the line.
                let Some(j) = line
                    .get(i..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return Ok(());
                };
                let quote = line.get(i + j) == Some(&b'"');
                i += j + if quote { 1 } else { 2 };
                if quote {
                    break;
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(Reject::new(
                        RejectReason::TooDeep,
                        format!("nesting deeper than {max}"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Reads a string → string map (labels, attributes), bounded in count and size.
/// Numbers and booleans become their JSON text; other values are skipped.
pub(crate) fn string_map(
    v: Option<&RawValue>,
    l: &Limits,
    skip: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, Reject> {
    let mut out = std::collections::BTreeMap::new();
    let Some(m) = v.map(Obj::parse).transpose()?.flatten() else {
        return Ok(out);
    };
    if m.len() > l.max_items {
        return Err(Reject::new(
            RejectReason::TooManyItems,
            format!("{} labels > {}", m.len(), l.max_items),
        ));
    }
    for (k, val) in m.iter() {
        if skip.contains(&k) {
            continue;
        }
        let Some(s) = raw_scalar(val) else {
            continue;
        };
        // The first of repeated keys wins, as in `Obj::get`.
        out.entry(bounded(k.to_owned(), l.max_string_bytes))
            .or_insert_with(|| bounded(s, l.max_string_bytes));
    }
    Ok(out)
}

/// Parses an event time that may be an RFC 3339 string or an epoch number.
pub(crate) fn parse_ts(v: Option<&RawValue>) -> Result<i64, Reject> {
    let ts = v.and_then(|raw| {
        if let Some(s) = raw_string(raw) {
            crate::time::parse_rfc3339_ms(&s)
                .or_else(|| s.parse::<i64>().ok().and_then(crate::time::epoch_to_ms))
        } else {
            let t = raw.get().trim();
            match t.parse::<i64>() {
                Ok(i) => crate::time::epoch_to_ms(i),
                Err(_) => raw_f64(raw).and_then(crate::time::epoch_secs_f64_to_ms),
            }
        }
    });
    ts.ok_or_else(|| {
        Reject::new(
            RejectReason::InvalidTimestamp,
            format!("unusable time {}", v.map_or("(absent)", |v| v.get())),
        )
    })
}

/// Splits a Docker image attribute that may embed a digest (`repo@sha256:…`).
pub(crate) fn split_image(image: &str) -> (String, Option<String>) {
    match image.split_once('@') {
        Some((repo, digest)) if digest.starts_with("sha256:") => {
            (repo.to_owned(), Some(digest.to_owned()))
        }
        _ => (image.to_owned(), None),
    }
}

/// [`split_image`] without copying.
pub(crate) fn split_image_str(image: &str) -> (&str, Option<&str>) {
    match image.split_once('@') {
        Some((repo, digest)) if digest.starts_with("sha256:") => (repo, Some(digest)),
        _ => (image, None),
    }
}

/// A container reference from fields that every format carries.
pub(crate) fn container_ref(
    id: String,
    name: Option<String>,
    image: String,
    labels: std::collections::BTreeMap<String, String>,
    host: Option<String>,
) -> ContainerRef {
    let (image, digest) = split_image_str(&image);
    ContainerRef {
        id: id.into(),
        name: name.map(|n| n.trim_start_matches('/').into()),
        image: image.into(),
        image_digest: digest.map(Into::into),
        labels: labels.into(),
        host: host.map(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert!(check_depth(br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#, 4).is_ok());
        assert!(
            check_depth(
                br#"{"a":"\"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"}"#,
                4
            )
            .is_ok()
        );
        let deep = "[".repeat(10_000);
        assert_eq!(
            check_depth(deep.as_bytes(), 16).map_err(|r| r.reason),
            Err(RejectReason::TooDeep)
        );
    }

    #[test]
    fn detail_is_escaped_and_bounded() {
        let r = Reject::new(RejectReason::InvalidJson, "a\nb\u{1b}[31m".repeat(100));
        assert!(!r.detail.contains('\n'));
        assert!(!r.detail.contains('\u{1b}'));
        assert!(r.detail.len() <= 204);
    }

    #[test]
    fn unknown_shapes_are_rejected_not_panicked() {
        let d = Decoder::default();
        for line in [
            &b"[]"[..],
            b"42",
            b"{}",
            b"{\"x\":1}",
            b"",
            b"\xff\xfe",
            b"null",
        ] {
            assert!(d.decode(line).is_err(), "{line:?}");
        }
    }
}
