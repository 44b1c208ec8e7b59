//! Async calls completed on the event loop in batches: [`Completer`], one per asyncio loop. Every
//! awaitable of the extension goes through it, not through `pyo3_async_runtimes::future_into_py`:
//! that bridge enters Python from a runtime thread with nothing to keep it out once the
//! interpreter exits, and its `call_soon_threadsafe` lets go of the GIL while it writes to the
//! loop's self-pipe. The loop's thread can then finish `asyncio.run`, exit and start finalizing
//! before the runtime thread takes the GIL back, which aborts the process ("PyGILState_Release:
//! thread state must be current"), as a CI run saw right after an awaited `cleanup()`.
//!
//! A call awaited from asyncio runs as a task on Rayfine's runtime. The generic bridge
//! (`pyo3_async_runtimes::future_into_py`) takes the GIL on a runtime thread and schedules one
//! loop callback per finished call, so with 64 calls in flight the loop is woken, and the GIL
//! handed over, once per call. Here a finished call only queues its outcome; the first one queued
//! since the loop last looked schedules one `drain`, which completes every queued future on the
//! loop's own thread. Under load one wake-up serves many calls, and results are converted to
//! Python objects on the thread that uses them.
//!
//! The loop is woken through an eventfd it watches (`loop.add_reader`), which a runtime thread
//! writes without the GIL. `call_soon_threadsafe` needs the GIL on the runtime thread, and lets go
//! of it to write the loop's self-pipe: the loop's thread wakes, wants the GIL back, and waits
//! for the runtime thread to take it again and leave. Those hand-offs, a few wake-ups of sleeping
//! threads, were most of an awaited call's cost when calls go one at a time.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use serde_json::Value;

use crate::convert;
use crate::errors::to_py_err;

/// How a finished task's outcome becomes the future's result (or exception), with the GIL.
pub type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What a finished task left for the loop: its future and outcome.
type Finished = (Py<PyAny>, Outcome);

/// Shared between the loop side and the runtime's tasks. It holds the loop only weakly, so a
/// loop that is done with is freed (the completer lives in a `WeakKeyDictionary` keyed by it).
struct Queue {
    /// The asyncio loop the futures belong to.
    event_loop: LoopRef,
    /// `None` once the loop has stopped watching the eventfd (it was closed): outcomes that come
    /// after that are dropped, not kept, since their futures would hold the closed loop (the key
    /// of `rayfine.aio`'s completers) alive for good, and its eventfd open.
    finished: Mutex<Option<Vec<Finished>>>,
    /// True from the moment a drain is scheduled until it starts.
    scheduled: AtomicBool,
    /// How a finished call has the loop drain.
    wake: Wake,
}

/// How a finished call has the loop drain the queue.
enum Wake {
    /// An eventfd the loop watches with a [`FdDrain`]: the runtime thread writes it, no GIL needed.
    Fd(OwnedFd),
    /// `loop.call_soon_threadsafe(drain)`, with the GIL: for a loop that cannot watch a file
    /// descriptor (Windows' proactor), one without weak references (a completer per call, which
    /// must not leave a reader behind), or a system without eventfd.
    ThreadSafeCall,
}

/// A weak reference to the loop; a strong one for a loop type that has no weak references (then
/// `rayfine.aio` makes a completer per call, so it does not outlive the call).
enum LoopRef {
    Weak(Py<PyAny>),
    Strong(Py<PyAny>),
}

impl Queue {
    fn new(event_loop: LoopRef, wake: Wake) -> Queue {
        Queue { event_loop, finished: Mutex::new(Some(Vec::new())), scheduled: AtomicBool::new(false), wake }
    }

    /// Queues a finished call's outcome; whether it was (not if the loop is closed).
    fn push(&self, finished: Finished) -> bool {
        let mut queued = self.finished.lock();
        match queued.as_mut() {
            Some(queued) => {
                queued.push(finished);
                true
            }
            None => {
                drop(queued);
                // Without the GIL: pyo3 defers the references' release to its next entry.
                drop(finished);
                false
            }
        }
    }

