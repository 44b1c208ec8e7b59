//! Keeps an image removal from pruning layers that a build on the same engine is taking from its
//! cache, across every Rayfine process on this machine.
//!
//! The classic builder reuses the untagged images of earlier builds as its cache, and a removal
//! also removes the untagged parents nothing else uses. When that happens to a layer a build has
//! just picked, the build fails ("unknown parent image ID"), and a COPY step whose parent went
//! leaves its own image behind, untagged and parentless (the engine writes the image before it
//! sets the parent). The build is retried (see `build::run_build`) and the orphan removed by the
//! next removal (see `orphaned_images`), but the retry costs a build. So builds hold a shared
//! lock on a file named after the engine, and a removal takes it exclusively: it waits until no
//! build of any Rayfine process on this machine is under way, and builds that ask meanwhile wait
//! for it. A build its caller abandons keeps the lock a little longer, since the engine goes on
//! with it until its next step ([`BuildHold`]). A removal by anyone else (the `docker` command)
//! can still race a build; that is what the retry is for.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use crate::content_key::fnv1a;
use crate::docker::engine::Engine;
use crate::docker::host::DockerHost;

/// The engines' IDs this process has learnt, by address: an engine keeps its ID for life.
static ENGINE_IDS: Lazy<Mutex<HashMap<String, String>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// How long a removal waits for builds to end before it removes anyway (and may race one), and
/// how long a build waits for the removals queued before it.
pub(crate) const REMOVAL_WAIT: Duration = Duration::from_secs(600);

/// How often a waiting build or removal asks again: removals are rare, and builds take seconds.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The lock files of one engine: the lock itself, and the turn a removal takes while it waits,
/// so that builds starting one after another cannot keep it waiting for ever.
#[derive(Debug, Clone)]
pub(crate) struct CacheLock {
    path: PathBuf,
    turn: PathBuf,
}

/// A held lock: released when dropped (the file is closed).
#[derive(Debug)]
pub(crate) struct Held {
    _files: Vec<File>,
}

impl CacheLock {
    /// The lock of the engine `engine` talks to, named by the engine's own ID, in `/tmp` whatever
    /// `TMPDIR` says: every process on this machine, of any user, finds the same file however it
    /// reaches the engine (`/var/run/docker.sock` or `/run/docker.sock`, a TCP port, an SSH
    /// tunnel). Named by the address when the engine gives no ID. The ID is asked once per
    /// address and process.
    pub(crate) async fn of_engine(engine: &Engine) -> CacheLock {
        let address = engine.host().engine_url();
        let known = ENGINE_IDS.lock().get(&address).cloned();
        let id = match known {
            Some(id) => Some(id),
            None => match engine.daemon_id().await {
                Ok(Some(id)) => {
                    ENGINE_IDS.lock().insert(address, id.clone());
                    Some(id)
                }
                Ok(None) => None,
                Err(err) => {
                    tracing::debug!("the image cache lock is named by the engine's address: {err}");
                    None
                }
            },
        };
        match id {
            Some(id) => CacheLock::at(Path::new("/tmp"), &format!("rayfine-image-cache-engine-{:016x}", fnv1a(&[id.as_bytes()]))),
            None => CacheLock::of_address(engine.host()),
        }
    }

    /// The lock named by `host`'s address (`DOCKER_HOST`, or the default socket).
    fn of_address(host: &DockerHost) -> CacheLock {
        let hash = fnv1a(&[host.engine_url().as_bytes()]);
        CacheLock::at(Path::new("/tmp"), &format!("rayfine-image-cache-{hash:016x}"))
    }

    /// The lock named `name` in `folder`.
    pub(crate) fn at(folder: &Path, name: &str) -> CacheLock {
        CacheLock { path: folder.join(format!("{name}.lock")), turn: folder.join(format!("{name}.turn")) }
    }

    /// Held by a build for its whole length; taken once the removals that were waiting when it
    /// asked are done. `None` when the files cannot be opened or locked within [`REMOVAL_WAIT`]:
    /// the build then goes on unguarded, as it did before there was a lock.
    pub(crate) async fn for_build(&self) -> Option<Held> {
        let deadline = Instant::now() + REMOVAL_WAIT;
        let turn = open(&self.turn)?;
        poll_lock(&turn, libc::LOCK_SH, deadline, "a build").await?;
        let file = open(&self.path)?;
        poll_lock(&file, libc::LOCK_SH, deadline, "a build").await?;
        // The turn is only passed through: a removal that asks from now on waits for this build.
        drop(turn);
        Some(Held { _files: vec![file] })
    }

    /// Held by a removal: takes the turn (new builds now wait), then waits up to `within` for the
    /// builds under way to end. `None` when the wait ran out or the files cannot be opened; the
    /// removal then goes on (and may race a build).
    pub(crate) async fn for_removal(&self, within: Duration) -> Option<Held> {
        let deadline = Instant::now() + within;
        let turn = open(&self.turn)?;
        poll_lock(&turn, libc::LOCK_EX, deadline, "a removal").await?;
        let file = open(&self.path)?;
        poll_lock(&file, libc::LOCK_EX, deadline, "a removal").await?;
        Some(Held { _files: vec![file, turn] })
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
    /// `None`), and how many times it was asked.
    async fn engine_with_id(id: Option<&'static str>) -> (Engine, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::http::StatusCode;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let info = move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match id {
                    Some(id) => (StatusCode::OK, format!(r#"{{"ID":"{id}","Containers":0}}"#)),
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

    #[tokio::test]
    async fn one_engine_reached_by_two_addresses_has_one_lock_and_another_engine_its_own() {
        let id = "WJ4R:TEST:ONE-ENGINE-TWO-ADDRESSES";
        let ((by_one, asked), (by_another, _)) = (engine_with_id(Some(id)).await, engine_with_id(Some(id)).await);
        assert_ne!(by_one.host().engine_url(), by_another.host().engine_url());
        let lock = CacheLock::of_engine(&by_one).await;
        assert_eq!(lock.path, CacheLock::of_engine(&by_another).await.path, "one engine, two locks: a removal through one address would not wait for a build through the other");
        let (other, _) = engine_with_id(Some("WJ4R:TEST:ANOTHER-ENGINE")).await;
        assert_ne!(lock.path, CacheLock::of_engine(&other).await.path, "two engines share a lock");
        // The ID is asked once per address.
        CacheLock::of_engine(&by_one).await;
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        // An engine that gives no ID is named by its address.
        let (silent, _) = engine_with_id(None).await;
        assert_eq!(CacheLock::of_engine(&silent).await.path, CacheLock::of_address(silent.host()).path);
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
