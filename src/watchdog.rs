//! The owner watchdog: removes an owner's containers once the owner is gone, however it went.
//!
//! A container is registered for cleanup the moment it is created, and once started, its server
//! exits when its owner's attach connection closes (and `AutoRemove` deletes it). Between create
//! and start, neither applies: an owner killed by SIGKILL there left a container in `Created`
//! forever (9 times in 12 when killed 50 ms into `rayfine run`). Only another process can remove
//! it, so before its first container, an owner starts this one (`rayfine-server --watch-owner
//! PID:START`, in a process group of its own) and holds the other end of the socket that is its
//! stdin. When the owner dies, the kernel closes it; the watchdog then removes every container
//! labelled with the owner's pid and start time and not kept (and its Swarm services and their
//! secrets), and sweeps again for thirty seconds, for creates that were still in flight in the engine.
//!
//! Those thirty seconds are needed only if the owner may have died with something left. An owner
//! that has removed everything it made, with no create under way, says so on its stdin
//! ([`OWNER_CLEAN`]), and says [`OWNER_BUSY`] before it creates again. If the last word before
//! stdin ends is "clean", the watchdog sweeps once, in case, and exits: a short `rayfine run`
//! no longer leaves a process behind for half a minute.
//!
//! It talks to the engine with a few lines of HTTP/1.0 over its socket rather than a Docker
//! client library, so the small static `rayfine-server` can run it too.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::labels;
use crate::ssh_tunnel::{SshTarget, Tunnel};

/// When, after the owner is gone, the engine is swept again: a create sent just before the owner
/// died may still be completing, slowly on a loaded engine.
const SWEEPS_AFTER_EXIT: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(30),
];

/// The byte an owner writes on its watchdog's stdin when nothing of it is left for the watchdog
/// to remove: no container, service or secret of it that is not kept, and no create under way.
pub const OWNER_CLEAN: u8 = b'c';

/// The byte an owner writes before it creates something again after [`OWNER_CLEAN`].
pub const OWNER_BUSY: u8 = b'b';

/// Errors of the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// `--watch-owner` is not `PID:START`.
    #[error("--watch-owner takes PID:START (the owner's pid and start time), not `{0}`")]
    BadOwner(String),
    /// The engine could not be reached or answered something unexpected.
    #[error("the Docker engine at {endpoint}: {detail}")]
    Engine {
        /// Where it was asked.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },
}

/// The owner a watchdog watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Its process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot, which makes a reused pid another process.
    pub start: u64,
}

impl std::str::FromStr for Owner {
    type Err = WatchdogError;

    fn from_str(text: &str) -> Result<Owner, WatchdogError> {
        let bad = || WatchdogError::BadOwner(text.to_string());
        let (pid, start) = text.split_once(':').ok_or_else(bad)?;
        Ok(Owner { pid: pid.parse().map_err(|_| bad())?, start: start.parse().map_err(|_| bad())? })
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.start)
    }
}

impl Owner {
    /// This process, as the owner of what it creates.
    pub fn this_process() -> Option<Owner> {
        let pid = std::process::id();
        Some(Owner { pid, start: labels::process_start_time(pid)? })
    }

    fn is_alive(&self) -> bool {
        labels::owner_alive(Some(self.pid), Some(self.start))
    }
}

/// Waits until stdin ends (the owner closed it or died), then until the owner is really gone,
/// then removes its containers from `engine` (`unix://`, `tcp://` or `ssh://`; default `DOCKER_HOST`, else
/// the default socket), sweeping a few times. Blocking: it runs alone in its process.
pub fn run(owner: Owner, engine: Option<String>) -> Result<usize, WatchdogError> {
    let left_clean = last_word_is_clean(std::io::stdin().lock());
    // Stdin can only end early if the owner closed it on purpose; wait for the owner itself.
    while owner.is_alive() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut engine = Engine::at(engine);
    let gone_at = Instant::now();
    let mut removed = 0;
    // An owner that left nothing is swept once, in case; the later sweeps are for creates that
    // were under way when it died, and it said it had none.
    let sweeps = if left_clean { &SWEEPS_AFTER_EXIT[..1] } else { &SWEEPS_AFTER_EXIT[..] };
    for &at in sweeps {
        std::thread::sleep(at.saturating_sub(gone_at.elapsed()));
        match engine.reachable().and_then(|engine| engine.remove_containers_of(owner)) {
            Ok(count) => removed += count,
            Err(err) => eprintln!("rayfine watchdog: {err}"),
        }
    }
    if removed > 0 {
        eprintln!("rayfine watchdog: removed {removed} container(s) left by process {}", owner.pid);
    }
    Ok(removed)
}

