//! Starts this process's owner watchdogs ([`crate::watchdog`]), one per engine, before its first
//! container there, so that a container is removed even if this process is killed between
//! creating and starting it; and tells them when this process has nothing left for them to
//! remove, so that they do not sweep for half a minute after a clean exit.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::host::DockerHost;
use crate::programs::ServerProgram;
use crate::watchdog::{Owner, OWNER_BUSY, OWNER_CLEAN};

/// This process's watchdogs, and what they were last told.
#[derive(Default)]
struct Watchdogs {
    /// Each engine's watchdog and our end of the socket that is its stdin, held for the life of
    /// this process: the kernel closes it when this process dies, which is the watchdog's signal.
    running: HashMap<DockerHost, (Child, UnixStream)>,
    /// The process that started them: a child forked without exec inherits this table and our
    /// ends of the sockets, and must not speak for its parent.
    started_by: u32,
    /// Whether they were last told [`OWNER_CLEAN`]. A watchdog starts believing the opposite.
    told_clean: bool,
}

impl Watchdogs {
    /// Says `word` to every watchdog, unless this process is not the one that started them.
    fn tell(&mut self, word: u8) {
        if self.started_by != std::process::id() {
            return;
        }
        for (_, socket) in self.running.values() {
            // MSG_NOSIGNAL: a watchdog that died cannot hear it and needs not, and the program
            // embedding us must not get a SIGPIPE for it. MSG_DONTWAIT: a watchdog reads its
            // stdin until it ends, unless a read failed, after which it counts this owner as not
            // clean whatever it is told; a full buffer can only mean that, so a byte it cannot
            // take changes nothing and must not block this process.
            // SAFETY: one byte from a live buffer to a socket this struct owns.
            unsafe { libc::send(socket.as_raw_fd(), [word].as_ptr().cast(), 1, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        }
        self.told_clean = word == OWNER_CLEAN;
    }
}

/// Held while a word is chosen and said, so that "clean" and a create's "busy" cannot cross.
static WATCHDOGS: Lazy<Mutex<Watchdogs>> = Lazy::new(|| Mutex::new(Watchdogs::default()));

/// To be called before anything is created that a watchdog would have to remove (after it is
/// tracked for cleanup), and when an environment that is not kept is registered again: watchdogs
/// told "clean" hear "busy" again.
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
///
/// It only spares the watchdogs their later sweeps, so it gives up rather than wait long for the
/// lock: it runs on exit paths, a panic hook among them, that may interrupt a holder of the lock.
pub(crate) fn clean_if(nothing_left: impl FnOnce() -> bool) {
    let Some(mut watchdogs) = WATCHDOGS.try_lock_for(Duration::from_millis(200)) else { return };
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
            let this_process = std::process::id();
            if watchdogs.started_by != this_process {
                // Forked: the table is the parent's. Our own watchdogs start from here.
                *watchdogs = Watchdogs { started_by: this_process, ..Watchdogs::default() };
            }
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

fn start(host: &DockerHost) -> Result<(Child, UnixStream), String> {
    let owner = Owner::this_process().ok_or("cannot read this process's start time")?;
    let program = ServerProgram::locate()
        .or_else(|_| crate::programs::locate(None).map(|path| ServerProgram::at(&path)))
        .map_err(|err| err.to_string())?;
    let mut command = Command::new(&program.path);
    if program.needs_serve {
        command.arg("serve");
    }
    // A socket rather than a pipe, for `send`'s flags (see `Watchdogs::tell`); it ends for the
    // watchdog just as a pipe does when this process dies. Both ends are close-on-exec: only the
    // watchdog's stdin, a copy, reaches it.
    let (ours, theirs) = UnixStream::pair().map_err(|err| format!("cannot make the watchdog's socket: {err}"))?;
    command
        .arg("--watch-owner")
        .arg(owner.to_string())
        .arg("--watch-engine")
        .arg(host.engine_url())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        // Nothing of ours that a caller waits on (a test's captured output) may stay open in it.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of our process group: a Ctrl-C in the terminal is for us, not for it.
        .process_group(0);
    let child = command.spawn().map_err(|err| format!("cannot start {}: {err}", program.path.display()))?;
    // `command` holds the watchdog's end until it is dropped; the watchdog must be its only
    // holder, or this process's death would not end its stdin.
    drop(command);
    Ok((child, ours))
}
