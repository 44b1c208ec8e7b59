//! The worker process: how it is started, how it is restarted with backoff when it dies or is
//! killed, and how its end is described.
//!
//! An environment that crashes, or a sync call that must be killed to stop it, should cost the
//! calls in flight, not the server: so one loop owns the process and starts it again. Its end is
//! described precisely (exit code, signal, the OOM killer) because that is all the caller gets to
//! tell a bug in env.py from a memory limit.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::process::{Child, Command};

use super::calls::Session;
use super::{wire, Phase, Shared};
use crate::protocol::worker::WorkerInterpreter;
use crate::protocol::{ErrorInfo, Interpreter};
use crate::server::reaper::{self, Leader};

/// How to start the worker. Its `Debug` leaves out the variables' values: they may be secrets.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Python interpreter to run.
    pub python: String,
    /// The worker script: the embedded `worker.py` of this folder, or `--worker-script`.
    pub script: PathBuf,
    /// A descriptor the worker inherits: the in-memory script that `script` names as
    /// `/proc/self/fd/N`.
    pub script_fd: Option<std::os::fd::RawFd>,
    /// env.py, or the folder holding it.
    pub env_path: PathBuf,
    /// Environment variables not to pass to the worker (the server's token).
    pub hidden_env: Vec<String>,
    /// Environment variables to give the worker (from the secrets file).
    pub env: Vec<(String, String)>,
    /// How long a thread that expects a message soon polls for it before it sleeps: the server
    /// for the reply of a call that is alone in flight, the worker for the next call.
    pub spin: Duration,
    /// The worker's CPU priority, inherited by everything it starts (see `--worker-priority`).
    pub priority: WorkerPriority,
    /// The CPU the worker (and everything it starts) is pinned to (see `--cpu-placement`).
    pub cpu: Option<usize>,
    /// Print a `worker` event with each worker's pid (`--announce-workers`).
    pub announce_pids: bool,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("python", &self.python)
            .field("script", &self.script)
            .field("env_path", &self.env_path)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("priority", &self.priority)
            .field("cpu", &self.cpu)
            .finish_non_exhaustive()
    }
}

/// The CPU priority of the worker and of everything it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerPriority {
    /// The same as the server's.
    Normal,
    /// `SCHED_IDLE` at nice 19: the server always runs first. Nothing below can raise it back
    /// without a privilege a container does not grant.
    Idle,
}

/// Tells the worker how long to poll for the next call before it sleeps, in microseconds.
const SPIN_ENV: &str = "RAYFINE_WORKER_SPIN_US";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The restart loop: start, wait for ready, serve until death or kill, back off, repeat. Ends
/// when the server stops it, when the first load fails, or when no handle is left.
pub(super) async fn restart_loop(config: WorkerConfig, shared: Weak<Shared>) {
    let mut backoff = BACKOFF_START;
    let mut ever_ready = false;
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let started = Instant::now();
        let outcome = run_once(&config, &strong, &mut ever_ready).await;
        let reason = match outcome {
            RunEnd::LoadFailed(error) if !ever_ready => {
                tracing::error!("environment failed to load: {}: {}", error.kind, error.message);
                strong.phase.send_replace(Phase::Failed(error));
                return;
            }
            RunEnd::LoadFailed(error) => format!("reloading failed: {}: {}", error.kind, error.message),
            RunEnd::Exited(why) => why,
            RunEnd::Stopped => return,
            RunEnd::Killed(why) => {
                backoff = BACKOFF_START;
                strong.phase.send_replace(Phase::Restarting(why));
                continue;
            }
        };
        tracing::warn!("worker stopped ({reason}); restarting in {backoff:?}");
        strong.phase.send_replace(Phase::Restarting(reason));
        drop(strong);
        if started.elapsed() > STABLE_AFTER {
            backoff = BACKOFF_START;
        }
        let Some(strong) = shared.upgrade() else { return };
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = strong.stop.notified() => return,
        }
        drop(strong);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// How one life of the worker ended.
enum RunEnd {
    LoadFailed(ErrorInfo),
    Exited(String),
    /// Killed at a call's request, for the reason given.
    Killed(String),
    Stopped,
}

