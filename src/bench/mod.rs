//! `rayfine bench`: the figures users compare environment runners by, each beside its floor
//! measured in the same run, printed as Markdown and saved as JSON.
//!
//! Sections run in an order where one does not disturb the next: memory and cold starts first
//! (nothing else running), then the wrk loads on one process-mode environment, then the Python
//! clients, then Docker.

mod build;
mod calls;
mod cpu;
mod engine_alone;
mod floor;
mod hop;
mod memory;
mod openenv;
mod python;
mod replicas;
mod report;
mod server;
mod startup;
mod wrk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rayfine::{load_env, ImageBuilder, LoadOptions, Mode};

use report::Report;

/// Label on everything a bench run starts, with the run's pid, so a failed run leaves nothing.
pub const BENCH_LABEL: &str = "rayfine.bench";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run only these sections (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Skip the sections that need Docker.
    #[arg(long)]
    pub no_docker: bool,
    /// Where the JSON report goes.
    #[arg(long, default_value = "rayfine-bench.json")]
    pub output: PathBuf,
    /// The environment under test; it needs `ping`, `aping` and `slow_echo` (as environments/echo).
    #[arg(long = "env", default_value = "environments/echo")]
    pub env_folder: PathBuf,
    /// Base image of the bench image (the Dockerfile's BASE_IMAGE).
    #[arg(long, env = "RAYFINE_BASE_IMAGE", default_value = "rayfine-test/python:bookworm")]
    pub base_image: String,
    /// Short runs and few samples: checks that everything works, the figures mean little.
    #[arg(long)]
    pub quick: bool,
    /// A Docker engine for the pool and host sections (repeatable; default: `RAYFINE_HOSTS`,
    /// else this machine's). With two or more, the fan-out over hosts runs too.
    #[arg(long = "host", value_name = "ENGINE")]
    pub hosts: Vec<String>,
    /// Run the whole bench N times and report, per row, the median over the runs, its spread
    /// (lowest to highest) and its ratio to the floor, with how many runs met the target.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Memory,
    ColdStart,
    CallCost,
    Throughput,
    Scale,
    Python,
    Openenv,
    Build,
    FanOut,
    Balancing,
    Hosts,
}

/// Durations and sample counts.
pub struct Settings {
    pub env_folder: PathBuf,
    /// One wrk run of the call-cost rows: their p99 needs the samples.
    pub wrk_duration: Duration,
    /// One wrk run of the throughput rows: a rate, steady within a second.
    pub throughput_duration: Duration,
    pub scale_duration: Duration,
    pub cold_starts: usize,
    pub docker_starts: usize,
    pub fan_out: usize,
    pub builds: usize,
    pub library_calls: usize,
    pub balancing_duration: Duration,
    pub fan_out_hosts: usize,
}

impl Settings {
    fn new(args: &BenchArgs) -> Settings {
        let quick = args.quick;
        Settings {
            env_folder: args.env_folder.clone(),
            wrk_duration: Duration::from_secs(if quick { 1 } else { 5 }),
            throughput_duration: Duration::from_secs(if quick { 1 } else { 3 }),
            scale_duration: Duration::from_secs(if quick { 5 } else { 10 }),
            cold_starts: if quick { 3 } else { 15 },
            docker_starts: if quick { 2 } else { 10 },
            fan_out: if quick { 4 } else { 32 },
            builds: if quick { 1 } else { 3 },
            library_calls: if quick { 200 } else { 5000 },
            balancing_duration: Duration::from_secs(if quick { 1 } else { 3 }),
            fan_out_hosts: if quick { 8 } else { 64 },
        }
    }
}

/// The bench image and the label of this run.
pub struct DockerBench {
    pub image: String,
    pub base_image: String,
    pub run_id: String,
}

impl DockerBench {
    async fn build_image(&self, settings: &Settings) -> anyhow::Result<()> {
        ImageBuilder::new()
            .base_image(&self.base_image)
            .label(BENCH_LABEL, &self.run_id)
            .quiet(true)
            .build(&settings.env_folder, &self.image)
            .await
            .with_context(|| format!("cannot build the bench image {}", self.image))?;
        Ok(())
    }

    /// The image of the balancing section's replicas.
    pub fn replica_image(&self) -> String {
        format!("rayfine-bench/replica:{}", self.run_id)
    }

    fn reference_image(&self) -> String {
        format!("rayfine-bench/reference:{}", self.run_id)
    }

    /// Ids of this run's containers still in the engine.
    async fn own_containers(&self) -> anyhow::Result<Vec<String>> {
        let all = rayfine::docker::list_managed_containers().await?;
        Ok(all.into_iter().filter(|c| c.labels.get(BENCH_LABEL) == Some(&self.run_id)).map(|c| c.container_id).collect())
    }

