//! What a container looks like, decided from the image and the launch before anything is
//! created: how the environment is served, which ports to publish, whether a supervisor runs the
//! image's own command, where the secrets go, and so the engine's [`ContainerSpec`].

use std::collections::{BTreeMap, HashMap};

use super::DockerLaunch;
use crate::backend::StartSpec;
use crate::build::ContextArchive;
use crate::detect::{EnvType, DEFAULT_HTTP_PORT};
use crate::docker::engine::{ContainerSpec, ImageFacts};
use crate::error::{Error, Result};
use crate::labels;
use crate::protocol::{Secrets, SECRETS_FILE_ENV, SECRETS_PATH, SECRETS_STDIN_ENV, TOKEN_ENV};

/// The port Rayfine's server listens on inside its container.
pub(crate) const SERVER_PORT: u16 = 8000;

/// Where the supervisor is copied to in an HTTP-based environment's container.
const SUPERVISOR_PATH: &str = "/rayfine/rayfine-server";

/// The name of environment `env_id`'s container: what a start removes by when it never
/// learnt the id.
pub(crate) fn container_name(env_id: &str) -> String {
    format!("rayfine-{env_id}")
}

/// How a container is made.
pub(super) struct Shape {
    /// How the environment is served.
    pub env_type: EnvType,
    /// The port the environment's server listens on inside.
    pub container_port: u16,
    /// Attach stdin, which the server or supervisor watches for the owner's end.
    pub watch_stdin: bool,
    /// The static server that runs an HTTP-based environment's own command (`--supervise`).
    supervisor: Option<Supervisor>,
    /// Token and variables kept out of the container's configuration: in the secrets file, or
    /// on stdin when `secrets_on_stdin`.
    hidden_secrets: bool,
    /// The secrets go as the first line of the attach connection's stdin, not in a copied file.
    secrets_on_stdin: bool,
    /// A second port to publish, for a supervisor's lease renewals.
    pub lease_port: Option<u16>,
}

/// The static server, to run an HTTP-based environment's command under `--supervise`.
struct Supervisor {
    /// The static `rayfine-server`, copied into the container before it starts.
    binary: Vec<u8>,
    /// `rayfine-server --supervise -- <the image's command>`.
    entrypoint: Vec<String>,
}

impl Shape {
    /// Decides the shape: an explicit type wins, then the image's label; an image Rayfine did not
    /// build is assumed to speak the `/call` protocol (an affinetes image does).
    pub fn decide(launch: &DockerLaunch<'_>, spec: &StartSpec<'_>, image: &ImageFacts) -> Result<Shape> {
        let env_type = match launch.env_type {
            Some(env_type) => env_type,
            None => image.labels.get(labels::ENV_TYPE).map(|v| v.parse()).transpose()?.unwrap_or(EnvType::Function),
        };
        let container_port = match env_type {
            EnvType::Function => SERVER_PORT,
            EnvType::Http => launch.http_port.or_else(|| image.labels.get(labels::HTTP_PORT).and_then(|p| p.parse().ok())).unwrap_or(DEFAULT_HTTP_PORT),
        };
        let supervisor = match env_type {
            EnvType::Http if !spec.keep => supervisor_for(launch.image, image.command.clone()),
            _ => None,
        };
        let watch_stdin = !spec.keep && (env_type == EnvType::Function || supervisor.is_some());
        // The token and the variables go in a file wherever Rayfine's server reads them: the
        // `/call` server of an image this version built, and the supervisor of an HTTP-based one
        // (which then holds the lease). Older images and affinetes' get environment variables.
        let reads_file = image.labels.get(labels::READS_SECRETS_FILE).is_some_and(|v| v == "true");
        let hidden_secrets = (env_type == EnvType::Function && reads_file) || supervisor.is_some();
        // A kept container keeps the file: `docker restart` runs its server again, with no owner
        // on stdin to hand it the secrets a second time.
        let reads_stdin = image.labels.get(labels::READS_SECRETS_STDIN).is_some_and(|v| v == "true");
        let secrets_on_stdin = hidden_secrets && env_type == EnvType::Function && watch_stdin && reads_stdin;
        let lease_port = (supervisor.is_some() && spec.lease.is_some()).then_some(crate::server::SUPERVISOR_LEASE_PORT);
        Ok(Shape { env_type, container_port, watch_stdin, supervisor, hidden_secrets, secrets_on_stdin, lease_port })
    }

    /// Files to copy in before the start (the secrets, the supervisor), as one tar archive.
    pub fn files(&self, spec: &StartSpec<'_>) -> Result<Option<Vec<u8>>> {
        let secrets_file = self.hidden_secrets && !self.secrets_on_stdin;
        if !secrets_file && self.supervisor.is_none() {
            return Ok(None);
        }
        let mut files = ContextArchive::new();
        if secrets_file {
            files.add_bytes(SECRETS_PATH.trim_start_matches('/'), &secrets_json(spec)?, 0o444)?;
        }
        if let Some(supervisor) = &self.supervisor {
            files.add_bytes(SUPERVISOR_PATH.trim_start_matches('/'), &supervisor.binary, 0o755)?;
        }
        files.finish().map(Some)
    }

