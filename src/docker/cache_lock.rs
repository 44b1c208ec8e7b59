//! Keeps an image removal from pruning layers that a build on the same engine is taking from its
//! cache, across every Rayfine process on this machine.
//!
//! The classic builder reuses the untagged images of earlier builds as its cache, and a removal
//! also removes the untagged parents nothing else uses. When that happens to a layer a build has
//! just picked, the build fails ("unknown parent image ID"), and a COPY step whose parent went
//! leaves its own image behind, untagged and parentless (the engine writes the image before it
//! sets the parent). The build is retried (see `build::run_build`) and the orphan removed by the
//! next removal (see `orphaned_images`), but the retry costs a build. So builds hold a shared
//! lock on files named after the engine (by its identity and by its address), and a removal
//! takes it exclusively: it waits until no build of any Rayfine process on this machine is under
//! way, and builds that ask meanwhile wait for it. A build its caller abandons keeps the lock a
//! little longer, since the engine goes on with it until its next step ([`BuildHold`]). A
//! removal by anyone else (the `docker` command) can still race a build; that is what the retry
//! is for.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use crate::content_key::fnv1a;
use crate::docker::engine::Engine;
use crate::docker::host::DockerHost;

/// What this process has learnt of the engines' identities, by address: an address is taken to
/// reach one engine for as long as the process lives.
static ENGINE_IDENTITIES: Lazy<Mutex<HashMap<String, Learnt>>> = Lazy::new(|| Mutex::new(HashMap::new()));

#[derive(Clone)]
enum Learnt {
    /// The engine's identity.
    Identity(String),
    /// It gave none (for good), or did not answer (until then): the address's lock alone.
    Unknown { until: Option<Instant> },
}

/// How long a build or removal waits for the engine to say who it is before it goes on with the
/// address's lock alone: `docker info` can stall on a busy engine.
const IDENTITY_WAIT: Duration = Duration::from_secs(2);

/// How long an engine that did not say who it is is not asked again, so that a stalled engine
/// does not cost every build and removal the wait.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// How long a removal waits for builds to end before it removes anyway (and may race one), and
/// how long a build waits for the removals queued before it.
pub(crate) const REMOVAL_WAIT: Duration = Duration::from_secs(600);

/// How often a waiting build or removal asks again: removals are rare, and builds take seconds.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The lock of one engine: one or two pairs of files, taken in their order (the engine's
/// identity's first, then its address's, by everyone, so no two holders wait on each other).
#[derive(Debug, Clone)]
pub(crate) struct CacheLock {
    pairs: Vec<LockFiles>,
}

/// One lock: the lock file itself, and the turn a removal takes while it waits, so that builds
/// starting one after another cannot keep it waiting for ever.
#[derive(Debug, Clone)]
struct LockFiles {
    path: PathBuf,
    turn: PathBuf,
}

/// A held lock: released when dropped (the files are closed).
#[derive(Debug)]
pub(crate) struct Held {
    _files: Vec<File>,
}

