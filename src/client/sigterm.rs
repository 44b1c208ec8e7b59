//! Ends the environments on SIGTERM without waiting for the host program's main thread.
//!
//! An embedding interpreter such as CPython runs its signal handlers on its main thread, between
//! bytecodes. A SIGTERM that lands while that thread is inside a long C call (a tensor op, a key
//! derivation, or a `time.sleep` it had not quite entered when the signal came) waits for the
//! call to return, and the environments' cleanup waits with it: for minutes, or until the job
//! scheduler's SIGKILL. Here the handler only writes a byte to a pipe; a thread of Rayfine's reads
//! it, ends every environment that is not kept (within [`CLEANUP_LIMIT`]), and then lets
//! SIGTERM's default action end the process, as it would have ended without Rayfine.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// How long the cleanup may take before the process dies anyway: a job scheduler's grace
/// before SIGKILL is commonly 30 s, and the containers' stdin and lease end what is left.
const CLEANUP_LIMIT: Duration = Duration::from_secs(15);

/// The process that installed the handler: a forked child inherits the handler but not the
/// thread, and its parent's environments are not its to end.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// The pipe's write end, for the handler (-1 until installed).
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// Installs, once per process, a SIGTERM handler that ends every environment that is not kept,
/// from a thread of Rayfine's, then ends the process with SIGTERM. For a host that keeps the
/// signals ([`leave_signals_to_the_host`](super::leave_signals_to_the_host)), such as a Python
/// interpreter; without that call Rayfine's own Ctrl-C/SIGTERM handler does this, and this one
/// is not installed. It takes the place of whatever SIGTERM handler is installed: the host
/// decides whether to call it (Python's layer does only where SIGTERM had its default action,
/// after installing a fallback its signal API can report and restore). Returns whether the
/// handler is in place. A later `sigaction` of the host's replaces it, so the host's own choice
/// wins.
pub fn end_environments_on_sigterm() -> io::Result<bool> {
    if super::cleanup::rayfine_takes_signals() {
        return Ok(false);
    }
    // Held while installing: two threads asking at once install one handler, one thread.
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock();
    if !*installed {
        install()?;
        *installed = true;
    }
    Ok(true)
}

fn install() -> io::Result<()> {
    let (read_end, write_end) = pipe()?;
    let reader = std::thread::Builder::new().name("rayfine-sigterm".into()).spawn(move || {
        crate::client::lease::block_termination_signals();
        if wait_for_sigterm(read_end) {
            end_all_within(CLEANUP_LIMIT);
            die_of_sigterm();
        }
    });
    if let Err(err) = reader {
        close(read_end);
        close(write_end);
        return Err(err);
    }
    // SAFETY: getpid has no preconditions.
    OWNER.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    WAKE.store(write_end, Ordering::SeqCst);
    // SAFETY: a handler that is async-signal-safe (getpid, write, sigaction, raise), on a zeroed
    // action whose mask is emptied.
    let set = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // The host's interrupted system calls resume (the process is about to end anyway); on
        // the alternate stack where the host has one, as CPython's own handler does.
        action.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) == 0
    };
    if !set {
        let err = io::Error::last_os_error();
        WAKE.store(-1, Ordering::SeqCst);
        // The reader sees end of file and ends without doing anything.
        close(write_end);
        return Err(err);
    }
    Ok(())
}

/// A pipe whose write end never blocks (the handler's) and whose read end does (the thread's).
fn pipe() -> io::Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // SAFETY: fcntl on a descriptor this function just made.
    if unsafe { libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        let err = io::Error::last_os_error();
        close(read_end);
        close(write_end);
        return Err(err);
    }
    Ok((read_end, write_end))
}

fn close(fd: libc::c_int) {
    // SAFETY: closes a descriptor this module made and nothing else holds.
    unsafe { libc::close(fd) };
}

/// Blocks until the handler writes its byte: true. False when the pipe ended (the install
/// failed). A read that fails otherwise hands SIGTERM back to its default action, so a signal
/// nobody will read cannot be swallowed.
fn wait_for_sigterm(read_end: libc::c_int) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => return true,
            0 => return false,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => {
                WAKE.store(-1, Ordering::SeqCst);
                restore_default();
                return false;
            }
        }
    }
}

/// Ends every environment, on a thread of its own so that a cleanup that panics or hangs can
/// neither keep the process alive nor swallow the signal. Where no thread can be had (a pids
/// limit), on this one: bounded then only by the removals' own limit, but never skipped.
fn end_all_within(limit: Duration) {
    let end_all = || {
        let _ = std::panic::catch_unwind(super::cleanup::end_all_environments_now);
    };
    let (done, ended) = std::sync::mpsc::channel();
    let cleanup = std::thread::Builder::new().name("rayfine-sigterm-cleanup".into()).spawn(move || {
        end_all();
        let _ = done.send(());
    });
    match cleanup {
        Ok(_) => {
            let _ = ended.recv_timeout(limit);
        }
        Err(_) => end_all(),
    }
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: errno is saved and restored around the calls, so the interrupted code never sees
    // it change; getpid, write, sigaction, pthread_sigmask and raise are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let wake = WAKE.load(Ordering::SeqCst);
        let byte = 1u8;
        let owner = libc::getpid() == OWNER.load(Ordering::SeqCst);
        // A forked child (its parent's environments are not its to end), or a pipe that is gone:
        // die as the default action would. A full pipe (EAGAIN) already holds a wake-up.
        if !owner || wake < 0 || (libc::write(wake, (&byte as *const u8).cast(), 1) < 0 && *libc::__errno_location() == libc::EBADF) {
            die_of_sigterm();
        }
        *libc::__errno_location() = errno;
    }
}

/// Puts SIGTERM's default action back.
fn restore_default() {
    // SAFETY: a zeroed action on this stack; sigaction is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// Restores SIGTERM's default action and raises it in the calling thread, which ends the process
/// with SIGTERM as its cause (what a parent or a job scheduler expects to read).
fn die_of_sigterm() {
    restore_default();
    // SAFETY: plain libc calls on a signal set on this stack; async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGTERM);
    }
}
