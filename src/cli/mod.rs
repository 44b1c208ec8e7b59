//! The `rayfine` command: thin wrappers over the library, text for people, `--json` for scripts.

pub mod args;
mod output;
mod pool;
mod records;

use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use args::{byte_size, key_value, seconds, seconds_or_zero, BuildArgs, CallArgs, Cli, Command, ModeArg, RunArgs, TargetArgs};
use rayfine::docker::{ManagedContainer, ManagedService};
use rayfine::{EnvironmentWrapper, ImageBuilder, LoadOptions, Mode, Source};

/// Runs one command; the exit code follows from the error, if any (see `main`).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(args) => build(args, cli.json).await,
        Command::Run(args) => run_env(args, cli.json).await,
        Command::Call(args) => call(args, cli.json).await,
        Command::Methods(args) => methods(args, cli.json).await,
        Command::Ps(hosts) => ps(&hosts, cli.json).await,
        Command::Cleanup(args) => cleanup(args, cli.json).await,
        Command::Serve(args) => {
            rayfine::server::exit_on_panic();
            Ok(rayfine::server::serve(args.config).await?)
        }
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

async fn build(args: BuildArgs, json: bool) -> anyhow::Result<()> {
    let mut builder = ImageBuilder::new().no_cache(args.no_cache).quiet(args.quiet);
    for item in &args.build_arg {
        let (key, value) = key_value(item, "--build-arg")?;
        builder = builder.build_arg(key, value);
    }
    if let Some(base) = &args.base_image {
        builder = builder.base_image(base);
    }
    if let Some(env_type) = args.env_type {
        builder = builder.env_type(env_type.into());
    }
    if let Some(file) = &args.file {
        builder = builder.dockerfile(file);
    }
    let progress = (!args.quiet && !json).then(output::BuildDisplay::new);
    if let Some(display) = &progress {
        let display = display.clone();
        builder = builder.on_progress(move |p| display.line(p));
    }
    let started = Instant::now();
    let built = builder.build(&args.folder, &args.tag).await;
    if let Some(display) = &progress {
        display.finish();
    }
    let built = built?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let summary = json!({
            "tag": built.tag, "base_tag": built.base_tag, "env_type": built.env_type.as_str(),
            "reason": built.reason, "image_id": built.image_id, "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!("built {} ({}-based: {}) in {seconds:.1} s", built.tag, built.env_type, built.reason);
        println!("{}", built.tag);
    }
    Ok(())
}

async fn run_env(args: RunArgs, json: bool) -> anyhow::Result<()> {
    let kwargs = args.call.arguments.kwargs()?;
    let call_timeout = args.call.arguments.timeout()?;
    if args.call.arguments.get && args.call.method.is_none() {
        anyhow::bail!("--get says how to make the call that --call names; name one");
    }
    let source = Source::parse(&args.source)?;
    let mut options = LoadOptions::new(source.clone())
        .mode(match args.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Process => Mode::Process,
            ModeArg::Swarm => Mode::Swarm,
        })
        .startup_timeout(seconds(&args.startup_timeout, "--startup-timeout")?)
        .call_timeout(call_timeout)
        .keep(args.keep);
    for item in &args.env {
        let (key, value) = key_value(item, "--env")?;
        options = options.env_var(key, value);
    }
    if let Some(name) = args.name {
        options = options.name(name);
    }
    if let Some(token) = args.token {
        options = options.token(token);
    }
    let container = &args.container;
    if let Some(env_type) = container.env_type {
        options = options.env_type(env_type.into());
    }
    if let Some(port) = container.http_port {
        options = options.http_port(port);
    }
    if let Some(memory) = &container.memory {
        options = options.memory_limit(byte_size(memory)?);
    }
    if let Some(cpus) = container.cpus {
        options = options.cpu_limit(cpus);
    }
    options = options.pids_limit(container.pids_limit);
    if let Some(lease) = &args.lease {
        options = match seconds_or_zero(lease, "--lease")? {
            Some(lease) => options.lease(lease),
            None => options.no_lease(),
        };
    }
    if args.env.iter().any(|item| item.starts_with("RAYFINE_LEASE=")) {
        anyhow::bail!("the lease is set with --lease SECONDS, not -e RAYFINE_LEASE (Rayfine sets that variable itself)");
    }
    if args.keep && matches!(args.mode, ModeArg::Swarm) {
        anyhow::bail!("--keep is not offered in Swarm mode yet: a kept service could not be called again by id; keep it in Docker mode, or hold the run open");
    }
    match &source {
        Source::Image(_) => options = options.hosts(args.hosts.resolve()?),
        _ if args.hosts.given() => anyhow::bail!("--host places images; a folder runs as a local process and a URL is served where it is"),
        _ => {}
    }
    if let Some(replicas) = args.replicas {
        if !matches!(source, Source::Image(_)) {
            anyhow::bail!("--replicas starts copies of an image; `{}` is not one", args.source);
        }
        if args.call.arguments.get {
            anyhow::bail!("--get is not served by a pool's balancing; call one replica by its URL instead");
        }
        return match args.keep {
            true => pool::run_kept(options, replicas, args.call.method.is_some(), json).await,
            false => pool::run(options, replicas, &args.call.method, kwargs, json).await,
        };
    }
    let started = Instant::now();
    let env = rayfine::load_env(options).await?;
    let ready_in = started.elapsed();
    let outcome = run_loaded(&env, &args.call.method, kwargs, args.call.arguments.get, json, ready_in).await;
    if args.keep {
        let source_text = match &source {
            Source::Folder(folder) => Some(folder.display().to_string()),
            Source::Image(image) => Some(image.clone()),
            Source::Url(_) => None,
        };
        if let Some(source_text) = source_text {
            records::save(&records::Record::of(&env, source_text))?;
            if !json {
                eprintln!("kept running as {}; stop it with `rayfine cleanup {}`", env.id(), env.id());
            }
        }
    } else {
        env.cleanup().await?;
    }
    outcome
}

