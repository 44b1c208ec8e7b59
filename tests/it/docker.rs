//! The Docker backend against the real engine: build (function-based, HTTP-based, without a
//! Dockerfile, broken), load with env vars, call, list methods, many at once, failures, the
//! injected server on `FROM scratch`, and that nothing is left behind.

use std::time::Duration;

use rayfine::{load_env, EnvType, Error};
use serde_json::json;

use super::docker_util::{docker_lines, DockerScope, BASE_IMAGE, FASTAPI_IMAGE, SCOPE_LABEL};
use super::util::{cli, cli_with_env, in_child, processes_mentioning, spawn_child, wait_until_no_process_mentions, EnvCopy};

#[tokio::test]
async fn function_env_builds_in_two_stages_and_keeps_state() {
    let scope = DockerScope::new("counter");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    let built = scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    assert_eq!(built.env_type, EnvType::Function);
    assert_eq!(built.base_tag.as_deref(), Some(format!("{tag}-base").as_str()));
    let labels = super::docker_util::docker_lines(&["image", "inspect", &tag, "--format", "{{json .Config.Labels}}"]);
    let labels: serde_json::Value = serde_json::from_str(&labels[0]).unwrap();
    assert_eq!(labels["rayfine.managed"], "true");
    assert_eq!(labels["rayfine.env_type"], "function");
    assert_eq!(labels["rayfine.version"], env!("CARGO_PKG_VERSION"));

    let env = load_env(scope.options(&tag).env_var("COUNTER_NAME", "docker").env_var("COUNTER_STEP", "5")).await.unwrap();
    assert_eq!(env.mode(), "docker");
    assert_eq!(env.env_type(), EnvType::Function);
    assert!(env.url().starts_with("http://127.0.0.1:"), "published on loopback only: {}", env.url());
    assert_eq!(env.call("increment", json!({})).await.unwrap(), 5);
    assert_eq!(env.call("increment", json!({"times": 2})).await.unwrap(), 15);
    let names: Vec<String> = env.list_methods().await.unwrap().into_iter().map(|m| m.name).collect();
    assert!(names.contains(&"increment".to_string()), "{names:?}");
    // Without the token the server refuses.
    let (status, _) = super::util::http("POST", &format!("{}/call", env.url()), r#"{"method":"increment"}"#, None);
    assert_eq!(status, 401);
    let container = env.container_id().unwrap().to_string();
    let inspect = super::docker_util::docker_lines(&["inspect", &container, "--format", "{{json .HostConfig.SecurityOpt}} {{.HostConfig.PidsLimit}} {{json .Config.Labels}}"]);
    assert!(inspect[0].contains("no-new-privileges"), "{inspect:?}");
    assert!(!inspect[0].contains(env.token().unwrap()), "the token must not be in labels");
    // The token and COUNTER_STEP came on the container's stdin, not in a copied file.
    let config_env = super::docker_util::docker_lines(&["inspect", &container, "--format", "{{json .Config.Env}}"]).join("\n");
    assert!(config_env.contains("RAYFINE_SECRETS_STDIN=true") && !config_env.contains("RAYFINE_SECRETS_FILE"), "{config_env}");
    env.cleanup().await.unwrap();
    scope.assert_no_container_left(Duration::from_secs(5));

    // Rebuilding the unchanged environment reuses every layer and gives the same image.
    let again = scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    assert_eq!(again.image_id, built.image_id);
    scope.finish();
}

#[tokio::test]
async fn failing_constructor_reports_the_python_error_and_removes_the_container() {
    let scope = DockerScope::new("counter-fail");
    let env_dir = EnvCopy::of("counter");
    let tag = scope.tag("counter");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let err = load_env(scope.options(&tag)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::StartFailed { .. }), "{err:?}");
    assert!(text.contains("COUNTER_NAME"), "the constructor's error names the missing variable: {text}");
    scope.assert_no_container_left(Duration::from_secs(10));
    scope.finish();
}

