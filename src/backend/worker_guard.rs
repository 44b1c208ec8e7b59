//! Kills a process-mode server's worker, and what it started, when the server dies first.
//!
//! A worker leaves by itself when it reads the end of its channel, which the kernel closes when
//! the server dies. But that needs the worker's Python to run, and on a machine starved of CPU
//! (two cores, a fork bomb in a container beside it) a worker outlived its SIGKILLed server by
//! more than 10 s, twice in CI. So the server tells its parent each worker it starts (the
//! `worker` event: its pid and start time), and the parent, once it has reaped the server, kills
//! the worker's process group with SIGKILL: the kernel ends them whether or not they get to run.
//! A worker announced after that (started just before the server died, its line read late) is
//! killed as soon as it is announced.
//!
//! A pid is only a number, and a dead worker's may be reused. So the worker is held by a pidfd,
//! kept only if the process it opened on has the start time the server read while the worker
//! was its unreaped child; and its group is signalled only while that pidfd says it is alive.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use parking_lot::Mutex;

/// The current worker of one server.
#[derive(Debug, Default)]
pub(crate) struct WorkerGuard {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    worker: Option<Worker>,
    /// The server has been reaped: a worker announced from now on is killed at once.
    server_gone: bool,
}

#[derive(Debug)]
struct Worker {
    pid: i32,
    pidfd: OwnedFd,
}

impl WorkerGuard {
    /// The server says it started worker `pid` at `started` (clock ticks after boot). Ignored
    /// when the process cannot be held (no pidfd on this kernel, no start time) or is no longer
    /// that one.
    pub(crate) fn announced(&self, pid: u32, started: Option<u64>) {
        let (Ok(signed), Some(started)) = (i32::try_from(pid), started) else { return };
        let Some(pidfd) = pidfd_open(signed) else { return };
        // Checked after the pidfd is open: the process it holds had that start time then.
        if crate::labels::process_start_time(pid) != Some(started) {
            return;
        }
        let worker = Worker { pid: signed, pidfd };
        let mut state = self.state.lock();
        if state.server_gone {
            drop(state);
            kill_group(&worker);
        } else {
            state.worker = Some(worker);
        }
    }

    /// The server has been reaped: kills its worker's process group if the worker still lives,
    /// and any worker announced later.
    pub(crate) fn server_reaped(&self) {
        let worker = {
            let mut state = self.state.lock();
            state.server_gone = true;
            state.worker.take()
        };
        if let Some(worker) = worker {
            kill_group(&worker);
        }
    }
}

/// SIGKILLs the worker's process group, then the worker itself, if the worker is still alive.
fn kill_group(worker: &Worker) {
    if !pidfd_signal(&worker.pidfd, 0) {
        return;
    }
    tracing::debug!("the server died before its worker {}: killing the worker's process group", worker.pid);
    // SAFETY: plain syscall. The leader was alive just above, and a group's id is not reused
    // while a member (the leader, until it is reaped) holds it.
    unsafe {
        libc::kill(-worker.pid, libc::SIGKILL);
    }
    // In case it left its group.
    pidfd_signal(&worker.pidfd, libc::SIGKILL);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    fn gone_within(pid: i32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !crate::labels::is_running(pid as u32) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// A "worker": a shell leading its own group, with a child in that group; returns it and
    /// the child's pid.
    fn worker_with_a_child() -> (Child, i32) {
        let mut worker = Command::new("sh").args(["-c", "sleep 30 & echo $!; wait"]).stdout(Stdio::piped()).process_group(0).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(worker.stdout.as_mut().unwrap()), &mut line).unwrap();
        (worker, line.trim().parse().unwrap())
    }

    #[test]
    fn a_held_worker_and_its_group_are_killed_when_the_server_is_reaped() {
        let (mut worker, child) = worker_with_a_child();
        let guard = WorkerGuard::default();
        guard.announced(worker.id(), crate::labels::process_start_time(worker.id()));
        guard.server_reaped();
        assert_eq!(worker.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(gone_within(child, Duration::from_secs(10)), "the worker's child survived");
        guard.server_reaped(); // nothing held any more: no signal, no panic
    }

    #[test]
    fn a_worker_announced_after_the_server_was_reaped_is_killed_at_once() {
        let (mut worker, child) = worker_with_a_child();
        let guard = WorkerGuard::default();
        guard.server_reaped();
        guard.announced(worker.id(), crate::labels::process_start_time(worker.id()));
        assert_eq!(worker.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(gone_within(child, Duration::from_secs(10)), "the worker's child survived");
    }

    #[test]
    fn a_process_with_another_start_time_is_not_held() {
        let (mut worker, child) = worker_with_a_child();
        let guard = WorkerGuard::default();
        let started = crate::labels::process_start_time(worker.id()).unwrap();
        guard.announced(worker.id(), Some(started + 1));
        guard.announced(worker.id(), None);
        assert!(guard.state.lock().worker.is_none(), "held though it is not the process announced");
        guard.server_reaped();
        assert!(worker.try_wait().unwrap().is_none(), "killed though never held");
        // SAFETY: the test's own child group.
        unsafe { libc::kill(-(worker.id() as i32), libc::SIGKILL) };
        worker.wait().unwrap();
        assert!(gone_within(child, Duration::from_secs(10)));
    }
}
