//! The observation model: what every input format is decoded into.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// One container's identity as herd knows it. Shared (`Arc`) between the registry and
/// every observation of that container, so decoding a sample does not copy labels.
///
/// Its strings are `Arc<str>`: the id is the key of every per-container map (registry,
/// counter state, router, the engine's replicas), each holding the same allocation, and
/// a group's image, digest and host are shared by its replicas where the decoder
/// interned them ([`crate::Identities`]). Serialised as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Full container id (64 hex characters from Docker; any non-empty string is accepted).
    pub id: Arc<str>,
    /// Container name without Docker's leading `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    /// Image reference as the runtime reports it (`repo:tag`), display only.
    pub image: Arc<str>,
    /// Image digest (`sha256:…`), the default peer-group key when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<Arc<str>>,
    /// Container labels (Kubernetes pod labels arrive here too).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Host the container runs on, when the producer says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Arc<str>>,
}

impl ContainerRef {
    /// A display name: the container name, else the first 12 characters of the id.
    pub fn display_name(&self) -> &str {
        match &self.name {
            Some(n) if !n.is_empty() => n,
            _ => self.id.get(..12).unwrap_or(&self.id),
        }
    }

    /// The image repository without tag or digest (`shop/web` for `shop/web:1.4`), used to
    /// recognise a rollout: a new digest of the same repository.
    pub fn repository(&self) -> &str {
        repository_of(&self.image)
    }
}

/// The hash every per-container table hashes a container id with (FxHash): the
/// registry's here, a group's replicas in `herd-detect`.
pub fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(id)
}

/// Strips tag and digest from an image reference (`reg:5000/a/b:1@sha256:…` → `reg:5000/a/b`).
pub fn repository_of(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(colon) => &no_digest[..last_slash + colon],
        None => no_digest,
    }
}

/// How containers are put into peer groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GroupBy {
    /// Refine the image key with the Kubernetes workload (namespace and owner from the
    /// pod labels `io.kubernetes.pod.namespace` and `app.kubernetes.io/name` or `app`).
    #[serde(default)]
    pub workload: bool,
    /// Refine the image key with the value of this container label.
    #[serde(default)]
    pub label: Option<String>,
}

impl GroupBy {
    /// The peer-group key of a container: its image digest when known, else its image
    /// reference, optionally refined. Deterministic: the same container always maps to the
    /// same key on every worker.
    pub fn key(&self, c: &ContainerRef) -> String {
        let mut key = match &c.image_digest {
            Some(d) if !d.is_empty() => format!("{}@{}", c.repository(), d),
            _ => c.image.to_string(),
        };
        if self.workload {
            let ns = c.labels.get("io.kubernetes.pod.namespace");
            let app = c
                .labels
                .get("app.kubernetes.io/name")
                .or_else(|| c.labels.get("app"));
            if let Some(ns) = ns {
                key.push_str("|ns=");
                key.push_str(ns);
            }
            if let Some(app) = app {
                key.push_str("|app=");
                key.push_str(app);
            }
        }
        if let Some(label) = &self.label
            && let Some(v) = c.labels.get(label)
        {
            key.push('|');
            key.push_str(label);
            key.push('=');
            key.push_str(v);
        }
        key
    }
}

