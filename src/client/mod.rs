//! The client library: load environments, call them, clean them up.

pub(crate) mod cleanup;
mod environment;
mod lease;
mod options;
mod running;
mod sigterm;

pub mod blocking;

use std::sync::Arc;
use std::time::Instant;

pub use cleanup::{cleanup_all_environments, end_all_environments_now, leave_signals_to_the_host, CleanupGuard};
pub use environment::{get_environment, list_active_environments, EnvironmentWrapper};
pub use lease::{block_termination_signals, DEFAULT_LEASE};
pub use sigterm::end_environments_on_sigterm;
pub use options::{ContainerLimits, LoadOptions, Mode, Source, DEFAULT_PIDS_LIMIT};

use crate::backend::docker::DockerLaunch;
use crate::backend::process::ProcessLaunch;
use crate::backend::remote::RemoteLaunch;
use crate::backend::swarm::SwarmLaunch;
use crate::backend::{Launch, StartSpec};
use crate::docker::placement::Placed;
use crate::error::{Error, Result};
use crate::http_client::ServerClient;
use running::Running;

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
    let placed = match options.source {
        Source::Image(_) => crate::docker::placement::place_for(options.mode, &options.docker_hosts()?, 1).await?.pop(),
        _ => None,
    };
    start_env(options, placed).await
}

/// Starts what `options` name, an image on the engine placement chose (validated and placed by
/// the caller), and registers it.
pub(crate) async fn start_env(options: LoadOptions, placed: Option<Placed>) -> Result<EnvironmentWrapper> {
    cleanup::install_handlers();
    let name = options.display_name();
    let id = format!("{}-{}", slug(&name), crate::random::hex(4)?);
    let token = crate::random::hex(32)?;
    let spec = StartSpec {
        env_id: &id,
        name: &name,
        env_vars: &options.env_vars,
        token: &token,
        keep: options.keep,
        lease: options.effective_lease(),
        // One deadline for the whole start, every step of every backend included.
        deadline: Instant::now() + options.startup_timeout,
        startup_timeout: options.startup_timeout,
    };
    let (backend, endpoint) = match &options.source {
        Source::Url(url) => RemoteLaunch { url, token: options.token.as_deref(), env_type: options.env_type.unwrap_or(crate::detect::EnvType::Function) }.start(&spec).await?,
        Source::Folder(folder) => {
            if options.mode == Mode::Auto {
                warn_not_isolated();
            }
            let log_file = options.keep.then(|| kept_log_path(&id)).transpose()?;
            ProcessLaunch { folder, program: options.server_program.as_deref(), log_file: log_file.as_deref() }.start(&spec).await?
        }
        Source::Image(image) if options.mode == Mode::Swarm => {
            let manager = placed.as_ref().map_or(&crate::docker::DockerHost::Local, |placed| &placed.host);
            SwarmLaunch { image, limits: &options.limits, env_type: options.env_type, labels: &options.labels, manager }.start(&spec).await?
        }
        Source::Image(image) => {
            let host = placed.as_ref().map_or(&crate::docker::DockerHost::Local, |placed| &placed.host);
            let launch = DockerLaunch { image, limits: &options.limits, env_type: options.env_type, http_port: options.http_port, labels: &options.labels, host };
            launch.start(&spec).await?
        }
    };
    if let Some(addr) = endpoint.lease_at {
        if let Some(lease) = spec.lease {
            // Renewals carry the token even where calls do not: a supervisor checks it.
            lease::hold(&id, addr, Some(&token), lease);
        }
    }
    let client = ServerClient::new(&endpoint.url, endpoint.token)?;
    let running = Arc::new(Running::new(id, name, client, endpoint.env_type, backend, options.call_timeout, options.keep));
    cleanup::register(running.clone());
    Ok(EnvironmentWrapper::new(running))
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

fn slug(name: &str) -> String {
    let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' }).collect();
    let slug = slug.trim_matches('-');
    if slug.is_empty() { "env".into() } else { slug.chars().take(40).collect() }
}