    /// Has the loop drain the queue, from a runtime thread.
    fn wake_loop(self: &Arc<Queue>) {
        match &self.wake {
            Wake::Fd(fd) => {
                let one: u64 = 1;
                // SAFETY: an 8-byte write from a live u64 to the eventfd this queue owns, which
                // stays open while the queue (held by this task) lives. It fails only if the
                // counter would overflow, which needs 2^64 - 1 wake-ups that nobody reads.
                unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
            Wake::ThreadSafeCall => {
                attach_unless_exiting(|py| {
                    let scheduled = live_loop(py, self).and_then(|event_loop| {
                        let drain = Bound::new(py, Drain(self.clone())).ok()?;
                        event_loop.call_method1("call_soon_threadsafe", (drain,)).ok()
                    });
                    if scheduled.is_none() {
                        // The loop is closed or gone: nobody awaits these futures any more.
                        self.scheduled.store(false, Ordering::SeqCst);
                        let gone = self.finished.lock().as_mut().map(std::mem::take);
                        drop(gone);
                    }
                });
            }
        }
    }

    /// Sets the result or exception of every finished call's future (skipping cancelled ones).
    /// Runs on the loop's thread. A future that cannot be completed (its loop closed under it)
    /// is reported as unraisable and the others are still completed.
    fn drain(&self, py: Python<'_>) {
        self.scheduled.store(false, Ordering::SeqCst);
        let finished = self.finished.lock().as_mut().map(std::mem::take).unwrap_or_default();
        for (future, outcome) in finished {
            let future = future.bind(py);
            let completed = (|| -> PyResult<()> {
                if future.call_method0("done")?.is_truthy()? {
                    return Ok(()); // cancelled while the call ran
                }
                match outcome(py) {
                    Ok(value) => future.call_method1("set_result", (value,))?,
                    Err(err) => future.call_method1("set_exception", (err.into_value(py),))?,
                };
                Ok(())
            })();
            if let Err(err) = completed {
                err.write_unraisable(py, Some(future));
            }
        }
    }
}

/// Completes the futures of one asyncio loop's calls. Made by `rayfine.aio`, one per loop.
#[pyclass(module = "rayfine._rayfine", frozen)]
pub struct Completer {
    queue: Arc<Queue>,
}

#[pymethods]
impl Completer {
    /// Made on the loop's own thread (`rayfine.aio` makes it inside a coroutine), where
    /// `add_reader` may be called.
    #[new]
    fn new(event_loop: &Bound<'_, PyAny>) -> Completer {
        let weak = pyo3::types::PyWeakrefReference::new(event_loop).ok();
        if let (Some(weak), Some(fd)) = (&weak, new_eventfd()) {
            let raw = fd.as_raw_fd();
            let queue = Arc::new(Queue::new(LoopRef::Weak(weak.clone().into_any().unbind()), Wake::Fd(fd)));
            let watched = Bound::new(event_loop.py(), FdDrain(queue.clone())).and_then(|drain| event_loop.call_method1("add_reader", (raw, drain)));
            if watched.is_ok() {
                return Completer { queue };
            }
        }
        let event_loop = match weak {
            Some(weak) => LoopRef::Weak(weak.into_any().unbind()),
            None => LoopRef::Strong(event_loop.clone().unbind()),
        };
        Completer { queue: Arc::new(Queue::new(event_loop, Wake::ThreadSafeCall)) }
    }
}

/// A non-blocking eventfd, or `None` where there is none.
fn new_eventfd() -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: eventfd takes an initial value and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        // SAFETY: the descriptor was just returned to us and is owned by nothing else.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The reader a loop runs when its completer's eventfd is written: clears it, then drains. The
/// eventfd is read before the drain clears `scheduled`, so a call that finishes meanwhile and
/// writes it again is seen at the loop's next turn.
#[pyclass(module = "rayfine._rayfine", frozen)]
struct FdDrain(Arc<Queue>);

#[pymethods]
impl FdDrain {
    fn __call__(&self, py: Python<'_>) {
        if let Wake::Fd(fd) = &self.0.wake {
            let mut count: u64 = 0;
            // SAFETY: an 8-byte read into a live u64 from the eventfd the queue owns; on a
            // non-blocking eventfd that nobody wrote it fails with EAGAIN, which is fine.
            unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        }
        self.0.drain(py);
    }
}

/// The loop stopped watching the eventfd: it was closed (its selector's map cleared), with the
/// GIL held. Whatever is queued will never be completed; what finishes later is not kept.
impl Drop for FdDrain {
    fn drop(&mut self) {
        let left = self.0.finished.lock().take();
        drop(left);
    }
}

/// The callback a drain is scheduled with; holds the queue, not the completer, so nothing makes
/// a reference cycle through Rust that Python's collector cannot see.
#[pyclass(module = "rayfine._rayfine", frozen)]
struct Drain(Arc<Queue>);

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        self.0.drain(py);
    }
}

