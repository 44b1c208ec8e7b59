//! The second floor of a call: what one round trip to a Python process over a pipe costs on this
//! machine, without Rayfine. A call crosses the echo's hop (the caller to the server and back)
//! plus this one (the server to its worker and back), so the two together are what a call takes
//! when it pays for both hops in full; polling (`--spin-us`) is how Rayfine avoids paying. When
//! the call-cost ratio moves between VMs of the same kind, these figures tell a slow machine
//! from slow code.
//!
//! Two ways are measured, as the server and the worker can wait for each other either way:
//! - both sides sleeping in the kernel until a message comes: each message wakes the other
//!   process, which is what a wake-up costs this machine twice over;
//! - both sides polling (non-blocking reads in a loop, as `--spin-us` does for a while): no
//!   wake-up, only the pipe, two busy processes on two cores, and Python's loop.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

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

/// How long one round trip may take before the peer counts as stuck.
const STUCK: Duration = Duration::from_secs(5);

/// Microseconds of up to `rounds` round trips to a `python3` echoing over a pipe, after
/// `warmup`; fewer if `limit` passes first (a machine where two pollers cannot run at once
/// makes each round trip a scheduler slice), and an error if one takes longer than [`STUCK`].
pub fn round_trips(waiting: Waiting, warmup: usize, rounds: usize, limit: Duration) -> anyhow::Result<Vec<f64>> {
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
    let end = Instant::now() + limit;
    for round in 0..warmup + rounds {
        if Instant::now() > end {
            break;
        }
        let started = Instant::now();
        to.write_all(MESSAGE).context("writing to the pipe's peer")?;
        let mut got = 0;
        while got < MESSAGE.len() {
            if waiting == Waiting::Sleeping && !readable_within(from.as_raw_fd(), STUCK)? {
                bail!("the pipe's peer (python3) did not answer within {STUCK:?}");
            }
            match from.read(&mut buffer[got..]) {
                Ok(0) => bail!("the pipe's peer (python3) ended"),
                Ok(n) => got += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if started.elapsed() > STUCK {
                        bail!("the pipe's peer (python3) did not answer within {STUCK:?}");
                    }
                    std::hint::spin_loop();
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err).context("reading from the pipe's peer"),
            }
        }
        if round >= warmup {
            took.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    if took.is_empty() {
        bail!("no round trip to python3 was timed within {limit:?}");
    }
    drop(to);
    let _ = peer.0.wait();
    Ok(took)
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

/// Sleeps in `poll(2)` until `fd` is readable (or its writer closed): the one wake-up a blocking
/// `read` would cost too, with a bound. False if `limit` passed first.
fn readable_within(fd: i32, limit: Duration) -> anyhow::Result<bool> {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one pollfd, owned by this frame, for the length of the call.
        let n = unsafe { libc::poll(&mut poll, 1, limit.as_millis().min(i32::MAX as u128) as i32) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waiting for the pipe's peer");
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

/// How long a round-trip measurement should run: enough rounds for a stable p99.
pub fn rounds_for(duration: Duration) -> usize {
    (duration.as_secs_f64() * 4000.0).clamp(1000.0, 20_000.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_of_waiting_echo_every_message() {
        for waiting in [Waiting::Sleeping, Waiting::Polling] {
            let took = round_trips(waiting, 10, 200, Duration::from_secs(30)).expect("python3 echoes over the pipe");
            assert_eq!(took.len(), 200);
            assert!(took.iter().all(|&us| us > 0.0));
        }
    }
}
