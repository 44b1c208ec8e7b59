//! The connection to the Docker engine: the only module that calls bollard.
//!
//! Everything else speaks in Rayfine's terms (a [`ContainerSpec`], [`ImageFacts`], an
//! [`EngineError`] per operation) so the rest of the crate neither names bollard's types nor
//! reads its error texts, and a second engine (another host, Swarm) is a second implementation of
//! the same few calls.
//!
//! A new client is made for each operation group rather than shared process-wide: bollard's
//! connections belong to the async runtime that opened them, and Rayfine is used from several
//! (the caller's, the blocking facade's, the short-lived one of the exit handlers). Making one is
//! cheap; negotiating the API version costs one local request, and lets a new client talk to an
//! older engine (Debian's 20.10 speaks API 1.41).

mod containers;
mod error;
mod images;

use bollard::Docker;

pub use containers::{ContainerSpec, Output};
pub use error::EngineError;
pub(crate) use error::short;
pub use images::{BuildEvent, BuildRequest, ImageFacts};

/// Result of an engine operation.
pub type EngineResult<T> = std::result::Result<T, EngineError>;

/// A connection to one Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// The engine `DOCKER_HOST` names (`unix://` or `tcp://`, as the Docker CLI reads it), else
    /// the default socket; API version agreed.
    pub async fn connect() -> EngineResult<Engine> {
        let docker = Docker::connect_with_defaults().map_err(|source| EngineError::Unavailable { source })?;
        let docker = docker.negotiate_version().await.map_err(|source| EngineError::Unavailable { source })?;
        Ok(Engine { docker })
    }

    /// An engine at an `http://host:port` address, API version given: for tests that stand in a
    /// stub for the daemon.
    #[cfg(test)]
    pub(crate) fn at_http(address: &str) -> Engine {
        Engine { docker: Docker::connect_with_http(address, 5, bollard::API_DEFAULT_VERSION).expect("a valid address") }
    }

    /// Whether the engine answers a ping.
    pub async fn ping(&self) -> bool {
        self.docker.ping().await.is_ok()
    }
}

/// Whether a Docker engine answers here.
pub async fn is_available() -> bool {
    match Engine::connect().await {
        Ok(engine) => engine.ping().await,
        Err(_) => false,
    }
}