impl CacheLock {
    /// The lock of the engine `engine` talks to, in `/tmp` whatever `TMPDIR` says, so that every
    /// process on this machine, of any user, finds it. Two locks in one: one named by the
    /// engine's identity (its ID and name, as `docker info` gives them), shared by every process
    /// however it reaches the engine (`/var/run/docker.sock` or `/run/docker.sock`, a TCP port,
    /// an SSH tunnel); and one named by the address, shared by every process that names the
    /// engine so, even when the engine gives no identity, gives another at each request (Podman),
    /// or did not answer in time, and by Rayfine versions that knew only that one. The identity
    /// is asked once per address and process.
    pub(crate) async fn of_engine(engine: &Engine) -> CacheLock {
        let address = engine.host().engine_url();
        let known = ENGINE_IDENTITIES.lock().get(&address).cloned();
        let identity = match known {
            Some(Learnt::Identity(identity)) => Some(identity),
            Some(Learnt::Unknown { until }) if until.is_none_or(|until| Instant::now() < until) => None,
            _ => {
                let (learnt, why) = match tokio::time::timeout(IDENTITY_WAIT, engine.daemon_identity()).await {
                    Ok(Ok(Some(identity))) => (Learnt::Identity(identity), None),
                    Ok(Ok(None)) => (Learnt::Unknown { until: None }, Some("the engine gives no ID".to_string())),
                    Ok(Err(err)) => (Learnt::Unknown { until: Some(Instant::now() + ASK_AGAIN_AFTER) }, Some(err.to_string())),
                    Err(_) => (Learnt::Unknown { until: Some(Instant::now() + ASK_AGAIN_AFTER) }, Some(format!("docker info took over {IDENTITY_WAIT:?}"))),
                };
                if let Some(why) = why {
                    tracing::debug!("the image cache lock is named by the engine's address alone: {why}");
                }
                ENGINE_IDENTITIES.lock().insert(address, learnt.clone());
                match learnt {
                    Learnt::Identity(identity) => Some(identity),
                    Learnt::Unknown { .. } => None,
                }
            }
        };
        let mut pairs = Vec::with_capacity(2);
        if let Some(identity) = identity {
            pairs.push(LockFiles::of_identity(&identity));
        }
        pairs.extend(CacheLock::of_address(engine.host()).pairs);
        CacheLock { pairs }
    }

    /// The files of the lock named by `host`'s address. For an engine gone for good, such as a
    /// test's own daemon once it is torn down: the files of an engine still in use must stay,
    /// since a holder that opened the old file and one that made a new one would not exclude each
    /// other. The identity's files are never for removing: engines can share an identity (two
    /// daemons of one machine that read one key, as the tests' second engines do).
    pub(crate) fn address_files_of(host: &DockerHost) -> Vec<PathBuf> {
        CacheLock::of_address(host).pairs.into_iter().flat_map(|pair| [pair.path, pair.turn]).collect()
    }

    /// The lock named by `host`'s address (`DOCKER_HOST`, or the default socket).
    fn of_address(host: &DockerHost) -> CacheLock {
        let hash = fnv1a(&[host.engine_url().as_bytes()]);
        CacheLock::at(Path::new("/tmp"), &format!("rayfine-image-cache-{hash:016x}"))
    }

    /// The lock named `name` in `folder`.
    pub(crate) fn at(folder: &Path, name: &str) -> CacheLock {
        CacheLock { pairs: vec![LockFiles::at(folder, name)] }
    }

    /// Held by a build for its whole length; taken once the removals that were waiting when it
    /// asked are done. A pair whose files cannot be opened or locked within [`REMOVAL_WAIT`] is
    /// left out: the build still keeps out the removals that share another with it. `None` when
    /// none could be had: the build then goes on unguarded, as it did before there was a lock.
    pub(crate) async fn for_build(&self) -> Option<Held> {
        let deadline = Instant::now() + REMOVAL_WAIT;
        let mut files = Vec::with_capacity(self.pairs.len());
        for pair in &self.pairs {
            let Some(turn) = open(&pair.turn) else { continue };
            if poll_lock(&turn, libc::LOCK_SH, deadline, "a build").await.is_none() {
                continue;
            }
            let Some(file) = open(&pair.path) else { continue };
            if poll_lock(&file, libc::LOCK_SH, deadline, "a build").await.is_some() {
                files.push(file);
            }
            // The turn is only passed through: a removal that asks from now on waits for this build.
            drop(turn);
        }
        (!files.is_empty()).then_some(Held { _files: files })
    }

