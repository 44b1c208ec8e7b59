//! The `rayfine` CLI end to end, and what happens to environments when their owner is signalled.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{cli, processes_mentioning, EnvCopy};

#[test]
fn run_calls_a_method_and_prints_the_result() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = cli(&["run", env.path_str(), "--call", "add", "--kwargs", r#"{"a": 2, "b": 40}"#], state.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("add(a, b)"), "methods are listed: {stdout}");
    assert_eq!(stdout.lines().last(), Some("42"));
    env.assert_no_process_left();
}

#[test]
fn json_output_carries_methods_and_result() {
    let env = EnvCopy::of("counter");
    let state = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        cli(&["--json", "run", env.path_str(), "-e", "COUNTER_NAME=cli", "--call", "increment", "--arg", "times=4"], state.path());
    assert_eq!(code, 0, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["result"], 4);
    assert_eq!(value["methods"][0]["name"], "increment");
    env.assert_no_process_left();
}

#[test]
fn bad_input_is_one_clear_line_and_exit_code_two() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["run", "/nonexistent/folder"], "`/nonexistent/folder` is neither an environment folder (no such directory)"),
        (&["run", env.path_str(), "--call", "add", "--kwargs", "{oops"], "invalid --kwargs: not JSON"),
        (&["run", env.path_str(), "--call", "add", "--kwargs", "[1, 2]"], "invalid --kwargs: expected a JSON object, got an array"),
        (&["run", env.path_str(), "--call", "nope"], "no method named `nope`; available: add, aping, echo, ping, slow_echo"),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = cli(args, state.path());
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let line = stderr.lines().find(|l| l.starts_with("rayfine: error:")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains(expected), "{args:?}: expected {expected:?} in {line:?}");
    }
    let broken = EnvCopy::of("broken_syntax");
    let (code, _, stderr) = cli(&["run", broken.path_str()], state.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    env.assert_no_process_left();
    broken.assert_no_process_left();
}

/// Hostile or mistaken targets and flags are refused at once, each saying what is wrong, and no
/// message repeats itself.
#[test]
fn bad_targets_and_flags_are_refused_at_once_naming_the_problem() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str, Duration); 7] = [
        (&["call", "http://[::1", "ping"], "is not a valid URL", Duration::from_secs(10)),
        (&["call", "http://127.0.0.1:1", "ping"], "cannot reach the environment at http://127.0.0.1:1: ", Duration::from_secs(20)),
        (&["run", env.path_str(), "--call", "ping", "--timeout", "1e300"], "--timeout 1e300: at most", Duration::from_secs(10)),
        (&["run", env.path_str(), "--call", "ping", "--timeout", "0"], "--timeout must be a positive number of seconds, not `0`", Duration::from_secs(10)),
        (&["run", "some/image:tag", "--pids-limit", "1"], "a pids limit of 1 is too low", Duration::from_secs(10)),
        (&["run", env.path_str(), "-e", "RAYFINE_LEASE=5"], "--lease SECONDS", Duration::from_secs(10)),
        (&["run", env.path_str(), "--lease", "soon"], "--lease must be a positive number of seconds, not `soon`", Duration::from_secs(10)),
    ];
    for (args, expected, within) in cases {
        let started = Instant::now();
        let (code, _, stderr) = cli(args, state.path());
        let took = started.elapsed();
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let line = stderr.lines().find(|l| l.starts_with("rayfine: error:")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains(expected), "{args:?}: expected {expected:?} in {line:?}");
        assert!(took < within, "{args:?} took {took:?}");
        assert!(line.len() < 300, "{args:?}: {line}");
        let parts: Vec<&str> = line.split(": ").collect();
        let unique: std::collections::BTreeSet<&str> = parts.iter().copied().collect();
        assert_eq!(parts.len(), unique.len(), "a part of the message repeats: {line}");
    }
    env.assert_no_process_left();
}

