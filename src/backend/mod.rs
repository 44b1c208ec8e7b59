//! Backends: what runs an environment's server, and so what starting and ending it means.
//!
//! Every backend is started the same way, by a [`Launch`] (a folder to run as a local process,
//! an image to run as a container, a URL someone else serves) with one deadline that covers
//! every step from the first engine request to the server's readiness. What comes back is an
//! [`Endpoint`] to call and a running [`Backend`] to end. A new backend (a pool of hosts, Swarm)
//! is one new file implementing these two traits; nothing that calls environments changes.

pub(crate) mod docker;
mod known_interpreters;
mod logs;
pub(crate) mod process;
pub(crate) mod remote;
pub(crate) mod swarm;
mod worker_guard;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::detect::EnvType;
use crate::error::Result;

pub(crate) use logs::LogRing;

/// A boxed future, for the trait's async methods (a trait object cannot have `async fn`s).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How many log lines an error shows.
pub(crate) const LOG_LINES_IN_ERRORS: usize = 20;

/// Where a started environment answers, and what it takes to call it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Base URL of the server, e.g. `http://127.0.0.1:32768`.
    pub url: String,
    /// The bearer token it requires; `None` for a server that knows no token (a user's own HTTP
    /// server, or a remote one started without).
    pub token: Option<String>,
    /// Where lease renewals go, when the environment holds a lease.
    pub lease_at: Option<SocketAddr>,
    /// How it is served: Rayfine's `/call` server, or a web server of its own.
    pub env_type: EnvType,
}

/// What every start is given, whatever the backend.
pub(crate) struct StartSpec<'a> {
    /// The environment's id, unique in this process (containers are named after it).
    pub env_id: &'a str,
    /// Its display name.
    pub name: &'a str,
    /// Environment variables for the environment.
    pub env_vars: &'a std::collections::BTreeMap<String, String>,
    /// The bearer token the server will require.
    pub token: &'a str,
    /// Outlive this process (no stdin watch, no auto-removal).
    pub keep: bool,
    /// The lease the server gets, if any.
    pub lease: Option<Duration>,
    /// When the whole start, every step included, must be over.
    pub deadline: Instant,
    /// The start-up timeout the deadline was made from: a supervisor allows that long for the
    /// first lease renewal, counted from its own start.
    pub startup_timeout: Duration,
}

/// Starts an environment on one backend.
pub(crate) trait Launch {
    /// Starts the environment and waits until it is ready, all before `spec.deadline`; on any
    /// failure nothing it started is left running.
    fn start(self, spec: &StartSpec<'_>) -> impl Future<Output = Result<(Box<dyn Backend>, Endpoint)>> + Send;
}

/// Where lease renewals for a port published at `host` go, resolved now (renewals are sent from
/// a plain thread that resolves nothing). Without it the lease would lapse, so a name that does
/// not resolve fails the start, with this reason.
pub(crate) async fn lease_address(host: &str, port: u16) -> std::result::Result<std::net::SocketAddr, String> {
    match tokio::net::lookup_host((host, port)).await.map(|mut found| found.next()) {
        Ok(Some(address)) => Ok(address),
        Ok(None) => Err(format!("{host} resolves to no address, so the lease cannot be renewed")),
        Err(err) => Err(format!("{host} does not resolve ({err}), so the lease cannot be renewed")),
    }
}

/// What a kill on an exit path could not do itself: the engine must be asked, and exit paths
/// ask for all their containers in one batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KillNow {
    /// Nothing more to do.
    Done,
    /// Remove these from their engines.
    Remove(Vec<crate::docker::Leftover>),
}

/// A running environment's server, as its backend sees it.
pub(crate) trait Backend: Send + Sync {
    /// `"process"`, `"docker"` or `"remote"`.
    fn mode(&self) -> &'static str;

    /// What runs it, for people: `process 1234`, `container 0123456789ab`, `a remote server`.
    fn describe(&self) -> String;

    /// Process id of a local server.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// The engine's container id.
    fn container_id(&self) -> Option<&str> {
        None
    }

    /// The engine the container is on.
    fn docker_host(&self) -> Option<&crate::docker::DockerHost> {
        None
    }

    /// What of it lives in an engine (its container; a service and its secret), which the exit
    /// paths remove unless it is kept.
    fn leftovers(&self) -> Vec<crate::docker::Leftover> {
        Vec::new()
    }

    /// Ends it gracefully (a short grace, then a kill) and waits until it is gone; an error says
    /// what is left.
    fn stop(&self) -> BoxFuture<'_, Result<()>>;

    /// Ends it at once without waiting, from a signal handler or panic hook: no async runtime,
    /// no engine round trip here.
    fn kill_now(&self) -> KillNow;

    /// Whether its server has exited (as far as this process has seen).
    fn has_exited(&self) -> bool;

    /// How it ended, if it has, waiting up to `within` for its end to be seen: a caller whose
    /// connection just broke asks before the exit has been noticed.
    fn exit_description(&self, within: Duration) -> BoxFuture<'_, Option<String>>;

    /// The last `n` lines it wrote to its log.
    fn last_logs(&self, n: usize) -> Vec<String>;
}