    /// The line to write on the container's stdin before it starts, when the secrets go there.
    pub fn stdin_secrets(&self, spec: &StartSpec<'_>) -> Result<Option<Vec<u8>>> {
        if !self.secrets_on_stdin {
            return Ok(None);
        }
        let mut line = secrets_json(spec)?;
        line.push(b'\n');
        Ok(Some(line))
    }

    /// The engine's description of the container.
    pub fn container_spec(&self, launch: &DockerLaunch<'_>, spec: &StartSpec<'_>) -> ContainerSpec {
        let env_type = self.env_type;
        let mut env: Vec<String> = Vec::new();
        if self.hidden_secrets {
            env.push(if self.secrets_on_stdin { format!("{SECRETS_STDIN_ENV}=true") } else { format!("{SECRETS_FILE_ENV}={SECRETS_PATH}") });
            let (settings, _) = split_settings(spec.env_vars);
            env.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
        } else {
            env.extend(spec.env_vars.iter().map(|(k, v)| format!("{k}={v}")));
            if env_type == EnvType::Function {
                env.push(format!("{TOKEN_ENV}={}", spec.token));
            }
        }
        // Read by the server of a function-based environment and by the supervisor of an HTTP one.
        if self.watch_stdin {
            env.push("RAYFINE_EXIT_ON_STDIN_EOF=true".into());
        }
        if let Some(lease) = spec.lease.filter(|_| env_type == EnvType::Function || self.lease_port.is_some()) {
            env.push(format!("RAYFINE_LEASE={}", lease.as_secs_f64()));
        }
        if let Some(lease_port) = self.lease_port {
            env.push(format!("RAYFINE_LEASE_PORT={lease_port}"));
            env.push(format!("RAYFINE_LEASE_START_GRACE={}", spec.startup_timeout.as_secs_f64()));
        }
        if env_type == EnvType::Function {
            env.push(format!("RUST_LOG={}", std::env::var("RAYFINE_SERVER_LOG").unwrap_or_else(|_| "warn".into())));
        }
        let container_labels = environment_labels(launch.labels, spec, env_type);
        let limits = launch.limits;
        ContainerSpec {
            name: container_name(spec.env_id),
            image: launch.image.to_string(),
            env,
            labels: container_labels,
            // Replacing the entrypoint drops the image's cmd, which the supervisor's entrypoint holds.
            entrypoint: self.supervisor.as_ref().map(|s| s.entrypoint.clone()),
            cmd: None,
            published: std::iter::once(self.container_port).chain(self.lease_port).collect(),
            watch_stdin: self.watch_stdin,
            // A container that exits (its owner died, its lease lapsed) removes itself.
            auto_remove: !spec.keep,
            network_disabled: false,
            no_new_privileges: true,
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: limits.pids,
        }
    }
}

/// The labels of an environment's container (or service): the caller's, then Rayfine's, which
/// win: managed, owner, version, type, id, name, kept.
pub(crate) fn environment_labels(caller: &BTreeMap<String, String>, spec: &StartSpec<'_>, env_type: EnvType) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = caller.clone().into_iter().collect();
    all.extend(labels::owned_by_this_process());
    all.extend([
        (labels::VERSION.to_string(), labels::RAYFINE_VERSION.to_string()),
        (labels::ENV_TYPE.to_string(), env_type.as_str().to_string()),
        (labels::ENV_ID.to_string(), spec.env_id.to_string()),
        (labels::NAME.to_string(), spec.name.to_string()),
        (labels::KEEP.to_string(), spec.keep.to_string()),
    ]);
    all
}

/// The [`Secrets`] of a start as JSON: the token and the environment's own variables.
fn secrets_json(spec: &StartSpec<'_>) -> Result<Vec<u8>> {
    let (_, secret_env) = split_settings(spec.env_vars);
    let secrets = Secrets { token: Some(spec.token.to_string()), env: secret_env };
    serde_json::to_vec(&secrets).map_err(|err| Error::InvalidInput(format!("cannot encode the secrets: {err}")))
}

/// Splits the variables given for a container into the server's own settings (`RAYFINE_*`,
/// `RUST_LOG`), which stay in its configuration where the server reads them, and the rest, which
/// are the environment's and may be secrets.
pub(crate) fn split_settings(vars: &BTreeMap<String, String>) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    vars.iter().map(|(k, v)| (k.clone(), v.clone())).partition(|(k, _)| k.starts_with("RAYFINE_") || k == "RUST_LOG")
}

/// The supervisor for `command`, or None (with a warning saying what that means) when there is
/// no command or no static server to supervise it with.
fn supervisor_for(image: &str, command: Vec<String>) -> Option<Supervisor> {
    let unsupervised = |why: String| {
        tracing::warn!("{image}: {why}; the container is removed by cleanup, on exit and on signals, but not if this process is killed by SIGKILL (`rayfine cleanup --orphans` removes it then)");
        None
    };
    if command.is_empty() {
        return unsupervised("the image names no command".into());
    }
    let binary = match crate::programs::locate(None).and_then(|path| {
        std::fs::read(&path).map_err(|source| Error::Io { context: format!("cannot read {}", path.display()), source })
    }) {
        Ok(binary) => binary,
        Err(err) => return unsupervised(format!("no static server to supervise it with ({err})")),
    };
    let entrypoint = [SUPERVISOR_PATH, "--supervise", "--"].into_iter().map(String::from).chain(command).collect();
    Some(Supervisor { binary, entrypoint })
}
