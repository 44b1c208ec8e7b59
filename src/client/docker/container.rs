//! The Docker backend: one environment, one container.
//!
//! The order of a start is what makes it leak-proof:
//! 1. the container is created with Rayfine's labels (owner pid and start time, env id),
//! 2. registered for cleanup at once, before it runs, so a Ctrl-C from here on removes it,
//! 3. attached to (stdout, stderr and, unless kept, stdin) before it starts, so no output is lost
//!    and the last log lines can explain a failure even when the container is already gone,
//! 4. started, with its port published on 127.0.0.1 only, on a port the engine picks.
//!
//! A function-based server announces readiness on stdout (the same event lines as in process
//! mode), so there is no polling. Its stdin is our attach connection with `StdinOnce`: when this
//! process dies, even by SIGKILL, the connection closes, the engine closes the container's stdin,
//! the server exits and `AutoRemove` deletes the container.
//!
//! An HTTP-based environment is the user's own server, which knows nothing of stdin. So unless
//! it is kept, its container starts the static server in `--supervise` mode, copied in before the
//! start, which runs the image's command and applies the same stdin rule to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::detect::{EnvType, DEFAULT_HTTP_PORT};
use super::engine::{connect, docker_error, is_conflict, is_not_found};
use super::labels;
use crate::client::error::{Error, Result};
use crate::client::http::ServerClient;
use crate::client::options::ContainerLimits;
use crate::client::registry;
use crate::protocol::{Secrets, ServerEvent, SECRETS_FILE_ENV, SECRETS_PATH};

/// The port Rayfine's server listens on inside its container.
const SERVER_PORT: u16 = 8000;
/// How many log lines are kept, and how many an error shows.
const LOG_LINES: usize = 200;
const LOG_LINES_IN_ERRORS: usize = 20;
/// Seconds `docker stop` waits after SIGTERM before SIGKILL. The server shuts down in
/// milliseconds; this only bounds an environment that ignores the signal.
const STOP_GRACE_SECS: i32 = 3;

/// Everything needed to start one container.
pub(crate) struct DockerLaunch<'a> {
    pub image: &'a str,
    pub env_id: &'a str,
    pub name: &'a str,
    pub env_vars: &'a BTreeMap<String, String>,
    pub token: &'a str,
    pub keep: bool,
    pub startup_timeout: Duration,
    pub limits: &'a ContainerLimits,
    pub env_type: Option<EnvType>,
    pub http_port: Option<u16>,
    pub labels: &'a BTreeMap<String, String>,
    pub lease: Option<Duration>,
}

type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// A running environment container.
pub(crate) struct DockerServer {
    /// The engine's container id.
    id: String,
    env_type: EnvType,
    /// Our end of the container's stdin; closing it stops a function-based server.
    stdin: tokio::sync::Mutex<Option<Input>>,
    /// Last output lines.
    logs: Arc<Mutex<VecDeque<String>>>,
    /// Set when the attach stream ends: the container has exited.
    exited: Arc<AtomicBool>,
}

/// A started container: the server, its host port, and how it is served.
pub(crate) struct Started {
    pub server: DockerServer,
    pub port: u16,
    pub env_type: EnvType,
    /// The host port where a supervised HTTP-based environment takes lease renewals.
    pub lease_port: Option<u16>,
}

/// How a container is made, decided from the image and the launch.
struct Shape {
    env_type: EnvType,
    /// The port the environment's server listens on inside.
    container_port: u16,
    /// Attach stdin, which the server or supervisor watches for the owner's end.
    watch_stdin: bool,
    /// The supervisor's, for an HTTP-based environment.
    entrypoint: Option<Vec<String>>,
    /// Token and variables in the secrets file, not in the container's configuration.
    hidden_secrets: bool,
    /// A second port to publish, for a supervisor's lease renewals.
    lease_port: Option<u16>,
}

