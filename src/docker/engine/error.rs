//! [`EngineError`]: one variant per Docker operation, each carrying the engine's error as its
//! source. The message says what was being done and what the daemon answered, so it is complete
//! on its own; callers decide on the status code ([`EngineError::is_not_found`]), never on text.

/// The engine's own error type, named here and nowhere else.
pub(crate) type Cause = bollard::errors::Error;

/// A Docker operation that failed, with the daemon's answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answers (no socket, no permission, or it does not speak HTTP).
    #[error("cannot reach the Docker engine at {engine} (is it running, and may this user use it?): {}", said(.source))]
    Unavailable {
        /// Where it was looked for.
        engine: String,
        /// The client's error.
        #[source]
        source: Cause,
    },
    /// A TLS engine's client certificates are not all there.
    #[error("cannot reach the Docker engine at {engine}: its TLS client certificates need {}, which is missing", .missing.display())]
    Certificates {
        /// The engine.
        engine: String,
        /// The file that is missing.
        missing: std::path::PathBuf,
    },
    /// The SSH tunnel to an `ssh://` engine could not be opened.
    #[error("cannot reach the Docker engine at {engine}: {source}")]
    Tunnel {
        /// The engine.
        engine: String,
        /// What ssh said.
        #[source]
        source: crate::ssh_tunnel::TunnelError,
    },
    /// Reading an image's configuration failed (404: no such image).
    #[error("cannot inspect image {image}: {}", said(.source))]
    InspectImage {
        /// The image asked for.
        image: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Creating a container failed.
    #[error("cannot create a container from {image}: {}", said(.source))]
    Create {
        /// The image it was to run.
        image: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Copying files into a container failed.
    #[error("cannot copy files into container {}: {}", short(.id), said(.source))]
    Copy {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Attaching to a container's streams failed.
    #[error("cannot attach to container {}: {}", short(.id), said(.source))]
    Attach {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Starting a container failed.
    #[error("the engine cannot start container {}: {}", short(.id), said(.source))]
    Start {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Reading a container's state failed (404: no such container).
    #[error("cannot inspect container {}: {}", short(.id), said(.source))]
    InspectContainer {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Stopping a container failed.
    #[error("cannot stop container {}: {}", short(.id), said(.source))]
    Stop {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Removing a container failed (404: already gone; 409: removal already under way).
    #[error("cannot remove container {}: {}", short(.id), said(.source))]
    Remove {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Waiting for a container's exit failed.
    #[error("cannot wait for container {}: {}", short(.id), said(.source))]
    Wait {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Reading a container's logs failed.
    #[error("cannot read the logs of container {}: {}", short(.id), said(.source))]
    Logs {
        /// The container.
        id: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Committing a container as an image failed.
    #[error("cannot commit container {} as {tag}: {}", short(.id), said(.source))]
    Commit {
        /// The container.
        id: String,
        /// The image tag.
        tag: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// A build failed at the transport level (a failing Dockerfile step is a build error of the
    /// crate, with its step and output).
    #[error("building {tag}: {}", said(.source))]
    Build {
        /// The tag being built.
        tag: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Listing containers failed.
    #[error("cannot list containers: {}", said(.source))]
    ListContainers {
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Listing images failed.
    #[error("cannot list images: {}", said(.source))]
    ListImages {
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Removing an image failed.
    #[error("cannot remove image {image}: {}", said(.source))]
    RemoveImage {
        /// The image.
        image: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Reading an image out of an engine (`docker save`) failed.
    #[error("cannot export image {image} from {engine}: {}", said(.source))]
    ExportImage {
        /// The image.
        image: String,
        /// The engine it was read from.
        engine: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Loading an image into an engine (`docker load`) failed.
    #[error("cannot import image {image} into {engine}: {}", said(.source))]
    ImportImage {
        /// The image.
        image: String,
        /// The engine it was loaded into.
        engine: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// A Swarm operation (service, task, secret, node) failed.
    #[error("cannot {what}: {}", said(.source))]
    Swarm {
        /// What was being done.
        what: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
    /// Asking an engine about itself (`docker info`: its capacity, Swarm role or identity) failed.
    #[error("cannot ask {engine} about itself (docker info): {}", said(.source))]
    Info {
        /// The engine.
        engine: String,
        /// The engine's error.
        #[source]
        source: Cause,
    },
}

impl EngineError {
    fn cause(&self) -> Option<&Cause> {
        Some(match self {
            EngineError::Certificates { .. } | EngineError::Tunnel { .. } => return None,
            EngineError::Unavailable { source, .. }
            | EngineError::ExportImage { source, .. }
            | EngineError::ImportImage { source, .. }
            | EngineError::Info { source, .. }
            | EngineError::Swarm { source, .. }
            | EngineError::InspectImage { source, .. }
            | EngineError::Create { source, .. }
            | EngineError::Copy { source, .. }
            | EngineError::Attach { source, .. }
            | EngineError::Start { source, .. }
            | EngineError::InspectContainer { source, .. }
            | EngineError::Stop { source, .. }
            | EngineError::Remove { source, .. }
            | EngineError::Wait { source, .. }
            | EngineError::Logs { source, .. }
            | EngineError::Commit { source, .. }
            | EngineError::Build { source, .. }
            | EngineError::ListContainers { source }
            | EngineError::ListImages { source }
            | EngineError::RemoveImage { source, .. } => source,
        })
    }

    /// The HTTP status the daemon answered, when it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self.cause()? {
            bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
            _ => None,
        }
    }

    /// "No such container/image" (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// A conflict, e.g. "removal already in progress" (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// No engine answered at all.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Unavailable { .. } | EngineError::Certificates { .. } | EngineError::Tunnel { .. })
    }
}

/// What the daemon said: its own message for an HTTP error, else the client's description.
pub(crate) fn said(source: &Cause) -> String {
    match source {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => format!("{} (HTTP {status_code})", message.trim()),
        other => other.to_string(),
    }
}

/// A container id as `docker ps` shows it.
pub(crate) fn short(id: &str) -> &str {
    // By characters: an engine that answers an odd id must not make this panic.
    id.char_indices().nth(12).map_or(id, |(end, _)| &id[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(status_code: u16, message: &str) -> Cause {
        bollard::errors::Error::DockerResponseServerError { status_code, message: message.into() }
    }

    #[test]
    fn the_message_names_the_operation_and_the_daemons_answer() {
        let err = EngineError::Create { image: "echo:v1".into(), source: daemon(500, "no space left on device") };
        assert_eq!(err.to_string(), "cannot create a container from echo:v1: no space left on device (HTTP 500)");
        assert!(std::error::Error::source(&err).is_some(), "the cause is kept as the source");
    }

    #[test]
    fn status_codes_decide_not_text() {
        let gone = EngineError::Remove { id: "0123456789abcdef".into(), source: daemon(404, "whatever the text") };
        assert!(gone.is_not_found() && !gone.is_conflict());
        let busy = EngineError::Remove { id: "c1".into(), source: daemon(409, "No such container (but a conflict)") };
        assert!(busy.is_conflict() && !busy.is_not_found());
        assert!(gone.to_string().starts_with("cannot remove container 0123456789ab:"), "{gone}");
    }
}
