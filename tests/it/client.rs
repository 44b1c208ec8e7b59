//! The library end to end in process mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayfine::{load_env, Error, LoadOptions, Mode};
use serde_json::{json, Value};

use crate::util::{in_child, run_child, EnvCopy};

fn process(env: &EnvCopy) -> LoadOptions {
    LoadOptions::folder(env.path()).mode(Mode::Process)
}

#[tokio::test]
async fn load_call_and_cleanup_leave_nothing_behind() {
    let dir = EnvCopy::of("counter");
    let env = load_env(process(&dir).env_var("COUNTER_NAME", "lib").name("lib-counter")).await.unwrap();
    assert!(env.is_ready().await);
    assert_eq!(env.call("increment", json!({"times": 2})).await.unwrap(), 2);
    assert_eq!(env.call_with("increment", &[json!(3)], json!({}), None).await.unwrap(), 5);
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Counter {
        name: String,
        value: i64,
    }
    let typed: Counter = env.call_as("get", json!({})).await.unwrap();
    assert_eq!(typed, Counter { name: "lib".into(), value: 5 });
    let names: Vec<String> = env.list_methods().await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["increment", "get", "reset", "evaluate"]);
    assert!(rayfine::get_environment("lib-counter").is_some());
    assert!(rayfine::get_environment(env.id()).is_some());
    env.cleanup().await.unwrap();
    assert!(rayfine::get_environment(env.id()).is_none());
    assert!(matches!(env.call("get", json!({})).await, Err(Error::Closed(_))));
    dir.assert_no_process_left();
}

