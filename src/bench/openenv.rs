//! OpenEnv sessions at scale, by OpenEnv's own scaling method, and the cost of one WebSocket step
//! beside a trivial `/call` on the same server.
//!
//! The method is that of OpenEnv's scaling tutorial: N sessions start at once; each opens a
//! WebSocket to `/ws`, resets, steps once with a sync `time.sleep(w)` in the environment, and
//! closes. A session succeeds if nothing failed (connect, a timeout, an error frame); the figures
//! are the success rate and the P99 of a successful session's whole time, connect to closed. The
//! load comes from this process (Rust, tokio-tungstenite) rather than OpenEnv's Python script, so
//! that on two cores the client's own CPU time does not decide the result. The floor runs the
//! same sessions against a plain axum WebSocket server that sleeps `w` without blocking.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use rayfine::{load_env, LoadOptions, ServerProgram};
use tokio_tungstenite::tungstenite::Message;

use super::cpu::{self, ServerProcesses};
use super::floor::FloorServer;
use super::report::{median, percentile, Figure, Report, Row};
use super::server::NoAuthServer;
use super::Settings;

const SCALE: &str = "OpenEnv sessions at scale (OpenEnv's method: each session connects, resets, steps once sleeping 1 s, closes)";
const STEP: &str = "OpenEnv step cost (one session, steps one after another)";

/// The environment: OpenEnv's benchmark environment, relative to the repository root.
const BENCH_ENV: &str = "environments/openenv_benchmark";

/// How long one session may take before it counts as failed (OpenEnv's script: 120 s).
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

/// How a batch went.
struct Batch {
    sessions: usize,
    succeeded: usize,
    /// Whole-session times of the successful ones, in seconds.
    totals: Vec<f64>,
    /// When each phase of the successful ones ended, in seconds from their start.
    phases: [Vec<f64>; 4],
    /// One failure's reason, for the report.
    first_failure: Option<String>,
    /// CPU the batch cost, per party.
    cpu: BatchCpu,
}

/// CPU a batch cost: this process (the client, and the floor's server when it runs in here)
/// and the server under test with its worker. Two cores must fit all of it in the batch's span,
/// so `total ÷ cores` is the least time the last session can take, whatever the server does.
#[derive(Clone, Copy, Default)]
struct BatchCpu {
    this_process: Duration,
    server: Duration,
    worker: Duration,
}

impl BatchCpu {
    /// CPU used so far by this process and, when given, the server under test and its worker.
    fn now(processes: Option<&ServerProcesses>) -> BatchCpu {
        let (server, worker) = processes.map_or((Duration::ZERO, Duration::ZERO), |p| (p.server(), p.workers()));
        BatchCpu { this_process: cpu::of_self(false), server, worker }
    }

    /// What was spent since `before`; saturating, as a process that ended meanwhile (a worker
    /// restarted) reads as zero.
    fn since(self, before: BatchCpu) -> BatchCpu {
        BatchCpu {
            this_process: self.this_process.saturating_sub(before.this_process),
            server: self.server.saturating_sub(before.server),
            worker: self.worker.saturating_sub(before.worker),
        }
    }

    fn total(&self) -> Duration {
        self.this_process + self.server + self.worker
    }
}

/// How long to wait at most for a server to finish the last batch's work (closing thousands of
/// sessions' instances) before the next batch starts.
const SETTLE_LIMIT: Duration = Duration::from_secs(15);

