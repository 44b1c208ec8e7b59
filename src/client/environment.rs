//! [`EnvironmentWrapper`]: a loaded environment, called like a local object.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::cleanup;
use super::running::Running;
use crate::detect::EnvType;
use crate::error::{Error, Result};
use crate::protocol::MethodInfo;

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
    inner: Arc<Running>,
}

impl EnvironmentWrapper {
    pub(crate) fn new(inner: Arc<Running>) -> Self {
        EnvironmentWrapper { inner }
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

    /// `"process"`, `"docker"` or `"remote"`.
    pub fn mode(&self) -> &'static str {
        self.inner.backend.mode()
    }

    /// How the environment is served: Rayfine's `/call` server, or a web server of its own.
    pub fn env_type(&self) -> EnvType {
        self.inner.env_type
    }

    /// Process id of the local server, for process mode.
    pub fn pid(&self) -> Option<u32> {
        self.inner.backend.pid()
    }

    /// The engine's container id, for Docker mode.
    pub fn container_id(&self) -> Option<&str> {
        self.inner.backend.container_id()
    }

    /// The timeout of calls that name none.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
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
        match self.call_unexplained(method, args, kwargs, timeout).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.explain(err).await),
        }
    }

    /// [`call_with`](Self::call_with) with a transport error left as it is, for a caller that
    /// decides on it first (a pool retries a call that never reached its replica).
    pub(crate) async fn call_unexplained(&self, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        let (timeout, kwargs) = self.prepare_call(method, args, timeout, kwargs)?;
        match self.env_type() {
            EnvType::Function => self.inner.client.call(method, args, &kwargs, timeout).await,
            EnvType::Http => self.inner.client.call_http(method, &kwargs, timeout).await,
        }
    }

    /// Whether its server has exited, as far as this process has seen.
    pub(crate) fn has_exited(&self) -> bool {
        self.inner.backend.has_exited()
    }

    /// The engine its container runs on, in Docker mode.
    pub fn docker_host(&self) -> Option<&crate::docker::DockerHost> {
        self.inner.backend.docker_host()
    }

    /// Calls the route `method` with `GET`, the kwargs as query parameters: for routes that take
    /// no `POST`, such as OpenEnv's `/state`, `/schema` and `/metadata`, on an HTTP-based
    /// environment or on Rayfine's own server. ([`call`](Self::call) on an HTTP-based environment
    /// finds such routes itself, from the server's `/openapi.json`, after one refused `POST`.)
    pub async fn call_get(&self, method: &str, kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        let (timeout, kwargs) = self.prepare_call(method, &[], timeout, kwargs)?;
        match self.inner.client.call_http_get(method, &kwargs, timeout).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.explain(err).await),
        }
    }

    /// `POST /{route}` with `body`, whatever the environment's type: for protocols served next to
    /// `/call` (OpenEnv's `/reset` and `/step`).
    pub(crate) async fn post_route(&self, route: &str, body: &Value, timeout: Duration) -> Result<Value> {
        if self.inner.is_closed() {
            return Err(Error::Closed(self.inner.name.clone()));
        }
        match self.inner.client.call_http(route, body, timeout).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.explain(err).await),
        }
    }

    /// [`call_with`](Self::call_with) for a thread outside any async runtime, which blocks until
    /// the answer: the request is written and the answer read by the calling thread itself, one
    /// wake-up cheaper than waiting on a runtime. `interrupted` runs every 50 ms while waiting;
    /// returning true abandons the call ([`Error::Interrupted`]). An HTTPS URL, which this way
    /// cannot serve, is called through the async client.
    ///
    /// Like any blocking call it must not run on an async task's thread, which it would stall;
    /// a `spawn_blocking` thread is fine.
    pub fn call_blocking(&self, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>, interrupted: &mut dyn FnMut() -> bool) -> Result<Value> {
        if !self.inner.client.can_block() {
            return super::blocking::run_interruptible(self.call_with(method, args, kwargs, timeout), interrupted)
                .unwrap_or_else(|| Err(Error::Interrupted(method.to_string())));
        }
        let (timeout, kwargs) = self.prepare_call(method, args, timeout, kwargs)?;
        let client = &self.inner.client;
        let result = match self.env_type() {
            EnvType::Function => client.call_blocking(method, args, &kwargs, timeout, interrupted),
            EnvType::Http => client.call_http_blocking(method, &kwargs, timeout, interrupted),
        };
        match result {
            Ok(value) => Ok(value),
            Err(err) if err.is_connection() => Err(super::blocking::run(self.explain(err))),
            Err(err) => Err(err),
        }
    }

    /// What every call checks first: the environment is not cleaned up, an HTTP-based one gets
    /// no positional arguments, the timeout (this call's or the default) is above zero; and
    /// `null` kwargs are no kwargs.
    fn prepare_call(&self, method: &str, args: &[Value], timeout: Option<Duration>, kwargs: Value) -> Result<(Duration, Value)> {
        if self.inner.is_closed() {
            return Err(Error::Closed(self.inner.name.clone()));
        }
        if self.env_type() == EnvType::Http && !args.is_empty() {
            return Err(Error::InvalidInput(format!("`{method}`: an HTTP-based environment takes keyword arguments only")));
        }
        let timeout = timeout.unwrap_or(self.inner.call_timeout);
        if timeout.is_zero() {
            return Err(Error::InvalidInput("a call timeout must be longer than zero".into()));
        }
        let kwargs = if kwargs.is_null() { Value::Object(Default::default()) } else { kwargs };
        Ok((timeout, kwargs))
    }

    /// Calls `method` and decodes the result into `T`.
    pub async fn call_as<T: DeserializeOwned>(&self, method: &str, kwargs: Value) -> Result<T> {
        let value = self.call(method, kwargs).await?;
        serde_json::from_value(value).map_err(|source| Error::Decode { method: method.to_string(), source })
    }

    /// The environment's callable methods.
    pub async fn list_methods(&self) -> Result<Vec<MethodInfo>> {
        if self.inner.is_closed() {
            return Err(Error::Closed(self.inner.name.clone()));
        }
        let methods = match self.env_type() {
            EnvType::Function => self.inner.client.methods().await,
            EnvType::Http => self.inner.client.openapi_methods().await,
        };
        match methods {
            Ok(methods) => Ok(methods),
            Err(err) => Err(self.explain(err).await),
        }
    }

    /// Whether the environment answers `/health` with ready (an HTTP-based one: answers it
    /// below 500, as it may have no such route).
    pub async fn is_ready(&self) -> bool {
        if self.inner.is_closed() {
            return false;
        }
        match self.env_type() {
            EnvType::Function => matches!(self.inner.client.health(Duration::from_secs(5)).await, Ok(None)),
            EnvType::Http => matches!(self.inner.client.probe(Duration::from_secs(5)).await, Ok(status) if status < 500),
        }
    }

    /// Stops the environment and removes it from the registry. Idempotent. If the stop fails,
    /// it stays registered, so a later cleanup and the exit paths still try to remove it.
    pub async fn cleanup(&self) -> Result<()> {
        cleanup::stop_registered(&self.inner).await
    }

    /// A connection error from a dead server says so, with how it ended and its last log lines.
    /// The broken connection is usually seen before the exit is, so the backend is given a moment.
    pub(crate) async fn explain(&self, err: Error) -> Error {
        if !err.is_connection() {
            return err;
        }
        self.stopped_or(err).await
    }

    /// [`Error::Stopped`] if the environment has stopped, else `err`: for a lost connection of
    /// another protocol (an OpenEnv session).
    pub(crate) async fn stopped_or(&self, err: Error) -> Error {
        let backend = &self.inner.backend;
        match backend.exit_description(Duration::from_secs(2)).await {
            Some(reason) => Error::Stopped { name: self.inner.name.clone(), reason, logs: backend.last_logs(crate::backend::LOG_LINES_IN_ERRORS) },
            None => err,
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
            .field("backend", &self.inner.backend.describe())
            .finish()
    }
}

/// Every environment loaded by this process and not yet cleaned up.
pub fn list_active_environments() -> Vec<EnvironmentWrapper> {
    cleanup::all().into_iter().map(EnvironmentWrapper::new).collect()
}

/// The environment with this id, or else the only one with this name.
pub fn get_environment(id_or_name: &str) -> Option<EnvironmentWrapper> {
    cleanup::find(id_or_name).map(EnvironmentWrapper::new)
}
