//! Finding and removing what Rayfine created, by label: `rayfine ps`, `rayfine cleanup`
//! (`--all`, `--orphans`) and the test suite's leak check.

use super::cache_lock::{self, CacheLock};
use super::engine::{short, Engine};
use super::host::DockerHost;
use super::orphaned_images;
use super::removal::remove_and_wait;
use crate::error::{Error, Result};
use crate::labels;

/// A container made by Rayfine, as `rayfine ps` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManagedContainer {
    /// The engine it is on.
    pub host: DockerHost,
    /// The engine's container id (short form).
    pub container_id: String,
    /// The environment's registry id.
    pub env_id: String,
    /// The environment's name.
    pub name: String,
    /// The image it runs.
    pub image: String,
    /// `function` or `http`.
    pub env_type: String,
    /// The engine's state: `running`, `exited`, ...
    pub state: String,
    /// The port published on its host (on 127.0.0.1 when that is this machine).
    pub port: Option<u16>,
    /// Process id of the owner.
    pub owner_pid: Option<u32>,
    /// Whether that owner still runs; for a container that names none (a build's scratch
    /// container), whether it is young enough to belong to a build under way.
    pub owner_alive: bool,
    /// Meant to outlive its owner (`run --keep`).
    pub keep: bool,
    /// All its labels, Rayfine's and the caller's.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ManagedContainer {
    /// Where its server answers, when its port is published.
    pub fn url(&self) -> Option<String> {
        self.port.map(|port| format!("http://{}:{port}", super::host::bracketed(&self.host.client_address())))
    }

    /// The pool it is a replica of, if any.
    pub fn pool(&self) -> Option<&str> {
        self.labels.get(crate::pool::POOL_LABEL).map(String::as_str)
    }

    /// Left behind: not kept, and its owner is gone.
    pub fn is_orphan(&self) -> bool {
        !self.keep && !self.owner_alive
    }
}

/// Every container labelled `rayfine.managed=true` on this machine's engine, running or not.
pub async fn list_managed_containers() -> Result<Vec<ManagedContainer>> {
    list_managed_containers_on(&DockerHost::Local).await
}

/// Every container labelled `rayfine.managed=true` on `host`'s engine, running or not.
pub async fn list_managed_containers_on(host: &DockerHost) -> Result<Vec<ManagedContainer>> {
    let engine = Engine::connect_to(host).await?;
    let summaries = engine.list_containers(&format!("{}=true", labels::MANAGED)).await?;
    let now = unix_now();
    let mut containers: Vec<ManagedContainer> = summaries
        .into_iter()
        .map(|summary| {
            let get = |key: &str| summary.labels.get(key).cloned().unwrap_or_default();
            let owner_pid = get(labels::OWNER_PID).parse().ok();
            let owner_start = get(labels::OWNER_START).parse().ok();
            ManagedContainer {
                host: host.clone(),
                container_id: short(&summary.id).to_string(),
                env_id: get(labels::ENV_ID),
                name: get(labels::NAME),
                env_type: get(labels::ENV_TYPE),
                keep: get(labels::KEEP) == "true",
                image: summary.image,
                state: summary.state,
                port: summary.public_port,
                owner_pid,
                owner_alive: container_owner_alive(owner_pid, owner_start, summary.created, now),
                labels: summary.labels.into_iter().collect(),
            }
        })
        .collect();
    containers.sort_by(|a, b| a.env_id.cmp(&b.env_id));
    Ok(containers)
}

