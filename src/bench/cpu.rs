//! CPU time spent, by process: what a call costs in CPU, not in wall time. On 2 cores, the
//! caller (wrk), the server and the worker share the same two; calls/s can never exceed the cores
//! divided by their CPU per call, which this makes visible beside the floor's.

use std::time::Duration;

/// CPU (user + system) a process has used so far, read from `/proc/PID/stat`; zero once it is gone.
pub fn of_process(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    // The command name, in parentheses, may hold spaces; the fields after it are fixed.
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return Duration::ZERO };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name and state.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks_to_duration(ticks)
}

/// The processes `pid` started (one level down), as `/proc/PID/task/*/children` lists them.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    children
}

/// A local server and the processes it started (its worker), whose CPU time the bench reads.
pub struct ServerProcesses {
    server: u32,
    workers: Vec<u32>,
}

impl ServerProcesses {
    /// The server `pid` and its children as they are now (a worker started later is not seen).
    pub fn of(pid: u32) -> ServerProcesses {
        ServerProcesses { server: pid, workers: children_of(pid) }
    }

    /// CPU the server process has used so far.
    pub fn server(&self) -> Duration {
        of_process(self.server)
    }

    /// CPU its workers have used so far.
    pub fn workers(&self) -> Duration {
        self.workers.iter().map(|&w| of_process(w)).sum()
    }
}

/// CPU used by this process (`RUSAGE_SELF`) or by its children that have been waited for
/// (`RUSAGE_CHILDREN`), so far.
pub fn of_self(children: bool) -> Duration {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(if children { libc::RUSAGE_CHILDREN } else { libc::RUSAGE_SELF }, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// The machine's CPU time so far: all of it, and the part the hypervisor kept (steal), from the
/// first line of `/proc/stat`. `None` where that cannot be read.
#[derive(Clone, Copy, Debug)]
pub struct CpuClock {
    total: u64,
    steal: u64,
}

impl CpuClock {
    pub fn now() -> Option<CpuClock> {
        CpuClock::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`, in ticks; guest
    /// time is already counted in user time, so it is left out of the total.
    fn parse(stat: &str) -> Option<CpuClock> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
        let steal = *ticks.get(7)?;
        Some(CpuClock { total: ticks.iter().take(8).sum(), steal })
    }

    /// The share of the CPU time since `before` that the hypervisor kept, in percent.
    pub fn steal_percent_since(self, before: CpuClock) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(before.steal) as f64 * 100.0 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU this thread has used so far.
    fn of_this_thread() -> Duration {
        // SAFETY: clock_gettime fills the timespec it is given; a zeroed one is a valid value.
        let time = unsafe {
            let mut time: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time);
            time
        };
        Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
    }

    #[test]
    fn a_busy_loop_shows_as_this_processs_cpu() {
        // The loop runs until it has had 200 ms of CPU, however long a busy machine takes to give
        // it that (a loop of fixed wall time may get little CPU while other tests run).
        let (before, proc_before, thread_before) = (of_self(false), of_process(std::process::id()), of_this_thread());
        let spin = Duration::from_millis(200);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        while of_this_thread() - thread_before < spin {
            assert!(std::time::Instant::now() < deadline, "the loop got under 200 ms of CPU in 60 s");
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        // getrusage is exact to the microsecond; /proc counts in clock ticks (10 ms here).
        assert!(of_self(false) - before >= spin, "getrusage sees the loop");
        assert!(of_process(std::process::id()) - proc_before >= spin - Duration::from_millis(20), "/proc sees the loop");
    }

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let before = CpuClock::parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n").unwrap();
        let after = CpuClock::parse("cpu  150 0 70 900 10 0 0 60 0 0\n").unwrap();
        // 20 ticks of steal out of 50 + 20 + 100 + 20 = 190.
        assert!((after.steal_percent_since(before) - 2000.0 / 190.0).abs() < 1e-9);
        assert!(CpuClock::parse("intr 1 2 3\n").is_none());
        assert!(CpuClock::parse("cpu  1 2 3\n").is_none(), "a line without steal is no clock");
    }
}
