//! The pipes between the server and its Python worker, built so that a call costs as few thread
//! wake-ups as possible.
//!
//! On a virtual machine, waking a thread that sleeps on another core costs about 20 µs, more than
//! everything else a trivial call does. So calls are written into the pipe straight from the
//! handler that makes them ([`Outbox`]), and a handler whose call is the only one in flight reads
//! the reply itself for a short while ([`Inbox::poll_for`]) instead of sleeping until the
//! runtime's reader task is woken to hand it over.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// The write side of the channel. A call writes its line straight into the pipe from the handler
/// that makes it, under a short lock and without blocking: handing it to a writer task first
/// would cost a wake-up of another thread on every call. Only when the pipe is full does the rest
/// go to a backlog that a flusher task writes out as the pipe drains.
pub(super) struct Outbox {
    shared: Arc<OutboxShared>,
}

struct OutboxShared {
    /// The pipe, non-blocking, registered with the runtime so the flusher can wait for room.
    fd: AsyncFd<OwnedFd>,
    /// Bytes not yet written; while non-empty, new messages queue behind them to keep lines whole.
    /// A plain mutex: it is never held across an await.
    backlog: Mutex<Vec<u8>>,
    /// Wakes the flusher when the backlog gains bytes.
    wake: Notify,
    /// Set when the pipe is broken (the worker is gone).
    broken: AtomicBool,
}

/// The worker's end of the channel is gone.
pub(super) struct ChannelClosed;

impl Outbox {
    /// Takes the write end of the pipe; returns the outbox and the flusher task to spawn.
    pub(super) fn new(fd: OwnedFd) -> std::io::Result<(Outbox, impl std::future::Future<Output = ()>)> {
        set_nonblocking(&fd)?;
        // SAFETY: the descriptor is owned by the AsyncFd for as long as it is registered, so it
        // cannot be closed or reused behind the runtime's back.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }.map_err(std::io::Error::from)?;
        let shared = Arc::new(OutboxShared { fd, backlog: Mutex::new(Vec::new()), wake: Notify::new(), broken: false.into() });
        Ok((Outbox { shared: shared.clone() }, flush_loop(shared)))
    }

