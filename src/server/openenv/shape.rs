//! OpenEnv's shapes, made from what a Rayfine environment returns: the observation envelope of
//! `reset` and `step`, the state, the error frames, the schemas.
//!
//! Rayfine environments return plain JSON (dicts, dataclasses, pydantic models), not OpenEnv's
//! typed `Observation`, so the envelope is read off the result by one rule (see
//! [`Envelope::from_result`]); an environment written for OpenEnv, whose observations carry
//! `reward`, `done` and `metadata` fields, comes out exactly as OpenEnv would send it.

use serde_json::{json, Map, Value};

use super::super::worker::CallError;
use crate::protocol::MethodInfo;

/// OpenEnv's answer to `reset` and `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The observation, without `reward` and `done`.
    pub observation: Value,
    /// The reward, `null` when the result has none.
    pub reward: Value,
    /// Whether the episode is over.
    pub done: bool,
    /// Extra information; sent only when not empty.
    pub metadata: Map<String, Value>,
}

impl Envelope {
    /// Reads the envelope off a method's result:
    /// - an object with an `observation` member: that is the observation; `reward`, `done` and
    ///   `metadata` come from their members, and any other member (an `episode_id`, an `info`)
    ///   goes into the metadata, so nothing the environment returned is lost;
    /// - any other object is the observation itself, minus `reward` and `done`, which move to the
    ///   top level; its `metadata` stays inside and is copied out, as OpenEnv does;
    /// - anything else is wrapped as `{"result": value}`.
    pub fn from_result(result: Value) -> Envelope {
        let Value::Object(mut fields) = result else {
            return Envelope { observation: json!({"result": result}), reward: Value::Null, done: false, metadata: Map::new() };
        };
        let reward = fields.remove("reward").unwrap_or(Value::Null);
        let done = fields.remove("done").is_some_and(|done| truthy(&done));
        if let Some(observation) = fields.remove("observation") {
            let mut metadata = match fields.remove("metadata") {
                Some(Value::Object(metadata)) => metadata,
                _ => observation.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default(),
            };
            metadata.extend(fields);
            return Envelope { observation, reward, done, metadata };
        }
        let metadata = fields.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        Envelope { observation: Value::Object(fields), reward, done, metadata }
    }

    /// The WebSocket form: `metadata` only when there is some.
    pub fn into_ws(self) -> Value {
        let mut data = json!({"observation": self.observation, "reward": self.reward, "done": self.done});
        if !self.metadata.is_empty() {
            data["metadata"] = Value::Object(self.metadata);
        }
        data
    }

    /// The HTTP form: `metadata` always, `null` when empty (OpenEnv's response model).
    pub fn into_http(self) -> Value {
        let metadata = if self.metadata.is_empty() { Value::Null } else { Value::Object(self.metadata) };
        json!({"observation": self.observation, "reward": self.reward, "done": self.done, "metadata": metadata})
    }
}

/// Python's truth for the JSON values a `done` may be.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The state to send: the environment's own `state()` result, completed with the server's
/// `episode_id` and `step_count` where it lacks them (OpenEnv's `State` always has both).
pub fn state(result: Option<Value>, episode_id: Option<&str>, step_count: u64) -> Value {
    let mut fields = match result {
        Some(Value::Object(fields)) => fields,
        Some(other) => Map::from_iter([("state".to_string(), other)]),
        None => Map::new(),
    };
    fields.entry("episode_id").or_insert_with(|| episode_id.map_or(Value::Null, |id| Value::String(id.to_string())));
    fields.entry("step_count").or_insert_with(|| Value::from(step_count));
    Value::Object(fields)
}

/// OpenEnv's error codes (`WSErrorCode`).
pub mod code {
    /// The frame is not JSON.
    pub const INVALID_JSON: &str = "INVALID_JSON";
    /// The message's `type` is missing or unknown.
    pub const UNKNOWN_TYPE: &str = "UNKNOWN_TYPE";
    /// The message or the action does not validate (arguments that do not bind).
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    /// The environment raised.
    pub const EXECUTION_ERROR: &str = "EXECUTION_ERROR";
    /// Every session slot is taken; the connection is closed.
    pub const CAPACITY_REACHED: &str = "CAPACITY_REACHED";
    /// The Actor's constructor failed; the connection is closed.
    pub const FACTORY_ERROR: &str = "FACTORY_ERROR";
    /// The session cannot go on (its instance is lost, the worker is gone); the connection is
    /// closed.
    pub const SESSION_ERROR: &str = "SESSION_ERROR";
}

/// An error frame: `{"type": "error", "data": {"message", "code", ...extra}}`.
pub fn error_frame(code: &str, message: &str, extra: Map<String, Value>) -> Value {
    let mut data = Map::from_iter([("message".to_string(), json!(message)), ("code".to_string(), json!(code))]);
    data.extend(extra);
    json!({"type": "error", "data": data})
}