impl DockerServer {
    /// Creates, attaches, starts and waits for the container; removes it again on any failure.
    pub async fn start(launch: DockerLaunch<'_>) -> Result<Started> {
        let docker = connect().await?;
        let image = docker.inspect_image(launch.image).await.map_err(|err| {
            if is_not_found(&err) {
                Error::InvalidInput(format!(
                    "no image `{}` in the local Docker engine: build one with `rayfine build <env-folder> -t {}`, or pull it",
                    launch.image, launch.image
                ))
            } else {
                Error::Docker { context: format!("cannot inspect image {}", launch.image), source: err }
            }
        })?;
        let image_labels = image.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        // Explicit wins; then the label; an image Rayfine did not build is assumed to speak
        // the /call protocol (an affinetes image does).
        let env_type = match launch.env_type {
            Some(env_type) => env_type,
            None => image_labels.get(labels::ENV_TYPE).map(|v| v.parse()).transpose()?.unwrap_or(EnvType::Function),
        };
        let container_port = match env_type {
            EnvType::Function => SERVER_PORT,
            EnvType::Http => launch
                .http_port
                .or_else(|| image_labels.get(labels::HTTP_PORT).and_then(|p| p.parse().ok()))
                .unwrap_or(DEFAULT_HTTP_PORT),
        };
        let supervisor = match env_type {
            EnvType::Http if !launch.keep => supervisor_for(launch.image, image_command(&image.config)),
            _ => None,
        };
        let watch_stdin = !launch.keep && (env_type == EnvType::Function || supervisor.is_some());

        let entrypoint = supervisor.as_ref().map(|s| s.entrypoint.clone());
        // The token and the variables go in a file wherever Rayfine's server reads them: the
        // `/call` server of an image this version built, and the supervisor of an HTTP-based one
        // (which then holds the lease). Older images and affinetes' get environment variables.
        let reads_file = image_labels.get(labels::READS_SECRETS_FILE).is_some_and(|v| v == "true");
        let hidden_secrets = (env_type == EnvType::Function && reads_file) || supervisor.is_some();
        let lease_port = (supervisor.is_some() && launch.lease.is_some()).then_some(crate::server::SUPERVISOR_LEASE_PORT);
        if !launch.keep {
            super::owner_watch::ensure();
        }
        let shape = Shape { env_type, container_port, watch_stdin, entrypoint, hidden_secrets, lease_port };
        let id = create(&docker, &launch, &shape).await?;
        registry::track_container(&id);
        let logs = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
        let exited = Arc::new(AtomicBool::new(false));
        let server = DockerServer { id: id.clone(), env_type, stdin: tokio::sync::Mutex::new(None), logs: logs.clone(), exited: exited.clone() };

        let outcome = async {
            let mut files = super::context::ContextArchive::new();
            if hidden_secrets {
                let (_, secret_env) = split_settings(launch.env_vars);
                let secrets = Secrets { token: Some(launch.token.to_string()), env: secret_env };
                let json = serde_json::to_vec(&secrets).map_err(|err| format!("cannot encode the secrets: {err}"))?;
                files.add_bytes(SECRETS_PATH.trim_start_matches('/'), &json, 0o444).map_err(|err| format!("cannot pack the secrets: {err}"))?;
            }
            if let Some(supervisor) = &supervisor {
                files.add_bytes(SUPERVISOR_PATH.trim_start_matches('/'), &supervisor.binary, 0o755).map_err(|err| format!("cannot pack the supervisor: {err}"))?;
            }
            if hidden_secrets || supervisor.is_some() {
                let archive = files.finish().map_err(|err| format!("cannot pack files for the container: {err}"))?;
                let upload = bollard::query_parameters::UploadToContainerOptionsBuilder::default().path("/").build();
                docker
                    .upload_to_container(&id, Some(upload), bollard::body_full(archive.into()))
                    .await
                    .map_err(|err| format!("cannot copy Rayfine's files into the container: {err}"))?;
            }
            let attach_options = AttachContainerOptionsBuilder::default().stream(true).logs(true).stdout(true).stderr(true).stdin(watch_stdin).build();
            let attached = docker.attach_container(&id, Some(attach_options)).await.map_err(|err| format!("cannot attach to the container: {err}"))?;
            if watch_stdin {
                *server.stdin.lock().await = Some(attached.input);
            }
            let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(pump_output(attached.output, launch.name.to_string(), logs.clone(), events_tx, exited.clone()));
            docker.start_container(&id, None).await.map_err(|err| format!("the engine cannot start the container: {err}"))?;
            let port = published_port(&docker, &id, container_port).await?;
            let lease_port = match lease_port {
                Some(inside) => Some(published_port(&docker, &id, inside).await?),
                None => None,
            };
            let deadline = Instant::now() + launch.startup_timeout;
            match env_type {
                EnvType::Function => wait_for_server(events_rx, port, deadline).await?,
                EnvType::Http => wait_for_http(port, deadline, &exited).await?,
            }
            Ok::<(u16, Option<u16>), String>((port, lease_port))
        }
        .await
        .map_err(|err| err.to_string());

        match outcome {
            Ok((port, lease_port)) => Ok(Started { server, port, env_type, lease_port }),
            Err(reason) => {
                // Give the output pump a moment to read the container's last words.
                server.wait_exited(Duration::from_millis(300)).await;
                let logs = server.last_logs(LOG_LINES_IN_ERRORS);
                if let Err(err) = server.stop().await {
                    tracing::warn!("{err:#}");
                }
                Err(Error::StartFailed { name: launch.name.to_string(), reason, logs })
            }
        }
    }

