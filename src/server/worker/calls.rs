//! Calls multiplexed over one worker process: each is tagged with an id, waits for the reply with
//! that id, and is stopped when it overruns its timeout.
//!
//! Many handlers call at once and the worker answers in any order, so the replies have to be
//! routed back. Calls are written straight from the handler that makes them; replies are routed
//! to the waiting call by whoever reads them, the reader task or a handler polling for its own
//! (see [`super::channel`]). A [`Session`] lasts as long as one worker process: when it ends, the
//! calls still waiting on it fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::channel::{Inbox, Outbox};
use super::outcome::{CallError, Outcome};
use super::wire;
use crate::protocol::worker::EnvInfo;
use crate::protocol::MethodInfo;

/// A method and how long its last call took, which decides whether the next one polls.
struct MethodEntry {
    info: MethodInfo,
    /// Microseconds from sending the last call to its reply; 0 before the first.
    last_micros: AtomicU64,
}

impl MethodEntry {
    fn record(&self, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_micros.store(micros, Ordering::Relaxed);
    }
}

/// One running worker process and its channel.
pub(super) struct Session {
    /// The write side of the channel to the worker.
    outbox: Outbox,
    /// The read side: the worker's replies.
    inbox: Inbox,
    /// Calls awaiting a reply. A plain mutex: it is never held across an await.
    pending: Mutex<Pending>,
    /// Methods by name, as the worker described them.
    methods: HashMap<String, MethodEntry>,
    /// The methods in the worker's order, for `/methods`.
    method_list: Vec<MethodInfo>,
    /// What the environment says of itself.
    env: EnvInfo,
    /// How long a call alone in flight polls for its reply.
    reply_poll: Duration,
    /// Asks the restart loop to kill this worker (a sync call overran its timeout, or its event
    /// loop stopped answering).
    kill: Notify,
    /// Why it is to be killed, once asked: what the calls failed by the kill say.
    kill_reason: Mutex<Option<String>>,
    /// Set while a probe of the worker's event loop is out ([`Session::check_loop`]), so that
    /// many calls timing out at once send one.
    probing: AtomicBool,
}

/// Calls awaiting a reply, by id, and whether the worker is gone.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Outcome>>,
    /// Set by [`Session::fail_pending`]: a call that got this session just before its worker
    /// ended must not wait for a reply nothing will ever route to it.
    closed: bool,
}

impl Pending {
    /// Registers a call; false when the worker is gone.
    fn insert(&mut self, id: u64, waiter: oneshot::Sender<Outcome>) -> bool {
        if self.closed {
            return false;
        }
        self.waiting.insert(id, waiter);
        true
    }

    fn remove(&mut self, id: &u64) -> Option<oneshot::Sender<Outcome>> {
        self.waiting.remove(id)
    }
}

/// The error of a call made on a session whose worker has just ended.
fn gone() -> CallError {
    CallError::WorkerLost("the worker stopped before the request was sent".into())
}

/// How long the worker's event loop may take to answer a probe, at least and at most; within
/// that, as long as the call that timed out was given. At least 10 s: the loop may be busy for a
/// while with work that is no fault (a short sync method that ran long once on the loop's
/// thread, hundreds of sessions' CPU-bound steps switching the GIL every 50 ms), and a probe that
/// killed a worker for that would end every session; a loop silent for 10 s is stuck for all of
/// them.
const LOOP_PROBE_LIMITS: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(60));

impl Session {
    /// A session over a worker that has sent its handshake, listing `method_list`.
    pub(super) fn new(outbox: Outbox, inbox: Inbox, method_list: Vec<MethodInfo>, env: EnvInfo, reply_poll: Duration) -> Session {
        let methods = method_list
            .iter()
            .map(|m| (m.name.clone(), MethodEntry { info: m.clone(), last_micros: AtomicU64::new(0) }))
            .collect();
        Session {
            outbox,
            inbox,
            pending: Mutex::new(Pending::default()),
            methods,
            method_list,
            env,
            reply_poll,
            kill: Notify::new(),
            kill_reason: Mutex::new(None),
            probing: AtomicBool::new(false),
        }
    }

    /// The methods in the worker's order.
    pub(super) fn method_list(&self) -> &[MethodInfo] {
        &self.method_list
    }

