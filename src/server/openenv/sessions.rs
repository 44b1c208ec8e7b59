//! OpenEnv sessions: one episode's worth of state each, with an Actor instance of its own in the
//! worker ("factory mode"), bounded in number, and reaped when their client is gone.
//!
//! A WebSocket connection is a session; so is one made by MCP's `openenv/session/create`, which a
//! WebSocket may later attach to (`/ws?session_id=`). The table holds both kinds by id. A slot is
//! taken before the Actor is constructed, so a burst of connections can never overshoot the limit,
//! and given back when the session has ended, however it ends, and the worker has dropped its
//! instance: until then the instance's `close()` (or a constructor a client gave up waiting for)
//! still runs in the worker, and a client that opens and leaves again and again must not pile up
//! work there that no limit bounds.
//!
//! A session whose call failed in a way that leaves its instance unusable ([`breaks_session`]: a
//! sync call still running after its timeout, an instance lost with its worker) is ended at once,
//! whoever drives it, so that no later call runs beside the stuck one or on nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::server::worker::{CallError, Worker};

/// How many sessions may exist and how long one may go unheard from.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Sessions at once; the next one is refused with OpenEnv's `CAPACITY_REACHED`.
    pub max_sessions: usize,
    /// A session whose client sent nothing (not even a pong to the server's pings) for this long
    /// is ended and its slot freed: its client vanished without closing.
    pub idle_timeout: Duration,
    /// How long an Actor's constructor or `close()` may take.
    pub setup_timeout: Duration,
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Every slot is taken. The message is OpenEnv's, word for word, so clients that match on it
    /// keep working.
    #[error("Server at capacity: {active}/{max} sessions active. Cannot accept new connections.")]
    Capacity {
        /// Sessions now.
        active: usize,
        /// The limit.
        max: usize,
    },
    /// The Actor's constructor failed, or there is no worker to run it.
    #[error("the environment could not create a session: {0}")]
    Factory(CallError),
}

/// What the server itself tracks of an episode, for environments without a `state` method.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// The `episode_id` given to the last reset, if any.
    pub episode_id: Option<String>,
    /// Steps since the last reset.
    pub step_count: u64,
}

/// One session.
pub struct EnvSession {
    /// Its id, as MCP's `openenv/session/create` returns it.
    pub id: String,
    /// Its Actor instance in the worker; `None` for module-based environments, whose sessions
    /// share the module (there is nothing to instantiate).
    pub instance: Option<u64>,
    /// Held for the length of each call ([`EnvSession::turn`]): a session's calls run one at a
    /// time, whether they come over its WebSocket or over MCP with its id.
    calls: tokio::sync::Mutex<Progress>,
    /// When its client was last heard from.
    last_activity: Mutex<Instant>,
    /// A WebSocket drives it (and watches its client's liveness itself).
    attached: AtomicBool,
    /// MCP asked to close it while a WebSocket was attached: it ends when that one detaches.
    close_requested: AtomicBool,
    /// Whether a WebSocket created it (and so ends it when it closes).
    pub owned_by_socket: bool,
    /// It was ended (taken out of the table): a WebSocket still attached must close.
    ended: AtomicBool,
    /// Wakes the WebSocket attached to it when it is ended elsewhere (a call over MCP broke
    /// it), so that the socket closes then, not at its client's next request.
    ended_signal: tokio::sync::Notify,
}

impl EnvSession {
    /// Notes that its client was heard from.
    pub fn touch(&self) {
        *self.last_activity.lock() = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_activity.lock().elapsed()
    }

    /// Marks it attached to a WebSocket; false if one already is.
    pub fn attach(&self) -> bool {
        !self.attached.swap(true, Ordering::AcqRel)
    }

    /// Marks it detached; true if it should now end (MCP asked to close it meanwhile).
    pub fn detach(&self) -> bool {
        self.touch();
        self.attached.store(false, Ordering::Release);
        self.close_requested.load(Ordering::Acquire)
    }

    /// Whether a WebSocket drives it now.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Asks for it to end when its WebSocket detaches.
    pub fn request_close(&self) {
        self.close_requested.store(true, Ordering::Release);
    }

    /// Whether it was ended, by its own client, the reaper, or a call that broke it.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Returns once it has been ended (at once if it was already).
    pub async fn ended(&self) {
        let notified = self.ended_signal.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: an end between the two still wakes this.
        notified.as_mut().enable();
        if self.is_ended() {
            return;
        }
        notified.await;
    }

