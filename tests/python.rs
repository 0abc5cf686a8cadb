//! The Python client package (`clients/python`), as a worker would get it: installed
//! into a fresh virtual environment from the repository, then its pytest suite run
//! against this build's `credvault` binary (single flight, pushed rotations, kill -9
//! and restart, the staleness bound, deletion, the httpx and requests adapters
//! against a fake Fleetio, the asyncio client, the example worker, stubs that match
//! the proto, mutual TLS with certificates made here). Needs python3 (3.10 or newer) with venv, and PyPI for the
//! dependencies (grpcio, protobuf, pytest, httpx, requests, grpcio-tools).

use std::path::Path;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A CA, a server certificate for 127.0.0.1 and a client certificate (CN `py-worker`),
/// written as PEM files into `dir` for the package's mutual TLS test.
fn write_pki(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "credvault python test ca");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(
        "credvault",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf("py-worker", &[], ExtendedKeyUsagePurpose::ClientAuth);
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
}

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
    let pki = tmp.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    write_pki(&pki);
    let out = run(
        Command::new(&python)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-s",
                "tests",
            ])
            .current_dir(&package)
            .env("CREDVAULT_BIN", env!("CARGO_BIN_EXE_credvault"))
            .env("CREDVAULT_TEST_PKI", &pki)
            // The tests import the installed package, never the source tree.
            .env_remove("PYTHONPATH"),
        "pytest clients/python/tests",
    );
    eprintln!("{out}");
    assert!(out.contains(" passed"), "{out}");
}