    /// The engine's container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How the environment is served.
    pub fn env_type(&self) -> EnvType {
        self.env_type
    }

    /// Whether the container has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    /// Waits up to `within` for the container's output stream to end, which it does when the
    /// container exits.
    async fn wait_exited(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.has_exited() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How the container ended, if it has, waiting up to `within` for the end of its output
    /// stream; then the engine says whether it still runs, and how it exited.
    pub async fn exit_description(&self, within: Duration) -> Option<String> {
        self.wait_exited(within).await;
        match describe_exit(&self.id).await {
            Some(ended) => Some(ended),
            None if self.has_exited() => Some(format!("its container {} has exited", &self.id[..12.min(self.id.len())])),
            None => None,
        }
    }

    /// The last `n` output lines.
    pub fn last_logs(&self, n: usize) -> Vec<String> {
        let logs = self.logs.lock();
        logs.iter().skip(logs.len().saturating_sub(n)).cloned().collect()
    }

    /// Stops the container (SIGTERM, short grace, SIGKILL) and removes it with its volumes;
    /// returns once it is gone, or an error saying it is not.
    pub async fn stop(&self) -> Result<()> {
        if let Some(mut input) = self.stdin.lock().await.take() {
            let _ = input.shutdown().await;
        }
        let docker = connect().await?;
        let stop = StopContainerOptionsBuilder::default().t(STOP_GRACE_SECS).build();
        if let Err(err) = docker.stop_container(&self.id, Some(stop)).await {
            tracing::debug!("stopping container {}: {err}", self.id);
        }
        remove_and_wait(&docker, &self.id).await?;
        registry::untrack_container(&self.id);
        Ok(())
    }
}

/// Splits the variables given for a container into the server's own settings (`RAYFINE_*`,
/// `RUST_LOG`), which stay in its configuration where the server reads them, and the rest, which
/// are the environment's and may be secrets.
fn split_settings(vars: &BTreeMap<String, String>) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    vars.iter().map(|(k, v)| (k.clone(), v.clone())).partition(|(k, _)| k.starts_with("RAYFINE_") || k == "RUST_LOG")
}

/// How container `id` ended, as the engine tells it; `None` while it runs (or if the engine
/// cannot be asked).
pub async fn describe_exit(id: &str) -> Option<String> {
    let short = &id[..12.min(id.len())];
    let docker = connect().await.ok()?;
    match docker.inspect_container(id, None).await {
        Err(err) if is_not_found(&err) => Some(format!("its container {short} is gone (it exited and was removed, or was removed from outside)")),
        Err(_) => None,
        Ok(details) => {
            let state = details.state.unwrap_or_default();
            if state.running == Some(true) {
                return None;
            }
            let code = state.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default();
            let oom = if state.oom_killed == Some(true) { " (out of memory)" } else { "" };
            Some(format!("its container {short} has exited{code}{oom}"))
        }
    }
}

/// Where the supervisor is copied to in an HTTP-based environment's container.
const SUPERVISOR_PATH: &str = "/rayfine/rayfine-server";

/// The static server, to run an HTTP-based environment's command under `--supervise`.
struct Supervisor {
    binary: Vec<u8>,
    entrypoint: Vec<String>,
}

/// The command the image runs: its entrypoint followed by its cmd.
fn image_command(config: &Option<bollard::models::ImageConfig>) -> Vec<String> {
    let Some(config) = config else { return Vec::new() };
    config.entrypoint.iter().flatten().chain(config.cmd.iter().flatten()).cloned().collect()
}

