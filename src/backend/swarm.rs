//! The Swarm backend: one environment, one Swarm service of one task, on a manager's cluster.
//!
//! The service is named and labelled like a container (`rayfine-<env id>`, owner, id, keep), its
//! task's container carries the same labels, and it is made so that nothing outlives its owner:
//! - the task is never restarted (restart condition `none`): an environment that exits stays
//!   down instead of coming back forever. A task the engine could not start at all (it failed
//!   before its program ran, e.g. mounting the secret hit EBUSY) is not an environment that
//!   exited: its service is made again, a bounded number of times;
//! - a Swarm task has no stdin to watch, so the lease is what ends it: the server exits when its
//!   owner stops renewing, whether the owner was killed or cut off;
//! - the owner's watchdog removes the service (and its secret) when the owner dies, and the
//!   registry's exit paths remove them on every other exit.
//!
//! The token and the environment's variables travel as a Swarm secret mounted as the server's
//! secrets file, never in the service's spec. The image is named by id, so no node tries a
//! registry first; an image the manager lacks is copied to it (a node other than the manager
//! needs it too: see the README). Its port is published on its node in host mode, next to no
//! virtual IP (`dnsrr`): the VIP balancer needs IPVS in the kernel, and Rayfine balances itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::docker::shape::{container_name, environment_labels, split_settings, SERVER_PORT};
use super::{lease_address, Backend, BoxFuture, Endpoint, KillNow, Launch, LogRing, StartSpec, LOG_LINES_IN_ERRORS};
use crate::client::cleanup;
use crate::client::ContainerLimits;
use crate::detect::EnvType;
use crate::docker::engine::{Engine, ServiceRequest, TaskFacts};
use crate::docker::host::bracketed;
use crate::docker::{ensure_image, DockerHost, Leftover};
use crate::error::{Error, Result};
use crate::labels;
use crate::protocol::{Secrets, SECRETS_FILE_ENV, TOKEN_ENV};

/// The secret's file name under `/run/secrets/`.
const SECRET_FILE: &str = "rayfine-secrets.json";

/// How often the task's state is read, while starting and while it runs.
const STARTING_POLL: Duration = Duration::from_millis(100);
const RUNNING_POLL: Duration = Duration::from_secs(1);

/// How long a stop waits for the task to be gone.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// How many times a service is made when the engine cannot start its task: the first, and two
/// more. The failures seen are transient (a busy mount); a lasting one is reported after the last.
const START_ATTEMPTS: u32 = 3;

/// The pause before a service is made again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The swarm's prefix for a task whose container the engine failed to start: its program never
/// ran (moby's executor wraps the start error in it; a program that ran and failed ends with
/// `task: non-zero exit (N)` instead).
const ENGINE_START_FAILURE: &str = "starting container failed";

/// An image to run as a Swarm service.
pub(crate) struct SwarmLaunch<'a> {
    /// The image.
    pub image: &'a str,
    /// Resource limits of the task.
    pub limits: &'a ContainerLimits,
    /// How it is served, when the caller says so (else the image's label says).
    pub env_type: Option<EnvType>,
    /// Labels of the caller's, besides Rayfine's own.
    pub labels: &'a BTreeMap<String, String>,
    /// The Swarm manager to create the service on.
    pub manager: &'a DockerHost,
}

/// A running environment service.
pub(crate) struct SwarmService {
    /// The manager it was created on.
    manager: DockerHost,
    /// The service's id.
    id: String,
    /// The secret it reads.
    secret_id: String,
    /// Set once its task has ended (or the service is gone).
    exited: Arc<AtomicBool>,
    /// How it ended, once it has.
    ending: Arc<Mutex<Option<String>>>,
    /// Its container's last output, read when it ends (from the manager's engine, which has it
    /// when the task ran there).
    logs: Arc<LogRing>,
    /// Set by a stop: the watcher goes.
    stopping: Arc<AtomicBool>,
}

impl Launch for SwarmLaunch<'_> {
    async fn start(self, spec: &StartSpec<'_>) -> Result<(Box<dyn Backend>, Endpoint)> {
        let began = Instant::now();
        let mut made: Vec<Leftover> = Vec::new();
        let last_seen = Mutex::new(None);
        let steps = self.run_steps(spec, &mut made, &last_seen);
        let outcome = match tokio::time::timeout_at(spec.deadline.into(), steps).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // Say where it was stuck: a task pending for want of a node, preparing, ...
                let seen = last_seen.lock().clone().map(|task: String| format!(" ({task})")).unwrap_or_default();
                Err(failed(spec, format!("not ready after {:.0} s{seen}", began.elapsed().as_secs_f64()), Vec::new()))
            }
        };
        match outcome {
            Ok(started) => Ok(started),
            Err(err) => {
                // Whatever was made goes (the exit path would otherwise, at the end).
                if let Ok(engine) = Engine::connect_to(self.manager).await {
                    remove_made(&engine, &made, &container_name(spec.env_id)).await;
                }
                Err(err)
            }
        }
    }
}

