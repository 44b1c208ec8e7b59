//! The Python package (`python/`): built from this checkout into a virtual environment under
//! `target/`, then its pytest suite run against real servers (process mode and Docker mode), so
//! the README's one test command covers the Python face too.
//!
//! The virtual environment sees the system's site-packages for maturin and pytest (`.ci/setup`
//! installs them); the package is built with `--no-build-isolation`, so nothing is downloaded
//! here, in a target folder of its own (this test's cargo holds `target/`'s lock).

use std::path::Path;
use std::process::Command;

use crate::util::{bench_figure, quick_bench, repo};

fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_python_package_builds_and_its_tests_pass() {
    let venv = repo().join("target/python-venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        run(Command::new("python3").args(["-m", "venv", "--system-site-packages"]).arg(&venv), "creating the virtual environment");
    }
    let has = |module: &str| Command::new(&python).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success());
    assert!(has("maturin") && has("pytest"), "maturin and pytest are missing: `python3 -m pip install maturin pytest` (bash .ci/setup does)");
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-build-isolation", "--force-reinstall", "--no-deps"])
            .arg(repo().join("python"))
            .env("CARGO_TARGET_DIR", repo().join("target/python-build"))
            // A debug build: the tests need the behaviour, not the speed, and it builds in half the time.
            .env("MATURIN_PEP517_ARGS", "--profile dev")
            .env_remove("RAYFINE_SERVER_BIN"),
        "building and installing the package",
    );
    let report = run(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(Path::new("python/tests"))
            .current_dir(repo())
            .env_remove("RAYFINE_SERVER_BIN"),
        "the Python package's tests",
    );
    assert!(report.contains(" passed") && !report.contains("skipped"), "every Python test ran:\n{report}");
    bench_rows_of_the_python_client(&python);
}

/// `rayfine bench --only python` (its plumbing, not its figures) with the package just built:
/// the Python client's rows arrive beside the Rust client's, each with a figure.
fn bench_rows_of_the_python_client(python: &Path) {
    let report = quick_bench("python", &[("RAYFINE_BENCH_PYTHON", python.as_os_str())]);
    for needle in ["Rust client", "(rayfine, sync)", "(rayfine.aio)", "calls/s from one loop"] {
        assert!(bench_figure(&report, needle) > 0.0, "{needle}: {report:#}");
    }
}
