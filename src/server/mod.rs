//! The in-container server: loads an environment through a Python worker and serves `/call`.
//!
//! It is the same program in every mode: PID 1 of a Docker container, a child process of the
//! client in process mode, or started by hand. [`run`] takes its listener and its shutdown trigger
//! from the caller, so tests can start it on any socket and stop it with anything.

mod app;
mod calls;
mod config;
mod error;
mod guarded_command;
mod lease;
mod owner_stdin;
mod placement;
pub mod openenv;
mod reaper;
mod secrets;
mod state;
mod worker;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

pub use app::{app, AppState};
pub use config::{ServeError, ServerConfig, SUPERVISOR_LEASE_PORT};
pub use error::ApiError;
pub use placement::CpuPlacement;
pub use lease::{Lease, LEASE_PATH};
pub use guarded_command::supervise;
pub use worker::{CallError, Phase, Worker, WorkerConfig, WorkerPriority, WORKER_SCRIPT};
use worker::ScriptFile;

use crate::protocol::{Secrets, ServerEvent, TOKEN_ENV};

/// Default of `--spin-us`: a little longer than an HTTP round trip on loopback, so a client
/// that calls again right away finds the worker still polling.
pub const DEFAULT_SPIN_US: u64 = 200;

/// Whether the worker runs at the lowest CPU priority: by default, only as PID 1. The kernel
/// shares a CPU by weight among runnable threads: under a fork bomb of 4,000 processes at the
/// server's own priority, the server got one time slice every ~10 s and could neither answer nor
/// time the call out. As `SCHED_IDLE` at nice 19, the environment's processes weigh almost nothing
/// against the server, and the server preempts them as soon as it wakes. In a container the
/// weights only divide the container's own share of the machine, and the server is idle while the
/// environment works, so this costs the environment nothing; outside one it would starve the
/// environment behind every other program, so it is off.
fn worker_priority(configured: Option<WorkerPriority>) -> WorkerPriority {
    configured.unwrap_or(if std::process::id() == 1 { WorkerPriority::Idle } else { WorkerPriority::Normal })
}

/// Polling longer than this would only burn CPU: a wake-up costs far less.
const MAX_SPIN_US: u64 = 10_000;

/// The polling time to use: none with fewer than two cores (a CPU limit, an affinity mask),
/// where the poller would only keep the thread it waits for off the one core.
fn effective_spin(spin_us: u64) -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 && spin_us > 0 {
        tracing::debug!("one core available: not polling");
        return Duration::ZERO;
    }
    Duration::from_micros(spin_us.min(MAX_SPIN_US))
}

/// The accept queue's length (the kernel caps it at `net.core.somaxconn`). A training run may
/// open thousands of connections at once; with tokio's default of 1,024, the SYNs of the rest
/// would be dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` (host:port, the host a name or an address) with a deep accept queue.
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let socket = if candidate.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing")))
}

