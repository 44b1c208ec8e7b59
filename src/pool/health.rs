//! The pool's watcher: every health interval (or at once when a caller saw a refused
//! connection) it asks each replica whether it is healthy, takes out those that have exited or
//! missed too many checks, removes what was taken out, and starts replacements until the pool is
//! at full width again. Failed replacements back off, so an image that cannot start any more does
//! not become a busy loop.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Member, Shared};
use crate::client::start_env;
use crate::docker::placement::place_for;

/// Longest wait between replacement attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Starts the watcher of a pool; it ends when the pool is cleaned up or dropped.
pub(super) fn watch(shared: Weak<Shared>) {
    let Some(wake) = shared.upgrade().map(|s| s.suspect.clone()) else { return };
    tokio::spawn(async move {
        loop {
            let Some(pool) = shared.upgrade() else { return };
            if pool.closed.load(Ordering::SeqCst) {
                return;
            }
            check(&pool).await;
            remove_retired(&pool);
            replace_missing(&pool);
            let failed = pool.failed_starts.load(Ordering::SeqCst).min(6) as u32;
            let interval = pool.options.health_interval;
            let pause = interval.checked_mul(2u32.pow(failed)).unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF.max(interval));
            // The pool is not held while waiting: dropping every handle ends the watcher.
            drop(pool);
            let _ = tokio::time::timeout(pause, wake.notified()).await;
        }
    });
}

/// Asks every serving replica; takes out those that exited or missed too many checks.
async fn check(pool: &Arc<Shared>) {
    let members: Vec<Arc<Member>> = pool.members.read().clone();
    let limit = pool.options.unhealthy_after as usize;
    let verdicts = members.iter().map(|member| async move {
        if member.env.has_exited() {
            return Some("has exited".to_string());
        }
        if member.env.is_ready().await {
            member.missed.store(0, Ordering::SeqCst);
            return None;
        }
        // A server busy with calls may be slow to answer its health check (a single-threaded
        // web server in a long step): only an idle replica's silence counts. A dead one's calls
        // fail or time out, and then it is idle.
        if member.outstanding.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let missed = member.missed.fetch_add(1, Ordering::SeqCst) + 1;
        (missed >= limit).then(|| format!("missed {missed} health checks in a row"))
    });
    let verdicts = futures_util::future::join_all(verdicts).await;
    for (member, verdict) in members.iter().zip(verdicts) {
        if let Some(why) = verdict {
            pool.take_out(member.seq, &why);
        }
    }
}

/// Removes the replicas taken out, in the background (their calls in flight end with them).
fn remove_retired(pool: &Arc<Shared>) {
    for member in std::mem::take(&mut *pool.retired.lock()) {
        tokio::spawn(async move {
            if let Err(err) = member.env.cleanup().await {
                tracing::warn!("removing replica {}: {err}", member.env.id());
            }
        });
    }
}

/// Starts as many replacements as the pool lacks, not counting those under way. Serving and
/// under-way replicas are counted under the members' lock, where a replacement's admission also
/// happens, so the pool never grows past its width.
fn replace_missing(pool: &Arc<Shared>) {
    let missing = {
        let members = pool.members.write();
        if pool.closed.load(Ordering::SeqCst) {
            return;
        }
        let missing = pool.options.replicas.saturating_sub(members.len() + pool.replacing.load(Ordering::SeqCst));
        pool.replacing.fetch_add(missing, Ordering::SeqCst);
        missing
    };
    for _ in 0..missing {
        let pool = pool.clone();
        tokio::spawn(async move {
            let started = if pool.closed.load(Ordering::SeqCst) {
                Err(crate::Error::Closed(pool.name.clone()))
            } else {
                match place_for(pool.template.mode, &pool.hosts, 1).await {
                    Ok(mut placed) => start_env(pool.template.clone(), placed.pop()).await,
                    Err(err) => Err(err),
                }
            };
            match started {
                Ok(env) => {
                    let id = env.id().to_string();
                    match pool.admit(env, true) {
                        Ok(()) => {
                            tracing::info!("pool {}: replica {id} replaces one taken out", pool.name);
                            pool.failed_starts.store(0, Ordering::SeqCst);
                            pool.replaced.fetch_add(1, Ordering::SeqCst);
                        }
                        // Cleaned up while it started: it must not outlive the pool.
                        Err(env) => {
                            if let Err(err) = env.cleanup().await {
                                tracing::warn!("removing replica {id} started for a pool cleaned up meanwhile: {err}");
                            }
                            pool.replacing.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                }
                Err(err) => {
                    let _counted = pool.members.write();
                    pool.replacing.fetch_sub(1, Ordering::SeqCst);
                    if !pool.closed.load(Ordering::SeqCst) {
                        tracing::warn!("pool {}: a replacement failed to start: {err}", pool.name);
                        *pool.last_trouble.lock() = Some(format!("a replacement failed to start: {err}"));
                        pool.failed_starts.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
    }
}
