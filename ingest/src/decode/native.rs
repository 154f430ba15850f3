//! herd's native JSON lines (the public contract in docs/formats.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use serde_json::value::RawValue;

use super::{Limits, Obj, Record, Reject, RejectReason, bounded, parse_ts, raw_f64, string_map};
use crate::model::{ContainerRef, Event, MetricName, Observation, Payload};

/// The native line as written by [`encode_native`]: the observation flattened.
#[derive(Debug, Serialize)]
pub struct NativeLine<'a> {
    /// RFC 3339 event time.
    pub ts: String,
    /// Host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// Full container id.
    pub container_id: &'a str,
    /// Container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<&'a str>,
    /// Image reference.
    pub image: &'a str,
    /// Image digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<&'a str>,
    /// Labels.
    #[serde(skip_serializing_if = "crate::Labels::is_empty")]
    pub labels: &'a crate::Labels,
    /// Metrics, when the observation is numeric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<BTreeMap<&'a str, f64>>,
    /// Event, when the observation is an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a Event>,
}

/// Writes an observation as one native JSON line (no trailing newline). Non-finite metric
/// values cannot be represented in JSON and are left out.
pub fn encode_native(o: &Observation) -> String {
    let c = &o.container;
    let (metrics, event) = match &o.payload {
        Payload::Metrics(m) => (
            Some(
                m.iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(k, v)| (k.as_ref(), *v))
                    .collect(),
            ),
            None,
        ),
        Payload::Event(e) => (None, Some(e)),
    };
    let line = NativeLine {
        ts: crate::time::format_ms(o.ts_ms),
        host: c.host.as_deref(),
        container_id: &c.id,
        container_name: c.name.as_deref(),
        image: &c.image,
        image_digest: c.image_digest.as_deref(),
        labels: &c.labels,
        metrics,
        event,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

pub(super) fn decode(v: &Obj<'_>, l: &Limits) -> Result<Record, Reject> {
    let ts_ms = parse_ts(v.get("ts"))?;
    let id = v
        .str("container_id", l)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "container_id"))?;
    let image = v
        .str("image", l)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "image"))?;
    let payload = match (v.get("metrics"), v.get("event")) {
        (Some(m), None) => Payload::Metrics(metrics(m, l)?),
        (None, Some(e)) => Payload::Event(event(e, l)?),
        _ => {
            return Err(Reject::new(
                RejectReason::MissingField,
                "exactly one of metrics / event",
            ));
        }
    };
    let container = ContainerRef {
        id: id.into(),
        name: v.str("container_name", l).map(Into::into),
        image: image.into(),
        image_digest: v
            .str("image_digest", l)
            .filter(|s| !s.is_empty())
            .map(Into::into),
        labels: string_map(v.get("labels"), l, &[])?.into(),
        host: v.str("host", l).map(Into::into),
    };
    Ok(Record::Native(Observation {
        ts_ms,
        container: Arc::new(container),
        payload,
    }))
}

fn metrics(v: &RawValue, l: &Limits) -> Result<Vec<(MetricName, f64)>, Reject> {
    let Some(m) = Obj::parse(v)? else {
        return Err(Reject::new(
            RejectReason::MissingField,
            "metrics is not an object",
        ));
    };
    if m.len() > l.max_items {
        return Err(Reject::new(
            RejectReason::TooManyItems,
            format!("{} metrics > {}", m.len(), l.max_items),
        ));
    }
    // Sorted by name, first of repeated names wins: the same for every producer.
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (k, val) in m.iter() {
        let x = raw_f64(val).ok_or_else(|| {
            Reject::new(
                RejectReason::InvalidValue,
                format!("metric {k} is not a number"),
            )
        })?;
        out.entry(bounded(k.to_owned(), 128)).or_insert(x);
    }
    Ok(out.into_iter().map(|(k, x)| (k.into(), x)).collect())
}

fn event(v: &RawValue, l: &Limits) -> Result<Event, Reject> {
    let ev: Event = serde_json::from_str(v.get())
        .map_err(|e| Reject::new(RejectReason::InvalidValue, format!("event: {e}")))?;
    // An inventory longer than the item limit is refused whole, not cut short: a
    // producer summarises its inventories (docs/formats.md), and a cut would hide the
    // entries past it.
    let lists: &[(&str, usize)] = match &ev {
        Event::FsChanges {
            added,
            changed,
            deleted,
            ..
        } => &[
            ("added", added.len()),
            ("changed", changed.len()),
            ("deleted", deleted.len()),
        ],
        Event::Processes { processes, .. } => &[("processes", processes.len())],
        _ => &[],
    };
    if let Some((name, n)) = lists.iter().find(|(_, n)| *n > l.max_items) {
        return Err(Reject::new(
            RejectReason::TooManyItems,
            format!("event.{name}: {n} items > {}", l.max_items),
        ));
    }
    Ok(bound_event(ev, l))
}

