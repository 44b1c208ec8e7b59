//! [`OpenEnvClient`]: an OpenEnv environment from Rust, typed: `reset`, `step(action)`, `state`,
//! `close`, as OpenEnv's own `EnvClient` offers them to Python trainers.
//!
//! It speaks OpenEnv's wire format, so it drives Rayfine's server (whose environments with
//! `reset` and `step` are served to OpenEnv clients) and OpenEnv's own servers alike, such as an
//! OpenEnv image run as an HTTP-based environment. The session is a WebSocket to `/ws` (one
//! environment instance per session on the server, state kept between steps); a server without
//! `/ws` is spoken to over OpenEnv's HTTP routes (`POST /reset`, `POST /step`, `GET /state`),
//! which OpenEnv defines as stateless: each request may meet a fresh instance.
//!
//! The environment is started and ended as [`load_env`] does it (same options, timeouts, errors,
//! registry, cleanup at exit); the client ends it on [`close`](OpenEnvClient::close) when it
//! started it.
//!
//! ```no_run
//! # async fn demo() -> rayfine::Result<()> {
//! use rayfine::openenv::OpenEnvClient;
//! use serde_json::{json, Value};
//! let mut env = OpenEnvClient::<Value, Value>::from_docker_image("echo-openenv:latest").await?;
//! env.reset(json!({})).await?;
//! let result = env.step(&json!({"message": "hello"})).await?;
//! println!("{} (reward {:?}, done {})", result.observation, result.reward, result.done);
//! env.close().await?;
//! # Ok(()) }
//! ```

mod answer;
mod socket;

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

pub use answer::StepResult;
use answer::{error_from_frame, not_protocol, step_result};
use socket::{OpenError, Socket};

use crate::error::{Error, Result};
use crate::{load_env, EnvironmentWrapper, LoadOptions};

/// How long opening the WebSocket session may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket session if the server has `/ws`, else HTTP (the default).
    Auto,
    /// A WebSocket session at `/ws`, or an error.
    WebSocket,
    /// OpenEnv's stateless HTTP routes.
    Http,
}

/// An OpenEnv client for actions of type `A` and observations of type `O` (both
/// [`serde_json::Value`] for untyped use: see [`GenericOpenEnvClient`]).
pub struct OpenEnvClient<A, O> {
    env: EnvironmentWrapper,
    /// Whether this client started the environment, and so ends it on close.
    owns_env: bool,
    link: Link,
    _types: PhantomData<fn(&A) -> O>,
}

/// OpenEnv's `GenericEnvClient`: actions and observations as JSON.
pub type GenericOpenEnvClient = OpenEnvClient<Value, Value>;

enum Link {
    Socket(Socket),
    Http,
}

