//! The Python worker process and the channel to it.
//!
//! One worker runs the environment. Calls are multiplexed over its stdin/stdout as JSON lines
//! tagged with an id, written straight from the handler that makes them; replies are routed to
//! the waiting call by whoever reads them, the reader task or a handler polling for its own
//! (see [`super::channel`]). A worker that dies, or is killed because a sync call overran its
//! timeout, is started again with backoff; calls in flight on it fail with
//! [`CallError::WorkerLost`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{oneshot, watch, Notify};

use super::channel::{Inbox, Outbox};
use super::reaper::{self, Leader};
use crate::protocol::worker::{encode_call, encode_cancel, CallFailure, FailureKind, WorkerMessage};
use crate::protocol::{health_status, ErrorInfo, MethodInfo};

/// How to start the worker. Its `Debug` leaves out the variables' values: they may be secrets.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Python interpreter to run.
    pub python: String,
    /// The worker script (templates/worker.py).
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
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("python", &self.python)
            .field("script", &self.script)
            .field("env_path", &self.env_path)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("priority", &self.priority)
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

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No such callable method.
    #[error("no method named `{method}`; available: {available}")]
    NotFound {
        /// The requested name.
        method: String,
        /// Comma-separated available names.
        available: String,
    },
    /// The arguments do not bind to the signature.
    #[error("{0}")]
    InvalidArguments(String),
    /// The method raised.
    #[error("{}: {}", .0.kind, .0.message)]
    Raised(ErrorInfo),
    /// The result could not be converted to JSON.
    #[error("{0}")]
    NotSerializable(String),
    /// The call ran past its timeout.
    #[error("call to `{method}` timed out after {seconds:.3} s; {action}")]
    Timeout {
        /// The method.
        method: String,
        /// The timeout.
        seconds: f64,
        /// What was done to stop it.
        action: &'static str,
    },
    /// The worker is not serving (starting, restarting or failed to load).
    #[error("{0}")]
    Unavailable(String),
    /// The worker died or was restarted while the call was in flight.
    #[error("{0}")]
    WorkerLost(String),
}

type Outcome = Result<Box<RawValue>, CallError>;

/// A method and how long its last call took, which decides whether the next one polls.
struct MethodEntry {
    info: MethodInfo,
    /// Microseconds from sending the last call to its reply; 0 before the first.
    last_micros: AtomicU64,
}

/// One running worker process and its channel.
struct Session {
    /// The write side of the channel to the worker.
    outbox: Outbox,
    /// The read side: the worker's replies.
    inbox: Inbox,
    /// Calls awaiting a reply, by id. A plain mutex: it is never held across an await.
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// Methods by name, as the worker described them.
    methods: HashMap<String, MethodEntry>,
    /// The methods in the worker's order, for `/methods`.
    method_list: Vec<MethodInfo>,
    /// Asks the restart loop to kill this worker (a sync call overran its timeout).
    kill: Notify,
}

impl MethodEntry {
    fn record(&self, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_micros.store(micros, Ordering::Relaxed);
    }
}

impl Session {
    fn fail_pending(&self, reason: &str) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for (_, waiter) in pending {
            let _ = waiter.send(Err(CallError::WorkerLost(reason.to_string())));
        }
    }

    fn deliver(&self, id: u64, outcome: Outcome) {
        if let Some(waiter) = self.pending.lock().remove(&id) {
            let _ = waiter.send(outcome);
        }
    }

    /// Routes one message from the worker to the call waiting for it.
    fn on_message(&self, line: &[u8]) {
        let reply: WorkerMessage = match serde_json::from_slice(line) {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!("ignored a malformed message from the worker: {err}");
                return;
            }
        };
        let Some(id) = reply.id else { return };
        let outcome = match reply.error {
            Some(error) => Err(reply_error(error)),
            None => Ok(reply.result.map(RawValue::to_owned).unwrap_or_else(null_value)),
        };
        self.deliver(id, outcome);
    }
}

