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
    /// Build an environment folder into a Docker image (two stages for function-based ones).
    Build(BuildArgs),
    /// Start an environment, print its methods, optionally call one, then clean up.
    Run(RunArgs),
    /// Call a method of a running environment (kept by `run --keep`, or a URL).
    Call(CallArgs),
    /// List the methods of a running environment.
    Methods(TargetArgs),
    /// List running environments: kept processes, and every container Rayfine started, on
    /// every host named.
    Ps(HostArgs),
    /// Stop kept environments and remove Rayfine's containers.
    Cleanup(CleanupArgs),
    /// Serve an environment's env.py over HTTP (the in-container server).
    Serve(ServeArgs),
    /// Measure call cost, throughput, start-up, fan-out, memory and builds, each beside its floor.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// The best this machine offers.
    Auto,
    /// A local server process (not isolated).
    Process,
    /// An image as a Swarm service, created on the first --host (a Swarm manager).
    Swarm,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Environment folder: env.py, usually a Dockerfile.
    pub folder: std::path::PathBuf,
    /// Image tag; a function-based environment also gets `<TAG>-base`.
    #[arg(short = 't', long = "tag")]
    pub tag: String,
    /// Build argument for the Dockerfile, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_arg: Vec<String>,
    /// Ignore the layer cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Base image: FROM of a folder without Dockerfile, BASE_IMAGE build argument otherwise.
    #[arg(long, env = "RAYFINE_BASE_IMAGE")]
    pub base_image: Option<String>,
    /// Build as this type instead of detecting it.
    #[arg(long, value_enum)]
    pub env_type: Option<EnvTypeArg>,
    /// The Dockerfile, when it is not FOLDER/Dockerfile (OpenEnv's: server/Dockerfile); a
    /// relative path is looked for in the current folder, then in FOLDER. The context is FOLDER.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EnvTypeArg {
    /// env.py's Actor or functions, served by Rayfine's /call server.
    Function,
    /// A web server of the environment's own; calls are POST /{method}.
    Http,
}

impl From<EnvTypeArg> for rayfine::EnvType {
    fn from(arg: EnvTypeArg) -> rayfine::EnvType {
        match arg {
            EnvTypeArg::Function => rayfine::EnvType::Function,
            EnvTypeArg::Http => rayfine::EnvType::Http,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Environment folder (with env.py), Docker image, or the URL of a running server.
    pub source: String,
    /// How to run it: a folder as a local process (`auto`, `process`), an image in Docker
    /// (`auto`) or as a Swarm service (`swarm`).
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
    #[arg(long = "startup-timeout", default_value = "120")]
    pub startup_timeout: String,
    /// Seconds the environment lives without hearing from this process (renewed four times per
    /// lease); 0: no lease. Default 60; kept environments have none.
    #[arg(long, value_name = "SECONDS")]
    pub lease: Option<String>,
    /// Bearer token, for a URL source.
    #[arg(long, env = "RAYFINE_REMOTE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub call: CallSpec,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Start this many replicas of an image, spread over the hosts by free capacity, and send
    /// the call to one of them (the least busy). With --keep, each is kept, labelled with the
    /// pool's id: `rayfine ps` shows it, `rayfine cleanup POOL-ID` removes them all.
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
}

/// The Docker engines to use (image sources, `ps`, `cleanup`).
#[derive(Debug, Args)]
pub struct HostArgs {
    /// A Docker engine: `local`, `unix:///path/docker.sock`, `tcp://host:port`, `ssh://user@host` (repeatable;
    /// default: those `RAYFINE_HOSTS` names, else this machine's). A remote engine's containers
    /// publish their ports on every address of that host: the token guards them.
    #[arg(long = "host", value_name = "ENGINE")]
    pub hosts: Vec<String>,
}

impl HostArgs {
    /// The engines named, else `RAYFINE_HOSTS`'s, else this machine's.
    pub fn resolve(&self) -> anyhow::Result<Vec<rayfine::DockerHost>> {
        let mut hosts = Vec::new();
        for text in &self.hosts {
            let host = rayfine::DockerHost::parse(text)?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(rayfine::DockerHost::given_or_default(hosts)?)
    }

    /// Whether any engine was named on the command line.
    pub fn given(&self) -> bool {
        !self.hosts.is_empty()
    }
}

/// Options of a container (image sources).
#[derive(Debug, Args)]
pub struct ContainerArgs {
    /// Serve the image as this type instead of what its label says.
    #[arg(long, value_enum)]
    pub env_type: Option<EnvTypeArg>,
    /// Port an HTTP-based image listens on inside the container.
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Memory limit, e.g. 512m or 2g.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most processes and threads in the container.
    #[arg(long, default_value_t = rayfine::DEFAULT_PIDS_LIMIT)]
    pub pids_limit: i64,
}

/// Parses a size like `512m`, `2g`, `1048576` into bytes.
pub fn byte_size(text: &str) -> anyhow::Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (digits, factor) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    match digits.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * (factor as f64) < 9e18 => Ok((n * factor as f64) as i64),
        _ => bail!("invalid size `{text}`: expected a number with an optional k, m or g suffix, e.g. 512m"),
    }
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
    #[arg(long, default_value = "600")]
    pub timeout: String,
    /// Call the route with GET, the arguments as query parameters (e.g. OpenEnv's `state`);
    /// without it, an HTTP-based environment's GET-only routes are found from its /openapi.json.
    #[arg(long)]
    pub get: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Id or name of a kept environment, or a server URL.
    pub target: String,
    /// Bearer token, for a URL target.
    #[arg(long, env = "RAYFINE_REMOTE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How the target is served: `function` (Rayfine's /call server) or `http` (a web server of
    /// its own; calls are `POST /{method}`). A URL is function-based unless told; a kept
    /// environment knows its type.
    #[arg(long, value_enum)]
    pub env_type: Option<EnvTypeArg>,
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
    /// Stop every kept environment and remove every container Rayfine started.
    #[arg(long)]
    pub all: bool,
    /// Remove containers whose owning process is gone (and that were not kept).
    #[arg(long)]
    pub orphans: bool,
    #[command(flatten)]
    pub hosts: HostArgs,
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

/// Seconds from a flag, checked; the message quotes what was typed (not a 300-digit number).
pub fn seconds(text: &str, flag: &str) -> anyhow::Result<Duration> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 && value <= MAX_SECONDS => Ok(Duration::from_secs_f64(value)),
        Ok(value) if value > MAX_SECONDS => bail!("{flag} {}: at most {MAX_SECONDS:.0} seconds (about 31 years)", shorten(text)),
        _ => bail!("{flag} must be a positive number of seconds, not `{}`", shorten(text)),
    }
}

/// Like [`seconds`], where 0 means "none".
pub fn seconds_or_zero(text: &str, flag: &str) -> anyhow::Result<Option<Duration>> {
    if text.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(None);
    }
    seconds(text, flag).map(Some)
}

/// The largest number of seconds a flag takes.
const MAX_SECONDS: f64 = 1e9;

/// What the user typed, cut short if it is long.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 24 {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(24).collect::<String>())
    }
}

impl Arguments {
    /// `--timeout`, checked.
    pub fn timeout(&self) -> anyhow::Result<Duration> {
        seconds(&self.timeout, "--timeout")
    }

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
