//! Reaping for PID 1.
//!
//! In a container the server (or the supervisor of an HTTP-based environment) is the first
//! process, and the kernel makes it the parent of every orphan: whatever the environment started
//! and left behind when its parent died, a worker killed for a timeout or a program that
//! daemonized. When an orphan exits, only PID 1 can clear its zombie; left there, zombies fill the
//! pids limit over a run of days. Docker's `--init` would do this, but needs a binary on the
//! engine's host; this needs nothing.

use std::collections::HashSet;
use std::time::Duration;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

/// Children that tokio waits for (the worker, the supervised command): not ours to reap, or their
/// exit status would be lost.
static OWN_CHILDREN: Lazy<Mutex<HashSet<u32>>> = Lazy::new(|| Mutex::new(HashSet::new()));

/// How often orphans are looked for even without a SIGCHLD (signals of the same kind coalesce).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Marks `pid` as a child that its own code waits for.
pub(crate) fn own(pid: Option<u32>) {
    if let Some(pid) = pid {
        OWN_CHILDREN.lock().insert(pid);
    }
}

/// Forgets `pid` once it has been waited for.
pub(crate) fn disown(pid: Option<u32>) {
    if let Some(pid) = pid {
        OWN_CHILDREN.lock().remove(&pid);
    }
}

/// When this process is PID 1, reaps exited orphans from now on, in a task of the runtime.
pub(crate) fn start_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    tokio::spawn(async {
        let mut children = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
            Ok(signal) => Some(signal),
            Err(err) => {
                tracing::warn!("cannot watch SIGCHLD ({err}); reaping orphans every {SWEEP_EVERY:?} only");
                None
            }
        };
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            match children.as_mut() {
                Some(signal) => tokio::select! {
                    _ = signal.recv() => {}
                    _ = sweep.tick() => {}
                },
                None => {
                    sweep.tick().await;
                }
            }
            reap_orphans();
        }
    });
}

/// Waits for every zombie whose parent is this process and that no code of ours waits for.
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some((state, parent)) = state_and_parent(&stat) {
            if state == 'Z' && parent == me && !OWN_CHILDREN.lock().contains(&pid) {
                let mut status = 0;
                // SAFETY: waits for one specific child of ours, without blocking.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            }
        }
    }
}

/// The state letter and parent pid from a `/proc/<pid>/stat` line. The command name in
/// parentheses may itself hold spaces and parentheses, so fields are read after the last `)`.
fn state_and_parent(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

#[cfg(test)]
mod tests {
    use super::state_and_parent;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(state_and_parent("42 (python3) Z 1 42 42 0 -1"), Some(('Z', 1)));
        assert_eq!(state_and_parent("7 (a) b) (c) S 3 7 7 0"), Some(('S', 3)));
        assert_eq!(state_and_parent("garbage"), None);
    }
}
