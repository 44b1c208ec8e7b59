//! The Python worker that runs the environment, and the handle every request handler shares.
//!
//! One worker process loads env.py and serves all calls; with `--session-workers N`, OpenEnv
//! sessions are spread over N of them ([`placement`]), each with its own GIL. Its three jobs have
//! a file each:
//! [`process`] starts it, restarts it with backoff when it dies or is killed, and says how it
//! ended; [`calls`] multiplexes calls over it (ids, replies, timeouts, cancellation); [`wire`]
//! reads and writes its lines in the shapes of [`crate::protocol::worker`], over the pipes of
//! [`channel`]. `worker.py`, in this folder too, is the Python half. A call in flight on a
//! worker that dies, or is killed because a sync call overran its timeout, fails with
//! [`CallError::WorkerLost`].

mod calls;
mod channel;
mod outcome;
mod placement;
mod process;
mod script;
mod wire;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};

use crate::protocol::{health_status, ErrorInfo, MethodInfo};
use calls::Session;
use outcome::Outcome;
use placement::Placement;

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

/// Cheap handle to the worker, shared by all request handlers; the restart loops own the
/// processes.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

/// What the handles share: the worker processes and where the session instances live.
struct Inner {
    /// The worker processes; the first serves `/call` (instance 0) and is the one whose phase
    /// the server reports. With `--session-workers 1`, the only one.
    processes: Vec<Arc<Shared>>,
    /// Which process holds each session instance. A plain mutex: never held across an await.
    placement: Mutex<Placement>,
}

/// What the handles and the restart loop of one worker process share.
struct Shared {
    /// Which process this is (0 is the first), for the log.
    index: usize,
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
}

impl Shared {
    /// The serving worker of this process, if it is serving.
    fn serving(&self) -> Option<Arc<Session>> {
        self.session.read().clone()
    }
}

impl Worker {
    /// Starts the worker and keeps it running until the returned handle's last clone is dropped
    /// and the server shuts down. With `config.processes` above one, the other processes start
    /// once the first has loaded the environment and only if it makes an instance per session
    /// (an Actor class): a module's sessions all share the first process's module.
    pub fn start(config: WorkerConfig) -> Worker {
        let count = config.processes.max(1);
        let mut processes = Vec::with_capacity(count);
        let mut ended_senders = Vec::with_capacity(count);
        for index in 0..count {
            let (phase, _) = watch::channel(Phase::Starting);
            let (ended_tx, ended) = watch::channel(false);
            processes.push(Arc::new(Shared { index, session: RwLock::new(None), phase, next_id: AtomicU64::new(1), stop: Notify::new(), ended }));
            ended_senders.push(ended_tx);
        }
        let first = Arc::downgrade(&processes[0]);
        for (shared, ended_tx) in processes.iter().zip(ended_senders) {
            let (weak, config, first) = (Arc::downgrade(shared), config.clone(), first.clone());
            let index = shared.index;
            tokio::spawn(async move {
                if index == 0 || process::wanted_beside(&first, &weak).await {
                    process::restart_loop(config, weak).await;
                }
                ended_tx.send_replace(true);
            });
        }
        Worker { inner: Arc::new(Inner { processes, placement: Mutex::new(Placement::new(count)) }) }
    }

    /// Kills the worker and everything it started, and returns once that is done (bounded): a
    /// server about to exit must not leave an escaped process of the environment behind.
    pub async fn stop(&self) {
        self.shutdown();
        // All were told to stop at once, so waiting for each in turn takes as long as the slowest.
        let all_ended = async {
            for shared in &self.inner.processes {
                let _ = shared.ended.clone().wait_for(|ended| *ended).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), all_ended).await;
    }

    /// Kills the worker and ends the restart loop; calls in flight fail with
    /// [`CallError::WorkerLost`].
    pub fn shutdown(&self) {
        for shared in &self.inner.processes {
            shared.stop.notify_one();
        }
    }

