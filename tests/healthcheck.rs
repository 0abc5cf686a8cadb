//! `credvault healthcheck`, the probe the container image runs: exit 0 only on SERVING,
//! over plaintext and over TLS.

use std::process::Output;

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

async fn healthcheck(args: &[&str]) -> Output {
    tokio::process::Command::new(binary())
        .arg("healthcheck")
        .args(args)
        .output()
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn plaintext_serving_not_serving_and_unreachable() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let ok = healthcheck(&["--addr", &addr]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let ok = healthcheck(&[
        "--addr",
        &addr,
        "--service",
        "credvault.v1.CredentialVaultService",
    ])
    .await;
    assert!(ok.status.success(), "{}", stderr(&ok));

    let unknown = healthcheck(&["--addr", &addr, "--service", "no.such.Service"]).await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("NotFound"),
        "{}",
        stderr(&unknown)
    );

    // A server whose health says NOT_SERVING.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let not_serving = healthcheck(&["--addr", &down]).await;
    assert!(!not_serving.status.success());
    assert!(
        stderr(&not_serving).contains("NOT_SERVING"),
        "{}",
        stderr(&not_serving)
    );

    let closed = closed_port_url().await;
    let closed = closed
        .trim_start_matches("http://")
        .trim_end_matches("/api");
    let unreachable = healthcheck(&["--addr", closed, "--timeout", "1s"]).await;
    assert!(!unreachable.status.success());
    assert!(
        stderr(&unreachable).contains("cannot connect"),
        "{}",
        stderr(&unreachable)
    );
}

#[tokio::test]
async fn over_tls_with_a_private_ca() {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["credvault.internal".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        server_cert.pem(),
        server_key.serialize_pem(),
    ));
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let ca = ca_file.to_str().unwrap();
    let ok = healthcheck(&[
        "--addr",
        &addr,
        "--ca-file",
        ca,
        "--tls-server-name",
        "credvault.internal",
    ])
    .await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Without the private CA the certificate is not trusted.
    let untrusted = healthcheck(&[
        "--addr",
        &addr,
        "--tls",
        "--tls-server-name",
        "credvault.internal",
        "--timeout",
        "2s",
    ])
    .await;
    assert!(!untrusted.status.success());
    // Plaintext against a TLS port fails too.
    let plain = healthcheck(&["--addr", &addr, "--timeout", "2s"]).await;
    assert!(!plain.status.success());
}