    /// Held by a removal: takes the turn (new builds now wait), then waits up to `within` for the
    /// builds under way to end. `None` when the wait ran out or the files of a pair cannot be
    /// opened; the removal then goes on (and may race a build), and sweeps no orphans.
    pub(crate) async fn for_removal(&self, within: Duration) -> Option<Held> {
        let deadline = Instant::now() + within;
        let mut files = Vec::with_capacity(2 * self.pairs.len());
        for pair in &self.pairs {
            let turn = open(&pair.turn)?;
            poll_lock(&turn, libc::LOCK_EX, deadline, "a removal").await?;
            let file = open(&pair.path)?;
            poll_lock(&file, libc::LOCK_EX, deadline, "a removal").await?;
            files.extend([file, turn]);
        }
        Some(Held { _files: files })
    }
}

impl LockFiles {
    fn at(folder: &Path, name: &str) -> LockFiles {
        LockFiles { path: folder.join(format!("{name}.lock")), turn: folder.join(format!("{name}.turn")) }
    }

    /// The pair named by an engine's identity (its ID and name).
    fn of_identity(identity: &str) -> LockFiles {
        LockFiles::at(Path::new("/tmp"), &format!("rayfine-image-cache-engine-{:016x}", fnv1a(&[identity.as_bytes()])))
    }
}

/// How long a build its caller abandoned keeps the lock: the engine is told only by the connection
/// closing, and ends the build at its next step, after the one under way (well under a second for
/// the steps that take layers from the cache, which are the ones a removal could prune under it,
/// and seconds on an engine under load).
pub(crate) const ABANDONED_BUILD_SETTLE: Duration = Duration::from_secs(20);

/// A build's hold on the lock. When the build ends (its caller got its outcome), the hold ends
/// with it. When its caller abandons it instead (the future dropped mid-way: Ctrl-C, a progress
/// callback that raised), the engine goes on with the build for a while, taking layers from the
/// cache; a removal let in at once would prune them under it, and the engine would leave the image
/// of the step that lost its parent behind, untagged. So the hold outlives an abandoned build by
/// [`ABANDONED_BUILD_SETTLE`], on a thread of its own (no runtime needed in a drop), as does
/// one whose connection to the engine broke mid-way.
#[derive(Debug)]
pub(crate) struct BuildHold {
    held: Option<Held>,
    ended: bool,
    settle: Duration,
}

impl BuildHold {
    pub(crate) fn new(held: Option<Held>) -> BuildHold {
        BuildHold { held, ended: false, settle: ABANDONED_BUILD_SETTLE }
    }

    /// The same, kept for `settle` after an abandoned build.
    #[cfg(test)]
    fn settling_for(mut self, settle: Duration) -> BuildHold {
        self.settle = settle;
        self
    }

    /// The build has ended, in success or failure: the engine is done with it.
    pub(crate) fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for BuildHold {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        if self.ended {
            return;
        }
        let settle = self.settle;
        let settle = std::thread::Builder::new().name("rayfine-build-settle".into()).spawn(move || {
            std::thread::sleep(settle);
            drop(held);
        });
        if let Err(err) = settle {
            tracing::debug!("cannot keep the image cache lock for an abandoned build: {err}");
        }
    }
}

/// Opens a lock file, never through a symbolic link; reading is enough to lock, so a file
/// another user made (mode 0644 under the usual umask) is opened so.
fn open(path: &Path) -> Option<File> {
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW).mode(0o666);
    let opened = options.clone().read(true).write(true).create(true).truncate(false).open(path).or_else(|_| options.read(true).open(path));
    match opened {
        Ok(file) => Some(file),
        Err(err) => {
            tracing::debug!("cannot open {}: {err}", path.display());
            None
        }
    }
}

/// Takes `operation` (shared or exclusive) on `file`, asking every [`RETRY_EVERY`] until
/// `deadline`: never a blocking call, so a dropped caller leaves no thread waiting behind it.
async fn poll_lock(file: &File, operation: libc::c_int, deadline: Instant, who: &str) -> Option<()> {
    loop {
        match flock(file, operation | libc::LOCK_NB) {
            Ok(()) => return Some(()),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => tokio::time::sleep(RETRY_EVERY).await,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::warn!("{who} ran out of time waiting for the engine's image cache lock; going on without it, which may fail a build once");
                return None;
            }
            Err(err) => {
                tracing::debug!("cannot lock the image cache for {who}: {err}");
                return None;
            }
        }
    }
}

