//! Calling the environment's methods by name: `POST /call` and `POST /{method}`, the protocol
//! Rayfine shares with Rayfine-Env and affinetes. OpenEnv's routes fall back to [`call_named`]
//! for environments whose methods of those names are not OpenEnv's.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use super::error::ApiError;
use super::state::AppState;
use crate::protocol::{error_type, CallRequest, CallSuccess};

/// Turns axum's plain-text body rejections into our JSON errors.
fn body(result: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    result.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error_type::TOO_LARGE, "request body exceeds the size limit")
        } else {
            ApiError::bad_request(format!("could not read the request body: {rejection}"))
        }
    })
}

pub(crate) async fn call(State(state): State<AppState>, raw: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let raw = body(raw)?;
    let request: CallRequest = serde_json::from_slice(&raw)
        .map_err(|err| ApiError::bad_request(format!("body must be {{\"method\", \"args\"?, \"kwargs\"?}}: {err}")))?;
    let args = request.args.as_deref().map(RawValue::get).unwrap_or("[]");
    let kwargs = request.kwargs.as_deref().map(RawValue::get).unwrap_or("{}");
    if !args.starts_with('[') {
        return Err(ApiError::bad_request("`args` must be a JSON array"));
    }
    if !kwargs.starts_with('{') {
        return Err(ApiError::bad_request("`kwargs` must be a JSON object"));
    }
    invoke(&state, &request.method, args, kwargs, request.timeout).await
}

/// `POST /{method}`: the body is the kwargs object, or `{"args": [...], "kwargs": {...}}`.
pub(crate) async fn call_rest(
    State(state): State<AppState>,
    method: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(method) = method.map_err(|rejection| ApiError::bad_request(format!("bad method name in the path: {}", rejection.body_text())))?;
    call_named(&state, &method, body(raw)?).await
}

/// `POST /{method}` for a known `method`: also what OpenEnv's routes fall back to for an
/// environment whose methods of those names are not OpenEnv's.
pub(crate) async fn call_named(state: &AppState, method: &str, raw: Bytes) -> Result<Response, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return invoke(state, method, "[]", "{}", None).await;
    }
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|err| ApiError::bad_request(format!("body is not valid JSON: {err}")))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(format!("the body of POST /{method} must be a JSON object of keyword arguments")));
    };
    let wrapped = !fields.is_empty()
        && fields.keys().all(|k| k == "args" || k == "kwargs")
        && fields.get("args").is_none_or(|v| v.is_array())
        && fields.get("kwargs").is_none_or(|v| v.is_object());
    let (args, kwargs) = if wrapped {
        let args = fields.remove("args").map(|v| v.to_string()).unwrap_or_else(|| "[]".into());
        let kwargs = fields.remove("kwargs").map(|v| v.to_string()).unwrap_or_else(|| "{}".into());
        (args, kwargs)
    } else {
        ("[]".to_string(), serde_json::Value::Object(fields).to_string())
    };
    invoke(state, method, &args, &kwargs, None).await
}

async fn invoke(state: &AppState, method: &str, args: &str, kwargs: &str, timeout: Option<f64>) -> Result<Response, ApiError> {
    if method.starts_with('_') {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            error_type::METHOD_NOT_FOUND,
            format!("`{method}` is private: names starting with `_` are never callable"),
        ));
    }
    let timeout = match timeout {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 => Some(Duration::from_secs_f64(seconds)),
        Some(seconds) => return Err(ApiError::bad_request(format!("`timeout` must be a positive number of seconds, not {seconds}"))),
        None => state.default_timeout,
    };
    let result = state.worker.call(method, args, kwargs, timeout).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], success_body(result)).into_response())
}

/// The `/call` answer for `result`, which is copied in as the worker wrote it, never parsed again.
fn success_body(result: Box<RawValue>) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + result.get().len());
    serde_json::to_writer(&mut body, &CallSuccess { status: "success".to_string(), result }).expect("a raw JSON value always serializes");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_body_carries_the_result_as_the_worker_wrote_it() {
        let body = success_body(RawValue::from_string(r#"{"x": 1.50, "y": [ ]}"#.into()).unwrap());
        assert_eq!(String::from_utf8(body).unwrap(), r#"{"status":"success","result":{"x": 1.50, "y": [ ]}}"#);
    }
}
