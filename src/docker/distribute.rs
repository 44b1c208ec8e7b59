//! Getting an image onto the engine that is to run it, without a registry: an engine on another
//! host that lacks the image gets a copy from this machine's engine (`docker save | docker load`,
//! streamed), once, however many environments wait for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::cache_lock::CacheLock;
use super::engine::{Engine, ImageFacts};
use super::host::DockerHost;
use crate::error::{Error, Result};

/// One gate per engine and image: replicas starting at once on a host that lacks their image
/// wait for one copy instead of each sending their own.
static COPIES: Lazy<Mutex<HashMap<(DockerHost, String), Gate>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// Held while an image is copied to an engine.
type Gate = Arc<tokio::sync::Mutex<()>>;

/// The facts of `image` on `target`, copying it there from this machine's engine first when
/// `target` is another engine that lacks it.
pub(crate) async fn ensure_image(target: &Engine, image: &str) -> Result<ImageFacts> {
    if *target.host() == DockerHost::Local {
        return target.inspect_image(image).await.map_err(|err| if err.is_not_found() { missing(image, "in the local Docker engine") } else { err.into() });
    }
    // The local engine's image is the one meant: a tag rebuilt here since the last copy is
    // copied again, rather than the remote engine running the old one.
    let source = Engine::connect().await?;
    let wanted = match source.inspect_image(image).await {
        Ok(facts) => Some(facts.id),
        Err(err) if err.is_not_found() || err.is_unavailable() => None,
        Err(err) => return Err(err.into()),
    };
    let current = |facts: &ImageFacts| wanted.as_ref().is_none_or(|id| *id == facts.id);
    match target.inspect_image(image).await {
        Ok(facts) if current(&facts) => return Ok(facts),
        Ok(_) => {}
        Err(err) if !err.is_not_found() => return Err(err.into()),
        Err(_) => {}
    }
    let gate = COPIES.lock().entry((target.host().clone(), image.to_string())).or_default().clone();
    let _copying = gate.lock().await;
    // Someone else's copy may have finished while this one waited.
    if let Ok(facts) = target.inspect_image(image).await {
        if current(&facts) {
            return Ok(facts);
        }
    }
    if wanted.is_none() {
        return Err(missing(image, &format!("on {} nor in the local engine to copy it from", target.host())));
    }
    tracing::info!("copying image {image} to {} (it has no copy, or an older one)", target.host());
    let started = Instant::now();
    // Held as a build holds it: the engine writes a loaded image before it tags it, and a
    // removal on that engine takes an untagged, parentless image of Rayfine's for a build's orphan.
    let loading = CacheLock::of_engine(target).await.for_build().await;
    let bytes = source.copy_image_to(image, target).await?;
    drop(loading);
    tracing::info!("copied image {image} to {}: {:.1} MB in {:.1} s", target.host(), bytes as f64 / 1e6, started.elapsed().as_secs_f64());
    target.inspect_image(image).await.map_err(|err| {
        if err.is_not_found() {
            Error::InvalidInput(format!("image {image} was copied to {} but is not there under that name: is it an image id rather than a tag?", target.host()))
        } else {
            err.into()
        }
    })
}

/// No such image where it was looked for.
fn missing(image: &str, where_: &str) -> Error {
    Error::InvalidInput(format!("no image `{image}` {where_}: build one with `rayfine build <env-folder> -t {image}`, or pull it"))
}
