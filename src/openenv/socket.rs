//! One OpenEnv session over a WebSocket (`/ws`), held by a task of its own.
//!
//! The task owns the socket, so the socket is read also while the caller is busy between steps
//! (an agent's model can think for minutes): the server's keepalive pings are answered then too.
//! Uvicorn closes a connection whose pings go unanswered for 40 s, and Rayfine's server reaps a
//! session it has not heard from for its idle timeout, so a client that reads only while it
//! waits for an answer would lose its session to either. Requests go to the task one at a time;
//! each gets the first text frame that follows it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long `close` waits for the server to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a socket could not be opened.
pub(super) enum OpenError {
    /// The server answered the upgrade with 404 or 405, or 403 as uvicorn does when the app has
    /// no WebSocket route: it has no `/ws` (OpenEnv's servers before 0.2.1, an older Rayfine), so
    /// the caller may use HTTP instead. (A wrong token is a 401.)
    NoRoute(u16),
    /// Anything else.
    Failed(Error),
}

/// An open session.
pub(super) struct Socket {
    url: String,
    /// Taken on close: the task sees the channel end and closes the socket.
    requests: Option<mpsc::Sender<Exchange>>,
    /// Why the session ended, once it has (set by the task, or by a timed-out request).
    ended: Arc<parking_lot::Mutex<Option<Ended>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Why a session ended: OpenEnv's error code (`CLOSED` when the socket just ended) and message.
#[derive(Debug, Clone)]
struct Ended {
    code: String,
    message: String,
}

/// One request and where its answer goes.
struct Exchange {
    text: String,
    reply: oneshot::Sender<std::result::Result<Value, Ended>>,
}

impl Socket {
    /// Opens `ws_url`, with the bearer token if given, within `within`.
    pub async fn open(ws_url: &str, token: Option<&str>, within: Duration) -> std::result::Result<Socket, OpenError> {
        let mut request = ws_url.into_client_request().map_err(|err| OpenError::Failed(Error::InvalidInput(format!("`{ws_url}` is not a WebSocket URL: {err}"))))?;
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().map_err(|_| OpenError::Failed(Error::InvalidInput("the token cannot be sent in an HTTP header".into())))?;
            request.headers_mut().insert("authorization", value);
        }
        let stream = match tokio::time::timeout(within, tokio_tungstenite::connect_async_with_config(request, Some(crate::protocol::ws_client_config()), false)).await {
            Err(_) => {
                let detail = format!("no WebSocket session at {ws_url} within {:.0} s", within.as_secs_f64());
                return Err(OpenError::Failed(Error::Timeout { method: "connect".into(), detail }));
            }
            Ok(Err(tungstenite::Error::Http(response))) if matches!(response.status().as_u16(), 403..=405) => return Err(OpenError::NoRoute(response.status().as_u16())),
            Ok(Err(tungstenite::Error::Http(response))) if response.status().as_u16() == 401 => return Err(OpenError::Failed(Error::Unauthorized { url: ws_url.into() })),
            Ok(Err(err)) => return Err(OpenError::Failed(connect_error(ws_url, err))),
            Ok(Ok((stream, _))) => stream,
        };
        let (requests, incoming) = mpsc::channel(1);
        let ended = Arc::new(parking_lot::Mutex::new(None));
        let task = tokio::spawn(serve(stream, incoming, ended.clone()));
        Ok(Socket { url: ws_url.to_string(), requests: Some(requests), ended, task })
    }

    /// The session's URL (`ws://.../ws`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `message` and returns the answer frame, within `timeout` (queueing included). A
    /// request that times out, or whose caller stops waiting (its future dropped), ends the
    /// session: the request may still run, and its answer would be taken for the next one's.
    pub async fn request(&self, method: &str, message: &Value, timeout: Duration) -> Result<Value> {
        let Some(requests) = self.requests.as_ref().filter(|_| self.ended.lock().is_none()) else { return Err(self.ended_error()) };
        let (reply, answer) = oneshot::channel();
        let exchange = Exchange { text: message.to_string(), reply };
        let mut abandoned = EndIfAbandoned { socket: self, method, armed: true };
        let outcome = tokio::time::timeout(timeout, async {
            requests.send(exchange).await.ok()?;
            answer.await.ok()
        })
        .await;
        abandoned.armed = false;
        match outcome {
            Ok(Some(Ok(value))) => Ok(value),
            Ok(Some(Err(end))) => Err(Error::Session { url: self.url.clone(), code: end.code, message: end.message }),
            Ok(None) => Err(self.ended_error()),
            Err(_) => {
                self.end(format!("the session was ended after `{method}` got no answer within {:.1} s", timeout.as_secs_f64()));
                Err(Error::Timeout { method: method.to_string(), detail: format!("`{method}` got no answer within {:.1} s; the session was ended", timeout.as_secs_f64()) })
            }
        }
    }

    /// Ends the session as OpenEnv's client does: a `close` message, then the close handshake.
    pub async fn close(mut self) {
        self.requests = None;
        if tokio::time::timeout(CLOSE_WAIT * 2, &mut self.task).await.is_err() {
            tracing::debug!("an OpenEnv session did not close within {} s", (CLOSE_WAIT * 2).as_secs());
        }
    }

    fn end(&self, why: String) {
        self.ended.lock().get_or_insert(Ended { code: "CLOSED".into(), message: why });
        self.task.abort();
    }