/// Applies the string limits to every string inside an event.
pub(crate) fn bound_event(ev: Event, l: &Limits) -> Event {
    let b = |s: String| bounded(s, l.max_string_bytes);
    let bo = |s: Option<String>| s.map(|s| bounded(s, l.max_string_bytes));
    let bv = |v: Vec<String>| {
        v.into_iter()
            .take(l.max_items)
            .map(|s| bounded(s, l.max_string_bytes))
            .collect()
    };
    match ev {
        Event::Exec {
            process,
            args,
            user,
        } => Event::Exec {
            process: b(process),
            args: bv(args),
            user: bo(user),
        },
        Event::Process {
            process,
            args,
            user,
            parent,
        } => Event::Process {
            process: b(process),
            args: bv(args),
            user: bo(user),
            parent: bo(parent),
        },
        Event::Connect { dest } => Event::Connect { dest: b(dest) },
        Event::FileWrite { path } => Event::FileWrite { path: b(path) },
        Event::FsChanges {
            added,
            changed,
            deleted,
            total,
        } => Event::FsChanges {
            added: bv(added),
            changed: bv(changed),
            deleted: bv(deleted),
            total,
        },
        Event::Processes { processes, total } => Event::Processes {
            processes: processes
                .into_iter()
                .take(l.max_items)
                .map(|p| crate::model::ProcessEntry {
                    process: b(p.process),
                    user: bo(p.user),
                    parent: bo(p.parent),
                })
                .collect(),
            total,
        },
        Event::Health { status } => Event::Health { status: b(status) },
        Event::NetworkConnect { network } => Event::NetworkConnect {
            network: b(network),
        },
        Event::NetworkDisconnect { network } => Event::NetworkDisconnect {
            network: b(network),
        },
        Event::Kill { signal } => Event::Kill { signal: bo(signal) },
        Event::Falco {
            rule,
            priority,
            process,
            cmdline,
            user,
            dest,
            tags,
        } => Event::Falco {
            rule: b(rule),
            priority: b(priority),
            process: bo(process),
            cmdline: bo(cmdline),
            user: bo(user),
            dest: bo(dest),
            tags: bv(tags),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;

    #[test]
    fn decodes_both_contract_examples() {
        let d = Decoder::default();
        let a = br#"{"ts":"2026-11-23T10:00:00Z","host":"node-1","container_id":"8f2c","container_name":"web-1","image":"shop/web:1.4","image_digest":"sha256:ab","labels":{"io.kubernetes.pod.namespace":"shop"},"metrics":{"cpu_cores":0.42,"mem_bytes":1.3e8}}"#;
        let Ok(Record::Native(o)) = d.decode(a) else {
            panic!("not native")
        };
        assert_eq!(o.ts_ms, 1_795_428_000_000);
        assert_eq!(o.container.image_digest.as_deref(), Some("sha256:ab"));
        assert_eq!(
            o.payload,
            Payload::Metrics(vec![
                ("cpu_cores".into(), 0.42),
                ("mem_bytes".into(), 1.3e8)
            ])
        );
        let b = br#"{"ts":1763892000000,"container_id":"8f2c","image":"shop/web:1.4","event":{"kind":"exec","process":"/bin/sh","args":["-c","id"],"user":"root"}}"#;
        let Ok(Record::Native(o)) = d.decode(b) else {
            panic!("not native")
        };
        assert!(matches!(o.payload, Payload::Event(Event::Exec { .. })));
    }

    #[test]
    fn rejects_contract_violations_with_reasons() {
        let d = Decoder::default();
        let cases: [(&[u8], RejectReason); 5] = [
            (br#"{"ts":"x","container_id":"a","image":"i","metrics":{}}"#, RejectReason::InvalidTimestamp),
            (br#"{"ts":1763892000000,"container_id":"","image":"i","metrics":{}}"#, RejectReason::MissingField),
            (br#"{"ts":1763892000000,"container_id":"a","image":"i"}"#, RejectReason::MissingField),
            (br#"{"ts":1763892000000,"container_id":"a","image":"i","metrics":{"x":"1"}}"#, RejectReason::InvalidValue),
            (br#"{"ts":1763892000000,"container_id":"a","image":"i","event":{"kind":"teleport"}}"#, RejectReason::InvalidValue),
        ];
        for (line, reason) in cases {
            assert_eq!(d.decode(line).map_err(|r| r.reason).err(), Some(reason));
        }
    }

    #[test]
    fn inventories_decode_round_trip_and_are_refused_whole_beyond_the_item_limit() {
        let d = Decoder::default();
        let diff = br#"{"ts":"2026-11-23T10:05:00Z","container_id":"8f2c","image":"shop/web:1.4","event":{"kind":"fs_changes","added":["/tmp/.x","/tmp/.x/xmrig"],"changed":["/etc/passwd"],"deleted":["/usr/bin/wget"],"total":4}}"#;
        let Ok(Record::Native(o)) = d.decode(diff) else {
            panic!("not native")
        };
        let Payload::Event(Event::FsChanges { added, total, .. }) = &o.payload else {
            panic!("{:?}", o.payload)
        };
        assert_eq!(added, &["/tmp/.x", "/tmp/.x/xmrig"]);
        assert_eq!(*total, Some(4));
        let again = encode_native(&o);
        assert_eq!(d.decode(again.as_bytes()).ok(), Some(Record::Native(o)));
        let top = br#"{"ts":"2026-11-23T10:05:00Z","container_id":"8f2c","image":"shop/web:1.4","event":{"kind":"processes","processes":[{"process":"nginx","user":"root"},{"process":"nginx","user":"www-data","parent":"nginx"}]}}"#;
        let Ok(Record::Native(o)) = d.decode(top) else {
            panic!("not native")
        };
        assert!(
            matches!(&o.payload, Payload::Event(Event::Processes { processes, .. }) if processes.len() == 2)
        );
        // An unknown field of a process is a typo, not data to drop.
        let typo = br#"{"ts":1763892000000,"container_id":"a","image":"i","event":{"kind":"processes","processes":[{"proces":"sh"}]}}"#;
        assert_eq!(
            d.decode(typo).map_err(|r| r.reason).err(),
            Some(RejectReason::InvalidValue)
        );
        let small = Decoder::new(Limits {
            max_items: 2,
            ..Limits::default()
        });
        let three = br#"{"ts":1763892000000,"container_id":"a","image":"i","event":{"kind":"fs_changes","added":["/a","/b","/c"]}}"#;
        let r = small
            .decode(three)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(r.reason, RejectReason::TooManyItems);
        assert!(r.detail.contains("event.added"), "{}", r.detail);
    }
}
