//! Rayfine turns an environment folder (`env.py`, usually a `Dockerfile`) into an isolated service
//! and lets a program call it like a local object.
//!
//! - [`load_env`] starts an environment and returns an [`EnvironmentWrapper`] to call it with;
//!   [`blocking`] does the same for synchronous programs.
//! - [`server`]: the generic `/call` server injected into every function-based environment.
//! - [`protocol`]: the wire types, shared by the server and the client.
//!
//! ```no_run
//! # async fn demo() -> rayfine::Result<()> {
//! let _cleanup = rayfine::CleanupGuard::new();
//! let env = rayfine::load_env(rayfine::LoadOptions::folder("environments/echo")).await?;
//! let result = env.call("echo", serde_json::json!({"text": "hello"})).await?;
//! assert_eq!(result, "hello");
//! # Ok(()) }
//! ```

pub mod labels;
pub mod protocol;
pub mod server;
pub mod watchdog;

#[cfg(feature = "client")]
mod client;

#[cfg(feature = "client")]
pub use client::{
    blocking, cleanup_all_environments, docker, get_environment, kept_log_path, list_active_environments, load_env, state_dir,
    CleanupGuard, ContainerLimits, EnvironmentWrapper, DEFAULT_LEASE, DEFAULT_PIDS_LIMIT, Error, LoadOptions, Mode, Result, ServerClient, ServerProgram, Source,
};
#[cfg(feature = "client")]
pub use client::docker::{build_image_from_env, BuiltImage, EnvDetector, EnvType, ImageBuilder};
