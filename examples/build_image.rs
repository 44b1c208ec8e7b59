//! Build an environment into an image, run it in Docker, call it, clean up: the quick start of
//! the original Rayfine-Env.
//!
//! ```text
//! bash .ci/setup && RAYFINE_BASE_IMAGE=rayfine-test/python:bookworm cargo run --example build_image
//! ```
//!
//! `.ci/setup` makes an offline Python base image and the static server that stage 2 injects.
//! `RAYFINE_BASE_IMAGE` points the environment's `FROM` at that image; on a machine with a
//! registry, leave it out and `python:3.12-slim` is used. The image `rayfine-example/gridgame`
//! is kept (remove it with `docker rmi`); the container is not.

use std::time::Instant;

use rayfine::{load_env, CleanupGuard, ImageBuilder, LoadOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), rayfine::Error> {
    let _cleanup = CleanupGuard::new();
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/environments/gridgame");
    let tag = "rayfine-example/gridgame:latest";

    let started = Instant::now();
    let built = ImageBuilder::new()
        .on_progress(|p| {
            if p.line.starts_with("Step ") || p.stage == rayfine::build::BuildStage::Server {
                println!("  [{:?}] {}", p.stage, p.line);
            }
        })
        .build(folder, tag)
        .await?;
    println!("built {} ({}: {}) in {:.1} s", built.tag, built.env_type, built.reason, started.elapsed().as_secs_f64());

    let started = Instant::now();
    let env = load_env(LoadOptions::image(tag).name("gridgame")).await?;
    println!("container {} ready at {} in {:.0} ms", &env.container_id().unwrap_or_default()[..12], env.url(), started.elapsed().as_secs_f64() * 1e3);

    let mut state = env.call("reset", json!({"size": 4, "seed": 7})).await?;
    let episode = state["episode_id"].as_str().unwrap_or_default().to_string();
    let goal = state["observation"]["goal"].clone();
    while !state["done"].as_bool().unwrap_or(true) {
        let position = &state["observation"]["position"];
        let action = if position[0] != goal[0] { "right" } else { "down" };
        state = env.call("step", json!({"episode_id": episode, "action": action})).await?;
    }
    println!("episode {episode} done in {} steps, total reward {}", state["info"]["steps"], state["info"]["total_reward"]);

    env.cleanup().await?;
    Ok(())
}
