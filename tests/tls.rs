//! TLS and mutual TLS on the real binary: callers by client certificate or by
//! token, untrusted certificates refused, and a plaintext health-only port.
//! Certificates are made at test time (rcgen); no key material is committed.

use crate::common::*;
use credvault::api;
use credvault::api::credential_vault_service_client::CredentialVaultServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
    /// Named only by a SPIFFE id (a URI SAN), as a service mesh issues them.
    spiffe: (String, String),
    /// Signed by our CA, but its extended key usage is for servers only.
    server_only: (String, String),
    /// A CN that spells the SPIFFE id, and no URI SAN.
    cn_spells_spiffe: (String, String),
    /// Names two callers: a CN of one and the SPIFFE id of the other.
    ambiguous: (String, String),
}

const SPIFFE_ID: &str = "spiffe://cluster.local/ns/ingest/sa/worker";

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, cn: &str, sans: &[&str]) -> (String, String) {
    leaf_with(issuer, cn, sans, |_| {})
}

fn leaf_with(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    adjust: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    adjust(&mut params);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ours = ca("credvault test ca");
    let theirs = ca("someone else");
    Pki {
        ca_pem: ours.pem(),
        server: leaf(&ours, "credvault", &["credvault.test"]),
        client: leaf_with(&ours, "worker.internal", &["worker.internal"], |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }),
        stranger: leaf(&theirs, "worker.internal", &["worker.internal"]),
        spiffe: leaf_with(&ours, "", &[], |p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.subject_alt_names = vec![SanType::URI(SPIFFE_ID.try_into().unwrap())];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }),
        server_only: leaf_with(&ours, "worker.internal", &["worker.internal"], |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }),
        cn_spells_spiffe: leaf_with(&ours, SPIFFE_ID, &[], |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }),
        ambiguous: leaf_with(&ours, "worker.internal", &[], |p| {
            p.subject_alt_names = vec![SanType::URI(SPIFFE_ID.try_into().unwrap())];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }),
    }
}

async fn channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("credvault.test");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Appends `callers` to the setup's callers file, writes each `(flag, file name,
/// PEM text)` into `dir`, and returns the serve arguments with those flags.
fn tls_serve_args(
    dir: &std::path::Path,
    setup: &Setup,
    callers: &str,
    files: &[(&str, &str, &str)],
) -> Vec<String> {
    let mut text = std::fs::read_to_string(&setup.callers).unwrap();
    text.push_str(callers);
    std::fs::write(&setup.callers, text).unwrap();
    let mut args = setup.args.clone();
    for (flag, name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        args.extend([(*flag).to_owned(), path.to_str().unwrap().to_owned()]);
    }
    args
}

fn client(channel: Channel, token: Option<&str>) -> Client {
    CredentialVaultServiceClient::with_interceptor(
        channel,
        Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap())),
    )
}

