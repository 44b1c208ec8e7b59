//! Kills a process-mode server's worker, and what it started, when the server dies first.
//!
//! A worker leaves by itself when it reads the end of its channel, which the kernel closes when
//! the server dies. But that needs the worker's Python to run, and on a machine starved of CPU
//! (two cores, a fork bomb in a container beside it) a worker outlived its SIGKILLed server by
//! more than 10 s, twice in CI. So the server tells its parent the pid of each worker it starts
//! (the `worker` event), and the parent, once it has reaped the server, kills the worker's process
//! group with SIGKILL: the kernel ends them whether or not they get to run.
//!
//! A pid is only a number, and a dead worker's may be reused. So the worker is held by a pidfd,
//! opened when it is announced and kept only if the process is then the server's child; the
//! group is signalled only while that pidfd says the worker is alive, and a live leader keeps its
//! group's id from being reused.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use parking_lot::Mutex;

/// The current worker of one server.
#[derive(Debug, Default)]
pub(crate) struct WorkerGuard {
    current: Mutex<Option<Worker>>,
}

#[derive(Debug)]
struct Worker {
    pid: i32,
    pidfd: OwnedFd,
}

impl WorkerGuard {
    /// The server `server_pid` says it started worker `pid`. Ignored when the process cannot
    /// be held (no pidfd on this kernel) or is no longer the server's child.
    pub(crate) fn announced(&self, server_pid: i32, pid: u32) {
        let Ok(pid) = i32::try_from(pid) else { return };
        let Some(pidfd) = pidfd_open(pid) else { return };
        // Checked after the pidfd is open: the process it holds was the server's child then.
        if parent_of(pid) != Some(server_pid) {
            return;
        }
        *self.current.lock() = Some(Worker { pid, pidfd });
    }

    /// Kills the worker's process group if the worker is still alive: called once the server
    /// has been reaped.
    pub(crate) fn kill_left_behind(&self) {
        let Some(worker) = self.current.lock().take() else { return };
        if !pidfd_signal(&worker.pidfd, 0) {
            return;
        }
        tracing::debug!("the server died before its worker {}: killing the worker's process group", worker.pid);
        pidfd_signal(&worker.pidfd, libc::SIGKILL);
        // SAFETY: plain syscall. The leader was alive just above, so the group id is still its.
        unsafe {
            libc::kill(-worker.pid, libc::SIGKILL);
        }
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` (0: none, only the check) to the process the pidfd holds; whether it could.
fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> bool {
    // SAFETY: pidfd_send_signal with a valid descriptor, no siginfo and no flags.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) == 0 }
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold anything: state, then ppid.
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn gone_within(pid: i32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_parent_of_a_child_is_this_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert_eq!(parent_of(child.id() as i32), Some(std::process::id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A worker held while it was the server's child is killed with its whole group; one that is
    /// not the announcing server's child is not held at all.
    #[test]
    fn a_held_worker_and_its_group_are_killed_and_only_a_child_of_the_server_is_held() {
        // The "worker": a shell leading its own group, with a child in that group.
        let mut worker = Command::new("sh").args(["-c", "sleep 30 & echo $!; wait"]).stdout(std::process::Stdio::piped()).process_group(0).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(worker.stdout.as_mut().unwrap()), &mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let pid = worker.id();

        let stranger = WorkerGuard::default();
        stranger.announced(1, pid);
        assert!(stranger.current.lock().is_none(), "held though its parent is not the server named");

        let guard = WorkerGuard::default();
        guard.announced(std::process::id() as i32, pid);
        guard.kill_left_behind();
        assert!(worker.wait().unwrap().signal() == Some(libc::SIGKILL));
        assert!(gone_within(grandchild, Duration::from_secs(10)), "the worker's child survived");
        guard.kill_left_behind(); // nothing held any more: no signal, no panic
    }
}
