//! Resident memory of an idle environment: the server alone, and the server with its Python
//! worker, beside an idle `python3` (what any Python environment costs at least).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rayfine::{load_env, LoadOptions, Mode};
use serde_json::json;

use super::report::{Figure, Report, Row};
use super::Settings;

const MEMORY: &str = "Memory (resident, idle environment)";

/// `VmRSS` of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    Ok(kib / 1024.0)
}

/// Direct children of `pid`, from /proc/PID/task/*/children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

pub async fn memory(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    // The static server is what runs in containers; without it, the CLI's own `serve`.
    let static_server = rayfine::docker::locate_static_server(None).ok();
    let mut options = LoadOptions::folder(&settings.env_folder).mode(Mode::Process);
    if let Some(server) = &static_server {
        options = options.server_program(server);
    }
    let env = load_env(options).await?;
    env.call("ping", json!({})).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = env.pid().context("a process-mode environment has a pid")?;
    let server = rss_mib(pid)?;
    let workers = children(pid);
    if workers.is_empty() {
        bail!("the server (pid {pid}) has no worker process");
    }
    let total = server + workers.iter().map(|&w| rss_mib(w)).sum::<anyhow::Result<f64>>()?;
    env.cleanup().await?;

    let mut python = Command::new("python3")
        .args(["-c", "import sys; sys.stdin.read()"])
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_python = rss_mib(python.id());
    drop(python.stdin.take());
    let _ = python.wait();
    let idle_python = idle_python?;

    let which = if static_server.is_some() { "static `rayfine-server`" } else { "`rayfine serve`" };
    report.push(
        Row::new(MEMORY, format!("server alone ({which})"), Figure::mib(server))
            .floor("affinetes' server (FastAPI + uvicorn), as quoted in the issue: 53 MB", Figure::mib(53.0 / 1.048_576), None)
            .target("≤ 10 MiB", server <= 10.0),
    );
    report.push(Row::new(MEMORY, "one idle environment (server + worker, echo)", Figure::mib(total)).floor("idle `python3`", Figure::mib(idle_python), None));
    Ok(())
}
