//! Ends the environments on SIGTERM without waiting for the host program's main thread.
//!
//! An embedding interpreter such as CPython runs its signal handlers on its main thread, between
//! bytecodes. A SIGTERM that lands while that thread is inside a long C call (a tensor op, a key
//! derivation, or a `time.sleep` it had not quite entered when the signal came) waits for the
//! call to return, and the environments' cleanup waits with it: for minutes, or until the job
//! scheduler's SIGKILL. Here the handler only writes a byte to a pipe; a thread of Rayfine's reads
//! it, ends every environment that is not kept, and then lets SIGTERM's default action end the
//! process, as it would have ended without Rayfine.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use parking_lot::Mutex;

/// The process that installed the handler: a forked child inherits the handler but not the
/// thread, and its parent's environments are not its to end.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// The pipe's write end, for the handler (-1 until installed).
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// Installs the handler, once per process, when SIGTERM still has its default action: a program
/// (or library) that set a handler of its own, or ignores SIGTERM, keeps it. Returns whether
/// Rayfine's handler is in place. A later `signal(SIGTERM, ...)` of the host's replaces it, so
/// the host's own choice always wins.
pub fn end_environments_on_sigterm() -> io::Result<bool> {
    // Held while installing: two threads asking at once install one handler, one thread.
    static INSTALLED: Mutex<Option<bool>> = Mutex::new(None);
    let mut installed = INSTALLED.lock();
    if let Some(installed) = *installed {
        return Ok(installed);
    }
    let now = install()?;
    *installed = Some(now);
    Ok(now)
}

fn install() -> io::Result<bool> {
    // SAFETY: reading the current action into a zeroed struct on this stack.
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut current) != 0 {
            return Err(io::Error::last_os_error());
        }
        current
    };
    if current.sa_sigaction != libc::SIG_DFL {
        return Ok(false);
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // The reader blocks; only the handler's end must never.
    // SAFETY: fcntl on a descriptor this function just made.
    unsafe { libc::fcntl(read_end, libc::F_SETFL, 0) };
    std::thread::Builder::new().name("rayfine-sigterm".into()).spawn(move || {
        crate::client::lease::block_termination_signals();
        wait_for_sigterm(read_end);
        super::cleanup::end_all_environments_now();
        die_of_sigterm();
    })?;
    // SAFETY: getpid has no preconditions.
    OWNER.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    WAKE.store(write_end, Ordering::SeqCst);
    // SAFETY: a handler that is async-signal-safe (getpid, write, sigaction, raise), on a zeroed
    // action whose mask is emptied.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // The host's interrupted system calls resume: the process is about to end anyway.
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(true)
}

/// Blocks until the handler writes its byte (or the pipe breaks, which cannot happen while the
/// process lives: its write end is never closed).
fn wait_for_sigterm(read_end: libc::c_int) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            return;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // No signal will come through this pipe: wait forever rather than end the process.
            loop {
                std::thread::park();
            }
        }
    }
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: errno is saved and restored around the calls, so the interrupted code never sees
    // it change; getpid, write, sigaction and raise are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let wake = WAKE.load(Ordering::SeqCst);
        if libc::getpid() == OWNER.load(Ordering::SeqCst) && wake >= 0 {
            let byte = 1u8;
            libc::write(wake, (&byte as *const u8).cast(), 1);
        } else {
            // A forked child: die as the default action would.
            die_of_sigterm();
        }
        *libc::__errno_location() = errno;
    }
}

/// Restores SIGTERM's default action and raises it in the calling thread, which ends the process
/// with SIGTERM as its cause (what a parent or a job scheduler expects to read).
fn die_of_sigterm() {
    // SAFETY: plain libc calls on zeroed structs on this stack; async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGTERM);
    }
}
