//! Command-line flags, parsed by clap, and their conversion into validated values.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use rayfine::server::ServerConfig;

/// Run containerized environments for agentic RL and call them like local objects.
#[derive(Debug, Parser)]
#[command(name = "rayfine", version, about)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an environment, print its methods, optionally call one, then clean up.
    Run(RunArgs),
    /// Call a method of a running environment (kept by `run --keep`, or a URL).
    Call(CallArgs),
    /// List the methods of a running environment.
    Methods(TargetArgs),
    /// List running environments kept by `run --keep`.
    Ps,
    /// Stop kept environments.
    Cleanup(CleanupArgs),
    /// Serve an environment's env.py over HTTP (the in-container server).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// The best this machine offers.
    Auto,
    /// A local server process (not isolated).
    Process,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Environment folder (with env.py) or the URL of a running server.
    pub source: String,
    /// How to run a folder.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,
    /// Environment variable for the environment, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Name to find the environment by.
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the environment running; stop it later with `rayfine cleanup`.
    #[arg(long)]
    pub keep: bool,
    /// Seconds the start may take.
    #[arg(long = "startup-timeout", default_value_t = 120.0)]
    pub startup_timeout: f64,
    /// Bearer token, for a URL source.
    #[arg(long, env = "RAYFINE_REMOTE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub call: CallSpec,
}

#[derive(Debug, Args)]
pub struct CallSpec {
    /// Method to call.
    #[arg(long = "call", value_name = "METHOD")]
    pub method: Option<String>,
    #[command(flatten)]
    pub arguments: Arguments,
}

#[derive(Debug, Args)]
pub struct Arguments {
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// One keyword argument, key=value; the value is JSON when it parses, else a string.
    #[arg(short = 'a', long = "arg", value_name = "KEY=VALUE")]
    pub arg: Vec<String>,
    /// Seconds the call may take.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Id or name of a kept environment, or a server URL.
    pub target: String,
    /// Bearer token, for a URL target.
    #[arg(long, env = "RAYFINE_REMOTE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Method to call.
    pub method: String,
    #[command(flatten)]
    pub arguments: Arguments,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Ids or names to stop.
    pub targets: Vec<String>,
    /// Stop every kept environment.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServerConfig,
}

/// Parses `KEY=VALUE`.
pub fn key_value(text: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => bail!("invalid {flag} `{text}`: expected KEY=VALUE"),
    }
}

/// Seconds from a flag, checked.
pub fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0 && value < 1e9) {
        bail!("{flag} must be a positive number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

impl Arguments {
    /// The keyword arguments: `--kwargs` merged with every `--arg`.
    pub fn kwargs(&self) -> anyhow::Result<Value> {
        let mut map = match &self.kwargs {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text).context("invalid --kwargs: not JSON")? {
                Value::Object(map) => map,
                other => bail!("invalid --kwargs: expected a JSON object, got {}", kind_of(&other)),
            },
        };
        for item in &self.arg {
            let (key, raw) = key_value(item, "--arg")?;
            let value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
