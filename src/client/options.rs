//! What `load_env` is asked to start, and how.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::docker::DockerHost;
use crate::error::{Error, Result};

/// Where the environment comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An environment folder (holding `env.py`), run by a local server process.
    Folder(PathBuf),
    /// A server already running elsewhere (Rayfine's or affinetes'); cleanup only disconnects.
    Url(String),
    /// A Docker image (built by `rayfine build`, or any image serving `/call` or HTTP), run as a
    /// container.
    Image(String),
}

/// Refuses at once what is not an `http(s)://host[:port][/path]` URL, naming what is wrong.
fn validate_url(text: &str) -> Result<()> {
    let url = reqwest::Url::parse(text).map_err(|err| Error::InvalidInput(format!("`{text}` is not a valid URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::InvalidInput(format!("`{text}`: only http:// and https:// URLs name an environment server")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::InvalidInput(format!("`{text}` names no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::InvalidInput(format!("`{text}`: a server URL takes no query or fragment")));
    }
    Ok(())
}

impl Source {
    /// Reads a source from what a user typed: an `http(s)://` URL or an existing folder.
    pub fn parse(text: &str) -> Result<Source> {
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Url(text.trim_end_matches('/').to_string()));
        }
        let path = PathBuf::from(text);
        if path.is_dir() {
            return Ok(Source::Folder(path));
        }
        if path.is_file() && path.file_name().is_some_and(|n| n == "env.py") {
            return Ok(Source::Folder(path.parent().map(PathBuf::from).unwrap_or_default()));
        }
        let parent_exists = path.parent().is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
        let looks_like_path = text.starts_with(['.', '/', '~']) || text.ends_with('/') || path.exists() || parent_exists;
        if !looks_like_path && crate::docker::validate_reference(text).is_ok() {
            return Ok(Source::Image(text.to_string()));
        }
        Err(Error::InvalidInput(format!(
            "`{text}` is neither an environment folder (no such directory), an image name, nor an http:// URL"
        )))
    }
}

/// Resource limits of a container. Unset ones are the engine's defaults, except the number of
/// processes, which is capped so a fork bomb in an environment cannot take the machine down.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerLimits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPUs, e.g. `1.5`.
    pub cpus: Option<f64>,
    /// Most processes and threads the container may hold.
    pub pids: Option<i64>,
}

impl Default for ContainerLimits {
    fn default() -> ContainerLimits {
        ContainerLimits { memory_bytes: None, cpus: None, pids: Some(DEFAULT_PIDS_LIMIT) }
    }
}

/// Default cap on processes and threads per container: far above what hundreds of calls in
/// flight need (a sync call holds one thread), far below what hurts the host.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// The lowest pids limit accepted: the server's threads, the worker and its first threads.
pub const MIN_PIDS_LIMIT: i64 = 32;

/// How a folder is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The best mode this machine offers.
    #[default]
    Auto,
    /// A server child process on 127.0.0.1: no isolation, no Docker needed.
    Process,
    /// An image as a Swarm service on the first host named (a Swarm manager), which schedules
    /// it on one of its nodes.
    Swarm,
}

/// Options of [`load_env`](super::load_env).
#[derive(Clone)]
pub struct LoadOptions {
    /// What to load.
    pub source: Source,
    /// How to run it.
    pub mode: Mode,
    /// Environment variables for the environment (API keys, settings). Never logged.
    pub env_vars: BTreeMap<String, String>,
    /// A name to find it by; defaults to the folder's name.
    pub name: Option<String>,
    /// How long the start may take, until the environment answers.
    pub startup_timeout: Duration,
    /// Default timeout of each call; the server stops work that runs longer.
    pub call_timeout: Duration,
    /// Bearer token for a remote server.
    pub token: Option<String>,
    /// Keep the environment running after this process exits (`rayfine run --keep`).
    pub keep: bool,
    /// Container limits (image sources).
    pub limits: ContainerLimits,
    /// How an image is served, when its label should not decide (image sources); how a URL's
    /// server is called (URL sources, default function-based).
    pub env_type: Option<crate::detect::EnvType>,
    /// The port an HTTP-based image listens on, when its label should not decide.
    pub http_port: Option<u16>,
    /// Extra labels on the container (image sources); Rayfine's own always win.
    pub labels: BTreeMap<String, String>,
    /// How long the server lives without hearing from this process (see [`LoadOptions::lease`]);
    /// `None`: no lease. Kept environments never have one.
    pub lease: Option<Duration>,
    /// The Docker engines an image may run on (image sources); empty: those `RAYFINE_HOSTS`
    /// names, else this machine's. With several, each start goes to the one with the most free
    /// capacity, and an image a remote engine lacks is copied there from this machine's.
    pub hosts: Vec<DockerHost>,
    /// The server program for process mode; found by [`ServerProgram::locate`] when unset.
    ///
    /// [`ServerProgram::locate`]: crate::ServerProgram::locate
    pub server_program: Option<PathBuf>,
}

