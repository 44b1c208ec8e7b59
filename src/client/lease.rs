//! Renews the leases of this process's environments from one background thread.
//!
//! A plain thread with blocking sockets, not a task: a lease must be renewed while the program
//! is busy in synchronous code, or its async runtime is blocked or gone. If this process is
//! frozen or killed, renewals stop and each server shuts itself down when its lease lapses.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::{Condvar, Mutex};

use crate::protocol::LEASE_PATH;

/// Default lease: long enough that a busy machine never misses one renewal in four, short
/// enough that a frozen owner's environments go within about a minute.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The server is told the lease; renewals go four times per lease, so three can fail in a row.
const RENEWALS_PER_LEASE: u32 = 4;

struct Held {
    addr: SocketAddr,
    token: Option<Arc<str>>,
    every: Duration,
    due: Instant,
}

struct Keeper {
    held: Mutex<BTreeMap<String, Held>>,
    changed: Condvar,
}

static KEEPER: Lazy<Arc<Keeper>> = Lazy::new(|| {
    let keeper = Arc::new(Keeper { held: Mutex::new(BTreeMap::new()), changed: Condvar::new() });
    let worker = keeper.clone();
    std::thread::Builder::new()
        .name("rayfine-lease".into())
        .spawn(move || {
            block_termination_signals();
            worker.run()
        })
        .expect("spawning a thread succeeds");
    keeper
});

/// Blocks SIGINT and SIGTERM in the calling thread, so the kernel delivers them to a thread of the
/// program's own. A host such as Python runs its handlers on its main thread and only notices a
/// signal promptly if that thread is the one interrupted: delivered to this thread, a SIGTERM
/// waited until the main thread's `time.sleep` was over.
pub fn block_termination_signals() {
    // SAFETY: plain libc calls on a signal set that lives on this stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Starts renewing the lease of environment `id`, served at `addr`.
pub(crate) fn hold(id: &str, addr: SocketAddr, token: Option<&str>, lease: Duration) {
    let every = lease / RENEWALS_PER_LEASE;
    // The first renewal goes at once: a supervisor's clock starts with it.
    let held = Held { addr, token: token.map(Arc::from), every, due: Instant::now() };
    KEEPER.held.lock().insert(id.to_string(), held);
    KEEPER.changed.notify_one();
}

/// Stops renewing (the environment is being cleaned up).
pub(crate) fn release(id: &str) {
    if let Some(keeper) = Lazy::get(&KEEPER) {
        keeper.held.lock().remove(id);
    }
}

impl Keeper {
    fn run(&self) {
        let mut held = self.held.lock();
        loop {
            let now = Instant::now();
            let due: Vec<(String, SocketAddr, Option<Arc<str>>)> =
                held.iter().filter(|(_, h)| h.due <= now).map(|(id, h)| (id.clone(), h.addr, h.token.clone())).collect();
            if !due.is_empty() {
                for (id, _, _) in &due {
                    if let Some(h) = held.get_mut(id) {
                        h.due = now + h.every;
                    }
                }
                // Renew without the lock: a slow server must not stall `hold` and `release`.
                drop(held);
                for (id, addr, token) in due {
                    if let Err(err) = renew(addr, token.as_deref()) {
                        tracing::debug!(env = %id, "lease renewal failed: {err}");
                    }
                }
                held = self.held.lock();
                continue;
            }
            match held.values().map(|h| h.due).min() {
                Some(next) => {
                    self.changed.wait_until(&mut held, next);
                }
                None => self.changed.wait(&mut held),
            }
        }
    }
}

/// One `POST /_rayfine/lease` over a fresh connection, with short timeouts.
fn renew(addr: SocketAddr, token: Option<&str>) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "POST {LEASE_PATH} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("the server answered {}", String::from_utf8_lossy(&head[9..12]))))
    }
}
