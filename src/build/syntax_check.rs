//! Compiles env.py inside the built image, with the image's own Python, so that a syntax error
//! fails `rayfine build` instead of every start. The host's Python may be another version (a
//! `match` statement is valid on 3.10 and an error on 3.8), so only the image can say.

use super::scratch::with_scratch_container;
use crate::docker::engine::{ContainerSpec, Engine};
use crate::error::{Error, Result};
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
pub(crate) async fn check_env_syntax(engine: &Engine, image: &str, tag: &str) -> Result<()> {
    let spec = ContainerSpec {
        image: image.to_string(),
        entrypoint: Some(vec!["python3".into(), "-c".into(), CHECK.into()]),
        cmd: Some(Vec::new()),
        // Owned by this process, so the watchdog removes it if this process dies mid-check.
        labels: labels::owned_by_this_process().into_iter().collect(),
        network_disabled: true,
        ..Default::default()
    };
    crate::docker::owner_watch::ensure(engine.host());
    with_scratch_container(engine, "check", spec, |id| async move { run_check(engine, &id, tag).await }).await
}

async fn run_check(engine: &Engine, id: &str, tag: &str) -> Result<()> {
    if let Err(err) = engine.start(id).await {
        // No python3 in the image (FROM scratch): nothing to check with.
        tracing::debug!("not checking env.py's syntax: {err}");
        return Ok(());
    }
    let code = match tokio::time::timeout(CHECK_LIMIT, engine.wait(id)).await {
        Err(_) => {
            tracing::warn!("env.py's syntax check took over {CHECK_LIMIT:?}; not checked");
            return Ok(());
        }
        Ok(code) => code?,
    };
    if code != SYNTAX_ERROR {
        return Ok(());
    }
    let output = engine.logs(id).await?;
    Err(Error::Build { tag: tag.to_string(), step: Some("checking env.py".into()), message: output.trim_end().to_string() })
}
