//! Wire types of the `/call` protocol, shared by the in-container server and the client.
//!
//! The shapes are those of Rayfine-Env and affinetes, so their Python clients work against our
//! server unchanged, and our client works against theirs:
//!
//! - `POST /call` `{"method", "args"?, "kwargs"?, "timeout"?}` → `{"status": "success", "result"}`
//! - `GET /methods` → `{"methods": [MethodInfo]}`
//! - `GET /health` → `{"status": "ok"}` (200) or `{"status": <state>, "detail", "error"?}` (503)
//! - any error → `{"status": "error", "detail", "error": {"type", "message", "traceback"}}`

pub mod worker;

/// Bytes a WebSocket reads from its socket at a time, on both ends (the server's `/ws`, the
/// OpenEnv client, the bench).
///
/// tungstenite zeroes this much of its buffer before every read, also one that finds nothing,
/// and its default is 128 KiB: at 4,096 OpenEnv sessions that zeroing was 9.8% of the server's
/// CPU (`perf`: `__memset` under `WebSocketStream::poll_next`), for frames of a few hundred bytes.
/// A larger frame is simply read in several pieces.
pub const WS_READ_BUFFER_BYTES: usize = 16 * 1024;

/// A WebSocket client's settings: tungstenite's defaults, reading in `WS_READ_BUFFER_BYTES`.
#[cfg(feature = "client")]
pub fn ws_client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER_BYTES)
}

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Body of `POST /call`.
///
/// `args` and `kwargs` stay raw JSON: the server forwards them to the worker without re-encoding.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// Name of the method to call.
    pub method: String,
    /// Positional arguments; must be a JSON array when present.
    #[serde(default)]
    pub args: Option<Box<RawValue>>,
    /// Keyword arguments; must be a JSON object when present.
    #[serde(default)]
    pub kwargs: Option<Box<RawValue>>,
    /// Per-call timeout in seconds, so clients other than ours can bound a call too.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// Body the client sends to `POST /call`; the owned counterpart of [`CallRequest`].
#[derive(Debug, Serialize)]
pub struct CallRequestBody<'a> {
    /// Name of the method to call.
    pub method: &'a str,
    /// Positional arguments.
    #[serde(skip_serializing_if = "<[serde_json::Value]>::is_empty")]
    pub args: &'a [serde_json::Value],
    /// Keyword arguments.
    pub kwargs: &'a serde_json::Value,
    /// Per-call timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Successful answer of a call: `{"status": "success", "result": ...}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallSuccess<R> {
    /// Always `"success"`.
    pub status: String,
    /// The method's return value, converted to JSON by the worker.
    pub result: R,
}

/// Machine-readable part of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The Python exception's type for errors raised by the environment, else one of
    /// [`error_type`]'s names.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Python traceback when the environment raised, else empty.
    #[serde(default)]
    pub traceback: String,
}

/// Every error answer of the server, whatever its HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `"error"`.
    pub status: String,
    /// One-line message, the field FastAPI-based peers use.
    pub detail: String,
    /// Structured error; absent in answers from servers that only give `detail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Error types the server itself produces (as opposed to Python exception names).
pub mod error_type {
    /// The method does not exist or is not callable.
    pub const METHOD_NOT_FOUND: &str = "MethodNotFound";
    /// The body is not JSON or not of the expected shape.
    pub const BAD_REQUEST: &str = "BadRequest";
    /// The arguments do not bind to the method's signature.
    pub const INVALID_ARGUMENTS: &str = "InvalidArguments";
    /// The result could not be converted to JSON.
    pub const NOT_SERIALIZABLE: &str = "ResultNotSerializable";
    /// The call ran past its timeout.
    pub const TIMEOUT: &str = "Timeout";
    /// The worker is not running (starting, restarting or failed).
    pub const UNAVAILABLE: &str = "WorkerUnavailable";
    /// The body exceeds the configured limit.
    pub const TOO_LARGE: &str = "PayloadTooLarge";
    /// The request body did not arrive in time.
    pub const BODY_TIMEOUT: &str = "BodyTimeout";
    /// Missing or wrong bearer token.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The environment failed to load (e.g. the `Actor` constructor raised).
    pub const LOAD_FAILED: &str = "LoadFailed";
    /// A session's instance is gone: the session was closed, reaped, or lost with a restarted
    /// worker.
    pub const SESSION_LOST: &str = "SessionLost";
}

/// One entry of `GET /methods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Method name.
    pub name: String,
    /// Python signature, e.g. `(x, y=1)`.
    #[serde(default)]
    pub signature: String,
    /// `"Actor"` for methods of the `Actor` class, `"module"` for top-level functions.
    #[serde(default)]
    pub source: String,
    /// RESTful endpoint, `/<name>`.
    #[serde(default)]
    pub endpoint: String,
    /// Docstring, empty when there is none.
    #[serde(default)]
    pub doc: String,
    /// Whether the method is a coroutine function.
    #[serde(default)]
    pub is_async: bool,
    /// JSON Schema of its keyword arguments, from the signature and type hints; what MCP's
    /// `tools/list` and OpenEnv's `/schema` give. Absent from servers older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
}

