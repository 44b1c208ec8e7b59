//! However the owning program ends, nothing it started is left: normal exit, panic, SIGINT,
//! SIGTERM, SIGKILL, each repeated, in process mode and in Docker; and an owner that is frozen
//! (SIGSTOP: its connections stay open, so only the lease can tell) loses its environments
//! within the lease.

use std::process::Child;
use std::time::{Duration, Instant};

use rayfine::{load_env, LoadOptions, Mode};
use serde_json::json;

use crate::docker_util::{DockerScope, BASE_IMAGE, SCOPE_LABEL};
use crate::util::{in_child, spawn_child, wait_for_line, EnvCopy};

/// Trials per way of ending.
const TRIALS: usize = 3;

#[derive(Clone, Copy, Debug)]
enum End {
    Exit,
    Panic,
    Signal(i32, &'static str),
}

const ENDS: [End; 5] =
    [End::Exit, End::Panic, End::Signal(libc::SIGINT, "SIGINT"), End::Signal(libc::SIGTERM, "SIGTERM"), End::Signal(libc::SIGKILL, "SIGKILL")];

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Exit => "normal exit",
            End::Panic => "panic",
            End::Signal(_, name) => name,
        }
    }
    fn child_mode(self) -> &'static str {
        match self {
            End::Exit => "exit",
            End::Panic => "panic",
            End::Signal(..) => "wait",
        }
    }
}

/// What a trial's environments are, and how to see whether any is left.
trait Owned {
    fn child_env(&self) -> Vec<(&'static str, String)>;
    /// Leftovers, waiting up to `within` for them to go.
    fn left_after(&self, within: Duration) -> Vec<String>;
}

struct ProcessEnvs(EnvCopy);

impl Owned for ProcessEnvs {
    fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![("RAYFINE_TEST_MODE", "process".into()), ("RAYFINE_TEST_SOURCE", self.0.path_str().into())]
    }
    fn left_after(&self, within: Duration) -> Vec<String> {
        // The owner's end SIGKILLs the worker: give such leftovers the kernel's time.
        crate::util::wait_until_gone(within, || self.0.processes())
    }
}

struct DockerEnvs<'a> {
    scope: &'a DockerScope,
    image: String,
}

impl Owned for DockerEnvs<'_> {
    fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![("RAYFINE_TEST_MODE", "docker".into()), ("RAYFINE_TEST_SOURCE", self.image.clone()), ("RAYFINE_TEST_SCOPE", self.scope.id.clone())]
    }
    fn left_after(&self, within: Duration) -> Vec<String> {
        wait_until_empty(within, || self.scope.containers())
    }
}

fn wait_until_empty(within: Duration, list: impl Fn() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = list();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_owner(owned: &dyn Owned, mode: &str, lease: Option<&str>) -> Child {
    let mut vars = owned.child_env();
    vars.push(("RAYFINE_TEST_END", mode.into()));
    if let Some(lease) = lease {
        vars.push(("RAYFINE_TEST_LEASE", lease.into()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child = spawn_child("lifecycle::child_owns_two_environments", &vars);
    wait_for_line(&mut child, "LOADED", Duration::from_secs(90));
    child
}

/// Runs every way of ending `TRIALS` times; returns one line per way and the leaks found.
fn fault_matrix(owned: &dyn Owned, label: &str) -> (Vec<String>, Vec<String>) {
    let mut summary = Vec::new();
    let mut leaks = Vec::new();
    for end in ENDS {
        let mut leaked = 0;
        for trial in 0..TRIALS {
            let mut child = start_owner(owned, end.child_mode(), None);
            if let End::Signal(signal, _) = end {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(child.id() as i32, signal) };
            }
            let status = child.wait().unwrap();
            if matches!(end, End::Exit) {
                assert!(status.success(), "{label}: the owner failed on its own: {status:?}");
            }
            let left = owned.left_after(Duration::from_secs(20));
            if !left.is_empty() {
                leaked += 1;
                leaks.push(format!("{label}, {}, trial {trial}: {}", end.name(), left.join("; ")));
            }
        }
        summary.push(format!("{label:7} {:12} trials {TRIALS}  leaks {leaked}", end.name()));
    }
    (summary, leaks)
}

/// SIGSTOP: the owner's sockets and pipes stay open, so neither stdin's end nor a closed attach
/// connection tells the server; the lapsed lease does. Returns how long the environments took to go.
fn frozen_owner_loses_its_environments(owned: &dyn Owned) -> Duration {
    let mut child = start_owner(owned, "wait", Some("2"));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let frozen = Instant::now();
    let left = owned.left_after(Duration::from_secs(30));
    let took = frozen.elapsed();
    // SAFETY: as above; SIGKILL also ends a stopped process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(left.is_empty(), "a frozen owner's environments outlived a 2 s lease by {took:?}: {left:?}");
    took
}

#[test]
fn no_process_is_left_however_the_owner_ends() {
    let env = ProcessEnvs(EnvCopy::of("echo"));
    let (summary, leaks) = fault_matrix(&env, "process");
    let took = frozen_owner_loses_its_environments(&env);
    println!("{}\nprocess SIGSTOP (2 s lease): gone after {took:?}", summary.join("\n"));
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}

#[test]
fn no_container_is_left_however_the_owner_ends() {
    let scope = DockerScope::new("lifecycle");
    let env_dir = EnvCopy::of("echo");
    let image = scope.tag("echo");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scope.builder(BASE_IMAGE).build(env_dir.path(), &image)).unwrap();
    let envs = DockerEnvs { scope: &scope, image };
    let (summary, leaks) = fault_matrix(&envs, "docker");
    let took = frozen_owner_loses_its_environments(&envs);
    println!("{}\ndocker SIGSTOP (2 s lease): gone after {took:?}", summary.join("\n"));
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    scope.finish();
}

#[tokio::test]
#[ignore = "run by the tests above in a child process"]
async fn child_owns_two_environments() {
    if !in_child() {
        return;
    }
    let _cleanup = rayfine::CleanupGuard::new();
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let source = var("RAYFINE_TEST_SOURCE");
    let options = |i: usize| {
        let mut options = match var("RAYFINE_TEST_MODE").as_str() {
            "process" => LoadOptions::folder(&source).mode(Mode::Process),
            _ => LoadOptions::image(&source).label(SCOPE_LABEL, var("RAYFINE_TEST_SCOPE")),
        };
        options = options.name(format!("owned-{i}"));
        if let Ok(seconds) = var("RAYFINE_TEST_LEASE").parse::<f64>() {
            options = options.lease(Duration::from_secs_f64(seconds));
        }
        options
    };
    let (a, b) = tokio::join!(load_env(options(0)), load_env(options(1)));
    let (a, b) = (a.unwrap(), b.unwrap());
    // One environment busy in a call, one idle: both must go.
    let busy = tokio::spawn(async move { a.call("slow_echo", json!({"text": "x", "delay": 600})).await });
    assert_eq!(b.call("ping", json!({})).await.unwrap(), "pong");
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("LOADED");
    match var("RAYFINE_TEST_END").as_str() {
        "exit" => busy.abort(),
        "panic" => panic!("deliberate panic while owning environments"),
        _ => {
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    }
}
