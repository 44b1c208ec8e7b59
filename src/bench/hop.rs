//! The second floor of a call: what one round trip to a Python process over a pipe costs on this
//! machine, without Rayfine. A call crosses the echo's hop (the caller to the server and back)
//! plus this one (the server to its worker and back), so `echo + hop` is the least a call can
//! take, and the figure that tells a slow machine from slow code when the call-cost ratio moves
//! between VMs of the same kind.
//!
//! Two ways are measured, as the server and the worker can wait for each other either way:
//! - both sides sleeping in `read(2)`: each message wakes the other process, which is what a
//!   wake-up costs this machine twice over;
//! - both sides polling (non-blocking reads in a loop, as `--spin-us` does): no wake-up, only the
//!   pipe, the scheduler placing two busy processes on two cores, and Python's loop.
//!
//! It also reads the time the hypervisor kept the VM's CPUs from running (`steal` in
//! `/proc/stat`) over the whole call-cost section: a VM whose host is busy loses its polling
//! to it, and no code in here can win that back.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::{median, percentile};

/// The peer: echoes whatever it reads, sleeping in `read` or polling a non-blocking pipe.
const PEER: &str = r#"
import os, sys
poll = sys.argv[1] == "poll"
os.set_blocking(0, not poll)
while True:
    try:
        data = os.read(0, 65536)
    except BlockingIOError:
        continue
    if not data:
        break
    os.write(1, data)
"#;

/// One line of the size of a trivial call on the worker's pipe.
const MESSAGE: &[u8] = b"{\"id\":1,\"method\":\"ping\",\"kwargs\":{}}\n";

/// How the two sides wait for each other's message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Waiting {
    Sleeping,
    Polling,
}

/// Microseconds of `rounds` round trips to a `python3` echoing over a pipe, after `warmup`.
pub fn round_trips(waiting: Waiting, warmup: usize, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let mode = if waiting == Waiting::Polling { "poll" } else { "sleep" };
    let child = Command::new("python3")
        .args(["-c", PEER, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run python3 for the pipe round trip")?;
    let mut peer = Peer(child);
    let mut to = peer.0.stdin.take().context("the peer's stdin")?;
    let mut from = peer.0.stdout.take().context("the peer's stdout")?;
    if waiting == Waiting::Polling {
        set_nonblocking(from.as_raw_fd())?;
    }
    let mut buffer = [0u8; 4096];
    let mut took = Vec::with_capacity(rounds);
    for round in 0..warmup + rounds {
        let started = Instant::now();
        to.write_all(MESSAGE).context("writing to the pipe's peer")?;
        let mut got = 0;
        while got < MESSAGE.len() {
            match from.read(&mut buffer[got..]) {
                Ok(0) => bail!("the pipe's peer (python3) ended"),
                Ok(n) => got += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err).context("reading from the pipe's peer"),
            }
        }
        if round >= warmup {
            took.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(to);
    let _ = peer.0.wait();
    Ok(took)
}

/// p50 and p99 of a sample, in microseconds.
pub fn p50_p99(sample: &[f64]) -> (f64, f64) {
    (median(sample), percentile(sample, 99.0))
}

/// Ends the peer however the measurement ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn set_nonblocking(fd: i32) -> anyhow::Result<()> {
    // SAFETY: fcntl on a descriptor this function's caller owns, with no pointer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make the pipe non-blocking");
    }
    Ok(())
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

/// How long a round-trip measurement should run: enough rounds for a stable p99.
pub fn rounds_for(duration: Duration) -> usize {
    (duration.as_secs_f64() * 4000.0).clamp(1000.0, 20_000.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let before = CpuClock::parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n").unwrap();
        let after = CpuClock::parse("cpu  150 0 70 900 10 0 0 60 0 0\n").unwrap();
        // 20 ticks of steal out of 50 + 20 + 100 + 20 = 190.
        assert!((after.steal_percent_since(before) - 2000.0 / 190.0).abs() < 1e-9);
        assert!(CpuClock::parse("intr 1 2 3\n").is_none());
        assert!(CpuClock::parse("cpu  1 2 3\n").is_none(), "a line without steal is no clock");
    }

    #[test]
    fn both_ways_of_waiting_echo_every_message() {
        for waiting in [Waiting::Sleeping, Waiting::Polling] {
            let took = round_trips(waiting, 10, 200).expect("python3 echoes over the pipe");
            assert_eq!(took.len(), 200);
            assert!(took.iter().all(|&us| us > 0.0));
        }
    }
}
