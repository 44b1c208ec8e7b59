//! Blocking facade for synchronous callers: the async client plus a runtime of its own, one
//! `block_on` per method; calls are made on the calling thread itself
//! ([`EnvironmentWrapper::call_blocking`]).
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
        // Signals are for the host program's threads (a Python host's main thread, say).
        .on_thread_start(super::lease::block_termination_signals)
        .enable_all()
        .build()
        .expect("the blocking client's runtime starts")
});

/// Runs `future` to completion on this facade's runtime. From a thread that is inside a runtime's
/// context (a `spawn_blocking` task), where `block_on` is refused, it runs on a scoped thread.
pub(super) fn run<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|scope| scope.spawn(|| RUNTIME.block_on(future)).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
    }
    RUNTIME.block_on(future)
}

/// Runs `future` as [`run`] does, asking `interrupted` every 50 ms whether to give up: `None` if
/// it did.
pub(super) fn run_interruptible<F: std::future::Future + Send>(future: F, interrupted: &mut dyn FnMut() -> bool) -> Option<F::Output>
where
    F::Output: Send,
{
    let mut future = std::pin::pin!(future);
    loop {
        // The timer is made inside the runtime: tokio's timers need one when created.
        match run(async { tokio::time::timeout(Duration::from_millis(50), &mut future).await }) {
            Ok(output) => return Some(output),
            Err(_) if interrupted() => return None,
            Err(_) => {}
        }
    }
}

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
        self.call_with(method, &[], kwargs, None)
    }

    /// See [`EnvironmentWrapper::call_with`].
    pub fn call_with(&self, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        self.inner.call_blocking(method, args, kwargs, timeout, &mut || false)
    }

    /// See [`EnvironmentWrapper::call_as`].
    pub fn call_as<T: DeserializeOwned>(&self, method: &str, kwargs: Value) -> Result<T> {
        let value = self.call(method, kwargs)?;
        serde_json::from_value(value).map_err(|source| crate::Error::Decode { method: method.to_string(), source })
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
