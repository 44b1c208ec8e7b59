//! The Python worker that runs the environment, and the handle every request handler shares.
//!
//! One worker process loads env.py and serves all calls. Its three jobs have a file each:
//! [`process`] starts it, restarts it with backoff when it dies or is killed, and says how it
//! ended; [`calls`] multiplexes calls over it (ids, replies, timeouts, cancellation); [`wire`]
//! reads and writes its lines in the shapes of [`crate::protocol::worker`], over the pipes of
//! [`channel`]. `worker.py`, in this folder too, is the Python half. A call in flight on a
//! worker that dies, or is killed because a sync call overran its timeout, fails with
//! [`CallError::WorkerLost`].

mod calls;
mod channel;
mod interpreter;
mod outcome;
mod process;
mod script;
mod wire;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{watch, Notify};

use crate::protocol::{health_status, ErrorInfo, Interpreter, MethodInfo};
use calls::Session;
use outcome::Outcome;

pub use crate::protocol::worker::{CallOptions, EnvInfo};
pub use outcome::CallError;
pub use process::{WorkerConfig, WorkerPriority};
pub(crate) use script::ScriptFile;

/// The worker script (`worker.py` in this folder), embedded so the server needs no file beside
/// it.
pub const WORKER_SCRIPT: &str = include_str!("worker.py");

/// What the worker is doing, as `/health` reports it.
#[derive(Clone)]
pub enum Phase {
    /// Loading env.py for the first time.
    Starting,
    /// Serving.
    Ready,
    /// Being started again after it died or was killed.
    Restarting(String),
    /// Loading failed; nothing will be served.
    Failed(ErrorInfo),
}

impl Phase {
    /// The `/health` status word.
    pub fn status(&self) -> &'static str {
        match self {
            Phase::Starting => health_status::STARTING,
            Phase::Ready => health_status::OK,
            Phase::Restarting(_) => health_status::RESTARTING,
            Phase::Failed(_) => health_status::FAILED,
        }
    }
}

/// Cheap handle to the worker, shared by all request handlers; the restart loop owns the process.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

/// What the handles and the restart loop share.
struct Shared {
    /// The serving worker, if any. Read on every call, written only on (re)start.
    session: RwLock<Option<Arc<Session>>>,
    /// Current phase; a watch so the server can print readiness as soon as it changes.
    phase: watch::Sender<Phase>,
    /// Ids tag calls on the channel so replies can come back in any order.
    next_id: AtomicU64,
    /// Asks the restart loop to kill the worker and end (server shutdown).
    stop: Notify,
    /// Turns true when the restart loop has ended, the worker and all it started killed.
    ended: watch::Receiver<bool>,
    /// The interpreter the worker runs on, once a worker has said (see [`interpreter`]).
    interpreter: parking_lot::Mutex<Option<Interpreter>>,
}

impl Worker {
    /// Starts the worker and keeps it running until the returned handle's last clone is dropped
    /// and the server shuts down.
    pub fn start(config: WorkerConfig) -> Worker {
        let (phase, _) = watch::channel(Phase::Starting);
        let (ended_tx, ended) = watch::channel(false);
        let shared = Arc::new(Shared { session: RwLock::new(None), phase, next_id: AtomicU64::new(1), stop: Notify::new(), ended, interpreter: parking_lot::Mutex::new(None) });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            process::restart_loop(config, weak).await;
            ended_tx.send_replace(true);
        });
        Worker { shared }
    }

    /// Kills the worker and everything it started, and returns once that is done (bounded): a
    /// server about to exit must not leave an escaped process of the environment behind.
    pub async fn stop(&self) {
        self.shutdown();
        let mut ended = self.shared.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(15), ended.wait_for(|ended| *ended)).await;
    }

    /// Kills the worker and ends the restart loop; calls in flight fail with
    /// [`CallError::WorkerLost`].
    pub fn shutdown(&self) {
        self.shared.stop.notify_one();
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.shared.phase.borrow().clone()
    }

    /// Watches phase changes (used to print readiness events).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// The methods of the running worker, or why there is none.
    pub fn methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        Ok(self.session()?.method_list().to_vec())
    }

    /// Whether the running worker's environment has a method of this name: what the OpenEnv
    /// routes ask on every request, without copying the method list.
    pub fn has_method(&self, name: &str) -> Result<bool, CallError> {
        Ok(self.session()?.has_method(name))
    }

    /// The interpreter the worker runs on, resolved through any wrapper, once one has started.
    pub fn interpreter(&self) -> Option<Interpreter> {
        self.shared.interpreter.lock().clone()
    }

    /// What the environment says of itself, or why there is no worker to say it.
    pub fn env_info(&self) -> Result<EnvInfo, CallError> {
        Ok(self.session()?.env().clone())
    }

    /// Calls `method` with raw JSON `args` (an array) and `kwargs` (an object).
    pub async fn call(&self, method: &str, args: &str, kwargs: &str, timeout: Option<Duration>) -> Outcome {
        self.session()?.call(&self.shared.next_id, method, args, kwargs, &CallOptions::default(), timeout).await
    }

    /// Calls `method` with the options of a call made for an OpenEnv session (its instance,
    /// lenient keywords, an action).
    pub async fn call_with(&self, method: &str, args: &str, kwargs: &str, options: &CallOptions<'_>, timeout: Option<Duration>) -> Outcome {
        self.session()?.call(&self.shared.next_id, method, args, kwargs, options, timeout).await
    }

    /// Creates session instance `instance` (an `Actor()` of its own), waiting at most `limit`
    /// for its constructor. An environment without an Actor has nothing to create: its sessions
    /// share the module.
    pub async fn open_instance(&self, instance: u64, limit: Duration) -> Result<(), CallError> {
        self.session()?.control(&self.shared.next_id, |id| wire::encode_open(id, instance), limit).await.map(drop)
    }

    /// Drops session instance `instance`, after its `close()` if it has one (at most `limit`).
    /// Nothing happens if the worker that held it is gone: so is the instance.
    pub async fn close_instance(&self, instance: u64, limit: Duration) -> Result<(), CallError> {
        self.session()?.control(&self.shared.next_id, |id| wire::encode_close(id, instance), limit).await.map(drop)
    }

    fn session(&self) -> Result<Arc<Session>, CallError> {
        if let Some(session) = self.shared.session.read().as_ref() {
            return Ok(session.clone());
        }
        Err(CallError::Unavailable(unavailable_reason(&self.phase())))
    }
}

fn unavailable_reason(phase: &Phase) -> String {
    match phase {
        Phase::Starting => "the environment is still loading".into(),
        Phase::Ready => "the worker is between sessions".into(),
        Phase::Restarting(why) => format!("the worker is restarting: {why}"),
        Phase::Failed(error) => format!("the environment failed to load: {}: {}", error.kind, error.message),
    }
}
