//! The router of the in-container server: `/call`, `/{method}`, `/methods`, `/health`, OpenEnv's
//! routes, and the middleware in front of them (the token, the body's size and time limits).
//!
//! [`app`] builds the whole service from its state, so tests drive it with `oneshot` and no port.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::calls::{call, call_rest};
use super::error::ApiError;
use super::lease::LEASE_PATH;
use super::openenv;
use super::worker::Phase;
use crate::protocol::{error_type, Health, MethodList, AUTH_HEADER};
pub use super::state::AppState;

/// Builds the service.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/methods", get(methods))
        .route("/call", post(call))
        .route("/{method}", post(call_rest))
        .merge(openenv::routes())
        .route(LEASE_PATH, post(renew_lease))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
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

/// What every protected route needs before its handler runs, in this order: the token (checked
/// before a body is read), the lease's renewal, and the whole body within the body timeout and
/// size limit, so a client that sends its body slowly, or not at all, gets a 408 instead of
/// holding a request open forever. One middleware rather than one per step: each layer costs a
/// request a clone of the state and a boxed future of its own.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = state.token.as_deref() {
        let given = request
            .headers()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, error_type::UNAUTHORIZED, "missing or wrong bearer token")
                .into_response();
        }
    }
    if let Some(lease) = &state.lease {
        lease.renew();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, state.max_body_bytes)).await {
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            error_type::BODY_TIMEOUT,
            format!("the request body did not arrive within {:.1} s", state.body_timeout.as_secs_f64()),
        )
        .into_response(),
        Ok(Err(err)) if is_length_limit(&err) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error_type::TOO_LARGE, format!("request body exceeds the limit of {} bytes", state.max_body_bytes))
                .into_response()
        }
        Ok(Err(err)) => ApiError::bad_request(format!("could not read the request body: {err}")).into_response(),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    }
}

/// Whether reading a body failed on the size limit (the error is boxed by the time we see it).
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.to_string().contains("length limit exceeded") {
            return true;
        }
        source = current.source();
    }
    false
}