    /// How many of this run's containers are still in the engine.
    async fn containers_left(&self) -> anyhow::Result<usize> {
        Ok(self.own_containers().await?.len())
    }

    /// Removes this run's containers and images.
    async fn remove_all(&self) {
        if let Ok(ids) = self.own_containers().await {
            let _ = rayfine::docker::remove_containers(&ids).await;
        }
        // Children before parents: a parent whose child is still there is only untagged.
        for image in [self.reference_image(), self.image.clone(), format!("{}-base", self.image), self.replica_image(), format!("{}-base", self.replica_image())] {
            let _ = rayfine::docker::remove_image(&image).await;
        }
    }
}

/// A private temporary folder, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(what: &str) -> anyhow::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rayfine-bench-{}-{what}-{n}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let repeat = args.repeat as usize;
    let mut reports = Vec::with_capacity(repeat);
    let mut failures: Vec<String> = Vec::new();
    for round in 1..=repeat {
        if repeat > 1 {
            eprintln!("rayfine bench: run {round} of {repeat}");
        }
        let (report, failed) = run_once(&args).await?;
        reports.push(report);
        for section in failed {
            if !failures.contains(&section) {
                failures.push(section);
            }
        }
    }
    let took = format!("the whole run took {:.0} s", started.elapsed().as_secs_f64());
    let (markdown, json) = if repeat == 1 {
        let mut report = reports.pop().expect("one run");
        report.settings.push(took);
        (report.markdown(), serde_json::to_string_pretty(&report)?)
    } else {
        let mut summary = report::Repeated::of(&reports);
        summary.settings.push(took);
        (summary.markdown(), serde_json::to_string_pretty(&serde_json::json!({ "summary": summary, "runs": reports }))?)
    };
    println!("{markdown}");
    std::fs::write(&args.output, json + "\n").with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!("rayfine bench: the same figures as JSON in {}", args.output.display());
    if !failures.is_empty() {
        bail!("{} section(s) failed: {}", failures.len(), failures.join(", "));
    }
    Ok(())
}

/// One run of the sections asked for: its report and the sections that failed.
async fn run_once(args: &BenchArgs) -> anyhow::Result<(Report, Vec<String>)> {
    let settings = Settings::new(args);
    if !settings.env_folder.join("env.py").is_file() {
        bail!(
            "`{}` is not an environment folder: run `rayfine bench` from the repository root, or pass --env with a folder like environments/echo",
            settings.env_folder.display()
        );
    }
    let wants = |section: Section| args.only.is_empty() || args.only.contains(&section);
    let mut report = Report::default();
    report.settings.push(format!(
        "rayfine {} on {} cores; environment {}; medians, p99 where it applies",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        settings.env_folder.display()
    ));
    let open_files = raise_open_file_limit();
    let static_server = rayfine::docker::locate_static_server(None).ok();
    report.settings.push(match &static_server {
        Some(path) => format!("process-mode server: the static {} (as injected into images)", path.display()),
        None => "process-mode server: `rayfine serve` (the static server is not built; `bash .ci/setup` builds it)".into(),
    });
    let mut failures: Vec<String> = Vec::new();
    let mut record = |report: &mut Report, section: &str, outcome: anyhow::Result<()>| {
        if let Err(err) = outcome {
            eprintln!("rayfine bench: {section} failed: {err:#}");
            report.skipped.push(format!("{section}: failed: {err:#}"));
            failures.push(section.to_string());
        }
    };

    if wants(Section::Memory) {
        let since = Instant::now();
        let outcome = memory::memory(&settings, &mut report).await;
        report.took("memory", since);
        record(&mut report, "memory", outcome);
    }
    if wants(Section::ColdStart) {
        let since = Instant::now();
        let outcome = startup::process_cold_start(&settings, &mut report).await;
        report.took("cold start (process)", since);
        record(&mut report, "cold start (process)", outcome);
    }
    if wants(Section::CallCost) || wants(Section::Throughput) || wants(Section::Scale) {
        let outcome = wrk_sections(args, &settings, static_server.as_deref(), open_files, &mut report).await;
        record(&mut report, "wrk sections", outcome);
    }
    if wants(Section::Python) {
        let since = Instant::now();
        let outcome = python::python_clients(&settings, &mut report).await;
        report.took("python", since);
        record(&mut report, "Python client", outcome);
    }
    if wants(Section::Openenv) {
        let since = Instant::now();
        let outcome = openenv::openenv(&settings, &mut report).await;
        report.took("openenv", since);
        record(&mut report, "OpenEnv", outcome);
    }

    let docker_sections = [Section::Build, Section::ColdStart, Section::FanOut, Section::Balancing, Section::Hosts].into_iter().any(wants);
    if args.no_docker {
        report.skipped.push("Docker sections: --no-docker".into());
    } else if docker_sections {
        let docker = DockerBench { image: format!("rayfine-bench/echo:{}", std::process::id()), base_image: args.base_image.clone(), run_id: std::process::id().to_string() };
        let hosts = hosts(args)?;
        let outcome = docker_sections_run(&docker, &settings, &hosts, &wants, &mut report).await;
        replicas::remove_copies(&docker, &hosts).await;
        docker.remove_all().await;
        record(&mut report, "Docker sections", outcome);
    }
    if let Some(line) = report.times_line() {
        report.settings.push(line);
    }

    Ok((report, failures))
}

