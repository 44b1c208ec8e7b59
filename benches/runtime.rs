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
