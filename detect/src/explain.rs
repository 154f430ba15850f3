//! One human sentence per alert, from its evidence.

use crate::alert::{Alert, Detector, FeatureEvidence};

/// Formats a feature value with a unit a person reads at a glance.
pub fn fmt_value(feature: &str, x: f64) -> String {
    let bytes = |x: f64| {
        let a = x.abs();
        if a >= 1024.0 * 1024.0 * 1024.0 {
            format!("{:.2} GiB", x / (1024.0 * 1024.0 * 1024.0))
        } else if a >= 1024.0 * 1024.0 {
            format!("{:.1} MiB", x / (1024.0 * 1024.0))
        } else if a >= 1024.0 {
            format!("{:.1} KiB", x / 1024.0)
        } else {
            format!("{x:.0} B")
        }
    };
    match feature {
        "cpu_cores" => format!("{x:.2} cores"),
        "mem_bytes" => bytes(x),
        "mem_limit_ratio" => format!("{:.0}% of its memory limit", x * 100.0),
        f if f.ends_with("bytes_per_s") => format!("{}/s", bytes(x)),
        f if f.ends_with("_per_s") => format!("{x:.1}/s"),
        "pids" => format!("{x:.0} processes"),
        _ => sig3(x),
    }
}

fn sig3(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

fn feature_phrase(f: &FeatureEvidence) -> String {
    let v = fmt_value(&f.name, f.value);
    let range = f
        .expected
        .map(|[lo, hi]| format!("{}–{}", fmt_value(&f.name, lo), fmt_value(&f.name, hi)));
    if let (Some(shift), Some(p)) = (f.fleet_shift, &f.peers) {
        let range = f.expected.map_or(String::new(), |[lo, hi]| {
            format!(
                " (usual range {}–{})",
                fmt_value(&f.name, lo),
                fmt_value(&f.name, hi)
            )
        });
        return format!(
            "and all {} live replicas of its image moved {} to a median of {}{range}, {:.1}x beyond what their other metrics explain",
            p.n,
            f.name,
            fmt_value(&f.name, p.median),
            shift.exp()
        );
    }
    if let Some(st) = f.structure {
        let modes = match st.modes {
            1 => "the one mode".to_owned(),
            n => format!("the {n} modes"),
        };
        let corr = if st.off_axis >= 0.5 {
            ", breaking the usual correlation of its metrics"
        } else if st.beside_peers {
            ", and it stood out from its live replicas, which had moved too"
        } else {
            ""
        };
        return format!(
            "its metrics together fit none of {modes} its image shows in the retrained history: {} was {v} where the nearest mode ({:.0}% of the time) has {}{corr}",
            f.name,
            st.nearest_share * 100.0,
            fmt_value(&f.name, st.mode_value)
        );
    }
    if let Some([recent, usual]) = f.roughness {
        let how = if recent < usual { "flat" } else { "jittery" };
        return format!(
            "{} has gone unusually {how}: it moved by {} per sample lately, against a usual {}",
            f.name,
            fmt_value(&f.name, recent),
            fmt_value(&f.name, usual)
        );
    }
    match (&f.peers, f.step, range) {
        (Some(p), _, Some(r)) => format!(
            "{} was {v} while the median of its {} live replicas was {} (spread {}; usual range {r})",
            f.name,
            p.n,
            fmt_value(&f.name, p.median),
            fmt_value(&f.name, p.spread)
        ),
        (Some(p), _, None) => format!(
            "{} was {v} while the median of its {} live replicas was {}",
            f.name,
            p.n,
            fmt_value(&f.name, p.median)
        ),
        (None, Some(step), Some(r)) => format!(
            "{} changed by {} to {v} (usual range {r})",
            f.name,
            fmt_value(&f.name, step)
        ),
        (None, _, Some(r)) => format!("{} was {v}, outside its usual range {r}", f.name),
        (None, _, None) => format!("{} was {v}", f.name),
    }
}

/// The sentence: who, what is off and by how much, and what to compare it with.
pub fn explain(a: &Alert) -> String {
    let who = format!("{} ({})", a.container_name, a.image);
    let mut parts: Vec<String> = Vec::new();
    // A sensitive path leads (credentials, binaries); otherwise the first item found.
    let lead = a
        .novel
        .iter()
        .find(|n| n.marked.is_some())
        .or_else(|| a.novel.iter().find(|n| n.kind == "sensitive_file"))
        .or_else(|| a.novel.first());
    if let Some(n) = lead {
        let what = match n.kind.as_str() {
            "exec_command" => format!("had `{}` run in it through docker exec", n.value),
            "executable" => format!("ran `{}`", n.value),
            "falco_rule" => format!("triggered Falco rule `{}`", n.value),
            "destination" => format!("connected to {}", n.value),
            "listen_port" => format!("listened on port {}", n.value),
            "file_write" => format!("wrote {}", n.value),
            "file_added" => format!("had {} added to its filesystem", n.value),
            "sensitive_file" => match n.value.split_once(' ') {
                Some((verb, path)) => format!("had {path} {verb}, a sensitive path"),
                None => format!("touched sensitive path {}", n.value),
            },
            "process" => format!("was running process `{}`", n.value),
            other => format!("showed {other} `{}`", n.value),
        };
        let why = if let Some(incident) = &n.marked {
            format!("behaviour judged malicious in incident {incident}")
        } else if n.phase == "locked" {
            format!(
                "never seen on any replica of this image before ({} live)",
                n.replicas
            )
        } else {
            format!(
                "which none of its {} sibling replicas did",
                n.replicas.saturating_sub(1)
            )
        };
        parts.push(format!("{what}, {why}"));
    }
    if let Some(f) = a.features.first() {
        parts.push(feature_phrase(f));
    }
    for e in a.events.iter().take(2) {
        parts.push(e.clone());
    }
    if parts.is_empty() {
        parts.push(
            a.detectors
                .iter()
                .map(|d: &Detector| d.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let more = a.novel.len().saturating_sub(1) + a.features.len().saturating_sub(1);
    let tail = match more {
        0 => String::new(),
        1 => " (1 more finding in this alert)".to_owned(),
        n => format!(" ({n} more findings in this alert)"),
    };
    format!("{who} {}{tail}.", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(fmt_value("cpu_cores", 1.234), "1.23 cores");
        assert_eq!(fmt_value("mem_bytes", 150.0 * 1048576.0), "150.0 MiB");
        assert_eq!(fmt_value("net_tx_bytes_per_s", 2048.0), "2.0 KiB/s");
        assert_eq!(fmt_value("value", 1234.5678), "1235");
        assert_eq!(fmt_value("value", 0.012345), "0.0123");
    }
}
