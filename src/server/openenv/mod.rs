//! OpenEnv compatibility: the environment served to OpenEnv's clients (TRL, torchforge, ...) as
//! OpenEnv's own servers serve theirs, next to `/call`.
//!
//! An environment whose Actor (or module) has `reset` and `step` is an OpenEnv environment:
//! [`ws`] runs sessions over `/ws`, each with an Actor instance of its own ([`sessions`]);
//! [`http`] answers OpenEnv's HTTP routes; [`mcp`] serves the methods as MCP tools. [`episode`]
//! turns OpenEnv's requests into worker calls and [`shape`] their results into OpenEnv's
//! shapes; the wire format itself is described in `docs/openenv-protocol.md`.

mod episode;
mod http;
mod mcp;
pub mod sessions;
mod shape;
mod ws;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::calls::call_named;
use super::state::AppState;
pub use sessions::{SessionLimits, Sessions};

/// OpenEnv's routes. `/state`, `/schema` and `/metadata` also take `POST`, which calls the
/// environment's method of that name as `POST /{method}` does for any other.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/reset", post(http::reset))
        .route("/step", post(http::step))
        .route("/state", get(http::state).post(|State(state): State<AppState>, body: Bytes| call_method(state, "state", body)))
        .route("/schema", get(http::schema).post(|State(state): State<AppState>, body: Bytes| call_method(state, "schema", body)))
        .route("/metadata", get(http::metadata).post(|State(state): State<AppState>, body: Bytes| call_method(state, "metadata", body)))
        .route("/mcp", post(mcp::post))
        .route("/ws", get(ws::upgrade))
}

async fn call_method(state: AppState, method: &'static str, body: Bytes) -> Result<Response, super::error::ApiError> {
    call_named(&state, method, body).await
}

/// The caller every OpenEnv route uses.
fn caller(state: &AppState) -> episode::Caller {
    episode::Caller { worker: state.worker.clone(), timeout: state.default_timeout }
}
