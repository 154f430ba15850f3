//! Inventories of a container from the Docker API alone: the filesystem changes of
//! `docker diff` and the process list of `docker top`, summarised into the native
//! events [`Event::FsChanges`] and [`Event::Processes`] (docs/formats.md).
//!
//! Both become categorical behaviour of the peer group, with replica support, so what
//! every replica writes (logs, caches, pid files) must look the same on every replica:
//! [`path_pattern`] collapses the parts of a path that differ by chance (numbers,
//! hashes, temporary names) into `#` and `*`. [`sensitive`] names the paths whose change
//! is an incident however common the path (credentials, binaries, the dynamic loader's
//! configuration).
//!
//! Pure functions: the agent's collector ([`crate::collect`]) calls them with what the
//! engine answered, and so can any other producer's tests.

use std::collections::BTreeSet;

use crate::model::{Event, ProcessEntry};

/// Most path segments a pattern keeps; deeper paths end in `/…`.
pub const MAX_SEGMENTS: usize = 12;

/// A path with its accidental parts collapsed, the same on every replica that writes
/// "the same" file: runs of digits (pids, dates, counters) and hex strings of eight or
/// more (hashes, ids) become `#`; tokens that look generated (six or more characters
/// mixing letters with two or more digits, or with four or more changes of case, as
/// `mktemp` names are) become `*`. Separators (`/`, `.`, `-`, `_`) and everything else
/// are kept; repeated slashes are one; at most [`MAX_SEGMENTS`] segments. Applying it
/// to a pattern gives the same pattern.
pub fn path_pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len().min(256));
    let mut segments = 0usize;
    for seg in path.split('/') {
        if seg.is_empty() {
            continue;
        }
        if segments == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        segments += 1;
        out.push('/');
        for (k, part) in seg.split('.').enumerate() {
            if k > 0 {
                out.push('.');
            }
            if is_uuid(part) {
                out.push('#');
                continue;
            }
            let mut token = String::new();
            for ch in part.chars() {
                if ch.is_ascii_alphanumeric() {
                    token.push(ch);
                } else {
                    push_token(&mut out, &token);
                    token.clear();
                    out.push(ch);
                }
            }
            push_token(&mut out, &token);
        }
    }
    if out.is_empty() && path.starts_with('/') {
        out.push('/');
    }
    if !path.starts_with('/') && out.starts_with('/') {
        // A relative path (not Docker's) keeps its shape without the leading slash.
        out.remove(0);
    }
    out
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn push_token(out: &mut String, t: &str) {
    if t.is_empty() {
        return;
    }
    let b = t.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.len() - digits;
    if digits == b.len() {
        out.push('#');
        return;
    }
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        out.push('#');
        return;
    }
    let case_changes = b
        .windows(2)
        .filter(|w| {
            w[0].is_ascii_alphabetic()
                && w[1].is_ascii_alphabetic()
                && w[0].is_ascii_uppercase() != w[1].is_ascii_uppercase()
        })
        .count();
    if b.len() >= 6 && ((digits >= 2 && letters >= 1) || case_changes >= 4) {
        out.push('*');
        return;
    }
    out.push_str(t);
}

/// Whether a change to this path is sensitive whoever else makes it: accounts and
/// credentials, SSH keys, sudo and cron configuration, the dynamic loader's
/// configuration, shell start-up files, and executables and libraries of the system.
pub fn sensitive(path: &str) -> bool {
    const EXACT: [&str; 12] = [
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/crontab",
        "/etc/ld.so.preload",
        "/etc/ld.so.conf",
        "/etc/profile",
        "/etc/bash.bashrc",
        "/root/.bashrc",
        "/root/.profile",
    ];
    const UNDER: [&str; 17] = [
        "/etc/sudoers.d/",
        "/etc/ssh/",
        "/etc/cron.d/",
        "/etc/cron.daily/",
        "/etc/cron.hourly/",
        "/var/spool/cron/",
        "/etc/ld.so.conf.d/",
        "/etc/profile.d/",
        "/root/.ssh/",
        "/bin/",
        "/sbin/",
        "/usr/bin/",
        "/usr/sbin/",
        "/usr/local/bin/",
        "/usr/local/sbin/",
        "/lib/",
        "/usr/lib/",
    ];
    if EXACT.contains(&path) || UNDER.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    // Any user's SSH keys.
    path.strip_prefix("/home/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest == ".ssh" || rest.starts_with(".ssh/"))
}

/// What `docker diff` says of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// `C`: changed (a directory is changed when an entry in it is).
    Changed,
    /// `A`: added.
    Added,
    /// `D`: deleted.
    Deleted,
}

