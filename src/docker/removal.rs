//! Removing containers for sure: asked again while the engine refuses, confirmed by inspect, and
//! from exit paths that have no async runtime.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::engine::{short, Engine, EngineError};
use super::host::DockerHost;
use crate::error::{Error, Result};

/// How long a removal is asked for again before the container is reported as left behind. An
/// engine refuses to remove a container whose processes are slow to die (a fork bomb's thousands)
/// with a 500 "cannot kill", and succeeds a few seconds later.
const REMOVE_LIMIT: Duration = Duration::from_secs(60);

/// How long the exit paths wait for their batch of removals.
const REMOVE_NOW_LIMIT: Duration = Duration::from_secs(10);

/// Force-removes a container with its volumes and waits until the engine no longer knows it,
/// asking again while the engine refuses. An error says the container is still there.
pub(crate) async fn remove_and_wait(engine: &Engine, id: &str) -> Result<()> {
    remove_and_wait_within(engine, id, REMOVE_LIMIT, Duration::from_secs(2)).await
}

/// [`remove_and_wait`], asking again every `every` for up to `limit`.
async fn remove_and_wait_within(engine: &Engine, id: &str, limit: Duration, every: Duration) -> Result<()> {
    let started = Instant::now();
    let mut refusal: Option<EngineError> = None;
    loop {
        match engine.remove_container(id).await {
            Ok(()) => {}
            Err(err) if err.is_not_found() => return Ok(()),
            Err(err) if err.is_conflict() => {} // auto-removal already under way
            Err(err) => {
                tracing::debug!("{err}");
                refusal = Some(err);
            }
        }
        // Gone at once, usually; otherwise ask again.
        if is_gone_within(engine, id, every).await {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(Error::ContainerRemains { id: short(id).to_string(), seconds: limit.as_secs(), refusal: refusal.map(Box::new) });
        }
        tracing::info!("container {id} is still there; asking the engine again to remove it");
    }
}

