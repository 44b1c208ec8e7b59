//! The remote backend: a server someone else runs (Rayfine's or affinetes'), reached by URL.
//! Starting it is waiting until it is ready; ending it is only disconnecting.

use std::time::{Duration, Instant};

use super::{Backend, BoxFuture, Endpoint, KillNow, Launch, StartSpec};
use crate::detect::EnvType;
use crate::error::{Error, Result};
use crate::http_client::ServerClient;
use crate::protocol::health_status;

/// A server at `url`, called with `token` if given.
pub(crate) struct RemoteLaunch<'a> {
    /// Its base URL.
    pub url: &'a str,
    /// The bearer token it requires, if any.
    pub token: Option<&'a str>,
    /// Rayfine's `/call` server, or a web server of its own (an OpenEnv or FastAPI app).
    pub env_type: EnvType,
}

/// A server this process does not own.
pub(crate) struct RemoteServer;

impl Launch for RemoteLaunch<'_> {
    async fn start(self, spec: &StartSpec<'_>) -> Result<(Box<dyn Backend>, Endpoint)> {
        let client = ServerClient::new(self.url, self.token.map(String::from))?;
        match self.env_type {
            EnvType::Function => wait_until_ready(&client, spec.name, spec.deadline).await?,
            EnvType::Http => client.wait_answering(spec.deadline, &|| false).await?,
        }
        let endpoint = Endpoint { url: self.url.to_string(), token: self.token.map(String::from), lease_at: None, env_type: self.env_type };
        Ok((Box::new(RemoteServer), endpoint))
    }
}

impl Backend for RemoteServer {
    fn mode(&self) -> &'static str {
        "remote"
    }

    fn describe(&self) -> String {
        "a remote server".into()
    }

    fn stop(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn kill_now(&self) -> KillNow {
        KillNow::Done
    }

    fn has_exited(&self) -> bool {
        false
    }

    fn exit_description(&self, _within: Duration) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }

    fn last_logs(&self, _n: usize) -> Vec<String> {
        Vec::new()
    }
}

/// Polls `/health` quickly at first, then less often, until ready, failed, or out of time.
async fn wait_until_ready(client: &ServerClient, name: &str, deadline: Instant) -> Result<()> {
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
            Ok(Some(health)) if health.status == health_status::FAILED => {
                return Err(Error::StartFailed { name: name.into(), reason: health.detail.unwrap_or(health.status), logs: vec![] })
            }
            Ok(Some(health)) => last = Last::NotReady(health.detail.unwrap_or(health.status)),
            Err(err) => {
                tracing::debug!("{name} not answering yet: {err}");
                last = Last::Unreachable(err);
            }
        }
        if Instant::now() + delay > deadline {
            return Err(match last {
                // Nothing ever answered: say so, rather than that something failed to start.
                Last::Unreachable(err) => err,
                Last::NotReady(why) => {
                    Error::StartFailed { name: name.into(), reason: format!("not ready after {:.0} s: {why}", started.elapsed().as_secs_f64()), logs: vec![] }
                }
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}