/// What the worker is doing, as `/health` reports it.
#[derive(Clone)]
pub enum Phase {
    /// Loading env.py for the first time.
    Starting,
    /// Serving.
    Ready,
    /// Being started again after it died or was killed.
    Restarting(String),
    /// Loading failed; nothing will be served.
    Failed(ErrorInfo),
}

impl Phase {
    /// The `/health` status word.
    pub fn status(&self) -> &'static str {
        match self {
            Phase::Starting => health_status::STARTING,
            Phase::Ready => health_status::OK,
            Phase::Restarting(_) => health_status::RESTARTING,
            Phase::Failed(_) => health_status::FAILED,
        }
    }
}

/// Cheap handle to the worker, shared by all request handlers; the restart loop owns the process.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

struct Shared {
    /// The serving worker, if any. Read on every call, written only on (re)start.
    session: RwLock<Option<Arc<Session>>>,
    /// Current phase; a watch so the server can print readiness as soon as it changes.
    phase: watch::Sender<Phase>,
    /// Ids tag calls on the channel so replies can come back in any order.
    next_id: AtomicU64,
    /// Asks the restart loop to kill the worker and end (server shutdown).
    stop: Notify,
    /// How long a call alone in flight polls for its reply.
    reply_poll: Duration,
    /// Turns true when the restart loop has ended, the worker and all it started killed.
    ended: watch::Receiver<bool>,
}

/// Tells the worker how long to poll for the next call before it sleeps, in microseconds.
const SPIN_ENV: &str = "RAYFINE_WORKER_SPIN_US";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

impl Worker {
    /// Starts the worker and keeps it running until the returned handle's last clone is dropped
    /// and the server shuts down.
    pub fn start(config: WorkerConfig) -> Worker {
        let (phase, _) = watch::channel(Phase::Starting);
        let (ended_tx, ended) = watch::channel(false);
        let shared = Arc::new(Shared {
            session: RwLock::new(None),
            phase,
            next_id: AtomicU64::new(1),
            stop: Notify::new(),
            reply_poll: config.spin,
            ended,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            restart_loop(config, weak).await;
            ended_tx.send_replace(true);
        });
        Worker { shared }
    }

    /// Kills the worker and everything it started, and returns once that is done (bounded): a
    /// server about to exit must not leave an escaped process of the environment behind.
    pub async fn stop(&self) {
        self.shutdown();
        let mut ended = self.shared.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(15), ended.wait_for(|ended| *ended)).await;
    }

    /// Kills the worker and ends the restart loop; calls in flight fail with [`CallError::WorkerLost`].
    pub fn shutdown(&self) {
        self.shared.stop.notify_one();
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.shared.phase.borrow().clone()
    }

    /// Watches phase changes (used to print readiness events).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// The methods of the running worker, or why there is none.
    pub fn methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        Ok(self.session()?.method_list.clone())
    }

    fn session(&self) -> Result<Arc<Session>, CallError> {
        if let Some(session) = self.shared.session.read().as_ref() {
            return Ok(session.clone());
        }
        Err(CallError::Unavailable(unavailable_reason(&self.phase())))
    }

    /// Calls `method` with raw JSON `args` (an array) and `kwargs` (an object).
    pub async fn call(&self, method: &str, args: &str, kwargs: &str, timeout: Option<Duration>) -> Outcome {
        let session = self.session()?;
        let Some(entry) = session.methods.get(method) else {
            let mut names: Vec<&str> = session.method_list.iter().map(|m| m.name.as_str()).collect();
            names.sort_unstable();
            return Err(CallError::NotFound { method: method.to_string(), available: names.join(", ") });
        };
        let started = Instant::now();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let alone = {
            let mut pending = session.pending.lock();
            pending.insert(id, tx);
            pending.len() == 1
        };
        let message = encode_call(id, method, args, kwargs);
        if session.outbox.send(&message).is_err() {
            session.pending.lock().remove(&id);
            return Err(CallError::WorkerLost("the worker stopped before the call was sent".into()));
        }
        let lost = || Err(CallError::WorkerLost("the worker stopped during the call".into()));
        let poll = timeout.map_or(self.shared.reply_poll, |limit| limit.min(self.shared.reply_poll));
        // Poll only for a call alone in flight (otherwise there is other work for this thread)
        // to a method whose last call was short enough to have been caught by polling.
        if alone && !poll.is_zero() && entry.last_micros.load(Ordering::Relaxed) <= poll.as_micros() as u64 {
            let arrived = session.inbox.poll_for(poll, || !rx.is_empty(), |line| session.on_message(line));
            if arrived {
                entry.record(started);
                return rx.try_recv().unwrap_or_else(|_| lost());
            }
        }
        let received = match timeout {
            Some(limit) => match tokio::time::timeout_at((started + limit).into(), rx).await {
                Ok(received) => received,
                Err(_) => return Err(self.on_timeout(&session, id, &entry.info, limit)),
            },
            None => rx.await,
        };
        entry.record(started);
        received.unwrap_or_else(|_| lost())
    }

    /// Stops an overrunning call: async calls are cancelled, sync ones kill the worker, since a
    /// thread cannot be stopped from outside.
    fn on_timeout(&self, session: &Session, id: u64, info: &MethodInfo, limit: Duration) -> CallError {
        session.pending.lock().remove(&id);
        let action = if info.is_async {
            let _ = session.outbox.send(&encode_cancel(id));
            "the call was cancelled"
        } else {
            tracing::warn!(method = %info.name, "sync call timed out; restarting the worker to stop it");
            session.kill.notify_one();
            "the worker was restarted to stop it (its in-memory state is lost)"
        };
        CallError::Timeout { method: info.name.clone(), seconds: limit.as_secs_f64(), action }
    }
}

