//! Benchmarks of the in-container server and process-mode start-up. Prints figures, asserts
//! nothing: the machine is noisy, so read medians and ratios.
//!
//! ```text
//! cargo bench --bench runtime
//! ```
//!
//! - Call cost and throughput: `wrk` (Debian package `wrk`) over loopback against the release
//!   `rayfine-server` on `environments/echo`, beside `GET /health` on the same server, which
//!   answers without the worker (the HTTP floor of this machine and load tool).
//! - Cold start: process-mode `load_env` until the first call answers, beside `python3 -c pass`.
//! - Docker (needs `bash .ci/setup`): `load_env(image)` until the first call answers, beside
//!   `docker run` of the same image until its `/health` says ready; image builds: stage 2 on a
//!   cached stage 1, and a rebuild of an unchanged environment.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WRK_SECONDS: &str = "5s";
const COLD_STARTS: usize = 15;

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("calls") {
        calls();
    }
    if wants("cold_start") {
        cold_start();
    }
    if wants("docker") {
        docker();
    }
}

const DOCKER_BASE: &str = "rayfine-test/python:bookworm";
const DOCKER_TAG: &str = "rayfine-bench/echo:latest";
const DOCKER_STARTS: usize = 10;

fn docker() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/environments/echo");
    let builder = || rayfine::ImageBuilder::new().base_image(DOCKER_BASE).quiet(true);
    let timed = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    // First build (not timed: depends on what the engine has cached), then the two build figures.
    runtime.block_on(builder().build(folder, DOCKER_TAG)).expect("build the bench image (run `bash .ci/setup` first)");
    let mut stage2 = Vec::new();
    let mut rebuild = Vec::new();
    for _ in 0..5 {
        let removed = Command::new("docker").args(["image", "rm", "-f", DOCKER_TAG]).output().expect("docker");
        assert!(removed.status.success());
        stage2.push(timed(&|| drop(runtime.block_on(builder().build(folder, DOCKER_TAG)).unwrap())));
        rebuild.push(timed(&|| drop(runtime.block_on(builder().build(folder, DOCKER_TAG)).unwrap())));
    }

    // Interleaved, so drift of the machine hits both alike.
    let mut floor = Vec::new();
    let mut loads = Vec::new();
    for _ in 0..DOCKER_STARTS {
        floor.push(docker_run_until_ready());
        loads.push(runtime.block_on(async {
            let t = Instant::now();
            let env = rayfine::load_env(rayfine::LoadOptions::image(DOCKER_TAG)).await.expect("load_env");
            env.call("ping", serde_json::json!({})).await.expect("first call");
            let elapsed = t.elapsed();
            env.cleanup().await.unwrap();
            elapsed
        }));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (floor, load) = (median(floor), median(loads));
    println!("\n## Docker (median of {DOCKER_STARTS} starts, 5 builds; base {DOCKER_BASE})\n");
    println!("| what | median |");
    println!("|---|---:|");
    println!("| floor: `docker run -d -p 127.0.0.1::8000` until `/health` is 200 | {:.0} ms |", ms(floor));
    println!("| `load_env(image)` → first call answered | {:.0} ms |", ms(load));
    println!("| over the floor | {:.0} ms |", ms(load) - ms(floor));
    println!("| build: stage 2 on a cached stage 1 | {:.0} ms |", ms(median(stage2)));
    println!("| build: rebuild of an unchanged environment | {:.0} ms |", ms(median(rebuild)));
    let _ = Command::new("docker").args(["image", "rm", "-f", DOCKER_TAG, &format!("{DOCKER_TAG}-base")]).output();
}

