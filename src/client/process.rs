//! Process backend: the server as a child process on 127.0.0.1, no Docker needed.
//!
//! The child can never outlive its owner: it is started with `--exit-on-stdin-eof` and we hold
//! the only write end of its stdin, so when this process dies for any reason, SIGKILL included,
//! the kernel closes that pipe and the server exits, taking its worker along. It runs in its own
//! process group, which cleanup signals as a whole.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{ChildStdin, Command};

use super::error::{Error, Result};
use crate::protocol::{ServerEvent, TOKEN_ENV};

/// How many of the environment's last log lines are kept for error messages.
const LOG_LINES: usize = 200;
/// Shown in errors: the last lines of the log.
const LOG_LINES_IN_ERRORS: usize = 20;

/// The program that serves an environment, and whether it needs the `serve` subcommand.
#[derive(Debug, Clone)]
pub struct ServerProgram {
    /// Path of the executable.
    pub path: PathBuf,
    /// True for the `rayfine` CLI (`rayfine serve ...`), false for `rayfine-server`.
    pub needs_serve: bool,
}

impl ServerProgram {
    /// The program at `path`; `rayfine` (the CLI) is run as `rayfine serve`.
    pub fn at(path: &Path) -> ServerProgram {
        let needs_serve = path.file_name().is_some_and(|n| n == "rayfine");
        ServerProgram { path: path.to_path_buf(), needs_serve }
    }

    /// Finds the server: `RAYFINE_SERVER_BIN`, this very program if it is the `rayfine` CLI, a
    /// `rayfine-server` or `rayfine` next to this program or one folder up (cargo puts tests and
    /// examples one level below the binaries), then `PATH`.
    pub fn locate() -> Result<ServerProgram> {
        let classify = |path: PathBuf| ServerProgram::at(&path);
        if let Some(path) = std::env::var_os("RAYFINE_SERVER_BIN") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(Error::InvalidInput(format!("RAYFINE_SERVER_BIN points to `{}`, which is not a file", path.display())));
            }
            return Ok(classify(path));
        }
        let exe = std::env::current_exe().ok();
        if let Some(exe) = &exe {
            if exe.file_name().is_some_and(|n| n == "rayfine") {
                return Ok(classify(exe.clone()));
            }
        }
        let mut folders: Vec<PathBuf> = Vec::new();
        if let Some(dir) = exe.as_deref().and_then(Path::parent) {
            folders.push(dir.to_path_buf());
            folders.extend(dir.parent().map(Path::to_path_buf));
        }
        folders.extend(std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
        for folder in folders {
            for name in ["rayfine-server", "rayfine"] {
                let candidate = folder.join(name);
                if candidate.is_file() {
                    return Ok(classify(candidate));
                }
            }
        }
        Err(Error::InvalidInput(
            "cannot find the rayfine-server program: build it (`cargo build`), put it on PATH, or set RAYFINE_SERVER_BIN".into(),
        ))
    }
}

/// A running server child process.
pub struct ProcessServer {
    /// Process id, also the id of its process group.
    pid: i32,
    /// Set once the child has been reaped, so its id is never signalled after it may be reused.
    exited: Arc<AtomicBool>,
    /// Write end of the child's stdin; dropping it makes the server exit.
    stdin: Mutex<Option<ChildStdin>>,
    /// Last lines the server and the environment wrote to stderr.
    logs: Arc<Mutex<VecDeque<String>>>,
    /// Completes when the child has exited.
    exit: tokio::sync::watch::Receiver<bool>,
    /// How it exited, once it has.
    status: Arc<Mutex<Option<std::process::ExitStatus>>>,
}

/// Everything needed to start one server.
pub struct Launch<'a> {
    /// The environment folder.
    pub folder: &'a Path,
    /// Display name, for logs.
    pub name: &'a str,
    /// Environment variables for the environment.
    pub env_vars: &'a std::collections::BTreeMap<String, String>,
    /// Bearer token the server will require.
    pub token: &'a str,
    /// Detach: survive this process (no stdin watch, own session, logs to `log_file`).
    pub keep: Option<&'a Path>,
    /// Start-up timeout.
    pub startup_timeout: Duration,
    /// The server program, when not located.
    pub program: Option<&'a Path>,
    /// The lease the server gets.
    pub lease: Option<Duration>,
}

