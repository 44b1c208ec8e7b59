//! A server without auth, started by the bench itself: for clients that send no token
//! (affinetes', OpenEnv's) and for settings of the server's own (`MAX_CONCURRENT_ENVS`), which
//! `load_env` does not take.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rayfine::protocol::ServerEvent;
use rayfine::ServerProgram;

/// A server started for this section; killed when dropped (and gone with us anyway: its stdin
/// is our pipe and it exits when that ends).
pub struct NoAuthServer {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl NoAuthServer {
    /// Starts the server for the environment in `folder`, with `vars` set for it, and waits until
    /// it is ready.
    pub fn start(folder: &Path, program: &ServerProgram, vars: &[(&str, &str)]) -> anyhow::Result<NoAuthServer> {
        let mut command = Command::new(&program.path);
        if program.needs_serve {
            command.arg("serve");
        }
        command
            .args(["--host", "127.0.0.1", "--port", "0", "--no-auth", "--exit-on-stdin-eof", "--env-path"])
            .arg(folder)
            .env_remove("RAYFINE_TOKEN")
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().with_context(|| format!("cannot start {}", program.path.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server = NoAuthServer { child, url: String::new() };
        // The server announces its port, then readiness, one JSON line each.
        let (lines, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = events.recv_timeout(left).map_err(|_| anyhow::anyhow!("the bench server did not become ready within 60 s"))?;
            match serde_json::from_str::<ServerEvent>(&line) {
                Ok(ServerEvent::Listening { port }) => server.url = format!("http://127.0.0.1:{port}"),
                Ok(ServerEvent::Ready { .. }) => return Ok(server),
                Ok(ServerEvent::Failed { error }) => bail!("the bench server failed to load {}: {}", folder.display(), error.message),
                Ok(ServerEvent::Worker { .. }) | Err(_) => {}
            }
        }
    }

    /// The server's process id, to read its CPU time and its worker's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NoAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

