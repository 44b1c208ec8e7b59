//! The Docker backend: one environment, one container.
//!
//! The order of a start is what makes it leak-proof:
//! 1. the container is created with Rayfine's labels (owner pid and start time, env id),
//! 2. registered for cleanup at once, before it runs, so a Ctrl-C from here on removes it,
//! 3. attached to (stdout, stderr and, unless kept, stdin) before it starts, so no output is lost
//!    and the last log lines can explain a failure even when the container is already gone,
//! 4. started, with its port published on 127.0.0.1 only, on a port the engine picks.
//!
//! A function-based server announces readiness on stdout (the same event lines as in process
//! mode), so there is no polling. Its stdin is our attach connection with `StdinOnce`: when this
//! process dies, even by SIGKILL, the connection closes, the engine closes the container's stdin,
//! the server exits and `AutoRemove` deletes the container.
//!
//! An HTTP-based environment is the user's own server, which knows nothing of stdin. So unless
//! it is kept, its container starts the static server in `--supervise` mode, copied in before the
//! start, which runs the image's command and applies the same stdin rule to it.
//!
//! One deadline covers every step, from the first engine request to readiness: a slow engine
//! (creating, copying, attaching) counts against the start-up timeout as much as a slow server.

mod readiness;
pub(crate) mod shape;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{lease_address, Backend, BoxFuture, Endpoint, KillNow, Launch, LogRing, StartSpec, LOG_LINES_IN_ERRORS};
use crate::client::cleanup;
use crate::client::ContainerLimits;
use crate::detect::EnvType;
use crate::docker::engine::{short, Engine};
use crate::docker::host::bracketed;
use crate::docker::{describe_exit_on, ensure_image, is_gone_within, remove_and_wait, DockerHost, Leftover};
use crate::error::{Error, Result};
use shape::Shape;

/// How long the removal after a failed start may take; what is not gone by then stays tracked,
/// for the exit path to remove.
const FAILED_START_CLEANUP: Duration = Duration::from_secs(15);

/// How long a container has to end once told to (its stdin closed, or `docker stop`'s SIGTERM)
/// before it is killed. The server shuts down in milliseconds; this only bounds an environment
/// that ignores the signal.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// An image to run as a container.
pub(crate) struct DockerLaunch<'a> {
    /// The image.
    pub image: &'a str,
    /// Resource limits.
    pub limits: &'a ContainerLimits,
    /// How it is served, when the caller says so (else the image's label says).
    pub env_type: Option<EnvType>,
    /// The port an HTTP-based environment listens on inside, when not the image's label's.
    pub http_port: Option<u16>,
    /// Labels of the caller's, besides Rayfine's own.
    pub labels: &'a BTreeMap<String, String>,
    /// The engine to run it on.
    pub host: &'a DockerHost,
}

type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// A running environment container.
pub(crate) struct DockerServer {
    /// The engine it runs on.
    host: DockerHost,
    /// The engine's container id.
    id: String,
    /// Our end of the container's stdin; closing it stops a function-based server.
    stdin: tokio::sync::Mutex<Option<Input>>,
    /// Last output lines.
    logs: Arc<LogRing>,
    /// Set when the attach stream ends: the container has exited.
    exited: Arc<AtomicBool>,
}

/// Where the container answers, once ready: its host port and, for a supervised HTTP-based
/// environment, the host port of the supervisor's lease renewals.
struct Ports {
    server: u16,
    lease: Option<u16>,
    /// Where renewals go, resolved, when the environment holds a lease.
    lease_at: Option<std::net::SocketAddr>,
}

