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

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{ContainerRef, Observation};

pub use docker_events::DockerEventRecord;
pub use docker_stats::{StatsCounters, StatsRecord};
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
    /// Deepest accepted JSON nesting. Every supported format is at most 5 levels deep.
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
}

impl RejectReason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [RejectReason; 9] = [
        Self::TooLarge,
        Self::TooDeep,
        Self::InvalidJson,
        Self::UnknownFormat,
        Self::MissingField,
        Self::InvalidTimestamp,
        Self::InvalidValue,
        Self::TooManyItems,
        Self::UnknownContainer,
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
    pub(crate) fn new(reason: RejectReason, detail: impl AsRef<str>) -> Self {
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
    /// A Docker stats-API sample (raw, or inside the agent envelope).
    Stats(Box<StatsRecord>),
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
            Record::Stats(s) if s.container.is_some() => "docker_stats_envelope",
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
        if line.len() > self.limits.max_line_bytes {
            return Err(Reject::new(
                RejectReason::TooLarge,
                format!("{} bytes > {}", line.len(), self.limits.max_line_bytes),
            ));
        }
        check_depth(line, self.limits.max_depth)?;
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
        let Value::Object(obj) = &value else {
            return Err(Reject::new(
                RejectReason::UnknownFormat,
                "not a JSON object",
            ));
        };
        let l = &self.limits;
        if obj.contains_key("stats") && obj.contains_key("container") {
            docker_stats::decode_envelope(&value, l)
        } else if obj.contains_key("cpu_stats") || obj.contains_key("precpu_stats") {
            docker_stats::decode_raw(&value, l, None, None)
        } else if obj.contains_key("output_fields") && obj.contains_key("rule") {
            falco::decode(&value, l)
        } else if obj.contains_key("container_id") && obj.contains_key("ts") {
            native::decode(&value, l)
        } else if (obj.contains_key("Action") && obj.contains_key("Type"))
            || (obj.contains_key("status") && obj.contains_key("id") && obj.contains_key("time"))
        {
            docker_events::decode(&value, l)
        } else if obj.contains_key("labels") && obj.contains_key("value") {
            prometheus::decode(&value, l)
        } else {
            Err(Reject::new(
                RejectReason::UnknownFormat,
                "no known format has these keys",
            ))
        }
    }
}

/// Rejects lines nested deeper than `max` without parsing them (a byte scan that skips
/// string contents). serde_json would stop at 128 levels; herd's formats need far fewer.
fn check_depth(line: &[u8], max: usize) -> Result<(), Reject> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in line {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
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

/// Reads a string field, bounded.
pub(crate) fn str_field(v: &Value, key: &str, l: &Limits) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(|s| bounded(s.to_owned(), l.max_string_bytes))
}

/// Reads a string → string map (labels, attributes), bounded in count and size.
pub(crate) fn string_map(
    v: Option<&Value>,
    l: &Limits,
    skip: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, Reject> {
    let mut out = std::collections::BTreeMap::new();
    let Some(Value::Object(m)) = v else {
        return Ok(out);
    };
    if m.len() > l.max_items {
        return Err(Reject::new(
            RejectReason::TooManyItems,
            format!("{} labels > {}", m.len(), l.max_items),
        ));
    }
    for (k, val) in m {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let s = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        out.insert(
            bounded(k.clone(), l.max_string_bytes),
            bounded(s, l.max_string_bytes),
        );
    }
    Ok(out)
}

/// Parses an event time that may be an RFC 3339 string or an epoch number.
pub(crate) fn parse_ts(v: Option<&Value>) -> Result<i64, Reject> {
    let ts = match v {
        Some(Value::String(s)) => crate::time::parse_rfc3339_ms(s)
            .or_else(|| s.parse::<i64>().ok().and_then(crate::time::epoch_to_ms)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => crate::time::epoch_to_ms(i),
            None => n.as_f64().and_then(crate::time::epoch_secs_f64_to_ms),
        },
        _ => None,
    };
    ts.ok_or_else(|| {
        Reject::new(
            RejectReason::InvalidTimestamp,
            format!(
                "unusable time {}",
                v.map_or("(absent)".into(), |v| v.to_string())
            ),
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

/// A container reference from fields that every format carries.
pub(crate) fn container_ref(
    id: String,
    name: Option<String>,
    image: String,
    labels: std::collections::BTreeMap<String, String>,
    host: Option<String>,
) -> ContainerRef {
    let (image, digest) = split_image(&image);
    ContainerRef {
        id,
        name: name.map(|n| n.trim_start_matches('/').to_owned()),
        image,
        image_digest: digest,
        labels,
        host,
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