    /// Queues one whole message without blocking; it is written now if the pipe has room.
    pub(super) fn send(&self, message: &[u8]) -> Result<(), ChannelClosed> {
        let shared = &self.shared;
        if shared.broken.load(Ordering::Relaxed) {
            return Err(ChannelClosed);
        }
        let mut backlog = shared.backlog.lock();
        if !backlog.is_empty() {
            backlog.extend_from_slice(message);
            return Ok(());
        }
        match write_some(shared.fd.get_ref(), message) {
            Ok(n) if n == message.len() => return Ok(()),
            Ok(n) => backlog.extend_from_slice(&message[n..]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => backlog.extend_from_slice(message),
            Err(_) => {
                shared.broken.store(true, Ordering::Relaxed);
                return Err(ChannelClosed);
            }
        }
        drop(backlog);
        shared.wake.notify_one();
        Ok(())
    }
}

/// tokio hands the pipe back in blocking mode; writes from handlers must never block.
fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with flags it just returned.
    let ok = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn write_some(fd: &OwnedFd, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: writes from a valid buffer of `bytes.len()` bytes to a descriptor we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

async fn flush_loop(shared: Arc<OutboxShared>) {
    loop {
        shared.wake.notified().await;
        loop {
            let mut ready = match shared.fd.writable().await {
                Ok(ready) => ready,
                Err(_) => break,
            };
            let mut backlog = shared.backlog.lock();
            if backlog.is_empty() {
                break;
            }
            match write_some(shared.fd.get_ref(), &backlog) {
                Ok(n) => {
                    backlog.drain(..n);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    drop(backlog);
                    ready.clear_ready();
                }
                Err(_) => {
                    shared.broken.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}


/// The read side of the channel: the worker's messages, one JSON object per line.
///
/// Whoever holds the buffer's lock reads the pipe: the reader task ([`Inbox::run`]), which the
/// runtime wakes when the pipe has data, or a handler polling for its own reply
/// ([`Inbox::poll_for`]). Each reads everything available and hands every whole line on, so a
/// reply reaches its caller whichever of them read it.
pub(super) struct Inbox {
    /// The pipe, non-blocking, registered with the runtime so the reader task can wait for data.
    fd: AsyncFd<OwnedFd>,
    /// A plain mutex: it is never held across an await.
    buffer: Mutex<LineBuffer>,
}

/// Bytes read but not yet handed on, which end with a partial line.
struct LineBuffer {
    bytes: Vec<u8>,
    /// How far `bytes` is known to hold no newline, so a long line is not searched twice.
    scanned: usize,
    /// The worker closed its end.
    closed: bool,
}

/// Why reading stopped.
enum Drained {
    /// The pipe is empty for now.
    Empty,
    /// The worker closed its end, or the pipe failed.
    Closed,
}

/// How much a single read takes from the pipe.
const READ_CHUNK: usize = 64 * 1024;

impl Inbox {
    /// Takes the read end of the pipe and whatever was read from it already (the handshake's
    /// buffer).
    pub(super) fn new(fd: OwnedFd, already_read: Vec<u8>) -> std::io::Result<Inbox> {
        set_nonblocking(&fd)?;
        // SAFETY: as for the outbox, the AsyncFd owns the descriptor while it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(Inbox { fd, buffer: Mutex::new(LineBuffer { bytes: already_read, scanned: 0, closed: false }) })
    }

    /// The reader task: hands every line to `deliver` until the worker closes the pipe.
    pub(super) async fn run(&self, mut deliver: impl FnMut(&[u8])) {
        // Lines that arrived with the handshake.
        if let Drained::Closed = self.drain(&mut self.buffer.lock(), &mut deliver, false) {
            return;
        }
        loop {
            let Ok(mut ready) = self.fd.readable().await else { return };
            let mut buffer = self.buffer.lock();
            match self.drain(&mut buffer, &mut deliver, true) {
                Drained::Empty => {
                    drop(buffer);
                    // Only clears readiness the runtime has not renewed since, so data that
                    // arrives meanwhile is not missed.
                    ready.clear_ready();
                }
                Drained::Closed => return,
            }
        }
    }

    /// Reads the pipe for up to `budget` while `done` says the awaited reply has not arrived,
    /// handing every line to `deliver`. Returns whether it arrived.
    ///
    /// Meant for a call that is the only one in flight: its thread would otherwise go idle, and
    /// waking it again when the reply comes costs more than a short call takes.
    pub(super) fn poll_for(&self, budget: Duration, mut done: impl FnMut() -> bool, mut deliver: impl FnMut(&[u8])) -> bool {
        let deadline = Instant::now() + budget;
        loop {
            if done() {
                return true;
            }
            if let Some(mut buffer) = self.buffer.try_lock() {
                if let Drained::Closed = self.drain(&mut buffer, &mut deliver, true) {
                    return done();
                }
            }
            if Instant::now() >= deadline {
                return done();
            }
            std::hint::spin_loop();
        }
    }

    /// Hands on the whole lines in the buffer, then, if `read` is set, reads until the pipe is
    /// empty, handing on each line as it completes.
    fn drain(&self, buffer: &mut LineBuffer, deliver: &mut impl FnMut(&[u8]), read: bool) -> Drained {
        loop {
            buffer.hand_on_lines(deliver);
            if !read {
                return if buffer.closed { Drained::Closed } else { Drained::Empty };
            }
            if buffer.closed {
                return Drained::Closed;
            }
            match buffer.read_from(self.fd.get_ref()) {
                Ok(0) => buffer.closed = true,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Drained::Empty,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::warn!("reading from the worker failed: {err}");
                    buffer.closed = true;
                }
            }
        }
    }
}

impl LineBuffer {
    fn hand_on_lines(&mut self, deliver: &mut impl FnMut(&[u8])) {
        let mut start = 0;
        let mut search_from = self.scanned;
        while let Some(offset) = self.bytes[search_from..].iter().position(|&b| b == b'\n') {
            let end = search_from + offset;
            deliver(&self.bytes[start..end]);
            start = end + 1;
            search_from = start;
        }
        self.bytes.drain(..start);
        self.scanned = self.bytes.len();
    }

    fn read_from(&mut self, fd: &OwnedFd) -> std::io::Result<usize> {
        self.bytes.reserve(READ_CHUNK);
        let spare = self.bytes.spare_capacity_mut();
        // SAFETY: reads at most `spare.len()` bytes into memory the vector owns; the bytes read
        // are initialised by the kernel before the length covers them.
        let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised exactly `n` bytes past the old length.
        unsafe { self.bytes.set_len(self.bytes.len() + n) };
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::LineBuffer;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut buffer = LineBuffer { bytes: Vec::new(), scanned: 0, closed: false };
        let mut lines = Vec::new();
        for chunk in chunks {
            buffer.bytes.extend_from_slice(chunk);
            buffer.hand_on_lines(&mut |line: &[u8]| lines.push(String::from_utf8_lossy(line).into_owned()));
        }
        assert!(buffer.bytes.iter().all(|&b| b != b'\n'), "only a partial line may stay");
        lines
    }

    #[test]
    fn lines_split_anywhere_come_out_whole() {
        assert_eq!(lines_of(&[b"{\"id\":1}\n{\"id\"", b":2}\n{", b"\"id\":3}\n"]), ["{\"id\":1}", "{\"id\":2}", "{\"id\":3}"]);
        assert_eq!(lines_of(&[b"a", b"b", b"c", b"\n\n"]), ["abc", ""]);
        assert_eq!(lines_of(&[b"partial"]), Vec::<String>::new());
    }
}