#[tokio::test]
async fn http_env_on_fastapi_is_called_by_post_and_listed_from_openapi() {
    let scope = DockerScope::new("scorer");
    let env_dir = EnvCopy::of("scorer_http");
    let tag = scope.tag("scorer");
    let built = scope.builder(FASTAPI_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    assert_eq!(built.env_type, EnvType::Http, "{}", built.reason);
    assert!(built.base_tag.is_none());

    let env = load_env(scope.options(&tag)).await.unwrap();
    assert_eq!(env.env_type(), EnvType::Http);
    let result = env.call("evaluate", json!({"task_id": 123, "answer": "321"})).await.unwrap();
    assert_eq!(result, json!({"task_id": 123, "score": 1.0}));
    let methods = env.list_methods().await.unwrap();
    let evaluate = methods.iter().find(|m| m.name == "evaluate").expect("evaluate listed");
    assert!(evaluate.signature.contains("task_id"), "{evaluate:?}");
    match env.call("evaluate", json!({"task_id": -1, "answer": ""})).await.unwrap_err() {
        Error::InvalidArguments { detail, .. } => assert!(detail.contains("negative"), "{detail}"),
        other => panic!("expected InvalidArguments, got {other:?}"),
    }
    assert!(matches!(env.call("evaluate", json!({"answer": 1})).await.unwrap_err(), Error::InvalidArguments { .. }));
    assert!(matches!(env.call("missing", json!({})).await.unwrap_err(), Error::MethodNotFound { .. }));
    assert!(matches!(env.call("fail", json!({})).await.unwrap_err(), Error::Raised { .. }));
    // A blocking call of an HTTP-based environment, from a spawn_blocking thread (inside the
    // runtime's context, where block_on is refused).
    let blocking = env.clone();
    let result = tokio::task::spawn_blocking(move || blocking.call_blocking("evaluate", &[], json!({"task_id": 7, "answer": "7"}), None, &mut || false))
        .await
        .unwrap();
    assert_eq!(result.unwrap(), json!({"task_id": 7, "score": 1.0}));
    env.cleanup().await.unwrap();
    scope.finish();
}

#[tokio::test]
async fn folder_without_dockerfile_uses_the_base_image_and_dockerignore() {
    let scope = DockerScope::new("nodockerfile");
    let env_dir = EnvCopy::of("no_dockerfile");
    let tag = scope.tag("plain");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let env = load_env(scope.options(&tag)).await.unwrap();
    let result = env.call("where", json!({})).await.unwrap();
    assert_eq!(result, json!({"cwd": "/app", "data": "copied along", "ignored_present": false}));
    env.cleanup().await.unwrap();
    scope.finish();
}

#[tokio::test]
async fn broken_dockerfile_fails_naming_the_step_and_its_output() {
    let scope = DockerScope::new("broken");
    let env_dir = EnvCopy::of("broken_dockerfile");
    let tag = scope.tag("broken");
    let err = scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap_err();
    match &err {
        Error::Build { step, message, .. } => {
            let step = step.as_deref().unwrap_or_default();
            assert!(step.contains("RUN echo"), "the failing step is named: {step}");
            assert!(message.contains("3"), "the exit code is given: {message}");
            assert!(message.contains("about to fail"), "the step's output is given: {message}");
        }
        other => panic!("expected a build error, got {other:?}"),
    }
    // A Dockerfile the engine cannot parse is reported with the engine's message.
    std::fs::write(env_dir.path().join("Dockerfile"), "FROM rayfine-test/python:bookworm\nFROBNICATE now\n").unwrap();
    let err = scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("frobnicate"), "{err}");
    scope.finish();
}

#[tokio::test]
async fn injected_server_runs_in_an_image_without_libc() {
    let scope = DockerScope::new("scratch");
    let env_dir = EnvCopy::of("scratch_base");
    let tag = scope.tag("scratch");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    // No python in the image: the server starts, reports that, and the start fails cleanly.
    let err = load_env(scope.options(&tag)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::StartFailed { .. }), "{err:?}");
    assert!(text.contains("python3"), "the server itself ran and explained: {text}");
    scope.assert_no_container_left(Duration::from_secs(10));
    scope.finish();
}

#[tokio::test]
async fn the_server_as_pid_1_reaps_orphans_the_environment_leaves() {
    let scope = DockerScope::new("reaper");
    let env_dir = EnvCopy::of("spawner");
    let tag = scope.tag("spawner");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let env = load_env(scope.options(&tag)).await.unwrap();
    for _ in 0..5 {
        assert_eq!(env.call("orphan", json!({})).await.unwrap(), json!(true));
    }
    // The orphans exit 0.2 s after their parent; their zombies belong to PID 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut zombies = json!(null);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        zombies = env.call("zombies", json!({})).await.unwrap();
        if zombies == json!(0) {
            break;
        }
    }
    assert_eq!(zombies, json!(0), "zombies left under PID 1");
    env.cleanup().await.unwrap();
    scope.finish();
}

