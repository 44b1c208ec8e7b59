//! OpenEnv compatibility, checked with OpenEnv's own Python client (the `openenv` package from
//! PyPI, in target/openenv-venv, which `.ci/setup` makes) against the real server: the cases are in
//! tests/openenv/check_clients.py; each runs against a server started for it with the settings it
//! needs (a session limit, an idle timeout). What a broken or ended session does to its slot and
//! its later calls is checked here directly over `/mcp`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{bench_figure, http, quick_bench, repo, wait_for_file, EnvCopy, RunningServer};

fn openenv_python() -> PathBuf {
    let python = repo().join("target/openenv-venv/bin/python");
    assert!(python.is_file(), "OpenEnv's client is missing: run `bash .ci/setup`, which installs it into target/openenv-venv");
    python
}

/// Runs one case of check_clients.py against a server for `env` started with `vars`.
fn check(case: &str, env: &str, vars: &[(&str, &str)], arg: Option<&str>) {
    let env = EnvCopy::of(env);
    let (server, ready) = RunningServer::start(&env, vars);
    assert_eq!(ready["event"], "ready", "{}", server.stderr());
    let mut command = Command::new(openenv_python());
    command.arg(repo().join("tests/openenv/check_clients.py")).arg(case).arg(server.url(""));
    command.args(arg);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "case {case} failed:\n{}{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.stderr()
    );
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn openenvs_client_runs_episodes_over_websocket_and_http() {
    check("basics", "echo_openenv", &[], None);
}

#[test]
fn sixty_four_concurrent_sessions_keep_their_own_state() {
    check("concurrent", "echo_openenv", &[], Some("64"));
}

#[test]
fn a_session_over_the_limit_gets_openenvs_capacity_answer() {
    check("capacity", "echo_openenv", &[("MAX_CONCURRENT_ENVS", "3")], Some("3"));
}

#[test]
fn a_vanished_clients_session_is_reaped_and_its_slot_freed() {
    check("reaped", "echo_openenv", &[("MAX_CONCURRENT_ENVS", "1"), ("RAYFINE_SESSION_IDLE_TIMEOUT", "1.5")], None);
}

#[test]
fn openenvs_mcp_client_calls_the_actors_methods_as_tools_per_session() {
    check("mcp", "counter", &[("COUNTER_NAME", "mcp-test")], None);
}

/// `rayfine bench --only openenv` (its plumbing, not its figures): the step-cost and scaling rows
/// arrive, each with a figure, and every session of the quick batch succeeded.
#[test]
fn the_openenv_bench_section_measures_steps_and_sessions_at_scale() {
    let report = quick_bench("openenv", &[]);
    let figure = |needle: &str| bench_figure(&report, needle);
    assert!(figure("WebSocket `step`") > 0.0, "{report:#}");
    assert!(figure("plain WebSocket echo") > 0.0, "{report:#}");
    assert_eq!(figure("256 sessions: success"), 100.0, "{report:#}");
    assert!(figure("256 sessions: a session's whole time") >= 1000.0, "each session sleeps 1 s: {report:#}");
}

#[test]
fn a_client_gone_mid_step_keeps_its_slot_until_the_step_is_done() {
    check("left_mid_step", "openenv_benchmark", &[("MAX_CONCURRENT_ENVS", "1")], None);
}

/// One JSON-RPC request to `/mcp`; its `result`, or its `error`'s message.
fn mcp(server: &RunningServer, method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
    let request = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, answer) = http("POST", &server.url("/mcp"), &request.to_string(), None);
    assert_eq!(status, 200, "{answer}");
    match answer.get("error") {
        Some(error) => Err(error["message"].as_str().unwrap_or_default().to_string()),
        None => Ok(answer["result"].clone()),
    }
}

/// How long ago `then` was, by the wall clock (a file's time).
fn since(then: std::time::SystemTime) -> Duration {
    std::time::SystemTime::now().duration_since(then).unwrap_or_default()
}

