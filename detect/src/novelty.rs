//! Categorical items from events, and how new they are for the group.

use herd_baseline::{ItemKind, Phase, Prior, normalize_item};
use herd_ingest::Event;
use herd_ingest::inventory::{path_pattern, sensitive};

/// The items an event shows, with the kind each belongs to.
pub(crate) fn items_of(ev: &Event) -> Vec<(ItemKind, String)> {
    match ev {
        Event::Exec { process, args, .. } => {
            let mut cmd = process.clone();
            for a in args {
                cmd.push(' ');
                cmd.push_str(a);
            }
            vec![(ItemKind::ExecCommand, normalize_item(&cmd))]
        }
        Event::Process { process, .. } => vec![(ItemKind::Executable, normalize_item(process))],
        Event::Connect { dest } => vec![(ItemKind::Destination, dest.clone())],
        Event::Listen { port } => vec![(ItemKind::ListenPort, port.to_string())],
        Event::FileWrite { path } => vec![(ItemKind::FileWrite, normalize_item(path))],
        Event::FsChanges {
            added,
            changed,
            deleted,
            ..
        } => {
            let mut v = Vec::new();
            for (verb, list) in [("added", added), ("changed", changed), ("deleted", deleted)] {
                for path in list {
                    let pattern = path_pattern(path);
                    if sensitive(path) || sensitive(&pattern) {
                        v.push((ItemKind::SensitiveFile, format!("{verb} {pattern}")));
                    } else if verb == "added" {
                        v.push((ItemKind::FileAdded, pattern));
                    }
                }
            }
            v.sort();
            v.dedup();
            v
        }
        Event::Processes { processes, .. } => {
            let mut v: Vec<(ItemKind, String)> = processes
                .iter()
                .map(|p| (ItemKind::Process, normalize_item(&p.process)))
                .collect();
            v.sort();
            v.dedup();
            v
        }
        Event::Falco {
            rule,
            process,
            dest,
            ..
        } => {
            let proc_name = process
                .as_deref()
                .map(|p| p.rsplit('/').next().unwrap_or(p))
                .unwrap_or("-");
            let mut v = vec![(ItemKind::FalcoRule, format!("{rule} | {proc_name}"))];
            if let Some(p) = process {
                v.push((ItemKind::Executable, normalize_item(p)));
            }
            if let Some(d) = dest {
                v.push((ItemKind::Destination, d.clone()));
            }
            v
        }
        _ => Vec::new(),
    }
}

/// What to do with one observation of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Known behaviour, or nothing to compare with yet.
    Quiet,
    /// Never seen in a locked group: alert now.
    Novel,
    /// Never seen while learning, with siblings to compare: alert unless one of them
    /// shows it within the corroboration window.
    Corroborate,
    /// A `docker exec` of a new command where no sibling can vouch for it: alert now,
    /// at lower confidence than a locked group's.
    LoneExec,
}

/// Judges an item against what the group knew before this observation.
pub(crate) fn judge(
    kind: ItemKind,
    prior: &Prior,
    phase: Phase,
    live: usize,
    min_peers: usize,
) -> Verdict {
    if prior.stats.is_some() {
        // Seen before in this group: on this replica (a repeat) or on siblings (their
        // behaviour vouches for it).
        return Verdict::Quiet;
    }
    match phase {
        Phase::Warmup => Verdict::Quiet,
        Phase::Locked => Verdict::Novel,
        Phase::Learning if live >= min_peers => Verdict::Corroborate,
        Phase::Learning if kind == ItemKind::ExecCommand => Verdict::LoneExec,
        Phase::Learning => Verdict::Quiet,
    }
}

/// ATT&CK technique ids among Falco tags (`T1059`, `T1059.004`).
pub(crate) fn attack_ids(tags: &[String]) -> impl Iterator<Item = &String> {
    tags.iter().filter(|t| {
        let b = t.as_bytes();
        b.len() >= 5 && b[0] == b'T' && b[1..5].iter().all(u8::is_ascii_digit)
    })
}

/// Falco priorities from most to least severe, lower-cased.
pub(crate) fn falco_rank(priority: &str) -> u8 {
    match priority.to_ascii_lowercase().as_str() {
        "emergency" => 7,
        "alert" => 6,
        "critical" => 5,
        "error" => 4,
        "warning" => 3,
        "notice" => 2,
        "informational" | "info" => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falco_event_yields_rule_process_and_destination() {
        let ev = Event::Falco {
            rule: "Redirect STDOUT/STDIN to Network Connection in Container".into(),
            priority: "Notice".into(),
            process: Some("/bin/sh".into()),
            cmdline: None,
            user: None,
            dest: Some("203.0.113.7:4444".into()),
            tags: vec!["T1059".into(), "mitre_execution".into()],
        };
        let items = items_of(&ev);
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            (
                ItemKind::FalcoRule,
                "Redirect STDOUT/STDIN to Network Connection in Container | sh".into()
            )
        );
        let Event::Falco { tags, .. } = &ev else {
            return;
        };
        assert_eq!(attack_ids(tags).collect::<Vec<_>>(), vec!["T1059"]);
    }

    #[test]
    fn verdicts_follow_phase_and_peers() {
        let none = Prior { stats: None };
        assert_eq!(
            judge(ItemKind::Executable, &none, Phase::Warmup, 5, 3),
            Verdict::Quiet
        );
        assert_eq!(
            judge(ItemKind::Executable, &none, Phase::Locked, 1, 3),
            Verdict::Novel
        );
        assert_eq!(
            judge(ItemKind::Executable, &none, Phase::Learning, 5, 3),
            Verdict::Corroborate
        );
        assert_eq!(
            judge(ItemKind::Executable, &none, Phase::Learning, 1, 3),
            Verdict::Quiet
        );
        assert_eq!(
            judge(ItemKind::ExecCommand, &none, Phase::Learning, 1, 3),
            Verdict::LoneExec
        );
    }
}
