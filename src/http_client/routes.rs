//! Calls to an HTTP-based environment: a web server of its own (FastAPI, Flask, an OpenEnv app),
//! whose routes are its methods.
//!
//! A call is `POST /{method}` with the keyword arguments as the JSON body. Some routes take `GET`
//! only (OpenEnv's `/state`, `/schema`, `/metadata`): those are called with the arguments as query
//! parameters, when asked for ([`ServerClient::call_http_get`]) or when learned. A `POST` answered
//! 405 did not run, so it is safe to make again: when the server's `/openapi.json` says the route
//! takes `GET` and not `POST`, the call is made with `GET`, and later calls of that route go
//! straight there.

use std::time::Duration;

use serde_json::Value;

use super::{Outgoing, ServerClient};
use crate::error::{Error, Result};
use crate::protocol::MethodInfo;

/// How long the description is waited for when a route's verb is learned.
const OPENAPI_WAIT: Duration = Duration::from_secs(30);

impl ServerClient {
    /// `POST /{method}` with the kwargs as the JSON body: how an HTTP-based environment is
    /// called. A 2xx answer's JSON body is the result (an empty body is `null`, text a string).
    /// A route that takes `GET` only is called with `GET` (see the module's doc).
    pub async fn call_http(&self, method: &str, kwargs: &Value, timeout: Duration) -> Result<Value> {
        check_route_name(method)?;
        if self.is_get_route(method) {
            return self.call_http_get(method, kwargs, timeout).await;
        }
        let url = format!("{}/{}", self.base, percent_encode_path(method));
        let request = self.authorized(self.http.post(&url).json(kwargs)).timeout(timeout);
        let response = request.send().await.map_err(|source| self.transport_error(method, timeout, source))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| self.transport_error(method, timeout, source))?;
        if status == 405 && self.learn_get_route(method).await {
            return self.call_http_get(method, kwargs, timeout).await;
        }
        decode_http_answer("POST", method, &url, status, &bytes)
    }

    /// `GET /{method}` with the kwargs as query parameters: a string as it is, an array as the
    /// key repeated, anything else as its JSON text (`true`, `3`), the form FastAPI, Flask and
    /// most frameworks read.
    pub async fn call_http_get(&self, method: &str, kwargs: &Value, timeout: Duration) -> Result<Value> {
        check_route_name(method)?;
        let url = format!("{}/{}{}", self.base, percent_encode_path(method), query_string(method, kwargs)?);
        let request = self.authorized(self.http.get(&url)).timeout(timeout);
        let response = request.send().await.map_err(|source| self.transport_error(method, timeout, source))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|source| self.transport_error(method, timeout, source))?;
        decode_http_answer("GET", method, &url, status, &bytes)
    }

    /// [`call_http`](Self::call_http) on the calling thread, as
    /// [`call_blocking`](Self::call_blocking) does `/call`.
    pub fn call_http_blocking(&self, method: &str, kwargs: &Value, timeout: Duration, interrupted: &mut dyn FnMut() -> bool) -> Result<Value> {
        check_route_name(method)?;
        let path = format!("/{}", percent_encode_path(method));
        if !self.is_get_route(method) {
            let body = serde_json::to_vec(kwargs).map_err(|err| Error::InvalidArguments { method: method.into(), detail: err.to_string() })?;
            let (url, status, bytes) = self.send_blocking(method, Outgoing { verb: "POST", path: &path, body: Some(&body) }, timeout, timeout, interrupted)?;
            if status != 405 || !self.learn_get_route_blocking(method, interrupted) {
                return decode_http_answer("POST", method, &url, status, &bytes);
            }
        }
        let path = format!("{path}{}", query_string(method, kwargs)?);
        let (url, status, bytes) = self.send_blocking(method, Outgoing { verb: "GET", path: &path, body: None }, timeout, timeout, interrupted)?;
        decode_http_answer("GET", method, &url, status, &bytes)
    }

    /// The operations an HTTP-based environment's `/openapi.json` describes, as methods.
    pub async fn openapi_methods(&self) -> Result<Vec<MethodInfo>> {
        let (url, status, bytes) = self.get("/openapi.json").await?;
        if status != 200 {
            return Err(Error::Protocol { url, status, detail: "the server offers no OpenAPI description, so its methods cannot be listed".into() });
        }
        let spec: Value = serde_json::from_slice(&bytes).map_err(|err| Error::Protocol { url: url.clone(), status, detail: format!("not JSON: {err}") })?;
        Ok(methods_from_openapi(&spec))
    }

    fn is_get_route(&self, method: &str) -> bool {
        self.get_routes.lock().contains(method)
    }

    /// Whether the server's description says `method` takes `GET` only; remembered if so.
    async fn learn_get_route(&self, method: &str) -> bool {
        match self.get("/openapi.json").await {
            Ok((_, 200, bytes)) => self.remember_if_get_only(method, &bytes),
            _ => false,
        }
    }

    fn learn_get_route_blocking(&self, method: &str, interrupted: &mut dyn FnMut() -> bool) -> bool {
        match self.send_blocking(method, Outgoing { verb: "GET", path: "/openapi.json", body: None }, OPENAPI_WAIT, OPENAPI_WAIT, interrupted) {
            Ok((_, 200, bytes)) => self.remember_if_get_only(method, &bytes),
            _ => false,
        }
    }

    fn remember_if_get_only(&self, method: &str, spec: &[u8]) -> bool {
        let get_only = serde_json::from_slice::<Value>(spec).is_ok_and(|spec| takes_get_only(&spec, method));
        if get_only {
            self.get_routes.lock().insert(method.to_string());
        }
        get_only
    }
}

