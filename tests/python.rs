//! The Python client package (`clients/python`), as a worker would get it: installed
//! into a fresh virtual environment from the repository, then its pytest suite run
//! against this build's `credvault` binary (single flight, pushed rotations, kill -9
//! and restart, the staleness bound, deletion, the httpx and requests adapters
//! against a fake Fleetio, the asyncio client, the example worker, stubs that match
//! the proto). Needs python3 (3.10 or newer) with venv, and PyPI for the
//! dependencies (grpcio, protobuf, pytest, httpx, requests, grpcio-tools).

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_python_client_passes_its_tests_against_the_real_server() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let tmp = tempfile::TempDir::new().unwrap();
    let venv = tmp.path().join("venv");
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    let python = venv.join("bin/python");
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(format!("{}[test]", package.display())),
        "pip install clients/python[test]",
    );
    let out = run(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", "tests"])
            .current_dir(&package)
            .env("CREDVAULT_BIN", env!("CARGO_BIN_EXE_credvault"))
            // The tests import the installed package, never the source tree.
            .env_remove("PYTHONPATH"),
        "pytest clients/python/tests",
    );
    eprintln!("{out}");
    assert!(out.contains(" passed"), "{out}");
}
