//! Docker Engine events JSON (`GET /events`), current (`Type`/`Action`/`Actor`) and legacy
//! (`status`/`id`/`from`) shapes.

use std::collections::BTreeMap;

use super::{Limits, Obj, Record, Reject, RejectReason, bounded, split_image, string_map};
use crate::model::Event;

/// A container event, with the attributes the registry needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerEventRecord {
    /// Event time.
    pub ts_ms: i64,
    /// Full container id.
    pub id: String,
    /// Container name, from the attributes.
    pub name: Option<String>,
    /// Image reference, from the attributes (`start` and most container events carry it).
    pub image: Option<String>,
    /// Image digest, when the image attribute is a digest reference.
    pub image_digest: Option<String>,
    /// Container labels (the attributes less Docker's own keys).
    pub labels: BTreeMap<String, String>,
    /// Exec id, so `exec_create` and `exec_start` of one exec count once.
    pub exec_id: Option<String>,
    /// The typed event.
    pub event: Event,
}

/// Attribute keys Docker adds that are not container labels.
const DOCKER_KEYS: [&str; 9] = [
    "privileged",
    "capAdd",
    "image",
    "name",
    "exitCode",
    "execID",
    "signal",
    "execDuration",
    "container",
];

pub(super) fn decode(v: &Obj<'_>, l: &Limits) -> Result<Record, Reject> {
    let time_nano = v
        .get("timeNano")
        .and_then(|r| r.get().trim().parse::<i64>().ok());
    let ts_ms = match time_nano {
        Some(ns) if ns > 0 => crate::time::epoch_to_ms(ns)
            .ok_or_else(|| Reject::new(RejectReason::InvalidTimestamp, "timeNano"))?,
        _ => super::parse_ts(v.get("time"))?,
    };
    let legacy = !v.has("Type");
    let typ = if legacy {
        "container".to_owned()
    } else {
        v.str("Type", l).unwrap_or_default()
    };
    let action = v
        .str(if legacy { "status" } else { "Action" }, l)
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "Action"))?;
    let action = action.as_str();
    let actor = v.obj("Actor")?;
    let attrs_raw = actor.as_ref().and_then(|a| a.get("Attributes"));
    let attrs = attrs_raw.map(Obj::parse).transpose()?.flatten();
    let attr = |k: &str| attrs.as_ref().and_then(|a| a.str(k, l));
    let filtered = |reason| {
        Ok(Record::Filtered {
            ts_ms: Some(ts_ms),
            reason,
        })
    };

    let (id, event) = match typ.as_str() {
        "container" => {
            let id = if legacy {
                v.str("id", l)
            } else {
                actor.as_ref().and_then(|a| a.str("ID", l))
            }
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Reject::new(RejectReason::MissingField, "Actor.ID"))?;
            let (verb, rest) = match action.split_once(':') {
                Some((verb, rest)) => (verb.trim(), rest.trim()),
                None => (action.trim(), ""),
            };
            let event = match verb {
                // Docker's own event says nothing of privileges; herd's agent adds them
                // from the container's inspect.
                "start" => Event::Start {
                    privileged: attr("privileged").map(|p| p == "true"),
                },
                "die" => Event::Die {
                    exit_code: attr("exitCode").and_then(|s| s.parse().ok()),
                },
                "oom" => Event::Oom,
                "kill" => Event::Kill {
                    signal: attr("signal"),
                },
                "restart" => Event::Restart,
                "exec_create" | "exec_start" => {
                    let mut words = rest.split_whitespace().take(l.max_items);
                    let Some(process) = words.next() else {
                        return filtered("exec_without_command");
                    };
                    Event::Exec {
                        process: bounded(process.to_owned(), l.max_string_bytes),
                        args: words
                            .map(|w| bounded(w.to_owned(), l.max_string_bytes))
                            .collect(),
                        user: None,
                    }
                }
                "health_status" => Event::Health {
                    status: bounded(rest.to_owned(), 64),
                },
                _ => return filtered("irrelevant_container_event"),
            };
            (id, event)
        }
        "network" if matches!(action, "connect" | "disconnect") => {
            let Some(id) = attr("container").filter(|s| !s.is_empty()) else {
                return filtered("network_event_without_container");
            };
            let network = attr("name").unwrap_or_default();
            let event = if action == "connect" {
                Event::NetworkConnect { network }
            } else {
                Event::NetworkDisconnect { network }
            };
            return Ok(Record::DockerEvent(DockerEventRecord {
                ts_ms,
                id,
                name: None,
                image: None,
                image_digest: None,
                labels: BTreeMap::new(),
                exec_id: None,
                event,
            }));
        }
        _ => return filtered("not_a_container_event"),
    };
    let image_attr = if legacy {
        v.str("from", l)
    } else {
        attr("image")
    };
    let (image, image_digest) = match image_attr {
        Some(i) => {
            let (i, d) = split_image(&i);
            (Some(i), d)
        }
        None => (None, None),
    };
    Ok(Record::DockerEvent(DockerEventRecord {
        ts_ms,
        id,
        name: attr("name"),
        image,
        image_digest,
        labels: string_map(attrs_raw, l, &DOCKER_KEYS)?,
        exec_id: attr("execID"),
        event,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;

    fn dec(s: &str) -> Record {
        match Decoder::default().decode(s.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn start_carries_image_and_labels() {
        let r = dec(
            r#"{"status":"start","id":"abc","from":"shop/web:1.4","Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"image":"shop/web:1.4","name":"web-1","app":"web"}},"scope":"local","time":1795428000,"timeNano":1795428000123456789}"#,
        );
        let Record::DockerEvent(e) = r else { panic!() };
        assert_eq!(e.ts_ms, 1_795_428_000_123);
        assert_eq!(e.image.as_deref(), Some("shop/web:1.4"));
        assert_eq!(e.labels.get("app").map(String::as_str), Some("web"));
        assert!(!e.labels.contains_key("name"));
        assert_eq!(e.event, Event::Start { privileged: None });
    }

    #[test]
    fn exec_die_oom_health_network() {
        let exec = dec(
            r#"{"Type":"container","Action":"exec_start: sh -c wget http://x/y","Actor":{"ID":"abc","Attributes":{"execID":"e1","image":"a:1","name":"n"}},"time":1795428000}"#,
        );
        let Record::DockerEvent(e) = exec else {
            panic!()
        };
        assert_eq!(e.exec_id.as_deref(), Some("e1"));
        assert!(
            matches!(&e.event, Event::Exec { process, args, .. } if process == "sh" && args.len() == 3)
        );
        let die = dec(
            r#"{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"137"}},"time":1795428000}"#,
        );
        let Record::DockerEvent(e) = die else {
            panic!()
        };
        assert_eq!(
            e.event,
            Event::Die {
                exit_code: Some(137)
            }
        );
        let h = dec(
            r#"{"Type":"container","Action":"health_status: unhealthy","Actor":{"ID":"abc","Attributes":{}},"time":1795428000}"#,
        );
        let Record::DockerEvent(e) = h else { panic!() };
        assert_eq!(
            e.event,
            Event::Health {
                status: "unhealthy".into()
            }
        );
        let n = dec(
            r#"{"Type":"network","Action":"disconnect","Actor":{"ID":"net1","Attributes":{"container":"abc","name":"bridge","type":"bridge"}},"time":1795428000}"#,
        );
        let Record::DockerEvent(e) = n else { panic!() };
        assert_eq!(e.id, "abc");
        assert_eq!(
            e.event,
            Event::NetworkDisconnect {
                network: "bridge".into()
            }
        );
    }

    #[test]
    fn image_events_are_filtered() {
        let r = dec(
            r#"{"Type":"image","Action":"pull","Actor":{"ID":"x","Attributes":{}},"time":1795428000}"#,
        );
        assert!(matches!(r, Record::Filtered { .. }));
    }
}
