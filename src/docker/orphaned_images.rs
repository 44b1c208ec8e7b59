//! Removes the images a build left behind when the engine lost a race with a removal.
//!
//! The classic builder writes a step's image first and links it to its parent second. When
//! the parent is pruned between the two (a removal of another image, by anyone, took it from
//! the cache), the build fails with "failed to set parent" and the step's image stays: untagged,
//! parentless, and, for the last step (the LABEL Rayfine appends), carrying Rayfine's labels.
//! Nothing can reach it again: no tag names it, and no build finds it in the cache, which the
//! engine looks up among a parent's children. The build is retried (`build::run_build`); this
//! is what removes the image it lost.
//!
//! A Rayfine build makes no other image of that shape: every step's image but the first of a
//! `FROM scratch` build has a parent. One that a container uses is left alone (the engine
//! refuses to remove it without force). The only image that could be taken wrongly is another
//! build's, in the instant between the engine's two writes; that build then fails as a cache
//! race and is retried. A removal, which waits until no Rayfine build (nor image copy: a loaded
//! image is untagged until the engine tags it) is under way, has no such instant to fear.

use super::engine::{short, Engine};
use crate::labels;

/// Removes every untagged, parentless image carrying Rayfine's label; returns how many went.
/// Never fails: an image that cannot be listed or removed now is left for a later sweep, and
/// the log says why.
pub(crate) async fn remove_orphaned_images(engine: &Engine) -> usize {
    let managed = format!("{}=true", labels::MANAGED);
    let found = match engine.list_parentless_untagged(&managed).await {
        Ok(found) => found,
        Err(err) => {
            tracing::debug!("cannot list untagged images: {err}");
            return 0;
        }
    };
    let mut removed = 0;
    for id in &found {
        match engine.remove_unused_image(id).await {
            Ok(()) => {
                tracing::info!("removed image {}, left untagged and parentless by a build that lost a race with a removal", short(id));
                removed += 1;
            }
            Err(err) if err.is_not_found() => {}
            Err(err) => tracing::debug!("kept untagged image {}: {err}", short(id)),
        }
    }
    removed
}
