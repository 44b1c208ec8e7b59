//! The server↔worker wire: one JSON object per line each way, over the worker's stdin and stdout.
//! `src/server/worker/worker.py` is the other half; both follow the shapes written here, once.
//!
//! ```text
//! server -> worker   {"id": N, "method": "...", "args": [...], "kwargs": {...}}   a call; the id first
//!                    {"cancel": N}                                              cancel an async call
//! worker -> server   {"ready": true, "methods": [MethodInfo...]}   once, after env.py loaded
//!                    {"fatal": ErrorInfo}                          loading failed; the worker exits
//!                    {"id": N, "result": <json>}                   a call returned
//!                    {"id": N, "error": {"kind", "type", "message", "traceback"}}   a call failed
//! ```
//!
//! A call is written with its id as the first member, so that the worker can still answer a call
//! whose arguments it cannot decode (a number no float holds): it reads the id from the
//! `{"id":N,` prefix.

use serde::Deserialize;
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
    /// Loading env.py failed.
    #[serde(default)]
    pub fatal: Option<ErrorInfo>,
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
    }

    #[test]
    fn failure_kinds_read_the_names_the_worker_writes() {
        let message: WorkerMessage = serde_json::from_str(r#"{"id":1,"error":{"kind":"not_found","type":"MethodNotFound","message":"m"}}"#).unwrap();
        assert_eq!(message.error.unwrap().kind, FailureKind::NotFound);
        let message: WorkerMessage = serde_json::from_str(r#"{"id":1,"error":{"kind":"new_kind","type":"X","message":"m"}}"#).unwrap();
        assert_eq!(message.error.unwrap().kind, FailureKind::Unknown);
    }
}