/// The supervisor for `command`, or None (with a warning saying what that means) when there is
/// no command or no static server to supervise it with.
fn supervisor_for(image: &str, command: Vec<String>) -> Option<Supervisor> {
    let unsupervised = |why: String| {
        tracing::warn!("{image}: {why}; the container is removed by cleanup, on exit and on signals, but not if this process is killed by SIGKILL (`rayfine cleanup --orphans` removes it then)");
        None
    };
    if command.is_empty() {
        return unsupervised("the image names no command".into());
    }
    let binary = match super::server_binary::locate(None).and_then(|path| {
        std::fs::read(&path).map_err(|source| Error::Io { context: format!("cannot read {}", path.display()), source })
    }) {
        Ok(binary) => binary,
        Err(err) => return unsupervised(format!("no static server to supervise it with ({err})")),
    };
    let entrypoint = [SUPERVISOR_PATH, "--supervise", "--"].into_iter().map(String::from).chain(command).collect();
    Some(Supervisor { binary, entrypoint })
}

/// Creates the container; returns its id.
async fn create(docker: &Docker, launch: &DockerLaunch<'_>, shape: &Shape) -> Result<String> {
    let env_type = shape.env_type;
    let port_key = format!("{}/tcp", shape.container_port);
    let mut env: Vec<String> = Vec::new();
    if shape.hidden_secrets {
        env.push(format!("{SECRETS_FILE_ENV}={SECRETS_PATH}"));
        let (settings, _) = split_settings(launch.env_vars);
        env.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    } else {
        env.extend(launch.env_vars.iter().map(|(k, v)| format!("{k}={v}")));
        if env_type == EnvType::Function {
            env.push(format!("{}={}", crate::protocol::TOKEN_ENV, launch.token));
        }
    }
    // Read by the server of a function-based environment and by the supervisor of an HTTP one.
    if shape.watch_stdin {
        env.push("RAYFINE_EXIT_ON_STDIN_EOF=true".into());
    }
    if let Some(lease) = launch.lease.filter(|_| env_type == EnvType::Function || shape.lease_port.is_some()) {
        env.push(format!("RAYFINE_LEASE={}", lease.as_secs_f64()));
    }
    if let Some(lease_port) = shape.lease_port {
        env.push(format!("RAYFINE_LEASE_PORT={lease_port}"));
        env.push(format!("RAYFINE_LEASE_START_GRACE={}", launch.startup_timeout.as_secs_f64()));
    }
    if env_type == EnvType::Function {
        env.push(format!("RUST_LOG={}", std::env::var("RAYFINE_SERVER_LOG").unwrap_or_else(|_| "warn".into())));
    }
    let mut container_labels: HashMap<String, String> = launch.labels.clone().into_iter().collect();
    let me = std::process::id();
    container_labels.extend([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::VERSION.to_string(), labels::RAYFINE_VERSION.to_string()),
        (labels::ENV_TYPE.to_string(), env_type.as_str().to_string()),
        (labels::ENV_ID.to_string(), launch.env_id.to_string()),
        (labels::NAME.to_string(), launch.name.to_string()),
        (labels::OWNER_PID.to_string(), me.to_string()),
        (labels::OWNER_START.to_string(), labels::process_start_time(me).map(|s| s.to_string()).unwrap_or_default()),
        (labels::KEEP.to_string(), launch.keep.to_string()),
    ]);
    let limits = launch.limits;
    let mut exposed = vec![port_key];
    exposed.extend(shape.lease_port.map(|port| format!("{port}/tcp")));
    let loopback = || Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) }]);
    let host_config = HostConfig {
        port_bindings: Some(exposed.iter().map(|key| (key.clone(), loopback())).collect()),
        // A container that exits (its owner died, its lease lapsed) removes itself.
        auto_remove: Some(!launch.keep),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        pids_limit: limits.pids,
        memory: limits.memory_bytes,
        nano_cpus: limits.cpus.map(|c| (c * 1e9) as i64),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(launch.image.to_string()),
        env: Some(env),
        labels: Some(container_labels),
        exposed_ports: Some(exposed),
        attach_stdin: Some(shape.watch_stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(shape.watch_stdin),
        stdin_once: Some(shape.watch_stdin),
        tty: Some(false),
        // Replacing the entrypoint drops the image's cmd, which the supervisor's entrypoint holds.
        entrypoint: shape.entrypoint.clone(),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&format!("rayfine-{}", launch.env_id)).build();
    let created = docker.create_container(Some(options), body).await.map_err(docker_error(format!("cannot create a container from {}", launch.image)))?;
    Ok(created.id)
}

