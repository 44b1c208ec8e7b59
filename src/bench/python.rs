//! What a trivial call costs from Python, beside the Rust client and affinetes' own client, all
//! calling the same server in the same run.
//!
//! The server runs without auth because affinetes' client sends no token; the Python side is
//! `python/bench/client_call_cost.py`, run with the interpreter that has `rayfine` installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use rayfine::{load_env, LoadOptions, ServerProgram};
use serde::Deserialize;

use super::floor::FloorServer;
use super::server::NoAuthServer;
use super::report::{median, percentile, Figure, Report, Row};
use super::Settings;

const PYTHON: &str = "Python client (one server without auth; calls one after another unless said)";

/// The script, relative to the repository root (where `rayfine bench` runs).
const SCRIPT: &str = "python/bench/client_call_cost.py";

/// What the script prints.
#[derive(Deserialize)]
struct PythonFigures {
    python: String,
    python_http_floor: Latency,
    rayfine_sync: Latency,
    rayfine_async: Latency,
    rayfine_async_throughput: Throughput,
    affinetes: Affinetes,
}

#[derive(Deserialize)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
}

#[derive(Deserialize)]
struct Throughput {
    per_second: f64,
    in_flight: u32,
    seconds: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Affinetes {
    Measured {
        p50_us: f64,
        p99_us: f64,
        version: String,
    },
    Skipped {
        skipped: String,
    },
}

/// The interpreter to run the script with: `RAYFINE_BENCH_PYTHON`, else `python3`.
fn interpreter() -> PathBuf {
    std::env::var_os("RAYFINE_BENCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("python3"))
}

/// Why the section cannot run here, if it cannot: no script, or no `rayfine` in that Python.
fn missing(python: &Path) -> Option<String> {
    if !Path::new(SCRIPT).is_file() {
        return Some(format!("{SCRIPT} is not here: run `rayfine bench` from the repository root"));
    }
    let probe = Command::new(python).args(["-c", "import rayfine._rayfine"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match probe {
        Ok(status) if status.success() => None,
        Ok(_) => Some(format!("`{}` cannot import rayfine: `pip install ./python` (or set RAYFINE_BENCH_PYTHON)", python.display())),
        Err(err) => Some(format!("cannot run `{}`: {err}", python.display())),
    }
}

/// The Rust client's sequential `ping`s against `url`: microseconds each.
async fn rust_client_calls(url: &str, calls: usize) -> anyhow::Result<Vec<f64>> {
    let env = load_env(LoadOptions::url(url)).await?;
    let outcome = super::calls::sequential_pings(&env, 200, calls).await;
    env.cleanup().await?;
    Ok(outcome?)
}

pub async fn python_clients(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let python = interpreter();
    if let Some(why) = missing(&python) {
        report.skipped.push(format!("Python client: {why}"));
        return Ok(());
    }
    let program = ServerProgram::locate()?;
    let server = NoAuthServer::start(&settings.env_folder, &program, &[])?;
    let floor = FloorServer::start()?;
    let calls = settings.library_calls;
    let seconds = if settings.library_calls < 1000 { 1 } else { 3 };

    let rust = rust_client_calls(&server.url, calls).await?;
    let output = Command::new(&python)
        .arg(SCRIPT)
        .args(["--url", &server.url, "--echo-url", &floor.url("/echo")])
        .args(["--calls", &calls.to_string(), "--seconds", &seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {SCRIPT}"))?;
    if !output.status.success() {
        bail!("{SCRIPT} failed ({})", output.status);
    }
    let figures: PythonFigures = serde_json::from_slice(&output.stdout).with_context(|| format!("{SCRIPT} printed something other than its figures"))?;
    drop(floor);
    drop(server);

    report.settings.push(format!(
        "Python client: Python {}, {calls} sequential calls after 200 warm-up calls per client; throughput over {} s",
        figures.python, figures.rayfine_async_throughput.seconds
    ));
    let (rust_p50, rust_p99) = (median(&rust), percentile(&rust, 99.0));
    let rust_floor = ("Rust client, `EnvironmentWrapper::call`", Figure::micros(rust_p50), Some(Figure::micros(rust_p99)));
    report.push(
        Row::new(PYTHON, "Rust client `EnvironmentWrapper::call(\"ping\")`, p50", Figure::micros(rust_p50))
            .p99(Figure::micros(rust_p99))
            .floor("Python `http.client` POST to the echo", Figure::micros(figures.python_http_floor.p50_us), Some(Figure::micros(figures.python_http_floor.p99_us))),
    );
    let sync = &figures.rayfine_sync;
    let sync_row = Row::new(PYTHON, "`env.ping()` (rayfine, sync), p50", Figure::micros(sync.p50_us))
        .p99(Figure::micros(sync.p99_us))
        .floor(rust_floor.0, rust_floor.1, rust_floor.2)
        .target("≤ Rust client + 30 µs", sync.p50_us <= rust_p50 + 30.0);
    let affinetes_row = match &figures.affinetes {
        Affinetes::Measured { p50_us, p99_us, version } => {
            Some(
                Row::new(PYTHON, format!("`await env.ping()` (affinetes {version}, URL mode), p50"), Figure::micros(*p50_us))
                    .p99(Figure::micros(*p99_us))
                    .floor("rayfine sync `env.ping()`", Figure::micros(sync.p50_us), Some(Figure::micros(sync.p99_us)))
                    .target("rayfine sync ≥ 5× faster", *p50_us >= 5.0 * sync.p50_us),
            )
        }
        Affinetes::Skipped { skipped } => {
            report.skipped.push(format!("Python client, affinetes row: {skipped}"));
            None
        }
    };
    report.push(sync_row);
    let asynchronous = &figures.rayfine_async;
    report.push(
        Row::new(PYTHON, "`await env.ping()` (rayfine.aio), p50", Figure::micros(asynchronous.p50_us))
            .p99(Figure::micros(asynchronous.p99_us))
            .floor(rust_floor.0, rust_floor.1, rust_floor.2),
    );
    if let Some(row) = affinetes_row {
        report.push(row);
    }
    let throughput = &figures.rayfine_async_throughput;
    report.push(
        Row::new(PYTHON, format!("rayfine.aio calls/s from one loop, {} in flight", throughput.in_flight), Figure::per_second(throughput.per_second))
            .target("≥ 10,000/s", throughput.per_second >= 10_000.0),
    );
    Ok(())
}
