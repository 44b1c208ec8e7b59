//! Docker test helpers: the offline base images, the static server, and a scope per test that
//! removes the images it built and fails the test if any of its containers is left.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rayfine::{ImageBuilder, LoadOptions};

use super::util::repo;

/// Debian bookworm + python3, made by `.ci/images` with debootstrap (no registry here).
pub const BASE_IMAGE: &str = "rayfine-test/python:bookworm";
/// The same + FastAPI and uvicorn.
pub const FASTAPI_IMAGE: &str = "rayfine-test/python-fastapi:bookworm";
/// The FastAPI one + OpenEnv's server (openenv 0.10.0), the base of OpenEnv-layout test images.
pub const OPENENV_IMAGE: &str = "rayfine-test/python-openenv:bookworm";
/// The label every container and image of a test carries.
pub const SCOPE_LABEL: &str = "rayfine.test_scope";

/// Makes the base images (when missing) and finds or builds the static server, once per run.
pub fn prerequisites() -> PathBuf {
    static SERVER: OnceLock<PathBuf> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let status = Command::new("bash").arg(repo().join(".ci/images")).status().expect("run .ci/images");
            assert!(status.success(), ".ci/images failed: the Docker tests need its base images");
            // Built every run (a no-op when fresh), so the images never get a stale server. Its
            // own target folder: the one `cargo test` uses is locked while tests run.
            let target = repo().join("target/static-server");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--no-default-features", "--bin", "rayfine-server", "--target", "x86_64-unknown-linux-gnu"])
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(repo())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the static server failed");
            target.join("x86_64-unknown-linux-gnu/release/rayfine-server")
        })
        .clone()
}

/// One test's Docker objects.
pub struct DockerScope {
    pub id: String,
    pub server: PathBuf,
    tags: Mutex<Vec<String>>,
}

impl DockerScope {
    pub fn new(test: &str) -> DockerScope {
        let server = prerequisites();
        let id = format!("{test}-{}-{}", std::process::id(), rand_suffix());
        DockerScope { id, server, tags: Mutex::new(Vec::new()) }
    }

    /// A tag private to this test; it and its `-base` are removed by `finish`.
    pub fn tag(&self, name: &str) -> String {
        let tag = format!("rayfine-it/{name}:{}", self.id.replace('_', "-"));
        let mut tags = self.tags.lock();
        tags.push(tag.clone());
        tags.push(format!("{tag}-base"));
        tag
    }

    /// A builder on the test base image, with the static server and the scope label.
    pub fn builder(&self, base: &str) -> ImageBuilder {
        ImageBuilder::new().base_image(base).server_binary(&self.server).label(SCOPE_LABEL, &self.id).quiet(true)
    }

    /// Load options for `image`, labelled with the scope.
    pub fn options(&self, image: &str) -> LoadOptions {
        LoadOptions::image(image).label(SCOPE_LABEL, &self.id).startup_timeout(Duration::from_secs(60))
    }

    /// Containers of this scope, as `docker ps -a` sees them (an independent witness).
    pub fn containers(&self) -> Vec<String> {
        docker_lines(&["ps", "-a", "--filter", &format!("label={SCOPE_LABEL}={}", self.id), "--format", "{{.ID}} {{.Status}} {{.Names}}"])
    }

    /// Waits (bounded) until no container of the scope is left; panics naming them.
    pub fn assert_no_container_left(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = self.containers();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("containers left behind by {}:\n{}", self.id, left.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes the scope's images and checks nothing of it is left.
    pub fn finish(self) {
        self.assert_no_container_left(Duration::from_secs(15));
        let tags = self.tags.lock().clone();
        for tag in &tags {
            remove_image(tag);
        }
        let images = docker_lines(&["images", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", self.id)]);
        for image in &images {
            remove_image(image);
        }
        let left = docker_lines(&["images", "--filter", &format!("label={SCOPE_LABEL}={}", self.id), "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
        assert!(left.is_empty(), "images left behind by {}: {left:?}", self.id);
    }
}

impl Drop for DockerScope {
    fn drop(&mut self) {
        // A failing test still removes what it made (finish consumes the scope on success).
        // Containers first: an image a container still uses would only be untagged, and stay.
        for line in self.containers() {
            if let Some(id) = line.split_whitespace().next() {
                let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            }
        }
        for tag in self.tags.lock().iter() {
            remove_image(tag);
        }
        for image in docker_lines(&["images", "-q", "--filter", &format!("label={SCOPE_LABEL}={}", self.id)]) {
            remove_image(&image);
        }
    }
}

/// Removes an image (forcibly, with its untagged parents) through Rayfine, not the `docker`
/// command: Rayfine's removal waits for the builds other tests run meanwhile, where the command's
/// would prune a layer one of them is taking from the cache and fail it (leaving an orphan image
/// behind). On a thread of its own: callers may be inside a test's runtime.
fn remove_image(image: &str) {
    let image = image.to_string();
    let removed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(rayfine::docker::remove_image(&image)).map_err(|err| format!("{image}: {err}"))
    })
    .join();
    if let Ok(Err(err)) = removed {
        eprintln!("cannot remove image {err}");
    }
}

pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let output = Command::new("docker").args(args).output().expect("run docker");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect()
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    format!("{:08x}", hasher.finish() as u32)
}