#[tokio::test]
async fn remote_python_exception_arrives_typed_with_its_traceback() {
    let dir = EnvCopy::of("gridgame");
    let env = load_env(process(&dir)).await.unwrap();
    let err = env.call("reset", json!({"size": 1})).await.unwrap_err();
    match &err {
        Error::Raised { method, kind, message, traceback } => {
            assert_eq!((method.as_str(), kind.as_str()), ("reset", "ValueError"));
            assert!(message.contains("size must be between 2 and 100"), "{message}");
            assert!(traceback.contains("raise ValueError"), "{traceback}");
        }
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(err.is_raised());
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_naming_the_problem() {
    let missing = load_env(LoadOptions::folder("/nonexistent/env")).await.unwrap_err();
    assert_eq!(missing.to_string(), "environment folder `/nonexistent/env` does not exist");

    let broken = EnvCopy::of("broken_syntax");
    let err = load_env(process(&broken)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::StartFailed { .. }), "{err:?}");
    assert!(text.contains("SyntaxError"), "{text}");
    broken.assert_no_process_left();

    let dir = EnvCopy::of("echo");
    let env = load_env(process(&dir)).await.unwrap();
    let unknown = env.call("nope", json!({})).await.unwrap_err();
    assert!(matches!(unknown, Error::MethodNotFound { .. }), "{unknown:?}");
    assert!(unknown.to_string().contains("available: add, aping, echo, ping, slow_echo"), "{unknown}");
    let bad_args = env.call("add", json!({"a": 1})).await.unwrap_err();
    assert!(matches!(bad_args, Error::InvalidArguments { .. }), "{bad_args:?}");
    let not_object = env.call("add", json!([1, 2])).await.unwrap_err();
    assert!(matches!(not_object, Error::InvalidArguments { .. }), "{not_object:?}");
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

/// Calls `alive` until the restarted worker answers (bounded: 60 s, for the killed worker to go
/// and a new Python to start and import the environment on a starved machine); only "not ready"
/// is retried.
async fn answer_after_restart(env: &rayfine::EnvironmentWrapper) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match env.call("alive", json!({})).await {
            Ok(value) => return value,
            Err(Error::NotReady { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("unexpected error after the restart: {other:?}"),
        }
    }
    panic!("the worker was not restarted within 60 s");
}

#[tokio::test]
async fn a_hung_sync_call_times_out_and_the_environment_serves_again() {
    let dir = EnvCopy::of("unserializable");
    let env = load_env(process(&dir)).await.unwrap();
    let err = env.call_with("spin", &[], json!({"seconds": 60}), Some(Duration::from_millis(500))).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("worker was restarted"), "{err}");
    assert_eq!(answer_after_restart(&env).await, json!("yes"));
    let err = env.call_with("sleepy", &[], json!({}), Some(Duration::from_millis(200))).await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert_eq!(env.call("alive", json!({})).await.unwrap(), "yes", "cancelling an async call needs no restart");
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

#[tokio::test]
async fn a_dead_worker_fails_calls_in_flight_and_is_restarted() {
    let dir = EnvCopy::of("unserializable");
    let env = load_env(process(&dir)).await.unwrap();
    let err = env.call("crash", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err:?}");
    assert!(err.to_string().contains("exit code 9"), "{err}");
    assert_eq!(answer_after_restart(&env).await, json!("yes"));
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

/// Runs one `#[ignore]`d test of this binary in a child process, for tests that touch the
/// whole registry or end their process, which must not disturb tests running beside them.
#[test]
fn cleanup_all_removes_every_registered_environment() {
    let dirs: Vec<EnvCopy> = (0..3).map(|_| EnvCopy::of("echo")).collect();
    let paths: Vec<&str> = dirs.iter().map(|d| d.path_str()).collect();
    let output = run_child("client::child_loads_three_and_cleans_up_all", &[("RAYFINE_TEST_DIRS", &paths.join(":"))]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    for dir in &dirs {
        dir.assert_no_process_left();
    }
}

#[tokio::test]
#[ignore = "run by cleanup_all_removes_every_registered_environment in a child process"]
async fn child_loads_three_and_cleans_up_all() {
    if !in_child() {
        return;
    }
    let dirs = std::env::var("RAYFINE_TEST_DIRS").unwrap();
    let mut ids = Vec::new();
    for dir in dirs.split(':') {
        ids.push(load_env(LoadOptions::folder(dir).mode(Mode::Process)).await.unwrap().id().to_string());
    }
    let mut active: Vec<String> = rayfine::list_active_environments().into_iter().map(|e| e.id().to_string()).collect();
    active.sort();
    ids.sort();
    assert_eq!(active, ids);
    assert_eq!(rayfine::cleanup_all_environments().await, 3);
    assert!(rayfine::list_active_environments().is_empty());
}

#[test]
fn a_panicking_owner_leaves_no_process_behind() {
    let dir = EnvCopy::of("echo");
    let output = run_child("client::child_panics_while_holding_an_environment", &[("RAYFINE_TEST_DIRS", dir.path_str())]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("deliberate panic"), "{}", String::from_utf8_lossy(&output.stderr));
    dir.assert_no_process_left();
}

#[tokio::test]
#[ignore = "run by a_panicking_owner_leaves_no_process_behind in a child process"]
async fn child_panics_while_holding_an_environment() {
    if !in_child() {
        return;
    }
    let _guard = rayfine::CleanupGuard::new();
    let env = load_env(LoadOptions::folder(std::env::var("RAYFINE_TEST_DIRS").unwrap()).mode(Mode::Process)).await.unwrap();
    assert_eq!(env.call("ping", json!({})).await.unwrap(), "pong");
    panic!("deliberate panic while an environment is loaded");
}

#[test]
fn blocking_facade_loads_calls_and_cleans_up() {
    let dir = EnvCopy::of("gridgame");
    let env = rayfine::blocking::load_env(process(&dir)).unwrap();
    let first = env.call("reset", json!({"size": 3, "seed": 7})).unwrap();
    let id = first["episode_id"].as_str().unwrap().to_string();
    let step = env.call("step", json!({"episode_id": id, "action": "right"})).unwrap();
    assert_eq!(step["observation"]["position"], json!([1, 0]));
    // From a runtime's spawn_blocking thread, as from any other.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let inner = env.clone();
    let step = runtime.spawn_blocking(move || inner.call("step", json!({"episode_id": id, "action": "down"})));
    let state = runtime.block_on(step).unwrap();
    assert_eq!(state.unwrap()["observation"]["position"], json!([1, 1]));
    env.cleanup().unwrap();
    dir.assert_no_process_left();
}

/// A `python3` that is a wrapper (as a pyenv shim is: a script that sets variables, then runs
/// the real interpreter) runs once per environment: restarts of its worker and later starts of
/// the same environment run the interpreter it reached directly, with the variables it set.
#[tokio::test]
async fn a_wrapped_interpreter_is_run_directly_after_the_first_start() {
    let dir = EnvCopy::of("wrapped");
    let bin = tempfile::tempdir().unwrap();
    let real = real_python();
    let (wrapper, wrapper_runs) = interpreter_wrapper(bin.path(), &real, "");
    let options = || process(&dir).env_var("RAYFINE_PYTHON", wrapper.to_str().unwrap());

    let env = load_env(options()).await.unwrap();
    let first = env.call("seen", json!({})).await.unwrap();
    assert_eq!((first["wrapped_by"].as_str(), first["executable"].as_str()), (Some("shim"), Some(real.as_str())), "{first}");
    assert_eq!(wrapper_runs(), 1);
    let restarted = crash_and_see(&env).await;
    assert_ne!(restarted["pid"], first["pid"], "a new worker");
    assert_eq!(restarted["wrapped_by"], "shim", "the restart has the wrapper's variables: {restarted}");
    assert_eq!(wrapper_runs(), 1, "the restart ran the interpreter directly");
    env.cleanup().await.unwrap();

    let again = load_env(options()).await.unwrap();
    let seen = again.call("seen", json!({})).await.unwrap();
    assert_eq!((seen["wrapped_by"].as_str(), seen["executable"].as_str()), (Some("shim"), Some(real.as_str())), "{seen}");
    assert_eq!(wrapper_runs(), 1, "the second start ran the interpreter directly");
    again.cleanup().await.unwrap();

    // Other variables are another start: it goes through the wrapper again.
    let other = load_env(options().env_var("SEED", "2")).await.unwrap();
    assert_eq!(other.call("seen", json!({})).await.unwrap()["wrapped_by"], "shim");
    assert_eq!(wrapper_runs(), 2);
    other.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

/// A wrapper script around `python3` in `bin`, which counts its runs in `bin/runs` and then runs
/// `target` with `flags` before the worker's arguments; `runs()` reads the count.
fn interpreter_wrapper(bin: &Path, target: &str, flags: &str) -> (PathBuf, impl Fn() -> usize) {
    interpreter_wrapper_with(bin, "", target, flags)
}

/// [`interpreter_wrapper`], running the shell line `prelude` before the interpreter.
fn interpreter_wrapper_with(bin: &Path, prelude: &str, target: &str, flags: &str) -> (PathBuf, impl Fn() -> usize) {
    let runs = bin.join("runs");
    let wrapper = bin.join("python3");
    std::fs::write(&wrapper, format!("#!/bin/sh\necho run >> '{}'\n{prelude}\nWRAPPED_BY=shim exec '{target}' {flags} \"$@\"\n", runs.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (wrapper, move || std::fs::read_to_string(&runs).unwrap_or_default().lines().count())
}

/// The interpreter `python3` really is.
fn real_python() -> String {
    let real = std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    String::from_utf8(real.stdout).unwrap().trim().to_string()
}

/// Crashes `env`'s worker and returns what `seen` says once the restarted one answers.
async fn crash_and_see(env: &rayfine::EnvironmentWrapper) -> Value {
    assert!(matches!(env.call("crash", json!({})).await.unwrap_err(), Error::NotReady { .. }));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match env.call("seen", json!({})).await {
            Ok(value) => return value,
            Err(Error::NotReady { .. }) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("no worker after the restart: {other:?}"),
        }
    }
}

/// A wrapper that starts the interpreter with options of its own (`-X utf8` here; `-I` in some
/// installs) is not replayed without them: every start goes through the wrapper.
#[tokio::test]
async fn a_wrapper_that_adds_interpreter_options_is_never_skipped() {
    let dir = EnvCopy::of("wrapped");
    let bin = tempfile::tempdir().unwrap();
    let (wrapper, wrapper_runs) = interpreter_wrapper(bin.path(), &real_python(), "-X utf8");
    let env = load_env(process(&dir).env_var("RAYFINE_PYTHON", wrapper.to_str().unwrap())).await.unwrap();
    assert_eq!(env.call("seen", json!({})).await.unwrap()["utf8_mode"], 1);
    let restarted = crash_and_see(&env).await;
    assert_eq!(restarted["utf8_mode"], 1, "the restart kept the wrapper's option: {restarted}");
    assert_eq!(wrapper_runs(), 2, "the restart went through the wrapper");
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

/// A wrapper that sets a resource limit (`ulimit` before `exec`) is not skipped either: the
/// restarted worker would run without the limit.
#[tokio::test]
async fn a_wrapper_that_sets_a_resource_limit_is_never_skipped() {
    let dir = EnvCopy::of("wrapped");
    let bin = tempfile::tempdir().unwrap();
    let (wrapper, wrapper_runs) = interpreter_wrapper_with(bin.path(), "ulimit -S -n 300", &real_python(), "");
    let env = load_env(process(&dir).env_var("RAYFINE_PYTHON", wrapper.to_str().unwrap())).await.unwrap();
    assert_eq!(env.call("seen", json!({})).await.unwrap()["open_files_limit"], 300);
    let restarted = crash_and_see(&env).await;
    assert_eq!(restarted["open_files_limit"], 300, "the restart kept the wrapper's limit: {restarted}");
    assert_eq!(wrapper_runs(), 2, "the restart went through the wrapper");
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}

/// When the interpreter a wrapper reached is gone by the time the worker restarts (a virtual
/// environment removed, a version uninstalled), the restart goes through the configured name.
#[tokio::test]
async fn a_restart_falls_back_to_the_configured_interpreter_when_the_found_one_is_gone() {
    let dir = EnvCopy::of("wrapped");
    let bin = tempfile::tempdir().unwrap();
    let real = real_python();
    let versions = bin.path().join("versions");
    std::fs::create_dir(&versions).unwrap();
    let linked = versions.join("python3");
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    let (wrapper, wrapper_runs) = interpreter_wrapper(bin.path(), linked.to_str().unwrap(), "");
    let env = load_env(process(&dir).env_var("RAYFINE_PYTHON", wrapper.to_str().unwrap())).await.unwrap();
    assert_eq!(env.call("seen", json!({})).await.unwrap()["executable"], linked.to_str().unwrap());
    // The version the wrapper picked is uninstalled; the wrapper now picks another.
    std::fs::remove_file(&linked).unwrap();
    let _ = interpreter_wrapper(bin.path(), &real, "");
    let restarted = crash_and_see(&env).await;
    assert_eq!((restarted["wrapped_by"].as_str(), restarted["executable"].as_str()), (Some("shim"), Some(real.as_str())), "{restarted}");
    assert_eq!(wrapper_runs(), 2);
    env.cleanup().await.unwrap();
    dir.assert_no_process_left();
}