impl SwarmLaunch<'_> {
    async fn run_steps(&self, spec: &StartSpec<'_>, made: &mut Vec<Leftover>, last_seen: &Mutex<Option<String>>) -> Result<(Box<dyn Backend>, Endpoint)> {
        let engine = Engine::connect_to(self.manager).await?;
        if !engine.is_swarm_manager().await? {
            return Err(Error::InvalidInput(format!("{} is not a Swarm manager: run `docker swarm init` there, or name a manager", self.manager)));
        }
        let image = ensure_image(&engine, self.image).await?;
        let env_type = match self.env_type {
            Some(env_type) => env_type,
            None => image.labels.get(labels::ENV_TYPE).map(|v| v.parse()).transpose()?.unwrap_or(EnvType::Function),
        };
        if env_type == EnvType::Http {
            return Err(Error::InvalidInput(format!(
                "{}: HTTP-based environments do not run on Swarm yet (their supervisor, which holds the lease, cannot be copied into a service's container); run it with Docker hosts instead",
                self.image
            )));
        }
        if spec.lease.is_none() && !spec.keep {
            tracing::warn!("{}: a Swarm task has no stdin to watch; without a lease only the owner's watchdog or cleanup ends it", spec.name);
        }
        if !spec.keep {
            crate::docker::owner_watch::ensure(self.manager);
        }
        let name = container_name(spec.env_id);
        let env_labels = environment_labels(self.labels, spec, env_type);

        // The secrets file: the token and the environment's variables, for an image that reads it;
        // an older image (or an affinetes one) gets them as variables.
        let reads_file = image.labels.get(labels::READS_SECRETS_FILE).is_some_and(|v| v == "true");
        let (settings, secret_env) = split_settings(spec.env_vars);
        let mut env: Vec<String> = Vec::new();
        let secrets = Secrets { token: Some(spec.token.to_string()), env: if reads_file { secret_env } else { BTreeMap::new() } };
        let secret_json = serde_json::to_vec(&secrets).map_err(|err| Error::InvalidInput(format!("cannot encode the secrets: {err}")))?;
        if reads_file {
            env.push(format!("{SECRETS_FILE_ENV}=/run/secrets/{SECRET_FILE}"));
            env.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
        } else {
            env.extend(spec.env_vars.iter().map(|(k, v)| format!("{k}={v}")));
            env.push(format!("{TOKEN_ENV}={}", spec.token));
        }
        if let Some(lease) = spec.lease {
            env.push(format!("RAYFINE_LEASE={}", lease.as_secs_f64()));
        }
        env.push(format!("RUST_LOG={}", std::env::var("RAYFINE_SERVER_LOG").unwrap_or_else(|_| "warn".into())));

        // Tracked by name before each exists, so a Ctrl-C while the engine makes it removes it.
        let secret = Leftover::Secret(self.manager.clone(), name.clone());
        cleanup::track(secret.clone());
        made.push(secret.clone());
        let secret_id = engine.create_secret(&name, env_labels.clone(), &secret_json).await?;
        swap_tracked(made, &secret, Leftover::Secret(self.manager.clone(), secret_id.clone()));

        let request = ServiceRequest {
            name: name.clone(),
            image_id: image.id.clone(),
            env,
            labels: env_labels,
            port: SERVER_PORT,
            secret: reads_file.then(|| (secret_id.clone(), name.clone(), SECRET_FILE.to_string())),
            memory_bytes: self.limits.memory_bytes,
            nano_cpus: self.limits.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: self.limits.pids,
        };
        let logs = Arc::new(LogRing::new(spec.name));
        let mut attempt = 1;
        let (service_id, node, port) = loop {
            let service_id = self.create_service(&engine, request.clone(), made).await?;
            let task = match wait_running(&engine, &service_id, last_seen).await? {
                Running::At(node, port) => break (service_id, node, port),
                Running::Ended(task) => task,
            };
            match after_ended_start(&task, attempt) {
                StartEnd::TryAgain => {
                    tracing::warn!(
                        "{}: the engine could not start its Swarm task ({}); making the service again (attempt {} of {START_ATTEMPTS})",
                        spec.name,
                        task.error.as_deref().unwrap_or("no reason given"),
                        attempt + 1
                    );
                    self.remove_service(&engine, &service_id, made).await?;
                    // A moment for whatever was busy (a mount) to settle.
                    tokio::time::sleep(RETRY_PAUSE).await;
                    attempt += 1;
                }
                StartEnd::Fail => return Err(task_failed(&engine, &task, spec, &logs).await),
                StartEnd::Exhausted => {
                    let mut err = task_failed(&engine, &task, spec, &logs).await;
                    if let Error::StartFailed { reason, .. } = &mut err {
                        reason.push_str(&format!(" (the engine failed {attempt} starts in a row)"));
                    }
                    return Err(err);
                }
            }
        };
        let address = match engine.node_address(&node).await? {
            // A single node advertising loopback, or nothing usable: the manager's own address.
            Some(address) if address != "127.0.0.1" || self.manager.is_on_this_machine() => address,
            _ => self.manager.client_address(),
        };
        let url = format!("http://{}:{port}", bracketed(&address));
        wait_ready(&engine, &service_id, &url, spec, &logs).await?;
        let lease_at = match spec.lease {
            Some(_) => Some(lease_address(&address, port).await.map_err(|reason| failed(spec, reason, Vec::new()))?),
            None => None,
        };
        let server = SwarmService {
            manager: self.manager.clone(),
            id: service_id,
            secret_id,
            exited: Arc::new(AtomicBool::new(false)),
            ending: Arc::new(Mutex::new(None)),
            logs,
            stopping: Arc::new(AtomicBool::new(false)),
        };
        server.watch();
        let endpoint = Endpoint { url, token: Some(spec.token.to_string()), lease_at, env_type };
        Ok((Box::new(server), endpoint))
    }
}

