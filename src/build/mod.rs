//! [`ImageBuilder`]: an environment folder becomes an image, in two stages for function-based
//! environments.
//!
//! Stage 1 builds the user's Dockerfile (or a default one) as `<tag>-base`: the dependencies,
//! which change rarely and are cached by the engine. Stage 2 adds Rayfine's static server and
//! its worker on top as `<tag>`: a few megabytes, no network, seconds. HTTP-based environments
//! bring their own server and are built in one stage. Everything goes through the engine's API
//! (see [`crate::docker::engine`]); the docker CLI is never run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod context;
mod scratch;
mod stage2;
mod syntax_check;

use futures_util::StreamExt;

use crate::detect::{dockerfile_path, Detection, EnvDetector, EnvType, DEFAULT_HTTP_PORT};
use crate::docker::cache_lock::{BuildHold, CacheLock};
use crate::docker::engine::{BuildEvent, BuildRequest, Engine};
use crate::error::{Error, Result};
use crate::{labels, programs};
pub(crate) use context::ContextArchive;
use stage2::{add_server_layer, quote};

/// The Dockerfile of a folder that has none.
const DEFAULT_DOCKERFILE: &str = include_str!("../../templates/Dockerfile.default");
/// The base image when neither `--base-image` nor `RAYFINE_BASE_IMAGE` names one.
pub const DEFAULT_BASE_IMAGE: &str = "python:3.12-slim";

/// Which build is running, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStage {
    /// The user's Dockerfile (`<tag>-base`, or `<tag>` for HTTP-based environments).
    Environment,
    /// Rayfine's server added on top (`<tag>`).
    Server,
}

/// One line of build output.
#[derive(Debug, Clone)]
pub struct BuildProgress {
    /// The build it belongs to.
    pub stage: BuildStage,
    /// The tag being built.
    pub tag: String,
    /// The engine's output line, e.g. `Step 2/5 : COPY env.py /app/env.py`.
    pub line: String,
}

/// Receives build output as it streams.
pub type ProgressFn = Arc<dyn Fn(&BuildProgress) + Send + Sync>;

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The runnable image.
    pub tag: String,
    /// The stage-1 image of a function-based environment.
    pub base_tag: Option<String>,
    /// How the environment is served.
    pub env_type: EnvType,
    /// Why the detector decided so.
    pub reason: String,
    /// The engine's image id of `tag`.
    pub image_id: String,
}

/// Builds environment images. Options are set builder-style:
///
/// ```no_run
/// # async fn demo() -> rayfine::Result<()> {
/// let built = rayfine::ImageBuilder::new()
///     .base_image("python:3.12-slim")
///     .build_arg("EXTRA", "1")
///     .build("environments/echo", "echo:latest")
///     .await?;
/// println!("{} ({})", built.tag, built.env_type);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ImageBuilder {
    env_type: Option<EnvType>,
    base_image: Option<String>,
    build_args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    no_cache: bool,
    quiet: bool,
    dockerfile: Option<PathBuf>,
    server_binary: Option<PathBuf>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for ImageBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBuilder")
            .field("env_type", &self.env_type)
            .field("base_image", &self.base_image)
            .field("build_args", &self.build_args.keys().collect::<Vec<_>>())
            .field("no_cache", &self.no_cache)
            .field("dockerfile", &self.dockerfile)
            .finish()
    }
}

impl ImageBuilder {
    /// A builder with the defaults: detect the type, the base image from `RAYFINE_BASE_IMAGE`.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    /// Builds as this type whatever the detector would say.
    pub fn env_type(mut self, env_type: EnvType) -> ImageBuilder {
        self.env_type = Some(env_type);
        self
    }

    /// The base image: the `FROM` of a folder without Dockerfile, and the `BASE_IMAGE` build
    /// argument of one with (a Dockerfile opts in with `ARG BASE_IMAGE` / `FROM ${BASE_IMAGE}`).
    pub fn base_image(mut self, image: impl Into<String>) -> ImageBuilder {
        self.base_image = Some(image.into());
        self
    }

    /// A `--build-arg` for the user's Dockerfile.
    pub fn build_arg(mut self, key: impl Into<String>, value: impl Into<String>) -> ImageBuilder {
        self.build_args.insert(key.into(), value.into());
        self
    }

