//! [`AppState`]: what every request handler of the server shares, in a module of its own so that
//! the router and the route families it assembles can all name it.

use std::sync::Arc;
use std::time::Duration;

use super::lease::Lease;
use super::openenv::sessions::Sessions;
use super::worker::Worker;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The worker running the environment.
    pub worker: Worker,
    /// Bearer token required on every route but `/health`; `None` turns authentication off.
    pub token: Option<Arc<str>>,
    /// Timeout for calls whose request names none.
    pub default_timeout: Option<Duration>,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Renewed by every authenticated request; `None` when the server has no lease.
    pub lease: Option<Arc<Lease>>,
    /// OpenEnv sessions (WebSocket and MCP), each with an Actor instance of its own.
    pub openenv: Arc<Sessions>,
}