/// Waits until the server and its worker have been nearly idle (under 5% of a core) for 200 ms,
/// so that one batch's clean-up is not charged to the next, or the floor's; at most SETTLE_LIMIT.
async fn settle(processes: Option<&ServerProcesses>) {
    let Some(processes) = processes else {
        // The floor's server is in here and has nothing left to do once its sessions closed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    };
    let window = Duration::from_millis(200);
    let started = Instant::now();
    let spent = |p: &ServerProcesses| p.server() + p.workers();
    let mut before = spent(processes);
    while started.elapsed() < SETTLE_LIMIT {
        tokio::time::sleep(window).await;
        let now = spent(processes);
        if now.saturating_sub(before) < window / 20 {
            return;
        }
        before = now;
    }
}

impl Batch {
    fn success_rate(&self) -> f64 {
        self.succeeded as f64 / self.sessions as f64
    }
}

/// The phases of a session, for `RAYFINE_BENCH_VERBOSE`: connected, reset answered, step
/// answered, closed.
const PHASES: [&str; 4] = ["connect", "reset", "step", "close"];

/// One session by OpenEnv's method; its whole time, and when each phase ended (from the start).
async fn session(ws_url: String, wait_seconds: f64) -> Result<(Duration, [Duration; 4]), String> {
    let started = Instant::now();
    let mut phases = [Duration::ZERO; 4];
    let run = async {
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(ws_url.as_str(), Some(client_config()), false).await.map_err(|err| format!("connect: {err}"))?;
        phases[0] = started.elapsed();
        for (i, request) in [r#"{"type":"reset","data":{}}"#.to_string(), format!(r#"{{"type":"step","data":{{"wait_seconds":{wait_seconds}}}}}"#)].into_iter().enumerate() {
            socket.send(Message::text(request)).await.map_err(|err| format!("send: {err}"))?;
            answer(&mut socket).await?;
            phases[i + 1] = started.elapsed();
        }
        socket.send(Message::text(r#"{"type":"close"}"#)).await.map_err(|err| format!("send close: {err}"))?;
        // The server answers `close` by closing: wait for that, as the client's `async with` does.
        while let Some(frame) = socket.next().await {
            if frame.is_err() {
                break;
            }
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(SESSION_TIMEOUT, run).await {
        Ok(Ok(())) => {
            phases[3] = started.elapsed();
            Ok((started.elapsed(), phases))
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Err(format!("no answer within {SESSION_TIMEOUT:?}")),
    }
}

/// The load's client reads as Rayfine's own does (`protocol::ws_client_config`): its CPU shares
/// the two cores with the server's, so what it wasted would be charged to the server.
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    rayfine::protocol::ws_client_config()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, which must not be an error frame.
async fn answer(socket: &mut Socket) -> Result<(), String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return if text.as_str().starts_with(r#"{"type":"error""#) { Err(format!("error frame: {text}")) } else { Ok(()) };
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed by the server: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(format!("receive: {err}")),
            None => return Err("the connection ended".into()),
        }
    }
}

/// `sessions` sessions at once against `ws_url`.
async fn batch(ws_url: &str, sessions: usize, wait_seconds: f64, processes: Option<&ServerProcesses>) -> Batch {
    let before = BatchCpu::now(processes);
    let tasks: Vec<_> = (0..sessions).map(|_| tokio::spawn(session(ws_url.to_string(), wait_seconds))).collect();
    let mut outcome = Batch { sessions, succeeded: 0, totals: Vec::with_capacity(sessions), phases: Default::default(), first_failure: None, cpu: BatchCpu::default() };
    for task in tasks {
        match task.await {
            Ok(Ok((total, phases))) => {
                outcome.succeeded += 1;
                outcome.totals.push(total.as_secs_f64());
                for (all, phase) in outcome.phases.iter_mut().zip(phases) {
                    all.push(phase.as_secs_f64());
                }
            }
            Ok(Err(why)) => {
                outcome.first_failure.get_or_insert(why);
            }
            Err(err) => {
                outcome.first_failure.get_or_insert(format!("the session's task failed: {err}"));
            }
        }
    }
    outcome.cpu = BatchCpu::now(processes).since(before);
    outcome
}

/// The worst of several repetitions: the lowest success rate, the highest P50 and P99; and the
/// CPU of the repetition with the highest P99.
struct Worst {
    success: f64,
    p50: f64,
    p99: f64,
    failure: Option<String>,
    cpu: BatchCpu,
}

/// `repetitions` batches, each after the server has finished the work the one before left;
/// after one uncounted batch first when `warm_up` is set.
async fn repeated(ws_url: &str, sessions: usize, wait_seconds: f64, repetitions: usize, warm_up: bool, processes: Option<&ServerProcesses>) -> Worst {
    let mut worst = Worst { success: 1.0, p50: 0.0, p99: 0.0, failure: None, cpu: BatchCpu::default() };
    // The first batch of a process is slower on both sides (measured: the floor's first 4,096
    // cost 5.1 s of CPU, the next ones 2.4–3.1 s) while its pools, tables and threads grow to
    // size, which a training loop that runs for days pays once. So it is not counted.
    if warm_up {
        settle(processes).await;
        let _ = batch(ws_url, sessions, wait_seconds, processes).await;
    }
    for _ in 0..repetitions {
        settle(processes).await;
        let outcome = batch(ws_url, sessions, wait_seconds, processes).await;
        if std::env::var_os("RAYFINE_BENCH_VERBOSE").is_some() {
            eprintln!(
                "{ws_url} {sessions}: success {:.4} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
                outcome.success_rate(),
                median(&outcome.totals),
                percentile(&outcome.totals, 90.0),
                percentile(&outcome.totals, 99.0),
                percentile(&outcome.totals, 100.0)
            );
            let ended: Vec<String> = PHASES.iter().zip(&outcome.phases).map(|(name, at)| format!("{name} p50 {:.3} p99 {:.3}", median(at), percentile(at, 99.0))).collect();
            eprintln!("  phases ended at: {}", ended.join(", "));
            let c = outcome.cpu;
            eprintln!("  CPU: this process {:.2} s, server {:.2} s, worker {:.2} s", c.this_process.as_secs_f64(), c.server.as_secs_f64(), c.worker.as_secs_f64());
        }
        worst.success = worst.success.min(outcome.success_rate());
        worst.p50 = worst.p50.max(median(&outcome.totals));
        let p99 = percentile(&outcome.totals, 99.0);
        if p99 >= worst.p99 {
            worst.p99 = p99;
            worst.cpu = outcome.cpu;
        }
        if worst.failure.is_none() {
            worst.failure = outcome.first_failure;
        }
    }
    worst
}

/// Sequential round trips of one WebSocket request on one connection: microseconds each.
async fn sequential_steps(ws_url: &str, request: &str, warmup: usize, count: usize) -> anyhow::Result<Vec<f64>> {
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(client_config()), false).await.with_context(|| format!("cannot open {ws_url}"))?;
    socket.send(Message::text(r#"{"type":"reset","data":{}}"#)).await?;
    answer(&mut socket).await.map_err(anyhow::Error::msg)?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let started = Instant::now();
        socket.send(Message::text(request)).await?;
        answer(&mut socket).await.map_err(anyhow::Error::msg)?;
        if i >= warmup {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = socket.close(None).await;
    Ok(samples)
}

pub async fn openenv(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    if !Path::new(BENCH_ENV).join("env.py").is_file() {
        report.skipped.push(format!("OpenEnv: {BENCH_ENV} is not here: run `rayfine bench` from the repository root"));
        return Ok(());
    }
    let quick = settings.library_calls < 1000;
    let program = ServerProgram::locate()?;
    let server = NoAuthServer::start(Path::new(BENCH_ENV), &program, &[("MAX_CONCURRENT_ENVS", "10000")])?;
    let processes = ServerProcesses::of(server.pid());
    let floor = FloorServer::start()?;
    let (env_ws, floor_ws) = (rayfine::openenv::session_url(&server.url)?, rayfine::openenv::session_url(&floor.url(""))?);

    // One step after another, beside a trivial `/call` of the same server and a WebSocket echo.
    let calls = settings.library_calls;
    let step = r#"{"type":"step","data":{"wait_seconds":0}}"#;
    let steps = sequential_steps(&env_ws, step, 200, calls).await?;
    let floor_steps = sequential_steps(&floor_ws, step, 200, calls).await?;
    let env = load_env(LoadOptions::url(&server.url)).await?;
    let pings = super::calls::sequential_pings(&env, 200, calls).await;
    env.cleanup().await?;
    let pings = pings?;
    report.settings.push(format!("OpenEnv step cost: {calls} sequential steps (or calls) after 200 warm-up ones, each client on its own connection"));
    let (step_p50, ping_p50) = (median(&steps), median(&pings));
    report.push(
        Row::new(STEP, "WebSocket `step` on a trivial environment, p50", Figure::micros(step_p50))
            .p99(Figure::micros(percentile(&steps, 99.0)))
            .floor("`EnvironmentWrapper::call(\"ping\")` on the same server", Figure::micros(ping_p50), Some(Figure::micros(percentile(&pings, 99.0))))
            .target("≤ 1.5× the `/call`", step_p50 <= 1.5 * ping_p50),
    );
    report.push(
        Row::new(STEP, "the same steps to a plain WebSocket echo (axum), p50", Figure::micros(median(&floor_steps)))
            .p99(Figure::micros(percentile(&floor_steps, 99.0))),
    );

    // OpenEnv's scaling method.
    // Largest first: its uncounted batch grows each server's pools to their full size, so the
    // smaller sizes need none of their own (a warm-up each took a sixth of the section).
    let (default_grid, repetitions): (&[usize], usize) = if quick { (&[256], 1) } else { (&[4096, 2048, 1024], 3) };
    // RAYFINE_BENCH_SESSIONS=4096 measures only those sizes (while profiling one of them).
    let mut chosen: Vec<usize> = std::env::var("RAYFINE_BENCH_SESSIONS").map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).filter(|&n: &usize| n > 0).collect()).unwrap_or_default();
    chosen.sort_unstable_by(|a, b| b.cmp(a));
    chosen.dedup();
    let grid = if chosen.is_empty() { default_grid } else { &chosen[..] };
    let wait = 1.0;
    report.settings.push(format!(
        "OpenEnv sessions at scale: largest size first, after one uncounted batch that grows the pools, then {repetitions} repetition(s) per size, the worst shown (lowest success, highest P50 and P99 of a successful session's whole time, connect to closed); \
         the environment steps with a sync `time.sleep({wait})`, the floor with a non-blocking sleep; server with MAX_CONCURRENT_ENVS=10000; each batch starts once the server and its worker have been idle for 200 ms"
    ));
    for (i, &sessions) in grid.iter().enumerate() {
        let warm_up = i == 0;
        let measured = repeated(&env_ws, sessions, wait, repetitions, warm_up, Some(&processes)).await;
        settle(Some(&processes)).await;
        let floor_run = repeated(&floor_ws, sessions, wait, repetitions, warm_up, None).await;
        if let Some(why) = &measured.failure {
            report.skipped.push(format!("OpenEnv sessions at scale, {sessions} sessions: a session failed: {why}"));
        }
        let target = sessions == 4096;
        let mut row = Row::new(SCALE, format!("{sessions} sessions: success"), Figure::percent(measured.success * 100.0))
            .floor("plain WebSocket server", Figure::percent(floor_run.success * 100.0), None);
        if target {
            row = row.target("≥ 99%", measured.success >= 0.99);
        }
        report.push(row);
        let mut row = Row::new(SCALE, format!("{sessions} sessions: a session's whole time, P50"), Figure::millis(measured.p50 * 1000.0))
            .p99(Figure::millis(measured.p99 * 1000.0))
            .floor("plain WebSocket server", Figure::millis(floor_run.p50 * 1000.0), Some(Figure::millis(floor_run.p99 * 1000.0)));
        if target {
            row = row.target("P99 ≤ 1.5 s", measured.p99 <= 1.5);
        }
        report.push(row);
        if target {
            // Why the P99 is what it is: every session's CPU, the client's included, shares the
            // two cores, so the last session cannot end before the batch's CPU ÷ cores.
            let per_session = |spent: Duration| Figure::micros(spent.as_secs_f64() * 1e6 / sessions as f64);
            let (c, f) = (measured.cpu, floor_run.cpu);
            let cpu_row = |party: &str| format!("{sessions} sessions: CPU per session, {party}");
            report.push(Row::new(SCALE, cpu_row("this client"), per_session(c.this_process)).floor("client and plain server (one process)", per_session(f.this_process), None));
            report.push(Row::new(SCALE, cpu_row("server"), per_session(c.server)));
            report.push(Row::new(SCALE, cpu_row("worker"), per_session(c.worker)));
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            report.push(
                Row::new(SCALE, format!("{sessions} sessions: the batch's CPU ÷ {cores} cores, the least time the last session can take"), Figure::millis(c.total().as_secs_f64() * 1e3 / cores))
                    .floor("the same for the plain server", Figure::millis(f.total().as_secs_f64() * 1e3 / cores), None),
            );
        }
    }
    drop(floor);
    drop(server);
    Ok(())
}