impl<A: Serialize, O: DeserializeOwned> OpenEnvClient<A, O> {
    /// Connects to the OpenEnv server at `url` (Rayfine's or OpenEnv's own), once it answers.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::load(LoadOptions::url(url), Transport::Auto).await
    }

    /// Starts `image` (a Rayfine-built image, or an OpenEnv image built with `rayfine build`) and
    /// opens a session on it; [`close`](Self::close) removes the container.
    pub async fn from_docker_image(image: &str) -> Result<Self> {
        Self::load(LoadOptions::image(image), Transport::Auto).await
    }

    /// Starts (or reaches) an environment as [`load_env`] does, with all its options, and opens a
    /// session on it; [`close`](Self::close) ends the environment too.
    pub async fn load(options: LoadOptions, transport: Transport) -> Result<Self> {
        let env = load_env(options).await?;
        match Self::attach(&env, transport).await {
            Ok(mut client) => {
                client.owns_env = true;
                Ok(client)
            }
            Err(err) => {
                if let Err(cleanup) = env.cleanup().await {
                    tracing::warn!("{} could not be cleaned up after its session failed to open: {cleanup}", env.name());
                }
                Err(err)
            }
        }
    }

    /// Opens a session on an environment loaded already; [`close`](Self::close) ends the session
    /// and leaves the environment running.
    pub async fn attach(env: &EnvironmentWrapper, transport: Transport) -> Result<Self> {
        let link = match transport {
            Transport::Http => Link::Http,
            Transport::WebSocket | Transport::Auto => match Socket::open(&session_url(env.url())?, env.token(), OPEN_TIMEOUT.min(env.call_timeout())).await {
                Ok(socket) => Link::Socket(socket),
                Err(OpenError::NoRoute(_)) if transport == Transport::Auto => Link::Http,
                Err(OpenError::NoRoute(status)) => {
                    let detail = "the server refused the WebSocket upgrade, as servers without a `/ws` route do; use Transport::Http".into();
                    return Err(Error::Protocol { url: session_url(env.url())?, status, detail });
                }
                Err(OpenError::Failed(err)) => return Err(err),
            },
        };
        Ok(OpenEnvClient { env: env.clone(), owns_env: false, link, _types: PhantomData })
    }

    /// The transport in use: [`Transport::WebSocket`] or [`Transport::Http`].
    pub fn transport(&self) -> Transport {
        match self.link {
            Link::Socket(_) => Transport::WebSocket,
            Link::Http => Transport::Http,
        }
    }

    /// The environment the session runs on.
    pub fn environment(&self) -> &EnvironmentWrapper {
        &self.env
    }

    /// Starts an episode; `options` are `reset`'s keyword arguments (`seed`, `episode_id`, ...),
    /// a JSON object or `null`.
    pub async fn reset(&mut self, options: Value) -> Result<StepResult<O>> {
        let options = match options {
            Value::Null => json!({}),
            Value::Object(map) => Value::Object(map),
            other => return Err(Error::InvalidArguments { method: "reset".into(), detail: format!("reset's options must be a JSON object, not {other}") }),
        };
        let envelope = match &self.link {
            Link::Socket(socket) => self.over_socket(socket, "reset", json!({"type": "reset", "data": options}), "observation").await?,
            Link::Http => self.env.post_route("reset", &options, self.env.call_timeout()).await?,
        };
        step_result(self.env.url(), "reset", envelope)
    }

    /// Takes one step with `action`.
    pub async fn step(&mut self, action: &A) -> Result<StepResult<O>> {
        let action = serde_json::to_value(action).map_err(|err| Error::InvalidArguments { method: "step".into(), detail: format!("the action cannot be sent as JSON: {err}") })?;
        let envelope = match &self.link {
            Link::Socket(socket) => self.over_socket(socket, "step", json!({"type": "step", "data": action}), "observation").await?,
            Link::Http => self.env.post_route("step", &json!({"action": action}), self.env.call_timeout()).await?,
        };
        step_result(self.env.url(), "step", envelope)
    }

    /// The environment's state (OpenEnv's `State`: `episode_id`, `step_count`, and what the
    /// environment adds).
    pub async fn state(&mut self) -> Result<Value> {
        match &self.link {
            Link::Socket(socket) => self.over_socket(socket, "state", json!({"type": "state"}), "state").await,
            Link::Http => self.env.call_get("state", json!({}), None).await,
        }
    }

    /// [`state`](Self::state), decoded into `S`.
    pub async fn state_as<S: DeserializeOwned>(&mut self) -> Result<S> {
        let state = self.state().await?;
        serde_json::from_value(state).map_err(|source| Error::Decode { method: "state".into(), source })
    }

    /// Ends the session (the server closes the session's environment instance), and the
    /// environment if this client started it.
    pub async fn close(self) -> Result<()> {
        if let Link::Socket(socket) = self.link {
            socket.close().await;
        }
        if self.owns_env {
            self.env.cleanup().await?;
        }
        Ok(())
    }

    /// One request over the session; the answer's `data` if its `type` is `expected`.
    async fn over_socket(&self, socket: &Socket, method: &str, message: Value, expected: &str) -> Result<Value> {
        let answer = match socket.request(method, &message, self.env.call_timeout()).await {
            Ok(answer) => answer,
            // A session lost with its socket may be an environment that has stopped: say so, with
            // its last log lines.
            Err(err @ Error::Session { .. }) => return Err(self.env.stopped_or(err).await),
            Err(err) => return Err(err),
        };
        let url = socket.url();
        let kind = answer.get("type").and_then(Value::as_str).unwrap_or_default();
        let data = answer.get("data").cloned().unwrap_or(Value::Null);
        match kind {
            "error" => Err(error_from_frame(url, method, &data)),
            kind if kind == expected => Ok(data),
            other => Err(not_protocol(url, format!("`{method}` was answered with a frame of type `{other}`, not `{expected}`"))),
        }
    }
}

impl<A, O> std::fmt::Debug for OpenEnvClient<A, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.link {
            Link::Socket(_) => "websocket",
            Link::Http => "http",
        };
        f.debug_struct("OpenEnvClient").field("env", &self.env).field("transport", &transport).field("owns_env", &self.owns_env).finish()
    }
}

/// The session URL of a server: `ws://` for `http://`, path `/ws`. Rayfine is built without TLS
/// (its environments are reached on loopback or through a tunnel), so `https://` is refused.
pub fn session_url(base: &str) -> Result<String> {
    let base = base.trim_end_matches('/');
    match base.strip_prefix("http://") {
        Some(rest) => Ok(format!("ws://{rest}/ws")),
        None if base.starts_with("https://") => Err(Error::InvalidInput(format!("`{base}`: this build of Rayfine has no TLS; reach the server over http:// (a tunnel)"))),
        None => Err(Error::InvalidInput(format!("`{base}` is not an http:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_url_is_the_servers_ws_route() {
        assert_eq!(session_url("http://127.0.0.1:8000").unwrap(), "ws://127.0.0.1:8000/ws");
        assert_eq!(session_url("http://host/env/").unwrap(), "ws://host/env/ws");
        assert!(session_url("https://host").unwrap_err().to_string().contains("no TLS"));
        assert!(session_url("ftp://host").is_err());
    }
}
