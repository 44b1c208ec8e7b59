//! Which Docker engine: this machine's, or another host's, named as the Docker CLI names them
//! (`unix:///run/docker.sock`, `tcp://10.0.0.2:2375`).
//!
//! Where an engine is decides where its containers' ports are published and how a client reaches
//! them: an engine on this machine publishes on 127.0.0.1 only; an engine on another host must
//! publish on that host's addresses (nothing else could reach them), so there the bearer token is
//! all that guards an environment.

use std::collections::HashMap;
use std::path::PathBuf;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

pub use crate::ssh_tunnel::SshTarget;

/// A host that cannot be used, and why; the crate's error turns it into invalid input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadHost(String);

type Result<T> = std::result::Result<T, BadHost>;

/// The Docker CLI's default ports for an engine on plain TCP and on TLS.
const DEFAULT_TCP_PORT: u16 = 2375;
const DEFAULT_TLS_PORT: u16 = 2376;

/// The certificates folder the Docker CLI would use for TLS: `DOCKER_CERT_PATH` (else
/// `~/.docker`) when `DOCKER_TLS_VERIFY` is set to anything but empty or `0`.
fn tls_from_env() -> Option<PathBuf> {
    std::env::var("DOCKER_TLS_VERIFY").ok().filter(|v| !v.is_empty() && v != "0")?;
    std::env::var_os("DOCKER_CERT_PATH").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")))
}

/// The variable naming the hosts to place environments on, comma- or space-separated.
pub const HOSTS_ENV: &str = "RAYFINE_HOSTS";

/// A Docker engine Rayfine may run environments on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DockerHost {
    /// This machine's engine, as `DOCKER_HOST` names it (else the default socket): the engine of
    /// every command that names no host.
    Local,
    /// An engine's unix socket on this machine (a second engine, or one forwarded here).
    Unix(PathBuf),
    /// An engine on TCP at `host:port`, usually on another machine; with TLS when `certs` names
    /// a folder of client certificates in Docker's layout (`ca.pem`, `cert.pem`, `key.pem`).
    Tcp {
        /// Its name or address, which is also where its containers are reached.
        host: String,
        /// The engine's port.
        port: u16,
        /// TLS client certificates: `?certs=DIR` on the address, else `DOCKER_CERT_PATH` (or
        /// `~/.docker`) when `DOCKER_TLS_VERIFY` is set, as the Docker CLI reads them.
        certs: Option<PathBuf>,
    },
    /// An engine on another machine reached through `ssh` (see [`crate::ssh_tunnel`]); its
    /// containers' ports are published on that machine's addresses.
    Ssh(SshTarget),
}

