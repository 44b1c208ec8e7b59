//! What a call costs and how many one environment serves: wrk against a process-mode environment
//! (the same server binary and worker as in a container, without Docker's port proxy in the way),
//! beside the plain echo server.

use std::path::Path;
use std::time::{Duration, Instant};

use rayfine::EnvironmentWrapper;

use super::cpu;
use super::floor::FloorServer;
use super::cpu::CpuClock;
use super::hop::{self, Waiting};
use super::report::{median, percentile, Figure, Report, Row};
use super::wrk::{self, Load, Measured};
use super::Settings;

const CALL_COST: &str = "Call cost (one connection)";
const THROUGHPUT: &str = "Throughput (one environment)";
const SCALE: &str = "Concurrency at scale (2,048 connections, each call sleeps 1 s)";

/// The environment under load: its URL and token, and its server's process when local.
pub struct Target<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub pid: Option<u32>,
}

/// CPU per call of one wrk run, by who spent it, in microseconds.
struct CpuPerCall {
    server: f64,
    worker: f64,
    caller: f64,
}

impl CpuPerCall {
    fn total(&self) -> f64 {
        self.server + self.worker + self.caller
    }
}

/// Runs `run` and divides the CPU each party spent by the calls it answered: the server process
/// `pid` and the processes it started (the worker), or, with no pid, this process (the floor's
/// in-process echo server); the caller is wrk, the one child waited for meanwhile.
fn cpu_per_call(pid: Option<u32>, run: impl FnOnce() -> anyhow::Result<Measured>) -> anyhow::Result<(Measured, CpuPerCall)> {
    let processes = pid.map(cpu::ServerProcesses::of);
    let server_cpu = || processes.as_ref().map_or_else(|| cpu::of_self(false), cpu::ServerProcesses::server);
    let worker_cpu = || processes.as_ref().map_or(Duration::ZERO, cpu::ServerProcesses::workers);
    let (server, worker, caller) = (server_cpu(), worker_cpu(), cpu::of_self(true));
    let measured = run()?;
    let calls = measured.requests.max(1) as f64;
    let per_call = |spent: Duration| spent.as_secs_f64() * 1e6 / calls;
    let cpu = CpuPerCall { server: per_call(server_cpu() - server), worker: per_call(worker_cpu() - worker), caller: per_call(cpu::of_self(true) - caller) };
    Ok((measured, cpu))
}

