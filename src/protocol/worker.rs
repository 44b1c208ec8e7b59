//! The server↔worker wire: one JSON object per line each way, over the worker's stdin and stdout.
//! `src/server/worker/worker.py` is the other half; both follow the shapes written here, once.
//!
//! ```text
//! server -> worker   {"id": N, "method": "...", "args": [...], "kwargs": {...}}   a call; the id first
//!                        optional after those: "instance": K (run on session instance K, not the
//!                        default instance 0), "lenient": true (drop kwargs the signature does not
//!                        take), "action": <json> (OpenEnv's step action: passed as `action=` when
//!                        the method has that parameter, else its members merged into the kwargs)
//!                    {"id": N, "open": K}                           create session instance K (`Actor()`)
//!                    {"id": N, "close": K}                          drop instance K, calling its `close()`
//!                    {"cancel": N}                                              cancel an async call
//! worker -> server   {"ready": true, "methods": [MethodInfo...], "env": EnvInfo}   once, after env.py loaded
//!                    {"fatal": ErrorInfo}                          loading failed; the worker exits
//!                    {"id": N, "result": <json>}                   a call returned
//!                    {"id": N, "error": {"kind", "type", "message", "traceback"}}   a call failed
//! ```
//!
//! A call is written with its id as the first member, so that the worker can still answer a call
//! whose arguments it cannot decode (a number no float holds): it reads the id from the
//! `{"id":N,` prefix.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ErrorInfo, MethodInfo};

/// A call line: `{"id":N,"method":...,"args":...,"kwargs":...}` and a newline. `args` and
/// `kwargs` are raw JSON (an array and an object), passed on as the client sent them.
pub fn encode_call(id: u64, method: &str, args: &str, kwargs: &str) -> Vec<u8> {
    let method = serde_json::to_string(method).expect("a string always serializes");
    let mut line = Vec::with_capacity(40 + method.len() + args.len() + kwargs.len());
    line.extend_from_slice(format!("{{\"id\":{id},\"method\":{method},\"args\":").as_bytes());
    line.extend_from_slice(args.as_bytes());
    line.extend_from_slice(b",\"kwargs\":");
    line.extend_from_slice(kwargs.as_bytes());
    line.extend_from_slice(b"}\n");
    line
}

/// The optional parts of a call line, for calls made on behalf of an OpenEnv session.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions<'a> {
    /// The session instance to run on; `None` is the default instance 0.
    pub instance: Option<u64>,
    /// Drop keyword arguments the method's signature does not take (OpenEnv passes a request's
    /// extra fields only to methods that accept them).
    pub lenient: bool,
    /// OpenEnv's step action, raw JSON.
    pub action: Option<&'a str>,
}

/// A call line with [`CallOptions`]: the id still first, the options after the standard fields.
pub fn encode_call_with(id: u64, method: &str, args: &str, kwargs: &str, options: &CallOptions<'_>) -> Vec<u8> {
    let mut line = encode_call(id, method, args, kwargs);
    if options.instance.is_none() && !options.lenient && options.action.is_none() {
        return line;
    }
    line.truncate(line.len() - 2); // the closing brace and the newline
    if let Some(instance) = options.instance {
        line.extend_from_slice(format!(",\"instance\":{instance}").as_bytes());
    }
    if options.lenient {
        line.extend_from_slice(b",\"lenient\":true");
    }
    if let Some(action) = options.action {
        line.extend_from_slice(b",\"action\":");
        line.extend_from_slice(action.as_bytes());
    }
    line.extend_from_slice(b"}\n");
    line
}

/// Marks a call line as sent while other calls were in flight (`"concurrent":true`): the worker
/// then does not poll for the next message after answering it. Polling wins the wake-up of a
/// caller's next call when calls come one at a time; under load the next one is already there,
/// and a core spent polling is one the server and the callers lack.
pub fn mark_concurrent(line: &mut Vec<u8>) {
    debug_assert!(line.ends_with(b"}\n"), "a call line ends with its closing brace and a newline");
    line.truncate(line.len() - 2);
    line.extend_from_slice(b",\"concurrent\":true}\n");
}

/// An open line: `{"id":N,"open":K}`, asking for session instance K.
pub fn encode_open(id: u64, instance: u64) -> Vec<u8> {
    format!("{{\"id\":{id},\"open\":{instance}}}\n").into_bytes()
}

/// A close line: `{"id":N,"close":K}`, dropping session instance K.
pub fn encode_close(id: u64, instance: u64) -> Vec<u8> {
    format!("{{\"id\":{id},\"close\":{instance}}}\n").into_bytes()
}

/// A cancel line: `{"cancel":N}` and a newline.
pub fn encode_cancel(id: u64) -> Vec<u8> {
    format!("{{\"cancel\":{id}}}\n").into_bytes()
}

