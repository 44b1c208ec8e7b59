//! Pools and hosts: how balancing copes with one slow replica (least-loaded beside least-
//! outstanding and affinetes' random), and a fan-out over several Docker hosts beside the same
//! fan-out on one.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rayfine::{load_env, load_pool, Balancing, DockerHost, ImageBuilder, LoadOptions, Pool, PoolOptions};
use serde_json::json;

use super::report::{median, millis as ms, percentile, Figure, Report, Row};
use super::{DockerBench, Settings, BENCH_LABEL};

const BALANCING: &str = "Balancing (4 replicas of a 10 ms call, 8 callers)";
const HOSTS: &str = "Fan-out over hosts (load_env until each answered a call)";

/// The environment whose replicas the balancing bench runs: `work(ms)` and `slow_down(factor)`.
const REPLICA_ENV: &str = "environments/replica_benchmark";

/// The replicas of each pool, the callers, and how much slower the slow replica is.
const REPLICAS: usize = 4;
const CALLERS: usize = 8;
const SLOWDOWN: f64 = 10.0;

/// Four scenarios, each on a fresh pool: healthy replicas (the floor), then one replica ten
/// times slower under random, least-outstanding and least-loaded balancing.
pub async fn balancing(settings: &Settings, docker: &DockerBench, hosts: &[DockerHost], report: &mut Report) -> anyhow::Result<()> {
    let image = docker.replica_image();
    ImageBuilder::new()
        .base_image(&docker.base_image)
        .label(BENCH_LABEL, &docker.run_id)
        .quiet(true)
        .build(REPLICA_ENV, &image)
        .await
        .with_context(|| format!("cannot build the replica image from {REPLICA_ENV} (run the bench from the repository root)"))?;
    let scenarios = [
        ("healthy replicas, least-loaded", Balancing::LeastLoaded, false),
        ("one replica 10× slower, random (affinetes' balancing)", Balancing::Random, true),
        ("one replica 10× slower, least-outstanding", Balancing::LeastOutstanding, true),
        ("one replica 10× slower, least-loaded (the default)", Balancing::LeastLoaded, true),
    ];
    let mut healthy: Option<(f64, f64)> = None;
    for (what, balancing, slow) in scenarios {
        let latencies = scenario(settings, docker, &image, hosts, balancing, slow).await?;
        let (p50, p99) = (median(&latencies), percentile(&latencies, 99.0));
        let mut row = Row::new(BALANCING, format!("{what} ({} calls)", latencies.len()), Figure::millis(p50)).p99(Figure::millis(p99));
        match healthy {
            None => healthy = Some((p50, p99)),
            Some((floor_p50, floor_p99)) => {
                row = row.floor("healthy replicas", Figure::millis(floor_p50), Some(Figure::millis(floor_p99)));
                if balancing == Balancing::LeastLoaded {
                    row = row.target("p99 ≤ 2× the healthy replicas' p99", p99 <= 2.0 * floor_p99);
                }
            }
        }
        report.push(row);
    }
    Ok(())
}

/// One pool under load for the bench's duration; the latencies in milliseconds.
async fn scenario(settings: &Settings, docker: &DockerBench, image: &str, hosts: &[DockerHost], balancing: Balancing, slow: bool) -> anyhow::Result<Vec<f64>> {
    let options = LoadOptions::image(image).label(BENCH_LABEL, &docker.run_id).hosts(hosts.iter().cloned());
    let pool = load_pool(options, PoolOptions::new(REPLICAS).balancing(balancing)).await?;
    let outcome = async {
        if slow {
            let members = pool.members();
            let first = members.first().context("the pool has no replica")?;
            first.call("slow_down", json!({ "factor": SLOWDOWN })).await?;
        }
        // Untimed: every replica's latency estimate fills in.
        load(&pool, Duration::from_millis(500)).await?;
        load(&pool, settings.balancing_duration).await
    }
    .await;
    pool.cleanup().await?;
    outcome
}

/// `CALLERS` callers calling `work(10)` back to back for `duration`; every call's latency.
async fn load(pool: &Pool, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let end = Instant::now() + duration;
    let callers = (0..CALLERS).map(|_| async move {
        let mut latencies = Vec::new();
        while Instant::now() < end {
            let sent = Instant::now();
            pool.call("work", json!({ "ms": 10 })).await?;
            latencies.push(ms(sent.elapsed()));
        }
        Ok::<_, rayfine::Error>(latencies)
    });
    let mut all = Vec::new();
    for latencies in futures_util::future::join_all(callers).await {
        all.extend(latencies?);
    }
    Ok(all)
}

/// N environments started at once on the first host, then N over every host; each until it
/// answered a call, then all removed. The image is copied to every host first, untimed.
pub async fn fan_out_over_hosts(settings: &Settings, docker: &DockerBench, hosts: &[DockerHost], report: &mut Report) -> anyhow::Result<()> {
    if hosts.len() < 2 {
        report.skipped.push("fan-out over hosts: name two or more engines with --host (`bash .ci/second-engine start` makes one on this machine)".into());
        return Ok(());
    }
    let n = settings.fan_out_hosts;
    // Untimed: one environment per host gets the image onto each.
    for host in hosts {
        let env = load_env(options(docker, std::slice::from_ref(host))).await?;
        env.cleanup().await?;
    }
    let one = fan_out(docker, &hosts[..1], n).await?;
    let all = fan_out(docker, hosts, n).await?;
    report.push(
        Row::new(HOSTS, format!("{n} environments over {} hosts", hosts.len()), Figure::millis(ms(all)))
            .floor(format!("the same {n} on {}", hosts[0]), Figure::millis(ms(one)), None),
    );
    Ok(())
}

fn options(docker: &DockerBench, hosts: &[DockerHost]) -> LoadOptions {
    LoadOptions::image(&docker.image).label(BENCH_LABEL, &docker.run_id).hosts(hosts.iter().cloned())
}

/// `n` load_envs at once over `hosts` until each answered; the time, after which all are removed.
async fn fan_out(docker: &DockerBench, hosts: &[DockerHost], n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let loads = futures_util::future::join_all((0..n).map(|_| async {
        let env = load_env(options(docker, hosts)).await?;
        env.call("ping", json!({})).await?;
        Ok::<_, rayfine::Error>(env)
    }))
    .await;
    let took = started.elapsed();
    let failed = loads.iter().filter(|r| r.is_err()).count();
    rayfine::cleanup_all_environments().await;
    if let Some(Err(err)) = loads.into_iter().find(Result::is_err) {
        bail!("{failed} of {n} environments did not start on {hosts:?}; the first error: {err}");
    }
    Ok(took)
}

/// Removes this run's images from every host but this machine's (which the bench's own cleanup
/// covers).
pub async fn remove_copies(docker: &DockerBench, hosts: &[DockerHost]) {
    for host in hosts.iter().filter(|h| **h != DockerHost::Local) {
        for image in [docker.image.clone(), docker.replica_image(), format!("{}-base", docker.replica_image())] {
            let _ = rayfine::docker::remove_image_on(host, &image).await;
        }
    }
}