    /// An extra label on every image built (besides Rayfine's own).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> ImageBuilder {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Builds with this Dockerfile instead of the folder's top-level one, like `docker build -f`:
    /// a relative path is taken from the current folder, else from the environment folder. The
    /// build context is still the whole folder.
    pub fn dockerfile(mut self, path: impl Into<PathBuf>) -> ImageBuilder {
        self.dockerfile = Some(path.into());
        self
    }

    /// Ignores the layer cache.
    pub fn no_cache(mut self, no_cache: bool) -> ImageBuilder {
        self.no_cache = no_cache;
        self
    }

    /// Asks the engine for no step-by-step output (errors still come through).
    pub fn quiet(mut self, quiet: bool) -> ImageBuilder {
        self.quiet = quiet;
        self
    }

    /// The static server to inject; default: found as [`programs::locate`] describes.
    pub fn server_binary(mut self, path: impl Into<PathBuf>) -> ImageBuilder {
        self.server_binary = Some(path.into());
        self
    }

    /// Receives every line of build output.
    pub fn on_progress(mut self, progress: impl Fn(&BuildProgress) + Send + Sync + 'static) -> ImageBuilder {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Builds `folder` as `tag`.
    pub async fn build(&self, folder: impl AsRef<Path>, tag: &str) -> Result<BuiltImage> {
        let folder = folder.as_ref();
        crate::docker::validate_reference(tag)?;
        for key in self.build_args.keys().chain(self.labels.keys()) {
            if key.is_empty() || key.contains('=') {
                return Err(Error::InvalidInput(format!("`{key}` is not a valid build argument or label name")));
            }
        }
        let dockerfile = dockerfile_path(folder, self.dockerfile.as_deref())?;
        let mut detector = EnvDetector::with_override(self.env_type);
        if self.dockerfile.is_some() {
            detector = detector.dockerfile(&dockerfile);
        }
        let detection = detector.detect(folder)?;
        // Checked before anything is built, so a missing server fails in a second, not after
        // stage 1.
        let server = match detection.env_type {
            EnvType::Function => Some(programs::locate(self.server_binary.as_deref())?),
            EnvType::Http => None,
        };
        let engine = Engine::connect().await?;
        // Until the image is tagged (or, for a build abandoned mid-way, until the engine has
        // ended it): no Rayfine removal prunes a layer this build takes from the cache meanwhile.
        let cache_in_use = BuildHold::new(CacheLock::of_engine(&engine).await.for_build().await);
        let built = self.build_holding_the_cache(&engine, folder, tag, &dockerfile, detection, server).await;
        // A request that failed on its way (a connection that broke mid-build) may have left the
        // engine building: then the hold settles as for an abandoned build.
        if !matches!(built, Err(Error::Engine(_))) {
            cache_in_use.ended();
        }
        built
    }

    /// [`ImageBuilder::build`] once the folder is checked and the cache lock held.
    async fn build_holding_the_cache(&self, engine: &Engine, folder: &Path, tag: &str, dockerfile: &Path, detection: Detection, server: Option<PathBuf>) -> Result<BuiltImage> {
        let mut own_labels = BTreeMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::VERSION.to_string(), labels::RAYFINE_VERSION.to_string()),
        ]);
        own_labels.extend(self.labels.clone());

        let mut build_args = self.build_args.clone();
        if let Some(base) = self.resolved_base_image(dockerfile) {
            build_args.entry("BASE_IMAGE".into()).or_insert(base);
        }

        let Some(server) = server else {
            let mut image_labels = own_labels.clone();
            image_labels.insert(labels::ENV_TYPE.into(), EnvType::Http.as_str().into());
            image_labels.insert(labels::HTTP_PORT.into(), detection.http_port.unwrap_or(DEFAULT_HTTP_PORT).to_string());
            let image_id = self.run_build(engine, &BuildStep { stage: BuildStage::Environment, tag, folder, dockerfile, build_args: &build_args, image_labels: &image_labels }).await?;
            return Ok(BuiltImage { tag: tag.into(), base_tag: None, env_type: EnvType::Http, reason: detection.reason, image_id });
        };

        let base_tag = format!("{tag}-base");
        let mut base_labels = own_labels.clone();
        base_labels.insert(labels::STAGE.into(), "base".into());
        self.run_build(engine, &BuildStep { stage: BuildStage::Environment, tag: &base_tag, folder, dockerfile, build_args: &build_args, image_labels: &base_labels }).await?;
        self.report(BuildStage::Server, tag, "checking env.py with the image's python3");
        syntax_check::check_env_syntax(engine, &base_tag, tag).await?;

        let server_bytes = std::fs::read(&server).map_err(|source| Error::Io { context: format!("cannot read {}", server.display()), source })?;
        let mut image_labels = own_labels;
        image_labels.insert(labels::ENV_TYPE.into(), EnvType::Function.as_str().into());
        image_labels.insert(labels::STAGE.into(), "server".into());
        self.report(BuildStage::Server, tag, &format!("adding the server ({} KiB) and the worker on top of {base_tag}", server_bytes.len() / 1024));
        let image_id = add_server_layer(engine, &base_tag, tag, &server_bytes, &image_labels).await?;
        self.report(BuildStage::Server, tag, &format!("tagged {tag}"));
        Ok(BuiltImage { tag: tag.into(), base_tag: Some(base_tag), env_type: EnvType::Function, reason: detection.reason, image_id })
    }

    /// `--base-image`, else `RAYFINE_BASE_IMAGE`, else (only for a folder without Dockerfile,
    /// which needs some base) the default.
    fn resolved_base_image(&self, dockerfile: &Path) -> Option<String> {
        self.base_image
            .clone()
            .or_else(|| std::env::var("RAYFINE_BASE_IMAGE").ok().filter(|v| !v.is_empty()))
            .or_else(|| (!dockerfile.is_file()).then(|| DEFAULT_BASE_IMAGE.to_string()))
    }

    fn report(&self, stage: BuildStage, tag: &str, line: &str) {
        if let (Some(progress), false) = (&self.progress, self.quiet) {
            progress(&BuildProgress { stage, tag: tag.to_string(), line: line.to_string() });
        }
    }

    /// Builds the folder's Dockerfile through the engine; returns the image id.
    ///
    /// The classic builder reuses intermediate images as its cache. When another build's image is
    /// removed at the same moment, the engine prunes an intermediate this build has just picked,
    /// and the build fails with "unknown parent image ID" (or "No such image: sha256:…" when the
    /// next step's container is created from it). Nothing is wrong with the folder, so
    /// the build is run again, without the cache: a build that takes no cached layer builds on
    /// no other build's images, so no removal elsewhere can reach it (a retry with the cache
    /// could pick another layer that goes the same way, and did on a busy machine). Rayfine's own
    /// removals wait for the build instead (`docker::cache_lock`); this is for everyone else's.
    async fn run_build(&self, engine: &Engine, step: &BuildStep<'_>) -> Result<String> {
        let BuildStep { stage, tag, .. } = *step;
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        let mut no_cache = self.no_cache;
        loop {
            match self.run_build_once(engine, step, no_cache).await {
                Err(Error::Build { message, .. }) if attempt < ATTEMPTS && is_cache_race(&message) => {
                    let note = format!("an image in the layer cache was removed during the build ({}); building again without the cache", first_line(&message));
                    tracing::warn!("{tag}: {note}");
                    self.report(stage, tag, &note);
                    attempt += 1;
                    no_cache = true;
                }
                other => return other,
            }
        }
    }

    async fn run_build_once(&self, engine: &Engine, step: &BuildStep<'_>, no_cache: bool) -> Result<String> {
        let BuildStep { stage, tag, folder, dockerfile, build_args, image_labels } = *step;
        let request = BuildRequest {
            tag,
            context: user_context(folder, dockerfile, self.dockerfile.is_some(), image_labels)?,
            build_args: build_args.clone().into_iter().collect(),
            no_cache,
            quiet: self.quiet,
        };
        let mut stream = std::pin::pin!(engine.build(request));
        let mut last_step: Option<String> = None;
        let mut recent: Vec<String> = Vec::new();
        while let Some(item) = stream.next().await {
            let text = match item? {
                BuildEvent::Output(text) => text,
                BuildEvent::Failed(message) => return Err(build_error(tag, last_step, &recent, message)),
            };
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                if line.starts_with("Step ") {
                    last_step = Some(line.to_string());
                    recent.clear();
                } else {
                    recent.push(line.to_string());
                    if recent.len() > 10 {
                        recent.remove(0);
                    }
                }
                if let Some(progress) = &self.progress {
                    progress(&BuildProgress { stage, tag: tag.to_string(), line: line.to_string() });
                }
            }
        }
        Ok(engine.inspect_image(tag).await?.id)
    }
}
/// One Dockerfile build: which stage, the tag it makes, from which folder and Dockerfile, with
/// what.
#[derive(Clone, Copy)]
struct BuildStep<'a> {
    stage: BuildStage,
    tag: &'a str,
    folder: &'a Path,
    dockerfile: &'a Path,
    build_args: &'a BTreeMap<String, String>,
    image_labels: &'a BTreeMap<String, String>,
}