impl Change {
    /// Docker's `Kind` of a `FilesystemChange` (0 modified, 1 added, 2 deleted).
    pub fn from_docker_kind(kind: u8) -> Option<Self> {
        match kind {
            0 => Some(Self::Changed),
            1 => Some(Self::Added),
            2 => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// Summarises a filesystem diff into an [`Event::FsChanges`] of at most `max_items`
/// paths per list. Paths are patterns ([`path_pattern`]), each listed once; a changed
/// path that is the directory of another change is left out (it changed because an
/// entry in it did). Past `max_items`, a list keeps its sensitive paths first, then its
/// shallowest (a dropped directory shows before the thousand files under it), and
/// `total` counts every change the engine reported. Memory is bounded by a few times
/// `max_items`, whatever the diff's length.
pub fn summarise_changes(
    changes: impl IntoIterator<Item = (Change, String)>,
    max_items: usize,
) -> Event {
    /// (not sensitive, depth, pattern): the order in which a list keeps its entries.
    type Ranked = (bool, usize, String);
    let cap = max_items.max(1);
    let mut total = 0u64;
    // Added, changed (four times as many kept: directories go after), deleted.
    let mut lists: [BTreeSet<Ranked>; 3] = Default::default();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for (kind, path) in changes {
        total += 1;
        let p = path_pattern(&path);
        if let Some((parent, _)) = p.rsplit_once('/')
            && !parent.is_empty()
            && dirs.len() < 64 * cap
        {
            dirs.insert(parent.to_owned());
        }
        let (list, keep) = match kind {
            Change::Added => (&mut lists[0], cap),
            Change::Changed => (&mut lists[1], 4 * cap),
            Change::Deleted => (&mut lists[2], cap),
        };
        list.insert((!sensitive(&p), p.matches('/').count(), p));
        if list.len() > keep {
            list.pop_last();
        }
    }
    let [added, changed, deleted] = lists;
    let added: Vec<String> = added.into_iter().map(|(_, _, p)| p).collect();
    let changed: Vec<String> = changed
        .into_iter()
        .map(|(_, _, p)| p)
        .filter(|p| !dirs.contains(p))
        .take(cap)
        .collect();
    let deleted: Vec<String> = deleted.into_iter().map(|(_, _, p)| p).collect();
    let listed = (added.len() + changed.len() + deleted.len()) as u64;
    Event::FsChanges {
        added,
        changed,
        deleted,
        total: (total > listed).then_some(total),
    }
}

/// Summarises `docker top` (its `Titles` and `Processes` rows) into an
/// [`Event::Processes`]: each distinct (name, user, parent) once, at most `max_items`,
/// with `total` when there were more processes than are listed. The name is the
/// kernel's `COMMAND`/`comm` column when the rows have it, else the first word of `CMD`
/// without its directory; the parent is looked up by `PPID` among the rows.
pub fn summarise_processes(titles: &[String], rows: &[Vec<String>], max_items: usize) -> Event {
    let col = |names: &[&str]| titles.iter().position(|t| names.contains(&t.as_str()));
    let pid = col(&["PID"]);
    let ppid = col(&["PPID"]);
    let user = col(&["UID", "USER"]);
    let comm = col(&["COMMAND", "COMM"]);
    let cmd = col(&["CMD", "ARGS"]);
    let name_of = |row: &Vec<String>| -> Option<String> {
        if let Some(v) = comm.and_then(|i| row.get(i)).filter(|v| !v.is_empty()) {
            return Some(v.clone());
        }
        let first = cmd.and_then(|i| row.get(i))?.split_whitespace().next()?;
        let base = first.rsplit('/').next().unwrap_or(first);
        // `nginx: worker process` (a rewritten argv) names itself with a colon.
        Some(base.trim_end_matches(':').to_owned()).filter(|s| !s.is_empty())
    };
    let by_pid: std::collections::HashMap<&str, String> = match pid {
        Some(i) => rows
            .iter()
            .filter_map(|r| Some((r.get(i)?.as_str(), name_of(r)?)))
            .collect(),
        None => Default::default(),
    };
    let mut seen: BTreeSet<(String, Option<String>, Option<String>)> = BTreeSet::new();
    for r in rows {
        let Some(name) = name_of(r) else { continue };
        let u = user.and_then(|i| r.get(i)).cloned();
        let parent = ppid
            .and_then(|i| r.get(i))
            .and_then(|p| by_pid.get(p.as_str()))
            .cloned();
        seen.insert((name, u, parent));
    }
    let distinct = seen.len();
    let processes: Vec<ProcessEntry> = seen
        .into_iter()
        .take(max_items)
        .map(|(process, user, parent)| ProcessEntry {
            process,
            user,
            parent,
        })
        .collect();
    let more = rows.len() > processes.len() && distinct > processes.len();
    Event::Processes {
        processes,
        total: more.then_some(rows.len() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accidental_parts_collapse_and_meaningful_ones_stay() {
        let cases = [
            ("/tmp/.x/xmrig", "/tmp/.x/xmrig"),
            ("/var/run/nginx.pid", "/var/run/nginx.pid"),
            ("/var/log/app/2026-12-02.log", "/var/log/app/#-#-#.log"),
            ("/tmp/tmp.a8F3k2Lq9z/cache.db", "/tmp/tmp.*/cache.db"),
            ("/tmp/tmpXkQzPaWb", "/tmp/*"),
            (
                "/var/cache/app/3f2a9c1d7e6b5a40/blob",
                "/var/cache/app/#/blob",
            ),
            (
                "/run/secrets/6ba7b810-9dad-11d1-80b4-00c04fd430c8.json",
                "/run/secrets/#.json",
            ),
            ("/proc/1234/status", "/proc/#/status"),
            (
                "//usr//lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_#-linux-gnu/libc.so.#",
            ),
            (
                "/usr/lib/python3.11/site-packages",
                "/usr/lib/python3.#/site-packages",
            ),
            ("relative/7", "relative/#"),
            ("", ""),
            ("/", "/"),
        ];
        for (path, want) in cases {
            assert_eq!(path_pattern(path), want, "{path}");
            assert_eq!(
                path_pattern(want),
                want,
                "a pattern is its own pattern: {want}"
            );
        }
        let deep = "/a/b/c/d/e/f/g/h/i/j/k/l/m/n";
        assert_eq!(path_pattern(deep), "/a/b/c/d/e/f/g/h/i/j/k/l/…");
        // Two replicas' temporary files are one item.
        assert_eq!(
            path_pattern("/tmp/upload_7f3k29a1/part"),
            path_pattern("/tmp/upload_k2j9x81m/part")
        );
    }

    #[test]
    fn sensitive_paths_are_credentials_binaries_and_loader_configuration() {
        for p in [
            "/etc/passwd",
            "/etc/shadow",
            "/root/.ssh/authorized_keys",
            "/home/app/.ssh/authorized_keys",
            "/usr/bin/wget",
            "/bin/sh",
            "/etc/ld.so.preload",
            "/etc/cron.d/x",
        ] {
            assert!(sensitive(p), "{p}");
        }
        for p in [
            "/tmp/.x/xmrig",
            "/var/log/app.log",
            "/etc/nginx/nginx.conf",
            "/home/app/.cache/x",
            "/usr/binx",
        ] {
            assert!(!sensitive(p), "{p}");
        }
    }

    #[test]
    fn a_diff_is_summarised_into_patterns_bounded_shallow_first() {
        let mut changes = vec![
            (Change::Changed, "/tmp".to_owned()),
            (Change::Added, "/tmp/.x".to_owned()),
            (Change::Added, "/tmp/.x/xmrig".to_owned()),
            (Change::Changed, "/etc/passwd".to_owned()),
            (Change::Changed, "/etc".to_owned()),
            (Change::Deleted, "/usr/bin/wget".to_owned()),
        ];
        // A cache that writes a hundred thousand files of random names.
        for i in 0..100_000u32 {
            changes.push((
                Change::Added,
                format!(
                    "/var/cache/app/{:08x}/{i}.bin",
                    i.wrapping_mul(2_654_435_761)
                ),
            ));
        }
        let Event::FsChanges {
            added,
            changed,
            deleted,
            total,
        } = summarise_changes(changes, 16)
        else {
            panic!("not fs_changes")
        };
        assert_eq!(total, Some(100_006));
        // `/tmp` and `/etc` changed only because entries in them did.
        assert_eq!(changed, ["/etc/passwd"]);
        assert_eq!(deleted, ["/usr/bin/wget"]);
        assert!(added.len() <= 16);
        assert!(added.contains(&"/tmp/.x".to_owned()));
        assert!(added.contains(&"/tmp/.x/xmrig".to_owned()));
        assert!(
            added.contains(&"/var/cache/app/#/#.bin".to_owned()),
            "{added:?}"
        );
    }

    #[test]
    fn a_small_diff_is_listed_whole_without_a_total() {
        let e = summarise_changes([(Change::Added, "/data/x".to_owned())], 16);
        assert_eq!(
            e,
            Event::FsChanges {
                added: vec!["/data/x".into()],
                changed: vec![],
                deleted: vec![],
                total: None,
            }
        );
    }

    #[test]
    fn processes_are_named_with_user_and_parent() {
        let titles: Vec<String> = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
            .map(String::from)
            .to_vec();
        let row = |u: &str, pid: &str, ppid: &str, cmd: &str| -> Vec<String> {
            vec![
                u.into(),
                pid.into(),
                ppid.into(),
                "0".into(),
                "10:00".into(),
                "?".into(),
                "00:00:00".into(),
                cmd.into(),
            ]
        };
        let rows = vec![
            row("root", "100", "1", "nginx: master process /usr/sbin/nginx"),
            row("www-data", "101", "100", "nginx: worker process"),
            row("www-data", "102", "100", "nginx: worker process"),
            row("root", "200", "100", "/tmp/.x/xmrig -o pool:3333"),
        ];
        let Event::Processes { processes, total } = summarise_processes(&titles, &rows, 16) else {
            panic!("not processes")
        };
        assert_eq!(total, None);
        let names: Vec<(&str, Option<&str>, Option<&str>)> = processes
            .iter()
            .map(|p| (p.process.as_str(), p.user.as_deref(), p.parent.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("nginx", Some("root"), None),
                ("nginx", Some("www-data"), Some("nginx")),
                ("xmrig", Some("root"), Some("nginx")),
            ]
        );
        let Event::Processes { processes, total } = summarise_processes(&titles, &rows, 1) else {
            panic!("not processes")
        };
        assert_eq!((processes.len(), total), (1, Some(4)));
    }
}
