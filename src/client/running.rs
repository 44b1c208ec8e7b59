//! [`Running`]: one started environment as its owner holds it (ids, the backend that runs it,
//! the client that calls it), and the two ways of ending it.
//!
//! The registry ([`super::cleanup`]) holds these, and an [`EnvironmentWrapper`] is a handle to one;
//! neither the registry nor this type knows the wrapper, so cleanup has a single owner and no
//! module imports its importer.
//!
//! [`EnvironmentWrapper`]: super::EnvironmentWrapper

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::lease;
use crate::backend::{Backend, KillNow};
use crate::detect::EnvType;
use crate::error::Result;
use crate::http_client::ServerClient;

/// A started environment.
pub(crate) struct Running {
    /// Registry id, unique in this process.
    pub id: String,
    /// Human-friendly name (the folder's, or the one given).
    pub name: String,
    /// The server's HTTP client.
    pub client: ServerClient,
    /// How it is served: Rayfine's `/call` server, or a web server of its own.
    pub env_type: EnvType,
    /// What runs it, and so what ending it means.
    pub backend: Box<dyn Backend>,
    /// Timeout of calls that name none.
    pub call_timeout: Duration,
    /// Kept environments outlive this process and are left alone by exit-time cleanup.
    pub keep: bool,
    /// Set once ended; later calls fail with [`crate::Error::Closed`] instead of a connection
    /// error.
    closed: AtomicBool,
}

impl Running {
    /// A running environment, not yet ended.
    pub fn new(id: String, name: String, client: ServerClient, env_type: EnvType, backend: Box<dyn Backend>, call_timeout: Duration, keep: bool) -> Running {
        Running { id, name, client, env_type, backend, call_timeout, keep, closed: AtomicBool::new(false) }
    }

    /// Whether it has been ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ends it and waits until its backend says it is gone. Idempotent; a failure leaves it open,
    /// so that a later call tries again and says so again.
    ///
    /// The stop runs as a task of its own: a caller that stops waiting (a Ctrl-C in Python, a
    /// cancelled asyncio task, a dropped future) does not leave it half done and marked closed.
    pub async fn stop(self: &Arc<Self>) -> Result<()> {
        lease::release(&self.id);
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let me = self.clone();
        let stopped = match tokio::spawn(async move { me.backend.stop().await }).await {
            Ok(stopped) => stopped,
            Err(join) => Err(crate::Error::InvalidInput(format!("stopping environment `{}` failed: {join}", self.name))),
        };
        if let Err(err) = stopped {
            self.closed.store(false, Ordering::SeqCst);
            return Err(err);
        }
        Ok(())
    }

    /// Ends it at once, without waiting; for signal and panic handlers.
    pub fn kill_now(&self) -> KillNow {
        lease::release(&self.id);
        if self.closed.swap(true, Ordering::SeqCst) {
            return KillNow::Done;
        }
        self.backend.kill_now()
    }
}
