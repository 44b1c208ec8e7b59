//! Pools: one handle over several replicas of an image, spread over Docker hosts, called like
//! one environment.
//!
//! A call goes to the least loaded replica: fewest calls in flight, weighted by its recent
//! latency ([`Balancing`]). A call that never
//! reached its replica (the connection was refused: nothing listens there any more) is sent to
//! another and the replica is checked at once; a call that may have run is never sent twice: it
//! fails, saying why. A watcher ([`health`]) asks every replica's `/health` in the background,
//! takes out one that has exited or stopped answering, removes it and starts a replacement, so a
//! training run keeps its width over days.
//!
//! Replicas are ordinary environments in the registry, so every exit path (cleanup, Ctrl-C, the
//! owner's death) removes them as it removes any other.

mod affinity;
mod balance;
mod health;
mod warm;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::Value;

pub use balance::Balancing;
pub use warm::WarmPool;

use crate::client::{start_env, EnvironmentWrapper, LoadOptions, Source};
use crate::docker::placement::{place_for, Placed};
use crate::docker::DockerHost;
use crate::error::{Error, Result};
use affinity::Affinity;
use balance::{Candidate, PeakEwma};

/// The label that marks a replica's container with its pool's id, for `rayfine ps`.
pub const POOL_LABEL: &str = "rayfine.pool";

/// The most replicas one pool holds: a bound that catches a typo before it starts a million
/// containers.
pub const MAX_REPLICAS: usize = 1024;

/// How often the watcher asks every replica whether it is healthy, by default.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Options of [`load_pool`] beyond those of each replica.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// How many replicas to hold.
    pub replicas: usize,
    /// How calls are spread.
    pub balancing: Balancing,
    /// How often every replica's health is asked.
    pub health_interval: Duration,
    /// Health checks missed in a row before a replica that still runs is replaced.
    pub unhealthy_after: u32,
}

impl PoolOptions {
    /// `replicas` replicas, least-loaded balancing, health every 2 s, replaced after 2 missed
    /// checks.
    pub fn new(replicas: usize) -> PoolOptions {
        PoolOptions { replicas, balancing: Balancing::LeastLoaded, health_interval: DEFAULT_HEALTH_INTERVAL, unhealthy_after: 2 }
    }

    /// Sets the balancing.
    pub fn balancing(mut self, balancing: Balancing) -> PoolOptions {
        self.balancing = balancing;
        self
    }

    /// Sets how often health is asked.
    pub fn health_interval(mut self, interval: Duration) -> PoolOptions {
        self.health_interval = interval;
        self
    }
}

/// A pool of replicas; cheap to clone (clones share it). See the module documentation.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// One replica, as the pool sees it.
pub(crate) struct Member {
    /// Its number in this pool, never reused: affinity keys point at it.
    seq: u64,
    /// The environment.
    env: EnvironmentWrapper,
    /// Calls in flight on it.
    outstanding: AtomicUsize,
    /// Health checks missed in a row.
    missed: AtomicUsize,
    /// Its recent latency, for balancing.
    latency: Mutex<PeakEwma>,
}

impl Candidate for Arc<Member> {
    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn latency(&self) -> f64 {
        self.latency.lock().now()
    }
}

/// Counts a call as outstanding on a member while it lives.
struct InFlight<'a>(&'a Member);