/// Reads what the owner says (stdin) to its end; whether the last word said before it ended was
/// [`OWNER_CLEAN`]. Any other byte is ignored; a read error ends it as the owner's death does,
/// and counts as not clean.
fn last_word_is_clean(mut pipe: impl Read) -> bool {
    let mut clean = false;
    let mut chunk = [0u8; 64];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return clean,
            Ok(n) => {
                if let Some(&word) = chunk[..n].iter().rev().find(|&&b| b == OWNER_CLEAN || b == OWNER_BUSY) {
                    clean = word == OWNER_CLEAN;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Where the engine listens: `unix://`, plain `tcp://`, or `ssh://` through a tunnel of the
/// watchdog's own (the owner's died with the owner).
struct Engine {
    endpoint: String,
    /// The open tunnel of an `ssh://` engine.
    tunnel: Option<Tunnel>,
}

impl Engine {
    /// The engine at `endpoint`, else `DOCKER_HOST`'s, else the default socket.
    fn at(endpoint: Option<String>) -> Engine {
        let endpoint = endpoint.or_else(|| std::env::var("DOCKER_HOST").ok()).filter(|e| !e.is_empty());
        Engine { endpoint: endpoint.unwrap_or_else(|| "unix:///var/run/docker.sock".into()), tunnel: None }
    }

    /// The engine, ready for requests: for an `ssh://` one, with its tunnel open (opened again
    /// if ssh ended since the last sweep).
    fn reachable(&mut self) -> Result<&Engine, WatchdogError> {
        if self.endpoint.starts_with("ssh://") && !self.tunnel.as_mut().is_some_and(Tunnel::is_alive) {
            self.tunnel = None;
            let target = SshTarget::parse(&self.endpoint).map_err(|why| self.error(why))?;
            self.tunnel = Some(Tunnel::open(&target).map_err(|err| self.error(err.to_string()))?);
        }
        Ok(self)
    }

    /// Removes (forced, with volumes) every container of `owner` that is not kept, then its Swarm
    /// services and their secrets (on a manager); returns how many it removed.
    fn remove_containers_of(&self, owner: Owner) -> Result<usize, WatchdogError> {
        let filters = serde_json::json!({ "label": [
            format!("{}=true", labels::MANAGED),
            format!("{}={}", labels::OWNER_PID, owner.pid),
            format!("{}={}", labels::OWNER_START, owner.start),
            format!("{}=false", labels::KEEP),
        ]});
        let query = percent_encode(&filters.to_string());
        let mut removed = 0;
        // Services before secrets: a secret a service still uses cannot be removed (a later
        // sweep takes it).
        for (kind, list, delete) in [("container", "/containers/json?all=1&filters=", "?force=1&v=1"), ("service", "/services?filters=", ""), ("secret", "/secrets?filters=", "")] {
            let (status, body) = self.request("GET", &format!("{list}{query}"))?;
            match status {
                200 => {}
                // Services and secrets only exist on a Swarm manager.
                503 if kind != "container" => continue,
                _ => return Err(self.error(format!("listing {kind}s answered HTTP {status}: {}", String::from_utf8_lossy(&body)))),
            }
            let listed: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|err| self.error(format!("the {kind} list is not JSON: {err}")))?;
            for id in listed.iter().filter_map(|c| c.get("Id").or_else(|| c.get("ID")).and_then(|id| id.as_str())) {
                match self.request("DELETE", &format!("/{kind}s/{id}{delete}"))? {
                    (200 | 204 | 404 | 409, _) => removed += 1,
                    (status, body) => eprintln!("rayfine watchdog: removing {kind} {id} answered HTTP {status}: {}", String::from_utf8_lossy(&body)),
                }
            }
        }
        Ok(removed)
    }

    fn error(&self, detail: String) -> WatchdogError {
        WatchdogError::Engine { endpoint: self.endpoint.clone(), detail }
    }

    /// One HTTP/1.0 request, so the answer is never chunked and ends with the connection.
    fn request(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>), WatchdogError> {
        let request = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
        let mut answer = Vec::new();
        let io = |err: std::io::Error| self.error(err.to_string());
        let tunnel_socket = self.tunnel.as_ref().map(|t| t.socket().to_string_lossy().into_owned());
        if let Some(socket) = tunnel_socket.as_deref().or_else(|| self.endpoint.strip_prefix("unix://")) {
            let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(io)?;
            stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
            stream.write_all(request.as_bytes()).map_err(io)?;
            stream.read_to_end(&mut answer).map_err(io)?;
        } else if let Some(address) = self.endpoint.strip_prefix("tcp://") {
            let mut stream = std::net::TcpStream::connect(address.trim_end_matches('/')).map_err(io)?;
            stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
            stream.write_all(request.as_bytes()).map_err(io)?;
            stream.read_to_end(&mut answer).map_err(io)?;
        } else {
            return Err(self.error("only unix://, tcp:// and ssh:// engines are watched".into()));
        }
        parse_response(&answer).ok_or_else(|| self.error("the answer is not HTTP".into()))
    }
}

/// The status and body of an HTTP response.
fn parse_response(answer: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..head_end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, answer[head_end + 4..].to_vec()))
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_and_print_as_pid_colon_start() {
        let owner: Owner = "123:456".parse().unwrap();
        assert_eq!(owner, Owner { pid: 123, start: 456 });
        assert_eq!(owner.to_string(), "123:456");
        assert!("123".parse::<Owner>().is_err());
        assert!("a:1".parse::<Owner>().is_err());
    }

    #[test]
    fn only_a_last_word_of_clean_shortens_the_sweeps() {
        let said = |bytes: &[u8]| last_word_is_clean(bytes);
        assert!(!said(b""), "an owner that said nothing may have died mid-create");
        assert!(said(b"c"));
        assert!(!said(b"cb"), "busy again after clean");
        assert!(said(b"cbc"));
        assert!(said(b"c\n?x"), "other bytes change nothing");
        // Read in pieces: the word spans reads.
        let pieces = std::io::Read::chain(&b"c"[..], &b"b"[..]);
        assert!(!last_word_is_clean(pieces));
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
        }
        assert!(!last_word_is_clean(std::io::Read::chain(&b"c"[..], Failing)), "a failed read is not a clean exit");
    }

    #[test]
    fn responses_split_into_status_and_body() {
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n[]"), Some((200, b"[]".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
        assert_eq!(percent_encode("{\"a\":[1]}"), "%7B%22a%22%3A%5B1%5D%7D");
    }
}