    /// Current phase: the first process's, which serves `/call`.
    pub fn phase(&self) -> Phase {
        self.first().phase.borrow().clone()
    }

    /// Watches phase changes (used to print readiness events).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.first().phase.subscribe()
    }

    /// The methods of the running worker, or why there is none.
    pub fn methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        Ok(self.describing()?.method_list().to_vec())
    }

    /// Whether the running worker's environment has a method of this name: what the OpenEnv
    /// routes ask on every request, without copying the method list.
    pub fn has_method(&self, name: &str) -> Result<bool, CallError> {
        Ok(self.describing()?.has_method(name))
    }

    /// What the environment says of itself, or why there is no worker to say it.
    pub fn env_info(&self) -> Result<EnvInfo, CallError> {
        Ok(self.describing()?.env().clone())
    }

    /// Calls `method` with raw JSON `args` (an array) and `kwargs` (an object).
    pub async fn call(&self, method: &str, args: &str, kwargs: &str, timeout: Option<Duration>) -> Outcome {
        let first = self.first();
        serving(first)?.call(&first.next_id, method, args, kwargs, &CallOptions::default(), timeout).await
    }

    /// Calls `method` with the options of a call made for an OpenEnv session (its instance,
    /// lenient keywords, an action), in the process that holds the instance.
    pub async fn call_with(&self, method: &str, args: &str, kwargs: &str, options: &CallOptions<'_>, timeout: Option<Duration>) -> Outcome {
        let shared = self.holding(options.instance);
        serving(shared)?.call(&shared.next_id, method, args, kwargs, options, timeout).await
    }

    /// Creates session instance `instance` (an `Actor()` of its own) in the serving process that
    /// holds the fewest, waiting at most `limit` for its constructor. An environment without an
    /// Actor has nothing to create: its sessions share the module.
    pub async fn open_instance(&self, instance: u64, limit: Duration) -> Result<(), CallError> {
        let index = self.inner.placement.lock().place(instance, |p| self.inner.processes[p].serving().is_some());
        let shared = &self.inner.processes[index];
        serving(shared)?.control(&shared.next_id, |id| wire::encode_open(id, instance), limit).await.map(drop)
    }

    /// Drops session instance `instance`, after its `close()` if it has one (at most `limit`).
    /// Nothing happens if the worker that held it is gone: so is the instance.
    pub async fn close_instance(&self, instance: u64, limit: Duration) -> Result<(), CallError> {
        let index = self.inner.placement.lock().forget(instance).unwrap_or(0);
        let shared = &self.inner.processes[index];
        serving(shared)?.control(&shared.next_id, |id| wire::encode_close(id, instance), limit).await.map(drop)
    }

    fn first(&self) -> &Shared {
        &self.inner.processes[0]
    }

    /// The process holding a session's instance; the first for instance 0 or an unknown one
    /// (whose worker then answers that there is no such instance).
    fn holding(&self, instance: Option<u64>) -> &Shared {
        let index = instance.and_then(|i| self.inner.placement.lock().holder(i)).unwrap_or(0);
        &self.inner.processes[index]
    }

    /// A serving process to describe the environment: the first, else any (they all loaded the
    /// same env.py), else the first's reason for not serving.
    fn describing(&self) -> Result<Arc<Session>, CallError> {
        self.inner.processes.iter().find_map(|shared| shared.serving()).map_or_else(|| serving(self.first()), Ok)
    }
}

/// The serving worker of a process, or why it is not serving.
fn serving(shared: &Shared) -> Result<Arc<Session>, CallError> {
    shared.serving().ok_or_else(|| CallError::Unavailable(unavailable_reason(&shared.phase.borrow())))
}

fn unavailable_reason(phase: &Phase) -> String {
    match phase {
        Phase::Starting => "the environment is still loading".into(),
        Phase::Ready => "the worker is between sessions".into(),
        Phase::Restarting(why) => format!("the worker is restarting: {why}"),
        Phase::Failed(error) => format!("the environment failed to load: {}: {}", error.kind, error.message),
    }
}