impl<'a> InFlight<'a> {
    fn new(member: &'a Member) -> InFlight<'a> {
        member.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(member)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every handle of a pool shares.
pub(crate) struct Shared {
    /// Its id (also on every replica's container, as [`POOL_LABEL`]).
    id: String,
    /// Its name, for messages.
    name: String,
    /// What each replica is started from.
    template: LoadOptions,
    /// The engines replicas are placed on.
    hosts: Vec<DockerHost>,
    /// Sizes, balancing, health.
    options: PoolOptions,
    /// Replicas taking calls.
    members: RwLock<Vec<Arc<Member>>>,
    /// Affinity keys.
    affinity: Mutex<Affinity>,
    /// The next replica's number.
    next_seq: AtomicU64,
    /// Replacements started and not yet finished.
    replacing: AtomicUsize,
    /// Replicas replaced so far.
    replaced: AtomicU64,
    /// The last reason a replica was taken out, or a replacement failed.
    last_trouble: Mutex<Option<String>>,
    /// Set by cleanup: no more calls, no more replacements.
    closed: AtomicBool,
    /// Woken when a replica joins (calls waiting for one).
    joined: tokio::sync::Notify,
    /// Woken when a replica looks dead to a caller (the watcher looks at once); shared with
    /// the watcher, which holds the pool itself only while it works.
    suspect: Arc<tokio::sync::Notify>,
    /// Replicas taken out and not yet removed (the watcher removes them).
    retired: Mutex<Vec<Arc<Member>>>,
    /// Replacements that failed in a row, for the watcher's back-off.
    failed_starts: AtomicUsize,
}

/// Starts a pool of `pool.replicas` replicas of an image, placed over the hosts `options` names
/// (or `RAYFINE_HOSTS`, or this machine's) by free capacity and started concurrently. If any
/// fails to start, those that did are removed and the error says why.
pub async fn load_pool(options: LoadOptions, pool: PoolOptions) -> Result<Pool> {
    options.validate()?;
    if !matches!(options.source, Source::Image(_)) {
        return Err(Error::InvalidInput("a pool runs an image: name one (`LoadOptions::image`)".into()));
    }
    if pool.replicas == 0 || pool.replicas > MAX_REPLICAS {
        return Err(Error::InvalidInput(format!("a pool holds 1 to {MAX_REPLICAS} replicas, not {}", pool.replicas)));
    }
    if options.keep {
        return Err(Error::InvalidInput("a pool is not kept: its replicas are replaced by this process, and end with it".into()));
    }
    if pool.health_interval < Duration::from_millis(100) || pool.health_interval > Duration::from_secs(3600) || pool.unhealthy_after == 0 {
        return Err(Error::InvalidInput("a pool's health interval must be from 100 ms to an hour, and a replica may miss at least one check".into()));
    }
    let hosts = options.docker_hosts()?;
    let name = options.display_name();
    let id = format!("{name}-{}", crate::random::hex(4)?);
    let template = options.label(POOL_LABEL, &id).name(name.clone());
    let shared = Arc::new(Shared {
        id,
        name,
        template,
        hosts,
        options: pool,
        members: RwLock::new(Vec::new()),
        affinity: Mutex::new(Affinity::default()),
        next_seq: AtomicU64::new(0),
        replacing: AtomicUsize::new(0),
        replaced: AtomicU64::new(0),
        last_trouble: Mutex::new(None),
        closed: AtomicBool::new(false),
        joined: tokio::sync::Notify::new(),
        suspect: Arc::new(tokio::sync::Notify::new()),
        retired: Mutex::new(Vec::new()),
        failed_starts: AtomicUsize::new(0),
    });
    let started = start_replicas(&shared.template, shared.options.replicas).await?;
    for env in started {
        // Not closed yet: nobody else holds the pool.
        let _ = shared.admit(env, false);
    }
    health::watch(Arc::downgrade(&shared));
    Ok(Pool { shared })
}

/// Starts `count` environments at once, an image's placed over the hosts `options` names (see
/// [`load_pool`]), each registered like any other; if any fails to start, those that did are
/// removed and the first error is returned. What [`load_pool`] starts its replicas with, what
/// `rayfine run --replicas N --keep` keeps, and a [`WarmPool`]'s first spares.
pub async fn start_replicas(options: &LoadOptions, count: usize) -> Result<Vec<EnvironmentWrapper>> {
    options.validate()?;
    if count == 0 || count > MAX_REPLICAS {
        return Err(Error::InvalidInput(format!("1 to {MAX_REPLICAS} replicas, not {count}")));
    }
    // As `load_env`: only an image is placed; a folder or a URL needs no engine.
    let placed: Vec<Option<Placed>> = match options.source {
        Source::Image(_) => place_for(options.mode, &options.docker_hosts()?, count).await?.into_iter().map(Some).collect(),
        _ => (0..count).map(|_| None).collect(),
    };
    let starts = placed.into_iter().map(|placed| start_env(options.clone(), placed));
    let mut started = Vec::new();
    let mut failure = None;
    for outcome in futures_util::future::join_all(starts).await {
        match outcome {
            Ok(env) => started.push(env),
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    let Some(err) = failure else { return Ok(started) };
    let stops = started.iter().map(EnvironmentWrapper::cleanup);
    for stopped in futures_util::future::join_all(stops).await {
        if let Err(stop_err) = stopped {
            tracing::warn!("removing a replica of a failed start: {stop_err}");
        }
    }
    Err(err)
}

impl Shared {
    /// Adds a started replica to those taking calls (a replacement's end is counted under the
    /// same lock, so the watcher never sees it both serving and under way). A pool closed
    /// meanwhile gives it back, for the caller to remove.
    fn admit(&self, env: EnvironmentWrapper, replacement: bool) -> std::result::Result<(), EnvironmentWrapper> {
        let mut members = self.members.write();
        if self.closed.load(Ordering::SeqCst) {
            // Still counted as under way until the caller has removed it: cleanup waits for it.
            return Err(env);
        }
        if replacement {
            self.replacing.fetch_sub(1, Ordering::SeqCst);
        }
        members.push(Arc::new(Member {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            env,
            outstanding: AtomicUsize::new(0),
            missed: AtomicUsize::new(0),
            latency: Mutex::new(PeakEwma::default()),
        }));
        drop(members);
        self.joined.notify_waiters();
        Ok(())
    }

    /// Takes the replicas (serving and taken out) of a pool that is closing; from now on no
    /// replica joins it.
    fn close(&self) -> Vec<Arc<Member>> {
        let mut members = {
            let mut members = self.members.write();
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *members)
        };
        members.append(&mut self.retired.lock());
        self.suspect.notify_one();
        self.joined.notify_waiters();
        members
    }

    /// Takes a replica out of those taking calls (its calls in flight go on) and forgets its
    /// keys, unless it is out already; the watcher removes it and starts a replacement.
    fn take_out(&self, seq: u64, why: &str) {
        let taken = {
            let mut members = self.members.write();
            let Some(index) = members.iter().position(|m| m.seq == seq) else { return };
            members.swap_remove(index)
        };
        // Its keys stay bound: each one's next call says its episode was lost (`keyed`), and only
        // then is the key forgotten; released here, that call would start a new episode on
        // another replica as if nothing had happened.
        tracing::warn!("pool {}: replica {} taken out: {why}", self.name, taken.env.id());
        *self.last_trouble.lock() = Some(format!("replica {} {why}", taken.env.id()));
        self.retired.lock().push(taken);
        self.suspect.notify_one();
    }

    /// Replicas taking calls, not among `tried`.
    fn candidates(&self, tried: &[u64]) -> Vec<Arc<Member>> {
        self.members.read().iter().filter(|m| !tried.contains(&m.seq)).cloned().collect()
    }

    /// A replica for a call: the balancing's choice among those not yet tried, waiting (until
    /// `deadline`) for a replacement while none serves.
    async fn pick(&self, tried: &[u64], deadline: Instant) -> Result<Arc<Member>> {
        loop {
            // Registered before looking, so a replica that joins in between is not missed.
            let joined = self.joined.notified();
            let candidates = self.candidates(tried);
            if let Some(index) = balance::choose(&candidates, self.options.balancing) {
                return Ok(candidates[index].clone());
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed(self.name.clone()));
            }
            if Instant::now() >= deadline {
                return Err(self.no_replica());
            }
            let _ = tokio::time::timeout_at(deadline.into(), joined).await;
        }
    }

    /// The error for a call no replica could take.
    fn no_replica(&self) -> Error {
        let trouble = self.last_trouble.lock().clone().unwrap_or_else(|| "none has been started yet".into());
        Error::NoReplica {
            pool: self.name.clone(),
            detail: format!("{} of {} replicas serving, {} being replaced; last: {trouble}", self.members.read().len(), self.options.replicas, self.replacing.load(Ordering::SeqCst)),
        }
    }
}

impl Pool {
    /// The pool's id, also the value of [`POOL_LABEL`] on its containers.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Its name (the image's, or the one given).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The replicas taking calls now.
    pub fn members(&self) -> Vec<EnvironmentWrapper> {
        self.shared.members.read().iter().map(|m| m.env.clone()).collect()
    }

    /// How many replicas have been replaced since the start.
    pub fn replaced(&self) -> u64 {
        self.shared.replaced.load(Ordering::SeqCst)
    }

    /// Calls `method` on one replica (see the module documentation for which).
    pub async fn call(&self, method: &str, kwargs: Value) -> Result<Value> {
        self.dispatch(None, method, &[], kwargs, None).await
    }

    /// [`call`](Self::call) with positional arguments and a timeout of its own.
    pub async fn call_with(&self, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        self.dispatch(None, method, args, kwargs, timeout).await
    }

    /// Calls `method` on the replica that holds `key` (an episode id): the first call with a key
    /// binds it to a replica, and later ones follow it there. If that replica is gone, the call
    /// fails with [`Error::ReplicaLost`] and the key is forgotten.
    pub async fn call_keyed(&self, key: &str, method: &str, kwargs: Value) -> Result<Value> {
        self.dispatch(Some(key), method, &[], kwargs, None).await
    }

    /// How many affinity keys are bound now, those of a lost replica included until their next
    /// call says so.
    pub fn keys_bound(&self) -> usize {
        self.shared.affinity.lock().len()
    }

    /// Forgets `key` (its episode is over), so its replica's share of keys goes down.
    pub fn release_key(&self, key: &str) {
        self.shared.affinity.lock().release(key);
    }

    /// Sends one call: to the key's replica, or to the balancing's choice, trying another while
    /// the connection is refused.
    async fn dispatch(&self, key: Option<&str>, method: &str, args: &[Value], kwargs: Value, timeout: Option<Duration>) -> Result<Value> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed(shared.name.clone()));
        }
        let timeout = timeout.unwrap_or(shared.template.call_timeout);
        // A call waits for a replacement at most as long as a start may take.
        let deadline = Instant::now() + timeout.min(shared.template.startup_timeout);
        let mut tried: Vec<u64> = Vec::new();
        loop {
            let member = match key {
                Some(key) => self.keyed(key, deadline).await?,
                None => shared.pick(&tried, deadline).await?,
            };
            let outcome = {
                let _in_flight = InFlight::new(&member);
                let sent = Instant::now();
                let outcome = member.env.call_unexplained(method, args, kwargs.clone(), Some(timeout)).await;
                member.latency.lock().observe(sent.elapsed());
                outcome
            };
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if err.never_reached() {
                // Nothing listens there: out with it, and the call goes elsewhere, unless its
                // state was there.
                shared.take_out(member.seq, &format!("refused a connection ({err})"));
                if let Some(key) = key {
                    return Err(Error::ReplicaLost { pool: shared.name.clone(), key: key.into(), reason: format!("it refused a connection: {err}") });
                }
                tried.push(member.seq);
                continue;
            }
            let err = member.env.explain(err).await;
            if let Error::Stopped { reason, .. } = &err {
                shared.take_out(member.seq, &format!("stopped during a call: {reason}"));
                if let Some(key) = key {
                    return Err(Error::ReplicaLost { pool: shared.name.clone(), key: key.into(), reason: format!("it stopped during the call: {err}") });
                }
            }
            return Err(err);
        }
    }