/// `flock(2)` on `file` (the lock goes with the open file, so one per `File`, even in one
/// process), retried when a signal interrupts it.
fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: the descriptor is open for as long as `file` is borrowed.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in engine on a port of its own whose `docker info` gives `id` (or fails, for
    /// `None`) after `delay`, and how many times it was asked.
    async fn engine_with_id(id: Option<&'static str>, delay: Duration) -> (Engine, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::http::StatusCode;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let info = move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                match id {
                    Some(id) => (StatusCode::OK, format!(r#"{{"ID":"{id}","Name":"host-a","Containers":0}}"#)),
                    None => (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"no info here"}"#.to_string()),
                }
            }
        };
        let app = axum::Router::new().route("/{*path}", axum::routing::get(info));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Engine::at_http(&format!("http://{addr}")), asked)
    }

    fn paths(lock: &CacheLock) -> Vec<&Path> {
        lock.pairs.iter().map(|pair| pair.path.as_path()).collect()
    }

    #[tokio::test]
    async fn an_engine_is_locked_by_its_identity_and_by_the_address_it_is_reached_by() {
        let id = "WJ4R:TEST:ONE-ENGINE-TWO-ADDRESSES";
        let ((by_one, asked), (by_another, _)) = (engine_with_id(Some(id), Duration::ZERO).await, engine_with_id(Some(id), Duration::ZERO).await);
        let (one, another) = (CacheLock::of_engine(&by_one).await, CacheLock::of_engine(&by_another).await);
        let (one, another) = (paths(&one), paths(&another));
        assert_eq!(one.len(), 2, "{one:?}");
        assert_eq!(one[0], another[0], "one engine reached by two addresses has no lock in common: a removal through one would not wait for a build through the other");
        assert_eq!(one[1], paths(&CacheLock::of_address(by_one.host()))[0], "the address's own lock is not taken");
        assert_ne!(one[1], another[1]);
        let (other, _) = engine_with_id(Some("WJ4R:TEST:ANOTHER-ENGINE"), Duration::ZERO).await;
        assert_ne!(one[0], paths(&CacheLock::of_engine(&other).await)[0], "two engines share a lock");
        // The identity is asked once per address.
        CacheLock::of_engine(&by_one).await;
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        // An engine that gives no identity, or not in time, is locked by its address alone.
        let (silent, silent_asked) = engine_with_id(None, Duration::ZERO).await;
        assert_eq!(paths(&CacheLock::of_engine(&silent).await), paths(&CacheLock::of_address(silent.host())));
        // And is not asked again at once: a stalled engine would cost every build the wait.
        CacheLock::of_engine(&silent).await;
        assert_eq!(silent_asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (stalled, _) = engine_with_id(Some(id), Duration::from_secs(30)).await;
        let asking = Instant::now();
        assert_eq!(paths(&CacheLock::of_engine(&stalled).await), paths(&CacheLock::of_address(stalled.host())));
        assert!(asking.elapsed() < IDENTITY_WAIT + Duration::from_secs(2), "waited {:?} for a stalled engine", asking.elapsed());
    }

    #[tokio::test]
    async fn a_removal_waits_for_builds_that_share_either_lock_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = |names: &[&str]| CacheLock { pairs: names.iter().map(|name| LockFiles::at(dir.path(), name)).collect() };
        // Two addresses of one engine, and a process that knows the first address only (an older
        // Rayfine, or an engine that gave no identity in time).
        let (through_one, through_another, address_only) = (pairs(&["engine", "one"]), pairs(&["engine", "another"]), pairs(&["one"]));
        for build_lock in [&through_another, &address_only] {
            let build = build_lock.for_build().await.expect("a build's lock");
            assert!(through_one.for_removal(Duration::from_millis(300)).await.is_none(), "a removal went on under a build holding {:?}", paths(build_lock));
            drop(build);
            assert!(through_one.for_removal(Duration::from_millis(300)).await.is_some(), "the removal waited for a build that had ended");
        }
        // Builds through either address go on together.
        let first = through_one.for_build().await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), through_another.for_build()).await.is_ok_and(|held| held.is_some()));
        drop(first);
        // A build that cannot have one of its locks keeps the other.
        let mut half = pairs(&["engine"]);
        half.pairs.push(LockFiles::at(&dir.path().join("missing"), "one"));
        let build = half.for_build().await.expect("the lock that could be had");
        assert!(through_another.for_removal(Duration::from_millis(300)).await.is_none(), "a build gave up the lock it had for the one it could not have");
        drop(build);
    }

    #[tokio::test]
    async fn a_removal_waits_for_the_builds_under_way_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let lock = CacheLock::at(dir.path(), "engine");
        let first = lock.for_build().await.expect("a build's lock");
        let second = lock.for_build().await.expect("builds share it");
        let removal = tokio::spawn({
            let lock = lock.clone();
            async move {
                let held = lock.for_removal(Duration::from_secs(30)).await;
                (held.is_some(), Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!removal.is_finished(), "the removal did not wait for the builds");
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!removal.is_finished(), "the removal went on while a build was still under way");
        let released = Instant::now();
        drop(second);
        let (held, at) = removal.await.unwrap();
        assert!(held && at >= released, "the removal did not take the lock once the builds ended");
        // And a build waits for nothing but a removal: with none, it locks at once.
        assert!(lock.for_build().await.is_some());
    }

    #[tokio::test]
    async fn a_build_that_asks_while_a_removal_waits_goes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = CacheLock::at(dir.path(), "engine");
        let first = lock.for_build().await.unwrap();
        let removal = tokio::spawn({
            let lock = lock.clone();
            async move {
                let held = lock.for_removal(Duration::from_secs(30)).await.expect("the removal's lock");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let released = Instant::now();
                drop(held);
                released
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let later = tokio::spawn({
            let lock = lock.clone();
            async move { lock.for_build().await.map(|held| (held, Instant::now())) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Without the turn, this build would join the first and the removal would wait for both.
        assert!(!later.is_finished(), "a build started while a removal was waiting for the lock");
        drop(first);
        let released = removal.await.unwrap();
        let (_held, at) = later.await.unwrap().expect("the later build's lock");
        assert!(at >= released, "the later build went before the removal");
    }

    #[tokio::test]
    async fn an_abandoned_build_keeps_removals_out_while_the_engine_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = CacheLock::at(dir.path(), "engine");
        let settle = Duration::from_millis(800);
        // A build that ended lets a removal in at once.
        BuildHold::new(lock.for_build().await).settling_for(settle).ended();
        assert!(lock.for_removal(Duration::from_millis(300)).await.is_some(), "a removal waited for a build that had ended");
        // One its caller dropped mid-way keeps the lock for the settle.
        let abandoned = Instant::now();
        drop(BuildHold::new(lock.for_build().await).settling_for(settle));
        assert!(lock.for_removal(Duration::from_millis(300)).await.is_none(), "a removal went in while the engine may still be building");
        let held = lock.for_removal(Duration::from_secs(10)).await;
        assert!(held.is_some(), "the abandoned build never let the removal in");
        assert!(abandoned.elapsed() >= settle, "the removal went in {:?} after the build was abandoned", abandoned.elapsed());
    }

    #[tokio::test]
    async fn a_removal_stops_waiting_after_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lock = CacheLock::at(dir.path(), "engine");
        let _build = lock.for_build().await.unwrap();
        let started = Instant::now();
        assert!(lock.for_removal(Duration::from_millis(200)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
