//! The server's one error type: every failure answers as JSON in the protocol's error shape.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::worker::CallError;
use crate::protocol::{error_type, ErrorBody, ErrorInfo};

/// An error answer: HTTP status plus the protocol's `error` object.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// The `error` object.
    pub info: ErrorInfo,
}

impl ApiError {
    /// An error the server itself produces, with no traceback.
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, info: ErrorInfo { kind: kind.to_string(), message: message.into(), traceback: String::new() } }
    }

    /// 400: the body is not JSON or not of the expected shape.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error_type::BAD_REQUEST, message)
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> ApiError {
        let message = err.to_string();
        let (status, kind) = match err {
            CallError::NotFound { .. } => (StatusCode::NOT_FOUND, error_type::METHOD_NOT_FOUND),
            CallError::InvalidArguments(_) => (StatusCode::UNPROCESSABLE_ENTITY, error_type::INVALID_ARGUMENTS),
            CallError::Raised(info) => return ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, info },
            CallError::NotSerializable(_) => (StatusCode::INTERNAL_SERVER_ERROR, error_type::NOT_SERIALIZABLE),
            CallError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, error_type::TIMEOUT),
            CallError::Unavailable(_) | CallError::WorkerLost(_) => (StatusCode::SERVICE_UNAVAILABLE, error_type::UNAVAILABLE),
            CallError::InstanceLost(_) => (StatusCode::GONE, error_type::SESSION_LOST),
        };
        ApiError::new(status, kind, message)
    }
}

/// First line of a message, so `detail` stays one line even for multi-line exception messages.
fn one_line(kind: &str, message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let builtin = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !is_server_kind(kind);
    if builtin {
        format!("{kind}: {first}")
    } else {
        first.to_string()
    }
}

fn is_server_kind(kind: &str) -> bool {
    [
        error_type::METHOD_NOT_FOUND,
        error_type::BAD_REQUEST,
        error_type::INVALID_ARGUMENTS,
        error_type::NOT_SERIALIZABLE,
        error_type::TIMEOUT,
        error_type::UNAVAILABLE,
        error_type::TOO_LARGE,
        error_type::UNAUTHORIZED,
        error_type::LOAD_FAILED,
        error_type::SESSION_LOST,
    ]
    .contains(&kind)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), kind = %self.info.kind, "{}", self.info.message);
        } else {
            tracing::debug!(status = self.status.as_u16(), kind = %self.info.kind, "{}", self.info.message);
        }
        let body = ErrorBody { status: "error".into(), detail: one_line(&self.info.kind, &self.info.message), error: Some(self.info) };
        let json = serde_json::to_vec(&body).expect("error bodies always serialize");
        (self.status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
    }
}
