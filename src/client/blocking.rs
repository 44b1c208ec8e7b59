//! Blocking facade for synchronous callers: the async client plus a runtime of its own, one
//! `block_on` per method.
//!
//! ```no_run
//! use rayfine::blocking;
//! let env = blocking::load_env(rayfine::LoadOptions::folder("environments/echo"))?;
//! let pong = env.call("ping", serde_json::json!({}))?;
//! env.cleanup()?;
//! # Ok::<(), rayfine::Error>(())
//! ```

use std::time::Duration;

use once_cell::sync::Lazy;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{EnvironmentWrapper, LoadOptions, Result};
use crate::protocol::MethodInfo;

/// One worker thread keeps background tasks (log collection, exit watching) running between
/// calls. A static is fine here: cleanup never depends on this runtime being dropped.
static RUNTIME: Lazy<tokio::runtime::Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rayfine-blocking")
        .enable_all()
        .build()
        .expect("the blocking client's runtime starts")
});

/// A loaded environment with blocking methods. Must not be used from inside an async runtime.
#[derive(Clone, Debug)]
pub struct Environment {
    inner: EnvironmentWrapper,
}

/// Blocking [`load_env`](super::load_env).
pub fn load_env(options: LoadOptions) -> Result<Environment> {
    RUNTIME.block_on(super::load_env(options)).map(|inner| Environment { inner })
}

/// Blocking [`cleanup_all_environments`](super::cleanup_all_environments).
pub fn cleanup_all_environments() -> usize {
    RUNTIME.block_on(super::cleanup_all_environments())
}

impl Environment {
    /// The async handle, for mixing both styles.
    pub fn inner(&self) -> &EnvironmentWrapper {
        &self.inner
    }

    /// Registry id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// See [`EnvironmentWrapper::call`].
    pub fn call(&self, method: &str, kwargs: Value) -> Result<Value> {
        RUNTIME.block_on(self.inner.call(method, kwargs))
    }

    /// See [`EnvironmentWrapper::call_with`].
    pub fn call_with(&self, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        RUNTIME.block_on(self.inner.call_with(method, args, kwargs, timeout))
    }

    /// See [`EnvironmentWrapper::call_as`].
    pub fn call_as<T: DeserializeOwned>(&self, method: &str, kwargs: Value) -> Result<T> {
        RUNTIME.block_on(self.inner.call_as(method, kwargs))
    }

    /// See [`EnvironmentWrapper::list_methods`].
    pub fn list_methods(&self) -> Result<Vec<MethodInfo>> {
        RUNTIME.block_on(self.inner.list_methods())
    }

    /// See [`EnvironmentWrapper::is_ready`].
    pub fn is_ready(&self) -> bool {
        RUNTIME.block_on(self.inner.is_ready())
    }

    /// See [`EnvironmentWrapper::cleanup`].
    pub fn cleanup(&self) -> Result<()> {
        RUNTIME.block_on(self.inner.cleanup())
    }
}
