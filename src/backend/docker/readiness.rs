//! Until a container is ready: its output split into server events and log lines, the `ready`
//! event of Rayfine's server, or the first answer of an HTTP-based environment's own server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::backend::LogRing;
use crate::docker::engine::Output;
use crate::http_client::ServerClient;
use crate::protocol::ServerEvent;

/// Splits the container's output into lines: server events (on stdout) go to `events`, every
/// other line to the log ring. Sets `exited` when the stream ends, which it does when the
/// container exits.
pub(super) async fn pump_output(mut output: impl Stream<Item = Output> + Unpin, logs: Arc<LogRing>, events: UnboundedSender<ServerEvent>, exited: Arc<AtomicBool>) {
    let mut partial_out = Vec::new();
    let mut partial_err = Vec::new();
    let take_line = |line: &[u8], from_stdout: bool| {
        let line = String::from_utf8_lossy(line).trim_end().to_string();
        if from_stdout {
            if let Ok(event) = serde_json::from_str::<ServerEvent>(&line) {
                let _ = events.send(event);
                return;
            }
        }
        logs.push(line);
    };
    while let Some(chunk) = output.next().await {
        let (bytes, from_stdout, partial) = match chunk {
            Output::Stdout(bytes) => (bytes, true, &mut partial_out),
            Output::Stderr(bytes) => (bytes, false, &mut partial_err),
        };
        partial.extend_from_slice(&bytes);
        while let Some(newline) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=newline).collect();
            take_line(&line, from_stdout);
        }
    }
    for (rest, from_stdout) in [(partial_out, true), (partial_err, false)] {
        if !rest.is_empty() {
            take_line(&rest, from_stdout);
        }
    }
    exited.store(true, Ordering::SeqCst);
}

/// Waits for the server's `ready` event, then checks the published port (at `url`) answers.
pub(super) async fn wait_for_server(mut events: UnboundedReceiver<ServerEvent>, url: &str, deadline: Instant) -> Result<(), String> {
    let ready = async {
        while let Some(event) = events.recv().await {
            match event {
                ServerEvent::Listening { .. } | ServerEvent::Worker { .. } => {}
                ServerEvent::Ready { .. } => return Ok(()),
                ServerEvent::Failed { error } => return Err(format!("{}: {}", error.kind, error.message)),
            }
        }
        Err("the container exited before the environment was ready".to_string())
    };
    ready.await?;
    // The event came from inside; make sure the path through the published port works too.
    let client = ServerClient::new(url, None).map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(2);
    loop {
        match client.probe(Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() + delay > deadline => return Err(format!("the published port at {url} does not answer: {err}")),
            Err(_) => tokio::time::sleep(delay).await,
        }
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// An HTTP-based environment is ready when `/health` says 200, or, if it has no such route, when
/// it answers anything below 500.
pub(super) async fn wait_for_http(url: &str, deadline: Instant, exited: &AtomicBool) -> Result<(), String> {
    let client = ServerClient::new(url, None).map_err(|e| e.to_string())?;
    match client.wait_answering(deadline, &|| exited.load(Ordering::SeqCst)).await {
        Ok(()) => Ok(()),
        Err(_) if exited.load(Ordering::SeqCst) => Err("the container exited before its server answered".into()),
        Err(err) => Err(format!("not ready in time: {err}")),
    }
}