#[tokio::test]
async fn eight_environments_at_once_each_with_its_own_port() {
    let scope = DockerScope::new("eight");
    let env_dir = EnvCopy::of("echo");
    let tag = scope.tag("echo");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let loads = (0..8).map(|i| load_env(scope.options(&tag).name(format!("echo-{i}"))));
    let envs: Vec<_> = futures_util::future::join_all(loads).await.into_iter().collect::<Result<_, _>>().unwrap();
    let mut urls: Vec<&str> = envs.iter().map(|e| e.url()).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 8);
    for (i, env) in envs.iter().enumerate() {
        assert_eq!(env.call("echo", json!({"text": format!("n{i}")})).await.unwrap(), format!("n{i}"));
    }
    assert_eq!(scope.containers().len(), 8);
    futures_util::future::join_all(envs.iter().map(|e| e.cleanup())).await;
    scope.finish();
}

#[test]
fn cleanup_all_and_sigkill_of_the_owner_leave_no_container() {
    let scope = DockerScope::new("owner");
    let env_dir = EnvCopy::of("echo");
    let tag = scope.tag("echo");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(BASE_IMAGE).build(env_dir.path(), &tag)).unwrap();

    // Cleaned up by `cleanup_all_environments()`, then by the guard at the end of `main` (the
    // way a Python program ends too). Either way the owner removed everything itself and told
    // its watchdog so: the watchdog sweeps once and exits, rather than sweeping for 30 s.
    for mode in ["cleanup_all", "guard"] {
        let child = spawn_child("docker::child_loads_images", &[("RAYFINE_TEST_IMAGE", &tag), ("RAYFINE_TEST_SCOPE", &scope.id), ("RAYFINE_TEST_MODE", mode)]);
        let owner = child.id();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{mode}: {}", String::from_utf8_lossy(&output.stdout));
        scope.assert_no_container_left(Duration::from_secs(5));
        wait_until_no_process_mentions(&format!("--watch-owner {owner}:"), Duration::from_secs(10), &format!("{mode}: the watchdog of an owner that left nothing still runs"));
    }

    // SIGKILL: no handler runs. The attach connection closes with the process, the engine closes
    // the server's stdin, the server exits, and the container removes itself. The watchdog was
    // never told "clean", so it keeps sweeping for creates that may have been under way.
    let owner = owner_of_two(&scope, &tag);
    let watchdog = format!("--watch-owner {}:", owner.id());
    sigkill_leaves_no_container(&scope, owner);
    assert_eq!(processes_mentioning(&watchdog).len(), 1, "the watchdog of an owner killed with containers up stopped sweeping early");
    scope.finish();
}

/// A child process that has loaded `tag` twice, in `scope`, and waits.
fn owner_of_two(scope: &DockerScope, tag: &str) -> std::process::Child {
    let mut child = super::util::spawn_child("docker::child_loads_images", &[("RAYFINE_TEST_IMAGE", tag), ("RAYFINE_TEST_SCOPE", &scope.id), ("RAYFINE_TEST_MODE", "wait")]);
    super::util::wait_for_line(&mut child, "LOADED", Duration::from_secs(60));
    assert_eq!(scope.containers().len(), 2);
    child
}

/// Kills `owner` with SIGKILL, so no handler of its runs: its containers must go by themselves.
fn sigkill_leaves_no_container(scope: &DockerScope, mut owner: std::process::Child) {
    owner.kill().unwrap();
    owner.wait().unwrap();
    scope.assert_no_container_left(Duration::from_secs(15));
}

#[test]
fn http_env_is_supervised_and_goes_with_an_owner_killed_by_sigkill() {
    let scope = DockerScope::new("httpowner");
    let env_dir = EnvCopy::of("scorer_http");
    let tag = scope.tag("scorer");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(FASTAPI_IMAGE).build(env_dir.path(), &tag)).unwrap();

    let owner = owner_of_two(&scope, &tag);
    // The user's uvicorn runs under the supervisor, which watches the attached stdin.
    let containers = scope.containers();
    let id = containers[0].split_whitespace().next().unwrap();
    let command = docker_lines(&["inspect", "--format", "{{.Path}} {{.Args}}", id]).join("\n");
    assert!(command.starts_with("/rayfine/rayfine-server [--supervise -- python3 -m uvicorn"), "{command}");
    sigkill_leaves_no_container(&scope, owner);
    scope.finish();
}

