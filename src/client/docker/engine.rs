//! The connection to the Docker engine.
//!
//! A new client is made for each operation group rather than shared process-wide: bollard's
//! connections belong to the async runtime that opened them, and Rayfine is used from several
//! (the caller's, the blocking facade's, the short-lived one of the exit handlers). Making one is
//! cheap; negotiating the API version costs one local request, and lets a new client talk to an
//! older engine (Debian's 20.10 speaks API 1.41).

use bollard::Docker;

use crate::client::error::{Error, Result};

/// A client for the local engine (`DOCKER_HOST`, else the default socket), API version agreed.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
    docker.negotiate_version().await.map_err(unavailable)
}

/// Whether a Docker engine answers here.
pub async fn is_available() -> bool {
    match connect().await {
        Ok(docker) => docker.ping().await.is_ok(),
        Err(_) => false,
    }
}

fn unavailable(source: bollard::errors::Error) -> Error {
    Error::DockerUnavailable { detail: source.to_string() }
}

/// Wraps an engine error with what was being done.
pub fn docker_error(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
    let context = context.into();
    move |source| Error::Docker { context, source }
}

/// Whether an engine error is "no such object" (HTTP 404).
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// Whether an engine error is a conflict, e.g. "removal already in progress" (HTTP 409).
pub fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })
}
