//! Builds the static `rayfine-server` that the package carries inside its extension: the server a
//! process-mode environment runs, the one stage 2 injects into images, and the owner watchdog.
//! A Python user then needs nothing but `pip install ./python`.
//!
//! It is built by a nested cargo in its own target folder (`target/static-server`, the one
//! `.ci/setup` and the tests use), so it does not wait on this build's lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("python/ is inside the repository").to_path_buf();
    let target_dir = workspace.join("target/static-server");
    let binary = target_dir.join("x86_64-unknown-linux-gnu/release/rayfine-server");
    println!("cargo:rerun-if-changed=../src");
    println!("cargo:rerun-if-changed=../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "--quiet", "--release", "--no-default-features", "--bin", "rayfine-server", "--target", "x86_64-unknown-linux-gnu"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // Under `cargo clippy` this is clippy-driver: the nested build would then lint the server
        // again and, its fingerprint changed, rebuild it from scratch (4 minutes of CI) for a
        // binary that is the same either way. The crate itself is linted by its own clippy run.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the static rayfine-server failed");
    println!("cargo:rustc-env=RAYFINE_EMBEDDED_SERVER={}", binary.display());
    // Its content key, so the extension names its cached copy without hashing 4 MB at every
    // import: FNV-1a, as stage 2's content key.
    let bytes = std::fs::read(&binary).expect("the static server was just built");
    let key = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3));
    println!("cargo:rustc-env=RAYFINE_EMBEDDED_SERVER_KEY={key:016x}");
}
