//! Removes the images a build left behind when the engine lost a race with a removal.
//!
//! The classic builder writes a step's image first and links it to its parent second. When
//! the parent is pruned between the two (a removal of another image, by anyone, took it from
//! the cache), the build fails with "failed to set parent" and the step's image stays: untagged,
//! parentless, and, for the last step (the LABEL Rayfine appends), carrying Rayfine's labels.
//! Nothing can reach it again: no tag names it, and no build finds it in the cache, which the
//! engine looks up among a parent's children. The build is retried (`build::run_build`), and
//! the next image removal through Rayfine (`remove_image`) removes the image it lost.
//!
//! So an image is taken only if it has that shape and its own last step is Rayfine's LABEL as
//! the classic builder writes it (`#(nop)  LABEL rayfine.managed=true ... rayfine.version=...`).
//! That leaves alone an image built `FROM` a Rayfine image, which inherits the labels but not the
//! step; one pulled by digest (it has a digest); one a container uses (the engine refuses to
//! remove it without force); and every image of an engine whose store keeps no parents
//! (containerd's), whose builds are not the classic builder's. A removal, the one caller, waits
//! until no Rayfine build nor image copy (a loaded image is untagged until the engine tags it) is
//! under way on the engine, so no image in the instant between the engine's two writes is taken.

use super::engine::{short, Engine};
use crate::labels;

/// Removes every image a build lost this way (the shape and last step above); returns how many
/// went.
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
        match engine.last_step(id).await {
            Ok(step) if is_rayfines_label_step(&step) => {}
            _ => continue,
        }
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

/// Whether a history entry is the LABEL step Rayfine appends to a Dockerfile, as the classic
/// builder records it.
fn is_rayfines_label_step(created_by: &str) -> bool {
    let managed = format!("{}=true", labels::MANAGED);
    let version = format!("{}=", labels::VERSION);
    created_by.contains("#(nop)") && created_by.contains(" LABEL ") && created_by.contains(&managed) && created_by.contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rayfines_own_label_step_counts() {
        assert!(is_rayfines_label_step("/bin/sh -c #(nop)  LABEL rayfine.managed=true rayfine.stage=base rayfine.version=0.1.0"));
        assert!(!is_rayfines_label_step("LABEL rayfine.managed=true rayfine.version=0.1.0"), "BuildKit's");
        assert!(!is_rayfines_label_step("/bin/sh -c #(nop)  CMD [\"python3\"]"), "a step of an image built FROM one of Rayfine's");
        assert!(!is_rayfines_label_step("/bin/sh -c #(nop)  LABEL owner=me"));
        assert!(!is_rayfines_label_step(""));
    }
}
