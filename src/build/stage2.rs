//! Stage 2 of a function-based environment: Rayfine's static server and its stdlib-only worker
//! added on top of the user's image, as one new layer.
//!
//! This is not a Dockerfile build. The engine's classic builder commits a container for every
//! metadata instruction (ENV, EXPOSE, ENTRYPOINT, each LABEL), about 1.5 s each on a small
//! machine; instead, one container is created from the base (never started), the two files are
//! uploaded into it, and it is committed once with the image settings from
//! `templates/server-image.changes`. No pip, no network, no shell needed in the base: it works on
//! `FROM scratch`. A content key label makes a rebuild of an unchanged environment a no-op.

use std::collections::{BTreeMap, HashMap};

use super::context::ContextArchive;
use super::scratch::with_scratch_container;
use crate::content_key::fnv1a;
use crate::docker::engine::{ContainerSpec, Engine};
use crate::error::Result;
use crate::labels;

/// Image settings of the server layer, as `docker commit --change` lines.
const IMAGE_CHANGES: &str = include_str!("../../templates/server-image.changes");

/// Label holding the content key of a stage-2 image.
const CONTENT_KEY: &str = "rayfine.content_key";

/// Adds `server` and the worker on top of `base` and tags the result `tag`, unless `tag` already
/// is exactly that. Returns the image id.
pub(crate) async fn add_server_layer(engine: &Engine, base: &str, tag: &str, server: &[u8], image_labels: &BTreeMap<String, String>) -> Result<String> {
    let base_id = engine.inspect_image(base).await?.id;
    let worker = crate::server::WORKER_SCRIPT.as_bytes();
    let label_text: String = image_labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let key = format!("{:016x}", fnv1a(&[base_id.as_bytes(), server, worker, IMAGE_CHANGES.as_bytes(), label_text.as_bytes()]));
    if let Ok(existing) = engine.inspect_image(tag).await {
        if existing.labels.get(CONTENT_KEY) == Some(&key) {
            return Ok(existing.id);
        }
    }

    let mut files = ContextArchive::new();
    files.add_bytes("rayfine/rayfine-server", server, 0o755)?;
    files.add_bytes("rayfine/worker.py", worker, 0o644)?;
    let archive = files.finish()?;

    let spec = ContainerSpec {
        image: base.to_string(),
        // Only "managed": the committed image keeps this container's labels, and an image must
        // not name an owner.
        labels: HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]),
        // Never started; an entrypoint is required by the engine for images that have none.
        entrypoint: Some(vec!["/rayfine/rayfine-server".into()]),
        ..Default::default()
    };
    with_scratch_container(engine, "stage2", spec, |id| async move {
        engine.copy_into(&id, archive).await?;
        let mut changes = IMAGE_CHANGES.trim_end().to_string();
        for (k, v) in image_labels.iter().chain(std::iter::once((&CONTENT_KEY.to_string(), &key))) {
            changes.push_str(&format!("\nLABEL {}={}", quote(k), quote(v)));
        }
        let (repo, image_tag) = split_tag(tag);
        Ok(engine.commit(&id, repo, image_tag, &changes).await?)
    })
    .await
}

/// `repo:tag` → (`repo`, `tag`), the tag defaulting to `latest`.
fn split_tag(reference: &str) -> (&str, &str) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => (&reference[..last_slash + colon], &reference[last_slash + colon + 1..]),
        None => (reference, "latest"),
    }
}

/// A Dockerfile-quoted word.
pub(crate) fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_and_keys_differ() {
        assert_eq!(split_tag("a/b:c"), ("a/b", "c"));
        assert_eq!(split_tag("localhost:5000/a"), ("localhost:5000/a", "latest"));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
