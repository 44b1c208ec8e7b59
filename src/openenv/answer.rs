//! What an OpenEnv server answers, in either transport, as Rayfine's types: an observation
//! envelope (`{observation, reward, done}`) as a [`StepResult`], an error frame as an [`Error`].

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// What `reset` and `step` return: the environment's observation, its reward and whether the
/// episode is over, as OpenEnv's `StepResult`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult<O> {
    /// The observation, decoded into the client's type.
    pub observation: O,
    /// The reward; `None` when the environment gave none (OpenEnv's `reward=None`). A boolean
    /// reward counts as 1.0 or 0.0.
    pub reward: Option<f64>,
    /// Whether the episode has ended.
    pub done: bool,
}

/// The step result an envelope carries. `url` and `method` name where it came from in errors.
pub(super) fn step_result<O: DeserializeOwned>(url: &str, method: &str, envelope: Value) -> Result<StepResult<O>> {
    let Value::Object(mut envelope) = envelope else {
        return Err(not_protocol(url, format!("`{method}` answered {}, not an {{observation, reward, done}} object", short(&envelope))));
    };
    let Some(observation) = envelope.remove("observation") else {
        return Err(not_protocol(url, format!("`{method}` answered without an observation: {}", short(&Value::Object(envelope)))));
    };
    let reward = match envelope.remove("reward") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(flag)) => Some(if flag { 1.0 } else { 0.0 }),
        Some(Value::Number(number)) => number.as_f64(),
        Some(other) => return Err(not_protocol(url, format!("`{method}` answered a reward that is not a number: {}", short(&other)))),
    };
    let done = match envelope.remove("done") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(done)) => done,
        Some(other) => return Err(not_protocol(url, format!("`{method}` answered a `done` that is not a boolean: {}", short(&other)))),
    };
    let observation = serde_json::from_value(observation).map_err(|source| Error::Decode { method: method.to_string(), source })?;
    Ok(StepResult { observation, reward, done })
}

/// The error an error frame (`{"type": "error", "data": {"message", "code", ...}}`) stands for:
/// a refused action is [`Error::InvalidArguments`], the environment's own exception
/// [`Error::Raised`], anything about the session itself [`Error::Session`].
pub(super) fn error_from_frame(url: &str, method: &str, data: &Value) -> Error {
    let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let message = text("message");
    match data.get("code").and_then(Value::as_str).unwrap_or("UNKNOWN") {
        "VALIDATION_ERROR" => {
            // OpenEnv's `errors` are pydantic's: each says what was wrong where.
            let details: Vec<String> = data.get("errors").and_then(Value::as_array).map(|errors| errors.iter().map(validation_error).collect()).unwrap_or_default();
            let detail = if details.is_empty() { message } else { format!("{message}: {}", details.join("; ")) };
            Error::InvalidArguments { method: method.to_string(), detail }
        }
        "EXECUTION_ERROR" => {
            let kind = Some(text("exception_type")).filter(|k| !k.is_empty()).unwrap_or_else(|| "an error".to_string());
            Error::Raised { method: method.to_string(), kind, message, traceback: text("traceback") }
        }
        code => Error::Session { url: url.to_string(), code: code.to_string(), message },
    }
}

/// One pydantic error (`{"loc": [...], "msg": ...}`) as `loc: msg`.
fn validation_error(error: &Value) -> String {
    let message = error.get("msg").and_then(Value::as_str).unwrap_or("invalid");
    let location: Vec<String> = error.get("loc").and_then(Value::as_array).map(|loc| loc.iter().map(|part| part.as_str().map_or_else(|| part.to_string(), str::to_string)).collect()).unwrap_or_default();
    if location.is_empty() {
        message.to_string()
    } else {
        format!("{}: {message}", location.join("."))
    }
}

/// A WebSocket answer that is not OpenEnv's protocol (the connection itself was a 101).
pub(super) fn not_protocol(url: &str, detail: String) -> Error {
    Error::Protocol { url: url.to_string(), status: 101, detail }
}

/// A value as short text, for messages.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 200 {
        format!("{}...", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_envelope_becomes_a_typed_step_result() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Echo {
            echoed_message: String,
        }
        let result: StepResult<Echo> = step_result("u", "step", json!({"observation": {"echoed_message": "hi"}, "reward": 0.2, "done": true})).unwrap();
        assert_eq!(result, StepResult { observation: Echo { echoed_message: "hi".into() }, reward: Some(0.2), done: true });
        let result: StepResult<Value> = step_result("u", "reset", json!({"observation": {}, "reward": null})).unwrap();
        assert_eq!((result.reward, result.done), (None, false));
        let result: StepResult<Value> = step_result("u", "step", json!({"observation": {}, "reward": true, "done": false})).unwrap();
        assert_eq!(result.reward, Some(1.0));
    }

    #[test]
    fn a_malformed_envelope_is_refused_naming_the_problem() {
        for (envelope, says) in [
            (json!([1]), "not an {observation"),
            (json!({"reward": 1}), "without an observation"),
            (json!({"observation": {}, "reward": "high"}), "reward that is not a number"),
            (json!({"observation": {}, "done": 1}), "not a boolean"),
        ] {
            let err = step_result::<Value>("ws://h/ws", "step", envelope).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let err = step_result::<String>("u", "step", json!({"observation": {"a": 1}})).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    #[test]
    fn error_frames_become_typed_errors() {
        let refused = error_from_frame("u", "step", &json!({"code": "VALIDATION_ERROR", "message": "Invalid message", "errors": [{"loc": ["data", "message"], "msg": "field required"}]}));
        assert!(matches!(&refused, Error::InvalidArguments { detail, .. } if detail == "Invalid message: data.message: field required"), "{refused}");
        let raised = error_from_frame("u", "step", &json!({"code": "EXECUTION_ERROR", "message": "boom", "exception_type": "ValueError", "traceback": "tb"}));
        assert!(raised.is_raised() && raised.to_string().contains("ValueError: boom"), "{raised}");
        let full = error_from_frame("ws://h/ws", "reset", &json!({"code": "CAPACITY_REACHED", "message": "Server at capacity"}));
        assert!(matches!(&full, Error::Session { code, .. } if code == "CAPACITY_REACHED"), "{full}");
    }
}