/// The host port the engine bound for `container_port`.
async fn published_port(docker: &Docker, id: &str, container_port: u16) -> Result<u16, String> {
    let inspected = docker.inspect_container(id, None).await.map_err(|err| format!("cannot inspect the container: {err}"))?;
    let key = format!("{container_port}/tcp");
    inspected
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|ports| ports.get(&key).cloned().flatten())
        .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port.and_then(|p| p.parse().ok())))
        .ok_or_else(|| {
            let state = inspected.state.and_then(|s| s.status).map(|s| s.to_string()).unwrap_or_default();
            format!("the engine published no port for {key} (container {state})")
        })
}

/// Waits for the server's `ready` event, then checks the published port answers.
async fn wait_for_server(mut events: tokio::sync::mpsc::UnboundedReceiver<ServerEvent>, port: u16, deadline: Instant) -> Result<(), String> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let ready = async {
        while let Some(event) = events.recv().await {
            match event {
                ServerEvent::Listening { .. } => {}
                ServerEvent::Ready => return Ok(()),
                ServerEvent::Failed { error } => return Err(format!("{}: {}", error.kind, error.message)),
            }
        }
        Err("the container exited before the environment was ready".to_string())
    };
    tokio::time::timeout(timeout, ready).await.map_err(|_| format!("not ready after {:.0} s", timeout.as_secs_f64()))??;
    // The event came from inside; make sure the path through the published port works too.
    let client = ServerClient::new(&format!("http://127.0.0.1:{port}"), None).map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(2);
    loop {
        match client.probe(Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() + delay > deadline => return Err(format!("the published port {port} does not answer: {err}")),
            Err(_) => tokio::time::sleep(delay).await,
        }
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// An HTTP-based environment is ready when `/health` says 200, or, if it has no such route, when
/// it answers anything below 500.
async fn wait_for_http(port: u16, deadline: Instant, exited: &AtomicBool) -> Result<(), String> {
    let client = ServerClient::new(&format!("http://127.0.0.1:{port}"), None).map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(5);
    loop {
        if exited.load(Ordering::SeqCst) {
            return Err("the container exited before its server answered".into());
        }
        let last = match client.probe(Duration::from_secs(2)).await {
            Ok(status) if status < 500 => return Ok(()),
            Ok(status) => format!("/health answered HTTP {status}"),
            Err(err) => err.to_string(),
        };
        if Instant::now() + delay > deadline {
            return Err(format!("not ready in time: {last}"));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Splits the container's output into lines: server events go to `events`, everything goes to
/// the log ring and to tracing. Sets `exited` when the stream ends.
async fn pump_output(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    name: String,
    logs: Arc<Mutex<VecDeque<String>>>,
    events: tokio::sync::mpsc::UnboundedSender<ServerEvent>,
    exited: Arc<AtomicBool>,
) {
    let mut partial_out = Vec::new();
    let mut partial_err = Vec::new();
    let take_line = |line: &[u8], from_stdout: bool| {
        let line = String::from_utf8_lossy(line).trim_end().to_string();
        if from_stdout {
            if let Ok(event) = serde_json::from_str::<ServerEvent>(&line) {
                let _ = events.send(event);
                return;
            }
        }
        tracing::info!(target: "rayfine::env", "[{name}] {line}");
        let mut logs = logs.lock();
        if logs.len() == LOG_LINES {
            logs.pop_front();
        }
        logs.push_back(line);
    };
    while let Some(Ok(chunk)) = output.next().await {
        let (bytes, from_stdout, partial) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => (message, true, &mut partial_out),
            LogOutput::StdErr { message } => (message, false, &mut partial_err),
            LogOutput::StdIn { .. } => continue,
        };
        partial.extend_from_slice(&bytes);
        while let Some(newline) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=newline).collect();
            take_line(&line, from_stdout);
        }
    }
    for (rest, from_stdout) in [(partial_out, true), (partial_err, false)] {
        if !rest.is_empty() {
            take_line(&rest, from_stdout);
        }
    }
    exited.store(true, Ordering::SeqCst);
}

/// How long a removal is asked for again before the container is reported as left behind. An
/// engine refuses to remove a container whose processes are slow to die (a fork bomb's thousands)
/// with a 500 "cannot kill", and succeeds a few seconds later.
const REMOVE_LIMIT: Duration = Duration::from_secs(60);

/// Force-removes a container with its volumes and waits until the engine no longer knows it,
/// asking again while the engine refuses. An error says the container is still there.
pub(crate) async fn remove_and_wait(docker: &Docker, id: &str) -> Result<()> {
    remove_and_wait_within(docker, id, REMOVE_LIMIT, Duration::from_secs(2)).await
}

/// [`remove_and_wait`], asking again every `every` for up to `limit`.
async fn remove_and_wait_within(docker: &Docker, id: &str, limit: Duration, every: Duration) -> Result<()> {
    let started = Instant::now();
    let mut refusal: Option<bollard::errors::Error> = None;
    loop {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) if is_conflict(&err) => {} // auto-removal already under way
            Err(err) => {
                tracing::debug!("removing container {id}: {err}");
                refusal = Some(err);
            }
        }
        // Gone at once, usually; otherwise ask again.
        let ask_again = Instant::now() + every;
        while Instant::now() < ask_again {
            match docker.inspect_container(id, None).await {
                Err(err) if is_not_found(&err) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        if started.elapsed() > limit {
            let short = &id[..12.min(id.len())];
            return Err(match refusal {
                Some(source) => Error::Docker { context: format!("container {short} is still there after {} s of removal attempts", limit.as_secs()), source },
                None => Error::ContainerRemains { id: short.to_string(), seconds: limit.as_secs() },
            });
        }
        tracing::info!("container {id} is still there; asking the engine again to remove it");
    }
}

/// Force-removes containers from a plain thread with a runtime of its own: for the exit paths
/// (signal handler, panic hook, guard) that may run inside or outside an async runtime.
pub(crate) fn remove_now(ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            let Ok(docker) = connect().await else { return };
            let removals = ids.iter().map(|id| {
                let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
                let docker = docker.clone();
                async move {
                    let _ = docker.remove_container(id, Some(options)).await;
                }
            });
            let _ = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(removals)).await;
        });
    });
    let _ = worker.join();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::{delete, get};

    use super::*;

    /// An engine that refuses to remove its one container (`refusals` times, with the 500 a fork
    /// bombed container gets), then removes it.
    async fn stubborn_engine(refusals: usize) -> Docker {
        #[derive(Clone)]
        struct Engine {
            refused: Arc<AtomicUsize>,
            refusals: usize,
            removed: Arc<AtomicBool>,
        }
        let engine = Engine { refused: Arc::default(), refusals, removed: Arc::default() };
        let not_found = || (StatusCode::NOT_FOUND, r#"{"message":"No such container: c1"}"#);
        let app = axum::Router::new()
            .route(
                "/containers/c1",
                delete(|State(engine): State<Engine>| async move {
                    if engine.refused.fetch_add(1, Ordering::SeqCst) < engine.refusals {
                        return (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"Could not kill running container c1: PID 42 is zombie and can not be killed"}"#);
                    }
                    engine.removed.store(true, Ordering::SeqCst);
                    (StatusCode::NO_CONTENT, "")
                }),
            )
            .route(
                "/containers/c1/json",
                get(move |State(engine): State<Engine>| async move {
                    if engine.removed.load(Ordering::SeqCst) {
                        not_found()
                    } else {
                        (StatusCode::OK, r#"{"Id":"c1","State":{"Running":false}}"#)
                    }
                }),
            )
            // Anything else is an error, never a 404 that would read as "removed".
            .fallback(|| async { StatusCode::IM_A_TEAPOT })
            .with_state(engine);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Docker::connect_with_http(&format!("http://{addr}"), 5, bollard::API_DEFAULT_VERSION).unwrap()
    }

    #[tokio::test]
    async fn removal_is_asked_again_while_the_engine_refuses() {
        let docker = stubborn_engine(2).await;
        remove_and_wait_within(&docker, "c1", Duration::from_secs(10), Duration::from_millis(100)).await.unwrap();
    }

    #[tokio::test]
    async fn a_container_the_engine_keeps_is_an_error_naming_it_not_a_success() {
        let docker = stubborn_engine(usize::MAX).await;
        let err = remove_and_wait_within(&docker, "c1", Duration::from_millis(500), Duration::from_millis(100)).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("container c1 is still there") && text.contains("zombie"), "{text}");
    }
}
