//! OpenEnv compatibility, checked with OpenEnv's own Python client (the `openenv` package from
//! PyPI, in target/openenv-venv, which `.ci/setup` makes) against the real server: the cases are in
//! tests/openenv/check_clients.py; each runs against a server started for it with the settings it
//! needs (a session limit, an idle timeout).

use std::path::PathBuf;
use std::process::Command;

use crate::util::{repo, EnvCopy, RunningServer};

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
