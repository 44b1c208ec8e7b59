//! The one owner of cleanup: the registry of this process's environments, the containers that
//! belong to none yet (between create and ready, and a build's scratch containers), and the
//! cleanup that must happen however this process ends: explicit cleanup, the guard at the end of
//! `main`, Ctrl-C, SIGTERM, or a panic.
//!
//! It holds ids and [`Running`] environments (backend handles), never the user's wrappers.
//! `parking_lot` mutexes guard the maps; they are never held across an `.await`: callers copy
//! what they need out first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use std::sync::Arc;

use super::running::Running;
use crate::backend::KillNow;
use crate::docker::engine::{ContainerSpec, Engine, EngineError};
use crate::docker::Leftover;

static REGISTRY: Lazy<Mutex<BTreeMap<String, Arc<Running>>>> = Lazy::new(|| Mutex::new(BTreeMap::new()));

/// Containers, services and secrets (ids, or names while being created) behind no registered
/// environment, with the engine each is on: between create and ready, a Ctrl-C must still
/// remove them.
static PENDING: Lazy<Mutex<BTreeSet<Leftover>>> = Lazy::new(|| Mutex::new(BTreeSet::new()));

/// Records something this process must remove if it ends now; call it before the request that
/// creates it is sent.
pub(crate) fn track(leftover: Leftover) {
    PENDING.lock().insert(leftover);
    crate::docker::owner_watch::busy();
}

/// Environments taken out of the registry and not yet stopped: their containers are in neither
/// `PENDING` nor the registry meanwhile.
static STOPPING: AtomicUsize = AtomicUsize::new(0);

/// Set for good once an exit path took tracked leftovers it could not prove gone (a create may
/// still be under way in the engine): from then on, the watchdogs keep their sweeps.
static LEFT_UNPROVEN: AtomicBool = AtomicBool::new(false);

/// Tells the owner watchdogs that this process has nothing left for them to remove, if so:
/// nothing tracked (no create under way), nothing being stopped, and no registered environment
/// that is not kept. The order matters: an environment enters the registry before it leaves
/// `PENDING` (`register`), and `STOPPING` before it leaves the registry (`stop_registered`), so
/// looking at `PENDING`, then the registry, then `STOPPING` cannot miss one on its way. One that
/// goes back into the registry after a failed stop says "busy" there (`register`).
fn tell_watchdogs_if_clean() {
    crate::docker::owner_watch::clean_if(|| {
        !LEFT_UNPROVEN.load(Ordering::SeqCst)
            && PENDING.lock().is_empty()
            && REGISTRY.lock().values().all(|env| env.keep)
            && STOPPING.load(Ordering::SeqCst) == 0
    });
}

/// Counts an environment as being stopped while it lives (see [`STOPPING`]).
struct Stopping;

