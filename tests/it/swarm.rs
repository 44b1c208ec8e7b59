//! The Swarm backend on a single-node swarm made on a second engine (its own namespace, so this
//! machine's engine never joins a swarm): an environment as a service, a pool whose killed task is
//! replaced rather than restarted, secrets out of the service's spec, and an owner killed by
//! SIGKILL: its watchdog removes the services, and without the watchdog the lease still ends the
//! task, which stays ended until `rayfine cleanup --orphans` removes the service.

use std::time::{Duration, Instant};

use rayfine::{load_env, load_pool, Mode, PoolOptions};
use serde_json::json;

use super::docker_util::{DockerScope, BASE_IMAGE, SCOPE_LABEL};
use super::second_engine::SecondEngine;
use super::util::{cli, in_child, processes_mentioning, spawn_child, wait_for_line, EnvCopy};

/// A second engine that is a single-node swarm manager.
fn swarm_manager() -> SecondEngine {
    let engine = SecondEngine::start();
    let init = engine.docker(&["swarm", "init", "--advertise-addr", &engine.address]);
    assert!(init.status.success(), "swarm init: {}", String::from_utf8_lossy(&init.stderr));
    engine
}

/// Waits until `done` holds, polling; panics with `what` after `within`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_and_pools_run_as_swarm_services_that_are_replaced_not_restarted() {
    let scope = DockerScope::new("swarm");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let engine = tokio::task::spawn_blocking(swarm_manager).await.unwrap();
    let options = scope.options(&tag).mode(Mode::Swarm).host(engine.host.clone()).env_var("COUNTER_NAME", "secret-counter-name").startup_timeout(Duration::from_secs(120));

    let env = load_env(options.clone()).await.unwrap();
    assert_eq!(env.mode(), "swarm");
    assert!(env.url().starts_with(&format!("http://{}:", engine.address)), "{}", env.url());
    assert_eq!(env.call("increment", json!({})).await.unwrap(), 1);
    let services = engine.docker_lines(&["service", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]);
    assert_eq!(services.len(), 1);
    let spec = engine.docker_lines(&["service", "inspect", &services[0]]).join("\n");
    assert!(spec.contains("\"Condition\": \"none\"") && spec.contains("\"Mode\": \"dnsrr\""), "{spec}");
    assert!(!spec.contains(env.token().unwrap()) && !spec.contains("secret-counter-name"), "the token and variables stay out of the service's spec");
    env.cleanup().await.unwrap();
    assert!(engine.docker_lines(&["service", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]).is_empty());
    assert!(engine.docker_lines(&["secret", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]).is_empty());

    // A task the engine cannot start (here its program is missing; in CI once, mounting its
    // secret hit EBUSY) is not an environment that exited: the service is made again, a bounded
    // number of times, then the start fails with the engine's reason and leaves nothing behind.
    let broken = scope.tag("counter-broken");
    let context = std::env::temp_dir().join(format!("rayfine-it-{}", scope.id));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), format!("FROM {tag}\nENTRYPOINT [\"/nonexistent\"]\nCMD []\n")).unwrap();
    let built = std::process::Command::new("docker").args(["build", "-q", "-t", &broken]).arg(&context).output().unwrap();
    std::fs::remove_dir_all(&context).unwrap();
    assert!(built.status.success(), "docker build: {}", String::from_utf8_lossy(&built.stderr));
    let refused = scope.options(&broken).mode(Mode::Swarm).host(engine.host.clone()).startup_timeout(Duration::from_secs(120));
    let err = load_env(refused).await.expect_err("its program is missing").to_string();
    assert!(err.contains("starting container failed") && err.contains("/nonexistent"), "the engine's reason: {err}");
    assert!(err.contains("the engine failed 3 starts in a row"), "made again, then given up: {err}");
    assert!(engine.docker_lines(&["service", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]).is_empty());
    assert!(engine.docker_lines(&["secret", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]).is_empty());

    // A pool of two services; one task's container is killed from outside. Swarm does not
    // restart it (restart condition none); the pool removes that service and starts another.
    let pool = load_pool(options, PoolOptions::new(2).health_interval(Duration::from_millis(500))).await.unwrap();
    assert!(pool.members().iter().all(|m| m.mode() == "swarm"));
    let victim = engine.docker_lines(&["ps", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]);
    assert_eq!(victim.len(), 2);
    assert!(engine.docker(&["rm", "-f", &victim[0]]).status.success());
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(pool.replaced() >= 1 && pool.members().len() == 2) {
        assert!(Instant::now() < deadline, "the pool did not replace the killed service: {pool:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        pool.call("get", json!({})).await.unwrap();
    }
    let running = engine.docker_lines(&["ps", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]);
    assert_eq!(running.len(), 2, "two tasks run, the killed one is not back: {running:?}");
    assert!(!running.contains(&victim[0]));
    pool.cleanup().await.unwrap();
    let engine = std::sync::Arc::new(engine);
    let witness = engine.clone();
    let scope_id = scope.id.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the pool's services, secrets and tasks are gone", Duration::from_secs(30), || {
            ["service", "secret"].iter().all(|kind| witness.docker_lines(&[kind, "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={scope_id}")]).is_empty())
                && witness.containers(&scope_id).is_empty()
        })
    })
    .await
    .unwrap();
    drop(engine);
    scope.finish();
}

