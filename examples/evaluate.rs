//! Load an environment, call it, clean up: the quick start of the original Rayfine-Env, in Rust.
//!
//! ```text
//! cargo build && cargo run --example evaluate
//! ```
//!
//! Plays one episode of the OpenEnv-style grid game in `environments/gridgame`: `reset`, then
//! `step` towards the goal until the episode is done.

use rayfine::{load_env, CleanupGuard, LoadOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), rayfine::Error> {
    // Removes every environment if main returns early, panics, or gets Ctrl-C.
    let _cleanup = CleanupGuard::new();
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/environments/gridgame");
    let env = load_env(LoadOptions::folder(folder).name("gridgame")).await?;
    println!("loaded {} ({} mode) at {}", env.name(), env.mode(), env.url());
    for method in env.list_methods().await? {
        println!("  {}{}", method.name, method.signature);
    }

    let mut state = env.call("reset", json!({"size": 5, "seed": 42})).await?;
    let episode = state["episode_id"].as_str().unwrap_or_default().to_string();
    let goal = state["observation"]["goal"].clone();
    println!("episode {episode}: goal at {goal}");
    while !state["done"].as_bool().unwrap_or(true) {
        let position = &state["observation"]["position"];
        let action = if position[0] != goal[0] { "right" } else { "down" };
        state = env.call("step", json!({"episode_id": episode, "action": action})).await?;
        println!("  {action:>5} -> {} reward {}", state["observation"]["position"], state["reward"]);
    }
    println!("done in {} steps, total reward {}", state["info"]["steps"], state["info"]["total_reward"]);

    env.cleanup().await?;
    Ok(())
}