/// Env var values (API keys) and the token are secrets: `{:?}` shows the names only.
impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("source", &self.source)
            .field("mode", &self.mode)
            .field("env_vars", &self.env_vars.keys().map(|k| format!("{k}=<redacted>")).collect::<Vec<_>>())
            .field("name", &self.name)
            .field("startup_timeout", &self.startup_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("keep", &self.keep)
            .field("limits", &self.limits)
            .field("env_type", &self.env_type)
            .field("http_port", &self.http_port)
            .field("labels", &self.labels)
            .field("hosts", &self.hosts)
            .field("server_program", &self.server_program)
            .field("lease", &self.lease)
            .finish()
    }
}

impl LoadOptions {
    /// Options for `source` with the defaults: auto mode, 120 s start-up, 600 s calls.
    pub fn new(source: Source) -> LoadOptions {
        LoadOptions {
            source,
            mode: Mode::Auto,
            env_vars: BTreeMap::new(),
            name: None,
            startup_timeout: Duration::from_secs(120),
            call_timeout: Duration::from_secs(600),
            token: None,
            keep: false,
            limits: ContainerLimits::default(),
            env_type: None,
            http_port: None,
            labels: BTreeMap::new(),
            hosts: Vec::new(),
            server_program: None,
            lease: Some(super::lease::DEFAULT_LEASE),
        }
    }

    /// Options for a Docker image.
    pub fn image(image: impl Into<String>) -> LoadOptions {
        LoadOptions::new(Source::Image(image.into()))
    }

    /// Sets the memory limit of the container, in bytes.
    pub fn memory_limit(mut self, bytes: i64) -> LoadOptions {
        self.limits.memory_bytes = Some(bytes);
        self
    }

    /// Sets the CPU limit of the container, e.g. `1.5`.
    pub fn cpu_limit(mut self, cpus: f64) -> LoadOptions {
        self.limits.cpus = Some(cpus);
        self
    }

    /// Sets the process and thread limit of the container.
    pub fn pids_limit(mut self, pids: i64) -> LoadOptions {
        self.limits.pids = Some(pids);
        self
    }

    /// Serves the image as this type, whatever its label says; for a URL, how the server there is
    /// called (default: Rayfine's `/call` server).
    pub fn env_type(mut self, env_type: crate::detect::EnvType) -> LoadOptions {
        self.env_type = Some(env_type);
        self
    }

    /// The port an HTTP-based image's server listens on inside the container.
    pub fn http_port(mut self, port: u16) -> LoadOptions {
        self.http_port = Some(port);
        self
    }

    /// Adds a label to the container.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> LoadOptions {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a Docker engine the image may run on (see [`LoadOptions::hosts`]).
    pub fn host(mut self, host: DockerHost) -> LoadOptions {
        if !self.hosts.contains(&host) {
            self.hosts.push(host);
        }
        self
    }

    /// The Docker engines the image may run on, instead of `RAYFINE_HOSTS` or this machine's.
    pub fn hosts(mut self, hosts: impl IntoIterator<Item = DockerHost>) -> LoadOptions {
        self.hosts.clear();
        for host in hosts {
            self = self.host(host);
        }
        self
    }

    /// The engines to place an image on: those given, else `RAYFINE_HOSTS`'s, else this
    /// machine's.
    pub(crate) fn docker_hosts(&self) -> Result<Vec<DockerHost>> {
        Ok(DockerHost::given_or_default(self.hosts.clone())?)
    }

    /// Options for an environment folder.
    pub fn folder(path: impl Into<PathBuf>) -> LoadOptions {
        LoadOptions::new(Source::Folder(path.into()))
    }

    /// Options for a server already running at `url`.
    pub fn url(url: impl Into<String>) -> LoadOptions {
        LoadOptions::new(Source::Url(url.into().trim_end_matches('/').to_string()))
    }

    /// Adds an environment variable.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> LoadOptions {
        self.env_vars.insert(key.into(), value.into());
        self
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> LoadOptions {
        self.name = Some(name.into());
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> LoadOptions {
        self.mode = mode;
        self
    }

    /// Sets the start-up timeout.
    pub fn startup_timeout(mut self, timeout: Duration) -> LoadOptions {
        self.startup_timeout = timeout;
        self
    }

    /// Sets the default call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> LoadOptions {
        self.call_timeout = timeout;
        self
    }

    /// Sets the bearer token for a remote server.
    pub fn token(mut self, token: impl Into<String>) -> LoadOptions {
        self.token = Some(token.into());
        self
    }

    /// Sets the lease (default 60 s): this process renews it from a background thread while it
    /// lives, and a function-based server shuts itself down when it lapses, so an owner that is
    /// frozen or killed leaves nothing behind even where stdin's end does not reach the server.
    pub fn lease(mut self, lease: Duration) -> LoadOptions {
        self.lease = Some(lease);
        self
    }

