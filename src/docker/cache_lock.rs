//! Keeps an image removal from pruning layers that a build on the same engine is taking from its
//! cache, across every Rayfine process on this machine.
//!
//! The classic builder reuses the untagged images of earlier builds as its cache, and a removal
//! also removes the untagged parents nothing else uses. When that happens to a layer a build has
//! just picked, the build fails ("unknown parent image ID"), and a COPY step whose parent went
//! leaves its own image behind, untagged and parentless (the engine writes the image before it
//! sets the parent). The build is retried (see `build::run_build`), but the orphan stays. So
//! builds hold a shared lock on a file named after the engine, and a removal takes it exclusively:
//! it waits until no build of any Rayfine process on this machine is under way. A removal by
//! anyone else (the `docker` command) can still race a build; that is what the retry is for.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::docker::host::DockerHost;

/// How long a removal waits for builds to end before it removes anyway (and may race one).
pub(crate) const REMOVAL_WAIT: Duration = Duration::from_secs(600);

/// How often a waiting removal asks again: removals are rare, and builds take seconds.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The lock file of one engine.
#[derive(Debug, Clone)]
pub(crate) struct CacheLock {
    path: PathBuf,
}

/// A held lock: released when dropped (the file is closed).
#[derive(Debug)]
pub(crate) struct Held {
    _file: File,
}

impl CacheLock {
    /// The lock of `host`'s engine, shared by every user of this machine (named by the engine's
    /// address, not by user: one engine's cache is everyone's).
    pub(crate) fn of(host: &DockerHost) -> CacheLock {
        let url = host.engine_url();
        let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        CacheLock::at(std::env::temp_dir().join(format!("rayfine-image-cache-{hash:016x}.lock")))
    }

    pub(crate) fn at(path: PathBuf) -> CacheLock {
        CacheLock { path }
    }

    /// Held by a build for its whole length. `None` when the file cannot be opened (a read-only
    /// temp dir): the build goes on unguarded, as it did before there was a lock.
    pub(crate) async fn for_build(&self) -> Option<Held> {
        let file = self.open()?;
        // Blocks only while a removal holds it, which takes a request's time.
        let locked = tokio::task::spawn_blocking(move || flock(&file, libc::LOCK_SH).map(|()| file)).await.ok()?;
        match locked {
            Ok(file) => Some(Held { _file: file }),
            Err(err) => {
                tracing::debug!("cannot lock {} for a build: {err}", self.path.display());
                None
            }
        }
    }

    /// Held by a removal: waits up to `within` for the builds under way to end. `None` when the
    /// wait ran out or the file cannot be opened; the removal then goes on (and may race).
    pub(crate) async fn for_removal(&self, within: Duration) -> Option<Held> {
        let file = self.open()?;
        let deadline = Instant::now() + within;
        loop {
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => return Some(Held { _file: file }),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => tokio::time::sleep(RETRY_EVERY).await,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    tracing::warn!("image builds on this engine still run after {within:?}; removing anyway, which may fail one of them once");
                    return None;
                }
                Err(err) => {
                    tracing::debug!("cannot lock {} for a removal: {err}", self.path.display());
                    return None;
                }
            }
        }
    }

    /// Open for reading is enough to lock; a file another user made (mode 0644) is opened so.
    fn open(&self) -> Option<File> {
        let opened = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path).or_else(|_| File::open(&self.path));
        match opened {
            Ok(file) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
                Some(file)
            }
            Err(err) => {
                tracing::debug!("cannot open {}: {err}", self.path.display());
                None
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

    #[tokio::test]
    async fn a_removal_waits_for_the_builds_under_way_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let lock = CacheLock::at(dir.path().join("engine.lock"));
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
    async fn a_removal_stops_waiting_after_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lock = CacheLock::at(dir.path().join("engine.lock"));
        let _build = lock.for_build().await.unwrap();
        let started = Instant::now();
        assert!(lock.for_removal(Duration::from_millis(200)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