async fn run_once(config: &WorkerConfig, shared: &Shared, ever_ready: &mut bool) -> RunEnd {
    // Found by the first worker that says; every later one starts on it directly.
    let mut interpreter = shared.interpreter.lock().clone();
    let spawned = match spawn(config, interpreter.as_ref()) {
        // The interpreter found may have gone since (a virtual environment removed, pyenv's
        // version uninstalled): the configured name is what the owner asked for, so back to it.
        Err(err) if interpreter.is_some() => {
            tracing::warn!("cannot start the worker's interpreter as found ({err}); starting `{}` again", config.python);
            *shared.interpreter.lock() = None;
            interpreter = None;
            spawn(config, None)
        }
        spawned => spawned,
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            return RunEnd::LoadFailed(ErrorInfo {
                kind: "WorkerStartError".into(),
                message: format!("could not start `{}`: {err}", config.python),
                traceback: String::new(),
            })
        }
    };
    let pid = child.id();
    if let (true, Some(pid)) = (config.announce_pids, pid) {
        // Read while the child is ours and unreaped, so it is certainly this worker's.
        let started = crate::labels::process_start_time(pid);
        crate::server::announce(&crate::protocol::ServerEvent::Worker { pid, started });
    }
    let found = interpreter.is_none().then(|| super::interpreter::passed_env(&config.hidden_env, &worker_extra_env(config))).flatten();
    let end = serve_worker(shared, config.spin, ever_ready, &mut child, |reported| {
        if let Some(resolved) = found.as_ref().and_then(|passed| super::interpreter::resolve(reported, passed)) {
            *shared.interpreter.lock() = Some(resolved);
        }
    })
    .await;
    if interpreter.is_some() && matches!(end, RunEnd::LoadFailed(_)) {
        // A worker on the found interpreter that never got as far as its handshake: the next
        // start goes through the configured name, in case the difference is the cause.
        *shared.interpreter.lock() = None;
    }
    // Whatever the worker started goes with it, however it ended (serve_worker waited for it).
    reaper::kill_tree(pid, Leader::Reaped).await;
    let _ = child.wait().await;
    reaper::disown(pid);
    end
}

/// Waits for the worker's handshake, then serves calls until it ends or is told to.
async fn serve_worker(shared: &Shared, reply_poll: Duration, ever_ready: &mut bool, child: &mut Child, found: impl FnOnce(WorkerInterpreter)) -> RunEnd {
    let pid = child.id();
    let oom_kills_before = oom_kills();
    let describe_status = |status| describe_status(status, oom_kills_before);
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut lines = BufReader::with_capacity(1 << 16, child.stdout.take().expect("stdout is piped"));
    let handshake = match wire::read_handshake(&mut lines).await {
        Ok(handshake) => handshake,
        Err(error) => {
            reaper::kill_tree(pid, Leader::Unreaped).await;
            let status = child.wait().await.ok();
            let mut error = error;
            if error.kind == "WorkerExited" {
                error.message = format!("{} ({})", error.message, describe_status(status));
            }
            return RunEnd::LoadFailed(error);
        }
    };
    let (outbox, writer, inbox) = match wire::open_channel(stdin, lines) {
        Ok(parts) => parts,
        Err(err) => return RunEnd::Exited(format!("cannot set up the channel to the worker: {err}")),
    };
    if let Some(reported) = handshake.interpreter {
        found(reported);
    }
    let session = Arc::new(Session::new(outbox, inbox, handshake.methods, handshake.env, reply_poll));
    let writer = tokio::spawn(writer);
    let reader = tokio::spawn({
        let session = session.clone();
        async move { session.read_replies().await }
    });
    *shared.session.write() = Some(session.clone());
    *ever_ready = true;
    shared.phase.send_replace(Phase::Ready);

    let end = tokio::select! {
        status = child.wait() => RunEnd::Exited(format!("the worker exited: {}", describe_status(status.ok()))),
        _ = session.kill_requested() => {
            reaper::kill_tree(pid, Leader::Unreaped).await;
            let _ = child.wait().await;
            RunEnd::Killed(session.kill_reason().unwrap_or_else(|| "the worker was restarted".to_string()))
        }
        _ = shared.stop.notified() => {
            reaper::kill_tree(pid, Leader::Unreaped).await;
            let _ = child.wait().await;
            RunEnd::Stopped
        }
    };
    *shared.session.write() = None;
    writer.abort();
    // Let the reader deliver replies the worker wrote before it died.
    let _ = tokio::time::timeout(Duration::from_millis(200), reader).await;
    let reason = match &end {
        RunEnd::Killed(why) => why.clone(),
        RunEnd::Stopped => "the server is shutting down".to_string(),
        RunEnd::Exited(why) | RunEnd::LoadFailed(ErrorInfo { message: why, .. }) => why.clone(),
    };
    session.fail_pending(&reason);
    end
}
/// The variables the server adds for the worker, beyond its own.
fn worker_extra_env(config: &WorkerConfig) -> Vec<(String, String)> {
    let mut extra = config.env.clone();
    extra.push((SPIN_ENV.to_string(), config.spin.as_micros().to_string()));
    extra
}