/// The error frame for a failed call (whether the session ends with it is
/// [`super::sessions::breaks_session`]'s to say).
pub fn call_error_frame(err: &CallError) -> Value {
    match err {
        CallError::InvalidArguments(message) => {
            let errors = json!([{"type": "value_error", "loc": [], "msg": message}]);
            error_frame(code::VALIDATION_ERROR, "Invalid message", Map::from_iter([("errors".to_string(), errors)]))
        }
        CallError::Raised(info) => {
            let extra = Map::from_iter([("exception_type".to_string(), json!(info.kind)), ("traceback".to_string(), json!(info.traceback))]);
            error_frame(code::EXECUTION_ERROR, &info.message, extra)
        }
        CallError::NotFound { .. } | CallError::NotSerializable(_) | CallError::Timeout { .. } => error_frame(code::EXECUTION_ERROR, &err.to_string(), Map::new()),
        CallError::Unavailable(_) | CallError::WorkerLost(_) | CallError::InstanceLost(_) => error_frame(code::SESSION_ERROR, &err.to_string(), Map::new()),
    }
}

/// `GET /schema`: the action's schema from `step`'s signature (its `action` parameter's, if it has
/// one), and open schemas for what Rayfine cannot know of (observations are whatever `reset` and
/// `step` return).
pub fn schema(methods: &[MethodInfo]) -> Value {
    let step_schema = methods.iter().find(|m| m.name == "step").and_then(|m| m.input_schema.clone());
    let action = match step_schema {
        Some(schema) => match schema.pointer("/properties/action") {
            Some(action) if schema.pointer("/properties").and_then(Value::as_object).is_some_and(|p| p.len() == 1) => action.clone(),
            _ => schema,
        },
        None => json!({"type": "object"}),
    };
    let observation = json!({"type": "object", "additionalProperties": true});
    let state = json!({
        "type": "object",
        "additionalProperties": true,
        "properties": {
            "episode_id": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
            "step_count": {"type": "integer", "minimum": 0, "default": 0}
        }
    });
    json!({"action": action, "observation": observation, "state": state, "reset_observation": observation})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_observation_gives_up_reward_and_done_and_shares_its_metadata() {
        let result = json!({"echoed_message": "hi", "message_length": 2, "metadata": {"step": 1}, "reward": 0.2, "done": false});
        let envelope = Envelope::from_result(result);
        assert_eq!(
            envelope.into_ws(),
            json!({"observation": {"echoed_message": "hi", "message_length": 2, "metadata": {"step": 1}}, "reward": 0.2, "done": false, "metadata": {"step": 1}})
        );
        let empty = Envelope::from_result(json!({"x": 1, "metadata": {}}));
        assert_eq!(empty.clone().into_ws(), json!({"observation": {"x": 1, "metadata": {}}, "reward": null, "done": false}), "empty metadata is not sent over WS");
        assert_eq!(empty.into_http()["metadata"], Value::Null, "but HTTP always has the key");
    }

    #[test]
    fn a_nested_observation_keeps_the_other_members_as_metadata() {
        let result = json!({"episode_id": "e1", "observation": {"position": [0, 1]}, "reward": -0.01, "done": true, "info": {"steps": 3}});
        let envelope = Envelope::from_result(result);
        assert_eq!(envelope.observation, json!({"position": [0, 1]}));
        assert_eq!((envelope.reward, envelope.done), (json!(-0.01), true));
        assert_eq!(Value::Object(envelope.metadata), json!({"episode_id": "e1", "info": {"steps": 3}}));
    }

    #[test]
    fn other_results_are_wrapped_and_done_follows_python_truth() {
        assert_eq!(Envelope::from_result(json!(3)).into_ws(), json!({"observation": {"result": 3}, "reward": null, "done": false}));
        assert!(Envelope::from_result(json!({"done": 1})).done);
        assert!(!Envelope::from_result(json!({"done": null})).done);
    }

    #[test]
    fn state_is_completed_with_the_servers_progress() {
        assert_eq!(state(None, Some("ep"), 2), json!({"episode_id": "ep", "step_count": 2}));
        assert_eq!(state(Some(json!({"step_count": 7, "x": 1})), None, 2), json!({"episode_id": null, "step_count": 7, "x": 1}));
    }

    #[test]
    fn the_action_schema_is_steps_action_parameter_or_all_its_parameters() {
        let method = |schema: Value| MethodInfo {
            name: "step".into(),
            signature: String::new(),
            source: String::new(),
            endpoint: String::new(),
            doc: String::new(),
            is_async: false,
            input_schema: Some(schema),
        };
        let typed = json!({"type": "object", "properties": {"action": {"type": "object", "title": "A"}}, "required": ["action"]});
        assert_eq!(schema(&[method(typed)])["action"], json!({"type": "object", "title": "A"}));
        let flat = json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]});
        assert_eq!(schema(&[method(flat.clone())])["action"], flat);
    }
}
