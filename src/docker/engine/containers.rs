//! Container operations: create, copy in, attach, start, inspect, stop, remove, wait, logs,
//! commit, list.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use super::{Engine, EngineError, EngineResult};

/// What a container is made of, in Rayfine's terms.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// The container's name.
    pub name: String,
    /// The image it runs.
    pub image: String,
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Replaces the image's entrypoint (and so drops its cmd).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd.
    pub cmd: Option<Vec<String>>,
    /// Container ports (TCP) to publish, each on a port the engine picks: on 127.0.0.1 on this
    /// machine, on every address of another host (see [`DockerHost::publish_address`]).
    ///
    /// [`DockerHost::publish_address`]: crate::docker::DockerHost
    pub published: Vec<u16>,
    /// Keep stdin open for an attach, closed for good when that attach ends (`StdinOnce`).
    pub watch_stdin: bool,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// No network at all.
    pub network_disabled: bool,
    /// `no-new-privileges`: setuid binaries cannot raise privileges.
    pub no_new_privileges: bool,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Most processes and threads.
    pub pids_limit: Option<i64>,
}

/// A container's state, as inspect tells it.
#[derive(Debug, Clone, Default)]
pub struct ContainerFacts {
    /// Whether its process runs.
    pub running: bool,
    /// The engine's word for its state: `created`, `running`, `exited`, ...
    pub status: String,
    /// Its exit code, once exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// Host port of each published container port (`"8000/tcp"` → 32768).
    pub host_ports: HashMap<String, u16>,
}

impl ContainerFacts {
    /// The host port the engine bound for TCP `container_port`.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.host_ports.get(&format!("{container_port}/tcp")).copied()
    }
}

/// One container of a listing.
#[derive(Debug, Clone)]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// Its image.
    pub image: String,
    /// `running`, `exited`, ...
    pub state: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// The first published host port.
    pub public_port: Option<u16>,
    /// When the engine created it, in seconds since the Unix epoch.
    pub created: Option<i64>,
}

/// A chunk of a container's output.
#[derive(Debug)]
pub enum Output {
    /// Written to stdout (or a terminal).
    Stdout(bytes::Bytes),
    /// Written to stderr.
    Stderr(bytes::Bytes),
}

/// Both ends of an attach: the container's stdin, and its output until it exits.
pub struct Attached {
    /// Write end of the container's stdin (when attached with it); closing it closes the stdin.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The output; ends when the container exits or the connection breaks.
    pub output: Pin<Box<dyn Stream<Item = Output> + Send>>,
}

impl Engine {
    /// Creates a container; returns its id.
    pub async fn create_container(&self, spec: ContainerSpec) -> EngineResult<String> {
        let address = self.host.publish_address();
        let binding = || Some(vec![PortBinding { host_ip: Some(address.into()), host_port: Some(String::new()) }]);
        let exposed: Vec<String> = spec.published.iter().map(|port| format!("{port}/tcp")).collect();
        let host_config = HostConfig {
            port_bindings: (!exposed.is_empty()).then(|| exposed.iter().map(|key| (key.clone(), binding())).collect()),
            auto_remove: Some(spec.auto_remove),
            security_opt: spec.no_new_privileges.then(|| vec!["no-new-privileges:true".into()]),
            pids_limit: spec.pids_limit,
            memory: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env),
            labels: Some(spec.labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            attach_stdin: Some(spec.watch_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(spec.watch_stdin),
            stdin_once: Some(spec.watch_stdin),
            tty: Some(false),
            entrypoint: spec.entrypoint,
            cmd: spec.cmd,
            network_disabled: spec.network_disabled.then_some(true),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = self.docker.create_container(Some(options), body).await.map_err(|source| EngineError::Create { image: spec.image, source })?;
        Ok(created.id)
    }

    /// Unpacks a tar archive at the container's root.
    pub async fn copy_into(&self, id: &str, archive: Vec<u8>) -> EngineResult<()> {
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(archive.into()))
            .await
            .map_err(|source| EngineError::Copy { id: id.into(), source })
    }

    /// Attaches to stdout and stderr (with what was written before), and to stdin if asked.
    pub async fn attach(&self, id: &str, stdin: bool) -> EngineResult<Attached> {
        let options = AttachContainerOptionsBuilder::default().stream(true).logs(true).stdout(true).stderr(true).stdin(stdin).build();
        let attached = self.docker.attach_container(id, Some(options)).await.map_err(|source| EngineError::Attach { id: id.into(), source })?;
        let output = attached
            .output
            .take_while(|chunk| std::future::ready(chunk.is_ok()))
            .filter_map(|chunk| {
                std::future::ready(match chunk {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(Output::Stdout(message)),
                    Ok(LogOutput::StdErr { message }) => Some(Output::Stderr(message)),
                    _ => None,
                })
            });
        Ok(Attached { input: attached.input, output: Box::pin(output) })
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> EngineResult<()> {
        self.docker.start_container(id, None).await.map_err(|source| EngineError::Start { id: id.into(), source })
    }

    /// The container's state and published ports.
    pub async fn inspect_container(&self, id: &str) -> EngineResult<ContainerFacts> {
        let details = self.docker.inspect_container(id, None).await.map_err(|source| EngineError::InspectContainer { id: id.into(), source })?;
        let state = details.state.unwrap_or_default();
        let host_ports = details
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, bindings)| bindings?.into_iter().find_map(|b| b.host_port?.parse().ok()).map(|port| (key, port)))
            .collect();
        Ok(ContainerFacts {
            running: state.running == Some(true),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed == Some(true),
            host_ports,
        })
    }