/// Any message from the worker; which fields are set says which one it is. `result` stays raw.
#[derive(Debug, Deserialize)]
pub struct WorkerMessage<'a> {
    /// The call this answers.
    pub id: Option<u64>,
    /// The call's result.
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    /// Why the call failed.
    #[serde(default)]
    pub error: Option<CallFailure>,
    /// The handshake: env.py loaded.
    #[serde(default)]
    pub ready: bool,
    /// With `ready`: the callable methods.
    #[serde(default)]
    pub methods: Option<Vec<MethodInfo>>,
    /// With `ready`: what the environment says of itself.
    #[serde(default)]
    pub env: Option<EnvInfo>,
    /// Loading env.py failed.
    #[serde(default)]
    pub fatal: Option<ErrorInfo>,
    /// With `ready`: the interpreter and its environment at start ([`WorkerInterpreter`]), raw
    /// so that one the server cannot read never fails the handshake.
    #[serde(borrow, default)]
    pub interpreter: Option<&'a RawValue>,
}

/// What the worker says of the interpreter it runs on, before env.py is imported (which may
/// change its own variables).
#[derive(Debug, Deserialize)]
pub struct WorkerInterpreter {
    /// `sys.executable`.
    pub executable: String,
    /// `os.environ` as the process started.
    pub environ: std::collections::BTreeMap<String, String>,
    /// Its resource limits; missing from a worker that does not say.
    #[serde(default)]
    pub limits: Option<Vec<ResourceLimit>>,
}

/// One resource limit of a process: `(resource, soft, hard)`, the resource by its C constant's
/// number (`RLIMIT_NOFILE` is 7 on Linux), `None` for unlimited.
pub type ResourceLimit = (i32, Option<u64>, Option<u64>);

/// What the worker's handshake says of the environment as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvInfo {
    /// Its name: the Actor's `name`, the module's `NAME`, or the folder's name.
    #[serde(default)]
    pub name: String,
    /// The module's docstring, or the Actor's.
    #[serde(default)]
    pub doc: String,
    /// Whether env.py has an `Actor` class, so that each session can get an instance of its own.
    #[serde(default)]
    pub factory: bool,
}

/// Why a call failed, as the worker says it.
#[derive(Debug, Deserialize)]
pub struct CallFailure {
    /// Whose fault, and so which HTTP status.
    pub kind: FailureKind,
    /// The Python exception's type name.
    #[serde(rename = "type")]
    pub exc_type: String,
    /// Its message.
    pub message: String,
    /// Its traceback, for `raised`.
    #[serde(default)]
    pub traceback: String,
}

/// The `kind` of a [`CallFailure`]; worker.py writes these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The arguments do not bind to the signature.
    Args,
    /// The result is not JSON-serializable.
    Serialize,
    /// No such method.
    NotFound,
    /// The call line could not be decoded.
    BadRequest,
    /// The method raised.
    Raised,
    /// The call named a session instance the worker does not hold (closed, or lost with a
    /// previous worker process).
    NoInstance,
    /// A kind this server does not know (a newer worker): treated as `raised`.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_line_starts_with_its_id_and_is_json() {
        let line = encode_call(42, "say \"hi\"", "[1]", r#"{"b":2}"#);
        assert!(line.starts_with(b"{\"id\":42,"));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value, serde_json::json!({"id": 42, "method": "say \"hi\"", "args": [1], "kwargs": {"b": 2}}));
        assert_eq!(encode_cancel(7), b"{\"cancel\":7}\n");
        assert_eq!(encode_open(3, 9), b"{\"id\":3,\"open\":9}\n");
        assert_eq!(encode_close(4, 9), b"{\"id\":4,\"close\":9}\n");
    }

    #[test]
    fn call_options_follow_the_standard_fields_and_plain_calls_are_unchanged() {
        let plain = encode_call_with(1, "m", "[]", "{}", &CallOptions::default());
        assert_eq!(plain, encode_call(1, "m", "[]", "{}"));
        let options = CallOptions { instance: Some(5), lenient: true, action: Some(r#"{"message":"hi"}"#) };
        let line = encode_call_with(2, "step", "[]", r#"{"a":1}"#, &options);
        assert!(line.starts_with(b"{\"id\":2,") && line.ends_with(b"}\n"));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"id": 2, "method": "step", "args": [], "kwargs": {"a": 1}, "instance": 5, "lenient": true, "action": {"message": "hi"}})
        );
    }

    #[test]
    fn a_concurrent_call_line_stays_json_with_its_options() {
        let options = CallOptions { instance: Some(3), ..CallOptions::default() };
        let mut line = encode_call_with(7, "m", "[]", "{}", &options);
        mark_concurrent(&mut line);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!((value["id"].as_u64(), value["instance"].as_u64(), value["concurrent"].as_bool()), (Some(7), Some(3), Some(true)));
        assert!(line.ends_with(b"}\n"));
    }

    #[test]
    fn failure_kinds_read_the_names_the_worker_writes() {
        let message: WorkerMessage = serde_json::from_str(r#"{"id":1,"error":{"kind":"not_found","type":"MethodNotFound","message":"m"}}"#).unwrap();
        assert_eq!(message.error.unwrap().kind, FailureKind::NotFound);
        let message: WorkerMessage = serde_json::from_str(r#"{"id":1,"error":{"kind":"new_kind","type":"X","message":"m"}}"#).unwrap();
        assert_eq!(message.error.unwrap().kind, FailureKind::Unknown);
    }
}
