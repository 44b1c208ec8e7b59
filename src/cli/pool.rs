//! `rayfine run IMAGE --replicas N`: a pool for the length of the command, or N kept replicas
//! labelled with one pool id.

use std::time::Instant;

use serde_json::{json, Value};

use super::{output, records};
use rayfine::{EnvironmentWrapper, LoadOptions, PoolOptions, Source};

/// Starts a pool, says where its replicas run, makes the call through it, removes it.
pub async fn run(options: LoadOptions, replicas: usize, method: &Option<String>, kwargs: Value, json: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let pool = rayfine::load_pool(options, PoolOptions::new(replicas)).await?;
    let ready_in = started.elapsed();
    let outcome = async {
        let members = pool.members();
        let methods = members.first().map(EnvironmentWrapper::list_methods);
        let methods = match methods {
            Some(listing) => listing.await?,
            None => Vec::new(),
        };
        if !json {
            eprintln!("pool {} ({} replicas) ready in {:.2} s", pool.id(), members.len(), ready_in.as_secs_f64());
            for member in &members {
                eprintln!("  {:<28} {:<24} {}", member.id(), host_of(member), member.url());
            }
            output::methods(&methods);
        }
        let result = match method {
            Some(method) => Some(pool.call(method, kwargs).await?),
            None => None,
        };
        if json {
            let summary = json!({
                "pool": pool.id(), "ready_seconds": ready_in.as_secs_f64(), "methods": methods, "result": result,
                "members": members.iter().map(member_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else if let Some(result) = result {
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        anyhow::Ok(())
    }
    .await;
    pool.cleanup().await?;
    outcome
}

/// Starts `replicas` kept environments of the image, placed over the hosts, labelled with one
/// pool id, and records each; if one fails, those started are removed.
pub async fn run_kept(options: LoadOptions, replicas: usize, has_call: bool, json: bool) -> anyhow::Result<()> {
    if has_call {
        anyhow::bail!("with --keep, --replicas starts the replicas only: call one by its id afterwards (`rayfine ps` lists them)");
    }
    let Source::Image(image) = options.source.clone() else { anyhow::bail!("--replicas runs an image") };
    let pool_id = format!("{}-{:08x}", slug(&image), std::process::id().rotate_left(16) ^ nanos_now());
    let options = options.label(rayfine::pool::POOL_LABEL, &pool_id);
    let started = rayfine::pool::start_replicas(&options, replicas).await?;
    for env in &started {
        records::save(&records::Record::of(env, image.clone()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "pool": pool_id, "members": started.iter().map(member_json).collect::<Vec<_>>() }))?);
    } else {
        eprintln!("kept {} replicas as pool {pool_id}; stop them with `rayfine cleanup {pool_id}`", started.len());
        for member in &started {
            eprintln!("  {:<28} {:<24} {}", member.id(), host_of(member), member.url());
        }
    }
    Ok(())
}

fn host_of(env: &EnvironmentWrapper) -> String {
    env.docker_host().map_or_else(|| "-".into(), ToString::to_string)
}

fn member_json(env: &EnvironmentWrapper) -> Value {
    json!({ "id": env.id(), "host": host_of(env), "url": env.url(), "container_id": env.container_id() })
}

/// The image's name without registry, path or tag, for the pool's id.
fn slug(image: &str) -> String {
    let name = image.rsplit('/').next().unwrap_or(image);
    let name = name.split([':', '@']).next().unwrap_or(name);
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// Nanoseconds of the wall clock, to make pool ids of concurrent commands differ.
fn nanos_now() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}
