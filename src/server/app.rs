//! The router of the in-container server: `/call`, `/{method}`, `/methods`, `/health`.
//!
//! [`app`] builds the whole service from its state, so tests drive it with `oneshot` and no port.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::value::RawValue;

use super::error::ApiError;
use super::worker::{Phase, Supervisor};
use crate::protocol::{error_type, CallRequest, Health, MethodList, AUTH_HEADER};

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The worker running the environment.
    pub supervisor: Supervisor,
    /// Bearer token required on every route but `/health`; `None` turns authentication off.
    pub token: Option<Arc<str>>,
    /// Timeout for calls whose request names none.
    pub default_timeout: Option<Duration>,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
}

/// Builds the service.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/methods", get(methods))
        .route("/call", post(call))
        .route("/{method}", post(call_rest))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, error_type::METHOD_NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, error_type::BAD_REQUEST, "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = state.token.as_deref() {
        let given = request
            .headers()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, error_type::UNAUTHORIZED, "missing or wrong bearer token")
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so the time taken says nothing about where a guess went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<AppState>) -> Response {
    let phase = state.supervisor.phase();
    let (status, detail, error) = match &phase {
        Phase::Ready => (StatusCode::OK, None, None),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, Some("the environment is loading".to_string()), None),
        Phase::Restarting(why) => (StatusCode::SERVICE_UNAVAILABLE, Some(format!("the worker is restarting: {why}")), None),
        Phase::Failed(info) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(format!("the environment failed to load: {}: {}", info.kind, info.message)),
            Some(info.clone()),
        ),
    };
    (status, Json(Health { status: phase.status().to_string(), detail, error })).into_response()
}

async fn methods(State(state): State<AppState>) -> Result<Json<MethodList>, ApiError> {
    Ok(Json(MethodList { methods: state.supervisor.methods()? }))
}

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

async fn call(State(state): State<AppState>, raw: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
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
async fn call_rest(
    State(state): State<AppState>,
    Path(method): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw)?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return invoke(&state, &method, "[]", "{}", None).await;
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
    invoke(&state, &method, &args, &kwargs, None).await
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
    let result = state.supervisor.call(method, args, kwargs, timeout).await?;
    let mut body = String::with_capacity(32 + result.get().len());
    body.push_str("{\"status\":\"success\",\"result\":");
    body.push_str(result.get());
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