/// `POST /_rayfine/lease`: the renewal itself happened in `guard`.
async fn renew_lease(State(state): State<AppState>) -> Response {
    let seconds = state.lease.as_ref().map(|lease| lease.duration().as_secs_f64());
    Json(serde_json::json!({"status": "ok", "lease_seconds": seconds})).into_response()
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive (RFC
/// 7235 §2.1), so `bearer` and `BEARER` are the same scheme; spaces before the token are allowed.
pub(crate) fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// Compares without an early exit, so the time taken says nothing about where a guess went wrong.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<AppState>) -> Response {
    let phase = state.worker.phase();
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
    Ok(Json(MethodList { methods: state.worker.methods()? }))
}

#[cfg(test)]
mod tests {
    //! Router tests through `oneshot`: no port, a real Python worker on the example environments.

    use super::*;
    use crate::server::openenv::Sessions;
    use crate::server::worker::Worker;
    use crate::server::WorkerConfig;
    use axum::body::Body;
    use std::sync::Arc;
    use std::time::Duration;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    fn worker_script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/worker/worker.py")
    }

    async fn ready_app(env: &str, token: Option<&str>) -> (Router, Worker) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let env_path = [root.join("environments").join(env), root.join("tests/fixtures").join(env)].into_iter().find(|p| p.is_dir()).unwrap();
        let worker = Worker::start(WorkerConfig {
            python: "python3".into(),
            script: worker_script(),
            env_path,
            hidden_env: vec![],
            env: vec![],
            spin: std::time::Duration::from_micros(crate::server::DEFAULT_SPIN_US),
            priority: crate::server::WorkerPriority::Normal,
            script_fd: None,
            cpu: None,
            announce_pids: false,
        });
        let mut phases = worker.subscribe();
        tokio::time::timeout(Duration::from_secs(20), phases.wait_for(|p| !matches!(p, Phase::Starting)))
            .await
            .expect("the worker loads within 20 s")
            .expect("the worker handle lives");
        let state = AppState {
            worker: worker.clone(),
            token: token.map(Arc::from),
            default_timeout: None,
            max_body_bytes: 1024,
            body_timeout: Duration::from_secs(5),
            lease: None,
            openenv: Sessions::new(
                openenv::SessionLimits { max_sessions: 4, idle_timeout: Duration::from_secs(60), setup_timeout: Duration::from_secs(10) },
                worker.clone(),
            ),
        };
        (app(state), worker)
    }

    async fn send(app: &Router, method: &str, uri: &str, body: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app.clone().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("body is JSON: {bytes:?}"));
        (status, value)
    }

    #[tokio::test]
    async fn call_returns_the_result_in_the_success_shape() {
        let (app, worker) = ready_app("echo", None).await;
        let (status, body) = send(&app, "POST", "/call", r#"{"method":"add","args":[2],"kwargs":{"b":3}}"#, None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "success", "result": 5})));
        worker.shutdown();
    }

    #[tokio::test]
    async fn restful_route_takes_kwargs_or_the_args_kwargs_wrapper() {
        let (app, worker) = ready_app("echo", None).await;
        let (_, body) = send(&app, "POST", "/add", r#"{"a":1,"b":2}"#, None).await;
        assert_eq!(body["result"], 3);
        let (_, body) = send(&app, "POST", "/add", r#"{"args":[1],"kwargs":{"b":5}}"#, None).await;
        assert_eq!(body["result"], 6);
        let (_, body) = send(&app, "POST", "/ping", "", None).await;
        assert_eq!(body["result"], "pong");
        worker.shutdown();
    }

    #[tokio::test]
    async fn every_error_has_the_protocol_shape_and_status() {
        let (app, worker) = ready_app("echo", None).await;
        let cases = [
            ("/call", r#"{"method":"nope"}"#, StatusCode::NOT_FOUND, "MethodNotFound"),
            ("/call", r#"{"method":"_private"}"#, StatusCode::NOT_FOUND, "MethodNotFound"),
            ("/call", "not json", StatusCode::BAD_REQUEST, "BadRequest"),
            ("/call", r#"{"method":"add","args":{"a":1}}"#, StatusCode::BAD_REQUEST, "BadRequest"),
            ("/call", r#"{"method":"add","kwargs":[1]}"#, StatusCode::BAD_REQUEST, "BadRequest"),
            ("/call", r#"{"method":"add","timeout":-1}"#, StatusCode::BAD_REQUEST, "BadRequest"),
            ("/call", r#"{"method":"add","args":[1]}"#, StatusCode::UNPROCESSABLE_ENTITY, "InvalidArguments"),
            ("/call", r#"{"method":"add","args":[1,"x"]}"#, StatusCode::INTERNAL_SERVER_ERROR, "TypeError"),
            ("/add", "[1,2]", StatusCode::BAD_REQUEST, "BadRequest"),
            ("/call", &format!(r#"{{"method":"echo","args":["{}"]}}"#, "x".repeat(2000)), StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
        ];
        for (uri, body, status, kind) in cases {
            let (got_status, got) = send(&app, "POST", uri, body, None).await;
            assert_eq!((got_status, got["error"]["type"].as_str()), (status, Some(kind)), "{uri} {body}: {got}");
            assert_eq!(got["status"], "error");
            assert!(got["detail"].as_str().is_some_and(|d| !d.is_empty() && !d.contains('\n')), "{got}");
        }
        worker.shutdown();
    }

    #[tokio::test]
    async fn unknown_method_error_lists_the_available_ones() {
        let (app, worker) = ready_app("echo", None).await;
        let (_, body) = send(&app, "POST", "/call", r#"{"method":"nope"}"#, None).await;
        assert_eq!(body["detail"], "no method named `nope`; available: add, aping, echo, ping, slow_echo");
        worker.shutdown();
    }

    #[tokio::test]
    async fn token_is_required_everywhere_but_health() {
        let (app, worker) = ready_app("echo", Some("s3cret")).await;
        let (status, _) = send(&app, "GET", "/health", "", None).await;
        assert_eq!(status, StatusCode::OK);
        for (method, uri, body) in [("GET", "/methods", ""), ("POST", "/call", r#"{"method":"ping"}"#), ("POST", "/ping", "{}")] {
            let (status, body_json) = send(&app, method, uri, body, None).await;
            assert_eq!((status, body_json["error"]["type"].as_str()), (StatusCode::UNAUTHORIZED, Some("Unauthorized")));
            let (status, _) = send(&app, method, uri, body, Some("wrong")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let (status, _) = send(&app, method, uri, body, Some("s3cret")).await;
            assert_eq!(status, StatusCode::OK, "{method} {uri}");
        }
        worker.shutdown();
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_is() {
        assert_eq!(bearer_credentials("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_credentials("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_credentials("BEARER  s3cret"), Some("s3cret"));
        assert_eq!(bearer_credentials("Basic s3cret"), None);
        assert_eq!(bearer_credentials("Bearers3cret"), None);
        assert_eq!(bearer_credentials("Bearer S3CRET"), Some("S3CRET"), "the token itself stays case-sensitive");
    }

    #[tokio::test]
    async fn a_lowercase_bearer_scheme_is_accepted() {
        let (app, worker) = ready_app("echo", Some("s3cret")).await;
        let request = Request::builder().method("GET").uri("/methods").header("authorization", "bearer s3cret");
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        worker.shutdown();
    }

    #[tokio::test]
    async fn methods_describe_signature_source_and_asyncness() {
        let (app, worker) = ready_app("gridgame", None).await;
        let (status, body) = send(&app, "GET", "/methods", "", None).await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = body["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["reset", "step", "state", "close"], "private `_observe` and imported names are hidden");
        let step = &body["methods"][1];
        assert_eq!(step["signature"], "(episode_id: str, action: str)");
        assert_eq!(step["source"], "Actor");
        assert_eq!(step["endpoint"], "/step");
        assert_eq!(step["is_async"], false);
        assert!(step["doc"].as_str().unwrap().starts_with("Moves one cell"));
        worker.shutdown();
    }

    #[tokio::test]
    async fn dataclass_results_become_json_objects() {
        let (app, worker) = ready_app("gridgame", None).await;
        let (_, body) = send(&app, "POST", "/call", r#"{"method":"reset","kwargs":{"size":4,"seed":1}}"#, None).await;
        let result = &body["result"];
        assert_eq!(result["observation"]["position"], json!([0, 0]));
        assert_eq!(result["done"], false);
        let id = result["episode_id"].as_str().unwrap();
        let (_, body) = send(&app, "POST", "/call", &json!({"method": "step", "kwargs": {"episode_id": id, "action": "down"}}).to_string(), None).await;
        assert_eq!(body["result"]["observation"]["position"], json!([0, 1]));
        assert_eq!(body["result"]["info"]["steps"], 1);
        worker.shutdown();
    }

    #[tokio::test]
    async fn an_environment_with_reset_and_step_answers_openenvs_http_routes_in_its_shapes() {
        let (app, worker) = ready_app("gridgame", None).await;
        let (status, body) = send(&app, "POST", "/reset", r#"{"size":4,"seed":1,"episode_id":"dropped"}"#, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["observation"]["position"], json!([0, 0]));
        assert_eq!((&body["reward"], &body["done"]), (&json!(0.0), &json!(false)));
        let id = body["metadata"]["episode_id"].as_str().expect("the result's other members are metadata").to_string();
        // gridgame's step takes `action` and `episode_id`: the action goes to `action`, the
        // request's other members only where the signature takes them.
        let step = json!({"action": "down", "episode_id": id, "request_id": "r1"}).to_string();
        let (status, body) = send(&app, "POST", "/step", &step, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["observation"]["position"], json!([0, 1]));
        assert_eq!(body["metadata"]["info"]["steps"], 1);
        let (status, body) = send(&app, "POST", "/step", r#"{"episode_id":"x"}"#, None).await;
        assert_eq!((status, &body["detail"][0]["loc"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!(["body", "action"])));
        let (_, body) = send(&app, "GET", "/schema", "", None).await;
        assert_eq!(body["action"]["properties"]["action"]["type"], "string", "{body}");
        let (_, body) = send(&app, "GET", "/metadata", "", None).await;
        assert!(body["description"].as_str().unwrap().starts_with("Grid game"), "{body}");
        worker.shutdown();
    }

    #[tokio::test]
    async fn an_environment_without_reset_and_step_keeps_plain_routes_of_those_names() {
        let (app, worker) = ready_app("reset_only", None).await;
        let (status, body) = send(&app, "POST", "/reset", "", None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "success", "result": 0})));
        worker.shutdown();
    }

    #[tokio::test]
    async fn mcp_lists_the_methods_as_tools_and_calls_them() {
        let (app, worker) = ready_app("echo", None).await;
        let (status, body) = send(&app, "POST", "/mcp", r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, None).await;
        assert_eq!(status, StatusCode::OK);
        let add = body["result"]["tools"].as_array().unwrap().iter().find(|t| t["name"] == "add").unwrap().clone();
        assert_eq!(add["inputSchema"]["required"], json!(["a", "b"]), "{add}");
        let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}"#;
        let (_, body) = send(&app, "POST", "/mcp", call, None).await;
        assert_eq!((&body["id"], &body["result"]["data"], &body["result"]["isError"]), (&json!(2), &json!(5), &json!(false)));
        let (_, body) = send(&app, "POST", "/mcp", r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"nope"}}"#, None).await;
        assert_eq!(body["error"]["message"], "Unknown tool: 'nope'");
        let (_, body) = send(&app, "POST", "/mcp", "{not json", None).await;
        assert_eq!(body["error"]["code"], -32700);
        let (_, body) = send(&app, "POST", "/mcp", r#"{"jsonrpc":"2.0","id":4,"method":"bogus"}"#, None).await;
        assert_eq!(body["error"]["code"], -32601);
        worker.shutdown();
    }
}