/// A frozen owner (SIGSTOP) keeps its attach connections open; the supervisor of an HTTP-based
/// environment holds its lease, and stops it when renewals stop.
#[test]
fn http_env_goes_when_its_owner_is_frozen() {
    let scope = DockerScope::new("httpfrozen");
    let env_dir = EnvCopy::of("scorer_http");
    let tag = scope.tag("scorer");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(FASTAPI_IMAGE).build(env_dir.path(), &tag)).unwrap();
    let mut owner = super::util::spawn_child(
        "docker::child_loads_images",
        &[("RAYFINE_TEST_IMAGE", &tag), ("RAYFINE_TEST_SCOPE", &scope.id), ("RAYFINE_TEST_MODE", "wait"), ("RAYFINE_TEST_LEASE", "2")],
    );
    super::util::wait_for_line(&mut owner, "LOADED", Duration::from_secs(60));
    assert_eq!(scope.containers().len(), 2);
    // The first renewals (sent at once, then every 0.5 s) start the supervisors' clocks.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(owner.id() as i32, libc::SIGSTOP) };
    let frozen = std::time::Instant::now();
    let deadline = frozen + Duration::from_secs(20);
    while !scope.containers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = scope.containers();
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert!(left.is_empty(), "a frozen owner's HTTP-based containers outlived a 2 s lease by 20 s: {left:?}");
    println!("HTTP-based, frozen owner, 2 s lease: gone after {:?}", frozen.elapsed());
    scope.finish();
}

