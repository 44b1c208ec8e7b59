//! [`ServerConfig`]: the settings of `rayfine serve` / `rayfine-server`, from flags or
//! environment variables, and [`ServeError`], what stops a server from starting.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;

use super::placement::CpuPlacement;
use super::{WorkerPriority, DEFAULT_SPIN_US};

/// Settings of `rayfine serve` / `rayfine-server`, from flags or environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "RAYFINE_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (announced on stdout).
    #[arg(long, env = "RAYFINE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// The environment: env.py or the folder holding it.
    #[arg(long = "env-path", env = "RAYFINE_ENV_PATH", default_value = "/app/env.py")]
    pub env_path: PathBuf,
    /// Python interpreter that runs the worker.
    #[arg(long, env = "RAYFINE_PYTHON", default_value = "python3")]
    pub python: String,
    /// Worker script to run instead of the embedded copy.
    #[arg(long = "worker-script", env = "RAYFINE_WORKER_SCRIPT")]
    pub worker_script: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    #[arg(long = "max-body-bytes", env = "RAYFINE_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Timeout, in seconds, for calls whose request names none; unset means no limit.
    #[arg(long = "call-timeout", env = "RAYFINE_CALL_TIMEOUT")]
    pub call_timeout: Option<f64>,
    /// How long in-flight calls may finish after SIGTERM or SIGINT, in seconds.
    #[arg(long = "shutdown-grace", env = "RAYFINE_SHUTDOWN_GRACE", default_value_t = 5.0)]
    pub shutdown_grace: f64,
    /// Exit when stdin reaches end of file: a parent that dies, even by SIGKILL, takes us along.
    #[arg(long = "exit-on-stdin-eof", env = "RAYFINE_EXIT_ON_STDIN_EOF", value_parser = FalseyValueParser::new())]
    pub exit_on_stdin_eof: bool,
    /// Stop when no lease renewal arrives for this many seconds once ready (`POST
    /// /_rayfine/lease` or any authenticated request); unset or 0: no lease.
    #[arg(long, env = "RAYFINE_LEASE")]
    pub lease: Option<f64>,
    /// How long a request body may take to arrive, in seconds.
    #[arg(long = "body-timeout", env = "RAYFINE_BODY_TIMEOUT", default_value_t = 60.0)]
    pub body_timeout: f64,
    /// How long, in microseconds, the server polls for the reply of a call that is alone in
    /// flight, and the worker for the next call, before they sleep. Polling saves the cost of a
    /// wake-up (tens of microseconds on a VM) at the price of that much CPU time; 0 turns it off,
    /// and so does running on a single core.
    #[arg(long = "spin-us", env = "RAYFINE_SPIN_US", default_value_t = DEFAULT_SPIN_US)]
    pub spin_us: u64,
    /// OpenEnv sessions (WebSocket or MCP) at once, each with an Actor instance of its own; one
    /// more is refused with OpenEnv's `CAPACITY_REACHED`. The name of the variable is OpenEnv's.
    #[arg(long = "max-concurrent-envs", env = "MAX_CONCURRENT_ENVS", default_value_t = DEFAULT_MAX_SESSIONS)]
    pub max_concurrent_envs: usize,
    /// Seconds an OpenEnv session may go without a word from its client (the server pings
    /// WebSocket clients, so a live one always answers) before it is ended and its slot freed.
    #[arg(long = "session-idle-timeout", env = "RAYFINE_SESSION_IDLE_TIMEOUT", default_value_t = 120.0)]
    pub session_idle_timeout: f64,
    /// Serve without a token even if RAYFINE_TOKEN is set (for servers meant to be public).
    #[arg(long = "no-auth", env = "RAYFINE_NO_AUTH", value_parser = FalseyValueParser::new())]
    pub no_auth: bool,
    /// The worker's CPU priority, inherited by all it starts: `idle` (SCHED_IDLE, nice 19) keeps
    /// this server answering, timing calls out and killing what runs away even under a fork bomb.
    /// Default: `idle` as PID 1 (in a container, where it only ranks the environment below this
    /// server), else `normal`.
    #[arg(long = "worker-priority", env = "RAYFINE_WORKER_PRIORITY", value_enum)]
    pub worker_priority: Option<WorkerPriority>,
    /// Where the server and the worker run: `shared` (the kernel places both) or `split` (the
    /// worker on a core of its own, the server's threads on the others), with two cores or more.
    #[arg(long = "cpu-placement", env = "RAYFINE_CPU_PLACEMENT", value_enum, default_value_t = CpuPlacement::Shared)]
    pub cpu_placement: CpuPlacement,
    /// Serve nothing: wait until stdin ends and the process PID:START is gone, then remove the
    /// containers it left (see `rayfine::watchdog`). Started by the client, not by hand.
    #[arg(long = "watch-owner", value_name = "PID:START", hide = true)]
    pub watch_owner: Option<crate::watchdog::Owner>,
    /// With --watch-owner: the engine to clean up (`unix://` or `tcp://`); default `DOCKER_HOST`,
    /// else the default socket.
    #[arg(long = "watch-engine", value_name = "URL", hide = true, requires = "watch_owner")]
    pub watch_engine: Option<String>,
    /// A JSON file with the token and the environment's variables (the client copies it into the
    /// container so that `docker inspect` shows neither).
    #[arg(long = "secrets-file", env = crate::protocol::SECRETS_FILE_ENV)]
    pub secrets_file: Option<PathBuf>,
    /// The token and the variables come as one JSON line on stdin, before anything else (the
    /// client writes it into the container's attach connection). Needs --exit-on-stdin-eof: the
    /// same stdin then tells when the owner is gone.
    #[arg(long = "secrets-stdin", env = crate::protocol::SECRETS_STDIN_ENV, value_parser = FalseyValueParser::new(), conflicts_with = "secrets_file")]
    pub secrets_stdin: bool,
    /// Say in the `ready` event which interpreter the worker runs on and what its wrapper set,
    /// for a parent on this machine that starts the same environment again (process mode). Not
    /// for a container, whose stdout is its log.
    #[arg(long = "announce-interpreter", env = crate::protocol::ANNOUNCE_INTERPRETER_ENV, value_parser = FalseyValueParser::new(), hide = true)]
    pub announce_interpreter: bool,
    /// Print a `worker` event with the pid of each worker started, for a parent on this machine
    /// that kills the worker's process group if this server dies first (process mode).
    #[arg(long = "announce-workers", env = crate::protocol::ANNOUNCE_WORKERS_ENV, value_parser = FalseyValueParser::new(), hide = true)]
    pub announce_workers: bool,
    /// With --supervise and a lease: the port on which lease renewals are taken (the supervised
    /// server owns the container's other port).
    #[arg(long = "lease-port", env = "RAYFINE_LEASE_PORT", default_value_t = SUPERVISOR_LEASE_PORT)]
    pub lease_port: u16,
    /// With --supervise and a lease: seconds after which the lease clock starts even if no
    /// renewal came (the owner's start-up timeout; it renews as soon as it sees the server ready).
    #[arg(long = "lease-start-grace", env = "RAYFINE_LEASE_START_GRACE", default_value_t = 120.0)]
    pub lease_start_grace: f64,
}