impl Launch for DockerLaunch<'_> {
    async fn start(self, spec: &StartSpec<'_>) -> Result<(Box<dyn Backend>, Endpoint)> {
        let began = Instant::now();
        let logs = Arc::new(LogRing::new(spec.name));
        let exited = Arc::new(AtomicBool::new(false));
        let mut server: Option<DockerServer> = None;
        let mut env_type = EnvType::Function;
        let mut create_sent = false;
        let steps = self.run_steps(spec, &mut server, &mut env_type, &mut create_sent, &logs, &exited);
        let outcome = match tokio::time::timeout_at(spec.deadline.into(), steps).await {
            Ok(outcome) => outcome,
            Err(_) => Err(not_ready(spec, format!("not ready after {:.0} s", began.elapsed().as_secs_f64()))),
        };
        let container_name = shape::container_name(spec.env_id);
        match (outcome, server) {
            (Ok(ports), Some(server)) => {
                let url = published_url(self.host, ports.server);
                // The user's own HTTP server knows no token, so the client sends it none.
                let endpoint = Endpoint { url, token: (env_type == EnvType::Function).then(|| spec.token.to_string()), lease_at: ports.lease_at, env_type };
                Ok((Box::new(server), endpoint))
            }
            (Ok(_), None) => Err(not_ready(spec, "the start ended without a container".into())),
            (Err(err), Some(server)) => {
                // Give the output pump a moment to read the container's last words.
                server.wait_exited(Duration::from_millis(300)).await;
                let logs = server.logs.last(LOG_LINES_IN_ERRORS);
                match tokio::time::timeout(FAILED_START_CLEANUP, server.remove()).await {
                    Ok(Ok(())) => {}
                    // Still tracked: the exit path removes it.
                    Ok(Err(err)) => tracing::warn!("{err:#}"),
                    Err(_) => tracing::warn!("container {} of a failed start is not removed yet; it will be at exit", short(&server.id)),
                }
                let reason = match err {
                    Error::StartFailed { reason, .. } => reason,
                    other => other.to_string(),
                };
                Err(Error::StartFailed { name: spec.name.to_string(), reason, logs })
            }
            (Err(err), None) => {
                // Out of time while the engine was creating it: the container may exist under
                // its name, without our having learnt its id. The name stays tracked unless it
                // is surely gone, so an engine that finishes the create late is still cleaned up
                // at exit.
                if create_sent {
                    let removed = tokio::time::timeout(FAILED_START_CLEANUP, async {
                        let engine = Engine::connect_to(self.host).await?;
                        remove_and_wait(&engine, &container_name).await
                    })
                    .await;
                    match removed {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => tracing::warn!("{err:#}"),
                        Err(_) => tracing::warn!("container {container_name} of a failed start is not removed yet; it will be at exit"),
                    }
                }
                Err(match err {
                    Error::StartFailed { name, reason, logs } => Error::StartFailed { name, reason: format!("{reason}: the engine had not created the container yet"), logs },
                    other => other,
                })
            }
        }
    }
}

impl DockerLaunch<'_> {
    /// Every step of a start, from the first engine request to readiness, in the order that makes
    /// it leak-proof. `server` is set as soon as the container exists, so the caller can remove
    /// it whatever happens next.
    async fn run_steps(
        &self,
        spec: &StartSpec<'_>,
        server: &mut Option<DockerServer>,
        env_type: &mut EnvType,
        create_sent: &mut bool,
        logs: &Arc<LogRing>,
        exited: &Arc<AtomicBool>,
    ) -> Result<Ports> {
        let engine = Engine::connect_to(self.host).await?;
        let image = ensure_image(&engine, self.image).await?;
        let shape = Shape::decide(self, spec, &image)?;
        *env_type = shape.env_type;
        let files = shape.files(spec)?;
        if !spec.keep {
            crate::docker::owner_watch::ensure(self.host);
        }
        let container_spec = shape.container_spec(self, spec);
        // Tracked by name before it exists, so a Ctrl-C while the engine creates it removes it.
        *create_sent = true;
        let id = cleanup::create_container_tracked(&engine, container_spec).await?;
        let server = server.insert(DockerServer { host: self.host.clone(), id: id.clone(), stdin: tokio::sync::Mutex::new(None), logs: logs.clone(), exited: exited.clone() });

        if let Some(archive) = files {
            engine.copy_into(&id, archive).await?;
        }
        let attached = engine.attach(&id, shape.watch_stdin).await?;
        let mut input = attached.input;
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(readiness::pump_output(attached.output, logs.clone(), events_tx, exited.clone()));
        match shape.stdin_secrets(spec)? {
            // Written alongside the start: the engine takes what fits in the connection's buffers
            // at once and the rest once the container reads its stdin, so a line larger than the
            // buffers (hundreds of KB of variables) would never finish before the start. The
            // server reads it first thing; the write is bounded by the start-up deadline, and a
            // refused start drops it at once (no container will ever read it).
            Some(line) => {
                let write = async {
                    let written = tokio::time::timeout_at(spec.deadline.into(), async {
                        input.write_all(&line).await?;
                        input.flush().await
                    });
                    written.await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())).map_err(|err| not_ready(spec, format!("cannot hand the secrets to the container on its stdin: {err}")))
                };
                tokio::try_join!(async { engine.start(&id).await.map_err(Error::from) }, write)?;
            }
            None => engine.start(&id).await?,
        }
        if shape.watch_stdin {
            *server.stdin.lock().await = Some(input);
        }
        let facts = engine.inspect_container(&id).await?;
        let published = |inside: u16| {
            facts.host_port(inside).ok_or_else(|| not_ready(spec, format!("the engine published no port for {inside}/tcp (container {})", facts.status)))
        };
        let mut ports = Ports { server: published(shape.container_port)?, lease: shape.lease_port.map(published).transpose()?, lease_at: None };
        // The `/call` server takes renewals on its own port; a supervised HTTP-based one on the
        // supervisor's.
        let renewals_at = match shape.env_type {
            EnvType::Function => Some(ports.server),
            EnvType::Http => ports.lease,
        };
        if let Some(port) = spec.lease.and(renewals_at) {
            ports.lease_at = Some(lease_address(&self.host.client_address(), port).await.map_err(|reason| not_ready(spec, reason))?);
        }
        let ready = match shape.env_type {
            EnvType::Function => readiness::wait_for_server(events_rx, &published_url(self.host, ports.server), spec.deadline).await,
            EnvType::Http => readiness::wait_for_http(&published_url(self.host, ports.server), spec.deadline, exited).await,
        };
        ready.map_err(|reason| not_ready(spec, reason))?;
        Ok(ports)
    }
}