/// Builds `folder` as `tag` with the default options (see [`ImageBuilder`]).
pub async fn build_image_from_env(folder: impl AsRef<Path>, tag: &str) -> Result<BuiltImage> {
    ImageBuilder::new().build(folder, tag).await
}

/// The folder as a build context. Its Dockerfile (the named one, or a default one) goes in as the
/// context's `Dockerfile`, with the labels appended as one LABEL line: given through the API,
/// each label would be a build step of its own (~1.5 s on the classic builder), and a LABEL at
/// the end applies to the image the last stage makes.
fn user_context(folder: &Path, path: &Path, named: bool, image_labels: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut archive = ContextArchive::new();
    archive.add_folder(folder)?;
    let mut dockerfile = match std::fs::read(path) {
        Ok(bytes) => bytes,
        // Only a folder's missing top-level Dockerfile gets the default; a named one must be read.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !named => {
            let mut text = DEFAULT_DOCKERFILE.to_string();
            if folder.join("requirements.txt").is_file() {
                text.push_str("RUN python3 -m pip install --no-cache-dir -r /app/requirements.txt\n");
            }
            text.into_bytes()
        }
        Err(source) => return Err(Error::Io { context: format!("cannot read {}", path.display()), source }),
    };
    let pairs: Vec<String> = image_labels.iter().map(|(k, v)| format!("{}={}", quote(k), quote(v))).collect();
    dockerfile.extend_from_slice(format!("\nLABEL {}\n", pairs.join(" ")).as_bytes());
    archive.add_bytes("Dockerfile", &dockerfile, 0o644)?;
    archive.finish()
}