    fn ended_error(&self) -> Error {
        let ended = self.ended.lock().clone().unwrap_or_else(|| Ended { code: "CLOSED".into(), message: "the session has ended".into() });
        Error::Session { url: self.url.clone(), code: ended.code, message: ended.message }
    }
}

/// Ends the session when a request's caller stops waiting before the answer (see
/// [`Socket::request`]).
struct EndIfAbandoned<'a> {
    socket: &'a Socket,
    method: &'a str,
    armed: bool,
}

impl Drop for EndIfAbandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.socket.end(format!("the session was ended when the caller of `{}` stopped waiting for its answer", self.method));
        }
    }
}

impl Drop for Socket {
    /// A session dropped without `close` ends with its socket: the server sees the client go.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The session's task: one exchange at a time; in between, pings answered and the end noticed.
async fn serve(mut stream: Stream, mut requests: mpsc::Receiver<Exchange>, ended: Arc<parking_lot::Mutex<Option<Ended>>>) {
    // An error frame nobody asked for is why the server then closes (OpenEnv's capacity answer
    // comes right after the upgrade, before any request).
    let mut told: Option<Ended> = None;
    // The last answer, if it was an error about the request: the reason, if the server closes
    // the session right after it (Rayfine's server does after a step that overran its timeout).
    let mut failed_request: Option<Ended> = None;
    let closed = |told: &mut Option<Ended>, failed_request: &mut Option<Ended>, why: String| {
        told.take().or_else(|| failed_request.take().map(|e| Ended { code: e.code, message: format!("{} ({why})", e.message) })).unwrap_or(Ended { code: "CLOSED".into(), message: why })
    };
    let end = loop {
        tokio::select! {
            exchange = requests.recv() => {
                let Some(exchange) = exchange else {
                    close_politely(&mut stream).await;
                    break closed(&mut told, &mut failed_request, "the client closed the session".into());
                };
                if exchange.reply.is_closed() {
                    continue; // its caller stopped waiting before it was sent
                }
                failed_request = None;
                let answer = exchange_once(&mut stream, exchange.text).await.map_err(|why| closed(&mut told, &mut failed_request, why));
                // An answer that refuses the session (OpenEnv's capacity answer, a lost
                // instance) is also why the server closes it next.
                match answer.as_ref().ok().and_then(error_frame) {
                    Some(end) if ACTION_ERRORS.contains(&end.code.as_str()) => failed_request = Some(end),
                    Some(end) => told = Some(end),
                    None => {}
                }
                let failed = answer.as_ref().err().cloned();
                let _ = exchange.reply.send(answer);
                if let Some(end) = failed {
                    break end;
                }
            }
            frame = stream.next() => match frame {
                // tungstenite queues the pong as it reads a ping; flushing sends it now.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    let _ = stream.flush().await;
                }
                // An answer nobody asked for: nothing waits for it, but an error says why the
                // session is about to end.
                Some(Ok(Message::Text(text))) => {
                    if let Some(error) = serde_json::from_str(text.as_str()).ok().as_ref().and_then(error_frame) {
                        told = Some(error);
                    }
                }
                Some(Ok(Message::Binary(_))) => {}
                Some(Ok(Message::Close(frame))) => break closed(&mut told, &mut failed_request, closed_by_server(frame)),
                Some(Err(err)) => break closed(&mut told, &mut failed_request, format!("the connection failed: {err}")),
                None => break closed(&mut told, &mut failed_request, "the connection ended".into()),
            }
        }
    };
    ended.lock().get_or_insert(end);
}

/// OpenEnv's error codes about one request, after which the session goes on.
const ACTION_ERRORS: &[&str] = &["VALIDATION_ERROR", "EXECUTION_ERROR"];

/// The code and message of an error frame.
fn error_frame(frame: &Value) -> Option<Ended> {
    if frame.get("type")?.as_str()? != "error" {
        return None;
    }
    let data = frame.get("data")?;
    let field = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_string);
    Some(Ended { code: field("code").unwrap_or_else(|| "ERROR".into()), message: field("message").unwrap_or_default() })
}

/// Sends one request and reads until its answer: the next text frame.
async fn exchange_once(stream: &mut Stream, text: String) -> std::result::Result<Value, String> {
    stream.send(Message::text(text)).await.map_err(|err| format!("the request could not be sent: {err}"))?;
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).map_err(|err| format!("the server answered a frame that is not JSON: {err}")),
            Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame)),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("the connection failed: {err}")),
            None => return Err("the connection ended".to_string()),
        }
    }
}

/// OpenEnv's `close` message, then the close handshake, waiting a little for the server's side.
async fn close_politely(stream: &mut Stream) {
    let _ = stream.send(Message::text(r#"{"type":"close"}"#)).await;
    let _ = stream.close(None).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = stream.next().await {} }).await;
}

fn closed_by_server(frame: Option<tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(frame) if !frame.reason.is_empty() => format!("the server closed the session ({}: {})", u16::from(frame.code), frame.reason),
        Some(frame) => format!("the server closed the session ({})", u16::from(frame.code)),
        None => "the server closed the session".to_string(),
    }
}

fn connect_error(url: &str, err: tungstenite::Error) -> Error {
    match err {
        tungstenite::Error::Io(source) => Error::Connection { url: url.to_string(), source: Box::new(source) },
        tungstenite::Error::Http(response) => Error::Protocol { url: url.to_string(), status: response.status().as_u16(), detail: "the WebSocket upgrade was refused".into() },
        other => Error::Session { url: url.to_string(), code: "CONNECT_FAILED".into(), message: other.to_string() },
    }
}