/// How long a container that names no owner is taken to be in use by the build that made it.
const OWNERLESS_IN_USE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether the owner of a container created at `created` (Unix seconds) still runs, at `now`.
/// A container that names no owner is a build's scratch container (stage 2 commits it, and the
/// image would keep an owner's labels): its build, in this process or another, is taken to be
/// under way while the container is younger than [`OWNERLESS_IN_USE`], far longer than a commit
/// takes, so that `cleanup --orphans` does not pull it from under a running build. Older, a build
/// that died left it.
fn container_owner_alive(pid: Option<u32>, start: Option<u64>, created: Option<i64>, now: i64) -> bool {
    match pid {
        Some(_) => labels::owner_alive(pid, start),
        None => created.is_some_and(|created| now.saturating_sub(created) < OWNERLESS_IN_USE.as_secs() as i64),
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// An environment Rayfine runs as a Swarm service, as `rayfine ps` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManagedService {
    /// The manager it was found on.
    pub host: DockerHost,
    /// The service's id.
    pub service_id: String,
    /// Its name (also its secret's).
    pub service_name: String,
    /// The environment's registry id.
    pub env_id: String,
    /// The environment's name.
    pub name: String,
    /// Process id of the owner.
    pub owner_pid: Option<u32>,
    /// Whether that owner still runs.
    pub owner_alive: bool,
    /// Meant to outlive its owner.
    pub keep: bool,
    /// All its labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ManagedService {
    /// Left behind: not kept, and its owner is gone.
    pub fn is_orphan(&self) -> bool {
        !self.keep && !self.owner_alive
    }

    /// The pool it is a replica of, if any.
    pub fn pool(&self) -> Option<&str> {
        self.labels.get(crate::pool::POOL_LABEL).map(String::as_str)
    }
}

/// Every service labelled `rayfine.managed=true` on `host` (none when it is no Swarm manager).
pub async fn list_managed_services_on(host: &DockerHost) -> Result<Vec<ManagedService>> {
    let engine = Engine::connect_to(host).await?;
    let services = engine.list_services(&format!("{}=true", labels::MANAGED)).await?;
    Ok(services
        .into_iter()
        .map(|service| {
            let get = |key: &str| service.labels.get(key).cloned().unwrap_or_default();
            let owner_pid = get(labels::OWNER_PID).parse().ok();
            let owner_start = get(labels::OWNER_START).parse().ok();
            ManagedService {
                host: host.clone(),
                env_id: get(labels::ENV_ID),
                name: get(labels::NAME),
                keep: get(labels::KEEP) == "true",
                owner_pid,
                owner_alive: labels::owner_alive(owner_pid, owner_start),
                service_id: service.id,
                service_name: service.name,
                labels: service.labels.into_iter().collect(),
            }
        })
        .collect())
}

/// Removes services and their secrets from `host`'s engine. The error names every one that
/// could not be removed.
pub async fn remove_services_on(host: &DockerHost, services: &[ManagedService]) -> Result<()> {
    let engine = Engine::connect_to(host).await?;
    let removals = services.iter().map(|service| {
        let engine = engine.clone();
        async move {
            match engine.remove_service(&service.service_id).await {
                Err(err) if !err.is_not_found() => return Err(Error::from(err)),
                _ => {}
            }
            // The secret is named like the service; it is free once the service is gone.
            match engine.remove_secret_when_free(&service.service_name).await {
                Err(err) if !err.is_not_found() => Err(err.into()),
                _ => Ok(()),
            }
        }
    });
    let failures: Vec<String> = futures_util::future::join_all(removals).await.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect();
    match failures.is_empty() {
        true => Ok(()),
        false => Err(Error::InvalidInput(failures.join("; "))),
    }
}

/// Stops and removes containers of this machine's engine by id (full or short); waits until
/// each is gone. The error names every container that is still there.
pub async fn remove_containers(ids: &[String]) -> Result<()> {
    remove_containers_on(&DockerHost::Local, ids).await
}

/// [`remove_containers`] on `host`'s engine.
pub async fn remove_containers_on(host: &DockerHost, ids: &[String]) -> Result<()> {
    let engine = Engine::connect_to(host).await?;
    let removals = ids.iter().map(|id| remove_and_wait(&engine, id));
    let failures: Vec<Error> = futures_util::future::join_all(removals).await.into_iter().filter_map(Result::err).collect();
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.into_iter().next().expect("one failure")),
        n => Err(Error::InvalidInput(format!(
            "{n} containers are still there: {}",
            failures.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; ")
        ))),
    }
}

/// Tags of every image labelled `rayfine.managed=true`.
pub async fn list_managed_images() -> Result<Vec<String>> {
    let engine = Engine::connect().await?;
    let mut tags = engine.list_image_tags(&format!("{}=true", labels::MANAGED)).await?;
    tags.sort();
    Ok(tags)
}

/// Removes an image by tag, and its untagged parents that nothing else uses; a missing one is
/// not an error. It waits (up to ten minutes) for the image builds that Rayfine processes on this
/// machine are running on the engine, so as not to remove a layer one of them is taking from the
/// cache. Then, still before any build starts, it removes the images earlier builds lost to such
/// races with others' removals (see `orphaned_images`).
pub async fn remove_image(tag: &str) -> Result<()> {
    remove_image_on(&DockerHost::Local, tag).await
}

/// [`remove_image`] on `host`'s engine.
pub async fn remove_image_on(host: &DockerHost, tag: &str) -> Result<()> {
    let engine = Engine::connect_to(host).await?;
    let no_build_under_way = CacheLock::of_engine(&engine).await.for_removal(cache_lock::REMOVAL_WAIT).await;
    let removed = match engine.remove_image(tag).await {
        Err(err) if !err.is_not_found() => Err(err.into()),
        _ => Ok(()),
    };
    // With no build under way, what a build lost to a race is no build's any more: certainly for
    // Rayfine's builds through this address, or through any address of an engine that said who
    // it is; not for one through another address that could not learn that in time.
    if no_build_under_way.is_some() {
        orphaned_images::remove_orphaned_images(&engine).await;
    }
    removed
}

/// How container `id` of the local engine ended, as the engine tells it; `None` while it runs
/// (or if the engine cannot be asked).
pub async fn describe_exit(id: &str) -> Option<String> {
    describe_exit_on(&DockerHost::Local, id).await
}

/// How container `id` on `host` ended, as its engine tells it; `None` while it runs (or if the
/// engine cannot be asked).
pub async fn describe_exit_on(host: &DockerHost, id: &str) -> Option<String> {
    let short = short(id);
    let engine = Engine::connect_to(host).await.ok()?;
    match engine.inspect_container(id).await {
        Err(err) if err.is_not_found() => Some(format!("its container {short} is gone (it exited and was removed, or was removed from outside)")),
        Err(_) => None,
        Ok(facts) if facts.running => None,
        Ok(facts) => {
            let code = facts.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default();
            let oom = if facts.oom_killed { " (out of memory)" } else { "" };
            Some(format!("its container {short} has exited{code}{oom}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ownerless_container_is_in_use_only_while_younger_than_a_build_takes() {
        let now = 1_800_000_000;
        // A build's scratch container, just made (by this process or another): not an orphan.
        assert!(container_owner_alive(None, None, Some(now - 5), now));
        // One a dead build left long ago, or one whose age the engine did not give: an orphan.
        assert!(!container_owner_alive(None, None, Some(now - 3600), now));
        assert!(!container_owner_alive(None, None, None, now));
        // One that names an owner goes by that owner, however young: this process runs, and a
        // pid beyond the kernel's limit cannot.
        let me = std::process::id();
        assert!(container_owner_alive(Some(me), labels::process_start_time(me), Some(now - 3600), now));
        assert!(!container_owner_alive(Some(4_194_304), Some(1), Some(now), now));
    }
}
