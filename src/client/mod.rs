//! The client library: load environments, call them, clean them up.

pub mod docker;
mod environment;
mod error;
mod http;
mod lease;
mod options;
mod process;
mod registry;

pub mod blocking;

use std::time::{Duration, Instant};

pub use environment::EnvironmentWrapper;
pub use error::{Error, Result};
pub use http::ServerClient;
pub use lease::DEFAULT_LEASE;
pub use options::{ContainerLimits, LoadOptions, Mode, Source, DEFAULT_PIDS_LIMIT};
pub use process::ServerProgram;
pub use registry::{cleanup_all_environments, get_environment, list_active_environments, CleanupGuard};

use environment::Backend;
use process::{Launch, ProcessServer};

/// Starts (or connects to) an environment and waits until it is ready.
///
/// ```no_run
/// # async fn demo() -> rayfine::Result<()> {
/// let env = rayfine::load_env(rayfine::LoadOptions::folder("environments/echo")).await?;
/// println!("{}", env.call("echo", serde_json::json!({"text": "hi"})).await?);
/// # Ok(()) }
/// ```
pub async fn load_env(options: LoadOptions) -> Result<EnvironmentWrapper> {
    options.validate()?;
    registry::install_handlers();
    let name = options.display_name();
    let id = format!("{}-{}", slug(&name), random_hex(4)?);
    let env = match &options.source {
        Source::Url(url) => {
            let client = ServerClient::new(url, options.token.clone())?;
            wait_until_ready(&client, &name, options.startup_timeout).await?;
            EnvironmentWrapper::new(id, name, client, Backend::Remote, options.call_timeout, false)
        }
        Source::Folder(folder) => {
            if options.mode == Mode::Auto {
                warn_not_isolated();
            }
            let token = random_hex(32)?;
            let log_file = options.keep.then(|| kept_log_path(&id)).transpose()?;
            let (server, port) = ProcessServer::start(Launch {
                folder,
                name: &name,
                env_vars: &options.env_vars,
                token: &token,
                keep: log_file.as_deref(),
                startup_timeout: options.startup_timeout,
                program: options.server_program.as_deref(),
                lease: options.effective_lease(),
            })
            .await?;
            if let Some(lease) = options.effective_lease() {
                lease::hold(&id, std::net::SocketAddr::from(([127, 0, 0, 1], port)), Some(&token), lease);
            }
            let client = ServerClient::new(&format!("http://127.0.0.1:{port}"), Some(token))?;
            EnvironmentWrapper::new(id, name, client, Backend::Process(server), options.call_timeout, options.keep)
        }
        Source::Image(image) => {
            let token = random_hex(32)?;
            let started = docker::DockerServer::start(docker::DockerLaunch {
                image,
                env_id: &id,
                name: &name,
                env_vars: &options.env_vars,
                token: &token,
                keep: options.keep,
                startup_timeout: options.startup_timeout,
                limits: &options.limits,
                env_type: options.env_type,
                http_port: options.http_port,
                labels: &options.labels,
                lease: options.effective_lease(),
            })
            .await?;
            // The `/call` server takes renewals on its own port; a supervised HTTP-based one on
            // the supervisor's. The user's own HTTP server knows no token, so the client sends
            // it none.
            let renewals_at = match started.env_type {
                docker::EnvType::Function => Some(started.port),
                docker::EnvType::Http => started.lease_port,
            };
            if let (Some(lease), Some(port)) = (options.effective_lease(), renewals_at) {
                lease::hold(&id, std::net::SocketAddr::from(([127, 0, 0, 1], port)), Some(&token), lease);
            }
            let token = (started.env_type == docker::EnvType::Function).then_some(token);
            let client = ServerClient::new(&format!("http://127.0.0.1:{}", started.port), token)?;
            EnvironmentWrapper::new(id, name, client, Backend::Docker(started.server), options.call_timeout, options.keep)
        }
    };
    registry::register(env.clone());
    if let Some(container) = env.container_id() {
        // From now on the registry covers it (and leaves it alone at exit if it is kept).
        registry::untrack_container(container);
    }
    Ok(env)
}

/// Where a kept environment writes its log.
pub fn kept_log_path(id: &str) -> Result<std::path::PathBuf> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { context: format!("cannot create {}", dir.display()), source })?;
    Ok(dir.join(format!("{id}.log")))
}

/// Rayfine's folder for records of kept environments: `$XDG_STATE_HOME/rayfine`, else
/// `~/.local/state/rayfine`, else the temporary folder.
pub fn state_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("RAYFINE_STATE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return std::path::PathBuf::from(dir).join("rayfine");
    }
    match std::env::var_os("HOME") {
        Some(home) => std::path::PathBuf::from(home).join(".local/state/rayfine"),
        None => std::env::temp_dir().join("rayfine"),
    }
}

fn warn_not_isolated() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::warn!("process mode: environments run as local processes, not isolated from this machine"));
}

/// Polls `/health` quickly at first, then less often, until ready, failed, or out of time.
async fn wait_until_ready(client: &ServerClient, name: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(5);
    // What the last probe found: nothing answering at all, or a server not ready yet.
    enum Last {
        Unreachable(Error),
        NotReady(String),
    }
    let mut last;
    loop {
        match client.health(Duration::from_secs(5)).await {
            Ok(None) => return Ok(()),
            Ok(Some(health)) if health.status == crate::protocol::health_status::FAILED => {
                return Err(Error::StartFailed { name: name.into(), reason: health.detail.unwrap_or(health.status), logs: vec![] })
            }
            Ok(Some(health)) => last = Last::NotReady(health.detail.unwrap_or(health.status)),
            Err(err) => {
                tracing::debug!("{name} not answering yet: {err}");
                last = Last::Unreachable(err);
            }
        }
        if started.elapsed() + delay > timeout {
            return Err(match last {
                // Nothing ever answered: say so, rather than that something failed to start.
                Last::Unreachable(err) => err,
                Last::NotReady(why) => Error::StartFailed { name: name.into(), reason: format!("not ready after {:.0} s: {why}", timeout.as_secs_f64()), logs: vec![] },
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

fn slug(name: &str) -> String {
    let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' }).collect();
    let slug = slug.trim_matches('-');
    if slug.is_empty() { "env".into() } else { slug.chars().take(40).collect() }
}

/// `bytes` random bytes from the operating system, as hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|err| Error::Io { context: "cannot get random bytes".into(), source: std::io::Error::other(err.to_string()) })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