    /// Waits for this session's turn (its calls run one at a time, whoever makes them) and holds
    /// it; fails if the session was ended meanwhile, since the call before may have broken it and
    /// still be running on its instance.
    pub async fn turn(&self) -> Result<tokio::sync::MutexGuard<'_, Progress>, CallError> {
        let turn = self.calls.lock().await;
        if self.is_ended() {
            return Err(CallError::InstanceLost(format!("session {} has ended (a call before this one timed out, or it was closed)", self.id)));
        }
        Ok(turn)
    }
}

/// Whether a call that failed with `err` leaves its session unusable: a timed-out call (a sync
/// one still runs on the instance; OpenEnv's clients are not told which), or an instance gone
/// with its worker.
pub fn breaks_session(err: &CallError) -> bool {
    matches!(err, CallError::Timeout { .. } | CallError::Unavailable(_) | CallError::WorkerLost(_) | CallError::InstanceLost(_))
}

/// Every session of this server.
pub struct Sessions {
    /// Its limits.
    pub limits: SessionLimits,
    /// Live sessions by id.
    table: Mutex<HashMap<String, Arc<EnvSession>>>,
    /// Slots taken: live sessions, those whose Actor is being constructed, and ended ones whose
    /// instance the worker has not yet dropped. Shared with the tasks that drop them.
    taken: Arc<AtomicUsize>,
    /// Instance ids; 0 is the worker's default instance, which `/call` uses.
    next_instance: AtomicU64,
    /// The ids of the last [`RECENTLY_ENDED`] sessions ended, newest last: a client that comes
    /// back to one (OpenEnv's client reconnects its WebSocket to the same id) is told it ended,
    /// not that it never existed.
    recently_ended: Mutex<VecDeque<String>>,
}

/// How many ended sessions' ids are remembered.
const RECENTLY_ENDED: usize = 4096;

/// Why a session is not there, for an attach or a call naming it. The first words are
/// OpenEnv's own answer to an unknown id, so clients that match on them keep working.
pub fn missing_session_message(id: &str, ended: bool) -> String {
    if ended {
        format!("Unknown session_id: {id} (it has ended: a call of it timed out or lost its instance, or it was closed)")
    } else {
        format!("Unknown session_id: {id}")
    }
}

