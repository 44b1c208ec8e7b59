//! Reaping for PID 1 (and for a child subreaper).
//!
//! In a container the server (or the supervisor of an HTTP-based environment) is the first
//! process, and the kernel makes it the parent of every orphan: whatever the environment started
//! and left behind when its parent died, a worker killed for a timeout or a program that
//! daemonized. Outside a container the server makes itself a child subreaper, so the same holds
//! for its own subtree. When an orphan exits, only its new parent can clear its zombie; left there,
//! zombies fill the pids limit over a run of days. Docker's `--init` would do this, but needs a
//! binary on the engine's host; this needs nothing.
//!
//! The one rule: no `waitpid` of ours may take the status of a child that std or tokio waits for,
//! or their wait fails (std's `spawn` even panics when the status of a child whose exec failed is
//! gone). A child can exit before `spawn` returns, so "register it after spawning" is not enough:
//! [`spawn_owned`] spawns and registers under one lock, and the reaper decides under the same lock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

/// Children that std or tokio waits for (the worker, the supervised command): not ours to reap.
/// Its lock is held across spawn + registration and across each reaping decision.
static OWN_CHILDREN: Lazy<Mutex<HashSet<u32>>> = Lazy::new(|| Mutex::new(HashSet::new()));

/// Set once orphans are ours (PID 1 or a subreaper) and this reaper clears them.
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// How long [`kill_tree`] keeps at it before it says what survived. A fork bomb on a loaded
/// 2-core machine (the other core busy, the test suite running) outlived 10 s once, and giving
/// up left hundreds of its processes holding the container's pids.
const KILL_TREE_LIMIT: Duration = Duration::from_secs(30);

/// How often orphans are looked for even without a SIGCHLD (signals of the same kind coalesce).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Spawns `command` and registers the child as one its own code waits for, with no moment in
/// between at which the reaper could take its status.
pub(crate) fn spawn_owned(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut own = OWN_CHILDREN.lock();
    let child = command.spawn()?;
    if let Some(pid) = child.id() {
        own.insert(pid);
    }
    Ok(child)
}

/// Forgets `pid` once it has been waited for.
pub(crate) fn disown(pid: Option<u32>) {
    if let Some(pid) = pid {
        OWN_CHILDREN.lock().remove(&pid);
    }
}