impl DockerHost {
    /// Reads a host as a user writes it: `local`, `unix:///path`, `tcp://host[:port][?certs=DIR]`,
    /// `ssh://[user@]host[:port][?socket=/path]`.
    pub fn parse(text: &str) -> Result<DockerHost> {
        let text = text.trim();
        let bad = |why: &str| BadHost(format!("`{text}` is not a Docker host: {why}"));
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text == "local" {
            return Ok(DockerHost::Local);
        }
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("a unix socket's path must be absolute (unix:///var/run/docker.sock)"));
            }
            return Ok(DockerHost::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (rest, query) = match rest.split_once('?') {
                Some((rest, query)) => (rest, Some(query)),
                None => (rest, None),
            };
            let certs = match query {
                None => tls_from_env(),
                Some(query) => match query.strip_prefix("certs=") {
                    Some(dir) if dir.starts_with('/') && !dir.contains('&') => Some(PathBuf::from(dir)),
                    _ => return Err(bad("the only query a tcp:// host takes is `?certs=/absolute/folder` (TLS client certificates)")),
                },
            };
            let rest = rest.trim_end_matches('/');
            if rest.contains('/') || rest.contains('@') {
                return Err(bad("a tcp:// host is `tcp://host[:port]`, with no user or path"));
            }
            if rest.matches(':').count() > 1 && !rest.starts_with('[') {
                return Err(bad("write an IPv6 address in brackets, as tcp://[fd00::2]:2375"));
            }
            let (host, port) = split_host_port(rest).ok_or_else(|| bad("its port is not a number from 1 to 65535"))?;
            if host.is_empty() {
                return Err(bad("it names no host"));
            }
            let port = port.unwrap_or(if certs.is_some() { DEFAULT_TLS_PORT } else { DEFAULT_TCP_PORT });
            return Ok(DockerHost::Tcp { host: host.to_string(), port, certs });
        }
        if text.starts_with("ssh://") {
            return SshTarget::parse(text).map(DockerHost::Ssh).map_err(|why| bad(&why));
        }
        Err(bad("name it as `local`, `unix:///path/to/docker.sock`, `tcp://host:port` or `ssh://user@host`"))
    }

    /// The hosts `RAYFINE_HOSTS` names; empty when it is unset or blank.
    pub fn from_env() -> Result<Vec<DockerHost>> {
        match std::env::var(HOSTS_ENV) {
            Ok(list) => DockerHost::parse_list(&list).map_err(|err| BadHost(format!("{HOSTS_ENV}: {err}"))),
            Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
            Err(std::env::VarError::NotUnicode(_)) => Err(BadHost(format!("{HOSTS_ENV} is not valid UTF-8"))),
        }
    }

    /// The hosts that apply: those given, else those `RAYFINE_HOSTS` names, else this machine's.
    pub fn given_or_default(given: Vec<DockerHost>) -> Result<Vec<DockerHost>> {
        if !given.is_empty() {
            return Ok(given);
        }
        let from_env = DockerHost::from_env()?;
        Ok(if from_env.is_empty() { vec![DockerHost::Local] } else { from_env })
    }

    /// Hosts separated by commas or whitespace, each once, in the order given.
    pub fn parse_list(list: &str) -> Result<Vec<DockerHost>> {
        let mut hosts = Vec::new();
        for item in list.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
            let host = DockerHost::parse(item)?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// Whether its containers run on this machine, so their ports can stay on 127.0.0.1. The
    /// local engine is on this machine unless `DOCKER_HOST` names a `tcp://` one.
    pub fn is_on_this_machine(&self) -> bool {
        match self {
            DockerHost::Tcp { .. } | DockerHost::Ssh(_) => false,
            DockerHost::Local => local_tcp_engine().is_none() && local_ssh_engine().is_none(),
            DockerHost::Unix(_) => true,
        }
    }

    /// The address a client connects to for a port its containers publish.
    pub fn client_address(&self) -> String {
        match self {
            DockerHost::Tcp { host, .. } => host.clone(),
            DockerHost::Ssh(target) => ssh_address(target),
            DockerHost::Local => match local_ssh_engine() {
                Some(target) => ssh_address(&target),
                None => local_tcp_engine().map_or_else(|| "127.0.0.1".to_string(), |(host, _)| host),
            },
            DockerHost::Unix(_) => "127.0.0.1".to_string(),
        }
    }

    /// The address its containers' ports are published on: loopback on this machine, every
    /// address of a remote host (the one the client uses may not be the engine's own, behind a
    /// NAT or a name).
    pub(crate) fn publish_address(&self) -> &'static str {
        if self.is_on_this_machine() {
            "127.0.0.1"
        } else {
            "0.0.0.0"
        }
    }

    /// The engine's address as `DOCKER_HOST` takes it; for [`DockerHost::Local`], what
    /// `DOCKER_HOST` says or the default socket.
    pub fn engine_url(&self) -> String {
        match self {
            DockerHost::Local => std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "unix:///var/run/docker.sock".into()),
            DockerHost::Unix(path) => format!("unix://{}", path.display()),
            DockerHost::Tcp { host, port, .. } => format!("tcp://{}:{port}", bracketed(host)),
            DockerHost::Ssh(target) => target.to_string(),
        }
    }

    /// The folder of TLS client certificates, for an engine reached over TLS.
    pub fn tls_certs(&self) -> Option<&std::path::Path> {
        match self {
            DockerHost::Tcp { certs: Some(certs), .. } => Some(certs),
            _ => None,
        }
    }
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerHost::Local => f.write_str("local"),
            DockerHost::Tcp { certs: Some(certs), .. } => write!(f, "{}?certs={}", self.engine_url(), certs.display()),
            other => f.write_str(&other.engine_url()),
        }
    }
}

/// Written as the user writes it (`local`, `tcp://host:port`), as in `rayfine ps --json`.
impl serde::Serialize for DockerHost {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::str::FromStr for DockerHost {
    type Err = BadHost;

    fn from_str(text: &str) -> Result<DockerHost> {
        DockerHost::parse(text)
    }
}

/// Where each SSH host's published ports are reached: the address ssh resolves its name to (an
/// alias of `~/.ssh/config` is not a name anything else can resolve), asked once.
fn ssh_address(target: &SshTarget) -> String {
    static RESOLVED: Lazy<Mutex<HashMap<SshTarget, String>>> = Lazy::new(|| Mutex::new(HashMap::new()));
    if let Some(address) = RESOLVED.lock().get(target) {
        return address.clone();
    }
    let address = target.resolved_address();
    RESOLVED.lock().insert(target.clone(), address.clone());
    address
}

/// The engine `DOCKER_HOST` names when that is an `ssh://` one, as the Docker CLI allows.
pub(crate) fn local_ssh_engine() -> Option<SshTarget> {
    let url = std::env::var("DOCKER_HOST").ok()?;
    url.starts_with("ssh://").then(|| SshTarget::parse(&url).ok()).flatten()
}

/// The host and port of the engine `DOCKER_HOST` names, when that is a `tcp://` one (another
/// machine's, as far as publishing goes).
fn local_tcp_engine() -> Option<(String, Option<u16>)> {
    let url = std::env::var("DOCKER_HOST").ok()?;
    let rest = url.strip_prefix("tcp://")?.trim_end_matches('/');
    let (host, port) = split_host_port(rest)?;
    // The same machine under another name keeps loopback publishing.
    if matches!(host, "127.0.0.1" | "localhost" | "::1") {
        return None;
    }
    Some((host.to_string(), port))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → host and port; None for a bad port.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port_of(port)?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port_of(port)?))),
        // Several colons and no brackets: a bare IPv6 address.
        Some(_) => Some((text, None)),
        None => Some((text, None)),
    }
}

