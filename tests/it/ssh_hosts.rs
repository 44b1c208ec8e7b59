//! A Docker engine reached over SSH (`ssh://root@ADDRESS`): the second engine of
//! `second_engine`, with an sshd in its namespace and a key made by the test, named to Rayfine
//! through `RAYFINE_SSH_COMMAND`. The CLI runs, lists, calls and cleans up a kept environment
//! there; an owner killed by SIGKILL with a pool over this engine and the SSH one leaves both empty
//! and no ssh behind; the owner watchdog reaches the engine through its own tunnel; a refused login
//! is an error naming the host and what ssh said.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rayfine::labels;

use super::docker_util::{DockerScope, BASE_IMAGE, SCOPE_LABEL};
use super::second_engine::SecondEngine;
use super::util::{cli_with_env, processes_mentioning, spawn_child, wait_for_line, wait_until_no_process_mentions, EnvCopy};

/// This machine's tunnel folders whose name starts with `prefix`.
fn tunnel_folders(prefix: &str) -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|name| name.starts_with(prefix)).collect()
}

#[test]
fn an_engine_over_ssh_runs_pools_and_kept_environments_and_its_owner_leaves_nothing() {
    let scope = DockerScope::new("ssh");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(BASE_IMAGE).build(env_dir.path(), &tag)).unwrap();
    let mut engine = SecondEngine::start();
    let login = engine.start_sshd();
    let ssh = ("RAYFINE_SSH_COMMAND", login.ssh_command.as_str());

    // The CLI, with the host named on the command line: the image goes over the tunnel, and a
    // kept environment there is in `ps` with a URL at the engine's address, called, cleaned up.
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = cli_with_env(&["run", &tag, "--keep", "-e", "COUNTER_NAME=kept", "--host", &login.url, "--json"], state.path(), &[ssh]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(engine.docker_lines(&["images", "-q", &tag]).len(), 1, "the image was copied over ssh");
    let kept: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = kept["id"].as_str().unwrap().to_string();
    let (code, out, err) = cli_with_env(&["ps", "--json", "--host", &login.url], state.path(), &[ssh]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not in {out}"));
    assert_eq!(row["host"], login.url.as_str(), "{out}");
    assert!(row["url"].as_str().unwrap().starts_with(&format!("http://{}:", engine.address)), "{out}");
    let (code, out, err) = cli_with_env(&["call", &id, "increment", "--json"], state.path(), &[ssh]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["result"], 1);
    // No --host: the kept record names it.
    let (code, _, err) = cli_with_env(&["cleanup", &id], state.path(), &[ssh]);
    assert_eq!(code, 0, "{err}");
    let left = engine.docker_lines(&["ps", "-aq", "--filter", "label=rayfine.managed=true"]);
    assert!(left.is_empty(), "the CLI's cleanup left {left:?} on the SSH engine");

    // A pool of three over this engine and the SSH one, its owner then killed by SIGKILL: no
    // handler runs. The tunnel dies with its owner (parent-death signal), which closes the remote
    // servers' attach connections, and they exit.
    let hosts = format!("local,{}", login.url);
    let mut owner = spawn_child("hosts::child_holds_a_pool", &[("RAYFINE_TEST_IMAGE", &tag), ("RAYFINE_TEST_SCOPE", &scope.id), ("RAYFINE_HOSTS", &hosts), ssh]);
    let owner_tunnel = format!("rayfine-ssh-{}-", owner.id());
    wait_for_line(&mut owner, "LOADED", Duration::from_secs(180));
    let remote = engine.containers(&scope.id).len();
    assert!(remote >= 1 && remote + scope.containers().len() == 3, "remote {remote}, local {:?}", scope.containers());
    assert!(!processes_mentioning(&owner_tunnel).is_empty(), "the owner reaches the engine through its own ssh");
    owner.kill().unwrap();
    owner.wait().unwrap();
    scope.assert_no_container_left(Duration::from_secs(20));
    engine.assert_no_container_left(&scope.id, Duration::from_secs(30));
    wait_until_no_process_mentions(&owner_tunnel, Duration::from_secs(10), "the owner's ssh outlived it");

    // The owner watchdog over SSH, alone: a container created there for an owner (a `sleep`),
    // never started, is removed by the watchdog through its own tunnel once the owner is gone.
    let mut fake_owner = Command::new("sleep").arg("600").spawn().unwrap();
    let owner_id = format!("{}:{}", fake_owner.id(), labels::process_start_time(fake_owner.id()).unwrap());
    let (pid, start) = owner_id.split_once(':').unwrap();
    let created = engine.docker(&[
        "create",
        "--label", &format!("{}=true", labels::MANAGED),
        "--label", &format!("{}={pid}", labels::OWNER_PID),
        "--label", &format!("{}={start}", labels::OWNER_START),
        "--label", &format!("{}=false", labels::KEEP),
        "--label", &format!("{SCOPE_LABEL}={}", scope.id),
        &tag,
    ]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let mut watchdog = Command::new(env!("CARGO_BIN_EXE_rayfine-server"))
        .args(["--watch-owner", &owner_id, "--watch-engine", &login.url])
        .env("RAYFINE_SSH_COMMAND", &login.ssh_command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = watchdog.stdin.take().unwrap();
    let watchdog_tunnel = format!("rayfine-ssh-{}-", watchdog.id());
    assert_eq!(engine.containers(&scope.id).len(), 1);
    fake_owner.kill().unwrap();
    fake_owner.wait().unwrap();
    drop(stdin);
    // Nothing else could remove it: it never started, so no lease or attach connection ends it.
    engine.assert_no_container_left(&scope.id, Duration::from_secs(30));
    // Its sweeps go on for 30 s; killed now, its ssh goes with it, and its folder with the next
    // tunnel opened.
    watchdog.kill().unwrap();
    let status = watchdog.wait().unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut watchdog.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!said.contains("rayfine watchdog:"), "the watchdog ({status}) complained: {said}");
    wait_until_no_process_mentions(&watchdog_tunnel, Duration::from_secs(10), "the watchdog's ssh outlived it");

    // A key the engine's sshd does not accept: an error naming the host and ssh's words, soon.
    let stranger = login.ssh_command.replace("client_key", "host_key");
    let started = Instant::now();
    let (code, _, err) = cli_with_env(&["run", &tag, "--host", &login.url, "--call", "increment"], state.path(), &[("RAYFINE_SSH_COMMAND", &stranger)]);
    assert_ne!(code, 0);
    assert!(err.contains(&login.url) && err.contains("Permission denied"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "a refused login took {:?}", started.elapsed());

    // Nothing of ssh is left: the kept run's watchdog ends its last sweep and its tunnel with it;
    // the tunnel folders of ended processes are gone (at exit, or swept by the next tunnel).
    wait_until_no_process_mentions(&format!("ssh://root@{}", engine.address), Duration::from_secs(60), "a watchdog of the SSH engine is still running");
    wait_until_no_process_mentions(&login.ssh_command, Duration::from_secs(5), "an ssh to the engine is still running");
    for killed in [&owner_tunnel, &watchdog_tunnel] {
        let folders = tunnel_folders(killed);
        assert!(folders.is_empty(), "a killed process's tunnel folder is left: {folders:?}");
    }
    drop(engine);
    scope.finish();
}
