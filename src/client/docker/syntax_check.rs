//! Compiles env.py inside the built image, with the image's own Python, so that a syntax error
//! fails `rayfine build` instead of every start. The host's Python may be another version (a
//! `match` statement is valid on 3.10 and an error on 3.8), so only the image can say.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

use super::container::remove_and_wait;
use super::engine::docker_error;
use crate::client::error::{Error, Result};
use crate::client::registry;
use crate::labels;

/// Run by the image's `python3`: exit 3 with the error on stderr for a syntax error; exit 0 when
/// env.py compiles, or is not where the server looks (the server says so at start).
const CHECK: &str = r#"import os, sys
path = os.environ.get("RAYFINE_ENV_PATH", "/app/env.py")
if os.path.isdir(path):
    path = os.path.join(path, "env.py")
try:
    source = open(path, "rb").read()
except OSError:
    sys.exit(0)
try:
    compile(source, path, "exec")
except (SyntaxError, ValueError) as exc:
    line = getattr(exc, "lineno", None)
    text = (getattr(exc, "text", None) or "").rstrip()
    sys.stderr.write("%s: %s%s%s\n" % (type(exc).__name__, getattr(exc, "msg", exc), " (%s, line %s)" % (path, line) if line else "", "\n    " + text if text else ""))
    sys.exit(3)
"#;

/// How long the check may take: compiling one file takes well under a second.
const CHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Exit code of [`CHECK`] for a syntax error.
const SYNTAX_ERROR: i64 = 3;

/// Checks env.py in `image`; a syntax error is a build error for `tag`. An image without
/// `python3` is not checked: the server reports that when it starts.
pub(crate) async fn check_env_syntax(docker: &Docker, image: &str, tag: &str) -> Result<()> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["python3".into(), "-c".into(), CHECK.into()]),
        cmd: Some(Vec::new()),
        // Owned by this process, so the watchdog removes it if this process dies mid-check.
        labels: Some(labels::owned_by_this_process().into_iter().collect()),
        network_disabled: Some(true),
        host_config: Some(HostConfig { auto_remove: Some(false), ..Default::default() }),
        ..Default::default()
    };
    super::owner_watch::ensure();
    let name = format!("rayfine-check-{}", crate::client::random_hex(6)?);
    let created = docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
        .await
        .map_err(docker_error(format!("cannot create a container from {image}")))?;
    registry::track_container(&created.id);
    let outcome = run_check(docker, &created.id, tag).await;
    match remove_and_wait(docker, &created.id).await {
        Ok(()) => registry::untrack_container(&created.id),
        Err(err) => tracing::warn!("{err}"),
    }
    outcome
}

async fn run_check(docker: &Docker, id: &str, tag: &str) -> Result<()> {
    if let Err(err) = docker.start_container(id, None).await {
        // No python3 in the image (FROM scratch): nothing to check with.
        tracing::debug!("not checking env.py's syntax: {err}");
        return Ok(());
    }
    let waited = tokio::time::timeout(CHECK_LIMIT, docker.wait_container(id, None).next()).await;
    let code = match waited {
        Err(_) => {
            tracing::warn!("env.py's syntax check took over {CHECK_LIMIT:?}; not checked");
            return Ok(());
        }
        Ok(Some(Ok(answer))) => answer.status_code,
        Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
        Ok(Some(Err(err))) => return Err(Error::Docker { context: "cannot wait for the syntax check of env.py".into(), source: err }),
        Ok(None) => 0,
    };
    if code != SYNTAX_ERROR {
        return Ok(());
    }
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).build();
    let mut output = String::new();
    let mut logs = docker.logs(id, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    Err(Error::Build { tag: tag.to_string(), step: Some("checking env.py".into()), message: output.trim_end().to_string() })
}
