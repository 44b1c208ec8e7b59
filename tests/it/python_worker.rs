//! The worker's Python unit tests (`tests/python/`, standard library `unittest`), run by `cargo
//! test` so the README's one test command covers both halves of the server.

use std::process::Command;

use crate::util::repo;

#[test]
fn the_workers_python_unit_tests_pass() {
    let output = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests/python", "-v"])
        .current_dir(repo())
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the worker's unit tests failed:\n{report}");
    assert!(report.contains("Ran ") && !report.contains("Ran 0 tests"), "no test ran:\n{report}");
}
