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
mod swarm;
mod transfer;
mod tunnels;

use bollard::Docker;

use super::host::DockerHost;

pub use containers::{ContainerSpec, Output};
pub use swarm::{ServiceRequest, TaskFacts};
pub use transfer::Capacity;
pub use error::EngineError;
pub(crate) use error::short;
pub use images::{BuildEvent, BuildRequest, ImageFacts};

/// Result of an engine operation.
pub type EngineResult<T> = std::result::Result<T, EngineError>;

/// Seconds bollard gives each request on engines Rayfine names itself, as for the default one.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A connection to one Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// Which engine it is, for placement and for messages.
    host: DockerHost,
}

impl Engine {
    /// The engine `DOCKER_HOST` names (`unix://`, `tcp://` or `ssh://`, as the Docker CLI reads it), else
    /// the default socket; API version agreed.
    pub async fn connect() -> EngineResult<Engine> {
        Engine::connect_to(&DockerHost::Local).await
    }

    /// The engine of `host`, API version agreed.
    pub async fn connect_to(host: &DockerHost) -> EngineResult<Engine> {
        let unavailable = |source| EngineError::Unavailable { engine: host.engine_url(), source };
        let docker = match host {
            DockerHost::Ssh(target) => Ok(tunnels::connect(target).await?),
            // bollard's defaults do not read an ssh:// DOCKER_HOST.
            DockerHost::Local => match super::host::local_ssh_engine() {
                Some(target) => Ok(tunnels::connect(&target).await?),
                None => Docker::connect_with_defaults(),
            },
            DockerHost::Unix(path) => Docker::connect_with_socket(&path.to_string_lossy(), REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION),
            DockerHost::Tcp { host: name, port, certs: None } => {
                let address = format!("http://{}:{port}", super::host::bracketed(name));
                Docker::connect_with_http(&address, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            DockerHost::Tcp { host: name, port, certs: Some(certs) } => {
                let [ca, cert, key] = ["ca.pem", "cert.pem", "key.pem"].map(|file| certs.join(file));
                if let Some(missing) = [&ca, &cert, &key].into_iter().find(|file| !file.is_file()) {
                    return Err(EngineError::Certificates { engine: host.to_string(), missing: missing.clone() });
                }
                let address = format!("{}:{port}", super::host::bracketed(name));
                Docker::connect_with_ssl(&address, &key, &cert, &ca, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        Ok(Engine { docker, host: host.clone() })
    }

    /// Which engine this is.
    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// An engine at an `http://host:port` address, API version given: for tests that stand in a
    /// stub for the daemon.
    #[cfg(test)]
    pub(crate) fn at_http(address: &str) -> Engine {
        let host = DockerHost::parse(&address.replacen("http://", "tcp://", 1)).expect("a tcp address");
        Engine { docker: Docker::connect_with_http(address, 5, bollard::API_DEFAULT_VERSION).expect("a valid address"), host }
    }

    /// What the engine says of itself (`docker info`): its identity, capacity and Swarm state.
    pub(super) async fn info(&self) -> EngineResult<bollard::models::SystemInfo> {
        self.docker.info().await.map_err(|source| EngineError::Info { engine: self.host.to_string(), source })
    }

    /// Whether the engine answers a ping.
    pub async fn ping(&self) -> bool {
        self.docker.ping().await.is_ok()
    }

    /// Who the engine is: its ID and name, as `docker info` shows them. The same by whatever
    /// address the engine is reached; the ID is kept in the engine's data root, and the name
    /// (its machine's) tells apart engines of machines cloned with the same ID. `None` when the
    /// engine gives no ID.
    pub async fn daemon_identity(&self) -> EngineResult<Option<String>> {
        let info = self.info().await?;
        let id = info.id.filter(|id| !id.is_empty());
        Ok(id.map(|id| format!("{id} {}", info.name.unwrap_or_default())))
    }
}

/// Whether a Docker engine answers here.
pub async fn is_available() -> bool {
    match Engine::connect().await {
        Ok(engine) => engine.ping().await,
        Err(_) => false,
    }
}
