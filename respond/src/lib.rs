//! herd-respond: what happens after an alert.
//!
//! For now it owns the alert sinks ([`sinks`]): JSON lines to stdout or to a file, in the
//! Alert line contract. Policies, Docker actions, evidence capture and the remaining
//! sinks (Kafka, Alertmanager, webhooks) arrive here with their issues.
//!
//! What it must not do: score or decide what is anomalous; it acts on alerts it is given.

pub mod sinks;

pub use sinks::{AlertSink, FileSink, WriterSink};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing to a sink failed.
    #[error("alert sink {sink}: {source}")]
    Io {
        /// Which sink.
        sink: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An alert could not be encoded.
    #[error("alert encoding: {0}")]
    Encoding(#[from] serde_json::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
