//! `WS /ws`: an OpenEnv session over one WebSocket, in OpenEnv's framing
//! (`{"type": "reset"|"step"|"state"|"close"|"mcp", "data"}` in, one `observation`, `state`, `mcp`
//! or `error` frame out per request, in order).
//!
//! The socket is read all the time, also while a call runs: OpenEnv's client pings every 20 s and
//! drops a connection whose pongs stop, so a step longer than that must not stop the reading (a
//! pong is sent as a ping is read). The server pings too, and a session whose client is heard
//! from for no longer than the idle timeout, not even by a pong, is ended: its client vanished
//! without closing (a half-open socket), and its slot would otherwise be lost for good.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::sessions::{CreateError, EnvSession};
use super::shape::{self, code, error_frame};
use crate::server::state::AppState;

/// Requests a client may queue behind the one running; more is a client that does not wait for
/// its answers, and the session ends.
const MAX_QUEUED: usize = 256;

/// How long sending one frame may take before the client is taken for gone.
const SEND_LIMIT: Duration = Duration::from_secs(30);

/// The query of `/ws`.
#[derive(Debug, Deserialize)]
pub struct Attach {
    /// Attach to this session (made by MCP's `openenv/session/create`) instead of a new one.
    session_id: Option<String>,
}

/// `GET /ws`: upgrades, then runs the session.
pub async fn upgrade(State(state): State<AppState>, Query(attach): Query<Attach>, upgrade: WebSocketUpgrade) -> Response {
    let limit = state.max_body_bytes;
    upgrade.max_message_size(limit).max_frame_size(limit).read_buffer_size(crate::protocol::WS_READ_BUFFER_BYTES).on_upgrade(move |socket| run(socket, state, attach.session_id))
}

/// What to do after a request is answered.
enum After {
    /// Send this frame, then take the next request.
    Reply(Value),
    /// Send this frame, then end the session.
    ReplyAndEnd(Value),
    /// End the session (the client said `close`).
    End,
}

type Pending = Pin<Box<dyn Future<Output = After> + Send>>;

/// A frame waiting for its turn.
enum Request {
    /// A text frame: a request.
    Text(Utf8Bytes),
    /// A binary frame, which OpenEnv's protocol has no use for (its bytes are not kept).
    Binary,
}

impl Request {
    /// The bytes it holds.
    fn len(&self) -> usize {
        match self {
            Request::Text(text) => text.len(),
            Request::Binary => 0,
        }
    }
}

/// The payload's length of a data frame.
fn frame_len(frame: &Message) -> usize {
    match frame {
        Message::Text(text) => text.len(),
        _ => 0,
    }
}

async fn run(mut socket: WebSocket, state: AppState, attach: Option<String>) {
    let session = match attach {
        None => match state.openenv.create(&state.worker, true).await {
            Ok(session) => session,
            Err(err) => {
                let frame = match &err {
                    CreateError::Capacity { active, max } => {
                        let extra = Map::from_iter([("active_sessions".into(), json!(active)), ("max_sessions".into(), json!(max))]);
                        error_frame(code::CAPACITY_REACHED, &err.to_string(), extra)
                    }
                    CreateError::Factory(_) => error_frame(code::FACTORY_ERROR, &err.to_string(), Map::new()),
                };
                refuse(socket, frame).await;
                return;
            }
        },
        Some(id) => match state.openenv.get(&id) {
            Some(session) if session.attach() => session,
            Some(session) => {
                // The reaper claims a session by marking it attached, then ends it.
                let why = if session.is_ended() { format!("Session {id} has ended") } else { format!("Session {id} already has an attached WebSocket") };
                refuse(socket, error_frame(code::SESSION_ERROR, &why, Map::new())).await;
                return;
            }
            None => {
                refuse(socket, error_frame(code::SESSION_ERROR, &state.openenv.missing(&id), Map::new())).await;
                return;
            }
        },
    };
    let mut running: Option<Pending> = None;
    let ended_by = serve(&mut socket, &state, &session, &mut running).await;
    drop(socket);
    // A call still in the worker (the client left mid-step) keeps the session's slot until it is
    // done: otherwise a client that connects, steps and leaves, again and again, would pile work
    // on the worker that no limit bounds.
    if let Some(call) = running {
        call.await;
    }
    if session.owned_by_socket || session.detach() {
        state.openenv.end(&session, &state.worker);
    }
    if let Some(reason) = ended_by {
        tracing::debug!(session = %session.id, "session ended: {reason}");
    }
}

