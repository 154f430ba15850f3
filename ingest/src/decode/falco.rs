//! Falco JSON output as falcosidekick writes it to Kafka.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::{
    Limits, Obj, Record, Reject, RejectReason, bounded, native::bound_event, raw_scalar, raw_string,
};
use crate::model::Event;

/// A Falco alert about a container.
#[derive(Debug, Clone, PartialEq)]
pub struct FalcoRecord {
    /// Event time.
    pub ts_ms: i64,
    /// `container.id`: Falco's 12-character short id (or a full one).
    pub container_id: String,
    /// `container.name`.
    pub container_name: Option<String>,
    /// `container.image.repository` and `:tag`, when present.
    pub image: Option<String>,
    /// `container.image.digest`.
    pub image_digest: Option<String>,
    /// `hostname` (falcosidekick) or `host`.
    pub host: Option<String>,
    /// `k8s.*` output fields, as labels with their Kubernetes names.
    pub k8s: BTreeMap<String, String>,
    /// The typed event.
    pub event: Event,
}

/// A Falco output field: strings (but not Falco's empty `<NA>`) and numbers.
fn field(of: &Obj<'_>, key: &str, l: &Limits) -> Option<String> {
    let raw = of.get(key)?;
    match raw_string(raw) {
        Some(s) if !s.is_empty() && s != "<NA>" => Some(bounded(s, l.max_string_bytes)),
        Some(_) => None,
        None if raw.get().trim_start().starts_with('"') => None,
        None => raw_scalar(raw).filter(|s| !matches!(s.as_str(), "true" | "false")),
    }
}

pub(super) fn decode(v: &Obj<'_>, l: &Limits) -> Result<Record, Reject> {
    let of = v
        .obj("output_fields")?
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "output_fields"))?;
    let ts_ms = match v.get("time") {
        Some(t) => super::parse_ts(Some(t))?,
        None => super::parse_ts(of.get("evt.time"))?,
    };
    let of = &of;
    let Some(container_id) = field(of, "container.id", l) else {
        return Ok(Record::Filtered {
            ts_ms: Some(ts_ms),
            reason: "falco_without_container",
        });
    };
    if container_id == "host" {
        return Ok(Record::Filtered {
            ts_ms: Some(ts_ms),
            reason: "falco_host_event",
        });
    }
    let rule = v
        .str("rule", l)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "rule"))?;
    let priority = v.str("priority", l).unwrap_or_else(|| "Notice".into());
    let image = field(of, "container.image.repository", l).map(|repo| {
        match field(of, "container.image.tag", l) {
            Some(tag) => format!("{repo}:{tag}"),
            None => repo,
        }
    });
    let dest = match (field(of, "fd.sip", l), field(of, "fd.sport", l)) {
        (Some(ip), Some(port)) => Some(format!("{ip}:{port}")),
        (Some(ip), None) => Some(ip),
        _ => {
            field(of, "fd.rip", l).or_else(|| field(of, "fd.name", l).filter(|n| n.contains("->")))
        }
    };
    let tags: Vec<String> = v
        .get("tags")
        .and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
        .map(|items| items.into_iter().filter_map(raw_string).collect())
        .unwrap_or_default();
    let mut k8s = BTreeMap::new();
    for (from, to) in [
        ("k8s.ns.name", "io.kubernetes.pod.namespace"),
        ("k8s.pod.name", "io.kubernetes.pod.name"),
    ] {
        if let Some(x) = field(of, from, l) {
            k8s.insert(to.to_owned(), x);
        }
    }
    let event = bound_event(
        Event::Falco {
            rule,
            priority,
            process: field(of, "proc.exepath", l).or_else(|| field(of, "proc.name", l)),
            cmdline: field(of, "proc.cmdline", l),
            user: field(of, "user.name", l),
            dest,
            tags,
        },
        l,
    );
    Ok(Record::Falco(Box::new(FalcoRecord {
        ts_ms,
        container_id,
        container_name: field(of, "container.name", l),
        image,
        image_digest: field(of, "container.image.digest", l),
        host: field(v, "hostname", l).or_else(|| field(v, "host", l)),
        k8s,
        event,
    })))
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;

    pub(crate) const SHELL: &str = r#"{"uuid":"6a4e1c1e-8c1f-4d4b-9a55-1b2c3d4e5f60","output":"10:00:00.000000000: Notice Redirect stdout/stdin to network connection (user=root process=sh connection=10.0.0.9:41234->203.0.113.7:4444 container_id=8f2c1a2b3c4d image=shop/web)","priority":"Notice","rule":"Redirect STDOUT/STDIN to Network Connection in Container","time":"2026-11-23T10:00:00.000000000Z","output_fields":{"container.id":"8f2c1a2b3c4d","container.image.repository":"shop/web","container.image.tag":"1.4","container.name":"web-1","evt.time":1795428000000000000,"fd.name":"10.0.0.9:41234->203.0.113.7:4444","fd.sip":"203.0.113.7","fd.sport":4444,"proc.cmdline":"sh -i","proc.exepath":"/bin/sh","proc.name":"sh","proc.pname":"nginx","user.name":"root","k8s.ns.name":"shop","k8s.pod.name":"web-1"},"source":"syscall","tags":["container","network","mitre_execution","T1059"],"hostname":"node-1"}"#;

    #[test]
    fn decodes_a_reverse_shell_alert() {
        let Ok(Record::Falco(f)) = Decoder::default().decode(SHELL.as_bytes()) else {
            panic!("not falco")
        };
        assert_eq!(f.container_id, "8f2c1a2b3c4d");
        assert_eq!(f.image.as_deref(), Some("shop/web:1.4"));
        assert_eq!(f.host.as_deref(), Some("node-1"));
        let Event::Falco {
            process,
            dest,
            tags,
            ..
        } = &f.event
        else {
            panic!()
        };
        assert_eq!(process.as_deref(), Some("/bin/sh"));
        assert_eq!(dest.as_deref(), Some("203.0.113.7:4444"));
        assert!(tags.iter().any(|t| t == "T1059"));
    }

    #[test]
    fn host_events_are_filtered() {
        let line = SHELL.replace(
            r#""container.id":"8f2c1a2b3c4d""#,
            r#""container.id":"host""#,
        );
        assert!(matches!(
            Decoder::default().decode(line.as_bytes()),
            Ok(Record::Filtered { .. })
        ));
    }
}
