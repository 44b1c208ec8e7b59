//! A warm pool: environments started before they are needed, so that an RL loop that wants a
//! fresh environment per episode takes one in milliseconds instead of waiting for a container to
//! start (hundreds of milliseconds in Docker, seconds under load).
//!
//! Taking one hands it over for good (the caller calls and cleans it up as any other) and starts
//! a replacement in the background, so the pool stays `size` deep while starts keep up. A spare
//! that died while it waited (its container removed from outside, its server crashed) is removed
//! and the next is taken; with none left, the caller waits for a start of its own, as `load_env`
//! would. Spares are ordinary registered environments: every exit path removes them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{start_replicas, MAX_REPLICAS};
use crate::client::{load_env, EnvironmentWrapper, LoadOptions};
use crate::error::{Error, Result};

/// Environments of one configuration, started ahead of need.
///
/// ```no_run
/// # async fn demo() -> rayfine::Result<()> {
/// use rayfine::{LoadOptions, WarmPool};
/// let pool = WarmPool::start(LoadOptions::image("my-env:v1"), 4).await?;
/// for episode in 0..100 {
///     let env = pool.acquire().await?; // a started environment, in milliseconds
///     env.call("evaluate", serde_json::json!({"episode": episode})).await?;
///     env.cleanup().await?;
/// }
/// pool.cleanup().await?;
/// # Ok(()) }
/// ```
pub struct WarmPool {
    shared: Arc<Shared>,
}

struct Shared {
    options: LoadOptions,
    size: usize,
    /// Started spares, oldest first.
    spares: Mutex<VecDeque<EnvironmentWrapper>>,
    /// Replacements under way.
    refilling: AtomicUsize,
    /// Woken when a replacement ends (for `cleanup`, which waits for them).
    refilled: tokio::sync::Notify,
    closed: AtomicBool,
    /// How many were handed out warm, and how many callers had to wait for a start.
    warm: AtomicU64,
    cold: AtomicU64,
}

impl WarmPool {
    /// Starts `size` environments of `options` at once (1 to 1,024) and returns when all are
    /// ready; if any fails, those that started are removed and the error says why.
    pub async fn start(options: LoadOptions, size: usize) -> Result<WarmPool> {
        if size == 0 || size > MAX_REPLICAS {
            return Err(Error::InvalidInput(format!("a warm pool holds 1 to {MAX_REPLICAS} environments, not {size}")));
        }
        if options.keep {
            return Err(Error::InvalidInput("a warm pool's spares end with this process: leave `keep` off".into()));
        }
        let started = start_replicas(&options, size).await?;
        let shared = Arc::new(Shared {
            options,
            size,
            spares: Mutex::new(started.into()),
            refilling: AtomicUsize::new(0),
            refilled: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            warm: AtomicU64::new(0),
            cold: AtomicU64::new(0),
        });
        Ok(WarmPool { shared })
    }

    /// A started environment, now the caller's: a spare that still answers its health check
    /// (a dead one is removed), else one started for this call. A replacement starts in the
    /// background either way.
    pub async fn acquire(&self) -> Result<EnvironmentWrapper> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(Error::InvalidInput("this warm pool was cleaned up".into()));
        }
        loop {
            let Some(env) = shared.spares.lock().pop_front() else { break };
            Shared::refill(shared);
            if env.is_ready().await {
                shared.warm.fetch_add(1, Ordering::Relaxed);
                return Ok(env);
            }
            tracing::warn!("warm pool: spare {} no longer answers; removing it", env.id());
            if let Err(err) = env.cleanup().await {
                tracing::warn!("warm pool: removing spare {}: {err}", env.id());
            }
        }
        shared.cold.fetch_add(1, Ordering::Relaxed);
        load_env(shared.options.clone()).await
    }

    /// Spares ready now.
    pub fn ready(&self) -> usize {
        self.shared.spares.lock().len()
    }

    /// How many spares the pool keeps.
    pub fn size(&self) -> usize {
        self.shared.size
    }

    /// The spares ready now, oldest first (still the pool's: to look at, not to take).
    pub fn spares(&self) -> Vec<EnvironmentWrapper> {
        self.shared.spares.lock().iter().cloned().collect()
    }

    /// How many environments were handed out from spares, and how many callers found none ready
    /// and waited for a start.
    pub fn handed_out(&self) -> (u64, u64) {
        (self.shared.warm.load(Ordering::Relaxed), self.shared.cold.load(Ordering::Relaxed))
    }

    /// Removes the spares (and those still starting, once started); environments handed out are
    /// the callers' and stay. Idempotent.
    pub async fn cleanup(&self) -> Result<()> {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        // A replacement that ends after this sees the pool closed and removes what it started.
        while shared.refilling.load(Ordering::SeqCst) > 0 {
            let refilled = shared.refilled.notified();
            if shared.refilling.load(Ordering::SeqCst) == 0 {
                break;
            }
            refilled.await;
        }
        let spares: Vec<EnvironmentWrapper> = shared.spares.lock().drain(..).collect();
        let mut first_error = None;
        for stopped in futures_util::future::join_all(spares.iter().map(EnvironmentWrapper::cleanup)).await {
            if let Err(err) = stopped {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Shared {
    /// Starts one replacement in the background, unless the pool is closed or already as deep
    /// as its size counting those under way.
    fn refill(shared: &Arc<Shared>) {
        if shared.closed.load(Ordering::SeqCst) || shared.spares.lock().len() + shared.refilling.load(Ordering::SeqCst) >= shared.size {
            return;
        }
        shared.refilling.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            match load_env(shared.options.clone()).await {
                Ok(env) => {
                    let mut spares = shared.spares.lock();
                    if shared.closed.load(Ordering::SeqCst) {
                        drop(spares);
                        if let Err(err) = env.cleanup().await {
                            tracing::warn!("warm pool: removing a spare started after cleanup: {err}");
                        }
                    } else {
                        spares.push_back(env);
                    }
                }
                Err(err) => tracing::warn!("warm pool: a replacement spare did not start: {err}"),
            }
            shared.refilling.fetch_sub(1, Ordering::SeqCst);
            shared.refilled.notify_waiters();
        });
    }
}

impl Drop for WarmPool {
    /// A pool dropped without `cleanup()` removes its spares in the background.
    fn drop(&mut self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let spares: Vec<EnvironmentWrapper> = self.shared.spares.lock().drain(..).collect();
        if spares.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a warm pool dropped outside an async runtime without cleanup: its spares end with this process");
            return;
        };
        runtime.spawn(async move {
            for env in spares {
                if let Err(err) = env.cleanup().await {
                    tracing::warn!("removing spare {} of a dropped warm pool: {err}", env.id());
                }
            }
        });
    }
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool").field("size", &self.shared.size).field("ready", &self.ready()).field("handed_out", &self.handed_out()).finish()
    }
}
