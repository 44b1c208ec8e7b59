//! Rayfine turns an environment folder (`env.py`, usually a `Dockerfile`) into an isolated service
//! and lets a program call it like a local object.
//!
//! - [`load_env`] starts an environment and returns an [`EnvironmentWrapper`] to call it with;
//!   [`blocking`] does the same for synchronous programs.
//! - [`detect`] classifies a folder; [`build`] makes it an image.
//! - [`server`]: the generic `/call` server injected into every function-based environment.
//! - [`protocol`]: the wire types, shared by the server and the client.
//! - [`docker`]: what Rayfine left in the engine (`rayfine ps`, `rayfine cleanup`).
//! - [`openenv`]: a typed OpenEnv client (`reset`, `step`, `state`), for Rayfine's server and
//!   OpenEnv's own.
//!
//! ```no_run
//! # async fn demo() -> rayfine::Result<()> {
//! let _cleanup = rayfine::CleanupGuard::new();
//! let env = rayfine::load_env(rayfine::LoadOptions::folder("environments/echo")).await?;
//! let result = env.call("echo", serde_json::json!({"text": "hello"})).await?;
//! assert_eq!(result, "hello");
//! # Ok(()) }
//! ```

pub mod exit_status;
pub mod labels;
pub mod protocol;
pub mod server;
pub mod ssh_tunnel;
pub mod watchdog;

#[cfg(feature = "client")]
mod backend;
#[cfg(feature = "client")]
pub mod build;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod content_key;
#[cfg(feature = "client")]
pub mod detect;
#[cfg(feature = "client")]
pub mod docker;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
mod http_client;
#[cfg(feature = "client")]
pub mod openenv;
#[cfg(feature = "client")]
pub mod pool;
#[cfg(feature = "client")]
mod programs;
#[cfg(feature = "client")]
mod random;

#[cfg(feature = "client")]
pub use build::{build_image_from_env, BuiltImage, ImageBuilder};
#[cfg(feature = "client")]
pub use client::{
    block_termination_signals, blocking, cleanup_all_environments, end_all_environments_now, end_environments_on_sigterm, get_environment, leave_signals_to_the_host, kept_log_path, list_active_environments, load_env, state_dir, CleanupGuard, ContainerLimits,
    EnvironmentWrapper, LoadOptions, Mode, Source, DEFAULT_LEASE, DEFAULT_PIDS_LIMIT,
};
#[cfg(feature = "client")]
pub use detect::{EnvDetector, EnvType};
#[cfg(feature = "client")]
pub use docker::DockerHost;
#[cfg(feature = "client")]
pub use pool::{load_pool, Balancing, Pool, PoolOptions, WarmPool};
#[cfg(feature = "client")]
pub use error::{Error, Result};
#[cfg(feature = "client")]
pub use http_client::ServerClient;
#[cfg(feature = "client")]
pub use programs::ServerProgram;