impl ProcessServer {
    /// Starts the server and waits until the environment is loaded. Returns it with its port.
    pub async fn start(launch: Launch<'_>) -> Result<(ProcessServer, u16)> {
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
        command.envs(launch.env_vars).env(TOKEN_ENV, launch.token).env_remove("RAYFINE_NO_AUTH").stdout(Stdio::piped());
        command.env("RUST_LOG", std::env::var("RAYFINE_SERVER_LOG").unwrap_or_else(|_| "warn".into()));
        match launch.lease {
            Some(lease) => command.env("RAYFINE_LEASE", lease.as_secs_f64().to_string()),
            None => command.env_remove("RAYFINE_LEASE"),
        };
        match launch.keep {
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
        let logs = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect_logs(stderr, launch.name.to_string(), logs.clone()));
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let exited = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit) = tokio::sync::watch::channel(false);
        let status = Arc::new(Mutex::new(None));
        let (reaped, exit_status) = (exited.clone(), status.clone());
        tokio::spawn(async move {
            *exit_status.lock() = child.wait().await.ok();
            reaped.store(true, Ordering::SeqCst);
            let _ = exit_tx.send(true);
        });
        let server = ProcessServer { pid, exited, stdin: Mutex::new(stdin), logs, exit, status };
        let waited = tokio::time::timeout(launch.startup_timeout, wait_ready(stdout)).await;
        let failure = match waited {
            Ok(Ok(port)) => return Ok((server, port)),
            Ok(Err(reason)) => reason,
            Err(_) => format!("not ready after {:.0} s", launch.startup_timeout.as_secs_f64()),
        };
        server.stop().await;
        Err(Error::StartFailed { name: launch.name.to_string(), reason: failure, logs: server.last_logs(LOG_LINES_IN_ERRORS) })
    }

    /// Process id of the server (and its process group).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Whether the server process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    /// How the server ended, if it has, waiting up to `within` for its exit to be seen: a
    /// caller whose connection just broke asks before the waiter task has run.
    pub async fn exit_description(&self, within: Duration) -> Option<String> {
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout(within, exit.wait_for(|done| *done)).await;
        if !self.has_exited() {
            return None;
        }
        use std::os::unix::process::ExitStatusExt;
        let how = match *self.status.lock() {
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(libc::SIGKILL)) => "killed by SIGKILL".to_string(),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                _ => "status unknown".to_string(),
            },
            None => "status unknown".to_string(),
        };
        Some(format!("its server process {} has exited ({how})", self.pid))
    }

    /// The last `n` log lines.
    pub fn last_logs(&self, n: usize) -> Vec<String> {
        let logs = self.logs.lock();
        logs.iter().skip(logs.len().saturating_sub(n)).cloned().collect()
    }

    /// Kills the whole process group at once; for paths that cannot wait (signals, panics).
    pub fn kill_now(&self) {
        self.signal_group(libc::SIGKILL);
        self.stdin.lock().take();
    }

    fn signal_group(&self, signal: i32) {
        if self.pid > 0 && !self.has_exited() {
            // SAFETY: plain syscall; the group id is our own child's and it has not been reaped,
            // so it cannot have been reused.
            unsafe {
                libc::kill(-self.pid, signal);
            }
        }
    }

    /// Asks the server to stop (SIGTERM), waits briefly, then kills what is left.
    pub async fn stop(&self) {
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

/// Reads the server's event lines until it is ready (its port) or failed (why).
async fn wait_ready(stdout: impl AsyncRead + Unpin) -> Result<u16, String> {
    let mut lines = BufReader::new(stdout).lines();
    let mut port = None;
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<ServerEvent>(&line) {
            Ok(ServerEvent::Listening { port: p }) => port = Some(p),
            Ok(ServerEvent::Ready) => return port.ok_or_else(|| "the server announced no port".to_string()),
            Ok(ServerEvent::Failed { error }) => return Err(format!("{}: {}", error.kind, error.message)),
            Err(_) => tracing::debug!("server stdout: {line}"),
        }
    }
    Err("the server exited before the environment was ready".into())
}

async fn collect_logs(stderr: impl AsyncRead + Unpin, name: String, logs: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "rayfine::env", "[{name}] {line}");
        let mut logs = logs.lock();
        if logs.len() == LOG_LINES {
            logs.pop_front();
        }
        logs.push_back(line);
    }
}
