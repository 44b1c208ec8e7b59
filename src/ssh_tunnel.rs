//! Reaching a Docker engine over SSH, as the Docker CLI's `ssh://user@host` does: through the
//! machine's own `ssh` program, so the user's keys, agent, `~/.ssh/config` (aliases, jump hosts)
//! and known hosts apply unchanged.
//!
//! A tunnel is one `ssh -N -L LOCAL.sock:/var/run/docker.sock` child that forwards a unix socket in
//! a private folder here to the engine's socket there; clients then speak to the local socket as to
//! any engine. Unlike the Docker CLI's `docker system dial-stdio`, nothing but `sshd` is needed on
//! the remote host. It is shared by the library and the small static server (whose owner watchdog
//! opens its own tunnel when its owner is gone), so it uses nothing but std and libc.
//!
//! The child dies with this process, however it ends: it is started with `PR_SET_PDEATHSIG` from a
//! thread that lives as long as the process (the signal follows the thread that started it, not
//! the process), and in a process group of its own, so a Ctrl-C meant for us does not cut the
//! tunnel that our own cleanup still needs.

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The variable that replaces the `ssh` program and its options, as `GIT_SSH_COMMAND` does for
/// git: `ssh -i ~/.ssh/cluster -o UserKnownHostsFile=~/.ssh/cluster_hosts`. Split on whitespace.
pub const SSH_COMMAND_ENV: &str = "RAYFINE_SSH_COMMAND";

/// Where a Docker engine listens on its host unless `?socket=` says otherwise.
pub const DEFAULT_REMOTE_SOCKET: &str = "/var/run/docker.sock";

/// How long a tunnel may take to come up: ssh's own connect timeout plus authentication.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a tunnel could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// The `ssh` program could not be started.
    #[error("cannot start `{program}` ({SSH_COMMAND_ENV} or ssh on PATH): {reason}")]
    NoSsh {
        /// The program tried.
        program: String,
        /// The operating system's reason.
        reason: String,
    },
    /// ssh ended before the forward was up; `said` is its last words (authentication, host key,
    /// refused forward).
    #[error("ssh to {target} ended before the tunnel was up ({status}): {said}")]
    Ended {
        /// The host as written.
        target: String,
        /// How ssh ended.
        status: String,
        /// What ssh printed.
        said: String,
    },
    /// The forward did not accept a connection in time.
    #[error("ssh to {target} did not open its tunnel within {} s", OPEN_TIMEOUT.as_secs())]
    Timeout {
        /// The host as written.
        target: String,
    },
    /// The private folder for the local socket could not be made.
    #[error("cannot make the tunnel's folder {}: {reason}", folder.display())]
    Folder {
        /// The folder.
        folder: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
}

/// An engine reached over SSH: `ssh://[user@]host[:port][?socket=/path/to/docker.sock]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SshTarget {
    /// The login name, when given (else ssh's configuration or the local user).
    pub user: Option<String>,
    /// The host as written: a name, an address, or an alias of `~/.ssh/config`.
    pub host: String,
    /// The SSH port, when given (else ssh's configuration or 22).
    pub port: Option<u16>,
    /// The engine's socket on the remote host, when not [`DEFAULT_REMOTE_SOCKET`].
    pub socket: Option<PathBuf>,
}