impl Sessions {
    /// An empty table. The reaper of sessions nobody drives starts with it, if a runtime runs.
    pub fn new(limits: SessionLimits, worker: Worker) -> Arc<Sessions> {
        let sessions = Arc::new(Sessions {
            limits,
            table: Mutex::new(HashMap::new()),
            taken: Arc::new(AtomicUsize::new(0)),
            next_instance: AtomicU64::new(1),
            recently_ended: Mutex::new(VecDeque::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(reap_unattached(Arc::downgrade(&sessions), worker));
        }
        sessions
    }

    /// Sessions now.
    pub fn active(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Creates a session: takes a slot, then constructs its Actor (if the environment has one).
    pub async fn create(&self, worker: &Worker, owned_by_socket: bool) -> Result<Arc<EnvSession>, CreateError> {
        let max = self.limits.max_sessions;
        if self.taken.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(CreateError::Capacity { active: self.active(), max });
        }
        // From here until the session is in the table, the slot (and the instance, once asked
        // for) belongs to this guard: a failed open, or a caller that gives up meanwhile (an HTTP
        // client hanging up drops this future), gives both back.
        let mut reservation = Reservation { sessions: self, worker, instance: None, kept: false };
        let factory = worker.env_info().map_err(CreateError::Factory)?.factory;
        if factory {
            let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
            reservation.instance = Some(instance);
            worker.open_instance(instance, self.limits.setup_timeout).await.map_err(CreateError::Factory)?;
        }
        let session = Arc::new(EnvSession {
            id: session_id(),
            instance: reservation.instance,
            calls: tokio::sync::Mutex::new(Progress::default()),
            last_activity: Mutex::new(Instant::now()),
            attached: AtomicBool::new(owned_by_socket),
            close_requested: AtomicBool::new(false),
            owned_by_socket,
            ended: AtomicBool::new(false),
            ended_signal: tokio::sync::Notify::new(),
        });
        self.table.lock().insert(session.id.clone(), session.clone());
        reservation.kept = true;
        Ok(session)
    }

    /// The session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<EnvSession>> {
        self.table.lock().get(id).cloned()
    }

    /// Why there is no session `id`: it ended a while ago, or it never was.
    pub fn missing(&self, id: &str) -> String {
        missing_session_message(id, self.recently_ended.lock().iter().any(|ended| ended == id))
    }

    /// Ends a session: takes it out of the table at once and drops its instance in the
    /// background (its `close()` may take a while, and nobody waits for it), giving its slot
    /// back after that. Ending one twice does nothing.
    pub fn end(&self, session: &Arc<EnvSession>, worker: &Worker) {
        if self.table.lock().remove(&session.id).is_none() {
            return;
        }
        session.ended.store(true, Ordering::Release);
        session.ended_signal.notify_waiters();
        {
            let mut ended = self.recently_ended.lock();
            if ended.len() == RECENTLY_ENDED {
                ended.pop_front();
            }
            ended.push_back(session.id.clone());
        }
        self.release(session.instance, worker, Some(session.clone()));
    }

    /// Ends `session` if `err`, what one of its calls failed with, leaves it unusable
    /// ([`breaks_session`]); says whether it did.
    pub fn end_if_broken(&self, session: &Arc<EnvSession>, worker: &Worker, err: &CallError) -> bool {
        if !breaks_session(err) {
            return false;
        }
        self.end(session, worker);
        true
    }

    /// Drops `instance` in the worker, in the background, then gives its slot back. The close
    /// waits for the server's call of `session` in flight (an MCP `openenv/session/close` or the
    /// reaper may end a session while one runs), so that the Actor's `close()` does not run beside
    /// it; a sync call that timed out is past waiting for, since its thread runs on unseen. A close
    /// of an instance whose constructor still runs waits for it in the worker; one the worker
    /// never made is answered at once. The slot comes back when the close is answered, or after
    /// the set-up timeout (the worker's event loop is then checked, and the worker restarted if
    /// that is stuck). A module-based environment's session has no instance: its slot comes back
    /// at once.
    fn release(&self, instance: Option<u64>, worker: &Worker, session: Option<Arc<EnvSession>>) {
        let (Some(instance), Ok(runtime)) = (instance, tokio::runtime::Handle::try_current()) else {
            self.taken.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        let worker = worker.clone();
        let limit = self.limits.setup_timeout;
        let taken = self.taken.clone();
        runtime.spawn(async move {
            if let Some(session) = session {
                drop(session.calls.lock().await);
            }
            match worker.close_instance(instance, limit).await {
                // The worker that held it is gone, and the instance with it.
                Ok(()) | Err(CallError::Unavailable(_) | CallError::WorkerLost(_)) => {}
                Err(err) => tracing::warn!("closing session instance {instance}: {err}"),
            }
            taken.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Ends a session nobody drives that has been silent for the idle timeout, unless a call
    /// of it is running or a WebSocket attaches meanwhile (claiming it first settles that race).
    fn reap_if_idle(&self, session: &Arc<EnvSession>, worker: &Worker) -> bool {
        if session.idle_for() <= self.limits.idle_timeout || session.calls.try_lock().is_err() {
            return false;
        }
        if session.attached.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        self.end(session, worker);
        true
    }
}

/// A slot taken for a session being created: given back, with its instance, unless the session
/// made it into the table.
struct Reservation<'a> {
    sessions: &'a Sessions,
    worker: &'a Worker,
    instance: Option<u64>,
    /// The session is in the table: the table owns the slot now.
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.sessions.release(self.instance, self.worker, None);
        }
    }
}

/// Ends sessions that no WebSocket drives (made over MCP) once their client has been silent for
/// the idle timeout. Sessions with a WebSocket are watched by it, through pings.
async fn reap_unattached(sessions: Weak<Sessions>, worker: Worker) {
    let period = match sessions.upgrade() {
        Some(sessions) => (sessions.limits.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(sessions) = sessions.upgrade() else { return };
        let idle: Vec<Arc<EnvSession>> = sessions
            .table
            .lock()
            .values()
            .filter(|s| !s.is_attached() && s.idle_for() > sessions.limits.idle_timeout)
            .cloned()
            .collect();
        for session in idle {
            if sessions.reap_if_idle(&session, &worker) {
                tracing::info!(session = %session.id, "ended a session nobody used for {:?}", sessions.limits.idle_timeout);
            }
        }
    }
}

/// A session id: 128 random bits from the kernel, as a UUID-shaped string like OpenEnv's.
fn session_id() -> String {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the given length into the buffer it is given.
        let got = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
        if got <= 0 {
            // Only a kernel older than 3.17 lacks getrandom; ids then need only be unique.
            let fallback = SESSION_FALLBACK.fetch_add(1, Ordering::Relaxed).to_le_bytes();
            bytes[..8].copy_from_slice(&fallback);
            bytes[8..].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
            break;
        }
        filled += got as usize;
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

static SESSION_FALLBACK: AtomicU64 = AtomicU64::new(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_uuid_shaped_and_distinct() {
        let (a, b) = (session_id(), session_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4', "version 4: {a}");
        assert_eq!(a.matches('-').count(), 4);
    }
}
