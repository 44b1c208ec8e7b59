//! Starts this process's owner watchdogs ([`crate::watchdog`]), one per engine, before its first
//! container there, so that a container is removed even if this process is killed between
//! creating and starting it; and tells them when this process has nothing left for them to
//! remove, so that they do not sweep for half a minute after a clean exit.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::host::DockerHost;
use crate::programs::ServerProgram;
use crate::watchdog::{Owner, OWNER_BUSY, OWNER_CLEAN};

/// This process's watchdogs, and what they were last told.
#[derive(Default)]
struct Watchdogs {
    /// Each engine's watchdog and the write end of its stdin, held for the life of this process:
    /// the kernel closes it when this process dies, which is the watchdog's signal.
    running: HashMap<DockerHost, (Child, ChildStdin)>,
    /// Whether they were last told [`OWNER_CLEAN`]. A watchdog starts believing the opposite.
    told_clean: bool,
}

impl Watchdogs {
    /// Says `word` to every watchdog. One that has died cannot hear it and needs not: the write's
    /// error (EPIPE; SIGPIPE is ignored in Rust programs and in Python) is dropped.
    fn tell(&mut self, word: u8) {
        for (_, stdin) in self.running.values_mut() {
            let _ = stdin.write_all(&[word]);
        }
        self.told_clean = word == OWNER_CLEAN;
    }
}

/// Held while a word is chosen and said, so that "clean" and a create's "busy" cannot cross.
static WATCHDOGS: Lazy<Mutex<Watchdogs>> = Lazy::new(|| Mutex::new(Watchdogs::default()));

/// To be called before anything is created that a watchdog would have to remove (after it is
/// tracked for cleanup): watchdogs told "clean" hear "busy" again.
pub(crate) fn busy() {
    let mut watchdogs = WATCHDOGS.lock();
    if watchdogs.told_clean {
        watchdogs.tell(OWNER_BUSY);
    }
}

/// Tells the watchdogs "clean" if `nothing_left()` says, under their lock, that this process
/// has nothing they would remove: called after a cleanup that confirmed its removals.
///
/// The order makes it safe against a create on another thread: a create is tracked before it is
/// sent, and says "busy" after it is tracked. Either it was tracked before `nothing_left` looked,
/// which then says no, or its "busy" waits for this lock and comes after the "clean".
pub(crate) fn clean_if(nothing_left: impl FnOnce() -> bool) {
    let mut watchdogs = WATCHDOGS.lock();
    if watchdogs.told_clean || watchdogs.running.is_empty() || !nothing_left() {
        return;
    }
    watchdogs.tell(OWNER_CLEAN);
}

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
    if let Some((child, _)) = watchdogs.running.get_mut(host) {
        if matches!(child.try_wait(), Ok(None)) {
            return;
        }
    }
    match start(host) {
        Ok(started) => {
            watchdogs.running.insert(host.clone(), started);
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
