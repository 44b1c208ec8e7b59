//! Starts this process's owner watchdogs ([`crate::watchdog`]), one per engine, before its first
//! container there, so that a container is removed even if this process is killed between
//! creating and starting it.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::host::DockerHost;
use crate::programs::ServerProgram;
use crate::watchdog::Owner;

/// Each engine's watchdog and the write end of its stdin, held for the life of this process: the
/// kernel closes it when this process dies, which is the watchdog's signal.
static WATCHDOGS: Lazy<Mutex<HashMap<DockerHost, (Child, ChildStdin)>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// Starts the watchdog of `host`'s engine unless it runs; says once, as a warning, when it cannot
/// be started.
pub(crate) fn ensure(host: &DockerHost) {
    if host.tls_certs().is_some() {
        // The watchdog speaks plain HTTP (it is part of the small static server): an engine
        // behind TLS relies on stdin's end and the lease, and `cleanup --orphans`.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("no owner watchdog for TLS engines such as {host}: if this process is killed by SIGKILL between creating and starting a container there, `rayfine cleanup --orphans` removes it")
        });
        return;
    }
    let mut watchdogs = WATCHDOGS.lock();
    if let Some((child, _)) = watchdogs.get_mut(host) {
        if matches!(child.try_wait(), Ok(None)) {
            return;
        }
    }
    match start(host) {
        Ok(started) => {
            watchdogs.insert(host.clone(), started);
        }
        Err(why) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("no owner watchdog ({why}): if this process is killed by SIGKILL while a container starts, `rayfine cleanup --orphans` removes what is left")
            });
        }
    }
}

fn start(host: &DockerHost) -> Result<(Child, ChildStdin), String> {
    let owner = Owner::this_process().ok_or("cannot read this process's start time")?;
    let program = ServerProgram::locate()
        .or_else(|_| crate::programs::locate(None).map(|path| ServerProgram::at(&path)))
        .map_err(|err| err.to_string())?;
    let mut command = Command::new(&program.path);
    if program.needs_serve {
        command.arg("serve");
    }
    command
        .arg("--watch-owner")
        .arg(owner.to_string())
        .arg("--watch-engine")
        .arg(host.engine_url())
        .stdin(Stdio::piped())
        // Nothing of ours that a caller waits on (a test's captured output) may stay open in it.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of our process group: a Ctrl-C in the terminal is for us, not for it.
        .process_group(0);
    let mut child = command.spawn().map_err(|err| format!("cannot start {}: {err}", program.path.display()))?;
    let stdin = child.stdin.take().ok_or("the watchdog has no stdin")?;
    Ok((child, stdin))
}