/// Default of `--max-concurrent-envs`: OpenEnv's default is 1, which makes a server useless for
/// the many parallel episodes of a training run; each session costs an Actor instance and, while
/// a sync call runs, a thread.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;

/// Default of `--lease-port`: where a supervisor takes lease renewals, out of the way of the
/// ports web servers usually take.
pub const SUPERVISOR_LEASE_PORT: u16 = 48_771;

/// How long an Actor's constructor, or its `close()`, may take for a session.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A flag has a value the server cannot use.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The command to supervise could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The embedded worker script could not be written to an in-memory file.
    #[error("cannot write the worker script to {path}: {source}")]
    WorkerScript {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// The owner watchdog failed.
    #[error(transparent)]
    Watchdog(#[from] crate::watchdog::WatchdogError),
}

impl ServerConfig {
    /// `--lease` as a duration: `None` when unset or 0, an error when not a number of seconds.
    pub fn lease_duration(&self) -> Result<Option<Duration>, ServeError> {
        match self.lease {
            None | Some(0.0) => Ok(None),
            Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(ServeError::Config(format!("--lease must be a positive number of seconds (or 0 for none), not {s}"))),
        }
    }

    /// The OpenEnv session limits from `--max-concurrent-envs` and `--session-idle-timeout`.
    pub fn session_limits(&self) -> Result<crate::server::openenv::SessionLimits, ServeError> {
        if self.max_concurrent_envs == 0 {
            return Err(ServeError::Config("--max-concurrent-envs must be at least 1".into()));
        }
        let idle_timeout = match self.session_idle_timeout {
            s if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
            s => return Err(ServeError::Config(format!("--session-idle-timeout must be a positive number of seconds, not {s}"))),
        };
        Ok(crate::server::openenv::SessionLimits { max_sessions: self.max_concurrent_envs, idle_timeout, setup_timeout: SESSION_SETUP_TIMEOUT })
    }

    /// `--shutdown-grace` as a duration, bounded to an hour.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace.clamp(0.0, 3600.0))
    }
}