    /// The replica `key` is bound to, or (unbound) the balancing's choice, bound from now on.
    async fn keyed(&self, key: &str, deadline: Instant) -> Result<Arc<Member>> {
        let shared = &self.shared;
        let bound = shared.affinity.lock().replica_of(key);
        if let Some(seq) = bound {
            if let Some(member) = shared.members.read().iter().find(|m| m.seq == seq) {
                return Ok(member.clone());
            }
            shared.affinity.lock().release(key);
            let reason = shared.last_trouble.lock().clone().unwrap_or_else(|| "it was taken out".into());
            return Err(Error::ReplicaLost { pool: shared.name.clone(), key: key.into(), reason });
        }
        let member = shared.pick(&[], deadline).await?;
        shared.affinity.lock().bind(key, member.seq);
        Ok(member)
    }

    /// Ends the pool: no more calls or replacements; every replica is removed, and replacements
    /// under way are waited for (each removes what it started). Idempotent.
    pub async fn cleanup(&self) -> Result<()> {
        let shared = &self.shared;
        let members = shared.close();
        let stops = members.iter().map(|m| m.env.cleanup());
        let mut first_error = None;
        for stopped in futures_util::future::join_all(stops).await {
            if let Err(err) = stopped {
                first_error = first_error.or(Some(err));
            }
        }
        let deadline = Instant::now() + shared.template.startup_timeout + Duration::from_secs(30);
        while shared.replacing.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A pool whose every handle is dropped without cleanup: its replicas are removed in the
/// background (on the runtime the last handle was dropped on), rather than living until the
/// process exits.
impl Drop for Shared {
    fn drop(&mut self) {
        let members = self.close();
        if members.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("pool {} dropped outside an async runtime without cleanup: its replicas end with this process", self.name);
            return;
        };
        runtime.spawn(async move {
            for member in members {
                if let Err(err) = member.env.cleanup().await {
                    tracing::warn!("removing replica {} of a dropped pool: {err}", member.env.id());
                }
            }
        });
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("id", &self.shared.id)
            .field("replicas", &self.shared.options.replicas)
            .field("serving", &self.shared.members.read().len())
            .field("replaced", &self.replaced())
            .finish()
    }
}