/// `docker run` of the bench image (auth off, as the bare floor has no token), polled until its
/// `/health` answers 200: the same readiness `load_env` waits for. The container is removed after.
fn docker_run_until_ready() -> Duration {
    let t = Instant::now();
    let run = Command::new("docker")
        .args(["run", "-d", "--rm", "-e", "RAYFINE_NO_AUTH=1", "-p", "127.0.0.1::8000", "--label", "rayfine.managed=true", DOCKER_TAG])
        .output()
        .expect("docker run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let id = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let port = Command::new("docker").args(["port", &id, "8000/tcp"]).output().expect("docker port");
    let port = String::from_utf8_lossy(&port.stdout).lines().next().and_then(|l| l.rsplit(':').next()).and_then(|p| p.trim().parse::<u16>().ok()).expect("a port");
    loop {
        if health_ok(port) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t.elapsed();
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    elapsed
}

fn health_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

struct WrkFigures {
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
    errors: u64,
}

fn wrk(url: &str, connections: u32, script: Option<&str>) -> WrkFigures {
    let threads = connections.clamp(1, 2).to_string();
    let connections_arg = connections.to_string();
    let mut command = Command::new("wrk");
    command.args(["-t", &threads, "-c", &connections_arg, "-d", WRK_SECONDS, "--latency"]);
    if let Some(script) = script {
        command.args(["-s", script]);
    }
    let output = command.arg(url).output().unwrap_or_else(|err| panic!("cannot run wrk ({err}); install it: apt-get install wrk"));
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| -> Option<&str> { text.lines().map(str::trim).find(|l| l.starts_with(prefix)).and_then(|l| l.split_whitespace().nth(1)) };
    let micros = |v: &str| -> f64 {
        let (number, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = number.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n,
            "ms" => n * 1e3,
            "s" => n * 1e6,
            _ => f64::NAN,
        }
    };
    let errors = text.lines().find(|l| l.contains("Non-2xx")).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0);
    WrkFigures {
        p50_us: field("50%").map(micros).unwrap_or(f64::NAN),
        p99_us: field("99%").map(micros).unwrap_or(f64::NAN),
        per_second: text.lines().find(|l| l.starts_with("Requests/sec")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(f64::NAN),
        errors,
    }
}

fn calls() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut server = Command::new(env!("CARGO_BIN_EXE_rayfine-server"))
        .args(["--host", "127.0.0.1", "--port", "0", "--env-path", &format!("{repo}/environments/echo"), "--exit-on-stdin-eof"])
        .env("RUST_LOG", "error")
        .env_remove("RAYFINE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start rayfine-server");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let listening: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready", "the echo environment did not load");
    let base = format!("http://127.0.0.1:{}", listening["port"]);
    let scripts = tempfile::tempdir().unwrap();
    let script = |method: &str| {
        let path = scripts.path().join(format!("{method}.lua"));
        std::fs::write(
            &path,
            format!("wrk.method = \"POST\"\nwrk.body = '{{\"method\":\"{method}\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let (sync_script, async_script) = (script("ping"), script("aping"));
    println!("\n## Call cost and throughput (wrk over loopback, {WRK_SECONDS} per row, environments/echo)\n");
    println!("| what | connections | p50 | p99 | calls/s | non-2xx |");
    println!("|---|---:|---:|---:|---:|---:|");
    let rows: [(&str, &str, Option<&str>); 3] =
        [("floor: GET /health (no worker)", "/health", None), ("sync `ping`", "/call", Some(&sync_script)), ("async `aping`", "/call", Some(&async_script))];
    for connections in [1, 64] {
        for (label, path, script) in rows {
            let f = wrk(&format!("{base}{path}"), connections, script);
            println!("| {label} | {connections} | {:.0} µs | {:.0} µs | {:.0} | {} |", f.p50_us, f.p99_us, f.per_second, f.errors);
        }
    }
    drop(server.stdin.take());
    let _ = server.wait();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn cold_start() {
    let python: Vec<Duration> = (0..COLD_STARTS)
        .map(|_| {
            let t = Instant::now();
            let status = Command::new("python3").args(["-c", "pass"]).status().expect("python3 runs");
            assert!(status.success());
            t.elapsed()
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/environments/echo");
    std::env::set_var("RAYFINE_SERVER_BIN", env!("CARGO_BIN_EXE_rayfine-server"));
    let loads: Vec<Duration> = (0..COLD_STARTS)
        .map(|_| {
            runtime.block_on(async {
                let t = Instant::now();
                let env = rayfine::load_env(rayfine::LoadOptions::folder(folder).mode(rayfine::Mode::Process)).await.expect("load_env");
                env.call("ping", serde_json::json!({})).await.expect("first call");
                let elapsed = t.elapsed();
                env.cleanup().await.unwrap();
                elapsed
            })
        })
        .collect();
    let (floor, load) = (median(python), median(loads));
    println!("\n## Cold start, process mode (median of {COLD_STARTS})\n");
    println!("| what | median |");
    println!("|---|---:|");
    println!("| floor: `python3 -c pass` | {:.1} ms |", floor.as_secs_f64() * 1e3);
    println!("| `load_env(folder)` → first call answered | {:.1} ms |", load.as_secs_f64() * 1e3);
    println!("| over the floor | {:.1} ms |", (load.as_secs_f64() - floor.as_secs_f64()) * 1e3);
}
