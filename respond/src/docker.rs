//! The Docker Engine connection and the classification of its failures.

use bollard::Docker;

use crate::{Error, Result};

/// Connects to the engine (`DOCKER_HOST`, else the local socket) and negotiates the API
/// version, so an engine older than bollard's default (Docker 20.10 speaks 1.41) works.
/// An engine that cannot be reached now is not an error: the client is returned as it
/// is, every call through it fails (and is recorded) until the engine is back, and the
/// agent keeps running. An unusable `DOCKER_HOST` is an error.
pub async fn connect() -> Result<Docker> {
    let d = Docker::connect_with_defaults().map_err(|e| Error::Docker {
        reason: "docker_unreachable",
        detail: e.to_string(),
    })?;
    match d.clone().negotiate_version().await {
        Ok(d) => Ok(d),
        Err(e) => {
            tracing::warn!(error = %e, "the Docker engine is unreachable; continuing without it");
            Ok(d)
        }
    }
}

/// A bounded token for a Docker failure (the `reason` of a response) and whether trying
/// again can help.
pub fn classify(e: &bollard::errors::Error) -> (&'static str, bool) {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError { status_code, .. } => match *status_code {
            404 => ("not_found", false),
            409 => ("conflict", false),
            304 => ("not_modified", false),
            s if s >= 500 => ("docker_error", true),
            _ => ("docker_error", false),
        },
        B::RequestTimeoutError => ("timeout", true),
        B::JsonDataError { .. } | B::JsonSerdeError { .. } => ("docker_error", false),
        _ => ("docker_unreachable", true),
    }
}

/// The error for a failed Docker call.
pub fn error(e: &bollard::errors::Error) -> Error {
    Error::Docker {
        reason: classify(e).0,
        detail: e.to_string(),
    }
}
