//! What a call to the worker comes to: its raw JSON result, or a [`CallError`] saying why there
//! is none. Shared by the call sessions and the wire, which turns the worker's replies into it.

use serde_json::value::RawValue;

use crate::protocol::ErrorInfo;

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
    /// The call's session instance is gone (closed, or lost with a previous worker process).
    #[error("{0}")]
    InstanceLost(String),
}

/// A call's result as raw JSON, passed on to the client without being parsed, or why there is
/// none.
pub(super) type Outcome = Result<Box<RawValue>, CallError>;

