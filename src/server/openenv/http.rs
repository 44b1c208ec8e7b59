//! OpenEnv's HTTP routes: `POST /reset`, `POST /step`, `GET /state`, `GET /schema`,
//! `GET /metadata`.
//!
//! OpenEnv's own HTTP routes are stateless (each request builds an environment and closes it); here
//! they act on the default instance, the one `/call` uses, so a `reset` then a `step` over HTTP
//! see each other. Isolated episodes are the WebSocket's. An environment without `reset` and
//! `step` is no OpenEnv environment: `POST /reset` and `POST /step` then call its methods of that
//! name like any `POST /{method}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::episode::is_openenv;
use super::shape;
use crate::server::calls::call_named;
use crate::server::state::AppState;
use crate::server::error::ApiError;

/// `POST /reset`: the body (optional) is `reset`'s keyword arguments; those it does not take are
/// dropped.
pub async fn reset(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if !is_openenv(&state.worker)? {
        return call_named(&state, "reset", body).await;
    }
    let kwargs = match parse_object(&body)? {
        Some(fields) => Value::Object(fields),
        None => json!({}),
    };
    let envelope = super::caller(&state).reset(None, &kwargs).await?;
    Ok(Json(envelope.into_http()).into_response())
}

/// `POST /step`: `{"action": {...}, ...}`; the other members reach `step` only if it takes them.
pub async fn step(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if !is_openenv(&state.worker)? {
        return call_named(&state, "step", body).await;
    }
    let mut fields = parse_object(&body)?.unwrap_or_default();
    let Some(action) = fields.remove("action") else {
        return Ok(unprocessable("missing", json!(["body", "action"]), "Field required", Value::Object(fields)));
    };
    let envelope = super::caller(&state).step(None, &action, &Value::Object(fields)).await?;
    Ok(Json(envelope.into_http()).into_response())
}

/// `GET /state`: the default instance's `state()`, or the server's idea of it.
pub async fn state(State(state): State<AppState>) -> Result<Response, ApiError> {
    let has_state = state.worker.has_method("state")?;
    Ok(Json(super::caller(&state).state(None, has_state, None, 0).await?).into_response())
}

/// `GET /schema`: the action's JSON schema (from `step`'s signature), and open ones for the
/// observation and the state.
pub async fn schema(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(shape::schema(&state.worker.methods()?)).into_response())
}

/// `GET /metadata`: OpenEnv's `EnvironmentMetadata`, from what env.py says of itself.
pub async fn metadata(State(state): State<AppState>) -> Result<Response, ApiError> {
    let info = state.worker.env_info()?;
    let description = info.doc.split("\n\n").next().unwrap_or_default().trim().to_string();
    let description = if description.is_empty() { format!("{} environment", info.name) } else { description };
    Ok(Json(json!({
        "name": info.name,
        "description": description,
        "readme_content": Value::Null,
        "version": Value::Null,
        "author": Value::Null,
        "documentation_url": Value::Null,
    }))
    .into_response())
}

/// The body as a JSON object; `None` when it is empty.
fn parse_object(body: &[u8]) -> Result<Option<Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(Some(fields)),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(err) => Err(ApiError::bad_request(format!("body is not valid JSON: {err}"))),
    }
}

/// FastAPI's 422 shape, which OpenEnv's HTTP clients read.
fn unprocessable(kind: &str, loc: Value, msg: &str, input: Value) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"detail": [{"type": kind, "loc": loc, "msg": msg, "input": input}]}))).into_response()
}