/// Whether the engine says, within `within`, that the container is gone. The engine is asked to
/// answer when it is (one request, however long that takes); an engine that cannot (an API older
/// than 1.30, a stand-in) is asked by inspect every 20 ms instead, which at 32 removals at once
/// was 1,600 requests a second for the engine to serve while it removed them.
pub(crate) async fn is_gone_within(engine: &Engine, id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let is_gone = || async {
        match engine.inspect_container(id).await {
            Err(err) => err.is_not_found(),
            Ok(_) => false,
        }
    };
    match tokio::time::timeout(within, engine.wait_removed(id)).await {
        Ok(Ok(())) => {
            if is_gone().await {
                return true;
            }
        }
        Ok(Err(err)) if err.is_not_found() => return true,
        Ok(Err(err)) => tracing::debug!("{err}; polling instead"),
        Err(_) => return false,
    }
    while Instant::now() < deadline {
        if is_gone().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Something in an engine that this process must remove if it ends now, by id or by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Leftover {
    /// A container.
    Container(DockerHost, String),
    /// A Swarm service (its tasks go with it).
    Service(DockerHost, String),
    /// A Swarm secret (removed after the services that use it).
    Secret(DockerHost, String),
}

impl Leftover {
    fn host(&self) -> &DockerHost {
        match self {
            Leftover::Container(host, _) | Leftover::Service(host, _) | Leftover::Secret(host, _) => host,
        }
    }
}

/// Force-removes leftovers, each on its engine, from a plain thread with a runtime of its own:
/// for the exit paths (signal handler, panic hook, guard) that may run inside or outside an async
/// runtime. Every engine is asked at once; one that does not answer holds up no other. Containers
/// and services go first, then the secrets they used.
///
/// Returns whether every engine answered every removal with success, "no such thing" or "being
/// removed already": for a leftover known by its id, that it is gone or going. (A name's "no
/// such thing" proves less: its create may still be under way in the engine.)
pub(crate) fn remove_now(leftovers: Vec<Leftover>) -> bool {
    if leftovers.is_empty() {
        return true;
    }
    let mut by_host: BTreeMap<DockerHost, Vec<Leftover>> = BTreeMap::new();
    for leftover in leftovers {
        by_host.entry(leftover.host().clone()).or_default().push(leftover);
    }
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
        let all_removed = runtime.block_on(async {
            let hosts = by_host.into_iter().map(|(host, leftovers)| async move {
                let Ok(engine) = Engine::connect_to(&host).await else { return false };
                let (secrets, first): (Vec<&Leftover>, Vec<&Leftover>) = leftovers.iter().partition(|l| matches!(l, Leftover::Secret(..)));
                let remove = |leftover: &Leftover| {
                    let engine = engine.clone();
                    let leftover = leftover.clone();
                    async move {
                        let removed = match &leftover {
                            Leftover::Container(_, id) => engine.remove_container(id).await,
                            Leftover::Service(_, id) => engine.remove_service(id).await,
                            Leftover::Secret(_, id) => engine.remove_secret(id).await,
                        };
                        // A conflict is a removal already under way (the container's own).
                        removed.is_ok() || removed.is_err_and(|err| err.is_not_found() || err.is_conflict())
                    }
                };
                let first = futures_util::future::join_all(first.into_iter().map(remove)).await;
                let secrets = futures_util::future::join_all(secrets.into_iter().map(remove)).await;
                first.into_iter().chain(secrets).all(|removed| removed)
            });
            let answered = tokio::time::timeout(REMOVE_NOW_LIMIT, futures_util::future::join_all(hosts)).await;
            answered.is_ok_and(|hosts| hosts.into_iter().all(|removed| removed))
        });
        // Not a drop, which would wait for blocking tasks still under way (an SSH tunnel being
        // opened, a DNS lookup): the limit above is the whole wait.
        runtime.shutdown_background();
        all_removed
    });
    worker.join().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::{delete, get};

    use super::*;

    /// An engine that refuses to remove its one container (`refusals` times, with the 500 a fork
    /// bombed container gets), then removes it.
    async fn stubborn_engine(refusals: usize) -> Engine {
        #[derive(Clone)]
        struct Stub {
            refused: Arc<AtomicUsize>,
            refusals: usize,
            removed: Arc<AtomicBool>,
        }
        let stub = Stub { refused: Arc::default(), refusals, removed: Arc::default() };
        let not_found = || (StatusCode::NOT_FOUND, r#"{"message":"No such container: c1"}"#);
        let app = axum::Router::new()
            .route(
                "/containers/c1",
                delete(|State(stub): State<Stub>| async move {
                    if stub.refused.fetch_add(1, Ordering::SeqCst) < stub.refusals {
                        return (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"Could not kill running container c1: PID 42 is zombie and can not be killed"}"#);
                    }
                    stub.removed.store(true, Ordering::SeqCst);
                    (StatusCode::NO_CONTENT, "")
                }),
            )
            .route(
                "/containers/c1/json",
                get(move |State(stub): State<Stub>| async move {
                    if stub.removed.load(Ordering::SeqCst) {
                        not_found()
                    } else {
                        (StatusCode::OK, r#"{"Id":"c1","State":{"Running":false}}"#)
                    }
                }),
            )
            // Anything else is an error, never a 404 that would read as "removed".
            .fallback(|| async { StatusCode::IM_A_TEAPOT })
            .with_state(stub);
        serve_stub(app).await
    }

    /// An engine client for a stand-in engine, served on a port of its own.
    async fn serve_stub(app: axum::Router) -> Engine {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Engine::at_http(&format!("http://{addr}"))
    }

    /// An engine removing its one container on its own (an auto-removal, 300 ms after the first
    /// remove, which it answers "already in progress"), that answers a wait for the removal.
    /// Counts the inspects it is sent.
    async fn auto_removing_engine() -> (Engine, Arc<AtomicUsize>) {
        #[derive(Clone)]
        struct Stub {
            removed: Arc<tokio::sync::watch::Sender<bool>>,
            inspects: Arc<AtomicUsize>,
        }
        let (removed, _) = tokio::sync::watch::channel(false);
        let stub = Stub { removed: Arc::new(removed), inspects: Arc::default() };
        let inspects = stub.inspects.clone();
        let not_found = r#"{"message":"No such container: c1"}"#;
        let app = axum::Router::new()
            .route(
                "/containers/c1",
                delete(move |State(stub): State<Stub>| async move {
                    if *stub.removed.borrow() {
                        return (StatusCode::NOT_FOUND, not_found);
                    }
                    let removed = stub.removed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        removed.send_replace(true);
                    });
                    (StatusCode::CONFLICT, r#"{"message":"removal of container c1 is already in progress"}"#)
                }),
            )
            .route(
                "/containers/c1/wait",
                axum::routing::post(move |State(stub): State<Stub>| async move {
                    let mut removed = stub.removed.subscribe();
                    let _ = removed.wait_for(|gone| *gone).await;
                    (StatusCode::OK, r#"{"StatusCode":0}"#)
                }),
            )
            .route(
                "/containers/c1/json",
                get(move |State(stub): State<Stub>| async move {
                    stub.inspects.fetch_add(1, Ordering::SeqCst);
                    if *stub.removed.borrow() {
                        (StatusCode::NOT_FOUND, not_found)
                    } else {
                        (StatusCode::OK, r#"{"Id":"c1","State":{"Running":false}}"#)
                    }
                }),
            )
            .fallback(|| async { StatusCode::IM_A_TEAPOT })
            .with_state(stub);
        (serve_stub(app).await, inspects)
    }

    #[tokio::test]
    async fn a_removal_under_way_is_waited_for_with_one_request_not_polled() {
        let (engine, inspects) = auto_removing_engine().await;
        let t = Instant::now();
        remove_and_wait_within(&engine, "c1", Duration::from_secs(10), Duration::from_secs(5)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300), "returned before the engine removed it");
        // One inspect confirms what the wait said; polling every 20 ms would have sent about 15.
        assert_eq!(inspects.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn removal_is_asked_again_while_the_engine_refuses() {
        let engine = stubborn_engine(2).await;
        remove_and_wait_within(&engine, "c1", Duration::from_secs(10), Duration::from_millis(100)).await.unwrap();
    }

    #[tokio::test]
    async fn a_container_the_engine_keeps_is_an_error_naming_it_and_the_daemons_refusal() {
        let engine = stubborn_engine(usize::MAX).await;
        let err = remove_and_wait_within(&engine, "c1", Duration::from_millis(500), Duration::from_millis(100)).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("container c1 is still there") && text.contains("zombie"), "{text}");
    }

    /// `remove_now` says "all removed" only when the engine answered every removal with success,
    /// "no such container" or "already being removed": what lets an exiting owner tell its
    /// watchdog that nothing is left.
    #[test]
    fn remove_now_reports_whether_the_engine_confirmed_every_removal() {
        let app = axum::Router::new()
            .route("/version", get(|| async { r#"{"ApiVersion":"1.41","Version":"20.10.0"}"# }))
            .route(
                "/containers/{id}",
                delete(|axum::extract::Path(id): axum::extract::Path<String>| async move {
                    match id.as_str() {
                        "gone" => (StatusCode::NO_CONTENT, ""),
                        "unknown" => (StatusCode::NOT_FOUND, r#"{"message":"No such container: unknown"}"#),
                        "going" => (StatusCode::CONFLICT, r#"{"message":"removal of container going is already in progress"}"#),
                        _ => (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"cannot kill"}"#),
                    }
                }),
            );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let host = DockerHost::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        let containers = |ids: &[&str]| ids.iter().map(|id| Leftover::Container(host.clone(), id.to_string())).collect::<Vec<_>>();
        assert!(remove_now(containers(&["gone", "unknown", "going"])));
        assert!(!remove_now(containers(&["gone", "stuck"])), "a refused removal is not confirmed");
        assert!(remove_now(Vec::new()));
        let nobody = DockerHost::parse("tcp://127.0.0.1:1").unwrap();
        assert!(!remove_now(vec![Leftover::Container(nobody, "gone".into())]), "an engine that cannot be reached confirms nothing");
    }
}
