//! Process backend: the server as a child process on 127.0.0.1, no Docker needed.
//!
//! The child can never outlive its owner: it is started with `--exit-on-stdin-eof` and we hold
//! the only write end of its stdin, so when this process dies for any reason, SIGKILL included,
//! the kernel closes that pipe and the server exits, taking its worker along. It runs in its own
//! process group, which cleanup signals as a whole.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{ChildStdin, Command};

use super::{Backend, BoxFuture, Endpoint, KillNow, Launch, LogRing, StartSpec, LOG_LINES_IN_ERRORS};
use crate::detect::EnvType;
use crate::error::{Error, Result};
use crate::programs::ServerProgram;
use super::known_interpreters::{self, StartKey};
use super::worker_guard::WorkerGuard;
use crate::protocol::{Interpreter, ServerEvent, ANNOUNCE_INTERPRETER_ENV, ANNOUNCE_WORKERS_ENV, TOKEN_ENV};

/// Names the interpreter the server runs the worker on (`--python`).
const PYTHON_ENV: &str = "RAYFINE_PYTHON";

/// A running server child process.
pub(crate) struct ProcessServer {
    /// Process id, also the id of its process group.
    pid: i32,
    /// Set once the child has been reaped, so its id is never signalled after it may be reused.
    exited: Arc<AtomicBool>,
    /// Write end of the child's stdin; dropping it makes the server exit.
    stdin: Mutex<Option<ChildStdin>>,
    /// Last lines the server and the environment wrote to stderr.
    logs: Arc<LogRing>,
    /// Completes when the child has exited.
    exit: tokio::sync::watch::Receiver<bool>,
    /// How it exited, once it has.
    status: Arc<Mutex<Option<std::process::ExitStatus>>>,
}

/// A folder to serve from a local server process.
pub(crate) struct ProcessLaunch<'a> {
    /// The environment folder.
    pub folder: &'a Path,
    /// The server program, when not located.
    pub program: Option<&'a Path>,
    /// Where a kept environment's server writes its log (a kept one survives this process:
    /// no stdin watch, its own session).
    pub log_file: Option<&'a Path>,
}

impl Launch for ProcessLaunch<'_> {
    /// Starts the server and waits until the environment is loaded.
    async fn start(self, spec: &StartSpec<'_>) -> Result<(Box<dyn Backend>, Endpoint)> {
        let (server, port) = ProcessServer::start(&self, spec).await?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let endpoint = Endpoint {
            url: format!("http://{addr}"),
            token: Some(spec.token.to_string()),
            lease_at: spec.lease.map(|_| addr),
            env_type: EnvType::Function,
        };
        Ok((Box::new(server), endpoint))
    }
}

impl ProcessServer {
    /// Starts the server and waits until the environment is loaded. Returns it with its port.
    async fn start(launch: &ProcessLaunch<'_>, spec: &StartSpec<'_>) -> Result<(ProcessServer, u16)> {
        let program = match launch.program {
            Some(path) if path.is_file() => ServerProgram::at(path),
            Some(path) => return Err(Error::InvalidInput(format!("the server program `{}` is not a file", path.display()))),
            None => ServerProgram::locate()?,
        };
        let mut command = Command::new(&program.path);
        if program.needs_serve {
            command.arg("serve");
        }
        let folder = std::path::absolute(launch.folder).map_err(|source| Error::Io { context: "cannot resolve the environment folder".into(), source })?;
        command.args(["--host", "127.0.0.1", "--port", "0", "--env-path"]).arg(&folder);
        command.envs(spec.env_vars).env(TOKEN_ENV, spec.token).env_remove("RAYFINE_NO_AUTH").env_remove(crate::protocol::SECRETS_STDIN_ENV).stdout(Stdio::piped());
        let key = StartKey::new(&folder, spec.env_vars);
        let known = known_interpreters::lookup(&key);
        match &known {
            Some(found) => {
                command.env(PYTHON_ENV, &found.program).envs(&found.set);
                for name in &found.unset {
                    command.env_remove(name);
                }
            }
            None => {
                command.env(ANNOUNCE_INTERPRETER_ENV, "true");
            }
        }
        command.env("RUST_LOG", std::env::var("RAYFINE_SERVER_LOG").unwrap_or_else(|_| "warn".into()));
        command.env(ANNOUNCE_WORKERS_ENV, "true");
        match spec.lease {
            Some(lease) => command.env("RAYFINE_LEASE", lease.as_secs_f64().to_string()),
            None => command.env_remove("RAYFINE_LEASE"),
        };
        match launch.log_file {
            None => {
                command.arg("--exit-on-stdin-eof").stdin(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
            }
            Some(log_file) => {
                let log = std::fs::File::create(log_file)
                    .map_err(|source| Error::Io { context: format!("cannot create the log file {}", log_file.display()), source })?;
                command.stdin(Stdio::null()).stderr(log);
                // SAFETY: setsid is async-signal-safe; it detaches the server from our terminal
                // session so that closing the terminal does not stop a kept environment.
                unsafe {
                    command.pre_exec(|| {
                        libc::setsid();
                        Ok(())
                    });
                }
            }
        }
        let mut child = command
            .spawn()
            .map_err(|source| Error::Io { context: format!("cannot start {}", program.path.display()), source })?;
        let pid = child.id().map(|id| id as i32).unwrap_or_default();
        let logs = Arc::new(LogRing::new(spec.name));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move { logs.collect(stderr).await });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let exited = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit) = tokio::sync::watch::channel(false);
        let status = Arc::new(Mutex::new(None));
        let (reaped, exit_status) = (exited.clone(), status.clone());
        let workers = Arc::new(WorkerGuard::default());
        let guard = workers.clone();
        tokio::spawn(async move {
            *exit_status.lock() = child.wait().await.ok();
            // Before anyone hears of the exit: a caller told the server died sees no worker left.
            guard.server_reaped();
            reaped.store(true, Ordering::SeqCst);
            let _ = exit_tx.send(true);
        });
        let server = ProcessServer { pid, exited, stdin: Mutex::new(stdin), logs, exit, status };
        let started = std::time::Instant::now();
        let waited = tokio::time::timeout_at(spec.deadline.into(), wait_ready(stdout, workers)).await;
        let failure = match waited {
            Ok(Ok((port, interpreter))) => {
                if let (None, Some(interpreter)) = (&known, interpreter) {
                    known_interpreters::remember(key, interpreter);
                }
                return Ok((server, port));
            }
            Ok(Err(reason)) => reason,
            Err(_) => format!("not ready after {:.0} s", started.elapsed().as_secs_f64()),
        };
        if known.is_some() {
            known_interpreters::forget(&key);
        }
        server.end().await;
        Err(Error::StartFailed { name: spec.name.to_string(), reason: failure, logs: server.logs.last(LOG_LINES_IN_ERRORS) })
    }

    fn exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    fn signal_group(&self, signal: i32) {
        if self.pid > 0 && !self.exited() {
            // SAFETY: plain syscall; the group id is our own child's and it has not been reaped,
            // so it cannot have been reused.
            unsafe {
                libc::kill(-self.pid, signal);
            }
        }
    }

    /// Asks the server to stop (SIGTERM), waits briefly, then kills what is left.
    async fn end(&self) {
        self.signal_group(libc::SIGTERM);
        self.stdin.lock().take();
        let mut exit = self.exit.clone();
        if tokio::time::timeout(Duration::from_secs(3), exit.wait_for(|done| *done)).await.is_err() {
            self.signal_group(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), exit.wait_for(|done| *done)).await;
        }
        // The worker needs no signal of its own: the server kills it on the way out, and if the
        // server was killed, the worker reads end of file on its channel and exits.
    }
}