/// Sends one error frame and closes normally (OpenEnv's capacity answer: the client reads the
/// frame on its first request).
async fn refuse(mut socket: WebSocket, frame: Value) {
    let _ = tokio::time::timeout(SEND_LIMIT, async {
        let _ = socket.send(Message::Text(frame.to_string().into())).await;
        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: Utf8Bytes::default() }))).await;
    })
    .await;
}

/// Reads requests and answers them one at a time until the client closes or vanishes; returns
/// why the session ended, when it is worth a log line.
async fn serve(socket: &mut WebSocket, state: &AppState, session: &Arc<EnvSession>, running: &mut Option<Pending>) -> Option<String> {
    let idle_timeout = state.openenv.limits.idle_timeout;
    let mut pings = tokio::time::interval((idle_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(20)));
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    let mut heard = Instant::now();
    let mut queue: VecDeque<Request> = VecDeque::new();
    // Bytes of the queued requests: each may be as large as a body, and a client that sends
    // without reading its answers must not make the server hold hundreds of them.
    let mut queued_bytes = 0usize;
    let max_queued_bytes = state.max_body_bytes.max(1 << 20);
    loop {
        if running.is_none() {
            if let Some(request) = queue.pop_front() {
                queued_bytes -= request.len();
                *running = Some(Box::pin(answer(state.clone(), session.clone(), request)));
            }
        }
        tokio::select! {
            frame = socket.recv() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(err)) => return Some(format!("the connection failed: {err}")),
                    None => return None,
                };
                heard = Instant::now();
                session.touch();
                match frame {
                    Message::Text(_) | Message::Binary(_) if queue.len() >= MAX_QUEUED || queued_bytes + frame_len(&frame) > max_queued_bytes => {
                        let frame = error_frame(
                            code::SESSION_ERROR,
                            &format!("more than {MAX_QUEUED} requests or {max_queued_bytes} bytes queued without reading the answers"),
                            Map::new(),
                        );
                        let _ = send(socket, &frame).await;
                        return Some("the client queued too many requests".into());
                    }
                    Message::Text(text) => {
                        queued_bytes += text.len();
                        queue.push_back(Request::Text(text));
                    }
                    Message::Binary(_) => queue.push_back(Request::Binary),
                    Message::Close(_) => return None,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            after = async { running.as_mut().expect("guarded by the branch condition").await }, if running.is_some() => {
                *running = None;
                match after {
                    After::Reply(frame) => {
                        if !send(socket, &frame).await {
                            return Some("the client stopped reading".into());
                        }
                    }
                    After::ReplyAndEnd(frame) => {
                        let _ = send(socket, &frame).await;
                        let _ = close(socket).await;
                        return Some("the session cannot go on".into());
                    }
                    After::End => {
                        let _ = close(socket).await;
                        return None;
                    }
                }
            }
            // Ended elsewhere (a call of it over MCP timed out) while this socket waited for its
            // client: say so and close now, as the client would otherwise learn it only from
            // its next request. A call of its own in flight ends the socket with its answer.
            () = session.ended(), if running.is_none() => {
                let why = format!("Session {} has ended: a call of it made elsewhere (over MCP) timed out or lost its instance, or it was closed", session.id);
                let _ = send(socket, &error_frame(code::SESSION_ERROR, &why, Map::new())).await;
                let _ = close(socket).await;
                return Some("the session was ended elsewhere".into());
            }
            _ = pings.tick() => {
                if heard.elapsed() > idle_timeout {
                    return Some(format!("nothing heard from the client for {idle_timeout:?}: taken for gone"));
                }
                let ping = tokio::time::timeout(SEND_LIMIT, socket.send(Message::Ping(Default::default()))).await;
                if !matches!(ping, Ok(Ok(()))) {
                    return Some("the client stopped reading".into());
                }
            }
        }
    }
}

async fn send(socket: &mut WebSocket, frame: &Value) -> bool {
    matches!(tokio::time::timeout(SEND_LIMIT, socket.send(Message::Text(frame.to_string().into()))).await, Ok(Ok(())))
}

async fn close(socket: &mut WebSocket) -> bool {
    let frame = Message::Close(Some(CloseFrame { code: 1000, reason: Utf8Bytes::default() }));
    matches!(tokio::time::timeout(SEND_LIMIT, socket.send(frame)).await, Ok(Ok(())))
}

