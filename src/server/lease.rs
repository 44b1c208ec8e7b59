//! The lease: a server that must not outlive its owner stops when the owner stops renewing.
//!
//! Stdin's end already stops a server whose owner dies, but only while the connection behind
//! stdin dies with the owner. A frozen owner (SIGSTOP, a debugger, a machine that suspends), an
//! attach connection the engine keeps open, or a client on another host keep stdin open forever.
//! The lease covers those: the owner renews it while it lives (`POST /_rayfine/lease`, or any
//! authenticated request), and the server shuts down once `duration` passes without one.
//!
//! The clock starts when the environment is ready: a slow constructor is not a lapsed lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::worker::{Phase, Worker};

pub use crate::protocol::LEASE_PATH;

/// When the last renewal arrived, shared by the router and the watcher.
#[derive(Debug)]
pub struct Lease {
    duration: Duration,
    origin: Instant,
    /// Milliseconds from `origin` to the last renewal.
    renewed_at_ms: AtomicU64,
}

impl Lease {
    pub fn new(duration: Duration) -> Arc<Lease> {
        Arc::new(Lease { duration, origin: Instant::now(), renewed_at_ms: AtomicU64::new(0) })
    }

    /// How long the lease runs without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Records a renewal: one relaxed store, cheap enough for every request.
    pub fn renew(&self) {
        self.renewed_at_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_renewal(&self) -> Duration {
        let renewed = Duration::from_millis(self.renewed_at_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(renewed)
    }

    /// Completes when the lease has lapsed, counting from the moment the environment is ready.
    pub async fn lapsed(self: Arc<Self>, worker: Worker) {
        let mut phases = worker.subscribe();
        while matches!(*phases.borrow_and_update(), Phase::Starting) {
            if phases.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        self.renew();
        self.watch().await
    }

    /// Completes when the lease has lapsed, counting from now.
    pub async fn watch(self: Arc<Self>) {
        self.renew();
        loop {
            let idle = self.since_renewal();
            if idle >= self.duration {
                return;
            }
            tokio::time::sleep(self.duration - idle).await;
        }
    }
}
