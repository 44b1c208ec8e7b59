//! `reset`, `step` and `state` as OpenEnv means them, on a session's instance or the default one:
//! the one place that turns OpenEnv's requests into worker calls and their results into OpenEnv's
//! shapes, for the WebSocket, the HTTP routes and MCP alike.

use std::time::Duration;

use serde_json::Value;

use super::shape::{self, Envelope};
use crate::server::worker::{CallError, CallOptions, Worker};

/// The worker and the call timeout every call here needs.
#[derive(Clone)]
pub struct Caller {
    /// The worker.
    pub worker: Worker,
    /// The server's `--call-timeout`.
    pub timeout: Option<Duration>,
}

impl Caller {
    /// Calls `method` on `instance` with the raw `kwargs` object and `options`' extras, and parses
    /// its result.
    async fn call(&self, method: &str, kwargs: &str, instance: Option<u64>, lenient: bool, action: Option<&str>) -> Result<Value, CallError> {
        let options = CallOptions { instance, lenient, action };
        let raw = self.worker.call_with(method, "[]", kwargs, &options, self.timeout).await?;
        serde_json::from_str(raw.get()).map_err(|err| CallError::NotSerializable(format!("the worker's result is not JSON: {err}")))
    }

    /// `reset(**kwargs)`, passing only the keywords its signature takes (`seed`, `episode_id` and
    /// whatever else a client sends are dropped unless declared), as OpenEnv does.
    pub async fn reset(&self, instance: Option<u64>, kwargs: &Value) -> Result<Envelope, CallError> {
        Ok(Envelope::from_result(self.call("reset", &kwargs.to_string(), instance, true, None).await?))
    }

    /// `step(action)`: the action goes to a parameter named `action` if `step` has one, else its
    /// members are `step`'s keyword arguments. `extra` (HTTP's `timeout_s`, `request_id`, ...)
    /// reaches `step` only if it takes them.
    pub async fn step(&self, instance: Option<u64>, action: &Value, extra: &Value) -> Result<Envelope, CallError> {
        let action = action.to_string();
        Ok(Envelope::from_result(self.call("step", &extra.to_string(), instance, true, Some(&action)).await?))
    }

    /// The environment's `state()` if it has one, completed with the server's own progress.
    pub async fn state(&self, instance: Option<u64>, has_state: bool, episode_id: Option<&str>, step_count: u64) -> Result<Value, CallError> {
        let own = if has_state { Some(self.call("state", "{}", instance, true, None).await?) } else { None };
        Ok(shape::state(own, episode_id, step_count))
    }

    /// Calls a tool (any public method) with `arguments`, strictly: a tool's caller means every
    /// argument it sends.
    pub async fn tool(&self, instance: Option<u64>, name: &str, arguments: &Value) -> Result<Value, CallError> {
        self.call(name, &arguments.to_string(), instance, false, None).await
    }
}

/// Whether the environment speaks OpenEnv: it has `reset` and `step`.
pub fn is_openenv(worker: &Worker) -> Result<bool, CallError> {
    Ok(worker.has_method("reset")? && worker.has_method("step")?)
}
