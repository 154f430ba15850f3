//! herd-respond: what happens after an alert.
//!
//! - [`sinks`]: alert lines to stdout or a file (the Alert line contract), and open
//!   incidents to Alertmanager ([`sinks::alertmanager`]);
//! - [`policy`]: policy files, matchers, and the decision with its guards (pure: the
//!   worker runs it on every alert line, with the engine's live replicas);
//! - [`command`]: the `herd.actions` and `herd.responses` records;
//! - [`executor`]: the agent side: runs commands on the local Docker engine
//!   (idempotent, dry-run, timeouts, retries, host rate limit, watches);
//! - [`capture`] and [`evidence`]: the evidence bundle, collected through the Docker
//!   API and written once through `object_store` with a hashed manifest;
//! - [`docker`]: the engine connection and how its failures are classified.
//!
//! What it must not do: score or decide what is anomalous; it acts on alerts it is
//! given. It never runs a shell, and nothing from a container (names, labels, logs)
//! becomes a path or a command: names are sanitised ([`evidence::safe_name`]).

pub mod capture;
pub mod command;
pub mod docker;
pub mod evidence;
pub mod executor;
pub mod policy;
pub mod sinks;

pub use command::{Action, Command, Outcome, Response};
pub use evidence::Store;
pub use executor::{Executor, ExecutorConfig};
pub use policy::{Decider, PolicyFile};
pub use sinks::{AlertSink, FileSink, WriterSink};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local I/O failed.
    #[error("{sink}: {source}")]
    Io {
        /// What was being written or read.
        sink: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Something could not be encoded or decoded.
    #[error("encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// A setting is invalid (the message names the field).
    #[error("configuration: {0}")]
    Config(String),
    /// A policy file is invalid.
    #[error("policy: {0}")]
    Policy(String),
    /// The Docker engine refused or could not be reached.
    #[error("docker ({reason}): {detail}")]
    Docker {
        /// A bounded token: `not_found`, `conflict`, `docker_unreachable`, `docker_error`, `timeout`.
        reason: &'static str,
        /// The engine's words.
        detail: String,
    },
    /// The evidence store failed.
    #[error("evidence store: {0}")]
    Store(String),
    /// An evidence object exists already (bundles are written once).
    #[error("already written: {0}")]
    AlreadyWritten(String),
    /// A webhook failed.
    #[error("webhook: {0}")]
    Http(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