    /// `docker stop`: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> EngineResult<()> {
        let options = StopContainerOptionsBuilder::default().t(grace.as_secs() as i32).build();
        self.docker.stop_container(id, Some(options)).await.map_err(|source| EngineError::Stop { id: id.into(), source })
    }

    /// `docker rm -f -v`: kills and removes the container with its anonymous volumes.
    pub async fn remove_container(&self, id: &str) -> EngineResult<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        self.docker.remove_container(id, Some(options)).await.map_err(|source| EngineError::Remove { id: id.into(), source })
    }

    /// Waits for the container to exit; returns its exit code.
    pub async fn wait(&self, id: &str) -> EngineResult<i64> {
        match self.docker.wait_container(id, None).next().await {
            Some(Ok(answer)) => Ok(answer.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(EngineError::Wait { id: id.into(), source }),
            None => Ok(0),
        }
    }

    /// Returns once the engine has removed the container (an auto-removed one after it exits):
    /// one request, which the engine answers when it is gone, instead of inspecting it again and
    /// again. A container that is already gone is a not-found error, as from inspect. The wait
    /// can also end without an answer (the connection closed), so `Ok` is a hint that the caller
    /// confirms with one inspect.
    pub async fn wait_removed(&self, id: &str) -> EngineResult<()> {
        let options = WaitContainerOptionsBuilder::default().condition("removed").build();
        match self.docker.wait_container(id, Some(options)).next().await {
            // The answer carries the exit code, which bollard makes an error when it is not 0.
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) | None => Ok(()),
            Some(Err(source)) => Err(EngineError::Wait { id: id.into(), source }),
        }
    }

    /// Everything the container wrote to stdout and stderr.
    pub async fn logs(&self, id: &str) -> EngineResult<String> {
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).build();
        let mut output = String::new();
        let mut logs = self.docker.logs(id, Some(options));
        while let Some(chunk) = logs.next().await {
            let chunk = chunk.map_err(|source| EngineError::Logs { id: id.into(), source })?;
            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(output)
    }

    /// Commits the container as `repo:tag`, with `docker commit --change` lines; returns the
    /// image id.
    pub async fn commit(&self, id: &str, repo: &str, tag: &str, changes: &str) -> EngineResult<String> {
        let options = CommitContainerOptionsBuilder::default().container(id).repo(repo).tag(tag).changes(changes).pause(false).build();
        let committed = self
            .docker
            .commit_container(options, ContainerConfig::default())
            .await
            .map_err(|source| EngineError::Commit { id: id.into(), tag: format!("{repo}:{tag}"), source })?;
        Ok(committed.id)
    }

    /// Every container (running or not) with label `key=value`.
    pub async fn list_containers(&self, label: &str) -> EngineResult<Vec<ContainerSummary>> {
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries = self.docker.list_containers(Some(options)).await.map_err(|source| EngineError::ListContainers { source })?;
        Ok(summaries
            .into_iter()
            .map(|summary| ContainerSummary {
                id: summary.id.unwrap_or_default(),
                image: summary.image.unwrap_or_default(),
                state: summary.state.map(|s| s.to_string()).unwrap_or_default(),
                labels: summary.labels.unwrap_or_default(),
                public_port: summary.ports.unwrap_or_default().into_iter().find_map(|p| p.public_port),
                created: summary.created,
            })
            .collect())
    }
}