/// Answers one request frame.
async fn answer(state: AppState, session: Arc<EnvSession>, request: Request) -> After {
    let Request::Text(text) = request else {
        return After::Reply(error_frame(code::INVALID_JSON, "binary frames are not supported: send JSON text frames", Map::new()));
    };
    let message: Value = match serde_json::from_str(text.as_str()) {
        Ok(message) => message,
        Err(err) => return After::Reply(error_frame(code::INVALID_JSON, &format!("Invalid JSON: {err}"), Map::new())),
    };
    let Value::Object(mut message) = message else {
        return After::Reply(error_frame(code::VALIDATION_ERROR, "Invalid message: a message is a JSON object {\"type\", \"data\"}", Map::new()));
    };
    let kind = message.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    let data = message.remove("data");
    let caller = super::caller(&state);
    let mut progress = match session.turn().await {
        Ok(progress) => progress,
        // Ended while this request waited its turn (over MCP, by a call that broke it).
        Err(err) => return After::ReplyAndEnd(shape::call_error_frame(&err)),
    };
    let outcome = match kind.as_str() {
        "reset" => {
            let kwargs = match data {
                None | Some(Value::Null) => json!({}),
                Some(kwargs @ Value::Object(_)) => kwargs,
                Some(_) => return After::Reply(invalid("`data` of a reset is an object of keyword arguments")),
            };
            let episode_id = kwargs.get("episode_id").and_then(Value::as_str).map(str::to_string);
            let outcome = caller.reset(session.instance, &kwargs).await;
            if outcome.is_ok() {
                *progress = super::sessions::Progress { episode_id, step_count: 0 };
            }
            outcome.map(|envelope| json!({"type": "observation", "data": envelope.into_ws()}))
        }
        "step" => {
            let action = match data {
                Some(action @ Value::Object(_)) => action,
                Some(_) => return After::Reply(invalid("`data` of a step is the action, a JSON object")),
                None => return After::Reply(invalid("a step needs `data`: the action")),
            };
            if let Some(observation) = super::mcp::step_action(&state, &session, &action).await {
                progress.step_count += 1;
                return reply_unless_ended(&session, json!({"type": "observation", "data": {"observation": observation, "reward": null, "done": false}}));
            }
            let outcome = caller.step(session.instance, &action, &json!({})).await;
            if outcome.is_ok() {
                progress.step_count += 1;
            }
            outcome.map(|envelope| json!({"type": "observation", "data": envelope.into_ws()}))
        }
        "state" => {
            let has_state = state.worker.has_method("state").unwrap_or(false);
            caller
                .state(session.instance, has_state, progress.episode_id.as_deref(), progress.step_count)
                .await
                .map(|data| json!({"type": "state", "data": data}))
        }
        "close" => return After::End,
        "mcp" => {
            drop(progress);
            let request = data.unwrap_or(Value::Null);
            let answer = super::mcp::handle(&state, request, Some(&session)).await;
            return reply_unless_ended(&session, json!({"type": "mcp", "data": answer}));
        }
        "" => {
            let why = "Unknown message type: the message has no string `type` (one of reset, step, state, close, mcp)";
            return After::Reply(error_frame(code::UNKNOWN_TYPE, why, Map::new()));
        }
        other => return After::Reply(error_frame(code::UNKNOWN_TYPE, &format!("Unknown message type: {other}"), Map::new())),
    };
    match outcome {
        Ok(frame) => After::Reply(frame),
        Err(err) => {
            let frame = shape::call_error_frame(&err);
            // A call that broke the session ends it in the table too, even if MCP made it:
            // nobody may call it again.
            if state.openenv.end_if_broken(&session, &state.worker, &err) {
                After::ReplyAndEnd(frame)
            } else {
                After::Reply(frame)
            }
        }
    }
}

/// Answers with `frame`, then ends the socket if the request ended the session (a tool call
/// through MCP that broke it).
fn reply_unless_ended(session: &EnvSession, frame: Value) -> After {
    if session.is_ended() {
        After::ReplyAndEnd(frame)
    } else {
        After::Reply(frame)
    }
}

fn invalid(message: &str) -> Value {
    let errors = json!([{"type": "value_error", "loc": ["data"], "msg": message}]);
    error_frame(code::VALIDATION_ERROR, "Invalid message", Map::from_iter([("errors".to_string(), errors)]))
}
