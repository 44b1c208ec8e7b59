//! The floor of the HTTP figures: a plain HTTP server on loopback that does no work, measured
//! with the same load tool and settings as the environment. It runs on a runtime of its own with
//! as many threads as `rayfine-server` uses, so the comparison is like for like.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

/// A running floor server; stopped when dropped.
pub struct FloorServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FloorServer {
    /// `POST /echo` answers with the request body; `POST /sleep` does the same after one second
    /// (the floor of the concurrency-at-scale row).
    pub fn start() -> anyhow::Result<FloorServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the floor server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the floor server's runtime")?;
        let thread = std::thread::Builder::new().name("bench-floor".into()).spawn(move || {
            runtime.block_on(async move {
                let app = Router::new().route("/echo", post(|body: Bytes| async move { body })).route(
                    "/sleep",
                    post(|body: Bytes| async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        body
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).expect("a bound std listener converts");
                let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
                    let _ = stream.set_nodelay(true);
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            })
        })?;
        Ok(FloorServer { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