/// Starts the worker: `config.python`, or the `interpreter` it was found to be, with the
/// variables its wrapper would have set.
fn spawn(config: &WorkerConfig, interpreter: Option<&Interpreter>) -> std::io::Result<Child> {
    let mut command = match interpreter {
        Some(found) => Command::new(&found.program),
        None => Command::new(&config.python),
    };
    command
        .arg(&config.script)
        .arg(&config.env_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, so that killing the worker kills what the environment started
        // too (a subprocess left hanging by a timed-out call), and a Ctrl-C meant for the server
        // does not reach it.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = env_dir(&config.env_path) {
        command.current_dir(dir);
    }
    for name in &config.hidden_env {
        command.env_remove(name);
    }
    command.envs(worker_extra_env(config));
    if let Some(found) = interpreter {
        command.envs(&found.set);
        for name in &found.unset {
            command.env_remove(name);
        }
    }
    if let Some(fd) = config.script_fd {
        // SAFETY: fcntl is async-signal-safe; it clears close-on-exec in the child only.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if let Some(cpu) = config.cpu {
        // SAFETY: pin_self_to makes one async-signal-safe system call, in the child only.
        unsafe {
            command.pre_exec(move || {
                crate::server::placement::pin_self_to(cpu);
                Ok(())
            });
        }
    }
    if config.priority == WorkerPriority::Idle {
        // SAFETY: setpriority and sched_setscheduler are plain system calls, safe between fork
        // and exec. Lowering one's own priority needs no privilege; where it is refused anyway
        // (gVisor knows only SCHED_NORMAL, a strict seccomp profile) the worker runs as it is,
        // and the parent says so below.
        unsafe {
            command.pre_exec(|| {
                let param = libc::sched_param { sched_priority: 0 };
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
                Ok(())
            });
        }
    }
    let child = reaper::spawn_owned(&mut command)?;
    if config.priority == WorkerPriority::Idle {
        // SAFETY: reads the scheduling policy of our own child.
        let policy = child.id().map(|pid| unsafe { libc::sched_getscheduler(pid as libc::pid_t) });
        if policy.is_some_and(|p| p >= 0 && p != libc::SCHED_IDLE) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!("the worker could not be given the idle CPU priority; a runaway environment may starve this server"));
        }
    }
    Ok(child)
}

fn env_dir(env_path: &std::path::Path) -> Option<PathBuf> {
    if env_path.is_dir() {
        Some(env_path.to_path_buf())
    } else {
        env_path.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.to_path_buf())
    }
}

/// How the worker ended. A SIGKILL is put down to the OOM killer only when the memory cgroup's
/// count of OOM kills went up since the worker started (`oom_kills_before`).
fn describe_status(status: Option<std::process::ExitStatus>, oom_kills_before: Option<u64>) -> String {
    match status {
        Some(s) if crate::exit_status::is_sigkill(s) => match (oom_kills_before, oom_kills()) {
            (Some(before), Some(now)) if now > before => "killed by the kernel's OOM killer: out of memory".into(),
            (Some(_), Some(_)) => "killed by SIGKILL from another process (not by the OOM killer)".into(),
            _ => "killed by SIGKILL (out of memory, or by another process)".into(),
        },
        Some(s) => crate::exit_status::describe(s),
        None => "status unknown".into(),
    }
}

/// How many processes the OOM killer has killed in this process's memory cgroup (v2
/// `memory.events`, v1 `memory.oom_control`), when the cgroup file is readable.
fn oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
        }
    }
    // In a container the cgroup's own files are at the mount's root.
    candidates.extend(["/sys/fs/cgroup/memory.events".to_string(), "/sys/fs/cgroup/memory/memory.oom_control".to_string()]);
    candidates.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    })
}