/// Whether the description has `GET /{method}` and no `POST` there.
fn takes_get_only(spec: &Value, method: &str) -> bool {
    let operations = spec.get("paths").and_then(|paths| paths.get(format!("/{method}")));
    operations.is_some_and(|ops| ops.get("get").is_some() && ops.get("post").is_none())
}

/// Refuses a method name that would not stay one route of an HTTP-based environment.
fn check_route_name(method: &str) -> Result<()> {
    if method.is_empty() || method.starts_with('/') || method.contains("..") || method.contains(['?', '#']) {
        return Err(Error::InvalidInput(format!("`{method}` is not a method name")));
    }
    Ok(())
}

/// `method` as a path: bytes other than unreserved characters and `/` percent-encoded, as a URL
/// parser would.
pub(super) fn percent_encode_path(method: &str) -> String {
    percent_encode(method, b"-._~/")
}

/// `text` with every byte but ASCII letters, digits and `keep` percent-encoded.
fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The kwargs as a query string (`?a=1&b=x`), empty when there are none; `null` values are left
/// out, as a parameter not given.
fn query_string(method: &str, kwargs: &Value) -> Result<String> {
    let Some(map) = kwargs.as_object() else {
        return Err(Error::InvalidArguments { method: method.into(), detail: "kwargs must be a JSON object".into() });
    };
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut pairs = Vec::new();
    for (key, value) in map {
        let values: Vec<&Value> = match value {
            Value::Null => continue,
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for value in values {
            pairs.push(format!("{}={}", percent_encode(key, b"-._~"), percent_encode(&text(value), b"-._~")));
        }
    }
    Ok(if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) })
}

/// The result of an HTTP-based environment's answer (JSON, or its text), or the error it carries.
fn decode_http_answer(verb: &str, method: &str, url: &str, status: u16, bytes: &[u8]) -> Result<Value> {
    if !(200..300).contains(&status) {
        return Err(Error::from_http_answer(verb, method, url, status, bytes));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())))
}