impl SwarmLaunch<'_> {
    /// Creates the service, tracked by name before it exists (so a Ctrl-C while the engine makes
    /// it removes it) and by id once it does.
    async fn create_service(&self, engine: &Engine, request: ServiceRequest, made: &mut Vec<Leftover>) -> Result<String> {
        let by_name = Leftover::Service(self.manager.clone(), request.name.clone());
        cleanup::track(by_name.clone());
        made.push(by_name.clone());
        let service_id = engine.create_service(request).await?;
        swap_tracked(made, &by_name, Leftover::Service(self.manager.clone(), service_id.clone()));
        Ok(service_id)
    }

    /// Removes a service whose task the engine could not start, before it is made again.
    async fn remove_service(&self, engine: &Engine, service_id: &str, made: &mut Vec<Leftover>) -> Result<()> {
        match engine.remove_service(service_id).await {
            Err(err) if !err.is_not_found() => return Err(err.into()),
            _ => {}
        }
        let leftover = Leftover::Service(self.manager.clone(), service_id.to_string());
        cleanup::untrack(&leftover);
        made.retain(|m| *m != leftover);
        Ok(())
    }
}

/// What to do when a service's task ended before it ran.
#[derive(Debug, PartialEq, Eq)]
enum StartEnd {
    /// The engine failed to start it, and attempts are left: make the service again.
    TryAgain,
    /// Report it: the program ran and ended, or the swarm refused the task.
    Fail,
    /// Report it, saying that the engine failed every one of the attempts.
    Exhausted,
}

/// Decides, after the `attempt`-th service's task ended before it ran, whether to make it again.
fn after_ended_start(task: &TaskFacts, attempt: u32) -> StartEnd {
    let engine_failed = task.state == "failed" && task.error.as_deref().is_some_and(|e| e.starts_with(ENGINE_START_FAILURE));
    match (engine_failed, attempt < START_ATTEMPTS) {
        (true, true) => StartEnd::TryAgain,
        (true, false) => StartEnd::Exhausted,
        (false, _) => StartEnd::Fail,
    }
}

/// Replaces a leftover tracked by name with the same one by id, once the engine made it.
fn swap_tracked(made: &mut [Leftover], by_name: &Leftover, by_id: Leftover) {
    cleanup::track(by_id.clone());
    cleanup::untrack(by_name);
    if let Some(slot) = made.iter_mut().find(|m| *m == by_name) {
        *slot = by_id;
    }
}

/// Removes what a failed start made: the service, then its secret. One known only by name (its
/// create was under way when time ran out) stays tracked unless removed: the engine may still
/// finish making it, and the exit path then removes it.
async fn remove_made(engine: &Engine, made: &[Leftover], name: &str) {
    for leftover in made.iter().rev() {
        let (removed, by_name) = match leftover {
            Leftover::Service(_, id) => (engine.remove_service(id).await, id == name),
            Leftover::Secret(_, id) => (engine.remove_secret_when_free(id).await, id == name),
            Leftover::Container(_, id) => (engine.remove_container(id).await, false),
        };
        match removed {
            Ok(()) => cleanup::untrack(leftover),
            Err(err) if err.is_not_found() && !by_name => cleanup::untrack(leftover),
            Err(err) if err.is_not_found() => {}
            Err(err) => tracing::warn!("{err}"),
        }
    }
}

