//! Docker: the one connection to the engine ([`engine`]), and housekeeping of what Rayfine
//! created in it (find by label, remove for sure, say how a container ended).

pub(crate) mod cache_lock;
mod distribute;
pub(crate) mod engine;
pub(crate) mod host;
mod manage;
pub(crate) mod orphaned_images;
pub(crate) mod owner_watch;
pub(crate) mod placement;
mod reference;
mod removal;

pub use crate::labels;
pub use crate::programs::{is_static_elf, locate as locate_static_server, BUILD_COMMAND as STATIC_SERVER_BUILD_COMMAND};
pub(crate) use distribute::ensure_image;
pub use engine::{is_available as docker_available, Capacity, EngineError};
pub use host::{BadHost, DockerHost, HOSTS_ENV};
pub use manage::{
    describe_exit, describe_exit_on, list_managed_containers, list_managed_containers_on, list_managed_images, remove_containers, remove_containers_on, remove_image, remove_image_on,
    ManagedContainer, list_managed_services_on, remove_services_on, ManagedService,
};
pub(crate) use reference::validate_reference;
pub(crate) use removal::{is_gone_within, remove_and_wait, remove_now, Leftover};

/// The files of the image cache lock named by `host`'s address (see `cache_lock`), so that a
/// test's own engine leaves none behind once it is torn down. Never for an engine still in use:
/// its later holders would lock other files than its current ones.
#[doc(hidden)]
pub fn image_cache_lock_files(host: &DockerHost) -> Vec<std::path::PathBuf> {
    cache_lock::CacheLock::address_files_of(host)
}