impl SshTarget {
    /// Reads `ssh://[user@]host[:port][?socket=/abs/path]`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<SshTarget, String> {
        let rest = text.strip_prefix("ssh://").ok_or("an SSH host starts with ssh://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let socket = match query {
            None => None,
            Some(query) => match query.strip_prefix("socket=") {
                Some(path) if path.starts_with('/') && !path.contains('&') && !path.chars().any(char::is_whitespace) => Some(PathBuf::from(path)),
                _ => return Err("the only query an ssh:// host takes is `?socket=/absolute/path` (the engine's socket there)".into()),
            },
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err("an ssh:// host is `ssh://[user@]host[:port]`, with no path (name the engine's socket with ?socket=)".into());
        }
        let (user, host_port) = match rest.rsplit_once('@') {
            Some((user, host_port)) => (Some(user), host_port),
            None => (None, rest),
        };
        if let Some(user) = user {
            if user.is_empty() || user.contains(':') || !user.chars().all(|c| c.is_alphanumeric() || "._-".contains(c)) {
                return Err("its user name must be letters, digits, `.`, `_` or `-` (no password: use keys or an agent)".into());
            }
        }
        let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or("an IPv6 address needs its closing bracket")?;
            (host, after.strip_prefix(':'))
        } else if host_port.matches(':').count() > 1 {
            return Err("write an IPv6 address in brackets, as ssh://user@[fd00::2]".into());
        } else {
            match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err("it names no host".into());
        }
        // Everything ssh would read as an option or a second word.
        if host.starts_with('-') || !host.chars().all(|c| c.is_alphanumeric() || ".-_:%".contains(c)) {
            return Err(format!("`{host}` is not a host name or address"));
        }
        let port = match port {
            None => None,
            Some(port) => Some(port.parse::<u16>().ok().filter(|p| *p > 0).ok_or("its port is not a number from 1 to 65535")?),
        };
        Ok(SshTarget { user: user.map(str::to_string), host: host.to_string(), port, socket })
    }

    /// The engine's socket on the remote host.
    pub fn remote_socket(&self) -> &Path {
        self.socket.as_deref().unwrap_or(Path::new(DEFAULT_REMOTE_SOCKET))
    }

    /// The ssh command for this target, options and destination included, without the forward.
    fn ssh_command(&self) -> Command {
        let configured = std::env::var(SSH_COMMAND_ENV).ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "ssh".into());
        let mut words = configured.split_whitespace();
        let mut command = Command::new(words.next().unwrap_or("ssh"));
        command.args(words);
        if let Some(user) = &self.user {
            command.args(["-l", user]);
        }
        if let Some(port) = self.port {
            command.args(["-p", &port.to_string()]);
        }
        command
    }

    /// The address ssh itself would connect to (`HostName` of `~/.ssh/config` for an alias), which
    /// is also where the engine's published ports are; the host as written when ssh cannot say.
    pub fn resolved_address(&self) -> String {
        let mut command = self.ssh_command();
        command.arg("-G").arg("--").arg(&self.host).stdin(Stdio::null()).stderr(Stdio::null());
        command
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| {
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.lines().find_map(|line| line.strip_prefix("hostname ").map(|h| h.trim().to_string()))
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.host.clone())
    }
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ssh://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(socket) = &self.socket {
            write!(f, "?socket={}", socket.display())?;
        }
        Ok(())
    }
}

/// An open tunnel: the ssh child and the local socket it forwards. Dropping it ends ssh and
/// removes the folder.
#[derive(Debug)]
pub struct Tunnel {
    child: Child,
    folder: PathBuf,
    socket: PathBuf,
}

