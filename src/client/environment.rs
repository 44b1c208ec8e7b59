//! [`EnvironmentWrapper`]: a loaded environment, called like a local object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{Error, Result};
use super::http::ServerClient;
use super::process::ProcessServer;
use crate::protocol::MethodInfo;

/// What runs the environment, and so what cleanup has to do.
pub(crate) enum Backend {
    /// A server child process we own.
    Process(ProcessServer),
    /// A server someone else runs; cleanup only disconnects.
    Remote,
}

/// A loaded environment. Cheap to clone and share across tasks: clones are handles to the same
/// environment, and cleanup through any of them ends it for all.
///
/// ```no_run
/// # async fn demo() -> rayfine::Result<()> {
/// use rayfine::{load_env, LoadOptions};
/// let env = load_env(LoadOptions::folder("environments/counter").env_var("COUNTER_NAME", "demo")).await?;
/// let value = env.call("increment", serde_json::json!({"times": 3})).await?;
/// assert_eq!(value, 3);
/// env.cleanup().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EnvironmentWrapper {
    inner: Arc<Inner>,
}

struct Inner {
    /// Registry id, unique in this process.
    id: String,
    /// Human-friendly name (the folder's, or the one given).
    name: String,
    /// The server's HTTP client.
    client: ServerClient,
    /// What to stop on cleanup.
    backend: Backend,
    /// Timeout of calls that name none.
    call_timeout: Duration,
    /// Set by cleanup; later calls fail with [`Error::Closed`] instead of a connection error.
    closed: AtomicBool,
    /// Kept environments outlive this process and are left alone by exit-time cleanup.
    keep: bool,
}

impl EnvironmentWrapper {
    pub(crate) fn new(id: String, name: String, client: ServerClient, backend: Backend, call_timeout: Duration, keep: bool) -> Self {
        EnvironmentWrapper { inner: Arc::new(Inner { id, name, client, backend, call_timeout, closed: AtomicBool::new(false), keep }) }
    }

    /// Registry id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Base URL of the server.
    pub fn url(&self) -> &str {
        self.inner.client.base()
    }

    /// The bearer token the server requires. A secret: never log it. Other clients (curl, an
    /// affinetes client) need it to call this environment.
    pub fn token(&self) -> Option<&str> {
        self.inner.client.token()
    }

    /// `"process"` or `"remote"`.
    pub fn mode(&self) -> &'static str {
        match self.inner.backend {
            Backend::Process(_) => "process",
            Backend::Remote => "remote",
        }
    }

    /// Process id of the local server, for process mode.
    pub fn pid(&self) -> Option<u32> {
        match &self.inner.backend {
            Backend::Process(server) => Some(server.pid()),
            Backend::Remote => None,
        }
    }

    /// Whether the environment outlives this process.
    pub fn is_kept(&self) -> bool {
        self.inner.keep
    }

    /// Calls `method` with keyword arguments (a JSON object) and returns its JSON result.
    pub async fn call(&self, method: &str, kwargs: Value) -> Result<Value> {
        self.call_with(method, &[], kwargs, None).await
    }

    /// Calls `method` with positional and keyword arguments and an optional timeout of its own.
    pub async fn call_with(&self, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed(self.inner.name.clone()));
        }
        let timeout = timeout.unwrap_or(self.inner.call_timeout);
        if timeout.is_zero() {
            return Err(Error::InvalidInput("a call timeout must be longer than zero".into()));
        }
        let kwargs = if kwargs.is_null() { Value::Object(Default::default()) } else { kwargs };
        let result = self.inner.client.call(method, args, &kwargs, timeout).await;
        result.map_err(|err| self.explain(err))
    }

    /// Calls `method` and decodes the result into `T`.
    pub async fn call_as<T: DeserializeOwned>(&self, method: &str, kwargs: Value) -> Result<T> {
        let value = self.call(method, kwargs).await?;
        serde_json::from_value(value).map_err(|source| Error::Decode { method: method.to_string(), source })
    }

    /// The environment's callable methods.
    pub async fn list_methods(&self) -> Result<Vec<MethodInfo>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed(self.inner.name.clone()));
        }
        self.inner.client.methods().await.map_err(|err| self.explain(err))
    }

    /// Whether the environment answers `/health` with ready.
    pub async fn is_ready(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst) && matches!(self.inner.client.health(Duration::from_secs(5)).await, Ok(None))
    }

    /// Stops the environment and removes it from the registry. Idempotent.
    pub async fn cleanup(&self) -> Result<()> {
        super::registry::unregister(&self.inner.id);
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Backend::Process(server) = &self.inner.backend {
            server.stop().await;
        }
        Ok(())
    }

    /// Ends the environment at once, without waiting; used by signal and panic handlers.
    pub(crate) fn kill_now(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Backend::Process(server) = &self.inner.backend {
            server.kill_now();
        }
    }

    /// A connection error from a dead server says so, with its last log lines.
    fn explain(&self, err: Error) -> Error {
        match (&err, &self.inner.backend) {
            (Error::Connection { .. }, Backend::Process(server)) if server.has_exited() => Error::Stopped {
                name: self.inner.name.clone(),
                reason: "the environment's server process has exited".into(),
                logs: server.last_logs(20),
            },
            _ => err,
        }
    }
}

impl std::fmt::Debug for EnvironmentWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentWrapper")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("url", &self.inner.client.base())
            .field("mode", &self.mode())
            .finish()
    }
}
