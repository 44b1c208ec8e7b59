//! The SSH tunnels of this process, one per `ssh://` engine, opened on first use and reused by
//! every later client; a tunnel whose ssh has ended (a dropped connection) is opened again.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::Docker;
use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::{EngineError, EngineResult, REQUEST_TIMEOUT_SECS};
use crate::ssh_tunnel::{SshTarget, Tunnel};

/// A target's tunnel, once opened, behind a lock of its own so that one slow ssh holds up only
/// its host.
type Slot = Arc<Mutex<Option<Tunnel>>>;

static TUNNELS: Lazy<Mutex<HashMap<SshTarget, Slot>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// A client for the engine behind `target`, through its tunnel (opened or reopened here).
pub(super) async fn connect(target: &SshTarget) -> EngineResult<Docker> {
    let slot = TUNNELS.lock().entry(target.clone()).or_default().clone();
    let owned = target.clone();
    // Opening waits on ssh (authentication, the forward), so not on an async worker.
    let socket = tokio::task::spawn_blocking(move || {
        let mut tunnel = slot.lock();
        if let Some(open) = tunnel.as_mut().filter(|t| t.socket().exists()) {
            if open.is_alive() {
                return Ok(open.socket().to_path_buf());
            }
            tracing::warn!("the ssh tunnel to {owned} ended; opening it again");
        }
        *tunnel = None;
        let opened = Tunnel::open(&owned)?;
        let socket = opened.socket().to_path_buf();
        *tunnel = Some(opened);
        Ok(socket)
    })
    .await
    .unwrap_or_else(|_| Err(crate::ssh_tunnel::TunnelError::Ended { target: target.to_string(), status: "not started".into(), said: "the thread opening it failed".into() }))
    .map_err(|source| EngineError::Tunnel { engine: target.to_string(), source })?;
    Docker::connect_with_socket(&socket.to_string_lossy(), REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        .map_err(|source| EngineError::Unavailable { engine: target.to_string(), source })
}