fn unavailable_reason(phase: &Phase) -> String {
    match phase {
        Phase::Starting => "the environment is still loading".into(),
        Phase::Ready => "the worker is between sessions".into(),
        Phase::Restarting(why) => format!("the worker is restarting: {why}"),
        Phase::Failed(error) => format!("the environment failed to load: {}: {}", error.kind, error.message),
    }
}

/// The restart loop: start, wait for ready, serve until death or kill, back off, repeat.
async fn restart_loop(config: WorkerConfig, shared: std::sync::Weak<Shared>) {
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
            RunEnd::Killed => {
                backoff = BACKOFF_START;
                strong.phase.send_replace(Phase::Restarting("a sync call timed out".into()));
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

enum RunEnd {
    LoadFailed(ErrorInfo),
    Exited(String),
    Killed,
    Stopped,
}

async fn run_once(config: &WorkerConfig, shared: &Shared, ever_ready: &mut bool) -> RunEnd {
    let mut child = match spawn(config) {
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
    let end = serve_worker(shared, ever_ready, &mut child).await;
    // Whatever the worker started goes with it, however it ended (serve_worker waited for it).
    reaper::kill_tree(pid, Leader::Reaped).await;
    let _ = child.wait().await;
    reaper::disown(pid);
    end
}


/// Waits for the worker's handshake, then serves calls until it ends or is told to.
async fn serve_worker(shared: &Shared, ever_ready: &mut bool, child: &mut Child) -> RunEnd {
    let pid = child.id();
    let oom_kills_before = oom_kills();
    let describe_status = |status| describe_status(status, oom_kills_before);
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut lines = BufReader::with_capacity(1 << 16, child.stdout.take().expect("stdout is piped"));
    let (methods, method_list) = match read_handshake(&mut lines).await {
        Ok(methods) => methods,
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
    let (outbox, writer, inbox) = match open_channel(stdin, lines) {
        Ok(parts) => parts,
        Err(err) => return RunEnd::Exited(format!("cannot set up the channel to the worker: {err}")),
    };
    let session = Arc::new(Session { outbox, inbox, pending: Mutex::new(HashMap::new()), methods, method_list, kill: Notify::new() });
    let writer = tokio::spawn(writer);
    let reader = tokio::spawn({
        let session = session.clone();
        async move { session.inbox.run(|line| session.on_message(line)).await }
    });
    *shared.session.write() = Some(session.clone());
    *ever_ready = true;
    shared.phase.send_replace(Phase::Ready);

    let end = tokio::select! {
        status = child.wait() => RunEnd::Exited(format!("the worker exited: {}", describe_status(status.ok()))),
        _ = session.kill.notified() => {
            reaper::kill_tree(pid, Leader::Unreaped).await;
            let _ = child.wait().await;
            RunEnd::Killed
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
        RunEnd::Killed => "the worker was restarted because a sync call timed out".to_string(),
        RunEnd::Stopped => "the server is shutting down".to_string(),
        RunEnd::Exited(why) | RunEnd::LoadFailed(ErrorInfo { message: why, .. }) => why.clone(),
    };
    session.fail_pending(&reason);
    end
}

/// Turns the worker's pipes into the two halves of the channel, keeping any bytes the handshake
/// read ahead.
fn open_channel(
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
) -> std::io::Result<(Outbox, impl std::future::Future<Output = ()>, Inbox)> {
    let (outbox, writer) = Outbox::new(stdin.into_owned_fd()?)?;
    let read_ahead = stdout.buffer().to_vec();
    let inbox = Inbox::new(stdout.into_inner().into_owned_fd()?, read_ahead)?;
    Ok((outbox, writer, inbox))
}

fn spawn(config: &WorkerConfig) -> std::io::Result<Child> {
    let mut command = Command::new(&config.python);
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
    command.envs(config.env.iter().map(|(k, v)| (k, v)));
    command.env(SPIN_ENV, config.spin.as_micros().to_string());
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
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) if s.code().is_some() => format!("exit code {}", s.code().unwrap_or_default()),
        Some(s) => match s.signal() {
            Some(libc::SIGKILL) => match (oom_kills_before, oom_kills()) {
                (Some(before), Some(now)) if now > before => "killed by the kernel's OOM killer: out of memory".into(),
                (Some(_), Some(_)) => "killed by SIGKILL from another process (not by the OOM killer)".into(),
                _ => "killed by SIGKILL (out of memory, or by another process)".into(),
            },
            Some(libc::SIGSEGV) => "killed by SIGSEGV (segmentation fault)".into(),
            Some(sig) => format!("killed by signal {sig}"),
            None => "unknown status".into(),
        },
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

type MethodTables = (HashMap<String, MethodEntry>, Vec<MethodInfo>);

async fn read_handshake(lines: &mut BufReader<ChildStdout>) -> Result<MethodTables, ErrorInfo> {
    let mut line = Vec::new();
    let read = lines.read_until(b'\n', &mut line).await;
    let exited = || ErrorInfo {
        kind: "WorkerExited".into(),
        message: "the worker exited before loading the environment".into(),
        traceback: String::new(),
    };
    match read {
        Ok(0) | Err(_) => return Err(exited()),
        Ok(_) => {}
    }
    let reply: WorkerMessage = serde_json::from_slice(&line).map_err(|err| ErrorInfo {
        kind: "ProtocolError".into(),
        message: format!("the worker's first message is not valid: {err}"),
        traceback: String::new(),
    })?;
    if let Some(fatal) = reply.fatal {
        return Err(fatal);
    }
    match (reply.ready, reply.methods) {
        (true, Some(list)) => {
            let map = list.iter().map(|m| (m.name.clone(), MethodEntry { info: m.clone(), last_micros: AtomicU64::new(0) })).collect();
            Ok((map, list))
        }
        _ => Err(exited()),
    }
}

fn null_value() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is valid JSON")
}

fn reply_error(error: CallFailure) -> CallError {
    match error.kind {
        FailureKind::Args | FailureKind::BadRequest => CallError::InvalidArguments(error.message),
        FailureKind::Serialize => CallError::NotSerializable(error.message),
        FailureKind::NotFound => CallError::NotFound { method: error.message, available: String::new() },
        FailureKind::Raised | FailureKind::Unknown => {
            CallError::Raised(ErrorInfo { kind: error.exc_type, message: error.message, traceback: error.traceback })
        }
    }
}
