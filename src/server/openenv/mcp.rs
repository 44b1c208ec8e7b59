//! MCP: the environment's methods as tools, over JSON-RPC 2.0 (`POST /mcp`, the WebSocket's `mcp`
//! message, and OpenEnv's `call_tool`/`list_tools` step actions).
//!
//! Besides MCP's `initialize`, `ping`, `tools/list` and `tools/call`, OpenEnv's `MCPToolClient`
//! needs its two extensions: `openenv/session/create` (a session with an Actor of its own, which a
//! WebSocket then attaches to with `/ws?session_id=`) and `openenv/session/close`. A call naming a
//! `session_id` runs on that session's instance; one naming none runs on the default instance,
//! which `/call` uses too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::sessions::{CreateError, EnvSession};
use crate::protocol::MethodInfo;
use crate::server::state::AppState;
use crate::server::worker::CallError;

/// The MCP protocol version answered when the client names none.
const PROTOCOL_VERSION: &str = "2025-06-18";

/// Method names that are OpenEnv's own operations, never tools (OpenEnv reserves them too).
const RESERVED: [&str; 4] = ["reset", "step", "state", "close"];

/// JSON-RPC error codes.
mod rpc {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const SERVER_ERROR: i64 = -32000;
}

/// `POST /mcp`: one JSON-RPC request; always HTTP 200 with a JSON-RPC answer, or 202 with no body
/// for a notification.
pub async fn post(State(state): State<AppState>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return json_response(error(Value::Null, rpc::PARSE_ERROR, &format!("Parse error: {err}"), Value::Null)),
    };
    match handle(&state, request, None).await {
        Some(answer) => json_response(answer),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

fn json_response(answer: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], answer.to_string()).into_response()
}

/// Answers one JSON-RPC request; `None` for a notification. `socket_session` is the session of
/// the WebSocket the request came over, if it did.
pub async fn handle(state: &AppState, request: Value, socket_session: Option<&Arc<EnvSession>>) -> Option<Value> {
    let Value::Object(request) = request else {
        return Some(error(Value::Null, rpc::INVALID_REQUEST, "Invalid request: a JSON-RPC request is an object (batches are not supported)", Value::Null));
    };
    let id = request.get("id").cloned();
    if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error(id.unwrap_or(Value::Null), rpc::INVALID_REQUEST, "Invalid request: `jsonrpc` must be \"2.0\"", Value::Null));
    }
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return Some(error(id.unwrap_or(Value::Null), rpc::INVALID_REQUEST, "Invalid request: `method` must be a string", Value::Null));
    };
    let empty = json!({});
    let params = match request.get("params") {
        None | Some(Value::Null) => &empty,
        Some(params @ Value::Object(_)) => params,
        Some(_) => return Some(error(id.unwrap_or(Value::Null), rpc::INVALID_PARAMS, "Params must be an object", Value::Null)),
    };
    let Some(id) = id else {
        // A notification (`notifications/initialized`, ...): nothing to answer.
        return None;
    };
    Some(match answer(state, method, params, socket_session).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(Fault { code, message, data }) => error(id, code, &message, data),
    })
}

/// A JSON-RPC error.
struct Fault {
    code: i64,
    message: String,
    data: Value,
}

impl Fault {
    fn new(code: i64, message: impl Into<String>) -> Fault {
        Fault { code, message: message.into(), data: Value::Null }
    }
}

fn error(id: Value, code: i64, message: &str, data: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message, "data": data}})
}