/// Where a port the engine published is reached from here.
fn published_url(host: &DockerHost, port: u16) -> String {
    format!("http://{}:{port}", bracketed(&host.client_address()))
}

/// A start that failed for a reason of its own (not an engine error); the logs are added by
/// whoever still has the container.
fn not_ready(spec: &StartSpec<'_>, reason: String) -> Error {
    Error::StartFailed { name: spec.name.to_string(), reason, logs: Vec::new() }
}

impl DockerServer {
    /// Waits up to `within` for the container's output stream to end, which it does when the
    /// container exits.
    async fn wait_exited(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.exited.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends the container and removes it with its volumes; returns once it is gone, or an error
    /// saying it is not.
    ///
    /// One that reads our stdin is told to end by closing it: its server shuts down and the
    /// engine removes it (`AutoRemove`), which one wait request sees. Only one still there after
    /// the grace is force-removed. Any other (kept, or never attached) is stopped (SIGTERM, the
    /// grace, SIGKILL) and removed. Asking every container to stop as well, as this did, cost
    /// the engine a request per container while it was removing them all.
    async fn remove(&self) -> Result<()> {
        let input = self.stdin.lock().await.take();
        let engine = Engine::connect_to(&self.host).await?;
        let gone = match input {
            Some(mut input) => {
                let _ = input.shutdown().await;
                let gone = is_gone_within(&engine, &self.id, STOP_GRACE).await;
                if !gone {
                    tracing::debug!("container {} did not end within {:?} of its stdin closing; removing it by force", short(&self.id), STOP_GRACE);
                }
                gone
            }
            None => {
                if let Err(err) = engine.stop(&self.id, STOP_GRACE).await {
                    tracing::debug!("{err}");
                }
                false
            }
        };
        if !gone {
            remove_and_wait(&engine, &self.id).await?;
        }
        cleanup::untrack(&Leftover::Container(self.host.clone(), self.id.clone()));
        Ok(())
    }
}

impl Backend for DockerServer {
    fn mode(&self) -> &'static str {
        "docker"
    }

    fn describe(&self) -> String {
        match self.host {
            DockerHost::Local => format!("container {}", short(&self.id)),
            ref host => format!("container {} on {host}", short(&self.id)),
        }
    }

    fn container_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn docker_host(&self) -> Option<&DockerHost> {
        Some(&self.host)
    }

    fn leftovers(&self) -> Vec<Leftover> {
        vec![Leftover::Container(self.host.clone(), self.id.clone())]
    }

    fn stop(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.remove())
    }

    fn kill_now(&self) -> KillNow {
        KillNow::Remove(self.leftovers())
    }

    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    /// How the container ended, if it has: the end of its output stream is waited for, then the
    /// engine says whether it still runs, and how it exited.
    fn exit_description(&self, within: Duration) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            self.wait_exited(within).await;
            match describe_exit_on(&self.host, &self.id).await {
                Some(ended) => Some(ended),
                None if self.has_exited() => Some(format!("its container {} has exited", short(&self.id))),
                None => None,
            }
        })
    }

    fn last_logs(&self, n: usize) -> Vec<String> {
        self.logs.last(n)
    }
}
