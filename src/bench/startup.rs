//! How fast environments start and go: cold start in both modes and a fan-out of 32 containers,
//! each beside what the bare tool (python3, `docker run`) takes for the same.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rayfine::{load_env, LoadOptions, Mode, WarmPool};
use serde_json::json;

use super::report::{median, millis as ms, percentile, Figure, Report, Row};
use super::{DockerBench, Settings, BENCH_LABEL};

const COLD: &str = "Cold start (load_env → first call answered)";
const FAN_OUT: &str = "Fan-out (environments started at once, Docker)";

/// Process mode, beside `python3 -c pass` (what a user's `python3` costs, wrapper included) and
/// beside the interpreter it resolves to importing env.py (the least any runner must do); runs
/// interleaved so drift hits all alike.
pub async fn process_cold_start(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let interpreter = resolved_python(&settings.env_folder)?;
    let mut floor = Vec::new();
    let mut imports = Vec::new();
    let mut loads = Vec::new();
    for _ in 0..settings.cold_starts {
        floor.push(time_command(Command::new("python3").args(["-c", "pass"]))?);
        imports.push(time_command(Command::new(&interpreter).args(["-c", "import env"]).current_dir(&settings.env_folder))?);

        let t = Instant::now();
        let env = load_env(LoadOptions::folder(&settings.env_folder).mode(Mode::Process)).await?;
        env.call("ping", json!({})).await?;
        loads.push(ms(t.elapsed()));
        env.cleanup().await?;
    }
    let (floor, import, load) = (median(&floor), median(&imports), median(&loads));
    let what = format!("process mode, median of {}", settings.cold_starts);
    report.push(
        Row::new(COLD, what.clone(), Figure::millis(load))
            .floor("`python3 -c pass`", Figure::millis(floor), None)
            .target("≤ floor + 30 ms", load <= floor + 30.0),
    );
    report.push(
        Row::new(COLD, format!("{what}, beside env.py's own import"), Figure::millis(load))
            .floor(format!("`{} -c 'import env'` in the folder", interpreter.display()), Figure::millis(import), None)
            .target("≤ floor + 30 ms", load <= import + 30.0),
    );
    Ok(())
}

/// The interpreter `python3` reaches from the environment's folder (through a pyenv shim, say).
fn resolved_python(folder: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).current_dir(folder).output().context("cannot run python3")?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        bail!("`python3` does not say where it runs from: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(path.into())
}

/// Runs `command` to its end; its time in milliseconds.
fn time_command(command: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(ms(t.elapsed()))
}