fn body(method: &str, kwargs: &str) -> String {
    format!(r#"{{"method":"{method}","kwargs":{kwargs}}}"#)
}

fn measure(url: &str, token: Option<&str>, body: &str, connections: u32, duration: Duration, scratch: &Path) -> anyhow::Result<Measured> {
    let timeout = if connections >= 1024 { Duration::from_secs(5) } else { Duration::from_secs(2) };
    wrk::run(&Load { url, connections, duration, body: Some(body), token, timeout }, scratch)
}

/// Trivial sync and async calls at one connection, beside the echo floor.
pub fn call_cost(settings: &Settings, env: &Target<'_>, floor: &FloorServer, report: &mut Report, scratch: &Path) -> anyhow::Result<()> {
    let duration = settings.wrk_duration;
    report.settings.push(format!("call cost: {}; one warm-up run first", wrk::describe(1, duration)));
    let call_url = format!("{}/call", env.url);
    let ping = body("ping", "{}");
    let clock = CpuClock::now();
    // Warm-up: connections, the worker's first call, CPU frequency.
    measure(&call_url, env.token, &ping, 1, Duration::from_secs(1), scratch)?;
    let echo = measure(&floor.url("/echo"), None, &ping, 1, duration, scratch)?;
    for (what, method) in [("trivial sync call (`ping`), p50", "ping"), ("trivial async call (`aping`), p50", "aping")] {
        let m = measure(&call_url, env.token, &body(method, "{}"), 1, duration, scratch)?;
        // Round two's target (issue 15): ratios to the same run's floor, which move with the machine.
        let met = m.p50_us <= 1.2 * echo.p50_us && m.p99_us <= 2.0 * echo.p99_us && m.bad_status == 0;
        report.push(
            Row::new(CALL_COST, what, Figure::micros(m.p50_us))
                .p99(Figure::micros(m.p99_us))
                .floor("plain HTTP echo (axum)", Figure::micros(echo.p50_us), Some(Figure::micros(echo.p99_us)))
                .target("p50 ≤ 1.2× floor, p99 ≤ 2× floor's", met),
        );
    }
    // The hop a call adds to the echo's, without Rayfine: when the ratio above moves between
    // machines, these say whether the machine moved. Not a floor to compare with (a call that
    // polls pays less than this hop), so they stand alone.
    let rounds = hop::rounds_for(duration);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (waiting, how) in [(Waiting::Sleeping, "both sides sleeping until a message comes"), (Waiting::Polling, "both sides polling")] {
        if waiting == Waiting::Polling && cores < 2 {
            report.skipped.push("pipe round trip with both sides polling: one core, where two pollers cannot both run".into());
            continue;
        }
        match hop::round_trips(waiting, rounds / 10, rounds, 4 * duration) {
            Ok(took) => report.push(
                Row::new(CALL_COST, format!("round trip to a `python3` over a pipe, {how}, p50 (no Rayfine: the hop a call adds)"), Figure::micros(median(&took)))
                    .p99(Figure::micros(percentile(&took, 99.0))),
            ),
            Err(err) => report.skipped.push(format!("pipe round trip, {how}: {err:#}")),
        }
    }
    if let (Some(before), Some(after)) = (clock, CpuClock::now()) {
        report.push(Row::new(CALL_COST, "CPU time the hypervisor kept from this VM (steal) while the rows above ran", Figure::percent(after.steal_percent_since(before))));
    }
    Ok(())
}

/// The trivial call as a Rust program makes it, `EnvironmentWrapper::call`, one after another,
/// beside the same HTTP client posting to the echo floor: what the library adds to the wire.
pub async fn library_call_cost(settings: &Settings, env: &EnvironmentWrapper, floor: &FloorServer, report: &mut Report) -> anyhow::Result<()> {
    let calls = settings.library_calls;
    report.settings.push(format!("library call: {calls} sequential `EnvironmentWrapper::call(\"ping\")`s after 100 warm-up calls"));
    let took = sequential_pings(env, 100, calls).await?;
    let client = reqwest::Client::new();
    let echo_url = floor.url("/echo");
    let mut floor_took = Vec::with_capacity(calls);
    for round in 0..calls + 100 {
        let started = Instant::now();
        client.post(&echo_url).body(body("ping", "{}")).send().await?.error_for_status()?.bytes().await?;
        if round >= 100 {
            floor_took.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    report.push(
        Row::new(CALL_COST, "`EnvironmentWrapper::call(\"ping\")` from Rust, p50", Figure::micros(median(&took)))
            .p99(Figure::micros(percentile(&took, 99.0)))
            .floor("reqwest POST to the echo", Figure::micros(median(&floor_took)), Some(Figure::micros(percentile(&floor_took, 99.0)))),
    );
    Ok(())
}

/// Microseconds of each of `calls` sequential `ping`s through `env`, after `warmup` untimed ones.
pub async fn sequential_pings(env: &EnvironmentWrapper, warmup: usize, calls: usize) -> rayfine::Result<Vec<f64>> {
    for _ in 0..warmup {
        env.call("ping", serde_json::json!({})).await?;
    }
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        env.call("ping", serde_json::json!({})).await?;
        took.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(took)
}

/// Calls per second of the trivial sync call at 1, 16, 64 and 256 connections.
pub fn throughput(settings: &Settings, env: &Target<'_>, floor: &FloorServer, report: &mut Report, scratch: &Path) -> anyhow::Result<()> {
    let call_url = format!("{}/call", env.url);
    let ping = body("ping", "{}");
    report.settings.push(format!("throughput: {}, and the same at 16 and 256 connections, and at 1 with one thread", wrk::describe(64, settings.throughput_duration)));
    for connections in [1u32, 16, 64, 256] {
        let (echo, echo_cpu) = cpu_per_call(None, || measure(&floor.url("/echo"), None, &ping, connections, settings.throughput_duration, scratch))?;
        let (m, m_cpu) = cpu_per_call(env.pid, || measure(&call_url, env.token, &ping, connections, settings.throughput_duration, scratch))?;
        let mut row = Row::new(THROUGHPUT, format!("sync `ping`, {connections} connection{}", if connections == 1 { "" } else { "s" }), Figure::per_second(m.per_second))
            .p99(Figure::micros(m.p99_us))
            .floor("plain HTTP echo (axum)", Figure::per_second(echo.per_second), Some(Figure::micros(echo.p99_us)));
        if connections == 64 {
            row = row.target("≥ 70% of floor", m.per_second >= 0.7 * echo.per_second && m.bad_status == 0);
        }
        if m.bad_status > 0 || m.failures > 0 {
            row.what.push_str(&format!(" ({} errors, {} failures)", m.bad_status, m.failures));
        }
        report.push(row);
        if connections == 64 && env.pid.is_some() {
            // What bounds the rate: calls/s ≤ cores × 10⁶ / (CPU µs per call, every party's).
            let what = |party: &str| format!("CPU per call at 64 connections: {party}");
            report.push(Row::new(THROUGHPUT, what("server"), Figure::micros(m_cpu.server)).floor("the echo server", Figure::micros(echo_cpu.server), None));
            report.push(Row::new(THROUGHPUT, what("worker"), Figure::micros(m_cpu.worker)));
            report.push(Row::new(THROUGHPUT, what("wrk"), Figure::micros(m_cpu.caller)).floor("wrk against the echo", Figure::micros(echo_cpu.caller), None));
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            report.push(
                Row::new(THROUGHPUT, what("all, and the calls/s the cores allow at that cost"), Figure::per_second(cores * 1e6 / m_cpu.total()))
                    .floor("the same for the echo", Figure::per_second(cores * 1e6 / echo_cpu.total()), None),
            );
        }
    }
    Ok(())
}

/// 2,048 connections, each calling an async method that sleeps one second.
///
/// wrk counts the answers that arrive within its run, so answers over run length undercounts by
/// the calls still in flight at the end and the ramp at the start: even the floor would miss
/// 2,048/s by a few percent. With every connection always waiting on one call, the steady-state
/// rate is connections / mean latency (Little's law), which has no such edge.
pub fn scale(settings: &Settings, env: &Target<'_>, floor: &FloorServer, report: &mut Report, scratch: &Path) -> anyhow::Result<()> {
    let connections = 2048u32;
    let duration = settings.scale_duration;
    report.settings.push(format!(
        "concurrency at scale: {} (5 s timeout); calls/s = connections / mean latency (Little's law)",
        wrk::describe(connections, duration)
    ));
    let call_url = format!("{}/call", env.url);
    let sleep = body("slow_echo", r#"{"text":"x","delay":1.0}"#);
    let floor_m = measure(&floor.url("/sleep"), None, &sleep, connections, duration, scratch)?;
    let m = measure(&call_url, env.token, &sleep, connections, duration, scratch)?;
    let rate = |m: &Measured| connections as f64 / (m.mean_us / 1e6);
    let (floor_rate, rate) = (rate(&floor_m), rate(&m));
    let floor_what = "plain HTTP server sleeping 1 s (axum)";
    report.push(
        Row::new(SCALE, format!("success rate ({} calls)", m.requests + m.failures), Figure::percent(m.success_percent()))
            .floor(floor_what, Figure::percent(floor_m.success_percent()), None)
            .target("100 %", m.success_percent() >= 100.0),
    );
    report.push(
        Row::new(SCALE, "latency", Figure::millis(m.p50_us / 1e3))
            .p99(Figure::millis(m.p99_us / 1e3))
            .floor(floor_what, Figure::millis(floor_m.p50_us / 1e3), Some(Figure::millis(floor_m.p99_us / 1e3)))
            .target("p99 ≤ 1.2 s", m.p99_us <= 1.2e6),
    );
    report.push(
        Row::new(SCALE, "calls per second", Figure::per_second(rate))
            .floor(floor_what, Figure::per_second(floor_rate), None)
            .target("≥ 1,950/s (limit 2,048/s)", rate >= 1950.0),
    );
    Ok(())
}