async fn answer(state: &AppState, method: &str, params: &Value, socket_session: Option<&Arc<EnvSession>>) -> Result<Value, Fault> {
    match method {
        "initialize" => {
            let info = state.worker.env_info().map_err(unavailable)?;
            let version = params.get("protocolVersion").and_then(Value::as_str).unwrap_or(PROTOCOL_VERSION);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": info.name, "version": env!("CARGO_PKG_VERSION")},
                "instructions": info.doc,
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => {
            if let Some(session) = named_session(state, params)? {
                session.touch();
            }
            let methods = state.worker.methods().map_err(unavailable)?;
            Ok(json!({"tools": tools(&methods)}))
        }
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).ok_or_else(|| Fault::new(rpc::INVALID_PARAMS, "Missing 'name' in params"))?;
            let arguments = match params.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(arguments @ Value::Object(_)) => arguments.clone(),
                Some(_) => return Err(Fault::new(rpc::INVALID_PARAMS, "`arguments` must be an object")),
            };
            let session = match named_session(state, params)? {
                Some(session) => Some(session),
                None => socket_session.cloned(),
            };
            let value = call_tool(state, session.as_ref(), name, &arguments).await?;
            Ok(tool_result(value))
        }
        "openenv/session/create" => {
            if let Some(session) = socket_session {
                return Ok(json!({"session_id": session.id}));
            }
            match state.openenv.create(&state.worker, false).await {
                Ok(session) => Ok(json!({"session_id": session.id})),
                Err(err @ CreateError::Capacity { active, max }) => {
                    Err(Fault { code: rpc::SERVER_ERROR, message: err.to_string(), data: json!({"active_sessions": active, "max_sessions": max}) })
                }
                Err(err) => Err(Fault::new(rpc::SERVER_ERROR, err.to_string())),
            }
        }
        "openenv/session/close" => {
            let id = params
                .get("session_id")
                .and_then(Value::as_str)
                .ok_or_else(|| Fault::new(rpc::INVALID_PARAMS, "Invalid params - 'session_id' is required"))?;
            if socket_session.is_some_and(|own| own.id == id && own.owned_by_socket) {
                return Err(Fault::new(rpc::INVALID_REQUEST, "Cannot close active WebSocket-managed session via MCP method"));
            }
            let session = state.openenv.get(id).ok_or_else(|| Fault::new(rpc::INVALID_PARAMS, state.openenv.missing(id)))?;
            if session.is_attached() {
                session.request_close();
                return Ok(json!({"session_id": id, "closed": false, "closing": true}));
            }
            state.openenv.end(&session, &state.worker);
            Ok(json!({"session_id": id, "closed": true}))
        }
        other => Err(Fault::new(rpc::METHOD_NOT_FOUND, format!("Method not found: {other}"))),
    }
}

/// The session `params.session_id` names, if it names one.
fn named_session(state: &AppState, params: &Value) -> Result<Option<Arc<EnvSession>>, Fault> {
    match params.get("session_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => {
            state.openenv.get(id).map(Some).ok_or_else(|| Fault::new(rpc::INVALID_PARAMS, state.openenv.missing(id)))
        }
        Some(_) => Err(Fault::new(rpc::INVALID_PARAMS, "`session_id` must be a string")),
    }
}

fn unavailable(err: CallError) -> Fault {
    Fault::new(rpc::INTERNAL_ERROR, err.to_string())
}

/// Whether `name` is a tool: a public method that is not one of OpenEnv's own operations.
fn is_tool(name: &str) -> bool {
    !name.starts_with('_') && !RESERVED.contains(&name)
}

/// The tools: every public method but reset/step/state/close, with its docstring and the JSON
/// schema of its arguments.
pub fn tools(methods: &[MethodInfo]) -> Vec<Value> {
    methods
        .iter()
        .filter(|m| is_tool(&m.name))
        .map(|m| {
            let schema = m.input_schema.clone().unwrap_or_else(|| json!({"type": "object"}));
            json!({"name": m.name, "description": m.doc, "inputSchema": schema})
        })
        .collect()
}

/// Runs a tool on `session`'s instance (one call at a time per session), or on the default one.
///
/// A session's call runs in a task of its own that holds the session's turn until the worker has
/// answered: an HTTP client that hangs up drops this future, but the call goes on in the worker,
/// and the session's next call must not start beside it on the same Actor.
async fn call_tool(state: &AppState, session: Option<&Arc<EnvSession>>, name: &str, arguments: &Value) -> Result<Value, Fault> {
    if !is_tool(name) {
        return Err(Fault::new(rpc::INTERNAL_ERROR, format!("Unknown tool: '{name}'")));
    }
    let caller = super::caller(state);
    let outcome = match session {
        Some(session) => {
            let (state, session, name, arguments) = (state.clone(), session.clone(), name.to_string(), arguments.clone());
            let call = tokio::spawn(async move {
                session.touch();
                let _turn = session.turn().await?;
                let outcome = caller.tool(session.instance, &name, &arguments).await;
                session.touch();
                if let Err(err) = &outcome {
                    state.openenv.end_if_broken(&session, &state.worker, err);
                }
                outcome
            });
            call.await.map_err(|err| Fault::new(rpc::INTERNAL_ERROR, format!("the call's task failed: {err}")))?
        }
        None => caller.tool(None, name, arguments).await,
    };
    outcome.map_err(|err| match err {
        CallError::NotFound { .. } => Fault::new(rpc::INTERNAL_ERROR, format!("Unknown tool: '{name}'")),
        CallError::InvalidArguments(message) => Fault::new(rpc::INVALID_PARAMS, message),
        CallError::Raised(info) => Fault::new(rpc::INTERNAL_ERROR, format!("{}: {}", info.kind, info.message)),
        other => Fault::new(rpc::INTERNAL_ERROR, other.to_string()),
    })
}

