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
    let id = cleanup::create_container_tracked(engine, spec).await?;
    let outcome = step(id.clone()).await;
    match remove_and_wait(engine, &id).await {
        Ok(()) => cleanup::untrack(&Leftover::Container(engine.host().clone(), id.clone())),
        Err(err) => tracing::warn!("{err}"),
    }
    outcome
}
