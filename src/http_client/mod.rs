//! HTTP client for a `/call` server, whichever backend started it: async (reqwest), and
//! [`blocking`] for a thread that waits on its own call.

mod blocking;
mod routes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use blocking::{BlockingError, BlockingTransport, Request};
use crate::protocol::{CallRequestBody, CallSuccess, Health, MethodInfo, MethodList};

/// Extra time the client waits beyond a call's timeout, so the server's own 504 (which says what
/// was done to stop the work) arrives before the client gives up. Under a fork bomb on a loaded
/// 2-core machine the 504 came up to 4.3 s late, hence 10 s.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// Talks to one server. Cheap to clone: the connection pool is shared.
#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    /// For blocking calls; `None` for a base URL it cannot serve (HTTPS).
    blocking: Option<Arc<BlockingTransport>>,
    base: String,
    token: Option<String>,
    /// Routes of an HTTP-based environment found to take `GET` only (see [`routes`]).
    get_routes: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
}

/// The token never appears in logs, even of `{:?}`.
impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient").field("base", &self.base).field("token", &self.token.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl ServerClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str, token: Option<String>) -> Result<ServerClient> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| Error::connection(base, source))?;
        let base = base.trim_end_matches('/').to_string();
        let blocking = BlockingTransport::for_base(&base).map(Arc::new);
        Ok(ServerClient { http, blocking, base, token, get_routes: Default::default() })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `POST /call`.
    pub async fn call(&self, method: &str, args: &[Value], kwargs: &Value, timeout: Duration) -> Result<Value> {
        require_object_kwargs(method, kwargs)?;
        let url = format!("{}/call", self.base);
        let body = CallRequestBody { method, args, kwargs, timeout: Some(timeout.as_secs_f64()) };
        let request = self.authorized(self.http.post(&url).json(&body)).timeout(timeout + TIMEOUT_GRACE);
        let response = request.send().await.map_err(|source| self.transport_error(method, timeout, source))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| self.transport_error(method, timeout, source))?;
        decode_call_answer(method, &url, status, &bytes)
    }

    /// Whether [`call_blocking`](Self::call_blocking) can reach this server.
    pub fn can_block(&self) -> bool {
        self.blocking.is_some()
    }

    /// `POST /call` on the calling thread, which blocks until the answer (see [`blocking`] for
    /// why). `interrupted` runs every 50 ms while waiting; returning true abandons the call with
    /// [`Error::Interrupted`]. For a server [`can_block`](Self::can_block) refuses, an
    /// [`Error::InvalidInput`].
    pub fn call_blocking(&self, method: &str, args: &[Value], kwargs: &Value, timeout: Duration, interrupted: &mut dyn FnMut() -> bool) -> Result<Value> {
        require_object_kwargs(method, kwargs)?;
        let body = serde_json::to_vec(&CallRequestBody { method, args, kwargs, timeout: Some(timeout.as_secs_f64()) })
            .map_err(|err| Error::InvalidArguments { method: method.into(), detail: err.to_string() })?;
        // The server answers by the call's own timeout; the grace lets its 504 arrive first.
        let (url, status, bytes) = self.send_blocking(method, Outgoing { verb: "POST", path: "/call", body: Some(&body) }, timeout, timeout + TIMEOUT_GRACE, interrupted)?;
        decode_call_answer(method, &url, status, &bytes)
    }

    /// A blocking request for `method`, answered within `wait`: the URL, status and body.
    fn send_blocking(&self, method: &str, outgoing: Outgoing<'_>, timeout: Duration, wait: Duration, interrupted: &mut dyn FnMut() -> bool) -> Result<(String, u16, Vec<u8>)> {
        let Outgoing { verb, path, body } = outgoing;
        let Some(transport) = &self.blocking else {
            return Err(Error::InvalidInput(format!("{} cannot be called from a blocking thread (only http:// URLs can)", self.base)));
        };
        if self.token.as_deref().is_some_and(|token| token.bytes().any(|b| b.is_ascii_control())) {
            return Err(Error::InvalidInput("the token contains control characters, which no HTTP header can carry".into()));
        }
        let request = Request { method: verb, path, token: self.token.as_deref(), body, deadline: Instant::now() + wait };
        let (status, bytes) = transport.send(&request, interrupted).map_err(|err| match err {
            BlockingError::Timeout => self.no_answer(method, timeout),
            BlockingError::Interrupted => Error::Interrupted(method.to_string()),
            BlockingError::Transport(source) => Error::Connection { url: self.base.clone(), source: Box::new(source) },
        })?;
        Ok((format!("{}{path}", self.base), status, bytes))
    }

    fn no_answer(&self, method: &str, timeout: Duration) -> Error {
        let waited = (timeout + TIMEOUT_GRACE).as_secs_f64();
        Error::Timeout {
            method: method.to_string(),
            detail: super::error::timeout_detail(method, format!("no answer within {waited:.1} s (the server did not answer either)")),
        }
    }

    fn transport_error(&self, method: &str, timeout: Duration, source: reqwest::Error) -> Error {
        if source.is_timeout() {
            return self.no_answer(method, timeout);
        }
        Error::connection(&self.base, source)
    }

    /// An authorized `GET` of `path`: the URL, the status and the body.
    async fn get(&self, path: &str) -> Result<(String, u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let response = self
            .authorized(self.http.get(&url))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|source| Error::connection(&self.base, source))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| Error::connection(&self.base, source))?;
        Ok((url, status, bytes.to_vec()))
    }

    /// `GET /methods`.
    pub async fn methods(&self) -> Result<Vec<MethodInfo>> {
        let (url, status, bytes) = self.get("/methods").await?;
        if status != 200 {
            return Err(Error::from_answer("methods", &url, status, &bytes));
        }
        let list: MethodList = serde_json::from_slice(&bytes)
            .map_err(|err| Error::Protocol { url, status, detail: format!("not a method list: {err}") })?;
        Ok(list.methods)
    }

    /// `GET /health`, any answer: its status code. For readiness of servers that may not have
    /// such a route.
    pub async fn probe(&self, timeout: Duration) -> Result<u16> {
        let url = format!("{}/health", self.base);
        let response = self.http.get(&url).timeout(timeout).send().await.map_err(|source| Error::connection(&self.base, source))?;
        Ok(response.status().as_u16())
    }

    /// Waits until a web server of an environment's own answers `GET /health` below 500 (it may
    /// have no such route, or one of another shape), polling quickly at first; gives up early
    /// once `gone` says the server cannot come any more. On failure: the last probe's error.
    pub async fn wait_answering(&self, deadline: Instant, gone: &(dyn Fn() -> bool + Sync)) -> Result<()> {
        let mut delay = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            let err = match self.probe(left.min(Duration::from_secs(5))).await {
                Ok(status) if status < 500 => return Ok(()),
                Ok(status) => Error::Protocol { url: format!("{}/health", self.base), status, detail: "the server answers with an error".into() },
                Err(err) => err,
            };
            if gone() || Instant::now() + delay > deadline {
                return Err(err);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// `GET /health`: `Ok(None)` when ready, `Ok(Some(health))` when the server answers but is not.
    pub async fn health(&self, timeout: Duration) -> Result<Option<Health>> {
        let url = format!("{}/health", self.base);
        let response = self.http.get(&url).timeout(timeout).send().await.map_err(|source| Error::connection(&self.base, source))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(None);
        }
        let bytes = response.bytes().await.map_err(|source| Error::connection(&self.base, source))?;
        let health = serde_json::from_slice::<Health>(&bytes).unwrap_or_else(|_| Health {
            status: format!("HTTP {status}"),
            detail: Some(String::from_utf8_lossy(&bytes).chars().take(300).collect()),
            error: None,
        });
        Ok(Some(health))
    }
}

/// What a blocking request sends: the verb, the path and a JSON body, if any.
struct Outgoing<'a> {
    verb: &'a str,
    path: &'a str,
    body: Option<&'a [u8]>,
}

/// Refuses kwargs that are not a JSON object: `/call` passes them on as `**kwargs`.
fn require_object_kwargs(method: &str, kwargs: &Value) -> Result<()> {
    if !kwargs.is_object() {
        return Err(Error::InvalidArguments { method: method.into(), detail: "kwargs must be a JSON object".into() });
    }
    Ok(())
}

/// The result of a `/call` answer, or the error it carries.
fn decode_call_answer(method: &str, url: &str, status: u16, bytes: &[u8]) -> Result<Value> {
    if status == 200 {
        let success: CallSuccess<Value> = serde_json::from_slice(bytes).map_err(|err| Error::Protocol {
            url: url.to_string(),
            status,
            detail: format!("the body is not {{\"status\", \"result\"}}: {err}"),
        })?;
        return Ok(success.result);
    }
    Err(Error::from_answer(method, url, status, bytes))
}