async fn wrk_sections(args: &BenchArgs, settings: &Settings, server: Option<&Path>, open_files: u64, report: &mut Report) -> anyhow::Result<()> {
    let wants = |section: Section| args.only.is_empty() || args.only.contains(&section);
    let mut options = LoadOptions::folder(&settings.env_folder).mode(Mode::Process);
    if let Some(server) = server {
        options = options.server_program(server);
    }
    let env = load_env(options).await?;
    let floor = floor::FloorServer::start()?;
    let scratch = ScratchDir::new("wrk")?;
    let target = calls::Target { url: env.url(), token: env.token(), pid: env.pid() };
    let outcome = async {
        if wants(Section::CallCost) {
            let since = Instant::now();
            let outcome = match calls::call_cost(settings, &target, &floor, report, scratch.path()) {
                Ok(()) => calls::library_call_cost(settings, &env, &floor, report).await,
                Err(err) => Err(err),
            };
            report.took("call cost", since);
            outcome?;
        }
        if wants(Section::Throughput) {
            let since = Instant::now();
            let outcome = calls::throughput(settings, &target, &floor, report, scratch.path());
            report.took("throughput", since);
            outcome?;
        }
        if wants(Section::Scale) {
            if open_files < 4200 {
                report.skipped.push(format!("concurrency at scale: 2,048 connections need about 4,200 open files, the limit here is {open_files}"));
            } else {
                let since = Instant::now();
                let outcome = calls::scale(settings, &target, &floor, report, scratch.path());
                report.took("scale", since);
                outcome?;
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    drop(floor);
    env.cleanup().await?;
    outcome
}

/// The engines `--host` names, else `RAYFINE_HOSTS`'s, else this machine's.
fn hosts(args: &BenchArgs) -> anyhow::Result<Vec<rayfine::DockerHost>> {
    let given = args.hosts.iter().map(|h| rayfine::DockerHost::parse(h)).collect::<Result<Vec<_>, _>>()?;
    Ok(rayfine::DockerHost::given_or_default(given)?)
}

async fn docker_sections_run(docker: &DockerBench, settings: &Settings, hosts: &[rayfine::DockerHost], wants: &dyn Fn(Section) -> bool, report: &mut Report) -> anyhow::Result<()> {
    if !rayfine::docker::docker_available().await {
        bail!("no Docker engine answers (pass --no-docker to skip these sections)");
    }
    if !image_exists(&docker.base_image) {
        bail!(
            "the base image `{}` is not in the engine: `bash .ci/setup` makes rayfine-test/python:bookworm offline; or pass --base-image",
            docker.base_image
        );
    }
    // Not a figure: how long the first build takes depends on what the engine has cached.
    let since = Instant::now();
    let outcome = docker.build_image(settings).await;
    report.took("the bench image", since);
    outcome?;
    if wants(Section::Build) {
        let since = Instant::now();
        let outcome = build::build(settings, docker, report).await;
        report.took("build", since);
        outcome?;
    }
    if wants(Section::ColdStart) {
        let since = Instant::now();
        let outcome = startup::docker_cold_start(settings, docker, report).await;
        report.took("cold start (Docker)", since);
        outcome?;
    }
    if wants(Section::FanOut) {
        let since = Instant::now();
        let outcome = startup::fan_out(settings, docker, report).await;
        report.took("fan-out", since);
        outcome?;
    }
    if wants(Section::Balancing) {
        let since = Instant::now();
        let outcome = replicas::balancing(settings, docker, hosts, report).await;
        report.took("balancing", since);
        outcome?;
    }
    if wants(Section::Hosts) {
        let since = Instant::now();
        let outcome = replicas::fan_out_over_hosts(settings, docker, hosts, report).await;
        report.took("hosts", since);
        outcome?;
    }
    Ok(())
}

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", image]).output().is_ok_and(|o| o.status.success())
}

/// Raises the soft limit of open files to the hard one (children inherit it: wrk, the server);
/// returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        limit.rlim_cur
    }
}