/// Docker mode, beside `docker run` of the same image until its `/health` answers 200.
pub async fn docker_cold_start(settings: &Settings, docker: &DockerBench, report: &mut Report) -> anyhow::Result<()> {
    let mut floor = Vec::new();
    let mut loads = Vec::new();
    for _ in 0..settings.docker_starts {
        let (elapsed, id) = docker_run_until_ready(&docker.image)?;
        floor.push(ms(elapsed));
        remove_containers(&[id]);

        let t = Instant::now();
        let env = load_env(LoadOptions::image(&docker.image).label(BENCH_LABEL, &docker.run_id)).await?;
        env.call("ping", json!({})).await?;
        loads.push(ms(t.elapsed()));
        env.cleanup().await?;
    }
    let (floor, load) = (median(&floor), median(&loads));
    report.push(
        Row::new(COLD, format!("Docker mode, median of {}", settings.docker_starts), Figure::millis(load))
            .floor("`docker run -d -p 127.0.0.1:PORT:8000` until `/health` is 200", Figure::millis(floor), None)
            .target("≤ floor + 50 ms", load <= floor + 50.0),
    );

    // The same, taken from a warm pool of two, refilled between takes.
    let pool = WarmPool::start(LoadOptions::image(&docker.image).label(BENCH_LABEL, &docker.run_id), 2).await?;
    let mut acquires = Vec::new();
    let outcome = async {
        for _ in 0..settings.docker_starts {
            let deadline = Instant::now() + Duration::from_secs(60);
            while pool.ready() < pool.size() {
                if Instant::now() > deadline {
                    bail!("the warm pool did not refill within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t = Instant::now();
            let env = pool.acquire().await?;
            env.call("ping", json!({})).await?;
            acquires.push(ms(t.elapsed()));
            env.cleanup().await?;
        }
        Ok(())
    }
    .await;
    pool.cleanup().await?;
    outcome?;
    let acquire = median(&acquires);
    report.push(
        Row::new(COLD, format!("Docker mode from a warm pool of 2 (`WarmPool::acquire`), median of {}", settings.docker_starts), Figure::millis(acquire))
            .p99(Figure::millis(percentile(&acquires, 99.0)))
            .floor("Rayfine's own cold start above", Figure::millis(load), None)
            .target("≤ 10 ms", acquire <= 10.0),
    );
    Ok(())
}

/// 32 containers started at once until each answers, then `cleanup_all_environments()` until
/// all are gone; beside 32 concurrent `docker run`s and `docker rm -f`s of the same image.
pub async fn fan_out(settings: &Settings, docker: &DockerBench, report: &mut Report) -> anyhow::Result<()> {
    let n = settings.fan_out;
    let image = docker.image.clone();
    let floor = tokio::task::spawn_blocking(move || -> anyhow::Result<(Duration, Duration)> {
        let t = Instant::now();
        let started: Vec<anyhow::Result<(Duration, String)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n).map(|_| scope.spawn(|| docker_run_until_ready(&image))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a docker run thread panicked")))).collect()
        });
        let up = t.elapsed();
        let ids: Vec<String> = started.iter().filter_map(|r| r.as_ref().ok().map(|(_, id)| id.clone())).collect();
        let t = Instant::now();
        remove_containers(&ids);
        let down = t.elapsed();
        if let Some(Err(err)) = started.into_iter().find(|r| r.is_err()) {
            return Err(err);
        }
        Ok((up, down))
    })
    .await??;

    let t = Instant::now();
    let loads = futures_util::future::join_all((0..n).map(|i| async move {
        let env = load_env(LoadOptions::image(&docker.image).name(format!("fan-out-{i}")).label(BENCH_LABEL, &docker.run_id)).await?;
        env.call("ping", json!({})).await?;
        Ok::<_, rayfine::Error>(env)
    }))
    .await;
    let up = t.elapsed();
    let failed = loads.iter().filter(|r| r.is_err()).count();
    let t = Instant::now();
    let removed = rayfine::cleanup_all_environments().await;
    let down = t.elapsed();
    if let Some(Err(err)) = loads.into_iter().find(|r| r.is_err()) {
        bail!("{failed} of {n} environments did not start; the first error: {err}");
    }
    let left = docker.containers_left().await?;
    if left > 0 {
        bail!("cleanup_all_environments() returned but {left} containers of this run are still there");
    }
    report.push(
        Row::new(FAN_OUT, format!("{n} × load_env(image) until each answered a call"), Figure::millis(ms(up)))
            .floor(format!("{n} concurrent `docker run` until each `/health` is 200"), Figure::millis(ms(floor.0)), None)
            .target("≤ 0.5× floor", up.as_secs_f64() <= 0.5 * floor.0.as_secs_f64()),
    );
    report.push(
        Row::new(FAN_OUT, format!("cleanup_all_environments() of {removed} until all are gone"), Figure::millis(ms(down)))
            .floor(format!("{n} concurrent `docker rm -f`"), Figure::millis(ms(floor.1)), None)
            .target("≤ 0.3× floor", down.as_secs_f64() <= 0.3 * floor.1.as_secs_f64()),
    );
    // The least any client could take: its ratio to the same floors bounds the two above.
    match super::engine_alone::local_socket() {
        Some(socket) => {
            let (alone_up, alone_down) = super::engine_alone::start_and_remove(&socket, &docker.image, n, &docker.run_id).await?;
            report.push(
                Row::new(FAN_OUT, format!("the engine alone: {n} idle containers created and started at once through its API"), Figure::millis(ms(alone_up)))
                    .floor(format!("{n} concurrent `docker run` until each `/health` is 200"), Figure::millis(ms(floor.0)), None),
            );
            report.push(
                Row::new(FAN_OUT, format!("the engine alone: {n} force-removes at once through its API"), Figure::millis(ms(alone_down)))
                    .floor(format!("{n} concurrent `docker rm -f`"), Figure::millis(ms(floor.1)), None),
            );
        }
        None => report.skipped.push("the engine-alone rows of fan-out: DOCKER_HOST names no unix socket".into()),
    }
    Ok(())
}

/// `docker run` of the image with authentication off (a bare run has no token), polled until its
/// `/health` answers 200: the readiness `load_env` waits for. Returns the time and the container.
fn docker_run_until_ready(image: &str) -> anyhow::Result<(Duration, String)> {
    // The port is chosen here, not by Docker, so that the floor pays no `docker port` round trip;
    // 32 runs at once may pick one another's (or a just-used) port, and such a run is retried with
    // another, its time starting again.
    let mut attempts = 0;
    let (t, run, port) = loop {
        let port = free_port()?;
        let t = Instant::now();
        let run = Command::new("docker")
            .args(["run", "-d", "--rm", "-e", "RAYFINE_NO_AUTH=1", "-p", &format!("127.0.0.1:{port}:8000")])
            .args(["--label", "rayfine.managed=true", "--label", &format!("{BENCH_LABEL}={}", std::process::id()), image])
            .output()
            .context("cannot run `docker`")?;
        attempts += 1;
        if run.status.success() || attempts >= 5 || !String::from_utf8_lossy(&run.stderr).contains("port is already allocated") {
            break (t, run, port);
        }
    };
    if !run.status.success() {
        bail!("docker run {image} failed: {}", String::from_utf8_lossy(&run.stderr).trim());
    }
    let id = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health_ok(port) {
        if Instant::now() > deadline {
            remove_containers(std::slice::from_ref(&id));
            bail!("`docker run {image}` did not answer /health within 60 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((t.elapsed(), id))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `docker rm -f` of each container, all at once.
fn remove_containers(ids: &[String]) {
    std::thread::scope(|scope| {
        for id in ids {
            scope.spawn(move || {
                let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            });
        }
    });
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