#[tokio::test]
#[ignore = "run in a child process by the tests of an owner's cleanup and SIGKILL"]
async fn child_loads_images() {
    if !in_child() {
        return;
    }
    let image = std::env::var("RAYFINE_TEST_IMAGE").unwrap();
    let scope = std::env::var("RAYFINE_TEST_SCOPE").unwrap();
    for _ in 0..2 {
        let mut options = rayfine::LoadOptions::image(&image).label(SCOPE_LABEL, &scope);
        if let Ok(seconds) = std::env::var("RAYFINE_TEST_LEASE").unwrap_or_default().parse::<f64>() {
            options = options.lease(Duration::from_secs_f64(seconds));
        }
        load_env(options).await.unwrap();
    }
    match std::env::var("RAYFINE_TEST_MODE").unwrap().as_str() {
        "cleanup_all" => {
            assert_eq!(rayfine::cleanup_all_environments().await, 2);
            return;
        }
        // Dropped on the way out, with both environments up.
        "guard" => {
            let _guard = rayfine::CleanupGuard::new();
            return;
        }
        _ => {}
    }
    println!("LOADED");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[test]
fn cli_builds_runs_lists_and_removes_orphans() {
    let scope = DockerScope::new("cli");
    let env_dir = EnvCopy::of("echo");
    let state = tempfile::tempdir().unwrap();
    let tag = scope.tag("echo");
    let server = scope.server.to_str().unwrap().to_string();
    let with_server = |args: &[&str]| cli_with_env(args, state.path(), &[("RAYFINE_SERVER_BIN", &server)]);
    let (code, out, err) = with_server(&["build", env_dir.path_str(), "-t", &tag, "--base-image", BASE_IMAGE, "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), tag);
    assert!(err.contains("function-based"), "{err}");

    let (code, out, err) = cli(&["run", &tag, "--call", "echo", "-a", "text=from-cli", "--json"], state.path());
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["mode"], "docker");
    assert_eq!(summary["result"], "from-cli");

    let (code, _, err) = cli(&["build", "/no/such/folder", "-t", &tag], state.path());
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/folder"), "{err}");
    let (code, _, err) = cli(&["build", env_dir.path_str(), "-t", "Not A Tag"], state.path());
    assert_eq!(code, 2);
    assert!(err.contains("not a valid image tag"), "{err}");

    // Orphans: containers labelled as Rayfine's whose owner is gone (here a pid that cannot
    // exist). Rayfine leaves none itself any more (the stdin rule, leases and the owner
    // watchdog), but one left by an older version or a crashed engine must still be found.
    for _ in 0..2 {
        let output = std::process::Command::new("docker")
            .args(["create", "--label", "rayfine.managed=true", "--label", "rayfine.owner_pid=4194304", "--label", "rayfine.owner_start=1"])
            .args(["--label", "rayfine.keep=false", "--label", &format!("{SCOPE_LABEL}={}", scope.id), &tag, "true"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let (code, out, _) = cli(&["ps", "--json"], state.path());
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let orphans = rows.iter().filter(|r| r["orphan"] == true && r["image"] == tag.as_str()).count();
    assert_eq!(orphans, 2, "{out}");
    let (code, _, err) = cli(&["cleanup", "--orphans"], state.path());
    assert_eq!(code, 0, "{err}");
    scope.assert_no_container_left(Duration::from_secs(10));
    scope.finish();
}

/// The token and env var values (API keys) appear in no label, container log, `rayfine ps`
/// output or error message, in Docker and in process mode.
#[tokio::test]
async fn secrets_stay_out_of_labels_logs_ps_and_errors() {
    const SECRET: &str = "sk-test-secret-4f9a1c";
    let scope = DockerScope::new("secrets");
    let env_dir = EnvCopy::of("echo");
    let tag = scope.tag("echo");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let env = load_env(scope.options(&tag).env_var("API_KEY", SECRET)).await.unwrap();
    let token = env.token().unwrap().to_string();
    assert_eq!(env.call("echo", json!({"text": "hi"})).await.unwrap(), "hi");
    let errors = [
        env.call("no_such_method", json!({})).await.unwrap_err().to_string(),
        env.call("add", json!({"a": 1})).await.unwrap_err().to_string(),
        format!("{env:?}"),
    ];
    let container = env.container_id().unwrap().to_string();
    let labels = super::docker_util::docker_lines(&["inspect", &container, "--format", "{{json .Config.Labels}}"]).join("\n");
    let config_env = super::docker_util::docker_lines(&["inspect", &container, "--format", "{{json .Config.Env}}"]).join("\n");
    let logs = std::process::Command::new("docker").args(["logs", &container]).output().unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    let state = tempfile::tempdir().unwrap();
    let (code, ps, ps_err) = cli(&["--json", "ps"], state.path());
    assert_eq!(code, 0, "{ps_err}");
    assert!(ps.contains(&container[..12]), "ps lists the container: {ps}");
    for (what, text) in [("labels", &labels), ("inspect's Config.Env", &config_env), ("container log", &logs), ("ps", &ps), ("errors", &errors.join("\n"))] {
        assert!(!text.contains(SECRET) && !text.contains(&token), "a secret is in the {what}:\n{text}");
    }
    env.cleanup().await.unwrap();

    // Process mode, through the CLI with the server's debug log on.
    let process_dir = EnvCopy::of("echo");
    let (_, stdout, stderr) = cli_with_env(
        &["run", process_dir.path_str(), "--mode", "process", "-e", &format!("API_KEY={SECRET}"), "--call", "add", "--kwargs", r#"{"a": 1}"#],
        state.path(),
        &[("RAYFINE_SERVER_LOG", "debug"), ("RUST_LOG", "debug")],
    );
    assert!(stderr.contains("InvalidArguments") || stderr.contains("arguments"), "{stderr}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "a secret is in the CLI's output:\n{stdout}\n{stderr}");
    process_dir.assert_no_process_left();
    scope.finish();
}

/// Variables far larger than the engine's stdin buffers (8 × 100 KB; one variable may not exceed
/// the kernel's 128 KB) still reach the worker: the secrets line is written alongside the start,
/// not before it, where the engine would hold the write until the container reads.
#[tokio::test]
async fn secrets_larger_than_the_stdin_buffers_reach_the_environment() {
    let scope = DockerScope::new("bigsecrets");
    let env_dir = EnvCopy::of("hostile");
    let tag = scope.tag("hostile");
    scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap();
    let mut options = scope.options(&tag);
    let mut expected = serde_json::Map::new();
    for i in 0..8 {
        options = options.env_var(format!("BIG_SECRET_{i}"), "s".repeat(100_000));
        expected.insert(format!("BIG_SECRET_{i}"), json!(100_000));
    }
    let env = load_env(options).await.unwrap();
    assert_eq!(env.call("variable_lengths", json!({"prefix": "BIG_SECRET_"})).await.unwrap(), serde_json::Value::Object(expected));
    env.cleanup().await.unwrap();
    scope.finish();
}

/// A syntax error in env.py fails the build, checked by the image's own python3, naming the line.
#[tokio::test]
async fn env_py_with_a_syntax_error_fails_the_build_naming_the_line() {
    let scope = DockerScope::new("syntax");
    let env_dir = EnvCopy::of("broken_syntax");
    let tag = scope.tag("broken");
    let err = scope.builder(BASE_IMAGE).build(env_dir.path(), &tag).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Build { .. }), "{err:?}");
    assert!(text.contains("SyntaxError") && text.contains("line 2"), "{text}");
    assert!(docker_lines(&["images", "-q", &tag]).is_empty(), "no image is tagged {tag}");
    scope.finish();
}

/// An image a build lost to a race with a removal (the engine wrote it, then failed to link it to
/// its parent: untagged, parentless, its last step Rayfine's LABEL) goes with the next removal
/// through Rayfine. One that a container still uses stays, and so does one built FROM it. A
/// classic-builder build of `FROM scratch` + that LABEL, given no tag, makes an image of that shape.
#[tokio::test]
async fn a_removal_also_takes_images_a_build_left_untagged_and_parentless() {
    let scope = DockerScope::new("orphans");
    let context = tempfile::tempdir().unwrap();
    // These builds do not hold Rayfine's cache lock, so another test's removal may sweep one's
    // image in the instant between the engine writing it and tagging it, as it would any
    // build's orphan: the build then fails, and runs again, as Rayfine's own builds do.
    let build = |dockerfile: String, tag: Option<&str>| {
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        for attempt in 1.. {
            let mut command = std::process::Command::new("docker");
            command.env("DOCKER_BUILDKIT", "0").args(["build", "-q"]);
            if let Some(tag) = tag {
                command.args(["-t", tag]);
            }
            let output = command.arg(context.path()).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let swept = stderr.contains("failed to get digest") || stderr.contains("No such image: sha256:");
            if output.status.success() || !swept || attempt == 5 {
                assert!(output.status.success(), "docker build: {stderr}");
                return String::from_utf8(output.stdout).unwrap().trim().to_string();
            }
        }
        unreachable!()
    };
    let label_step = |which: &str| format!("FROM scratch\nLABEL rayfine.managed=true rayfine.version=test {SCOPE_LABEL}={} which={which}\n", scope.id);
    let exists = |id: &str| std::process::Command::new("docker").args(["image", "inspect", id]).output().unwrap().status.success();
    // Untagged from the start: another test's removal may take it before ours does.
    let orphan = build(label_step("orphan"), None);
    // Used by a container, then untagged by moving its tag to another image.
    let tag = scope.tag("in-use");
    let in_use = build(label_step("in-use"), Some(&tag));
    let user = docker_lines(&["create", "--label", &format!("{SCOPE_LABEL}={}", scope.id), &tag, "/none"]);
    assert_eq!(user.len(), 1, "docker create: {user:?}");
    let moved_to = build(label_step("moved-to"), Some(&tag));
    assert_ne!(in_use, moved_to);
    // An image built FROM one of Rayfine's: its labels, but its own last step; untagged, and
    // made parentless (as BuildKit's are) by saving it and loading it back (the engine saves
    // no image without a layer, hence the COPY).
    let derived = build(format!("FROM {tag}\nCOPY Dockerfile /derived\nCMD [\"/none\"]\n"), None);
    let saved = context.path().join("derived.tar");
    let docker = |args: &[&str]| assert!(std::process::Command::new("docker").args(args).output().unwrap().status.success(), "docker {args:?}");
    docker(&["save", "-o", saved.to_str().unwrap(), &derived]);
    docker(&["rmi", &derived]);
    docker(&["load", "-q", "-i", saved.to_str().unwrap()]);
    assert_eq!(docker_lines(&["image", "inspect", "--format", "{{.Parent}}|{{.RepoTags}}", &derived]), vec!["|[]".to_string()]);

    rayfine::docker::remove_image(&scope.tag("never-built")).await.unwrap();
    assert!(!exists(&orphan), "the orphan {orphan} is still there");
    assert!(exists(&in_use), "the image a container uses went");
    assert!(exists(&derived), "an image built FROM a Rayfine image went");

    docker(&["rm", &user[0]]);
    docker(&["rmi", &derived]);
    docker(&["rmi", &in_use]);
    scope.finish();
}