/// MCP's `CallToolResult` for a tool's return value, plus OpenEnv's `data` member (the plain
/// value), which is what `MCPToolClient.call_tool` returns.
fn tool_result(value: Value) -> Value {
    let text = match &value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let structured = match &value {
        Value::Object(_) => value.clone(),
        other => json!({"result": other}),
    };
    json!({"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": false, "data": value})
}

/// OpenEnv's MCP step actions (`{"type": "list_tools"}`, `{"type": "call_tool", "tool_name",
/// "arguments"}`), which older `MCPToolClient`s send over the WebSocket: the observation to
/// answer with, or `None` when `action` is not one of them.
pub async fn step_action(state: &AppState, session: &Arc<EnvSession>, action: &Value) -> Option<Value> {
    let kind = action.get("type").and_then(Value::as_str)?;
    // An environment whose own step takes a `type` means its own action by it.
    let methods = state.worker.methods().ok()?;
    if methods.iter().any(|m| m.name == "step" && m.input_schema.as_ref().and_then(|s| s.pointer("/properties/type")).is_some()) {
        return None;
    }
    match kind {
        "list_tools" => {
            let tools = state.worker.methods().map(|methods| tools(&methods)).unwrap_or_default();
            let tools: Vec<Value> = tools
                .into_iter()
                .map(|mut tool| {
                    let schema = tool.as_object_mut().and_then(|t| t.remove("inputSchema")).unwrap_or(Value::Null);
                    tool["input_schema"] = schema;
                    tool
                })
                .collect();
            Some(json!({"tools": tools, "metadata": {}}))
        }
        "call_tool" => {
            let name = action.get("tool_name").and_then(Value::as_str).unwrap_or_default().to_string();
            let arguments = action.get("arguments").cloned().unwrap_or_else(|| json!({}));
            let caller = super::caller(state);
            let outcome = if !is_tool(&name) {
                Err(("tool_not_found", format!("Unknown tool: '{name}'")))
            } else if !arguments.is_object() {
                Err(("invalid_args", "`arguments` must be an object".to_string()))
            } else {
                let outcome = caller.tool(session.instance, &name, &arguments).await;
                if let Err(err) = &outcome {
                    state.openenv.end_if_broken(session, &state.worker, err);
                }
                outcome.map_err(|err| match err {
                    CallError::NotFound { .. } => ("tool_not_found", format!("Unknown tool: '{name}'")),
                    CallError::InvalidArguments(message) => ("invalid_args", message),
                    CallError::Timeout { .. } => ("timeout", err.to_string()),
                    CallError::Raised(info) => ("execution_error", format!("{}: {}", info.kind, info.message)),
                    other => ("execution_error", other.to_string()),
                })
            };
            Some(match outcome {
                Ok(value) => json!({"tool_name": name, "result": tool_result(value), "error": null, "metadata": {}}),
                Err((kind, message)) => {
                    json!({"tool_name": name, "result": null, "error": {"error_type": kind, "message": message}, "metadata": {}})
                }
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_leave_out_openenvs_operations_and_carry_schemas() {
        let method = |name: &str| MethodInfo {
            name: name.into(),
            signature: String::new(),
            source: String::new(),
            endpoint: String::new(),
            doc: format!("{name} doc"),
            is_async: false,
            input_schema: Some(json!({"type": "object", "properties": {}})),
        };
        let listed = tools(&[method("reset"), method("step"), method("evaluate"), method("state"), method("close")]);
        assert_eq!(listed, vec![json!({"name": "evaluate", "description": "evaluate doc", "inputSchema": {"type": "object", "properties": {}}})]);
    }

    #[test]
    fn a_tool_result_has_mcps_members_and_openenvs_data() {
        assert_eq!(
            tool_result(json!("Hi")),
            json!({"content": [{"type": "text", "text": "Hi"}], "structuredContent": {"result": "Hi"}, "isError": false, "data": "Hi"})
        );
        assert_eq!(tool_result(json!({"n": 1}))["structuredContent"], json!({"n": 1}));
    }
}
