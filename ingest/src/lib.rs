//! herd-ingest: everything between a raw input line and an [`Observation`].
//!
//! It owns the observation model ([`model`]), the decoders for every input format herd
//! accepts ([`decode`]: native lines, Docker stats-API JSON raw and in the agent envelope,
//! Docker events, Falco JSON as falcosidekick writes it, prometheus-kafka-adapter JSON),
//! and the stateful normalisation that turns decoded records into observations
//! ([`normalize`]: the container registry that joins raw stats and Falco events to their
//! image, and counter→rate derivation per container).
//!
//! Decoding is split in two on purpose:
//! 1. [`decode::Decoder::decode`] is stateless: bytes in, a [`decode::Record`] with an
//!    event time out, or a [`decode::Reject`] with a bounded reason. It enforces size and
//!    depth limits and never panics, whatever the bytes.
//! 2. [`normalize::Normalizer::normalize`] is stateful and must see records in event-time
//!    order (callers reorder between the two steps), so that a `start` event registers a
//!    container before its first raw stats sample is joined to it.
//!
//! [`inventory`] summarises what the Docker API alone says of a container (`docker
//! diff`, `docker top`) into inventory events, with the path patterns that make every
//! replica's logs and caches look alike.
//!
//! [`route`] says which worker owns a record (its routing key), for the stream service's
//! re-keying of input that arrives keyed otherwise.
//!
//! [`collect`] (feature `docker`) is the agent's collector: Docker stats and events of
//! one host through bollard, as records for the caller to publish.
//!
//! What it must not do: score, keep baselines, or talk to Kafka; without the `docker`
//! feature it does no I/O at all. Scoring and baselines live in `herd-baseline` and
//! `herd-detect`; Kafka in the binary.

#[cfg(feature = "docker")]
pub mod collect;
pub mod decode;
pub mod inventory;
pub mod labels;
pub mod model;
pub mod normalize;
pub mod route;
pub mod time;

pub use decode::{Decoder, Identities, Limits, Record, Reject, RejectReason};
pub use labels::Labels;
pub use model::{
    ContainerRef, Event, GroupBy, MetricName, Observation, Payload, ProcessEntry, id_hash,
};
pub use normalize::{Normalizer, NormalizerConfig};
pub use route::Router;

/// Errors of this crate that are not per-line rejections (those are [`Reject`]s, which
/// are data, not failures).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of its legal range.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The offending field, as it is spelt in the configuration file.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