/// Where a service's task came to while it started.
enum Running {
    /// It runs on this node, with this port published.
    At(String, u16),
    /// It ended (or was refused) before it ran.
    Ended(TaskFacts),
}

/// Waits until the service's task runs with its port published, or ends first.
async fn wait_running(engine: &Engine, service_id: &str, last_seen: &Mutex<Option<String>>) -> Result<Running> {
    loop {
        let tasks = engine.service_tasks(service_id).await?;
        *last_seen.lock() = Some(match tasks.first() {
            Some(task) => format!("its task was {}{}", task.state, task.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()),
            None => "the swarm had made no task yet".into(),
        });
        if let Some(task) = tasks.into_iter().next() {
            if task.ended {
                return Ok(Running::Ended(task));
            }
            if let (Some(node), Some(port), "running") = (&task.node_id, task.published_port, task.state.as_str()) {
                return Ok(Running::At(node.clone(), port));
            }
        }
        tokio::time::sleep(STARTING_POLL).await;
    }
}

/// Waits until the server answers `/health` with ready; fails at once when its task ends or it
/// reports a load error.
async fn wait_ready(engine: &Engine, service_id: &str, url: &str, spec: &StartSpec<'_>, logs: &LogRing) -> Result<()> {
    let client = crate::http_client::ServerClient::new(url, None)?;
    let mut asked = 0u32;
    loop {
        match client.health(Duration::from_secs(2)).await {
            Ok(None) => return Ok(()),
            Ok(Some(health)) if health.error.is_some() => {
                let error = health.error.expect("checked");
                return Err(failed(spec, format!("{}: {}", error.kind, error.message), Vec::new()));
            }
            _ => {}
        }
        asked += 1;
        // Now and then, whether the task is still there to wait for.
        if asked % 10 == 0 {
            if let Some(task) = engine.service_tasks(service_id).await?.first() {
                if task.ended {
                    return Err(task_failed(engine, task, spec, logs).await);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The start error for a task that ended: the swarm's reason, the exit code, its container's last
/// lines (when the manager ran it).
async fn task_failed(engine: &Engine, task: &TaskFacts, spec: &StartSpec<'_>, logs: &LogRing) -> Error {
    read_logs(engine, task, logs).await;
    failed(spec, describe_end(task), logs.last(LOG_LINES_IN_ERRORS))
}

/// Fills the log ring from the task's container, if this engine has it.
async fn read_logs(engine: &Engine, task: &TaskFacts, logs: &LogRing) {
    let Some(container) = &task.container_id else { return };
    if let Ok(text) = engine.logs(container).await {
        for line in text.lines() {
            logs.push(line.to_string());
        }
    }
}

/// How a task ended, in words.
fn describe_end(task: &TaskFacts) -> String {
    let code = task.exit_code.filter(|c| *c != 0).map(|c| format!(" with code {c}")).unwrap_or_default();
    let error = task.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    format!("its Swarm task is {}{code}{error}", task.state)
}

fn failed(spec: &StartSpec<'_>, reason: String, logs: Vec<String>) -> Error {
    Error::StartFailed { name: spec.name.to_string(), reason, logs }
}

impl SwarmService {
    /// Watches the task while it runs: once it ends, says so and keeps its last lines.
    fn watch(&self) {
        let (manager, id) = (self.manager.clone(), self.id.clone());
        let (exited, ending, logs, stopping) = (self.exited.clone(), self.ending.clone(), self.logs.clone(), self.stopping.clone());
        tokio::spawn(async move {
            while !stopping.load(Ordering::SeqCst) {
                tokio::time::sleep(RUNNING_POLL).await;
                let Ok(engine) = Engine::connect_to(&manager).await else { continue };
                let ended = match engine.service_tasks(&id).await {
                    Ok(tasks) => match tasks.first() {
                        Some(task) if task.ended => {
                            read_logs(&engine, task, &logs).await;
                            Some(describe_end(task))
                        }
                        Some(_) => None,
                        None => Some("its Swarm service has no task any more".into()),
                    },
                    Err(err) if err.is_not_found() => Some("its Swarm service is gone (removed from outside)".into()),
                    Err(_) => None,
                };
                if let Some(ended) = ended {
                    *ending.lock() = Some(ended);
                    exited.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
    }

    /// Removes the service, waits until its task is gone, then removes its secret.
    async fn remove(&self) -> Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        let engine = Engine::connect_to(&self.manager).await?;
        let containers: Vec<String> = engine.service_tasks(&self.id).await.unwrap_or_default().into_iter().filter_map(|t| t.container_id).collect();
        match engine.remove_service(&self.id).await {
            Err(err) if !err.is_not_found() => return Err(err.into()),
            _ => {}
        }
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match engine.service_tasks(&self.id).await {
                Ok(tasks) if tasks.is_empty() => break,
                // The swarm has forgotten the service, tasks and all.
                Err(err) if err.is_not_found() => break,
                Ok(_) => {}
                Err(err) => return Err(err.into()),
            }
            if Instant::now() > deadline {
                return Err(Error::InvalidInput(format!("the task of Swarm service {} is still there {} s after its removal", self.id, STOP_LIMIT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The swarm forgets a task before its container is gone; wait for the containers this
        // engine runs (another node's are not seen here).
        for container in &containers {
            while !matches!(engine.inspect_container(container).await, Err(err) if err.is_not_found()) {
                if Instant::now() > deadline {
                    return Err(Error::InvalidInput(format!("the container of Swarm service {} is still there {} s after its removal", self.id, STOP_LIMIT.as_secs())));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        match engine.remove_secret_when_free(&self.secret_id).await {
            Err(err) if !err.is_not_found() => return Err(err.into()),
            _ => {}
        }
        for leftover in self.leftovers() {
            cleanup::untrack(&leftover);
        }
        Ok(())
    }
}

impl Backend for SwarmService {
    fn mode(&self) -> &'static str {
        "swarm"
    }

    fn describe(&self) -> String {
        format!("Swarm service {} on {}", crate::docker::engine::short(&self.id), self.manager)
    }

    fn docker_host(&self) -> Option<&DockerHost> {
        Some(&self.manager)
    }

    fn leftovers(&self) -> Vec<Leftover> {
        vec![Leftover::Service(self.manager.clone(), self.id.clone()), Leftover::Secret(self.manager.clone(), self.secret_id.clone())]
    }

    fn stop(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.remove())
    }

    fn kill_now(&self) -> KillNow {
        self.stopping.store(true, Ordering::SeqCst);
        KillNow::Remove(self.leftovers())
    }

    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    fn exit_description(&self, within: Duration) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            while !self.has_exited() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.ending.lock().clone()
        })
    }

    fn last_logs(&self, n: usize) -> Vec<String> {
        self.logs.last(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that ended as the swarm reported it.
    fn ended(state: &str, error: &str) -> TaskFacts {
        TaskFacts { state: state.into(), ended: true, error: Some(error.into()), node_id: None, published_port: None, container_id: None, exit_code: None }
    }

    // The reasons below are what an engine (28.2) reported: the first from the CI run whose
    // second engine hit EBUSY mounting a task's secrets, the others read off probe services.
    const BUSY_MOUNT: &str = "starting container failed: unable to remount dir as readonly: mount tmpfs:/var/lib/docker/containers/x/mounts/secrets: device or resource busy";
    const NO_PROGRAM: &str = "starting container failed: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/nonexistent\": stat /nonexistent: no such file or directory: unknown";

    #[test]
    fn a_task_the_engine_could_not_start_is_made_again_until_the_attempts_run_out() {
        for reason in [BUSY_MOUNT, NO_PROGRAM] {
            let task = ended("failed", reason);
            assert_eq!(after_ended_start(&task, 1), StartEnd::TryAgain);
            assert_eq!(after_ended_start(&task, START_ATTEMPTS - 1), StartEnd::TryAgain);
            assert_eq!(after_ended_start(&task, START_ATTEMPTS), StartEnd::Exhausted, "bounded");
        }
    }

    #[test]
    fn a_program_that_ran_and_ended_or_a_refused_task_is_reported_at_once() {
        // The environment exited: it stays down (restart condition none), never made again.
        assert_eq!(after_ended_start(&ended("failed", "task: non-zero exit (3)"), 1), StartEnd::Fail);
        // Also after an engine failure: the note that the engine failed every start is not due.
        assert_eq!(after_ended_start(&ended("failed", "task: non-zero exit (3)"), 2), StartEnd::Fail);
        assert_eq!(after_ended_start(&TaskFacts { error: None, ..ended("complete", "") }, 1), StartEnd::Fail);
        // Refused before a container was made (no such image on the node): trying again is futile.
        assert_eq!(after_ended_start(&ended("rejected", "No such image: sha256:0123"), 1), StartEnd::Fail);
    }
}
