//! HTTP client for a `/call` server, whichever backend started it.

use std::time::Duration;

use serde_json::Value;

use super::error::{Error, Result};
use crate::protocol::{CallRequestBody, CallSuccess, Health, MethodInfo, MethodList};

/// Extra time the client waits beyond a call's timeout, so the server's own 504 (which says what
/// was done to stop the work) arrives before the client gives up.
const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Talks to one server. Cheap to clone: the connection pool is shared.
#[derive(Debug, Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ServerClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str, token: Option<String>) -> Result<ServerClient> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| Error::Connection { url: base.to_string(), source })?;
        Ok(ServerClient { http, base: base.trim_end_matches('/').to_string(), token })
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
        if !kwargs.is_object() {
            return Err(Error::InvalidArguments { method: method.into(), detail: "kwargs must be a JSON object".into() });
        }
        let url = format!("{}/call", self.base);
        let body = CallRequestBody { method, args, kwargs, timeout: Some(timeout.as_secs_f64()) };
        let request = self.authorized(self.http.post(&url).json(&body)).timeout(timeout + TIMEOUT_GRACE);
        let response = request.send().await.map_err(|source| self.transport_error(method, timeout, source))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| self.transport_error(method, timeout, source))?;
        if status == 200 {
            let success: CallSuccess<Value> = serde_json::from_slice(&bytes).map_err(|err| Error::Protocol {
                url: url.clone(),
                status,
                detail: format!("the body is not {{\"status\", \"result\"}}: {err}"),
            })?;
            return Ok(success.result);
        }
        Err(Error::from_answer(method, &url, status, &bytes))
    }

    fn transport_error(&self, method: &str, timeout: Duration, source: reqwest::Error) -> Error {
        if source.is_timeout() {
            return Error::Timeout {
                method: method.to_string(),
                detail: format!("no answer within {:.1} s (the server did not answer either)", (timeout + TIMEOUT_GRACE).as_secs_f64()),
            };
        }
        Error::Connection { url: self.base.clone(), source }
    }

    /// `GET /methods`.
    pub async fn methods(&self) -> Result<Vec<MethodInfo>> {
        let url = format!("{}/methods", self.base);
        let response = self
            .authorized(self.http.get(&url))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|source| Error::Connection { url: url.clone(), source })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| Error::Connection { url: url.clone(), source })?;
        if status != 200 {
            return Err(Error::from_answer("methods", &url, status, &bytes));
        }
        let list: MethodList = serde_json::from_slice(&bytes)
            .map_err(|err| Error::Protocol { url, status, detail: format!("not a method list: {err}") })?;
        Ok(list.methods)
    }

    /// `GET /health`: `Ok(None)` when ready, `Ok(Some(health))` when the server answers but is not.
    pub async fn health(&self, timeout: Duration) -> Result<Option<Health>> {
        let url = format!("{}/health", self.base);
        let response = self.http.get(&url).timeout(timeout).send().await.map_err(|source| Error::Connection { url: url.clone(), source })?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(None);
        }
        let bytes = response.bytes().await.map_err(|source| Error::Connection { url: url.clone(), source })?;
        let health = serde_json::from_slice::<Health>(&bytes).unwrap_or_else(|_| Health {
            status: format!("HTTP {status}"),
            detail: Some(String::from_utf8_lossy(&bytes).chars().take(300).collect()),
            error: None,
        });
        Ok(Some(health))
    }
}
