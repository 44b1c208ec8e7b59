//! The `rayfine` command: thin wrappers over the library, text for people, `--json` for scripts.

pub mod args;
mod output;
mod records;

use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use args::{key_value, seconds, CallArgs, Cli, Command, ModeArg, RunArgs, TargetArgs};
use rayfine::{EnvironmentWrapper, LoadOptions, Mode, Source};

/// Runs one command; the exit code follows from the error, if any (see `main`).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_env(args, cli.json).await,
        Command::Call(args) => call(args, cli.json).await,
        Command::Methods(args) => methods(args, cli.json).await,
        Command::Ps => {
            output::ps(&records::live(), cli.json);
            Ok(())
        }
        Command::Cleanup(args) => cleanup(args, cli.json),
        Command::Serve(args) => Ok(rayfine::server::serve(args.config).await?),
    }
}

async fn run_env(args: RunArgs, json: bool) -> anyhow::Result<()> {
    let kwargs = args.call.arguments.kwargs()?;
    let call_timeout = seconds(args.call.arguments.timeout, "--timeout")?;
    let source = Source::parse(&args.source)?;
    let mut options = LoadOptions::new(source.clone())
        .mode(match args.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Process => Mode::Process,
        })
        .startup_timeout(seconds(args.startup_timeout, "--startup-timeout")?)
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
    let started = Instant::now();
    let env = rayfine::load_env(options).await?;
    let ready_in = started.elapsed();
    let outcome = run_loaded(&env, &args.call.method, kwargs, json, ready_in).await;
    if args.keep {
        if let (Some(pid), Source::Folder(folder)) = (env.pid(), &source) {
            let token = token_of(&env);
            records::save(&records::Record {
                id: env.id().into(),
                name: env.name().into(),
                url: env.url().into(),
                token,
                pid,
                source: folder.display().to_string(),
            })?;
            if !json {
                eprintln!("kept running as {}; stop it with `rayfine cleanup {}`", env.id(), env.id());
            }
        }
    } else {
        env.cleanup().await?;
    }
    outcome
}

/// A kept environment's record needs its token, so later commands can call it.
fn token_of(env: &EnvironmentWrapper) -> String {
    env.token().unwrap_or_default().to_string()
}

async fn run_loaded(env: &EnvironmentWrapper, method: &Option<String>, kwargs: Value, json: bool, ready_in: std::time::Duration) -> anyhow::Result<()> {
    let methods = env.list_methods().await?;
    let result = match method {
        Some(method) => Some(env.call(method, kwargs).await?),
        None => None,
    };
    if json {
        let summary = json!({
            "id": env.id(), "name": env.name(), "mode": env.mode(), "url": env.url(),
            "ready_seconds": ready_in.as_secs_f64(), "methods": methods, "result": result,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!("{} ({} mode, id {}) ready in {:.2} s", env.name(), env.mode(), env.id(), ready_in.as_secs_f64());
        output::methods(&methods);
        if let Some(result) = result {
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
    }
    Ok(())
}

/// Connects to a kept environment by id or name, or to a URL.
async fn connect(target: &TargetArgs) -> anyhow::Result<EnvironmentWrapper> {
    let options = if target.target.starts_with("http://") || target.target.starts_with("https://") {
        let mut options = LoadOptions::url(&target.target);
        if let Some(token) = &target.token {
            options = options.token(token);
        }
        options
    } else {
        let record = records::find(&target.target)?;
        LoadOptions::url(record.url).token(record.token).name(record.name)
    };
    let options = options.startup_timeout(std::time::Duration::from_secs(10));
    Ok(rayfine::load_env(options).await?)
}

async fn call(args: CallArgs, json: bool) -> anyhow::Result<()> {
    let kwargs = args.arguments.kwargs()?;
    let timeout = seconds(args.arguments.timeout, "--timeout")?;
    let env = connect(&args.target).await?;
    let result = env.call_with(&args.method, &[], kwargs, Some(timeout)).await;
    env.cleanup().await?;
    let result = result?;
    if json {
        println!("{}", serde_json::to_string(&json!({ "result": result }))?);
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

async fn methods(args: TargetArgs, json: bool) -> anyhow::Result<()> {
    let env = connect(&args).await?;
    let methods = env.list_methods().await;
    env.cleanup().await?;
    let methods = methods?;
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "methods": methods }))?);
    } else {
        output::methods(&methods);
    }
    Ok(())
}

fn cleanup(args: args::CleanupArgs, json: bool) -> anyhow::Result<()> {
    if !args.all && args.targets.is_empty() {
        anyhow::bail!("name what to stop (ids or names), or pass --all");
    }
    let chosen = if args.all {
        records::live()
    } else {
        args.targets.iter().map(|t| records::find(t)).collect::<anyhow::Result<Vec<_>>>()?
    };
    for record in &chosen {
        records::stop(record);
    }
    let ids: Vec<&str> = chosen.iter().map(|r| r.id.as_str()).collect();
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
