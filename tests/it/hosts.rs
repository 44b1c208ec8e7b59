//! Several Docker hosts: a second engine in its own network namespace (see `second_engine`), a
//! pool of replicas placed over both, the image copied to the engine that lacks it, a killed
//! replica replaced, affinity keys, an owner killed by SIGKILL leaving both engines empty, and the
//! CLI's `--host` and `--replicas`.

use std::process::Command;
use std::time::{Duration, Instant};

use rayfine::{load_pool, DockerHost, Error, PoolOptions};
use serde_json::json;

use super::docker_util::{DockerScope, BASE_IMAGE, SCOPE_LABEL};
use super::second_engine::SecondEngine;
use super::util::{cli, in_child, spawn_child, wait_for_line, EnvCopy};

/// The first engine must still start a container after a second one ran beside it (a second
/// dockerd in this machine's namespace once deleted its bridge).
fn assert_first_engine_starts_a_container() {
    let output = Command::new("docker").args(["run", "--rm", "--label", "rayfine.test_probe=true", BASE_IMAGE, "true"]).output().unwrap();
    assert!(output.status.success(), "the first engine no longer starts a container: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_two_engines_copies_the_image_keeps_episodes_and_replaces_a_killed_replica() {
    let scope = DockerScope::new("pool2");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let engine = tokio::task::spawn_blocking(SecondEngine::start).await.unwrap();
    assert!(engine.docker_lines(&["images", "-q", &tag]).is_empty(), "the second engine starts without the image");

    let options = scope.options(&tag).env_var("COUNTER_NAME", "pool").hosts([DockerHost::Local, engine.host.clone()]).startup_timeout(Duration::from_secs(180));
    let pool = load_pool(options, PoolOptions::new(4).health_interval(Duration::from_millis(500))).await.unwrap();
    let members = pool.members();
    assert_eq!(members.len(), 4);
    // The second engine starts empty and has as many CPUs as this one, so at least half of the
    // replicas go there whatever else runs here.
    let remote: Vec<_> = members.iter().filter(|m| m.docker_host() == Some(&engine.host)).collect();
    assert!(remote.len() >= 2, "placement by free capacity put {} of 4 on the empty engine: {members:?}", remote.len());
    for member in &remote {
        assert!(member.url().starts_with(&format!("http://{}:", engine.address)), "{}", member.url());
        assert!(member.token().is_some_and(|t| t.len() >= 32), "a remote replica is called with a token");
    }
    assert_eq!(engine.docker_lines(&["images", "-q", &tag]).len(), 1, "the image was copied to the second engine");
    assert_eq!(engine.containers(&scope.id).len(), remote.len());

    // An episode stays on one replica: its counter counts every step, which it would not if the
    // steps were spread over four replicas.
    for step in 1..=10 {
        assert_eq!(pool.call_keyed("episode", "increment", json!({})).await.unwrap(), step);
    }
    assert_eq!(pool.keys_bound(), 1);
    let mut holder = None;
    for member in &members {
        if member.call("get", json!({})).await.unwrap()["value"] == 10 {
            holder = Some(member.clone());
        }
    }
    let holder = holder.expect("one replica holds the episode's ten steps");

    // Kill the episode's replica from outside: its episode is lost (said, not retried
    // elsewhere), the key starts afresh, and the pool gets back to four.
    let killed = holder.container_id().unwrap().to_string();
    let removed = match holder.docker_host() {
        Some(host) if *host == engine.host => engine.docker(&["rm", "-f", &killed]),
        _ => Command::new("docker").args(["rm", "-f", &killed]).output().unwrap(),
    };
    assert!(removed.status.success());
    // The pool notices the death on its own (the container's output ends) and takes the replica
    // out; the episode's next call must still say it was lost, not start afresh in silence.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.members().iter().any(|m| m.container_id() == Some(killed.as_str())) {
        assert!(Instant::now() < deadline, "the pool did not take the killed replica out within 30 s: {pool:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = pool.call_keyed("episode", "increment", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::ReplicaLost { .. }), "{err}");
    assert_eq!(pool.call_keyed("episode", "increment", json!({})).await.unwrap(), 1, "the key starts afresh on another replica");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(pool.replaced() >= 1 && pool.members().len() == 4) {
        assert!(Instant::now() < deadline, "the killed replica was not replaced within 120 s: {pool:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pool.members().iter().all(|m| m.container_id() != Some(killed.as_str())));
    // Plain calls all succeed on the replenished pool.
    let calls = (0..40).map(|_| pool.call("get", json!({})));
    for answer in futures_util::future::join_all(calls).await {
        answer.unwrap();
    }

    pool.cleanup().await.unwrap();
    scope.assert_no_container_left(Duration::from_secs(15));
    engine.assert_no_container_left(&scope.id, Duration::from_secs(15));
    assert_first_engine_starts_a_container();
    drop(engine);
    scope.finish();
}

#[test]
fn an_owner_killed_by_sigkill_leaves_both_engines_empty_and_the_cli_spans_both() {
    let scope = DockerScope::new("hostskill");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(BASE_IMAGE).build(env_dir.path(), &tag)).unwrap();
    let engine = SecondEngine::start();
    let hosts = format!("local,{}", engine.url());

    // RAYFINE_HOSTS places the child's pool of three over both engines.
    let mut owner = spawn_child("hosts::child_holds_a_pool", &[("RAYFINE_TEST_IMAGE", &tag), ("RAYFINE_TEST_SCOPE", &scope.id), ("RAYFINE_HOSTS", &hosts)]);
    wait_for_line(&mut owner, "LOADED", Duration::from_secs(180));
    let remote = engine.containers(&scope.id).len();
    assert!(remote >= 1 && remote + scope.containers().len() == 3, "remote {remote}, local {:?}", scope.containers());
    // No handler runs: each attach connection, local or over TCP, closes with the process, and
    // each server exits when its stdin does.
    owner.kill().unwrap();
    owner.wait().unwrap();
    scope.assert_no_container_left(Duration::from_secs(20));
    engine.assert_no_container_left(&scope.id, Duration::from_secs(20));

    // The CLI: a pool for one call over both engines, then kept replicas on the second engine
    // that `ps`, `call` and `cleanup` find there.
    let state = tempfile::tempdir().unwrap();
    let host_args = ["--host", "local", "--host", &engine.url()];
    let mut args = vec!["run", &tag, "--replicas", "2", "-e", "COUNTER_NAME=cli", "--call", "increment", "--json"];
    args.extend(host_args);
    let (code, out, err) = cli(&args, state.path());
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["result"], 1, "{out}");
    assert_eq!(summary["members"].as_array().unwrap().len(), 2, "{out}");

    let remote_url = engine.url();
    let (code, out, err) = cli(&["run", &tag, "--replicas", "2", "--keep", "-e", "COUNTER_NAME=kept", "--host", &remote_url, "--json"], state.path());
    assert_eq!(code, 0, "{err}");
    let kept: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pool_id = kept["pool"].as_str().unwrap().to_string();
    let member = kept["members"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(engine.docker_lines(&["ps", "-q", "--filter", &format!("label=rayfine.pool={pool_id}")]).len(), 2);

    let (code, out, err) = cli(&["ps", "--json", "--host", &remote_url], state.path());
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let in_pool: Vec<_> = rows.iter().filter(|r| r["pool"] == pool_id.as_str()).collect();
    assert_eq!(in_pool.len(), 2, "{out}");
    assert!(in_pool.iter().all(|r| r["host"] == remote_url.as_str() && r["url"].as_str().unwrap().contains(&engine.address)), "{out}");
    let (code, out, err) = cli(&["call", &member, "increment", "--json"], state.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["result"], 1);

    let (code, _, err) = cli(&["cleanup", &pool_id, "--host", &remote_url], state.path());
    assert_eq!(code, 0, "{err}");
    let left = engine.docker_lines(&["ps", "-aq", "--filter", "label=rayfine.managed=true"]);
    assert!(left.is_empty(), "the CLI's cleanup left {left:?} on the second engine");
    assert_first_engine_starts_a_container();
    drop(engine);
    scope.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_behind_tls_is_reached_with_client_certificates_and_refused_without() {
    let scope = DockerScope::new("tls");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let certs = tempfile::tempdir().unwrap();
    let certs_path = certs.path().to_path_buf();
    let engine = tokio::task::spawn_blocking(move || SecondEngine::start_tls(&certs_path)).await.unwrap();
    assert!(engine.host.tls_certs().is_some());

    // The image is copied over TLS, the environment runs there and is called with its token.
    let env = rayfine::load_env(scope.options(&tag).env_var("COUNTER_NAME", "tls").host(engine.host.clone()).startup_timeout(Duration::from_secs(120))).await.unwrap();
    assert!(env.url().starts_with(&format!("http://{}:", engine.address)));
    assert_eq!(env.call("increment", json!({})).await.unwrap(), 1);
    env.cleanup().await.unwrap();
    engine.assert_no_container_left(&scope.id, Duration::from_secs(15));

    // Without the certificates: refused, naming the engine; with a folder that lacks one: named.
    let plain = DockerHost::Tcp { host: engine.address.clone(), port: 2376, certs: None };
    let err = rayfine::load_env(scope.options(&tag).host(plain)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("cannot reach the Docker engine at tcp://{}:2376", engine.address)), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let missing = DockerHost::Tcp { host: engine.address.clone(), port: 2376, certs: Some(empty.path().to_path_buf()) };
    let err = rayfine::load_env(scope.options(&tag).host(missing)).await.unwrap_err().to_string();
    assert!(err.contains("ca.pem, which is missing"), "{err}");
    drop(engine);
    scope.finish();
}

#[tokio::test]
#[ignore = "run in a child process by the SIGKILL test above"]
async fn child_holds_a_pool() {
    if !in_child() {
        return;
    }
    let image = std::env::var("RAYFINE_TEST_IMAGE").unwrap();
    let scope = std::env::var("RAYFINE_TEST_SCOPE").unwrap();
    let options = rayfine::LoadOptions::image(&image).label(SCOPE_LABEL, &scope).env_var("COUNTER_NAME", "owned").startup_timeout(Duration::from_secs(150));
    let pool = load_pool(options, PoolOptions::new(3)).await.unwrap();
    pool.call("increment", json!({})).await.unwrap();
    println!("LOADED");
    tokio::time::sleep(Duration::from_secs(600)).await;
}
