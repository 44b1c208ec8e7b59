//! The real server over a real socket against the example environments and fixtures.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{http, EnvCopy, RunningServer};

#[test]
fn sync_and_async_functions_answer_over_a_real_socket() {
    let env = EnvCopy::of("echo");
    let (server, ready) = RunningServer::start(&env, &[]);
    assert_eq!(ready["event"], "ready");
    assert_eq!(http("GET", &server.url("/health"), "", None), (200, json!({"status": "ok"})));
    let (_, body) = http("POST", &server.url("/call"), r#"{"method":"echo","kwargs":{"text":"hi"}}"#, None);
    assert_eq!(body, json!({"status": "success", "result": "hi"}));
    let (_, body) = http("POST", &server.url("/slow_echo"), r#"{"text":"later","delay":0.01}"#, None);
    assert_eq!(body["result"], "later");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn actor_keeps_state_and_reads_env_vars_in_its_constructor() {
    let env = EnvCopy::of("counter");
    let (server, ready) = RunningServer::start(&env, &[("COUNTER_NAME", "c1"), ("COUNTER_STEP", "5")]);
    assert_eq!(ready["event"], "ready");
    for expected in [5, 10, 15] {
        let (_, body) = http("POST", &server.url("/increment"), "{}", None);
        assert_eq!(body["result"], expected);
    }
    let (_, body) = http("POST", &server.url("/get"), "", None);
    assert_eq!(body["result"], json!({"name": "c1", "value": 15}));
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn failing_constructor_is_reported_by_health_and_the_start_event() {
    let env = EnvCopy::of("counter");
    let (server, event) = RunningServer::start(&env, &[]);
    assert_eq!(event["event"], "failed");
    assert_eq!(event["error"]["type"], "KeyError");
    assert!(event["error"]["traceback"].as_str().unwrap().contains("COUNTER_NAME"), "{event}");
    let (status, health) = http("GET", &server.url("/health"), "", None);
    assert_eq!(status, 503);
    assert_eq!(health["status"], "failed");
    assert_eq!(health["error"]["type"], "KeyError");
    let (status, body) = http("POST", &server.url("/call"), r#"{"method":"get"}"#, None);
    assert_eq!((status, body["error"]["type"].as_str()), (503, Some("WorkerUnavailable")));
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn exceptions_bad_arguments_and_unknown_or_private_methods_get_their_status() {
    let env = EnvCopy::of("gridgame");
    let (server, _) = RunningServer::start(&env, &[]);
    let cases = [
        (r#"{"method":"step","kwargs":{"episode_id":"x","action":"up"}}"#, 500, "KeyError"),
        (r#"{"method":"reset","kwargs":{"size":1}}"#, 500, "ValueError"),
        (r#"{"method":"step","kwargs":{"episode":"x"}}"#, 422, "InvalidArguments"),
        (r#"{"method":"fly"}"#, 404, "MethodNotFound"),
        (r#"{"method":"_observe"}"#, 404, "MethodNotFound"),
        (r#"{"method":"random"}"#, 404, "MethodNotFound"),
        (r#"{"method":"Observation"}"#, 404, "MethodNotFound"),
        (r#"{"method":"__init__"}"#, 404, "MethodNotFound"),
    ];
    for (body, status, kind) in cases {
        let (got, answer) = http("POST", &server.url("/call"), body, None);
        assert_eq!((got, answer["error"]["type"].as_str()), (status, Some(kind)), "{body} -> {answer}");
    }
    let (_, answer) = http("POST", &server.url("/call"), r#"{"method":"reset","kwargs":{"size":1}}"#, None);
    assert!(answer["error"]["traceback"].as_str().unwrap().contains("env.py"), "{answer}");
    assert!(!answer["error"]["traceback"].as_str().unwrap().contains("worker.py"), "worker frames are trimmed: {answer}");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn results_json_cannot_carry_are_a_500_naming_the_type() {
    let env = EnvCopy::of("unserializable");
    let (server, _) = RunningServer::start(&env, &[]);
    let (status, body) = http("POST", &server.url("/opaque"), "{}", None);
    assert_eq!((status, body["error"]["type"].as_str()), (500, Some("ResultNotSerializable")));
    assert!(body["detail"].as_str().unwrap().contains("Opaque"), "{body}");
    let (status, body) = http("POST", &server.url("/nan"), "{}", None);
    assert_eq!((status, body["error"]["type"].as_str()), (500, Some("ResultNotSerializable")));
    let (status, body) = http("POST", &server.url("/converted"), "{}", None);
    assert_eq!((status, body["result"].clone()), (200, json!({"tuple": [1, 2], "set": [3], "frozen": [4]})));
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn two_hundred_calls_in_flight_at_once_all_succeed() {
    let env = EnvCopy::of("echo");
    let (server, _) = RunningServer::start(&env, &[]);
    let started = std::time::Instant::now();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let url = server.url("/call");
            let method = if i % 2 == 0 { "slow_echo" } else { "echo" };
            std::thread::spawn(move || {
                let kwargs = if method == "slow_echo" { json!({"text": format!("n{i}"), "delay": 1.0}) } else { json!({"text": format!("n{i}")}) };
                let body = json!({"method": method, "kwargs": kwargs}).to_string();
                http("POST", &url, &body, None)
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (status, body) = handle.join().unwrap();
        assert_eq!((status, body["result"].clone()), (200, json!(format!("n{i}"))));
    }
    // 100 async calls sleeping 1 s each ran concurrently: one after the other would take 100 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(50), "calls were serialized: {:?}", started.elapsed());
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn prints_from_the_environment_go_to_the_log_not_the_channel() {
    let env = EnvCopy::of("noisy");
    let (server, ready) = RunningServer::start(&env, &[]);
    assert_eq!(ready["event"], "ready");
    for _ in 0..3 {
        let (status, body) = http("POST", &server.url("/shout"), r#"{"text":"hey"}"#, None);
        assert_eq!((status, body["result"].clone()), (200, json!("HEY")));
    }
    let log = server.stderr();
    for expected in ["noisy env loading", "stdout: hey", "stderr: hey", r#"{"id": 1, "result": "forged"}"#] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn affinetes_style_python_client_works_unchanged() {
    let env = EnvCopy::of("counter");
    let (server, _) = RunningServer::start(&env, &[("COUNTER_NAME", "py")]);
    let script = r#"
import json, sys, urllib.request, urllib.error
base = sys.argv[1]

def call(method, *args, **kwargs):
    body = json.dumps({"method": method, "args": list(args), "kwargs": kwargs}).encode()
    req = urllib.request.Request(base + "/call", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        payload = json.loads(err.read())
        raise RuntimeError(payload["detail"])
    assert payload["status"] == "success", payload
    return payload["result"]

assert urllib.request.urlopen(base + "/health").status == 200
names = [m["name"] for m in json.loads(urllib.request.urlopen(base + "/methods").read())["methods"]]
assert "increment" in names, names
assert call("increment", 2) == 2
assert call("increment", times=3) == 5
assert call("evaluate", answer=5) == {"score": 1.0, "expected": 5}
try:
    call("missing")
except RuntimeError as err:
    assert "no method named" in str(err), err
else:
    raise AssertionError("missing method did not fail")
print("client ok")
"#;
    let output = std::process::Command::new("python3").args(["-c", script, &server.url("")]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "client ok");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn server_exits_with_its_worker_when_stdin_closes() {
    let env = EnvCopy::of("echo");
    let (mut server, _) = RunningServer::start(&env, &[]);
    drop(server.child.stdin.take());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    env.assert_no_process_left();
}

#[test]
fn arguments_larger_than_the_pipe_buffer_arrive_whole() {
    let env = EnvCopy::of("echo");
    let (server, _) = RunningServer::start(&env, &[]);
    // 4 MiB is far beyond a pipe's 64 KiB, so the channel's backlog has to carry most of it;
    // several at once check that lines from different calls never interleave.
    let handles: Vec<_> = (0..4u8)
        .map(|i| {
            let url = server.url("/call");
            std::thread::spawn(move || {
                let text = char::from(b'a' + i).to_string().repeat(4 << 20);
                let (status, body) = http("POST", &url, &json!({"method": "echo", "args": [text.clone()]}).to_string(), None);
                (status, body["result"].as_str() == Some(text.as_str()))
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), (200, true));
    }
    drop(server);
    env.assert_no_process_left();
}

/// Renewals (the lease endpoint, or any authenticated call) keep a leased server up well past its
/// lease; without them it shuts down and says why.
#[test]
fn a_lease_holds_while_renewed_and_stops_the_server_when_it_lapses() {
    let env = EnvCopy::of("echo");
    let token = "lease-test-token";
    // A 3 s lease renewed every 250 ms for 6 s: it holds past its length, and a stall of the
    // test or the server of up to 2.5 s (a starved machine) does not let it lapse.
    let (mut server, ready) = RunningServer::start(&env, &[("RAYFINE_TOKEN", token), ("RAYFINE_LEASE", "3")]);
    assert_eq!(ready["event"], "ready");
    let lease_url = server.url("/_rayfine/lease");
    assert_eq!(http("POST", &lease_url, "", None).0, 401, "renewing needs the token");
    for i in 0..24 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if i % 2 == 0 {
            assert_eq!(http("POST", &lease_url, "", Some(token)), (200, json!({"status": "ok", "lease_seconds": 3.0})));
        } else {
            assert_eq!(http("POST", &server.url("/call"), r#"{"method":"ping"}"#, Some(token)).0, 200);
        }
    }
    assert!(server.child.try_wait().unwrap().is_none(), "renewed for 6 s, the 3 s lease must hold");
    // Unauthenticated requests do not renew it.
    assert_eq!(http("GET", &server.url("/health"), "", None).0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while server.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the lease did not stop the server");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(server.stderr().contains("the lease lapsed"), "{}", server.stderr());
    drop(server);
    env.assert_no_process_left();
}

/// Calls `method` `times` times in a row and returns the thread name each call reported.
fn threads_of(server: &RunningServer, method: &str, kwargs: &str, times: usize) -> Vec<String> {
    (0..times)
        .map(|_| {
            let (status, body) = http("POST", &server.url(&format!("/{method}")), kwargs, None);
            assert_eq!(status, 200, "{method}: {body}");
            body["result"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Calls `method` until the loop's thread runs it; returns how many calls that took.
fn calls_until_inline(server: &RunningServer, method: &str) -> usize {
    // A run preempted past 1 ms on a busy machine restarts the count, hence the generous bound.
    (1..=400)
        .find(|_| threads_of(server, method, "{}", 1)[0] == "MainThread")
        .unwrap_or_else(|| panic!("{method} never ran on the loop's thread"))
}

#[test]
fn short_sync_calls_move_to_the_loop_thread_and_a_slow_one_moves_back() {
    let env = EnvCopy::of("threads");
    let (server, _) = RunningServer::start(&env, &[]);
    // The worker runs a sync method on its loop's thread only after 16 short runs in a row.
    let seen = threads_of(&server, "where", "{}", 16);
    assert!(seen.iter().all(|t| t == "rayfine-sync"), "{seen:?}");
    calls_until_inline(&server, "where");
    // Run there, code that starts its own event loop still works as on a pool thread.
    calls_until_inline(&server, "nested_run");
    // One slow run sends the method back to the pool.
    calls_until_inline(&server, "nap");
    threads_of(&server, "nap", r#"{"seconds":0.05}"#, 1);
    assert_eq!(threads_of(&server, "nap", "{}", 1), ["rayfine-sync"]);
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn a_crowded_pool_switches_the_gil_less_often_and_short_calls_leave_the_loop_thread() {
    let env = EnvCopy::of("threads");
    let (server, _) = RunningServer::start(&env, &[]);
    calls_until_inline(&server, "where");
    let interval = |server: &RunningServer| http("POST", &server.url("/switch_interval"), "{}", None).1["result"].as_f64().unwrap();
    assert_eq!(interval(&server), 0.005, "CPython's default");
    // 300 sync calls sleeping at once, each on a pool thread of its own.
    let url = server.url("/nap");
    let naps: Vec<_> = (0..300)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http("POST", &url, r#"{"seconds": 6}"#, None))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while interval(&server) != 0.05 {
        assert!(Instant::now() < deadline, "300 sync calls in flight did not raise the switch interval");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A short method goes to the pool while others are in flight: were it slow this once, on
    // the loop's thread it would hold up every other call's messages.
    assert_eq!(threads_of(&server, "where", "{}", 3), ["rayfine-sync"; 3]);
    for nap in naps {
        let (status, body) = nap.join().unwrap();
        assert_eq!((status, body["result"].as_str()), (200, Some("rayfine-sync")), "{body}");
    }
    assert_eq!(interval(&server), 0.005, "back to the default once the pool is quiet");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn inline_sync_calls_and_polling_can_be_turned_off() {
    let env = EnvCopy::of("threads");
    let (server, ready) = RunningServer::start(&env, &[("RAYFINE_INLINE_SYNC", "0"), ("RAYFINE_SPIN_US", "0")]);
    assert_eq!(ready["event"], "ready");
    let seen = threads_of(&server, "where", "{}", 20);
    assert!(seen.iter().all(|t| t == "rayfine-sync"), "{seen:?}");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn polling_is_on_with_two_cores_and_off_on_one() {
    let env = EnvCopy::of("threads");
    let budget = |server: &RunningServer| http("POST", &server.url("/spin_budget"), "{}", None).1["result"].clone();
    let (server, _) = RunningServer::start(&env, &[("RAYFINE_SPIN_US", "150")]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(budget(&server), if cores >= 2 { "150" } else { "0" });
    drop(server);
    // On one core the poller would keep the thread it waits for from running.
    let (server, _) = RunningServer::start_on_one_core(&env, &[("RAYFINE_SPIN_US", "150")]);
    assert_eq!(budget(&server), "0");
    assert_eq!(threads_of(&server, "where", "{}", 3).len(), 3);
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn a_timed_out_call_takes_the_processes_it_started_along() {
    let env = EnvCopy::of("spawner");
    let (server, _) = RunningServer::start(&env, &[]);
    let marker = format!("{}/sleeper", env.path_str());
    let call = json!({"method": "hang_with_child", "kwargs": {"marker": marker}, "timeout": 1.0}).to_string();
    let (status, body) = http("POST", &server.url("/call"), &call, None);
    assert_eq!(status, 504, "{body}");
    // The 504 goes out before the worker's group is killed; what was SIGKILLed gets the kernel's time.
    let left = crate::util::wait_until_gone(std::time::Duration::from_secs(10), || crate::util::processes_mentioning(&marker));
    assert!(left.is_empty(), "the subprocess outlived its worker: {left:?}");
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn a_worker_whose_event_loop_stops_answering_after_a_timeout_is_restarted_and_a_healthy_one_is_not() {
    let env = EnvCopy::of("loop_blocker");
    let (server, _) = RunningServer::start(&env, &[("RUST_LOG", "rayfine=debug")]);
    // The calls meant to overrun get 1 s; the others time enough for a starved machine.
    let call_within = |method: &str, timeout: f64| http("POST", &server.url("/call"), &json!({"method": method, "timeout": timeout}).to_string(), None);
    let call = |method: &str| call_within(method, 1.0);
    let pid = || call_within("pid", 30.0);
    let (_, first) = pid();
    let first = first["result"].as_u64().expect("a pid");

    // Overran, but the loop is free: the call is cancelled, the loop answers the probe, and the
    // worker stays.
    let (status, body) = call("wait");
    assert_eq!(status, 504, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("event loop answered a probe") {
        assert!(Instant::now() < deadline, "no probe was answered: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pid().1["result"], first, "a worker whose loop answers is kept");

    // Overran by blocking the loop for 60 s: cancels cannot be read, so without the probe every
    // call would time out until the sleep ends.
    let (status, body) = call("block_loop");
    assert_eq!(status, 504, "{body}");
    // The probe waits 10 s (its least) for the loop, then the worker is killed and started again
    // (given a minute for that on a starved machine).
    let deadline = Instant::now() + Duration::from_secs(70);
    let restarted = loop {
        let (status, body) = pid();
        if status == 200 {
            break body["result"].as_u64().expect("a pid");
        }
        assert!(Instant::now() < deadline, "the worker still does not answer: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(restarted, first, "a new worker answers");
    assert!(server.stderr().contains("event loop did not answer"), "{}", server.stderr());
    drop(server);
    env.assert_no_process_left();
}

#[test]
fn the_supervisor_passes_signals_on_and_stops_its_command_when_stdin_closes() {
    use std::io::BufRead;
    // Bounded, so that a failing test leaves nothing running for long.
    let script = r#"trap 'echo hup' HUP; trap 'echo term; exit 7' TERM; echo ready; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"#;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rayfine-server"))
        .args(["--supervise", "--exit-on-stdin-eof", "--", "sh", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || std::io::BufReader::new(stdout).lines().map_while(Result::ok).for_each(|line| drop(tx.send(line))));
    let next = || lines.recv_timeout(std::time::Duration::from_secs(10)).expect("a line within 10 s");
    assert_eq!(next(), "ready");
    // SAFETY: signals the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(next(), "hup", "SIGHUP is passed on, and does not stop the command");
    drop(child.stdin.take());
    assert_eq!(next(), "term", "stdin's end stops the command with SIGTERM");
    assert_eq!(child.wait().unwrap().code(), Some(7), "the command's exit code is the supervisor's");
}

/// Starts the server with `--secrets-stdin`, writes `line` (if any) on its stdin and closes
/// stdin if `close`. Returns the child and its stdout's lines.
fn start_with_secrets_line(env: &EnvCopy, line: Option<&str>, close: bool) -> (std::process::Child, impl Iterator<Item = String>) {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rayfine-server"))
        .args(["--host", "127.0.0.1", "--port", "0", "--env-path", env.path_str(), "--exit-on-stdin-eof", "--secrets-stdin"])
        .env_remove("RAYFINE_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(line) = line {
        child.stdin.as_mut().unwrap().write_all(line.as_bytes()).unwrap();
    }
    if close {
        drop(child.stdin.take());
    }
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    (child, lines)
}

/// The token and the variables on stdin's first line: the token is required, the variables
/// reach the environment, and the rest of stdin still tells when the owner is gone.
#[test]
fn secrets_on_stdin_give_the_token_and_the_variables() {
    let env = EnvCopy::of("counter");
    let line = "{\"token\":\"t0k-stdin\",\"env\":{\"COUNTER_NAME\":\"piped\",\"COUNTER_STEP\":\"3\"}}\n";
    let (mut child, mut events) = start_with_secrets_line(&env, Some(line), false);
    let listening: serde_json::Value = serde_json::from_str(&events.next().unwrap()).unwrap();
    let port = listening["port"].as_u64().unwrap();
    let ready: serde_json::Value = serde_json::from_str(&events.next().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready", "{ready}");
    let url = format!("http://127.0.0.1:{port}/call");
    let (status, _) = http("POST", &url, r#"{"method":"increment"}"#, None);
    assert_eq!(status, 401, "a call without the token from stdin is refused");
    let (status, body) = http("POST", &url, r#"{"method":"increment"}"#, Some("t0k-stdin"));
    assert_eq!((status, &body["result"]), (200, &json!(3)), "{body}");
    let (_, body) = http("POST", &url, r#"{"method":"get"}"#, Some("t0k-stdin"));
    assert_eq!(body["result"], json!({"name": "piped", "value": 3}));
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    env.assert_no_process_left();
}

/// A bad secrets line, or stdin's end before one, stops the server with an error that names
/// the flag, before it listens: never a server without its token.
#[test]
fn a_bad_or_missing_secrets_line_stops_the_server_naming_it() {
    use std::io::Read;
    let env = EnvCopy::of("echo");
    for (line, expected) in [(Some("token=t0k\n"), "secrets line is not valid"), (Some("{\"token\":\"t0k\"}"), "ended before a whole secrets line"), (None, "ended before a whole secrets line")] {
        let (mut child, mut events) = start_with_secrets_line(&env, line, true);
        assert!(events.next().is_none(), "no event, the server must not listen: {line:?}");
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(!status.success(), "{line:?}: {status:?}");
        assert!(stderr.contains("--secrets-stdin") && stderr.contains(expected), "{line:?}: {stderr}");
    }
    env.assert_no_process_left();
}

/// The CPUs a process (or one of its threads) may run on, from `/proc`'s list ("0-2,5").
fn cpus_allowed(status_path: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(status_path).unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim();
    list.split(',')
        .flat_map(|part| {
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            low.parse::<usize>().unwrap()..=high.parse::<usize>().unwrap()
        })
        .collect()
}

/// `--cpu-placement split` gives the worker one CPU of its own and every server thread the
/// others; by default both may run anywhere.
#[test]
fn split_cpu_placement_gives_the_worker_a_core_of_its_own() {
    let env = EnvCopy::of("hostile");
    let (shared, _) = RunningServer::start(&env, &[]);
    let (split, ready) = RunningServer::start(&env, &[("RAYFINE_CPU_PLACEMENT", "split")]);
    assert_eq!(ready["event"], "ready", "{ready}");
    let all = cpus_allowed("/proc/self/status");
    let worker_of = |server: &RunningServer| http("POST", &server.url("/worker_pid"), "{}", None).1["result"].as_u64().unwrap();
    assert_eq!(cpus_allowed(&format!("/proc/{}/status", worker_of(&shared))), all, "shared: the worker may run anywhere");
    let worker_cpus = cpus_allowed(&format!("/proc/{}/status", worker_of(&split)));
    let server_threads: Vec<Vec<usize>> = std::fs::read_dir(format!("/proc/{}/task", split.child.id()))
        .unwrap()
        .flatten()
        .map(|task| cpus_allowed(task.path().join("status").to_str().unwrap()))
        .collect();
    if all.len() >= 2 {
        assert_eq!(worker_cpus.len(), 1, "one CPU for the worker: {worker_cpus:?}");
        assert!(all.contains(&worker_cpus[0]), "the worker's CPU {worker_cpus:?} is one of {all:?}");
        let others: Vec<usize> = all.iter().copied().filter(|cpu| *cpu != worker_cpus[0]).collect();
        for threads in &server_threads {
            assert_eq!(threads, &others, "every server thread on every CPU but the worker's {worker_cpus:?}: {server_threads:?}");
        }
    } else {
        assert_eq!(worker_cpus, all, "one CPU: nothing to split");
    }
    drop((shared, split));
    env.assert_no_process_left();
}
