//! The library's one error type. Each way a call or a start can fail is its own variant, so a
//! training loop can retry a timeout, skip a sample whose environment raised, and stop on bad input.

use crate::protocol::{error_type, ErrorBody};

/// Result of client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when loading or calling an environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment's code raised a Python exception.
    #[error("`{method}` raised {kind}: {message}")]
    Raised {
        /// The method called.
        method: String,
        /// The Python exception's type, e.g. `ValueError`.
        kind: String,
        /// The exception's message.
        message: String,
        /// The Python traceback.
        traceback: String,
    },
    /// No callable method of that name; the message lists the available ones.
    #[error("{detail}")]
    MethodNotFound {
        /// The method asked for.
        method: String,
        /// The server's message.
        detail: String,
    },
    /// The arguments do not fit the method's signature, or are not JSON of the right shape.
    #[error("invalid arguments for `{method}`: {detail}")]
    InvalidArguments {
        /// The method called.
        method: String,
        /// What is wrong.
        detail: String,
    },
    /// The result could not be converted to JSON inside the environment.
    #[error("result of `{method}` cannot be sent: {detail}")]
    NotSerializable {
        /// The method called.
        method: String,
        /// Which type failed.
        detail: String,
    },
    /// The call ran past its timeout; the work was stopped.
    #[error("{detail}")]
    Timeout {
        /// The method called.
        method: String,
        /// The whole message: that the call to the method timed out, and what the server did
        /// about it or that the client gave up waiting.
        detail: String,
    },
    /// The environment is up but not serving (loading, restarting its worker).
    #[error("environment is not ready: {detail}")]
    NotReady {
        /// Why.
        detail: String,
    },
    /// The environment could not be reached at all.
    #[error("cannot reach the environment at {url}: {}", root_cause(.source.as_ref()))]
    Connection {
        /// Where.
        url: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The token was refused.
    #[error("the environment at {url} refused our token (HTTP 401)")]
    Unauthorized {
        /// Where.
        url: String,
    },
    /// The environment did not start; `logs` holds its last output lines.
    #[error("environment `{name}` failed to start: {reason}{}", fmt_logs(.logs))]
    StartFailed {
        /// The environment's name.
        name: String,
        /// Why, e.g. the Python error raised by the `Actor` constructor.
        reason: String,
        /// Last lines the environment wrote to its log.
        logs: Vec<String>,
    },
    /// The environment stopped while in use: its server process exited.
    #[error("environment `{name}` has stopped: {reason}{}", fmt_logs(.logs))]
    Stopped {
        /// The environment's name.
        name: String,
        /// What is known of why.
        reason: String,
        /// Last lines the environment wrote to its log.
        logs: Vec<String>,
    },
    /// The caller passed something unusable (missing folder, bad option, malformed JSON).
    #[error("{0}")]
    InvalidInput(String),
    /// The environment was cleaned up; no further calls are possible.
    #[error("environment `{0}` has been cleaned up")]
    Closed(String),
    /// A blocking call was abandoned because its caller asked (a signal arrived); the call may
    /// still run in the environment.
    #[error("call to `{0}` interrupted")]
    Interrupted(String),
    /// The server answered something that is not the protocol.
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    Protocol {
        /// Where.
        url: String,
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// An OpenEnv session was refused or ended by its server: the server is full
    /// (`CAPACITY_REACHED`), the session's instance is gone (`SESSION_ERROR`), the socket closed.
    /// Open a new session to go on.
    #[error("OpenEnv session at {url}: {code}: {message}")]
    Session {
        /// The server's WebSocket or base URL.
        url: String,
        /// OpenEnv's error code, or `CLOSED` when the socket ended.
        code: String,
        /// What the server said.
        message: String,
    },
    /// A pool has no replica to take a call: every one is being replaced, or none could be
    /// started, until the call's time ran out.
    #[error("pool `{pool}` has no replica serving: {detail}")]
    NoReplica {
        /// The pool's name.
        pool: String,
        /// What its replicas are doing.
        detail: String,
    },
    /// The replica that held an affinity key's state (an episode) is gone; the state went with
    /// it. The key is forgotten, so the next call with it starts afresh on another replica.
    #[error("pool `{pool}`: the replica holding key `{key}` is gone ({reason}); its state is lost")]
    ReplicaLost {
        /// The pool's name.
        pool: String,
        /// The affinity key.
        key: String,
        /// What happened to the replica.
        reason: String,
    },
    /// The result is valid JSON but not of the type asked for.
    #[error("result of `{method}` does not have the expected type: {source}")]
    Decode {
        /// The method called.
        method: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A Docker operation failed; the message names it and quotes the daemon.
    /// Boxed: the engine's errors are large, and every `Result` of the crate carries this type.
    #[error(transparent)]
    Engine(Box<crate::docker::engine::EngineError>),
    /// A container could not be removed: the engine kept refusing, or kept it, for `seconds`.
    #[error("container {id} is still there after {seconds} s of removal attempts{}", .refusal.as_ref().map(|r| format!(" (the engine's last refusal: {r})")).unwrap_or_default())]
    ContainerRemains {
        /// The container's short id.
        id: String,
        /// How long removal was tried.
        seconds: u64,
        /// The engine's last refusal, if it refused (it may also have accepted and not removed).
        #[source]
        refusal: Option<Box<crate::docker::engine::EngineError>>,
    },
    /// An image build failed; `step` is the Dockerfile step that failed, when known.
    #[error("building {tag} failed{}: {message}", .step.as_deref().map(|s| format!(" at {s}")).unwrap_or_default())]
    Build {
        /// The tag being built.
        tag: String,
        /// The failing step, e.g. `Step 3/4 : RUN make`.
        step: Option<String>,
        /// The engine's message, with the step's last output lines.
        message: String,
    },
    /// A local operation failed (spawning the server, reading a file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A timeout message that names the method once, whether or not the server's message does.
pub(crate) fn timeout_detail(method: &str, detail: String) -> String {
    let prefix = format!("call to `{method}` timed out");
    if detail.starts_with(&prefix) {
        detail
    } else {
        format!("{prefix}: {detail}")
    }
}

/// The innermost cause of an error: for a transport error, what actually happened ("Connection
/// refused", "connection closed before message completed") rather than "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn fmt_logs(logs: &[String]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!("\n--- last log lines ---\n{}", logs.join("\n"))
    }
}

impl From<crate::docker::host::BadHost> for Error {
    fn from(err: crate::docker::host::BadHost) -> Error {
        Error::InvalidInput(err.to_string())
    }
}

impl From<crate::docker::engine::EngineError> for Error {
    fn from(err: crate::docker::engine::EngineError) -> Error {
        Error::Engine(Box::new(err))
    }
}

impl Error {
    /// A transport error talking to the server at `url` (the URL is said once, not again inside
    /// the transport error's text).
    pub(crate) fn connection(url: &str, source: reqwest::Error) -> Error {
        Error::Connection { url: url.to_string(), source: Box::new(source.without_url()) }
    }

    /// Whether the error is one of not reaching the server at all (refused, reset, closed).
    pub(crate) fn is_connection(&self) -> bool {
        matches!(self, Error::Connection { .. })
    }

    /// Whether the request surely never reached a server: the connection itself could not be
    /// made (refused, no route, nothing listening). A reset or close after connecting is not:
    /// the call may have run. Only such calls may be retried elsewhere without the caller's say.
    pub(crate) fn never_reached(&self) -> bool {
        let Error::Connection { source, .. } = self else { return false };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(err) = cause {
            if let Some(http) = err.downcast_ref::<reqwest::Error>() {
                if http.is_connect() {
                    return true;
                }
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                // The blocking client's connect; an unreachable host is not trusted: Linux can
                // report it on a socket that had already sent the request.
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return true;
                }
            }
            cause = err.source();
        }
        false
    }

    /// Builds the error for a non-200 answer to a call.
    pub(crate) fn from_answer(method: &str, url: &str, status: u16, body: &[u8]) -> Error {
        let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
            let text = String::from_utf8_lossy(body);
            let detail = text.chars().take(300).collect::<String>();
            return match status {
                401 => Error::Unauthorized { url: url.to_string() },
                404 => Error::MethodNotFound { method: method.to_string(), detail: format!("no method named `{method}` ({detail})") },
                _ => Error::Protocol { url: url.to_string(), status, detail },
            };
        };
        let method = method.to_string();
        let info = parsed.error;
        let kind = info.as_ref().map(|i| i.kind.as_str()).unwrap_or_default();
        let detail = info.as_ref().map(|i| i.message.clone()).unwrap_or_else(|| parsed.detail.clone());
        match (status, kind) {
            (401, _) => Error::Unauthorized { url: url.to_string() },
            (404, _) => Error::MethodNotFound { method, detail },
            (400 | 413 | 422, _) => Error::InvalidArguments { method, detail },
            (504, _) | (_, error_type::TIMEOUT) => Error::Timeout { detail: timeout_detail(&method, detail), method },
            (503, _) => Error::NotReady { detail },
            (_, error_type::NOT_SERIALIZABLE) => Error::NotSerializable { method, detail },
            (500, _) => match info {
                Some(info) => Error::Raised { method, kind: info.kind, message: info.message, traceback: info.traceback },
                None => Error::Raised { method, kind: "Exception".into(), message: parsed.detail, traceback: String::new() },
            },
            _ => Error::Protocol { url: url.to_string(), status, detail },
        }
    }

    /// Builds the error for a non-2xx answer of an HTTP-based environment, whose error bodies
    /// follow no fixed shape (FastAPI's `{"detail": ...}`, Flask's HTML, plain text).
    pub(crate) fn from_http_answer(verb: &str, method: &str, url: &str, status: u16, body: &[u8]) -> Error {
        let detail = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) if map.contains_key("detail") => match &map["detail"] {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            },
            Ok(value) => value.to_string(),
            Err(_) => String::from_utf8_lossy(body).chars().take(500).collect(),
        };
        let method = method.to_string();
        match status {
            401 | 403 => Error::Unauthorized { url: url.to_string() },
            404 | 405 => Error::MethodNotFound { detail: format!("the server has no `{verb} /{method}` (HTTP {status}): {detail}"), method },
            400 | 413 | 422 => Error::InvalidArguments { method, detail },
            503 => Error::NotReady { detail },
            504 => Error::Timeout { detail: timeout_detail(&method, detail), method },
            500..=599 => Error::Raised { method, kind: format!("HTTP {status}"), message: detail, traceback: String::new() },
            _ => Error::Protocol { url: url.to_string(), status, detail },
        }
    }

    /// Whether the environment's own code failed (as opposed to the runner or the caller).
    pub fn is_raised(&self) -> bool {
        matches!(self, Error::Raised { .. })
    }
}