/// One method per `POST` path without path parameters, and per such path that takes `GET` only
/// (its endpoint says `GET /path`). The signature lists the request body's properties (when its
/// schema is inline or a `$ref` to a component), or a `GET` route's query parameters.
fn methods_from_openapi(spec: &Value) -> Vec<MethodInfo> {
    let resolve = |schema: &Value| -> Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .strip_prefix("#/")
                .map(|path| path.split('/').fold(spec, |node, key| node.get(key).unwrap_or(&Value::Null)).clone())
                .unwrap_or(Value::Null),
            None => schema.clone(),
        }
    };
    let mut methods = Vec::new();
    let Some(paths) = spec.get("paths").and_then(Value::as_object) else { return methods };
    for (path, operations) in paths {
        if path.contains('{') || path == "/" {
            continue;
        }
        let (operation, schema, endpoint) = match (operations.get("post"), operations.get("get")) {
            (Some(post), _) => (post, post.pointer("/requestBody/content/application~1json/schema").map(resolve).unwrap_or(Value::Null), path.clone()),
            (None, Some(get)) => (get, query_schema(get), format!("GET {path}")),
            (None, None) => continue,
        };
        let mut names: Vec<String> = schema.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default();
        let required: Vec<&str> = schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        names.sort_by_key(|name| !required.contains(&name.as_str()));
        let signature = format!("({})", names.iter().map(|n| if required.contains(&n.as_str()) { n.clone() } else { format!("{n}=...") }).collect::<Vec<_>>().join(", "));
        let doc = operation.get("summary").or_else(|| operation.get("description")).and_then(Value::as_str).unwrap_or_default();
        methods.push(MethodInfo {
            name: path.trim_start_matches('/').to_string(),
            signature,
            source: "http".into(),
            endpoint,
            doc: doc.to_string(),
            is_async: false,
            input_schema: (!schema.is_null()).then(|| schema.clone()),
        });
    }
    methods.sort_by(|a, b| a.name.cmp(&b.name));
    methods
}

/// A `GET` operation's query parameters as one object schema.
fn query_schema(operation: &Value) -> Value {
    let parameters: Vec<&Value> =
        operation.get("parameters").and_then(Value::as_array).map(|p| p.iter().filter(|p| p.get("in").and_then(Value::as_str) == Some("query")).collect()).unwrap_or_default();
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for parameter in parameters {
        let Some(name) = parameter.get("name").and_then(Value::as_str) else { continue };
        properties.insert(name.to_string(), parameter.get("schema").cloned().unwrap_or(Value::Object(Default::default())));
        if parameter.get("required").and_then(Value::as_bool) == Some(true) {
            required.push(Value::String(name.to_string()));
        }
    }
    serde_json::json!({"type": "object", "properties": properties, "required": required})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_name_becomes_a_path_a_url_parser_would_accept() {
        assert_eq!(percent_encode_path("evaluate"), "evaluate");
        assert_eq!(percent_encode_path("v1/score it?"), "v1/score%20it%3F");
        assert!(check_route_name("../admin").is_err() && check_route_name("").is_err());
    }

    #[test]
    fn openapi_operations_become_methods_and_get_only_routes_say_so() {
        let spec = serde_json::json!({
            "paths": {
                "/evaluate": {"post": {"summary": "Score a task",
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Req"}}}}}},
                "/items/{id}": {"post": {}},
                "/state": {"get": {"summary": "Current state", "parameters": [{"name": "verbose", "in": "query", "schema": {"type": "boolean"}}]}},
                "/both": {"get": {}, "post": {}},
            },
            "components": {"schemas": {"Req": {"properties": {"task_id": {}, "seed": {}}, "required": ["task_id"]}}}
        });
        let methods = methods_from_openapi(&spec);
        let names: Vec<&str> = methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["both", "evaluate", "state"]);
        assert_eq!((methods[0].endpoint.as_str(), methods[2].endpoint.as_str()), ("/both", "GET /state"));
        assert_eq!(methods[1].signature, "(task_id, seed=...)");
        assert_eq!(methods[1].doc, "Score a task");
        assert_eq!(methods[2].signature, "(verbose=...)");
        assert!(takes_get_only(&spec, "state") && !takes_get_only(&spec, "both") && !takes_get_only(&spec, "evaluate") && !takes_get_only(&spec, "nope"));
    }

    #[test]
    fn kwargs_become_a_query_string_frameworks_read() {
        let query = query_string("m", &serde_json::json!({"a b": "x&y", "n": 3, "flag": true, "ids": [1, "two"], "gone": null})).unwrap();
        assert_eq!(query, "?a%20b=x%26y&flag=true&ids=1&ids=two&n=3");
        assert_eq!(query_string("m", &serde_json::json!({})).unwrap(), "");
        assert!(query_string("m", &serde_json::json!([1])).is_err());
    }
}
