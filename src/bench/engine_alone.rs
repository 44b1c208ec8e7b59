//! What the Docker engine alone takes for a fan-out: containers created and started, then
//! force-removed, all at once, through the engine's own API with nothing else in the way (no CLI
//! process per container, no client library, and an idle process instead of Rayfine's server, so
//! no interpreter starts). No client can start or remove containers faster than this, so it says
//! how far below the `docker run` floor a fan-out can go on this machine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::BENCH_LABEL;

/// The engine's API socket on this machine, when the engine is reached through one (as
/// `DOCKER_HOST` says, else the default). None when `DOCKER_HOST` names another engine.
pub fn local_socket() -> Option<String> {
    rayfine::docker::DockerHost::Local.engine_url().strip_prefix("unix://").map(str::to_string)
}

/// Creates and starts `n` idle containers of `image` at once, shaped as Rayfine's are (its
/// labels, a port published on 127.0.0.1, auto-removal, no new privileges), then force-removes
/// them all at once. Returns how long each half took. Whatever fails, every container made is
/// removed before this returns.
pub async fn start_and_remove(socket: &str, image: &str, n: usize, run_id: &str) -> anyhow::Result<(Duration, Duration)> {
    let client = reqwest::Client::builder().unix_socket(socket).build().context("cannot make an HTTP client for the engine's socket")?;
    let api = Api { client, run_id };
    let t = Instant::now();
    let started = futures_util::future::join_all((0..n).map(|_| api.create_and_start(image))).await;
    let up = t.elapsed();
    let ids: Vec<&String> = started.iter().filter_map(|r| r.as_ref().ok()).collect();
    let t = Instant::now();
    let removed = futures_util::future::join_all(ids.iter().map(|id| api.remove(id))).await;
    let down = t.elapsed();
    if let Some(Err(err)) = started.iter().find(|r| r.is_err()) {
        bail!("{} of {n} containers did not start through the engine's API; the first error: {err:#}", started.iter().filter(|r| r.is_err()).count());
    }
    if let Some(Err(err)) = removed.into_iter().find(|r| r.is_err()) {
        return Err(err);
    }
    Ok((up, down))
}

struct Api<'a> {
    client: reqwest::Client,
    run_id: &'a str,
}

impl Api<'_> {
    /// One container, created then started; its id. A container whose start fails is removed.
    async fn create_and_start(&self, image: &str) -> anyhow::Result<String> {
        let body = json!({
            "Image": image,
            "Entrypoint": ["sleep", "infinity"],
            "Cmd": [],
            "Labels": {(rayfine::labels::MANAGED): "true", (BENCH_LABEL): self.run_id},
            "ExposedPorts": {"8000/tcp": {}},
            "HostConfig": {
                "PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                "AutoRemove": true,
                "SecurityOpt": ["no-new-privileges"],
            },
        });
        let created: Value = self.send(self.client.post("http://engine/containers/create").json(&body), "create").await?.json().await?;
        let id = created["Id"].as_str().context("the engine's create answer has no Id")?.to_string();
        if let Err(err) = self.send(self.client.post(format!("http://engine/containers/{id}/start")), "start").await {
            let _ = self.remove(&id).await;
            return Err(err);
        }
        Ok(id)
    }

    /// `DELETE /containers/{id}?force=true&v=true`, which answers once the container is gone.
    async fn remove(&self, id: &str) -> anyhow::Result<()> {
        self.send(self.client.delete(format!("http://engine/containers/{id}?force=true&v=true")), "remove").await.map(drop)
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
        let answer = request.send().await.with_context(|| format!("the engine did not answer a {what}"))?;
        if !answer.status().is_success() {
            let status = answer.status();
            bail!("the engine refused a {what} ({status}): {}", answer.text().await.unwrap_or_default().trim());
        }
        Ok(answer)
    }
}
