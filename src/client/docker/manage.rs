//! Finding and removing what Rayfine created, by label: `rayfine ps`, `rayfine cleanup`
//! (`--all`, `--orphans`) and the test suite's leak check.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};

use super::container::remove_and_wait;
use super::engine::{connect, docker_error, is_not_found};
use super::labels;
use crate::client::error::{Error, Result};

/// A container made by Rayfine, as `rayfine ps` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManagedContainer {
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
    /// The host port on 127.0.0.1, when published.
    pub port: Option<u16>,
    /// Process id of the owner.
    pub owner_pid: Option<u32>,
    /// Whether that owner still runs.
    pub owner_alive: bool,
    /// Meant to outlive its owner (`run --keep`).
    pub keep: bool,
    /// All its labels, Rayfine's and the caller's.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ManagedContainer {
    /// Left behind: not kept, and its owner is gone.
    pub fn is_orphan(&self) -> bool {
        !self.keep && !self.owner_alive
    }
}

/// Every container labelled `rayfine.managed=true`, running or not.
pub async fn list_managed_containers() -> Result<Vec<ManagedContainer>> {
    let docker = connect().await?;
    let filters = HashMap::from([("label", vec![format!("{}=true", labels::MANAGED)])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let summaries = docker.list_containers(Some(options)).await.map_err(docker_error("cannot list containers"))?;
    let mut containers: Vec<ManagedContainer> = summaries
        .into_iter()
        .map(|summary| {
            let labels_of = summary.labels.unwrap_or_default();
            let get = |key: &str| labels_of.get(key).cloned().unwrap_or_default();
            let owner_pid = get(labels::OWNER_PID).parse().ok();
            let owner_start = get(labels::OWNER_START).parse().ok();
            let id = summary.id.unwrap_or_default();
            ManagedContainer {
                container_id: id.chars().take(12).collect(),
                env_id: get(labels::ENV_ID),
                name: get(labels::NAME),
                image: summary.image.unwrap_or_default(),
                env_type: get(labels::ENV_TYPE),
                state: summary.state.map(|s| s.to_string()).unwrap_or_default(),
                port: summary.ports.unwrap_or_default().into_iter().find_map(|p| p.public_port),
                owner_pid,
                owner_alive: labels::owner_alive(owner_pid, owner_start),
                keep: get(labels::KEEP) == "true",
                labels: labels_of.into_iter().collect(),
            }
        })
        .collect();
    containers.sort_by(|a, b| a.env_id.cmp(&b.env_id));
    Ok(containers)
}

/// Stops and removes containers by id (full or short); waits until each is gone. The error
/// names every container that is still there.
pub async fn remove_containers(ids: &[String]) -> Result<()> {
    let docker = connect().await?;
    let removals = ids.iter().map(|id| {
        let docker = docker.clone();
        async move {
            let removed = remove_and_wait(&docker, id).await;
            if removed.is_ok() {
                super::super::registry::untrack_container(id);
            }
            removed
        }
    });
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
    let docker = connect().await?;
    let filters = HashMap::from([("label", vec![format!("{}=true", labels::MANAGED)])]);
    let options = ListImagesOptionsBuilder::default().all(false).filters(&filters).build();
    let images = docker.list_images(Some(options)).await.map_err(docker_error("cannot list images"))?;
    let mut tags: Vec<String> = images.into_iter().flat_map(|i| i.repo_tags).filter(|t| t != "<none>:<none>").collect();
    tags.sort();
    Ok(tags)
}

/// Removes an image by tag; a missing one is not an error.
pub async fn remove_image(tag: &str) -> Result<()> {
    let docker = connect().await?;
    let options = RemoveImageOptionsBuilder::default().force(true).noprune(false).build();
    match docker.remove_image(tag, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(source) => Err(crate::client::error::Error::Docker { context: format!("cannot remove image {tag}"), source }),
    }
}
