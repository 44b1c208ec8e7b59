//! Docker: classify an environment folder, build it into an image, run images as containers,
//! and find what Rayfine left in the engine.

mod builder;
mod container;
mod context;
mod detect;
mod dockerfile;
mod engine;
mod inject;
pub use crate::labels;
mod manage;
mod owner_watch;
mod pylex;
mod server_binary;
mod syntax_check;

pub(crate) use builder::validate_reference;
pub use builder::{build_image_from_env, BuildProgress, BuildStage, BuiltImage, ImageBuilder, ProgressFn, DEFAULT_BASE_IMAGE};
pub use container::describe_exit;
pub(crate) use container::{remove_now, DockerLaunch, DockerServer};
pub use detect::{Detection, EnvDetector, EnvType, DEFAULT_HTTP_PORT};
pub use engine::is_available as docker_available;
pub use manage::{list_managed_containers, list_managed_images, remove_containers, remove_image, ManagedContainer};
pub use server_binary::{is_static_elf, locate as locate_static_server, BUILD_COMMAND as STATIC_SERVER_BUILD_COMMAND};
