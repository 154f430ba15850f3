//! prometheus-kafka-adapter JSON lines (`{"timestamp","value","name","labels"}`), as
//! produced from Prometheus `remote_write` of cAdvisor's `container_*` series.

use std::collections::BTreeMap;

use super::{Limits, Obj, Record, Reject, RejectReason, bounded, raw_f64, raw_string, string_map};

/// One sample of one series about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct PromRecord {
    /// Sample time.
    pub ts_ms: i64,
    /// Series name (`__name__`).
    pub name: String,
    /// Sample value (may be non-finite: Prometheus allows NaN; the normaliser drops it).
    pub value: f64,
    /// Full container id, from cAdvisor's `id` cgroup path.
    pub container_id: String,
    /// `name` label: the container name.
    pub container_name: Option<String>,
    /// `image` label.
    pub image: Option<String>,
    /// `instance` label, taken as the host.
    pub host: Option<String>,
    /// Container labels (`container_label_*`, prefix stripped) and Kubernetes identity.
    pub labels: BTreeMap<String, String>,
    /// Interface or device label, so per-interface counters are kept apart.
    pub series_discriminator: Option<String>,
}

/// Extracts a container id from a cgroup path (`/docker/<id>`,
/// `/system.slice/docker-<id>.scope`, `/kubepods/.../cri-containerd-<id>.scope`).
pub(crate) fn container_id_from_cgroup(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let last = last.strip_suffix(".scope").unwrap_or(last);
    let id = last.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

pub(super) fn decode(v: &Obj<'_>, l: &Limits) -> Result<Record, Reject> {
    let ts_ms = super::parse_ts(v.get("timestamp"))?;
    let labels = string_map(v.get("labels"), l, &[])?;
    let name = labels
        .get("__name__")
        .cloned()
        .or_else(|| v.str("name", l))
        .ok_or_else(|| Reject::new(RejectReason::MissingField, "__name__"))?;
    let value = v
        .get("value")
        .and_then(|raw| match raw_string(raw) {
            Some(s) => parse_prom_float(&s),
            None => raw_f64(raw),
        })
        .ok_or_else(|| Reject::new(RejectReason::InvalidValue, "value"))?;
    if !name.starts_with("container_") {
        return Ok(Record::Filtered {
            ts_ms: Some(ts_ms),
            reason: "not_a_container_series",
        });
    }
    let Some(container_id) = labels
        .get("id")
        .and_then(|p| container_id_from_cgroup(p))
        .map(str::to_owned)
    else {
        return Ok(Record::Filtered {
            ts_ms: Some(ts_ms),
            reason: "cgroup_is_not_a_container",
        });
    };
    let mut out = BTreeMap::new();
    for (k, val) in &labels {
        if let Some(stripped) = k.strip_prefix("container_label_") {
            out.insert(stripped.to_owned(), val.clone());
        }
    }
    for (from, to) in [
        ("namespace", "io.kubernetes.pod.namespace"),
        ("pod", "io.kubernetes.pod.name"),
    ] {
        if let Some(x) = labels.get(from) {
            out.insert(to.to_owned(), x.clone());
        }
    }
    let series_discriminator = labels
        .get("interface")
        .or_else(|| labels.get("device"))
        .cloned();
    Ok(Record::Prom(Box::new(PromRecord {
        ts_ms,
        name: bounded(name, 128),
        value,
        container_id,
        container_name: labels
            .get("name")
            .or_else(|| labels.get("container"))
            .cloned(),
        image: labels.get("image").filter(|s| !s.is_empty()).cloned(),
        host: labels.get("instance").cloned(),
        labels: out,
        series_discriminator,
    })))
}

fn parse_prom_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;

    pub(crate) const CPU: &str = r#"{"timestamp":"2026-11-23T10:00:00Z","value":"12.5","name":"container_cpu_usage_seconds_total","labels":{"__name__":"container_cpu_usage_seconds_total","cpu":"total","id":"/system.slice/docker-8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f.scope","image":"shop/web:1.4","instance":"node-1:8080","job":"cadvisor","name":"web-1","container_label_app":"web"}}"#;

    #[test]
    fn decodes_a_cadvisor_counter() {
        let Ok(Record::Prom(p)) = Decoder::default().decode(CPU.as_bytes()) else {
            panic!("not prom")
        };
        assert_eq!(p.value, 12.5);
        assert_eq!(p.container_id.len(), 64);
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(p.image.as_deref(), Some("shop/web:1.4"));
    }

    #[test]
    fn cgroup_paths() {
        let id = "8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f8f2c1a2b3c4d5e6f";
        assert_eq!(container_id_from_cgroup(&format!("/docker/{id}")), Some(id));
        assert_eq!(
            container_id_from_cgroup(&format!(
                "/kubepods/burstable/pod1/cri-containerd-{id}.scope"
            )),
            Some(id)
        );
        assert_eq!(container_id_from_cgroup("/"), None);
        assert_eq!(container_id_from_cgroup("/system.slice/ssh.service"), None);
    }
}
