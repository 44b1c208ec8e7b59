//! A container that exists only for one step of a build (checking env.py, committing stage 2):
//! created, tracked for cleanup at once, used, and removed whatever the step's outcome.

use std::future::Future;

use crate::client::cleanup;
use crate::docker::engine::{ContainerSpec, Engine};
use crate::docker::{remove_and_wait, Leftover};
use crate::error::Result;

/// Creates a container from `spec` (named `rayfine-<purpose>-<random>`), runs `step` with its
/// id, then removes it; returns the step's result.
pub(crate) async fn with_scratch_container<T, F, Fut>(engine: &Engine, purpose: &str, mut spec: ContainerSpec, step: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    spec.name = format!("rayfine-{purpose}-{}", crate::random::hex(6)?);
    // Tracked by name before it exists, as an environment's container is, so that an exit while
    // the engine creates it still removes it.
    let by_name = Leftover::Container(engine.host().clone(), spec.name.clone());
    cleanup::track(by_name.clone());
    let id = match engine.create_container(spec).await {
        Ok(id) => id,
        Err(err) => {
            if err.status().is_some() {
                cleanup::untrack(&by_name);
            }
            return Err(err.into());
        }
    };
    cleanup::track(Leftover::Container(engine.host().clone(), id.clone()));
    cleanup::untrack(&by_name);
    let outcome = step(id.clone()).await;
    match remove_and_wait(engine, &id).await {
        Ok(()) => cleanup::untrack(&Leftover::Container(engine.host().clone(), id.clone())),
        Err(err) => tracing::warn!("{err}"),
    }
    outcome
}
