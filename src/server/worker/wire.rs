//! The worker's lines in the server's terms: the handshake that opens a session, the replies that
//! end calls, and the call and cancel lines sent to it.
//!
//! The shapes are [`crate::protocol::worker`]'s, written once for both halves; this file only
//! turns them into what the server works with (method lists, [`Outcome`]s, [`CallError`]s), so
//! that no other part of the server reads or writes the worker's JSON.

use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

use super::outcome::{CallError, Outcome};
use super::channel::{Inbox, Outbox};
pub(super) use crate::protocol::worker::{encode_call_with, encode_cancel, encode_close, encode_open, mark_concurrent, CallOptions};
use crate::protocol::worker::{CallFailure, EnvInfo, FailureKind, WorkerInterpreter, WorkerMessage};
use crate::protocol::{ErrorInfo, MethodInfo};

/// What the worker's first line says when env.py loaded.
pub(super) struct Handshake {
    /// The callable methods.
    pub methods: Vec<MethodInfo>,
    /// What the environment says of itself.
    pub env: EnvInfo,
    /// The interpreter and its variables at start, if the worker said and they could be read.
    pub interpreter: Option<WorkerInterpreter>,
}

/// Reads the worker's first line: the methods of a loaded env.py and what it says of itself, or
/// why loading failed.
pub(super) async fn read_handshake(lines: &mut BufReader<ChildStdout>) -> Result<Handshake, ErrorInfo> {
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
    let interpreter = reply.interpreter.and_then(|raw| serde_json::from_str(raw.get()).ok());
    match (reply.ready, reply.methods) {
        (true, Some(methods)) => Ok(Handshake { methods, env: reply.env.unwrap_or_default(), interpreter }),
        _ => Err(exited()),
    }
}

/// Turns the worker's pipes into the two halves of the channel, keeping any bytes the handshake
/// read ahead.
pub(super) fn open_channel(
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
) -> std::io::Result<(Outbox, impl std::future::Future<Output = ()>, Inbox)> {
    let (outbox, writer) = Outbox::new(stdin.into_owned_fd()?)?;
    let read_ahead = stdout.buffer().to_vec();
    let inbox = Inbox::new(stdout.into_inner().into_owned_fd()?, read_ahead)?;
    Ok((outbox, writer, inbox))
}

/// The call a reply line answers and its outcome; `None` for a line that answers no call.
pub(super) fn read_reply(line: &[u8]) -> Option<(u64, Outcome)> {
    let reply: WorkerMessage = match serde_json::from_slice(line) {
        Ok(reply) => reply,
        Err(err) => {
            tracing::warn!("ignored a malformed message from the worker: {err}");
            return None;
        }
    };
    let id = reply.id?;
    let outcome = match reply.error {
        Some(error) => Err(reply_error(error)),
        None => Ok(reply.result.map(RawValue::to_owned).unwrap_or_else(null_value)),
    };
    Some((id, outcome))
}

fn null_value() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is valid JSON")
}

fn reply_error(error: CallFailure) -> CallError {
    match error.kind {
        FailureKind::Args | FailureKind::BadRequest => CallError::InvalidArguments(error.message),
        FailureKind::Serialize => CallError::NotSerializable(error.message),
        FailureKind::NotFound => CallError::NotFound { method: error.message, available: String::new() },
        FailureKind::NoInstance => CallError::InstanceLost(error.message),
        FailureKind::Raised | FailureKind::Unknown => {
            CallError::Raised(ErrorInfo { kind: error.exc_type, message: error.message, traceback: error.traceback })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_keeps_its_result_raw_and_a_missing_one_is_null() {
        let (id, outcome) = read_reply(br#"{"id":3,"result":{"b": 1.50}}"#).unwrap();
        assert_eq!((id, outcome.unwrap().get()), (3, r#"{"b": 1.50}"#));
        let (_, outcome) = read_reply(br#"{"id":4}"#).unwrap();
        assert_eq!(outcome.unwrap().get(), "null");
    }

    #[test]
    fn a_failed_reply_becomes_the_call_error_of_its_kind() {
        let (_, outcome) = read_reply(br#"{"id":1,"error":{"kind":"args","type":"TypeError","message":"m"}}"#).unwrap();
        assert!(matches!(outcome, Err(CallError::InvalidArguments(m)) if m == "m"));
        let (_, outcome) = read_reply(br#"{"id":1,"error":{"kind":"raised","type":"KeyError","message":"k","traceback":"t"}}"#).unwrap();
        assert!(matches!(outcome, Err(CallError::Raised(ErrorInfo { kind, .. })) if kind == "KeyError"));
    }

    #[test]
    fn lines_that_answer_no_call_are_ignored() {
        assert!(read_reply(b"not json").is_none());
        assert!(read_reply(br#"{"ready":true,"methods":[]}"#).is_none());
    }
}