/// Runs the server from its configuration until SIGINT, SIGTERM or (if asked) stdin's end.
pub async fn serve(config: ServerConfig) -> Result<(), ServeError> {
    if let Some(owner) = config.watch_owner {
        let engine = config.watch_engine.clone();
        let watched = tokio::task::spawn_blocking(move || crate::watchdog::run(owner, engine)).await;
        return watched.map_err(|err| ServeError::Config(format!("the watchdog stopped: {err}")))?.map(drop).map_err(Into::into);
    }
    // The secrets come first: a port that accepts connections tells a readiness probe the server
    // is up, and one that is to serve with a token must not look up before it has the token.
    let (first_line, stdin_closed) = watch_owner_stdin(&config)?;
    let secrets = secrets::load(&config, first_line).await?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = listen(&addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    reaper::start();
    let shutdown = async move {
        match stdin_closed {
            Some(closed) => tokio::select! {
                _ = shutdown_signal() => {}
                _ = closed => tracing::info!("stdin closed: the parent is gone; shutting down"),
            },
            None => shutdown_signal().await,
        }
    };
    run(config, secrets, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` completes, then gives in-flight calls the configured grace.
/// Crate-private: `secrets` are what [`serve`] read from the owner, checked there.
pub(crate) async fn run(
    config: ServerConfig,
    secrets: Secrets,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local: SocketAddr = listener.local_addr()?;
    let script = ScriptFile::prepare(config.worker_script.as_ref())?;
    let default_timeout = match config.call_timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(ServeError::Config(format!("--call-timeout must be a positive number of seconds, not {s}"))),
    };
    let lease = config.lease_duration()?.map(Lease::new);
    let body_timeout = match config.body_timeout {
        s if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
        s => return Err(ServeError::Config(format!("--body-timeout must be a positive number of seconds, not {s}"))),
    };
    let session_limits = config.session_limits()?;
    let token = secrets.token.or_else(|| std::env::var(TOKEN_ENV).ok()).filter(|t| !t.is_empty() && !config.no_auth).map(Arc::<str>::from);
    if token.is_none() {
        tracing::warn!("authentication is off: anyone who reaches port {} can call this environment", local.port());
    }
    // Polling is decided for the CPUs this process has before the worker takes one of them away.
    let spin = effective_spin(config.spin_us);
    let worker_cpu = placement::apply(config.cpu_placement)?;
    let worker = Worker::start(WorkerConfig {
        python: config.python.clone(),
        script: script.path(),
        script_fd: script.inherited_fd(),
        // The worker runs in the environment's folder, so a relative path would resolve twice.
        env_path: std::path::absolute(&config.env_path).unwrap_or_else(|_| config.env_path.clone()),
        // The server's own hand-over settings: an environment that starts a Rayfine server of its own
        // must not pass them on to it (one waiting for a secrets line nobody writes).
        hidden_env: [TOKEN_ENV, crate::protocol::SECRETS_FILE_ENV, crate::protocol::SECRETS_STDIN_ENV, crate::protocol::ANNOUNCE_INTERPRETER_ENV, crate::protocol::ANNOUNCE_WORKERS_ENV]
            .map(String::from)
            .to_vec(),
        env: worker_env(secrets.env.into_iter().collect(), session_limits.max_sessions),
        spin,
        priority: worker_priority(config.worker_priority),
        cpu: worker_cpu,
        announce_pids: config.announce_workers,
    });
    announce(&ServerEvent::Listening { port: local.port() });
    tokio::spawn(announce_phases(worker.clone(), config.announce_interpreter));
    tracing::info!("listening on {local}, loading {}", config.env_path.display());

    let lapsed: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match &lease {
        Some(lease) => {
            tracing::info!("lease of {:?}: stopping if not renewed", lease.duration());
            Box::pin(lease.clone().lapsed(worker.clone()))
        }
        None => Box::pin(std::future::pending()),
    };
    let openenv = openenv::Sessions::new(session_limits, worker.clone());
    let router = app(AppState { worker: worker.clone(), token, default_timeout, max_body_bytes: config.max_body_bytes, body_timeout, lease, openenv });
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => result?,
        _ = lapsed => {
            tracing::warn!("the lease lapsed: no renewal from the owner, which is gone or frozen; shutting down");
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut server).await;
        }
        _ = shutdown => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(());
            let grace = config.shutdown_grace();
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!("calls still in flight after {grace:?}; stopping anyway");
            }
        }
    }
    worker.stop().await;
    drop(script);
    Ok(())
}

/// The worker's variables: `env`, plus a sync thread pool large enough that every OpenEnv session
/// can have a sync call running at once (a session waits for its own calls only), unless the
/// environment sets the pool's size itself.
fn worker_env(mut env: Vec<(String, String)>, max_sessions: usize) -> Vec<(String, String)> {
    const THREADS_ENV: &str = "RAYFINE_MAX_SYNC_THREADS";
    let set = std::env::var_os(THREADS_ENV).is_some() || env.iter().any(|(key, _)| key == THREADS_ENV);
    if !set {
        env.push((THREADS_ENV.to_string(), (max_sessions + 64).max(512).to_string()));
    }
    env
}

/// Prints one event line on stdout for a parent process to read.
pub(crate) fn announce(event: &ServerEvent) {
    let line = serde_json::to_string(event).expect("events always serialize");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn announce_phases(worker: Worker, with_interpreter: bool) {
    let mut phases = worker.subscribe();
    let mut announced_ready = false;
    loop {
        let phase = phases.borrow_and_update().clone();
        match phase {
            Phase::Ready if !announced_ready => {
                announced_ready = true;
                tracing::info!("environment ready");
                announce(&ServerEvent::Ready { interpreter: worker.interpreter().filter(|_| with_interpreter) });
            }
            Phase::Failed(error) => {
                announce(&ServerEvent::Failed { error });
                return;
            }
            _ => {}
        }
        if phases.changed().await.is_err() {
            return;
        }
    }
}

/// Completes on SIGINT or SIGTERM: `docker stop` sends SIGTERM to PID 1.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// Sends `signal` to the process group that `leader` (a child started in a group of its own)
/// leads: the child and everything it started. Nothing happens once the group is empty.
pub(crate) fn signal_group(leader: Option<u32>, signal: libc::c_int) {
    if let Some(group) = leader.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        // SAFETY: kill() with a negative pid signals a process group; it touches no memory.
        unsafe { libc::kill(-group, signal) };
    }
}

/// Reads the owner's stdin when told to (`--exit-on-stdin-eof`): returns the reader of the
/// secrets line (with `--secrets-stdin`) and what completes when stdin ends.
pub(crate) fn watch_owner_stdin(config: &ServerConfig) -> Result<(Option<owner_stdin::FirstLine>, Option<tokio::sync::oneshot::Receiver<()>>), ServeError> {
    if config.secrets_stdin && !config.exit_on_stdin_eof {
        return Err(ServeError::Config("--secrets-stdin needs --exit-on-stdin-eof: the stdin that carries the secrets is the owner's".into()));
    }
    if !config.exit_on_stdin_eof {
        return Ok((None, None));
    }
    let watch = owner_stdin::watch(config.secrets_stdin)?;
    Ok((watch.first_line, Some(watch.closed)))
}

/// Makes a panic on any thread end the process, after its message and location are logged. A
/// panicking task would otherwise die alone and leave the server half-alive: a start that hangs
/// to its timeout, calls that are never answered. An exit is seen at once by the owner, with
/// the panic in the last log lines.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("rayfine-server: internal error (the panic above); exiting");
        std::process::exit(70);
    }));
}

/// Sets up logging to stderr (stdout carries only [`ServerEvent`] lines), in colour only on a
/// terminal; `with_time` is off for short-lived CLI commands, where timestamps are noise.
pub fn init_logging(default_filter: &str, with_time: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if with_time { builder.try_init() } else { builder.without_time().try_init() };
}
