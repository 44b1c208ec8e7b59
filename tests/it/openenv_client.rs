//! Rayfine's Rust OpenEnv client (`rayfine::openenv`) against Rayfine's server (process mode) and
//! against OpenEnv's own server (an OpenEnv-layout environment built offline into an image with
//! `-f server/Dockerfile`), and the CLI on that image as a kept HTTP-based environment.

use std::time::Duration;

use rayfine::openenv::{GenericOpenEnvClient, OpenEnvClient, Transport};
use rayfine::{EnvType, Error, LoadOptions, Mode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::docker_util::{docker_lines, DockerScope, OPENENV_IMAGE};
use crate::util::{cli, EnvCopy};

#[derive(Serialize)]
struct EchoAction {
    message: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct EchoObservation {
    echoed_message: String,
    message_length: usize,
}

fn echo(message: &str) -> EchoAction {
    EchoAction { message: message.into() }
}

fn process(env: &EnvCopy) -> LoadOptions {
    LoadOptions::folder(env.path()).mode(Mode::Process)
}

#[tokio::test]
async fn the_rust_client_runs_episodes_on_rayfines_server_over_websocket_and_http() {
    let dir = EnvCopy::of("echo_openenv");
    let mut client = OpenEnvClient::<EchoAction, EchoObservation>::load(process(&dir), Transport::Auto).await.unwrap();
    assert_eq!(client.transport(), Transport::WebSocket);
    let env = client.environment().clone();

    let ready = client.reset(json!({"episode_id": "ep-rust"})).await.unwrap();
    assert_eq!((ready.observation.echoed_message.as_str(), ready.reward, ready.done), ("Echo environment ready!", Some(0.0), false));
    let stepped = client.step(&echo("hello")).await.unwrap();
    assert_eq!(stepped.observation, EchoObservation { echoed_message: "hello".into(), message_length: 5 });
    assert!((stepped.reward.unwrap() - 0.5).abs() < 1e-9 && !stepped.done, "{stepped:?}");
    assert_eq!(client.state().await.unwrap(), json!({"episode_id": "ep-rust", "step_count": 1}));

    // The environment's own exception arrives typed, and the session goes on.
    let raised = client.step(&echo("")).await.unwrap_err();
    assert!(raised.is_raised() && raised.to_string().contains("non-empty"), "{raised}");
    client.step(&echo("again")).await.unwrap();
    #[derive(Deserialize)]
    struct State {
        step_count: u64,
    }
    assert_eq!(client.state_as::<State>().await.unwrap().step_count, 2);
    // A frame many times what either end reads at a time arrives whole, both ways.
    let long: String = (0..10 * rayfine::protocol::WS_READ_BUFFER_BYTES + 7).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let echoed = client.step(&echo(&long)).await.unwrap();
    assert!(echoed.observation.echoed_message == long && echoed.observation.message_length == long.len(), "a long message came back changed");

    // A second session on the same server has an instance of its own; an action of the wrong
    // shape is refused naming the problem.
    let mut other = GenericOpenEnvClient::attach(&env, Transport::WebSocket).await.unwrap();
    other.reset(json!(null)).await.unwrap();
    assert_eq!(other.state().await.unwrap()["step_count"], 0);
    let refused = other.step(&json!({"text": "hi"})).await.unwrap_err();
    assert!(matches!(refused, Error::InvalidArguments { .. }), "{refused}");
    assert!(matches!(other.reset(json!([1])).await.unwrap_err(), Error::InvalidArguments { .. }));
    other.close().await.unwrap();

    // OpenEnv's HTTP routes, stateless by design.
    let mut http = GenericOpenEnvClient::attach(&env, Transport::Http).await.unwrap();
    assert_eq!(http.transport(), Transport::Http);
    http.reset(json!({})).await.unwrap();
    let stepped = http.step(&json!({"message": "abc"})).await.unwrap();
    assert_eq!((stepped.observation["message_length"].clone(), stepped.done), (json!(3), false));
    assert!(http.state().await.unwrap().get("step_count").is_some());
    http.close().await.unwrap();

    // The session's owner ends the environment with it.
    client.close().await.unwrap();
    assert!(rayfine::get_environment(env.id()).is_none());
    assert!(matches!(env.call("state", json!({})).await, Err(Error::Closed(_))));
    dir.assert_no_process_left();
}

/// The server pings each session and ends one it has not heard from for its idle timeout; a
/// client that answers pings only while it waits for an answer loses its session whenever the
/// agent thinks longer than that between steps.
#[tokio::test]
async fn a_session_idle_between_steps_outlives_the_servers_idle_timeout() {
    let dir = EnvCopy::of("echo_openenv");
    // The idle timeout leaves room for a stall of a loaded machine; the pause is three of them.
    let options = process(&dir).env_var("RAYFINE_SESSION_IDLE_TIMEOUT", "2.5");
    let mut client = OpenEnvClient::<EchoAction, EchoObservation>::load(options, Transport::WebSocket).await.unwrap();
    client.reset(json!({"episode_id": "patient"})).await.unwrap();
    client.step(&echo("one")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(7500)).await;
    client.step(&echo("two")).await.unwrap();
    assert_eq!(client.state().await.unwrap(), json!({"episode_id": "patient", "step_count": 2}));
    client.close().await.unwrap();
    dir.assert_no_process_left();
}

/// A request whose caller stops waiting (a timeout of the caller's own) still runs on the server
/// (without this, `state` shows the abandoned step counted) while its caller believes it did not:
/// the session ends rather than go on in a state the caller does not know. A request that
/// overruns the client's timeout ends it too, rather than hand its late answer to the next one.
#[tokio::test]
async fn an_abandoned_or_timed_out_request_ends_its_session_and_never_answers_another() {
    let dir = EnvCopy::of("openenv_benchmark");
    let options = process(&dir).call_timeout(Duration::from_secs(1));
    let mut client = GenericOpenEnvClient::load(options, Transport::WebSocket).await.unwrap();
    client.reset(json!({})).await.unwrap();
    let abandoned = tokio::time::timeout(Duration::from_millis(200), client.step(&json!({"wait_seconds": 0.8}))).await;
    assert!(abandoned.is_err(), "the caller's own timeout fires first");
    match client.state().await.unwrap_err() {
        Error::Session { code, message, .. } => assert!(code == "CLOSED" && message.contains("stopped waiting"), "{message}"),
        other => panic!("expected the ended session, got {other:?}"),
    }
    let env = client.environment().clone();

    let mut slow = GenericOpenEnvClient::attach(&env, Transport::WebSocket).await.unwrap();
    slow.reset(json!({})).await.unwrap();
    assert!(matches!(slow.step(&json!({"wait_seconds": 2.5})).await.unwrap_err(), Error::Timeout { .. }));
    assert!(matches!(slow.state().await.unwrap_err(), Error::Session { code, .. } if code == "CLOSED"));
    slow.close().await.unwrap();

    // The server is fine: a new session works.
    let mut fresh = GenericOpenEnvClient::attach(&env, Transport::WebSocket).await.unwrap();
    fresh.reset(json!({})).await.unwrap();
    assert!(!fresh.step(&json!({"wait_seconds": 0})).await.unwrap().done);
    fresh.close().await.unwrap();
    client.close().await.unwrap();
    dir.assert_no_process_left();
}

#[tokio::test]
async fn a_full_server_answers_the_rust_client_with_openenvs_capacity_code() {
    let dir = EnvCopy::of("echo_openenv");
    let mut first = GenericOpenEnvClient::load(process(&dir).env_var("MAX_CONCURRENT_ENVS", "1"), Transport::WebSocket).await.unwrap();
    first.reset(json!({})).await.unwrap();
    let mut second = GenericOpenEnvClient::attach(first.environment(), Transport::WebSocket).await.unwrap();
    match second.reset(json!({})).await.unwrap_err() {
        Error::Session { code, .. } => assert_eq!(code, "CAPACITY_REACHED"),
        other => panic!("expected the capacity answer, got {other:?}"),
    }
    // Later calls on the refused session say it has ended, with the same reason.
    assert!(matches!(second.state().await.unwrap_err(), Error::Session { code, .. } if code == "CAPACITY_REACHED"));
    second.close().await.unwrap();
    first.step(&json!({"message": "still mine"})).await.unwrap();
    first.close().await.unwrap();
    dir.assert_no_process_left();
}

/// A Rayfine-built image: the server there requires the environment's token, which the client
/// sends with the WebSocket upgrade; closing the client removes the container.
#[tokio::test]
async fn the_rust_client_starts_a_rayfine_image_and_removes_it_on_close() {
    let scope = DockerScope::new("openenv-rayfine-image");
    let dir = EnvCopy::of("echo_openenv");
    let tag = scope.tag("echo-openenv");
    scope.builder(crate::docker_util::BASE_IMAGE).build(dir.path(), &tag).await.unwrap();
    let mut client = OpenEnvClient::<EchoAction, EchoObservation>::load(scope.options(&tag), Transport::Auto).await.unwrap();
    assert_eq!(client.transport(), Transport::WebSocket);
    assert!(client.environment().token().is_some(), "a Docker environment has a token");
    client.reset(json!({"episode_id": "in-docker"})).await.unwrap();
    let stepped = client.step(&echo("docker")).await.unwrap();
    assert_eq!(stepped.observation.message_length, 6);
    assert_eq!(client.state().await.unwrap(), json!({"episode_id": "in-docker", "step_count": 1}));
    client.close().await.unwrap();
    scope.assert_no_container_left(Duration::from_secs(15));
    scope.finish();
}

#[derive(Serialize)]
struct WordAction {
    word: String,
}

#[derive(Deserialize, Debug)]
struct WordObservation {
    word: String,
    letters: u64,
    total_letters: u64,
}

/// An environment written for OpenEnv's own server, in OpenEnv's layout (Dockerfile in
/// `server/`), built offline on a base with openenv installed from the host.
#[tokio::test]
async fn an_openenv_image_is_built_with_its_own_dockerfile_and_driven_by_the_rust_client() {
    let scope = DockerScope::new("openenv-native");
    let dir = EnvCopy::of("openenv_native");
    let tag = scope.tag("letters");
    let built = scope.builder(OPENENV_IMAGE).dockerfile("server/Dockerfile").build(dir.path(), &tag).await.unwrap();
    assert_eq!(built.env_type, EnvType::Http, "{}", built.reason);
    assert!(built.reason.contains("uvicorn"), "{}", built.reason);

    let mut client = OpenEnvClient::<WordAction, WordObservation>::load(scope.options(&tag), Transport::Auto).await.unwrap();
    assert_eq!(client.transport(), Transport::WebSocket, "OpenEnv's server has /ws");
    let env = client.environment().clone();
    assert_eq!(env.env_type(), EnvType::Http);
    let ready = client.reset(json!({"episode_id": "native"})).await.unwrap();
    assert_eq!((ready.observation.total_letters, ready.done), (0, false));
    let first = client.step(&WordAction { word: "hello".into() }).await.unwrap();
    assert_eq!((first.observation.word.as_str(), first.observation.letters, first.reward), ("hello", 5, Some(5.0)));
    let second = client.step(&WordAction { word: "episode".into() }).await.unwrap();
    assert_eq!(second.observation.total_letters, 12, "the WebSocket session keeps its instance");
    let last = client.step(&WordAction { word: "finished".into() }).await.unwrap();
    assert!(last.done, "20 letters end the episode: {last:?}");
    let state = client.state().await.unwrap();
    assert_eq!((state["episode_id"].as_str(), state["step_count"].as_u64()), (Some("native"), Some(3)));
    // OpenEnv's server validates the action with its pydantic model.
    let mut generic = GenericOpenEnvClient::attach(&env, Transport::WebSocket).await.unwrap();
    generic.reset(json!({})).await.unwrap();
    assert!(matches!(generic.step(&json!({"letters": 3})).await.unwrap_err(), Error::InvalidArguments { .. }));
    generic.close().await.unwrap();

    // Its HTTP routes, and the same server through EnvironmentWrapper: `state` takes GET only,
    // which the wrapper learns from /openapi.json after one refused POST.
    let mut http = GenericOpenEnvClient::attach(&env, Transport::Http).await.unwrap();
    let stepped = http.step(&json!({"word": "abc"})).await.unwrap();
    assert_eq!(stepped.observation["letters"], 3);
    assert!(http.state().await.unwrap().get("step_count").is_some());
    http.close().await.unwrap();
    let stepped = env.call("step", json!({"action": {"word": "wxyz"}})).await.unwrap();
    assert_eq!((stepped["observation"]["letters"].clone(), stepped["reward"].clone()), (json!(4), json!(4.0)));
    assert!(env.call("state", json!({})).await.unwrap().get("episode_id").is_some());
    assert_eq!(env.call_get("health", json!({}), None).await.unwrap(), json!({"status": "healthy"}));
    let methods = env.list_methods().await.unwrap();
    let state = methods.iter().find(|m| m.name == "state").expect("state listed");
    assert_eq!(state.endpoint, "GET /state");
    assert!(methods.iter().any(|m| m.name == "step" && m.endpoint == "/step"), "{methods:?}");

    client.close().await.unwrap();
    scope.assert_no_container_left(Duration::from_secs(15));
    scope.finish();
}

/// The CLI on the same kind of image, kept: the record remembers that it is HTTP-based, a
/// GET-only route is called (found from /openapi.json, or asked with --get), `ps --json` shows
/// its URL.
#[test]
fn the_cli_builds_runs_and_calls_a_kept_openenv_image() {
    let scope = DockerScope::new("openenv-cli");
    let dir = EnvCopy::of("openenv_native");
    let state = tempfile::tempdir().unwrap();
    let tag = scope.tag("letters-cli");
    let name = format!("letters-{}", scope.id);
    // Whatever happens, the kept container goes with the test.
    let _remove = RemoveNamed(name.clone());

    let dockerfile = dir.path().join("server/Dockerfile");
    let (code, out, err) = cli(&["build", dir.path_str(), "-f", dockerfile.to_str().unwrap(), "-t", &tag, "--base-image", OPENENV_IMAGE, "--quiet"], state.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("http-based") && err.contains("uvicorn"), "{err}");
    let (code, out, err) = cli(&["build", dir.path_str(), "-f", "no/such/Dockerfile", "-t", &tag], state.path());
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no/such/Dockerfile") && err.contains("does not exist"), "{err}");

    let (code, out, err) = cli(&["run", &tag, "--keep", "--name", &name, "--json"], state.path());
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["call", &name, "step", "--kwargs", r#"{"action": {"word": "hey"}}"#, "--json"], state.path());
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((answer["result"]["observation"]["letters"].clone(), answer["result"]["reward"].clone()), (json!(3), json!(3.0)), "{out}");
    for args in [vec!["call", &name, "state", "--json"], vec!["call", &name, "state", "--get", "--json"]] {
        let (code, out, err) = cli(&args, state.path());
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let answer: Value = serde_json::from_str(&out).unwrap();
        assert!(answer["result"].get("step_count").is_some(), "{out}");
    }
    let (code, out, err) = cli(&["call", &name, "schema", "--get", "--json"], state.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"action\""), "{out}");
    let (code, out, err) = cli(&["methods", &name], state.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("step(") && out.contains("GET   state("), "{out}");

    let (code, out, err) = cli(&["ps", "--json"], state.path());
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let row = rows.iter().find(|r| r["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} not in {out}"));
    assert_eq!(row["env_type"], "http");
    assert!(row["url"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{row}");

    let (code, out, err) = cli(&["cleanup", &name], state.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(containers_named(&name).is_empty());
    scope.finish();
}

/// The containers Rayfine started under `name`.
fn containers_named(name: &str) -> Vec<String> {
    docker_lines(&["ps", "-aq", "--filter", &format!("label=rayfine.name={name}")])
}

/// Removes the containers named so on drop, for a test that fails half-way.
struct RemoveNamed(String);

impl Drop for RemoveNamed {
    fn drop(&mut self) {
        for id in containers_named(&self.0) {
            let _ = std::process::Command::new("docker").args(["rm", "-f", "-v", &id]).output();
        }
    }
}