    /// No lease: the environment lives until cleanup, its owner's exit, or stdin's end.
    pub fn no_lease(mut self) -> LoadOptions {
        self.lease = None;
        self
    }

    /// The lease the server gets: none for kept environments, which outlive their starter.
    pub(crate) fn effective_lease(&self) -> Option<Duration> {
        self.lease.filter(|_| !self.keep)
    }

    /// Serves a folder with this program (`rayfine-server`, or `rayfine`, which gets `serve`).
    pub fn server_program(mut self, path: impl Into<PathBuf>) -> LoadOptions {
        self.server_program = Some(path.into());
        self
    }

    /// Keeps the environment running after this process exits.
    pub fn keep(mut self, keep: bool) -> LoadOptions {
        self.keep = keep;
        self
    }

    /// Checks what can be checked before anything starts.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Source::Folder(path) = &self.source {
            if !path.is_dir() {
                return Err(Error::InvalidInput(format!("environment folder `{}` does not exist", path.display())));
            }
            let env_py = path.join("env.py");
            if !env_py.is_file() {
                return Err(Error::InvalidInput(format!("`{}` has no env.py: an environment folder needs one", path.display())));
            }
        }
        for key in self.env_vars.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Error::InvalidInput(format!("`{key}` is not a valid environment variable name")));
            }
        }
        if let Source::Image(image) = &self.source {
            crate::docker::validate_reference(image)?;
        }
        if let Source::Url(url) = &self.source {
            validate_url(url)?;
        }
        if self.mode == Mode::Swarm && !matches!(self.source, Source::Image(_)) {
            return Err(Error::InvalidInput("Swarm mode runs images: build the folder into one with `rayfine build`".into()));
        }
        if self.mode == Mode::Process && matches!(self.source, Source::Image(_)) {
            return Err(Error::InvalidInput("process mode runs folders: an image runs in Docker or on Swarm".into()));
        }
        if !self.hosts.is_empty() && !matches!(self.source, Source::Image(_)) {
            return Err(Error::InvalidInput("Docker hosts are for images: a folder runs as a local process, a URL is served where it is".into()));
        }
        let limits = &self.limits;
        if limits.memory_bytes.is_some_and(|m| m < 6 * 1024 * 1024) {
            return Err(Error::InvalidInput("the memory limit must be at least 6 MiB (the engine's minimum)".into()));
        }
        if limits.cpus.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(Error::InvalidInput("the CPU limit must be a positive number".into()));
        }
        if let Some(pids) = limits.pids.filter(|p| *p < MIN_PIDS_LIMIT) {
            return Err(Error::InvalidInput(format!(
                "a pids limit of {pids} is too low: the server and its worker need about a dozen processes and threads before the environment starts any (at least {MIN_PIDS_LIMIT})"
            )));
        }
        for key in self.labels.keys() {
            if key.is_empty() || key.contains('=') {
                return Err(Error::InvalidInput(format!("`{key}` is not a valid label name")));
            }
        }
        if self.lease.is_some_and(|lease| lease < Duration::from_millis(200)) {
            return Err(Error::InvalidInput("the lease must be at least 200 ms (it is renewed four times per lease)".into()));
        }
        if self.call_timeout.is_zero() || self.startup_timeout.is_zero() {
            return Err(Error::InvalidInput("timeouts must be longer than zero".into()));
        }
        Ok(())
    }

    /// The name to register under.
    pub(crate) fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match &self.source {
            Source::Folder(path) => std::path::absolute(path)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "env".into()),
            Source::Url(url) => url.clone(),
            Source::Image(image) => {
                let without_tag = image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(image.as_str(), |(name, _)| name);
                without_tag.rsplit('/').next().unwrap_or(without_tag).to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_refused_naming_the_problem() {
        for (url, says) in [("http://[::1", "not a valid URL"), ("ftp://host", "only http"), ("http://host/?a=1", "no query")] {
            let err = LoadOptions::url(url).validate().unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        LoadOptions::url("http://127.0.0.1:1").validate().unwrap();
        LoadOptions::url("https://[::1]:8000/env").validate().unwrap();
    }

    #[test]
    fn a_pids_limit_below_what_the_server_needs_is_refused() {
        let err = LoadOptions::image("x").pids_limit(1).validate().unwrap_err().to_string();
        assert!(err.contains("too low"), "{err}");
        LoadOptions::image("x").pids_limit(MIN_PIDS_LIMIT).validate().unwrap();
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let options = LoadOptions::folder("environments/echo").env_var("API_KEY", "sk-very-secret").token("tok-very-secret");
        let shown = format!("{options:?}");
        assert!(shown.contains("API_KEY=<redacted>"), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
        let client = crate::http_client::ServerClient::new("http://127.0.0.1:1", Some("tok-very-secret".into())).unwrap();
        assert!(!format!("{client:?}").contains("very-secret"));
    }
}