impl Tunnel {
    /// Starts ssh and waits until the local socket accepts a connection (bounded by
    /// [`OPEN_TIMEOUT`]); ssh's own words when it gives up. Blocking.
    pub fn open(target: &SshTarget) -> Result<Tunnel, TunnelError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        // Tunnels live in statics, which are never dropped: their folders go at exit instead.
        // SAFETY: registers a function that takes no arguments and only removes files.
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(remove_own_folders);
        });
        remove_folders_of_dead_processes();
        let folder = std::env::temp_dir().join(format!("{FOLDER_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let folder_error = |err: std::io::Error| TunnelError::Folder { folder: folder.clone(), reason: err.to_string() };
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::DirBuilder::new().mode(0o700).create(&folder).map_err(folder_error)?;
        let socket = folder.join("docker.sock");
        let log_path = folder.join("ssh.log");
        let log = std::fs::File::create(&log_path).map_err(folder_error)?;

        let mut command = target.ssh_command();
        command
            .args(["-N", "-T"])
            .args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=15"])
            .args(["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3", "-o", "StreamLocalBindUnlink=yes"])
            .arg("-L")
            .arg(format!("{}:{}", socket.display(), target.remote_socket().display()))
            .arg("--")
            .arg(&target.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let program = command.get_program().to_string_lossy().into_owned();
        let mut tunnel = match spawn_for_life(command) {
            Ok(child) => Tunnel { child, folder, socket },
            Err(err) => {
                let _ = std::fs::remove_dir_all(&folder);
                return Err(TunnelError::NoSsh { program, reason: err.to_string() });
            }
        };
        let deadline = Instant::now() + OPEN_TIMEOUT;
        loop {
            if let Ok(Some(status)) = tunnel.child.try_wait() {
                let mut said = String::new();
                let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut said));
                let said = said.trim().lines().filter(|l| !l.starts_with("Warning: Permanently added")).collect::<Vec<_>>().join("; ");
                return Err(TunnelError::Ended { target: target.to_string(), status: status.to_string(), said: if said.is_empty() { "it said nothing".into() } else { said } });
            }
            if std::os::unix::net::UnixStream::connect(&tunnel.socket).is_ok() {
                return Ok(tunnel);
            }
            if Instant::now() > deadline {
                return Err(TunnelError::Timeout { target: target.to_string() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The local socket that reaches the remote engine.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether ssh still runs (a dropped connection ends it: `ServerAliveInterval`).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The start of each tunnel's folder name, followed by the owner's pid.
const FOLDER_PREFIX: &str = "rayfine-ssh-";

/// Removes the tunnel folders of processes that are gone (one killed by SIGKILL cannot).
fn remove_folders_of_dead_processes() {
    remove_folders_where(|pid| {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        !alive
    });
}

/// At exit: this process's tunnel folders (its ssh children end by their parent-death signal).
extern "C" fn remove_own_folders() {
    let own = std::process::id() as i32;
    remove_folders_where(|pid| pid == own);
}

fn remove_folders_where(remove: impl Fn(i32) -> bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(FOLDER_PREFIX)).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if remove(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Spawns `command` from a thread that lives as long as this process, with the parent-death
/// signal set, in a process group of its own.
fn spawn_for_life(mut command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rayfine-ssh".into())
            .spawn(move || {
                for (mut command, answer) in incoming {
                    let _ = answer.send(command.spawn());
                }
            })
            .expect("start the ssh spawner thread");
        Mutex::new(requests)
    });
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (answer, answered) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, answer))
        .map_err(|_| std::io::Error::other("the ssh spawner thread is gone"))?;
    answered.recv().map_err(|_| std::io::Error::other("the ssh spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_hosts_parse_as_the_docker_cli_writes_them() {
        let target = SshTarget::parse("ssh://ops@node-b").unwrap();
        assert_eq!(target, SshTarget { user: Some("ops".into()), host: "node-b".into(), port: None, socket: None });
        assert_eq!(target.remote_socket(), Path::new("/var/run/docker.sock"));
        let full = SshTarget::parse("ssh://ops@[fd00::2]:2222?socket=/run/user/1000/docker.sock").unwrap();
        assert_eq!(full, SshTarget { user: Some("ops".into()), host: "fd00::2".into(), port: Some(2222), socket: Some("/run/user/1000/docker.sock".into()) });
        assert_eq!(SshTarget::parse(&full.to_string()).unwrap(), full, "what ps shows reads back");
        assert_eq!(SshTarget::parse("ssh://node-b:22/").unwrap().to_string(), "ssh://node-b:22");
    }

    #[test]
    fn bad_ssh_hosts_are_refused_naming_the_problem() {
        for (text, says) in [
            ("ssh://", "no host"),
            ("ssh://user@", "no host"),
            ("ssh://@host", "user name"),
            ("ssh://user:secret@host", "user name"),
            ("ssh://host:ssh", "port"),
            ("ssh://host:0", "port"),
            ("ssh://host/var/run/docker.sock", "no path"),
            ("ssh://host?socket=relative", "socket=/absolute/path"),
            ("ssh://host?identity=/k", "socket=/absolute/path"),
            ("ssh://-oProxyCommand=x", "not a host name"),
            ("ssh://fd00::2", "brackets"),
        ] {
            let err = SshTarget::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn a_tunnel_that_cannot_connect_says_what_ssh_said() {
        // A port nothing listens on, on this machine: ssh fails fast with its own words.
        let target = SshTarget { user: None, host: "127.0.0.1".into(), port: Some(1), socket: None };
        match Tunnel::open(&target) {
            Err(TunnelError::Ended { said, .. }) => assert!(said.contains("refused") || said.contains("port 1"), "{said}"),
            other => panic!("expected ssh to fail: {other:?}"),
        }
    }
}