/// Body of `GET /methods`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodList {
    /// Every callable method.
    pub methods: Vec<MethodInfo>,
}

/// Body of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` when ready; `"starting"`, `"restarting"` or `"failed"` otherwise.
    pub status: String,
    /// Why the environment is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The load error, when the environment failed to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Health states.
pub mod health_status {
    /// Loaded and serving.
    pub const OK: &str = "ok";
    /// Loading `env.py` for the first time.
    pub const STARTING: &str = "starting";
    /// The worker died or was stopped and is being started again.
    pub const RESTARTING: &str = "restarting";
    /// Loading failed; the server will not serve calls.
    pub const FAILED: &str = "failed";
}

/// Lines the server prints on its stdout so that a parent process learns its port and readiness
/// at once instead of polling. Each is one JSON object on one line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The listener is bound.
    Listening {
        /// The bound port (useful when asked for port 0).
        port: u16,
    },
    /// The environment loaded; calls will succeed.
    Ready {
        /// The interpreter the worker runs on, when the server was asked to say
        /// (`--announce-interpreter`): a parent that starts the same environment again can name
        /// it directly and skip what the configured name went through to reach it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interpreter: Option<Interpreter>,
    },
    /// The environment failed to load.
    Failed {
        /// Why.
        error: ErrorInfo,
    },
    /// A worker was started (the first, or one started again), when the parent asked
    /// (`--announce-workers`): a parent that finds the server dead kills the worker's process
    /// group itself, without waiting for the worker to notice.
    Worker {
        /// Its process id, also the id of its process group.
        pid: u32,
        /// When it started, in clock ticks after boot (`/proc/PID/stat`'s 22nd field): with the
        /// pid, names the process even after its pid could have been reused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
    },
}

/// The program that runs the worker, as found from the configured name (`python3`): the
/// interpreter's own path (`sys.executable`), and how the environment differed in it from what
/// its parent passed. A wrapper such as a pyenv shim (a shell script that picks a version and
/// runs `pyenv exec`, 150 ms or more of every start) sets variables (`PATH`, `PYENV_VERSION`)
/// before it runs the interpreter; replaying them with the interpreter's path gives the worker
/// the same interpreter in the same environment without the wrapper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// The interpreter's absolute path.
    pub program: std::path::PathBuf,
    /// Variables the wrapper set or changed, with their values in the worker.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Variables the wrapper removed.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// Header carrying the bearer token.
pub const AUTH_HEADER: &str = "authorization";
/// Environment variable through which the server receives its token.
pub const TOKEN_ENV: &str = "RAYFINE_TOKEN";

/// Path of the lease renewal endpoint; under `/_rayfine/` so it can never shadow an environment's
/// method in `POST /{method}`.
pub const LEASE_PATH: &str = "/_rayfine/lease";

/// Names the file the client copies into a created container with the [`Secrets`]; set in the
/// container's environment, where only the path shows.
pub const SECRETS_FILE_ENV: &str = "RAYFINE_SECRETS_FILE";

/// Where the client puts that file in a container.
pub const SECRETS_PATH: &str = "/rayfine/secrets.json";

/// Set (to `true`) in a container whose server takes the [`Secrets`] as the first line of its
/// stdin, the owner's attach connection, instead of from a copied file: the copy is an engine
/// round trip that mounts the container's file system, tens of milliseconds of every start.
pub const SECRETS_STDIN_ENV: &str = "RAYFINE_SECRETS_STDIN";

/// Set (to `true`) by a local owner that wants the `ready` event to name the worker's
/// [`Interpreter`] (`--announce-interpreter`).
pub const ANNOUNCE_INTERPRETER_ENV: &str = "RAYFINE_ANNOUNCE_INTERPRETER";

/// Set (to `true`) by a local owner that wants a `worker` event for each worker the server
/// starts (`--announce-workers`).
pub const ANNOUNCE_WORKERS_ENV: &str = "RAYFINE_ANNOUNCE_WORKERS";

/// What must not be in a container's configuration, where `docker inspect` shows it to every
/// user of the engine: the token and the environment's variables (API keys). The client writes
/// them as the first line of the container's stdin (an image with `rayfine.reads_secrets_stdin`,
/// started by an owner that holds its stdin) or copies them into the created container as a file
/// (a kept container, an older image); the server reads them at start, keeps the token and
/// passes the variables to the worker (or to the supervised command), never to be seen in
/// `inspect`, `/proc/1/environ` or the server's own environment.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Secrets {
    /// The bearer token the server requires.
    #[serde(default)]
    pub token: Option<String>,
    /// Environment variables for the environment's own code.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// Names only: the values are secrets.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}