impl Stopping {
    fn begin() -> Stopping {
        STOPPING.fetch_add(1, Ordering::SeqCst);
        Stopping
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        STOPPING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Creates a container from `spec`, tracked by its name before the request is sent and by its
/// id once the engine answers, so that an exit at any moment removes it. A refusal (an HTTP
/// status) proves nothing was made; with no answer at all (the connection broke) the engine may
/// still make it, so the name stays tracked.
pub(crate) async fn create_container_tracked(engine: &Engine, spec: ContainerSpec) -> Result<String, EngineError> {
    let by_name = Leftover::Container(engine.host().clone(), spec.name.clone());
    track(by_name.clone());
    let id = match engine.create_container(spec).await {
        Ok(id) => id,
        Err(err) => {
            if err.status().is_some() {
                untrack(&by_name);
            }
            return Err(err);
        }
    };
    track(Leftover::Container(engine.host().clone(), id.clone()));
    untrack(&by_name);
    Ok(id)
}

/// Forgets it: removed, or now behind a registered environment.
pub(crate) fn untrack(leftover: &Leftover) {
    PENDING.lock().remove(leftover);
}

/// Takes ownership of a started environment; from now on it is ended with this process.
pub(crate) fn register(env: Arc<Running>) {
    let covered = env.backend.leftovers();
    if !env.keep {
        // Registered again after a failed stop, the watchdogs may have been told "clean".
        crate::docker::owner_watch::busy();
    }
    REGISTRY.lock().insert(env.id.clone(), env);
    // From now on the registry covers them (and leaves them alone at exit if kept).
    for leftover in &covered {
        untrack(leftover);
    }
}

/// Stops an environment that is registered, or was: it leaves the registry for the stop and
/// goes back if the stop fails, so a later cleanup and the exit paths still try to remove it.
/// A stop that succeeded may tell the watchdogs that nothing is left.
pub(crate) async fn stop_registered(env: &Arc<Running>) -> crate::Result<()> {
    let stopping = Stopping::begin();
    REGISTRY.lock().remove(&env.id);
    let stopped = env.stop().await;
    if stopped.is_err() {
        register(env.clone());
    }
    drop(stopping);
    if stopped.is_ok() {
        tell_watchdogs_if_clean();
    }
    stopped
}

/// Every registered environment.
pub(crate) fn all() -> Vec<Arc<Running>> {
    REGISTRY.lock().values().cloned().collect()
}

/// The environment with this id, or else the only one with this name.
pub(crate) fn find(id_or_name: &str) -> Option<Arc<Running>> {
    let registry = REGISTRY.lock();
    if let Some(env) = registry.get(id_or_name) {
        return Some(env.clone());
    }
    let mut named = registry.values().filter(|env| env.name == id_or_name);
    match (named.next(), named.next()) {
        (Some(env), None) => Some(env.clone()),
        _ => None,
    }
}

/// Cleans up every registered environment, kept ones included; returns how many there were.
pub async fn cleanup_all_environments() -> usize {
    let all: Vec<Arc<Running>> = REGISTRY.lock().values().cloned().collect();
    let count = all.len();
    for result in futures_util::future::join_all(all.iter().map(stop_registered)).await {
        if let Err(err) = result {
            tracing::warn!("cleanup failed: {err}");
        }
    }
    count
}

/// Ends every environment that is not kept, at once and without an async runtime.
pub(crate) fn kill_all_now() {
    let all: Vec<Arc<Running>> = {
        let mut registry = REGISTRY.lock();
        let doomed: Vec<String> = registry.iter().filter(|(_, env)| !env.keep).map(|(id, _)| id.clone()).collect();
        doomed.into_iter().filter_map(|id| registry.remove(&id)).collect()
    };
    let mut leftovers: Vec<Leftover> = all
        .iter()
        .flat_map(|env| match env.kill_now() {
            KillNow::Done => Vec::new(),
            KillNow::Remove(leftovers) => leftovers,
        })
        .collect();
    let pending = std::mem::take(&mut *PENDING.lock());
    // Something tracked may be a create still under way, which a removal by name cannot prove
    // gone; and once taken, it is tracked no more, so a later exit path must know.
    if !pending.is_empty() {
        LEFT_UNPROVEN.store(true, Ordering::SeqCst);
    }
    leftovers.extend(pending);
    leftovers.sort();
    leftovers.dedup();
    if crate::docker::remove_now(leftovers) {
        tell_watchdogs_if_clean();
    }
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

/// Whether [`install_handlers`] takes SIGINT and SIGTERM (see [`leave_signals_to_the_host`]).
static TAKE_SIGNALS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Leaves SIGINT and SIGTERM to the embedding program: `load_env` then installs no signal handler
/// of its own. For hosts with their own signal handling, such as a Python interpreter, whose
/// Ctrl-C must stay a `KeyboardInterrupt`; the host calls [`end_all_environments_now`] on its
/// way out. Call it before the first `load_env`.
pub fn leave_signals_to_the_host() {
    TAKE_SIGNALS.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Whether Rayfine's own Ctrl-C/SIGTERM handler is (or will be) the one: the host did not call
/// [`leave_signals_to_the_host`].
pub(crate) fn rayfine_takes_signals() -> bool {
    TAKE_SIGNALS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Ends every environment of this process that is not kept, at once, without an async runtime:
/// for an embedding program's exit path (an `atexit` hook, a signal handler of its own).
pub fn end_all_environments_now() {
    kill_all_now();
}

/// Installs, once per process, a Ctrl-C/SIGTERM handler (unless the host keeps the signals) and
/// a panic hook that end every environment before the process goes. A program that already set
/// its own SIGINT handler keeps it; its children still end when it exits (see the process
/// backend).
pub(crate) fn install_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if TAKE_SIGNALS.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(err) = ctrlc::set_handler(|| {
                kill_all_now();
                std::process::exit(130);
            }) {
                tracing::debug!("not installing a signal handler: {err}");
            }
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