/// Whether a build failed because the engine pruned a cached layer under it, not because of the
/// Dockerfile.
fn is_cache_race(message: &str) -> bool {
    message.contains("unknown parent image ID")
        || message.contains("failed to set parent")
        // The image the last step made was pruned before the engine read its config back.
        || (message.contains("failed to get digest") && message.contains("no such file or directory"))
        // The image the previous step made (or took from the cache) was pruned before this
        // step's container was created from it: named by its id, never by a tag a user wrote.
        || message.contains("No such image: sha256:")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn build_error(tag: &str, step: Option<String>, recent: &[String], message: String) -> Error {
    let mut message = message.trim().to_string();
    let output: Vec<&String> = recent.iter().filter(|l| !message.contains(l.as_str())).collect();
    if !output.is_empty() {
        message.push_str("\n--- last output of that step ---\n");
        message.push_str(&output.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n"));
    }
    Error::Build { tag: tag.to_string(), step, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pruned_cache_layer_counts_as_a_race() {
        assert!(is_cache_race("failed to export image: failed to set parent sha256:84f8: unknown parent image ID sha256:84f8"));
        assert!(is_cache_race("failed to get digest sha256:74d3: open /var/lib/docker/image/fuse-overlayfs/imagedb/content/sha256/74d3: no such file or directory"));
        // Seen in CI: another test's image removal pruned the cached layer under a RUN step.
        assert!(is_cache_race("No such image: sha256:3223a322889769d445b022296edbc4819158ff1407a57a7af403a8938edfe32f"));
        assert!(!is_cache_race("The command '/bin/sh -c exit 3' returned a non-zero code: 3"));
        assert!(!is_cache_race("pull access denied for nosuchbase, repository does not exist or may require 'docker login'"));
        assert!(!is_cache_race("No such image: nosuchbase:latest"));
        assert!(!is_cache_race("dockerfile parse error line 2: unknown instruction: FROB"));
    }
}
