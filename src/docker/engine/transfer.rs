//! Moving an image between engines without a registry (`docker save | docker load`, streamed),
//! and reading how much an engine holds, for placement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::ImportImageOptionsBuilder;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::{Engine, EngineError, EngineResult};

/// How long one image copy may take in all: the engine answers a load only once it has read the
/// whole archive, so the usual per-request timeout would cut off any image bigger than a link
/// carries in two minutes.
const COPY_LIMIT: Duration = Duration::from_secs(3600);

/// What an engine holds and has, as `docker info` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Containers running now, Rayfine's and anyone else's.
    pub running: u32,
}

impl Engine {
    /// Its CPUs, memory and running containers.
    pub async fn capacity(&self) -> EngineResult<Capacity> {
        let info = self.info().await?;
        let count = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        Ok(Capacity { cpus: count(info.ncpu).max(1), memory_bytes: info.mem_total.and_then(|m| u64::try_from(m).ok()).unwrap_or(0), running: count(info.containers_running) })
    }

    /// Copies `image` from this engine into `target`, streamed (never held whole in memory);
    /// returns the bytes carried. Its tag, labels and layers arrive as they were.
    pub async fn copy_image_to(&self, image: &str, target: &Engine) -> EngineResult<u64> {
        let source_docker = self.docker.clone().with_timeout(COPY_LIMIT);
        let target_docker = target.docker.clone().with_timeout(COPY_LIMIT);
        let carried = Arc::new(AtomicU64::new(0));
        // An error reading the source ends the upload; the load then fails for that reason, which
        // is the one to report.
        let export_failure: Arc<Mutex<Option<bollard::errors::Error>>> = Arc::default();
        let archive = {
            let carried = carried.clone();
            let export_failure = export_failure.clone();
            source_docker.export_image(image).map(move |chunk| match chunk {
                Ok(bytes) => {
                    carried.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(bytes)
                }
                Err(err) => {
                    let text = err.to_string();
                    *export_failure.lock() = Some(err);
                    Err(std::io::Error::other(text))
                }
            })
        };
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut answers = target_docker.import_image_stream(options, archive, None);
        let mut failure = None;
        while let Some(answer) = answers.next().await {
            if let Err(err) = answer {
                failure = Some(err);
                break;
            }
        }
        drop(answers);
        if let Some(source) = export_failure.lock().take() {
            return Err(EngineError::ExportImage { image: image.into(), engine: self.host.to_string(), source });
        }
        if let Some(source) = failure {
            return Err(EngineError::ImportImage { image: image.into(), engine: target.host.to_string(), source });
        }
        Ok(carried.load(Ordering::Relaxed))
    }
}