#[tokio::test]
async fn mutual_tls_callers_tokens_and_a_plaintext_health_port() {
    let pki = pki();
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let callers = format!("\n[[caller]]\nname = \"mtls-worker\"\ntls_subject = \"worker.internal\"\npermissions = [\"headers.read\"]\n\n[[caller]]\nname = \"mesh-worker\"\ntls_subject = \"{SPIFFE_ID}\"\npermissions = [\"headers.read\"]\n");
    let mut args = tls_serve_args(
        dir.path(),
        &setup,
        &callers,
        &[
            ("--tls-cert", "server.pem", &pki.server.0),
            ("--tls-key", "server.key", &pki.server.1),
            ("--client-ca", "ca.pem", &pki.ca_pem),
        ],
    );
    args.extend(["--health-listen".into(), "127.0.0.1:0".into()]);
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let addr = process.addr.to_string();
    let logs = process.stderr();
    assert!(
        logs.contains("\"tls\":true") && logs.contains("\"mutual_tls\":true"),
        "{logs}"
    );

    // A token over TLS (no client certificate) works.
    let mut admin = client(
        channel(&addr, &pki.ca_pem, None).await.unwrap(),
        Some(&setup.tokens.admin),
    );
    create(&mut admin, "fleetio-acme", "key-00000001", "acct").await;

    // A client certificate alone identifies its caller, with that caller's permissions.
    let mut by_cert = client(
        channel(&addr, &pki.ca_pem, Some(&pki.client))
            .await
            .unwrap(),
        None,
    );
    let headers = by_cert
        .get_credential_headers(headers_by_name("fleetio-acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(headers.headers[0].value, "Token key-00000001");
    let denied = by_cert
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("mtls-worker"),
        "{}",
        denied.message()
    );

    // A SPIFFE id (a URI SAN) names its caller too.
    let mut by_spiffe = client(
        channel(&addr, &pki.ca_pem, Some(&pki.spiffe))
            .await
            .unwrap(),
        None,
    );
    by_spiffe
        .get_credential_headers(headers_by_name("fleetio-acme"))
        .await
        .unwrap();
    let denied = by_spiffe
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap_err();
    assert!(
        denied.message().contains("mesh-worker"),
        "{}",
        denied.message()
    );

    // A CN that spells the SPIFFE id is no URI SAN; a certificate that names two
    // callers is refused rather than taken as either.
    for (what, identity) in [
        ("a CN spelling a SPIFFE id", &pki.cn_spells_spiffe),
        ("a certificate naming two callers", &pki.ambiguous),
    ] {
        let refused = client(
            channel(&addr, &pki.ca_pem, Some(identity)).await.unwrap(),
            None,
        )
        .get_credential_headers(headers_by_name("fleetio-acme"))
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    // The untyped entries keep working, with a word at start.
    assert!(
        logs.contains("has no type; it matches a URI SAN only")
            && logs.contains("has no type; it matches the certificate's CN or a DNS SAN"),
        "{logs}"
    );

    // A certificate of our CA whose extended key usage does not allow client
    // authentication is refused in the handshake, whatever names it bears.
    let server_only = match channel(&addr, &pki.ca_pem, Some(&pki.server_only)).await {
        Err(e) => {
            eprintln!("a server-only certificate: {e:?}");
            None
        }
        Ok(ch) => Some(
            client(ch, None)
                .get_credential_headers(headers_by_name("fleetio-acme"))
                .await,
        ),
    };
    if let Some(Err(status)) = &server_only {
        eprintln!("a server-only certificate: {status:?}");
    }
    // Had it been accepted, its CN would have made it mtls-worker, whose read succeeds.
    assert!(
        server_only.is_none_or(|r| r.is_err_and(|s| s.code() == Code::Cancelled
            || s.code() == Code::Unavailable
            || s.code() == Code::Unknown
            || s.code() == Code::Unauthenticated)),
        "a certificate without clientAuth got in"
    );

    // Neither token nor certificate: unauthenticated.
    let mut nobody = client(channel(&addr, &pki.ca_pem, None).await.unwrap(), None);
    assert_eq!(
        nobody
            .get_credential_headers(headers_by_name("fleetio-acme"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // A certificate from another CA is refused in the handshake.
    let stranger = match channel(&addr, &pki.ca_pem, Some(&pki.stranger)).await {
        Err(_) => None,
        Ok(ch) => Some(
            client(ch, None)
                .get_credential_headers(headers_by_name("fleetio-acme"))
                .await,
        ),
    };
    assert!(
        stranger.is_none_or(|r| r.is_err()),
        "an untrusted client certificate got in"
    );

    // Plaintext on the TLS port fails.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(client(ch, Some(&setup.tokens.admin))
            .list_credentials(api::ListCredentialsRequest::default())
            .await
            .is_err());
    }

    // The health-only port speaks plaintext, and nothing but health.
    let health_addr = logs
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["health_addr"].as_str().map(str::to_owned))
        })
        .unwrap();
    let health_channel = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(health_channel.clone());
    for service in ["", "credvault.v1.CredentialVaultService", "credvault.audit"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    let vault_there = client(health_channel, Some(&setup.tokens.admin))
        .list_credentials(api::ListCredentialsRequest::default())
        .await;
    assert_eq!(vault_there.unwrap_err().code(), Code::Unimplemented);

    // The image's probe works against the TLS port too.
    let ca_file = dir.path().join("ca.pem");
    let probe = std::process::Command::new(binary())
        .args([
            "healthcheck",
            "--addr",
            &addr,
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--tls-server-name",
            "credvault.test",
        ])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    process.terminate().await;
}

#[tokio::test]
async fn a_client_certificate_the_crl_revokes_is_refused_at_the_handshake() {
    let ours = ca("credvault test ca");
    let server = leaf(&ours, "credvault", &["credvault.test"]);
    let client_cert = |serial: u64| {
        leaf_with(&ours, "worker.internal", &["worker.internal"], |p| {
            p.serial_number = Some(rcgen::SerialNumber::from(serial));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })
    };
    let (kept, revoked) = (client_cert(41), client_cert(42));
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(42u64),
            revocation_time: now - time::Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ours)
    .unwrap();

    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let args = tls_serve_args(
        dir.path(),
        &setup,
        "\n[[caller]]\nname = \"mtls-worker\"\ntls_subject = \"cn:worker.internal\"\npermissions = [\"headers.read\"]\n",
        &[
            ("--tls-cert", "server.pem", &server.0),
            ("--tls-key", "server.key", &server.1),
            ("--client-ca", "ca.pem", &ours.pem()),
            ("--client-crl", "ca.crl", &crl.pem().unwrap()),
        ],
    );
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let addr = process.addr.to_string();
    let mut admin = client(
        channel(&addr, &ours.pem(), None).await.unwrap(),
        Some(&setup.tokens.admin),
    );
    create(&mut admin, "fleetio-acme", "key-CRL-0000001", "acct").await;
    // A certificate the list does not name works.
    let answer = client(
        channel(&addr, &ours.pem(), Some(&kept)).await.unwrap(),
        None,
    )
    .get_credential_headers(headers_by_name("fleetio-acme"))
    .await;
    assert!(answer.is_ok(), "{answer:?}");
    // The revoked one: no connection, or every call refused.
    let refused = match channel(&addr, &ours.pem(), Some(&revoked)).await {
        Err(_) => None,
        Ok(ch) => Some(
            client(ch, None)
                .get_credential_headers(headers_by_name("fleetio-acme"))
                .await,
        ),
    };
    assert!(
        refused.as_ref().is_none_or(|r| r.is_err()),
        "a revoked client certificate got in: {refused:?}"
    );
    process.terminate().await;
}