    /// Whether the environment has a method of this name.
    pub(super) fn has_method(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// What the environment says of itself.
    pub(super) fn env(&self) -> &EnvInfo {
        &self.env
    }

    /// Sends a control line (open or close an instance) made by `encode` from the next id, and
    /// waits for its reply, at most `limit`.
    pub(super) async fn control(self: &Arc<Self>, ids: &AtomicU64, encode: impl FnOnce(u64) -> Vec<u8>, limit: Duration) -> Outcome {
        let id = ids.fetch_add(1, Ordering::Relaxed);
        match self.exchange(&encode(id), id, limit).await {
            Some(outcome) => outcome,
            None => {
                self.check_loop(ids, limit);
                Err(CallError::Timeout { method: "the session's set-up or tear-down".into(), seconds: limit.as_secs_f64(), action: "it is left to finish" })
            }
        }
    }

    /// Sends `line`, whose id is `id`, and waits at most `limit` for its reply; None if none
    /// came in time.
    async fn exchange(&self, line: &[u8], id: u64, limit: Duration) -> Option<Outcome> {
        let (tx, rx) = oneshot::channel();
        if !self.pending.lock().insert(id, tx) {
            return Some(Err(gone()));
        }
        if self.outbox.send(line).is_err() {
            self.pending.lock().remove(&id);
            return Some(Err(gone()));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(received) => Some(received.unwrap_or_else(|_| Err(CallError::WorkerLost("the worker stopped during the request".into())))),
            Err(_) => {
                self.pending.lock().remove(&id);
                None
            }
        }
    }

    /// After a call overran its timeout without the worker being killed for it (an async call,
    /// which is cancelled; a session's sync call or set-up, left to finish), checks in the
    /// background that the worker's event loop still answers, and has the worker restarted if
    /// it does not.
    ///
    /// The loop reads every call, so while it is blocked nothing is served: an `async def` that
    /// calls `time.sleep`, or a sync method run on the loop's thread (see `worker.py`'s inline
    /// calls) that hangs, would otherwise wedge every session for good, cancels included, since
    /// the loop is what would read them. The probe is a close of instance 0, which the worker
    /// answers on the loop's thread and which changes nothing.
    fn check_loop(self: &Arc<Self>, ids: &AtomicU64, limit: Duration) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let limit = limit.clamp(LOOP_PROBE_LIMITS.0, LOOP_PROBE_LIMITS.1);
        let session = self.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            if session.exchange(&wire::encode_close(id, 0), id, limit).await.is_none() {
                tracing::warn!("the worker's event loop did not answer within {limit:?} after a call timed out; restarting the worker");
                session.request_kill(format!("the worker was restarted because its event loop did not answer within {limit:?} (a call blocked it)"));
            } else {
                tracing::debug!("the worker's event loop answered a probe after a call timed out, in {:?}", sent.elapsed());
            }
            session.probing.store(false, Ordering::Release);
        });
    }

    /// Asks the restart loop to kill this worker, for `reason` (the first one given is kept).
    fn request_kill(&self, reason: String) {
        self.kill_reason.lock().get_or_insert(reason);
        self.kill.notify_one();
    }

    /// Why this worker was killed, if it was asked to be.
    pub(super) fn kill_reason(&self) -> Option<String> {
        self.kill_reason.lock().clone()
    }

    /// Calls `method` with raw JSON `args` and `kwargs`, tagged with the next id from `ids`.
    pub(super) async fn call(
        self: &Arc<Self>,
        ids: &AtomicU64,
        method: &str,
        args: &str,
        kwargs: &str,
        options: &wire::CallOptions<'_>,
        timeout: Option<Duration>,
    ) -> Outcome {
        let Some(entry) = self.methods.get(method) else {
            let mut names: Vec<&str> = self.method_list.iter().map(|m| m.name.as_str()).collect();
            names.sort_unstable();
            return Err(CallError::NotFound { method: method.to_string(), available: names.join(", ") });
        };
        let started = Instant::now();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let alone = {
            let mut pending = self.pending.lock();
            if !pending.insert(id, tx) {
                return Err(gone());
            }
            pending.waiting.len() == 1
        };
        let mut message = wire::encode_call_with(id, method, args, kwargs, options);
        if !alone {
            wire::mark_concurrent(&mut message);
        }
        if self.outbox.send(&message).is_err() {
            self.pending.lock().remove(&id);
            return Err(gone());
        }
        let lost = || Err(CallError::WorkerLost("the worker stopped during the call".into()));
        let poll = timeout.map_or(self.reply_poll, |limit| limit.min(self.reply_poll));
        // Poll only for a call alone in flight (otherwise there is other work for this thread)
        // to a method whose last call was short enough to have been caught by polling.
        if alone && !poll.is_zero() && entry.last_micros.load(Ordering::Relaxed) <= poll.as_micros() as u64 {
            let arrived = self.inbox.poll_for(poll, || !rx.is_empty(), |line| self.on_message(line));
            if arrived {
                entry.record(started);
                return rx.try_recv().unwrap_or_else(|_| lost());
            }
        }
        let received = match timeout {
            Some(limit) => match tokio::time::timeout_at((started + limit).into(), rx).await {
                Ok(received) => received,
                Err(_) => return Err(self.on_timeout(ids, id, &entry.info, limit, options.instance.is_some())),
            },
            None => rx.await,
        };
        entry.record(started);
        received.unwrap_or_else(|_| lost())
    }

    /// Stops an overrunning call: async calls are cancelled, sync ones kill the worker, since a
    /// thread cannot be stopped from outside. A sync call of a session is the exception: killing
    /// the worker would end every other session with it, so its thread is left to finish and
    /// the caller ends that one session instead.
    fn on_timeout(self: &Arc<Self>, ids: &AtomicU64, id: u64, info: &MethodInfo, limit: Duration, in_session: bool) -> CallError {
        self.pending.lock().remove(&id);
        let action = if info.is_async {
            let _ = self.outbox.send(&wire::encode_cancel(id));
            self.check_loop(ids, limit);
            "the call was cancelled"
        } else if in_session {
            tracing::warn!(method = %info.name, "sync call of a session timed out; ending that session, its thread left to finish");
            self.check_loop(ids, limit);
            "the session was ended; its thread is left to finish"
        } else {
            tracing::warn!(method = %info.name, "sync call timed out; restarting the worker to stop it");
            self.request_kill(format!("the worker was restarted because sync call `{}` timed out", info.name));
            "the worker was restarted to stop it (its in-memory state is lost)"
        };
        CallError::Timeout { method: info.name.clone(), seconds: limit.as_secs_f64(), action }
    }

    /// The reader task: routes the worker's replies to their calls until it closes its stdout.
    pub(super) async fn read_replies(&self) {
        self.inbox.run(|line| self.on_message(line)).await
    }

    /// Completes when a call has asked for this worker to be killed.
    pub(super) async fn kill_requested(&self) {
        self.kill.notified().await
    }

    /// Fails every call still waiting, with `reason`: the worker is gone.
    pub(super) fn fail_pending(&self, reason: &str) {
        let pending = {
            let mut pending = self.pending.lock();
            pending.closed = true;
            std::mem::take(&mut pending.waiting)
        };
        for (_, waiter) in pending {
            let _ = waiter.send(Err(CallError::WorkerLost(reason.to_string())));
        }
    }

    /// Routes one message from the worker to the call waiting for it.
    fn on_message(&self, line: &[u8]) {
        if let Some((id, outcome)) = wire::read_reply(line) {
            if let Some(waiter) = self.pending.lock().remove(&id) {
                let _ = waiter.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    /// A session over two pipes whose far ends the test holds (so nothing breaks by itself), with
    /// one sync method, `ping`.
    fn session() -> (Arc<Session>, [OwnedFd; 2]) {
        let (calls_read, calls_write) = std::io::pipe().unwrap();
        let (replies_read, replies_write) = std::io::pipe().unwrap();
        let (outbox, _flusher) = Outbox::new(OwnedFd::from(calls_write)).unwrap();
        let inbox = Inbox::new(OwnedFd::from(replies_read), Vec::new()).unwrap();
        let ping = MethodInfo {
            name: "ping".into(),
            signature: "()".into(),
            source: String::new(),
            endpoint: String::new(),
            doc: String::new(),
            is_async: false,
            input_schema: None,
        };
        let session = Session::new(outbox, inbox, vec![ping], EnvInfo::default(), Duration::ZERO);
        (Arc::new(session), [OwnedFd::from(calls_read), OwnedFd::from(replies_write)])
    }

    #[tokio::test]
    async fn a_call_made_after_its_worker_ended_fails_at_once_instead_of_waiting_for_ever() {
        let (session, _far_ends) = session();
        session.fail_pending("the worker exited");
        let ids = AtomicU64::new(1);
        let options = wire::CallOptions::default();
        let call = session.call(&ids, "ping", "[]", "{}", &options, None);
        let outcome = tokio::time::timeout(Duration::from_secs(5), call).await.expect("an answer, not a wait");
        assert!(matches!(outcome, Err(CallError::WorkerLost(_))), "{outcome:?}");
        let open = session.control(&ids, |id| wire::encode_open(id, 1), Duration::from_secs(30));
        let outcome = tokio::time::timeout(Duration::from_secs(5), open).await.expect("an answer, not a wait");
        assert!(matches!(outcome, Err(CallError::WorkerLost(_))), "{outcome:?}");
    }
}