/// `run --call` says the environment is ready, and lists its methods, before the call returns:
/// here the call fails, and the ready line is there all the same.
#[test]
fn run_prints_the_ready_line_before_the_call() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = cli(&["run", env.path_str(), "--call", "add", "--kwargs", r#"{"a": 1}"#], state.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("process mode") && stderr.contains("ready in"), "{stderr}");
    assert!(stdout.contains("add(a, b)"), "the methods are listed: {stdout}");
    env.assert_no_process_left();
}

/// A kept environment that died is said to have stopped, at once, by a later `call`.
#[test]
fn a_call_to_a_kept_environment_that_died_says_it_stopped() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let (code, _, stderr) = cli(&["run", env.path_str(), "--mode", "process", "--keep", "--name", "doomed"], state.path());
    assert_eq!(code, 0, "{stderr}");
    let (code, out, _) = cli(&["--json", "ps"], state.path());
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let pid = rows.iter().find(|r| r["name"] == "doomed").and_then(|r| r["pid"].as_i64()).unwrap_or_else(|| panic!("{out}"));
    // SAFETY: kills the kept server this test started (its group: the server and its worker).
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    // Dead, not just signalled: a killed process that has not run yet still counts as running.
    let killed = Instant::now();
    while rayfine::labels::is_running(pid as u32) {
        assert!(killed.elapsed() < Duration::from_secs(60), "the SIGKILLed server {pid} did not die within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let (code, _, stderr) = cli(&["call", "doomed", "ping"], state.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("environment `doomed` has stopped: its server process") && stderr.contains("is gone"), "{stderr}");
    // Under the 3 s a connection to a server that never answers would wait for: told from the
    // record, not found out by trying.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let _ = cli(&["cleanup", "doomed"], state.path());
    env.assert_no_process_left();
}

#[test]
fn an_exception_in_the_environment_exits_with_code_one() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let (code, _, stderr) = cli(&["run", env.path_str(), "--call", "add", "--kwargs", r#"{"a": 1, "b": "x"}"#], state.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`add` raised TypeError"), "{stderr}");
    env.assert_no_process_left();
}

#[test]
fn kept_environment_is_called_listed_and_cleaned_up_by_name() {
    let env = EnvCopy::of("counter");
    let state = tempfile::tempdir().unwrap();
    let (code, _, stderr) = cli(&["run", env.path_str(), "-e", "COUNTER_NAME=kept", "--name", "kept-counter", "--keep"], state.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(!env.processes().is_empty(), "the kept environment runs after `run` returned");
    let (_, stdout, _) = cli(&["call", "kept-counter", "increment", "-a", "times=3"], state.path());
    assert_eq!(stdout.trim(), "3");
    let (_, stdout, _) = cli(&["call", "kept-counter", "increment"], state.path());
    assert_eq!(stdout.trim(), "4", "state persists between CLI invocations");
    let (_, stdout, _) = cli(&["--json", "ps"], state.path());
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["name"], "kept-counter");
    assert!(!stdout.contains("token"), "ps never shows tokens: {stdout}");
    let (code, _, stderr) = cli(&["cleanup", "kept-counter"], state.path());
    assert_eq!(code, 0, "{stderr}");
    env.assert_no_process_left();
    let (_, stdout, _) = cli(&["--json", "ps"], state.path());
    assert_eq!(stdout.trim(), "[]");
}

/// Starts `rayfine run` holding an environment in a long call, waits until its worker is up.
fn owner_in_a_long_call(env: &EnvCopy, state: &std::path::Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_rayfine"))
        .args(["run", env.path_str(), "--call", "slow_echo", "--kwargs", r#"{"text": "x", "delay": 120}"#])
        .env("RAYFINE_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_mentioning(env.path_str()).len() < 2 {
        assert!(Instant::now() < deadline, "the environment did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child
}

fn signal_owner_and_check(signal: i32) {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let mut owner = owner_in_a_long_call(&env, state.path());
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(owner.id() as i32, signal);
    }
    let status = owner.wait().unwrap();
    assert!(!status.success(), "signal {signal}: {status:?}");
    env.assert_no_process_left();
}

#[test]
fn sigint_to_the_owner_leaves_no_process_behind() {
    signal_owner_and_check(libc::SIGINT);
}

#[test]
fn sigterm_to_the_owner_leaves_no_process_behind() {
    signal_owner_and_check(libc::SIGTERM);
}

#[test]
fn sigkill_to_the_owner_leaves_no_process_behind() {
    signal_owner_and_check(libc::SIGKILL);
}

/// The bench's plumbing (not its figures): a quick run of the sections that need neither wrk
/// nor Docker writes a report whose rows each carry a floor.
#[test]
fn bench_writes_rows_with_their_floors_as_json() {
    let env = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let output = state.path().join("bench.json");
    let (code, stdout, stderr) = cli(
        &["bench", "--quick", "--no-docker", "--only", "memory,cold-start", "--env", env.path_str(), "--output", output.to_str().unwrap()],
        state.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("## Memory") && stdout.contains("## Cold start"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // Memory: the static server, server + worker; cold start: beside `python3 -c pass` and
    // beside env.py's import by the interpreter it resolves to.
    assert_eq!(rows.len(), 4, "{report:#}");
    for row in rows {
        assert!(row["median"]["value"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["floor"]["value"].as_f64().unwrap() > 0.0, "{row}");
    }
    env.assert_no_process_left();

    let (code, _, stderr) = cli(&["bench", "--env", "/no/such/folder"], state.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("/no/such/folder` is not an environment folder"), "{stderr}");
}