/// Whether orphans become ours: true as PID 1, and outside a container once this process is made
/// a child subreaper (Linux), so that what the environment started and left behind stays in our
/// subtree, where [`descendants`] finds it and this reaper clears it.
pub(crate) fn adopt_orphans() -> bool {
    if std::process::id() == 1 {
        return true;
    }
    // SAFETY: prctl with an integer flag; it touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// When orphans are ours (see [`adopt_orphans`]), reaps exited ones from now on, in a task of
/// the runtime. Call it once.
pub(crate) fn start() {
    if !adopt_orphans() {
        tracing::debug!("not a subreaper: orphans go to the system's init");
        return;
    }
    if ADOPTING.swap(true, Ordering::SeqCst) {
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
pub(crate) fn reap_orphans() {
    let me = std::process::id();
    for process in processes() {
        if process.state == 'Z' && process.parent == me {
            reap_if_orphan(process.pid);
        }
    }
}

/// Whether the leader given to [`kill_tree`] has been waited for. Its pid may then be reused by
/// an unrelated process, so nothing is found through it any more but its process group, which
/// the kernel does not reuse while a member lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leader {
    /// Alive or a zombie: its pid is still its own.
    Unreaped,
    /// Waited for.
    Reaped,
}

/// Kills `leader`'s process group and every process below it, including those that left the
/// group (a new session, a daemon) and, when orphans are ours, those orphaned on the way. A fork
/// bomb forks as fast as it is killed, so this goes on until nothing is left, reaping as it goes
/// so that the pids the bomb held are free again. Bounded by [`KILL_TREE_LIMIT`].
pub(crate) async fn kill_tree(leader: Option<u32>, state: Leader) {
    let Some(leader) = leader else { return };
    let deadline = Instant::now() + KILL_TREE_LIMIT;
    let me = std::process::id();
    loop {
        // The table first: once the leader dies, what it started is no longer below it. Read on
        // this thread: a fork bomb has taken every pid, so no thread can be started to read it.
        let all = processes();
        let adopting = ADOPTING.load(Ordering::SeqCst);
        let group_lives = all.iter().any(|p| p.group == leader && p.state != 'Z');
        let mut roots = match state {
            Leader::Unreaped => vec![leader],
            // Nothing is below a reaped pid but what an unrelated process that took it started.
            Leader::Reaped => Vec::new(),
        };
        if adopting {
            let own = OWN_CHILDREN.lock();
            roots.extend(all.iter().filter(|p| p.parent == me && p.state != 'Z' && !own.contains(&p.pid)).map(|p| p.pid));
        }
        let mut targets = below(&all, &roots);
        targets.extend(roots.iter().filter(|pid| **pid != leader));
        targets.extend(all.iter().filter(|p| p.group == leader && p.state != 'Z' && p.pid != leader).map(|p| p.pid));
        if state == Leader::Unreaped || group_lives {
            super::signal_group(Some(leader), libc::SIGKILL);
        }
        for pid in &targets {
            // SAFETY: kill() touches no memory. These pids were read from /proc a moment ago; one
            // that exited since may have been reused, which is why only SIGKILL's own subtree
            // (our children and the group we made) is ever looked at.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        if adopting {
            reap_orphans();
        }
        if targets.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            tracing::error!("{} processes the environment started survive SIGKILL after {KILL_TREE_LIMIT:?}", targets.len());
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Takes the status of zombie child `pid` unless std or tokio waits for it.
fn reap_if_orphan(pid: u32) {
    let own = OWN_CHILDREN.lock();
    if !own.contains(&pid) {
        let mut status = 0;
        // SAFETY: waits for one specific child of ours, without blocking.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    }
    drop(own);
}

/// One line of the process table.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Process {
    pid: u32,
    /// `R`, `S`, `D`, `Z` (zombie), ...
    state: char,
    parent: u32,
    group: u32,
}

/// Every process this one can see.
fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .filter_map(|pid| parse_stat(pid, &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect()
}

/// Every live process below `roots` in the process tree (not the roots themselves), found by
/// parent links. Zombies are left out: they are dead already and only wait to be reaped.
fn below(all: &[Process], roots: &[u32]) -> Vec<u32> {
    let mut found: Vec<u32> = roots.to_vec();
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        for process in all.iter().filter(|p| p.parent == parent && p.state != 'Z') {
            if seen.insert(process.pid) {
                found.push(process.pid);
            }
        }
        next += 1;
    }
    found.split_off(roots.len())
}

/// A `/proc/<pid>/stat` line. The command name in parentheses may itself hold spaces and
/// parentheses, so fields are read after the last `)`: state, parent, process group.
fn parse_stat(pid: u32, stat: &str) -> Option<Process> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some(Process { pid, state, parent, group })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(parse_stat(42, "42 (python3) Z 1 40 42 0 -1"), Some(Process { pid: 42, state: 'Z', parent: 1, group: 40 }));
        assert_eq!(parse_stat(7, "7 (a) b) (c) S 3 7 7 0"), Some(Process { pid: 7, state: 'S', parent: 3, group: 7 }));
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    fn wait_until_zombie(pid: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes().iter().any(|p| p.pid == pid && p.state == 'Z') {
            assert!(std::time::Instant::now() < deadline, "child {pid} never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The race of a fresh machine: a child that exits before `spawn` returns is a zombie before
    /// it is registered. A sweep at that moment must wait, then leave its status to its waiter.
    #[test]
    fn a_child_that_exits_while_being_spawned_is_left_to_its_waiter() {
        let own = OWN_CHILDREN.lock();
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        wait_until_zombie(pid);
        let sweep = std::thread::spawn(move || reap_if_orphan(pid));
        std::thread::sleep(Duration::from_millis(50));
        let mut own = own;
        own.insert(pid);
        drop(own);
        sweep.join().expect("the sweep does not panic");
        let status = child.wait();
        disown(Some(pid));
        assert!(status.as_ref().is_ok_and(|s| s.success()), "the reaper took the status of a child being spawned: {status:?}");
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the reaper under test is what waits for it
    fn an_unregistered_zombie_child_is_reaped() {
        let child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        wait_until_zombie(pid);
        reap_if_orphan(pid);
        assert!(!processes().iter().any(|p| p.pid == pid), "zombie {pid} is still there");
    }

    #[test]
    fn descendants_include_grandchildren_but_not_the_root() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & sleep 30 & wait"]).spawn().expect("spawn sh");
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = below(&processes(), &[pid]);
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for grandchild in &found {
            // SAFETY: signals processes this test started.
            unsafe { libc::kill(*grandchild as libc::pid_t, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 2, "expected the two sleeps below sh, found {found:?}");
        assert!(!found.contains(&pid));
    }

    /// A process that left the group with setsid is still killed: it is below the leader.
    #[tokio::test]
    async fn kill_tree_reaches_processes_that_left_the_group() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // Both sleeps started, one of them in a session (and group) of its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let started = || {
            let all = processes();
            let found = below(&all, &[pid]);
            let left_group = all.iter().filter(|p| found.contains(&p.pid) && p.group != pid).count();
            (found, left_group)
        };
        let (mut found, mut left_group) = started();
        while (found.len() < 2 || left_group < 1) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            (found, left_group) = started();
        }
        assert_eq!((found.len(), left_group), (2, 1), "{found:?}");
        kill_tree(Some(pid), Leader::Unreaped).await;
        let _ = child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let live = || processes().into_iter().filter(|p| found.contains(&p.pid) && p.state != 'Z').collect::<Vec<_>>();
        while !live().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(live().is_empty(), "survivors: {:?}", live());
    }
}
