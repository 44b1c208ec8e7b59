//! Image builds: stage 2 on a cached stage 1 and a rebuild of an unchanged environment, beside the
//! same two done as a plain Dockerfile build (`FROM <tag>-base` + `COPY` of the same files).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::{median, millis as ms, Figure, Report, Row};
use super::{DockerBench, Settings};

const BUILD: &str = "Build (function-based environment, classic builder)";

pub async fn build(settings: &Settings, docker: &DockerBench, report: &mut Report) -> anyhow::Result<()> {
    let mut stage2 = Vec::new();
    let mut rebuild = Vec::new();
    for _ in 0..settings.builds {
        rayfine::docker::remove_image(&docker.image).await?;
        let t = Instant::now();
        docker.build_image(settings).await?;
        stage2.push(ms(t.elapsed()));
        let t = Instant::now();
        docker.build_image(settings).await?;
        rebuild.push(ms(t.elapsed()));
    }

    // The reference: the same files added by a Dockerfile, uncached then cached.
    let server = rayfine::docker::locate_static_server(None)?;
    let context = super::ScratchDir::new("build-context")?;
    std::fs::copy(&server, context.path().join("rayfine-server")).context("cannot copy the static server")?;
    std::fs::write(context.path().join("worker.py"), rayfine::server::WORKER_SCRIPT)?;
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {}-base\nCOPY rayfine-server worker.py /rayfine/\nENTRYPOINT [\"/rayfine/rayfine-server\"]\nLABEL rayfine.managed=true {}={}\n",
            docker.image,
            super::BENCH_LABEL,
            docker.run_id
        ),
    )?;
    let reference = docker.reference_image();
    let docker_build = |no_cache: bool| -> anyhow::Result<Duration> {
        let mut command = Command::new("docker");
        command.env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", &reference]);
        if no_cache {
            command.arg("--no-cache");
        }
        let t = Instant::now();
        let output = command.arg(context.path()).output().context("cannot run `docker build`")?;
        if !output.status.success() {
            bail!("the reference `docker build` failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(t.elapsed())
    };
    let mut plain = Vec::new();
    let mut plain_cached = Vec::new();
    let remove_reference = || {
        let _ = Command::new("docker").args(["image", "rm", "-f", &reference]).output();
    };
    for _ in 0..settings.builds {
        // Removed each round: a rebuild under the same tag would leave the last one dangling.
        let outcome = docker_build(true).and_then(|uncached| Ok((uncached, docker_build(false)?)));
        remove_reference();
        let (uncached, cached) = outcome?;
        plain.push(ms(uncached));
        plain_cached.push(ms(cached));
    }

    report.push(
        Row::new(BUILD, format!("stage 2 on a cached stage 1, median of {}", settings.builds), Figure::millis(median(&stage2)))
            .floor("`docker build --no-cache` of `FROM <tag>-base` + `COPY` of the same files", Figure::millis(median(&plain)), None),
    );
    report.push(
        Row::new(BUILD, format!("rebuild of an unchanged environment, median of {}", settings.builds), Figure::millis(median(&rebuild)))
            .floor("the same `docker build`, cached", Figure::millis(median(&plain_cached)), None),
    );
    Ok(())
}