/// Stops the runtime's task when its future is cancelled (asyncio.wait_for, task.cancel()).
#[pyclass(module = "rayfine._rayfine", frozen)]
struct AbortOnCancel(tokio::task::AbortHandle);

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}

/// The loop a queue's weak reference points to, if it is still alive.
fn live_loop<'py>(py: Python<'py>, queue: &Queue) -> Option<Bound<'py, PyAny>> {
    match &queue.event_loop {
        LoopRef::Strong(event_loop) => Some(event_loop.bind(py).clone()),
        LoopRef::Weak(weak) => {
            let target = weak.bind(py).call0().ok()?;
            (!target.is_none()).then_some(target)
        }
    }
}

/// Set at interpreter exit (an `atexit` hook, before finalization starts): from then on, runtime
/// threads no longer enter Python. A thread that takes the GIL while the interpreter finalizes
/// aborts the process ("PyGILState_Release: thread state must be current"), which a call still
/// finishing in the background at exit did.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Runtime threads inside Python now; the exit hook waits for them to leave.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);

/// Runs `enter` with the GIL, unless the interpreter is exiting. Announcing first and checking
/// after (both sequentially consistent) means that either the exit hook sees this thread inside,
/// and waits, or this thread sees the hook's flag, and stays out.
pub fn attach_unless_exiting(enter: impl FnOnce(Python<'_>)) -> bool {
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    let entered = !EXITING.load(Ordering::SeqCst);
    if entered {
        Python::attach(enter);
    }
    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
    entered
}

/// The exit hook's half: no runtime thread enters Python any more, and those inside have left
/// (waited for without the GIL, which they need to leave; at most a second).
#[pyfunction]
pub fn interpreter_exiting(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
}

/// Runs `call` on the runtime and returns an asyncio future of its JSON result, completed
/// through `completer`.
pub fn spawn<'py, F>(py: Python<'py>, completer: &Bound<'py, Completer>, call: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = rayfine::Result<Value>> + Send + 'static,
{
    spawn_with(py, completer, async move {
        let outcome = call.await;
        Box::new(move |py: Python<'_>| match outcome {
            Ok(value) => convert::to_python(py, &value).map(Bound::unbind),
            Err(err) => Err(to_py_err(py, err)),
        }) as Outcome
    })
}

/// Runs `task` on the runtime and returns an asyncio future of what its outcome makes, completed
/// through `completer`.
pub fn spawn_with<'py, F>(py: Python<'py>, completer: &Bound<'py, Completer>, task: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = Outcome> + Send + 'static,
{
    let queue = completer.get().queue.clone();
    let event_loop = live_loop(py, &queue).ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("the completer's event loop is gone"))?;
    let future = event_loop.call_method0("create_future")?;
    let handle = future.clone().unbind();
    let task = pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let outcome = task.await;
        if queue.push((handle, outcome)) && !queue.scheduled.swap(true, Ordering::SeqCst) {
            queue.wake_loop();
        }
    });
    future.call_method1("add_done_callback", (AbortOnCancel(task.abort_handle()),))?;
    Ok(future)
}
