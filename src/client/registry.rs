//! The global registry of loaded environments, and the cleanup that must happen however this
//! process ends: explicit cleanup, the guard at the end of `main`, Ctrl-C, SIGTERM, or a panic.
//!
//! A `parking_lot` mutex guards the map; it is never held across an `.await`: callers copy the
//! handles they need out of it first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Once;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::environment::EnvironmentWrapper;

static REGISTRY: Lazy<Mutex<BTreeMap<String, EnvironmentWrapper>>> = Lazy::new(|| Mutex::new(BTreeMap::new()));

/// Containers created but not yet (or no longer) behind a registered environment: between
/// create and ready, a Ctrl-C must still remove them.
static PENDING_CONTAINERS: Lazy<Mutex<BTreeSet<String>>> = Lazy::new(|| Mutex::new(BTreeSet::new()));

pub(crate) fn track_container(id: &str) {
    PENDING_CONTAINERS.lock().insert(id.to_string());
}

pub(crate) fn untrack_container(id: &str) {
    PENDING_CONTAINERS.lock().remove(id);
}

pub(crate) fn register(env: EnvironmentWrapper) {
    REGISTRY.lock().insert(env.id().to_string(), env);
}

pub(crate) fn unregister(id: &str) {
    REGISTRY.lock().remove(id);
}

/// Every environment loaded by this process and not yet cleaned up.
pub fn list_active_environments() -> Vec<EnvironmentWrapper> {
    REGISTRY.lock().values().cloned().collect()
}

/// The environment with this id, or else the only one with this name.
pub fn get_environment(id_or_name: &str) -> Option<EnvironmentWrapper> {
    let registry = REGISTRY.lock();
    if let Some(env) = registry.get(id_or_name) {
        return Some(env.clone());
    }
    let mut named = registry.values().filter(|env| env.name() == id_or_name);
    match (named.next(), named.next()) {
        (Some(env), None) => Some(env.clone()),
        _ => None,
    }
}

/// Cleans up every registered environment, kept ones included; returns how many there were.
pub async fn cleanup_all_environments() -> usize {
    let all: Vec<EnvironmentWrapper> = std::mem::take(&mut *REGISTRY.lock()).into_values().collect();
    let count = all.len();
    let stops = all.iter().map(|env| env.cleanup());
    for result in futures_util::future::join_all(stops).await {
        if let Err(err) = result {
            tracing::warn!("cleanup failed: {err}");
        }
    }
    count
}

/// Ends every environment that is not kept, at once and without an async runtime.
pub(crate) fn kill_all_now() {
    let all: Vec<EnvironmentWrapper> = {
        let mut registry = REGISTRY.lock();
        let doomed: Vec<String> = registry.iter().filter(|(_, env)| !env.is_kept()).map(|(id, _)| id.clone()).collect();
        doomed.into_iter().filter_map(|id| registry.remove(&id)).collect()
    };
    let mut containers: Vec<String> = all.iter().filter_map(EnvironmentWrapper::kill_now).collect();
    containers.extend(std::mem::take(&mut *PENDING_CONTAINERS.lock()));
    containers.sort();
    containers.dedup();
    super::docker::remove_now(containers);
}

/// Cleans up every environment when dropped: hold one in `main` so a normal return or an
/// unwinding panic removes them all.
///
/// ```no_run
/// # async fn demo() -> rayfine::Result<()> {
/// let _cleanup = rayfine::CleanupGuard::new();
/// let env = rayfine::load_env(rayfine::LoadOptions::folder("environments/echo")).await?;
/// # Ok(()) }
/// ```
#[must_use = "the guard cleans up when it is dropped; bind it to a named variable"]
#[derive(Debug, Default)]
pub struct CleanupGuard {
    _private: (),
}

impl CleanupGuard {
    /// A guard; also installs the signal and panic handlers.
    pub fn new() -> CleanupGuard {
        install_handlers();
        CleanupGuard { _private: () }
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        kill_all_now();
    }
}

/// Installs, once per process, a Ctrl-C/SIGTERM handler and a panic hook that end every
/// environment before the process goes. A program that already set its own SIGINT handler keeps
/// it; its children still end when it exits (see the process backend).
pub(crate) fn install_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(err) = ctrlc::set_handler(|| {
            kill_all_now();
            std::process::exit(130);
        }) {
            tracing::debug!("not installing a signal handler: {err}");
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic on the main thread ends the process; elsewhere the program may go on.
            if std::thread::current().name() == Some("main") {
                kill_all_now();
            }
            previous(info);
        }));
    });
}
