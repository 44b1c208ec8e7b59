//! Image operations: inspect, build, list, remove.

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::{Stream, StreamExt};

use super::{Engine, EngineError, EngineResult};

/// What Rayfine reads of an image.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// The engine's image id.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// The command it runs: its entrypoint followed by its cmd.
    pub command: Vec<String>,
}

/// A build through the engine's API (the classic builder).
#[derive(Debug, Clone)]
pub struct BuildRequest<'a> {
    /// The tag to give the image.
    pub tag: &'a str,
    /// The context, a tar archive holding a `Dockerfile`.
    pub context: Vec<u8>,
    /// `--build-arg`s.
    pub build_args: HashMap<String, String>,
    /// Ignore the layer cache.
    pub no_cache: bool,
    /// Ask for no step-by-step output.
    pub quiet: bool,
}

/// One item of a build's stream.
#[derive(Debug)]
pub enum BuildEvent {
    /// Output text (one or more lines).
    Output(String),
    /// The build failed with this message (a step's error, or the daemon refusing the build).
    Failed(String),
}

impl Engine {
    /// Reads an image's id, labels and command (404 when there is no such image).
    pub async fn inspect_image(&self, image: &str) -> EngineResult<ImageFacts> {
        let inspected = self.docker.inspect_image(image).await.map_err(|source| EngineError::InspectImage { image: image.into(), source })?;
        let config = inspected.config.unwrap_or_default();
        let command = config.entrypoint.iter().flatten().chain(config.cmd.iter().flatten()).cloned().collect();
        Ok(ImageFacts { id: inspected.id.unwrap_or_default(), labels: config.labels.unwrap_or_default(), command })
    }

    /// Runs a build; the stream ends after a [`BuildEvent::Failed`] or the last output. The
    /// stream must be drained: a build can succeed at the HTTP level and fail inside the stream.
    pub fn build<'e>(&'e self, request: BuildRequest<'_>) -> impl Stream<Item = EngineResult<BuildEvent>> + Send + 'e {
        let tag = request.tag.to_string();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(request.tag)
            .rm(true)
            .forcerm(true)
            .nocache(request.no_cache)
            .q(request.quiet)
            .buildargs(&request.build_args)
            .build();
        self.docker.build_image(options, None, Some(bollard::body_full(request.context.into()))).filter_map(move |item| {
            std::future::ready(match item {
                Ok(info) => match info.error_detail {
                    Some(detail) => Some(Ok(BuildEvent::Failed(detail.message.unwrap_or_else(|| "the build failed".into())))),
                    None => info.stream.map(|text| Ok(BuildEvent::Output(text))),
                },
                Err(bollard::errors::Error::DockerStreamError { error }) => Some(Ok(BuildEvent::Failed(error))),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => Some(Ok(BuildEvent::Failed(message))),
                Err(source) => Some(Err(EngineError::Build { tag: tag.clone(), source })),
            })
        })
    }

    /// Tags of every image with label `key=value` (untagged ones left out).
    pub async fn list_image_tags(&self, label: &str) -> EngineResult<Vec<String>> {
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let options = ListImagesOptionsBuilder::default().all(false).filters(&filters).build();
        let images = self.docker.list_images(Some(options)).await.map_err(|source| EngineError::ListImages { source })?;
        Ok(images.into_iter().flat_map(|i| i.repo_tags).filter(|t| t != "<none>:<none>").collect())
    }

    /// Ids of the images with no tag, no digest (never pulled) and no parent that carry the
    /// label `key=value`.
    pub async fn list_parentless_untagged(&self, label: &str) -> EngineResult<Vec<String>> {
        let filters = HashMap::from([("label", vec![label.to_string()]), ("dangling", vec!["true".to_string()])]);
        let options = ListImagesOptionsBuilder::default().all(false).filters(&filters).build();
        let images = self.docker.list_images(Some(options)).await.map_err(|source| EngineError::ListImages { source })?;
        let none = |names: &[String]| names.iter().all(|n| n.starts_with("<none>"));
        Ok(images.into_iter().filter(|i| i.parent_id.is_empty() && none(&i.repo_tags) && none(&i.repo_digests)).map(|i| i.id).collect())
    }

    /// What made the image's last layer or setting: the newest entry of its history.
    pub async fn last_step(&self, image: &str) -> EngineResult<String> {
        let history = self.docker.image_history(image).await.map_err(|source| EngineError::InspectImage { image: image.into(), source })?;
        Ok(history.into_iter().next().map(|step| step.created_by).unwrap_or_default())
    }

    /// Removes an image by id unless a container uses it (409 then, 404 when there is none).
    pub async fn remove_unused_image(&self, id: &str) -> EngineResult<()> {
        let options = RemoveImageOptionsBuilder::default().force(false).noprune(true).build();
        self.docker.remove_image(id, Some(options), None).await.map(|_| ()).map_err(|source| EngineError::RemoveImage { image: id.into(), source })
    }

    /// Removes an image by tag or id, forcibly (404 when there is none).
    pub async fn remove_image(&self, image: &str) -> EngineResult<()> {
        let options = RemoveImageOptionsBuilder::default().force(true).noprune(false).build();
        self.docker.remove_image(image, Some(options), None).await.map(|_| ()).map_err(|source| EngineError::RemoveImage { image: image.into(), source })
    }
}