impl Backend for ProcessServer {
    fn mode(&self) -> &'static str {
        "process"
    }

    fn describe(&self) -> String {
        format!("process {}", self.pid)
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid as u32)
    }

    fn stop(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async {
            self.end().await;
            Ok(())
        })
    }

    /// Kills the whole process group at once.
    fn kill_now(&self) -> KillNow {
        self.signal_group(libc::SIGKILL);
        self.stdin.lock().take();
        KillNow::Done
    }

    fn has_exited(&self) -> bool {
        self.exited()
    }

    fn exit_description(&self, within: Duration) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let mut exit = self.exit.clone();
            let _ = tokio::time::timeout(within, exit.wait_for(|done| *done)).await;
            if !self.exited() {
                return None;
            }
            let how = match *self.status.lock() {
                Some(status) => crate::exit_status::describe(status),
                None => "status unknown".to_string(),
            };
            Some(format!("its server process {} has exited ({how})", self.pid))
        })
    }

    fn last_logs(&self, n: usize) -> Vec<String> {
        self.logs.last(n)
    }
}

/// Waits for the server to be ready (its port, and the interpreter if it said) or to fail (why),
/// from its event lines (see [`read_events`]).
async fn wait_ready(stdout: impl AsyncRead + Unpin + Send + 'static, workers: Arc<WorkerGuard>) -> Result<(u16, Option<Interpreter>), String> {
    let mut events = read_events(stdout, workers);
    let mut port = None;
    while let Some(event) = events.recv().await {
        match event {
            ServerEvent::Listening { port: p } => port = Some(p),
            ServerEvent::Ready { interpreter } => {
                let port = port.ok_or_else(|| "the server announced no port".to_string())?;
                return Ok((port, interpreter));
            }
            ServerEvent::Failed { error } => return Err(format!("{}: {}", error.kind, error.message)),
            // Never passed on: read_events gives them to the guard.
            ServerEvent::Worker { .. } => {}
        }
    }
    Err("the server exited before the environment was ready".into())
}

/// Reads the server's event lines until it closes its stdout, for all its life: the workers it
/// announces (the first, and each restart) go to `workers` as they come, and every other event
/// to the receiver returned, for as long as it is kept.
fn read_events(stdout: impl AsyncRead + Unpin + Send + 'static, workers: Arc<WorkerGuard>) -> tokio::sync::mpsc::UnboundedReceiver<ServerEvent> {
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ServerEvent>(&line) {
                Ok(ServerEvent::Worker { pid, started }) => workers.announced(pid, started),
                Ok(event) => {
                    let _ = events.send(event);
                }
                Err(_) => tracing::debug!("server stdout: {line}"),
            }
        }
    });
    received
}