#[test]
fn a_sigkilled_owners_services_go_with_its_watchdog_or_end_by_lease_until_cleanup() {
    let scope = DockerScope::new("swarmkill");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(BASE_IMAGE).build(env_dir.path(), &tag)).unwrap();
    let engine = swarm_manager();
    let services = || engine.docker_lines(&["service", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]);
    let vars = [("RAYFINE_TEST_IMAGE", tag.as_str()), ("RAYFINE_TEST_SCOPE", scope.id.as_str()), ("RAYFINE_HOSTS", &engine.url())];

    // With its watchdog: the services go as soon as the owner does.
    let mut owner = spawn_child("swarm::child_holds_swarm_environments", &vars);
    wait_for_line(&mut owner, "LOADED", Duration::from_secs(120));
    assert_eq!(services().len(), 2);
    owner.kill().unwrap();
    owner.wait().unwrap();
    wait_until("the watchdog removed the services of the killed owner", Duration::from_secs(30), || services().is_empty());

    // Without it (killed first): the 2 s lease ends each task, Swarm does not restart it, and
    // the service stays, ended, until `cleanup --orphans` removes it.
    let mut owner = spawn_child("swarm::child_holds_swarm_environments", &vars);
    wait_for_line(&mut owner, "LOADED", Duration::from_secs(120));
    let watchdogs = processes_mentioning(&format!("--watch-owner {}:", owner.id()));
    assert!(!watchdogs.is_empty(), "the owner runs a watchdog");
    for line in &watchdogs {
        let pid: i32 = line.split_whitespace().next().unwrap().parse().unwrap();
        // SAFETY: the watchdog the child started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    owner.kill().unwrap();
    owner.wait().unwrap();
    // The ended tasks' containers stay in the swarm's task history, exited.
    let ended = |containers: &[String]| containers.len() == 2 && containers.iter().all(|c| c.contains(" Exited "));
    wait_until("the lease ended the tasks of the killed owner", Duration::from_secs(30), || ended(&engine.containers(&scope.id)));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(services().len(), 2, "with no one to remove them, the ended services stay");
    let containers = engine.containers(&scope.id);
    assert!(ended(&containers), "and Swarm did not restart their tasks: {containers:?}");
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = cli(&["ps", "--json", "--host", &engine.url()], state.path());
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.iter().filter(|r| r["mode"] == "swarm" && r["orphan"] == true).count(), 2, "{out}");
    let (code, _, err) = cli(&["cleanup", "--orphans", "--host", &engine.url()], state.path());
    assert_eq!(code, 0, "{err}");
    assert!(services().is_empty());
    assert!(engine.docker_lines(&["secret", "ls", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", scope.id)]).is_empty());
    drop(engine);
    scope.finish();
}

#[tokio::test]
#[ignore = "run in a child process by the SIGKILL test above"]
async fn child_holds_swarm_environments() {
    if !in_child() {
        return;
    }
    let image = std::env::var("RAYFINE_TEST_IMAGE").unwrap();
    let scope = std::env::var("RAYFINE_TEST_SCOPE").unwrap();
    let options = rayfine::LoadOptions::image(&image)
        .label(SCOPE_LABEL, &scope)
        .mode(Mode::Swarm)
        .env_var("COUNTER_NAME", "owned")
        .lease(Duration::from_secs(2))
        .startup_timeout(Duration::from_secs(100));
    let pool = load_pool(options, PoolOptions::new(2)).await.unwrap();
    pool.call("increment", json!({})).await.unwrap();
    println!("LOADED");
    tokio::time::sleep(Duration::from_secs(600)).await;
}