/// An IPv6 address in brackets, for a URL.
pub(crate) fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_as_the_docker_cli_writes_them() {
        assert_eq!(DockerHost::parse("local").unwrap(), DockerHost::Local);
        assert_eq!(DockerHost::parse("unix:///tmp/d.sock").unwrap(), DockerHost::Unix("/tmp/d.sock".into()));
        assert_eq!(DockerHost::parse("tcp://10.0.0.2:2376").unwrap(), DockerHost::Tcp { host: "10.0.0.2".into(), port: 2376, certs: None });
        assert_eq!(DockerHost::parse("tcp://node-b/").unwrap(), DockerHost::Tcp { host: "node-b".into(), port: 2375, certs: None });
        assert_eq!(DockerHost::parse("tcp://[fd00::2]:2375").unwrap(), DockerHost::Tcp { host: "fd00::2".into(), port: 2375, certs: None });
        assert_eq!(DockerHost::parse("tcp://[fd00::2]:2375").unwrap().engine_url(), "tcp://[fd00::2]:2375");
        assert_eq!(DockerHost::parse("tcp://node-b:9").unwrap().to_string(), "tcp://node-b:9");
    }

    #[test]
    fn bad_hosts_are_refused_naming_the_problem() {
        for (text, says) in [
            ("", "empty"),
            ("unix://docker.sock", "absolute"),
            ("tcp://host:http", "port"),
            ("tcp://host:0", "port"),
            ("tcp://:2375", "no host"),
            ("tcp://user@host", "no user"),
            ("tcp://fd00::2:2375", "brackets"),
            ("ssh://user@host/path", "no path"),
            ("http://host:2375", "ssh://user@host"),
        ] {
            let err = DockerHost::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn a_list_is_split_on_commas_and_spaces_without_repeats() {
        let hosts = DockerHost::parse_list("local, tcp://b:1 tcp://b:1,,unix:///x").unwrap();
        assert_eq!(hosts, vec![DockerHost::Local, DockerHost::Tcp { host: "b".into(), port: 1, certs: None }, DockerHost::Unix("/x".into())]);
        assert!(DockerHost::parse_list("local,bogus").is_err());
        let ssh = DockerHost::parse("ssh://ops@node-c:2222?socket=/run/docker.sock").unwrap();
        assert_eq!(ssh.to_string(), "ssh://ops@node-c:2222?socket=/run/docker.sock");
        assert_eq!(DockerHost::parse(&ssh.engine_url()).unwrap(), ssh, "the watchdog reads back what it is given");
        assert!(!ssh.is_on_this_machine());
    }

    #[test]
    fn a_certs_folder_makes_a_tls_host_on_the_tls_port() {
        let host = DockerHost::parse("tcp://node-b?certs=/etc/rayfine/node-b").unwrap();
        assert_eq!(host, DockerHost::Tcp { host: "node-b".into(), port: 2376, certs: Some("/etc/rayfine/node-b".into()) });
        assert_eq!(host.to_string(), "tcp://node-b:2376?certs=/etc/rayfine/node-b");
        assert_eq!(DockerHost::parse(&host.to_string()).unwrap(), host, "what ps shows reads back");
        for bad in ["tcp://node-b?certs=relative", "tcp://node-b?tls=1", "tcp://node-b?certs=/a&b=c"] {
            assert!(DockerHost::parse(bad).unwrap_err().to_string().contains("certs=/absolute/folder"), "{bad}");
        }
    }

    #[test]
    fn only_remote_engines_publish_beyond_loopback() {
        assert_eq!(DockerHost::Local.publish_address(), "127.0.0.1");
        assert_eq!(DockerHost::Unix("/x".into()).client_address(), "127.0.0.1");
        let remote = DockerHost::parse("tcp://10.0.0.2").unwrap();
        assert_eq!((remote.publish_address(), remote.client_address().as_str()), ("0.0.0.0", "10.0.0.2"));
    }
}