#[test]
fn a_session_whose_sync_call_timed_out_takes_no_more_calls_whoever_made_it() {
    let env = EnvCopy::of("slow_actor");
    let (server, _) = RunningServer::start(&env, &[("RAYFINE_CALL_TIMEOUT", "2")]);
    let id = mcp(&server, "openenv/session/create", serde_json::json!({})).unwrap()["session_id"].as_str().unwrap().to_string();
    let started = env.path().join("napping");
    let nap = |seconds: f64| mcp(&server, "tools/call", serde_json::json!({"name": "nap", "arguments": {"seconds": seconds, "started": started}, "session_id": id}));
    // The first nap overruns its 2 s and still sleeps on the instance afterwards: neither the
    // call that was waiting for its turn meanwhile nor a later one may run beside it.
    let (timed_out, queued) = std::thread::scope(|scope| {
        let first = scope.spawn(|| nap(4.0));
        wait_for_file(&started);
        let queued = scope.spawn(|| nap(0.0));
        (first.join().unwrap(), queued.join().unwrap())
    });
    let timed_out = timed_out.unwrap_err();
    assert!(timed_out.contains("timed out"), "{timed_out}");
    let queued = queued.unwrap_err();
    assert!(queued.contains("has ended"), "{queued}");
    let refused = nap(0.0).unwrap_err();
    // OpenEnv's words for an id it does not know, and that this one has ended.
    assert!(refused.contains("Unknown session_id") && refused.contains("has ended"), "{refused}");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn an_ended_sessions_slot_comes_back_only_once_the_worker_has_dropped_its_instance() {
    let env = EnvCopy::of("slow_actor");
    let (server, _) = RunningServer::start(&env, &[("MAX_CONCURRENT_ENVS", "1"), ("SLOW_CLOSE_SECONDS", "3")]);
    let create = || mcp(&server, "openenv/session/create", serde_json::json!({}));
    let id = create().unwrap()["session_id"].as_str().unwrap().to_string();
    let closed = mcp(&server, "openenv/session/close", serde_json::json!({"session_id": id})).unwrap();
    assert_eq!(closed["closed"], true, "{closed}");
    let ended = Instant::now();
    // Its close() sleeps 3 s in the worker: until it returns, the slot is still taken.
    let refused = create().unwrap_err();
    assert!(refused.contains("at capacity"), "{refused}");
    let deadline = ended + Duration::from_secs(10);
    let next = loop {
        match create() {
            Ok(session) => break session,
            Err(why) => assert!(Instant::now() < deadline && why.contains("at capacity"), "{why}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ended.elapsed() >= Duration::from_secs(2), "the slot came back before close() could have returned");
    assert!(next["session_id"].is_string(), "{next}");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn a_session_call_whose_http_client_hung_up_still_holds_the_sessions_turn() {
    use std::io::Write;
    let env = EnvCopy::of("slow_actor");
    let (server, _) = RunningServer::start(&env, &[]);
    let id = mcp(&server, "openenv/session/create", serde_json::json!({})).unwrap()["session_id"].as_str().unwrap().to_string();
    let napping = env.path().join("napping");
    let nap = |seconds: f64| serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nap", "arguments": {"seconds": seconds, "started": napping}, "session_id": id}});
    // A client that sends a 3 s call, then hangs up before the answer.
    let body = nap(3.0).to_string();
    let host = server.url("").trim_start_matches("http://").to_string();
    let mut leaver = std::net::TcpStream::connect(&host).unwrap();
    write!(leaver, "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let nap_started = wait_for_file(&napping);
    drop(leaver);
    // The next call of the session waits for the first to end in the worker.
    let second = mcp(&server, "tools/call", nap(0.0)["params"].clone()).unwrap();
    assert_eq!(second["data"], 2, "{second}");
    assert!(since(nap_started) >= Duration::from_millis(2800), "the second call ran beside the first: {:?} after it started", since(nap_started));
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn a_session_closed_while_its_call_runs_is_dropped_by_the_worker_only_after_that_call() {
    let env = EnvCopy::of("slow_actor");
    let (server, _) = RunningServer::start(&env, &[("MAX_CONCURRENT_ENVS", "1")]);
    let create = || mcp(&server, "openenv/session/create", serde_json::json!({}));
    let id = create().unwrap()["session_id"].as_str().unwrap().to_string();
    let running = env.path().join("napping");
    let napping = std::thread::scope(|scope| {
        let nap = scope.spawn(|| mcp(&server, "tools/call", serde_json::json!({"name": "nap", "arguments": {"seconds": 3.0, "started": running}, "session_id": id})));
        let nap_started = wait_for_file(&running);
        let closed = mcp(&server, "openenv/session/close", serde_json::json!({"session_id": id})).unwrap();
        assert_eq!(closed["closed"], true, "{closed}");
        // Its close() waits for the nap, and the slot for its close().
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(why) = create() {
            assert!(Instant::now() < deadline && why.contains("at capacity"), "{why}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let free_after = since(nap_started);
        assert!(free_after >= Duration::from_millis(2800), "the slot came back {free_after:?} after the call started, before it ended");
        nap.join().unwrap()
    });
    assert_eq!(napping.unwrap()["data"], 1, "the call ran to its end");
    drop(server);
    env.assert_no_process_left();
}

#[tokio::test]
async fn a_message_without_a_type_is_told_what_types_there_are() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let env = EnvCopy::of("echo_openenv");
    let (server, _) = RunningServer::start(&env, &[]);
    let url = server.url("/ws").replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    for message in [r#"{"data": {}}"#, r#"{"type": 5}"#] {
        socket.send(Message::text(message)).await.unwrap();
        let Some(Ok(Message::Text(answer))) = socket.next().await else { panic!("no answer to {message}") };
        let answer: serde_json::Value = serde_json::from_str(answer.as_str()).unwrap();
        assert_eq!(answer["data"]["code"], "UNKNOWN_TYPE", "{answer}");
        assert!(answer["data"]["message"].as_str().unwrap().contains("no string `type` (one of reset, step"), "{answer}");
    }
    drop(socket);
    drop(server);
    env.assert_no_process_left();
}

/// A WebSocket attached to a session (`/ws?session_id=`) learns that a call of the same session
/// made over MCP broke it as soon as that happens: an error frame, then a normal close, with no
/// request of its own to prompt them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_attached_to_a_session_ended_over_mcp_is_told_and_closed_at_once() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let env = EnvCopy::of("slow_actor");
    let (server, _) = RunningServer::start(&env, &[("RAYFINE_CALL_TIMEOUT", "1")]);
    let id = mcp(&server, "openenv/session/create", serde_json::json!({})).unwrap()["session_id"].as_str().unwrap().to_string();
    let url = format!("{}?session_id={id}", server.url("/ws").replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    // One answer on the socket: it is attached before the session is ended.
    socket.send(Message::text(r#"{"type": 5}"#)).await.unwrap();
    let Some(Ok(Message::Text(answer))) = socket.next().await else { panic!("no answer on the attached socket") };
    assert!(answer.as_str().contains("UNKNOWN_TYPE"), "{answer}");
    // A nap over MCP that overruns its 1 s ends the session.
    let nap = serde_json::json!({"name": "nap", "arguments": {"seconds": 3.0}, "session_id": id});
    let timed_out = tokio::task::block_in_place(|| mcp(&server, "tools/call", nap)).unwrap_err();
    assert!(timed_out.contains("timed out"), "{timed_out}");
    let ended = Instant::now();
    let mut told = None;
    // At once, against the session's idle timeout (120 s); the bounds leave room for a starved machine.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Text(text)) => told = Some(serde_json::from_str::<serde_json::Value>(text.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket was still open 30 s after its session ended");
    assert!(ended.elapsed() < Duration::from_secs(10), "closed only after {:?}", ended.elapsed());
    let told = told.expect("an error frame before the close");
    assert_eq!(told["type"], "error", "{told}");
    assert!(told["data"]["message"].as_str().unwrap().contains("has ended"), "{told}");
    // OpenEnv's client reconnects to the same id at its next request: it is told the same.
    let (mut again, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let Some(Ok(Message::Text(refused))) = again.next().await else { panic!("no answer to a reconnect") };
    assert!(refused.as_str().contains("has ended"), "{refused}");
    drop(again);
    drop(socket);
    drop(server);
    env.assert_no_process_left();
}