/// Says the environment is ready and what it offers, then makes the call, if any: a long call
/// (or one that fails) must not hide that the start worked.
async fn run_loaded(env: &EnvironmentWrapper, method: &Option<String>, kwargs: Value, get: bool, json: bool, ready_in: std::time::Duration) -> anyhow::Result<()> {
    let methods = env.list_methods().await?;
    if !json {
        eprintln!("{} ({} mode, id {}) ready in {:.2} s", env.name(), env.mode(), env.id(), ready_in.as_secs_f64());
        output::methods(&methods);
    }
    let result = match method {
        Some(method) if get => Some(env.call_get(method, kwargs, None).await?),
        Some(method) => Some(env.call(method, kwargs).await?),
        None => None,
    };
    if json {
        let summary = json!({
            "id": env.id(), "name": env.name(), "mode": env.mode(), "url": env.url(),
            "ready_seconds": ready_in.as_secs_f64(), "methods": methods, "result": result,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if let Some(result) = result {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

/// Connects to a kept environment by id or name, or to a URL; returns its record too.
async fn connect(target: &TargetArgs) -> anyhow::Result<(EnvironmentWrapper, Option<records::Record>)> {
    let (options, record) = if target.target.starts_with("http://") || target.target.starts_with("https://") {
        let mut options = LoadOptions::url(&target.target);
        if let Some(token) = &target.token {
            options = options.token(token);
        }
        if let Some(env_type) = target.env_type {
            options = options.env_type(env_type.into());
        }
        (options, None)
    } else {
        let record = records::find(&target.target)?;
        // A kept environment that is gone is said to be so at once, not after a wait.
        if let Some(stopped) = stopped(&record).await {
            return Err(stopped.into());
        }
        let env_type = match target.env_type {
            Some(given) => given.into(),
            None => record.env_type().await?,
        };
        let options = LoadOptions::url(&record.url).token(&record.token).name(&record.name).env_type(env_type);
        (options, Some(record))
    };
    // It runs already: a short wait only bridges a server that is just now coming up.
    let options = options.startup_timeout(std::time::Duration::from_secs(3));
    Ok((rayfine::load_env(options).await?, record))
}

/// Why a kept environment is not running, if it is not: its container exited or is gone, or its
/// server process is gone (with the last lines of its log).
async fn stopped(record: &records::Record) -> Option<rayfine::Error> {
    let reason = match &record.container_id {
        Some(id) => rayfine::docker::describe_exit_on(&record.docker_host().ok()?, id).await?,
        None if records::is_alive(record.pid) => return None,
        None => format!("its server process {} is gone", record.pid),
    };
    Some(rayfine::Error::Stopped { name: record.name.clone(), reason, logs: records::last_log_lines(&record.id, 20) })
}

/// A connection error on a kept environment says whether it has stopped.
async fn explain_kept(err: rayfine::Error, record: &Option<records::Record>) -> rayfine::Error {
    if !matches!(err, rayfine::Error::Connection { .. }) {
        return err;
    }
    let Some(record) = record else { return err };
    // The broken connection is seen before the exit is.
    for _ in 0..20 {
        if let Some(stopped) = stopped(record).await {
            return stopped;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    err
}

async fn call(args: CallArgs, json: bool) -> anyhow::Result<()> {
    let kwargs = args.arguments.kwargs()?;
    let timeout = args.arguments.timeout()?;
    let (env, record) = connect(&args.target).await?;
    let result = match args.arguments.get {
        true => env.call_get(&args.method, kwargs, Some(timeout)).await,
        false => env.call_with(&args.method, &[], kwargs, Some(timeout)).await,
    };
    env.cleanup().await?;
    let result = match result {
        Ok(result) => result,
        Err(err) => return Err(explain_kept(err, &record).await.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&json!({ "result": result }))?);
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

async fn methods(args: TargetArgs, json: bool) -> anyhow::Result<()> {
    let (env, record) = connect(&args).await?;
    let methods = env.list_methods().await;
    env.cleanup().await?;
    let methods = match methods {
        Ok(methods) => methods,
        Err(err) => return Err(explain_kept(err, &record).await.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "methods": methods }))?);
    } else {
        output::methods(&methods);
    }
    Ok(())
}

/// Containers from every engine named, and the engines that answered. This machine's engine not
/// answering is no error (`ps` and `cleanup` still serve process-mode environments on a machine
/// without Docker); another's is said, and the others are still listed.
async fn managed_containers(hosts: &[rayfine::DockerHost]) -> (Vec<ManagedContainer>, Vec<rayfine::DockerHost>) {
    let listed = hosts.iter().map(|host| async move { (host, rayfine::docker::list_managed_containers_on(host).await) });
    let mut containers = Vec::new();
    let mut answered = Vec::new();
    for (host, listing) in futures_util::future::join_all(listed).await {
        match listing {
            Ok(found) => {
                // A Swarm task's container is shown as its service.
                containers.extend(found.into_iter().filter(|c| !c.labels.contains_key(SWARM_SERVICE_LABEL)));
                answered.push(host.clone());
            }
            Err(rayfine::Error::Engine(err)) if err.is_unavailable() && *host == rayfine::DockerHost::Local => {}
            Err(err) => tracing::warn!("{host}: {err}"),
        }
    }
    (containers, answered)
}

/// The label the engine puts on a Swarm task's container.
const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.id";

/// Rayfine's Swarm services on every engine named (those that are managers).
async fn managed_services(hosts: &[rayfine::DockerHost]) -> Vec<ManagedService> {
    let listed = hosts.iter().map(|host| async move { (host, rayfine::docker::list_managed_services_on(host).await) });
    let mut services = Vec::new();
    for (host, listing) in futures_util::future::join_all(listed).await {
        match listing {
            Ok(found) => services.extend(found),
            Err(rayfine::Error::Engine(err)) if err.is_unavailable() => {}
            Err(err) => tracing::warn!("{host}: {err}"),
        }
    }
    services
}

/// The engines named, and those kept environments' records name: a kept replica on another host
/// is listed and removed without naming its host again.
fn hosts_and_recorded(hosts: &args::HostArgs) -> anyhow::Result<Vec<rayfine::DockerHost>> {
    let mut all = hosts.resolve()?;
    for host in records::live().iter().filter_map(|r| r.docker_host().ok()) {
        if !all.contains(&host) {
            all.push(host);
        }
    }
    Ok(all)
}

async fn ps(hosts: &args::HostArgs, json: bool) -> anyhow::Result<()> {
    let hosts = hosts_and_recorded(hosts)?;
    let (containers, answered) = managed_containers(&hosts).await;
    let services = managed_services(&hosts).await;
    // A kept container's record outlives nothing: drop records of containers that are gone from
    // an engine that was asked.
    let records: Vec<records::Record> = records::live()
        .into_iter()
        .filter(|r| match &r.container_id {
            Some(id) if r.docker_host().is_ok_and(|h| answered.contains(&h)) && !containers.iter().any(|c| id.starts_with(&c.container_id)) => {
                records::forget(&r.id);
                false
            }
            Some(_) => false,
            None => true,
        })
        .collect();
    output::ps(&records, &containers, &services, json);
    Ok(())
}

async fn cleanup(args: args::CleanupArgs, json: bool) -> anyhow::Result<()> {
    if !args.all && !args.orphans && args.targets.is_empty() {
        anyhow::bail!("name what to stop (ids or names), or pass --all or --orphans");
    }
    let hosts = hosts_and_recorded(&args.hosts)?;
    let (containers, _) = managed_containers(&hosts).await;
    let services = managed_services(&hosts).await;
    let doomed_services: Vec<&ManagedService> = services
        .iter()
        .filter(|s| args.all || (args.orphans && s.is_orphan()) || args.targets.iter().any(|t| s.env_id == *t || s.name == *t || s.pool() == Some(t.as_str())))
        .collect();
    let mut doomed_containers: Vec<&ManagedContainer> = Vec::new();
    let mut chosen: Vec<records::Record> = Vec::new();
    if args.all {
        chosen = records::live().into_iter().filter(|r| r.container_id.is_none()).collect();
        doomed_containers.extend(containers.iter());
    }
    if args.orphans {
        doomed_containers.extend(containers.iter().filter(|c| c.is_orphan()));
    }
    for target in &args.targets {
        if doomed_services.iter().any(|s| s.env_id == *target || s.name == *target || s.pool() == Some(target.as_str())) {
            continue;
        }
        let matching: Vec<&ManagedContainer> = containers
            .iter()
            .filter(|c| c.env_id == *target || c.name == *target || c.pool() == Some(target.as_str()) || (target.len() >= 6 && c.container_id.starts_with(target.as_str())))
            .collect();
        if !matching.is_empty() {
            doomed_containers.extend(matching);
            continue;
        }
        chosen.push(records::find(target)?);
    }
    doomed_containers.sort_by(|a, b| (&a.host, &a.container_id).cmp(&(&b.host, &b.container_id)));
    doomed_containers.dedup_by(|a, b| a.host == b.host && a.container_id == b.container_id);
    for record in &chosen {
        records::stop(record);
    }
    let mut by_host: std::collections::BTreeMap<&rayfine::DockerHost, Vec<String>> = std::collections::BTreeMap::new();
    for container in &doomed_containers {
        by_host.entry(&container.host).or_default().push(container.container_id.clone());
    }
    let removals = by_host.iter().map(|(host, ids)| rayfine::docker::remove_containers_on(host, ids));
    let mut failures: Vec<String> = futures_util::future::join_all(removals).await.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect();
    let mut services_by_host: std::collections::BTreeMap<&rayfine::DockerHost, Vec<ManagedService>> = std::collections::BTreeMap::new();
    for service in &doomed_services {
        services_by_host.entry(&service.host).or_default().push((*service).clone());
    }
    let removals = services_by_host.iter().map(|(host, services)| rayfine::docker::remove_services_on(host, services));
    failures.extend(futures_util::future::join_all(removals).await.into_iter().filter_map(|r| r.err().map(|e| e.to_string())));
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    for container in &doomed_containers {
        records::forget(&container.env_id);
    }
    for service in &doomed_services {
        records::forget(&service.env_id);
    }
    let ids: Vec<&str> =
        chosen.iter().map(|r| r.id.as_str()).chain(doomed_containers.iter().map(|c| c.env_id.as_str())).chain(doomed_services.iter().map(|s| s.env_id.as_str())).collect();
    if json {
        println!("{}", json!({ "removed": ids }));
    } else {
        eprintln!("removed {} environment(s){}", ids.len(), if ids.is_empty() { String::new() } else { format!(": {}", ids.join(", ")) });
    }
    Ok(())
}

/// Exit code for an error: 1 when the environment's own code raised, 2 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<rayfine::Error>() {
        Some(e) if e.is_raised() => 1,
        _ => 2,
    }
}

/// Context helper kept here so `main` stays small.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}
