//! Async calls completed on the event loop in batches: [`Completer`], one per asyncio loop.
//!
//! A call awaited from asyncio runs as a task on Rayfine's runtime. The generic bridge
//! (`pyo3_async_runtimes::future_into_py`) takes the GIL on a runtime thread and schedules one
//! loop callback per finished call, so with 64 calls in flight the loop is woken, and the GIL
//! handed over, once per call. Here a finished call only queues its outcome; the first one queued
//! since the loop last looked schedules one `drain`, which completes every queued future on the
//! loop's own thread. Under load one wake-up serves many calls, and results are converted to
//! Python objects on the thread that uses them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use pyo3::prelude::*;
use serde_json::Value;

use crate::convert;
use crate::errors::to_py_err;

/// What a finished call left for the loop: its future and outcome.
type Finished = (Py<PyAny>, rayfine::Result<Value>);

/// Shared between the loop side and the runtime's tasks.
struct Queue {
    /// The asyncio loop the futures belong to.
    event_loop: Py<PyAny>,
    /// `Completer.drain`, bound; set on first use (a pyclass cannot name itself when built).
    drain: OnceLock<Py<PyAny>>,
    finished: Mutex<Vec<Finished>>,
    /// True from the moment a drain is scheduled until it starts.
    scheduled: AtomicBool,
}

/// Completes the futures of one asyncio loop's calls. Made by `rayfine.aio`, one per loop.
#[pyclass(module = "rayfine._rayfine", frozen)]
pub struct Completer {
    queue: Arc<Queue>,
}

#[pymethods]
impl Completer {
    #[new]
    fn new(event_loop: Py<PyAny>) -> Completer {
        Completer { queue: Arc::new(Queue { event_loop, drain: OnceLock::new(), finished: Mutex::new(Vec::new()), scheduled: AtomicBool::new(false) }) }
    }

    /// Sets the result or exception of every finished call's future (skipping cancelled ones).
    /// Runs on the loop's thread.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        self.queue.scheduled.store(false, Ordering::SeqCst);
        let finished = std::mem::take(&mut *self.queue.finished.lock());
        for (future, outcome) in finished {
            let future = future.bind(py);
            if future.call_method0("done")?.is_truthy()? {
                continue; // cancelled while the call ran
            }
            match outcome.map_err(|err| to_py_err(py, err)).and_then(|value| convert::to_python(py, &value)) {
                Ok(value) => future.call_method1("set_result", (value,))?,
                Err(err) => future.call_method1("set_exception", (err.into_value(py),))?,
            };
        }
        Ok(())
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

/// Runs `call` on the runtime and returns an asyncio future of its result, completed through
/// `completer`.
pub fn spawn<'py, F>(py: Python<'py>, completer: &Bound<'py, Completer>, call: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = rayfine::Result<Value>> + Send + 'static,
{
    let queue = completer.get().queue.clone();
    if queue.drain.get().is_none() {
        let _ = queue.drain.set(completer.getattr("drain")?.unbind());
    }
    let future = queue.event_loop.bind(py).call_method0("create_future")?;
    let handle = future.clone().unbind();
    let task = pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let outcome = call.await;
        queue.finished.lock().push((handle, outcome));
        if !queue.scheduled.swap(true, Ordering::SeqCst) {
            Python::attach(|py| {
                let drain = queue.drain.get().expect("set before the first call");
                if queue.event_loop.bind(py).call_method1("call_soon_threadsafe", (drain,)).is_err() {
                    // The loop is closed: nobody awaits these futures any more.
                    queue.scheduled.store(false, Ordering::SeqCst);
                    queue.finished.lock().clear();
                }
            });
        }
    });
    future.call_method1("add_done_callback", (AbortOnCancel(task.abort_handle()),))?;
    Ok(future)
}