/// A typed runtime event. The native line's `event` object, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The container started.
    Start {
        /// Whether it runs privileged, when the producer knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        privileged: Option<bool>,
    },
    /// The container's main process exited.
    Die {
        /// Its exit code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
    },
    /// The kernel's OOM killer hit the container.
    Oom,
    /// A signal was sent to the container.
    Kill {
        /// The signal's name or number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// The runtime restarted the container.
    Restart,
    /// A command was executed inside the running container (`docker exec`).
    Exec {
        /// The executable.
        process: String,
        /// Its arguments.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// The user it ran as.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// A health check changed or reported status.
    Health {
        /// `healthy`, `unhealthy`, `starting`.
        status: String,
    },
    /// The container was connected to a network.
    NetworkConnect {
        /// Network name or id.
        network: String,
    },
    /// The container was disconnected from a network.
    NetworkDisconnect {
        /// Network name or id.
        network: String,
    },
    /// A process was started inside the container (from a sensor or an inventory).
    Process {
        /// The executable path.
        process: String,
        /// Its arguments.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// The user it ran as.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The parent process name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
    },
    /// An outbound connection (`ip:port` or `host:port`).
    Connect {
        /// The destination.
        dest: String,
    },
    /// A listening port was opened.
    Listen {
        /// The port.
        port: u16,
    },
    /// A file was written.
    FileWrite {
        /// The path.
        path: String,
    },
    /// A filesystem inventory (`docker diff`): the paths added, changed and deleted
    /// since the container started, as its producer summarised them (herd's agent
    /// lists each pattern once, the shallowest first, at most `agent.max_inventory_items`
    /// of each, and leaves out a changed directory whose entries are listed).
    FsChanges {
        /// Paths added.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        added: Vec<String>,
        /// Paths changed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changed: Vec<String>,
        /// Paths deleted.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        deleted: Vec<String>,
        /// Changes the runtime reported in all, when more than are listed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// A process inventory (`docker top`): the processes running in the container.
    Processes {
        /// Each process once (name, user, parent).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        processes: Vec<ProcessEntry>,
        /// Processes running in all, when more than are listed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// A Falco rule fired for this container.
    Falco {
        /// The rule name.
        rule: String,
        /// Falco priority (`Emergency` … `Debug`).
        priority: String,
        /// `proc.exepath` or `proc.name`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<String>,
        /// `proc.cmdline`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
        /// `user.name`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Remote endpoint of a network rule (`fd.sip:fd.sport`, else `fd.name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dest: Option<String>,
        /// Rule tags (ATT&CK technique ids among them).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
    },
}

impl Event {
    /// The `kind` tag as written on the wire, for counters and explanations.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Start { .. } => "start",
            Event::Die { .. } => "die",
            Event::Oom => "oom",
            Event::Kill { .. } => "kill",
            Event::Restart => "restart",
            Event::Exec { .. } => "exec",
            Event::Health { .. } => "health",
            Event::NetworkConnect { .. } => "network_connect",
            Event::NetworkDisconnect { .. } => "network_disconnect",
            Event::Process { .. } => "process",
            Event::Connect { .. } => "connect",
            Event::Listen { .. } => "listen",
            Event::FileWrite { .. } => "file_write",
            Event::FsChanges { .. } => "fs_changes",
            Event::Processes { .. } => "processes",
            Event::Falco { .. } => "falco",
        }
    }
}

/// One process of a [`Event::Processes`] inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessEntry {
    /// The executable's name (the kernel's `comm`, or the command's first word).
    pub process: String,
    /// The user it runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The parent process's name, where the platform gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// What an observation carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// Numeric samples, name → value. Names are open: any metric is scored.
    Metrics(Vec<(MetricName, f64)>),
    /// One runtime event.
    Event(Event),
}

/// A metric's name: the names herd derives ([`metric`]) are static strings, so a
/// normalised sample allocates none; names from a producer's lines are owned.
pub type MetricName = std::borrow::Cow<'static, str>;

/// One normalised observation of one container at one event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// The container, shared with the registry.
    pub container: Arc<ContainerRef>,
    /// What was observed.
    pub payload: Payload,
}

/// Metric names herd derives from Docker and cAdvisor inputs. Other producers may send any
/// name; these are the ones the decoders emit.
pub mod metric {
    /// CPU cores in use (1.0 = one full core).
    pub const CPU_CORES: &str = "cpu_cores";
    /// Memory working set, bytes (usage minus inactive file cache).
    pub const MEM_BYTES: &str = "mem_bytes";
    /// Working set over the memory limit, 0..1 (only when a limit is set).
    pub const MEM_LIMIT_RATIO: &str = "mem_limit_ratio";
    /// Network received bytes per second, all interfaces.
    pub const NET_RX_BPS: &str = "net_rx_bytes_per_s";
    /// Network transmitted bytes per second.
    pub const NET_TX_BPS: &str = "net_tx_bytes_per_s";
    /// Network received packets per second.
    pub const NET_RX_PPS: &str = "net_rx_packets_per_s";
    /// Network transmitted packets per second.
    pub const NET_TX_PPS: &str = "net_tx_packets_per_s";
    /// Block device bytes read per second.
    pub const BLK_READ_BPS: &str = "blk_read_bytes_per_s";
    /// Block device bytes written per second.
    pub const BLK_WRITE_BPS: &str = "blk_write_bytes_per_s";
    /// Number of processes/threads (pids cgroup).
    pub const PIDS: &str = "pids";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(image: &str, digest: Option<&str>) -> ContainerRef {
        ContainerRef {
            id: "abc".into(),
            name: None,
            image: image.into(),
            image_digest: digest.map(Into::into),
            labels: Labels::new(),
            host: None,
        }
    }

    #[test]
    fn repository_strips_tag_and_digest_but_not_registry_port() {
        assert_eq!(repository_of("shop/web:1.4"), "shop/web");
        assert_eq!(repository_of("reg:5000/shop/web:1.4"), "reg:5000/shop/web");
        assert_eq!(repository_of("reg:5000/shop/web"), "reg:5000/shop/web");
        assert_eq!(repository_of("web@sha256:00"), "web");
        assert_eq!(repository_of(""), "");
    }

    #[test]
    fn group_key_prefers_digest() {
        let g = GroupBy::default();
        assert_eq!(
            g.key(&c("shop/web:1.4", Some("sha256:aa"))),
            "shop/web@sha256:aa"
        );
        assert_eq!(g.key(&c("shop/web:1.4", None)), "shop/web:1.4");
        let mut x = c("a:1", None);
        x.labels.insert("tier", "db");
        let g = GroupBy {
            workload: false,
            label: Some("tier".into()),
        };
        assert_eq!(g.key(&x), "a:1|tier=db");
    }
}
