//! The floor of the HTTP figures: a plain HTTP server on loopback that does no work, measured
//! with the same load tool and settings as the environment. It runs on a runtime of its own with
//! as many threads as `rayfine-server` uses, so the comparison is like for like.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

/// A running floor server; stopped when dropped.
pub struct FloorServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FloorServer {
    /// `POST /echo` answers with the request body; `POST /sleep` does the same after one second
    /// (the floor of the concurrency-at-scale row); `/ws` answers OpenEnv's messages without an
    /// environment (the floor of the OpenEnv rows).
    pub fn start() -> anyhow::Result<FloorServer> {
        // A deep accept queue, as rayfine-server's: thousands of sessions connect at once, and
        // std's 128 would drop their SYNs into a one-second retry.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).context("cannot create the floor server's socket")?;
        socket.set_reuse_address(true)?;
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).context("cannot bind the floor server")?;
        socket.listen(8192)?;
        let listener: std::net::TcpListener = socket.into();
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the floor server's runtime")?;
        let thread = std::thread::Builder::new().name("bench-floor".into()).spawn(move || {
            runtime.block_on(async move {
                let app = Router::new().route("/echo", post(|body: Bytes| async move { body })).route("/ws", get(websocket)).route(
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

    /// The base URL, `http://127.0.0.1:PORT`, followed by `path`.
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

/// OpenEnv's framing with nothing behind it: a `step` is answered after its `wait_seconds`,
/// slept without blocking a thread; `close` closes; anything else is answered at once.
async fn websocket(upgrade: WebSocketUpgrade) -> Response {
    // Read in pieces of the same size as the server's `/ws`, so that the floor differs from it
    // only by what the server does.
    upgrade.read_buffer_size(rayfine::protocol::WS_READ_BUFFER_BYTES).on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(frame)) = socket.recv().await {
            let Message::Text(text) = frame else { continue };
            let message: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            match message["type"].as_str() {
                Some("close") => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                Some("step") => {
                    let wait = message["data"]["wait_seconds"].as_f64().unwrap_or(0.0).clamp(0.0, 60.0);
                    if wait > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                    }
                }
                _ => {}
            }
            let answer = r#"{"type":"observation","data":{"observation":{},"reward":0.0,"done":false}}"#;
            if socket.send(Message::text(answer)).await.is_err() {
                return;
            }
        }
    })
}
