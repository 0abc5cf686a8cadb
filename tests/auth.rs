//! Authentication and every permission boundary, through the real server.

use crate::common::*;
use credvault::api::{self, FleetioSecret};
use tonic::Code;

/// Calls every RPC once with `client`; returns each RPC's code.
async fn codes(client: &mut Client, name: &str) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    vec![
        (
            "CreateCredential",
            code(
                client
                    .create_credential(api::CreateCredentialRequest {
                        name: format!("{name}-new"),
                        description: String::new(),
                        secret: Some(fleetio("key-00000001", "acct", "")),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetCredential",
            code(client.get_credential(by_name_get(name)).await.map(drop)),
        ),
        (
            "ListCredentials",
            code(
                client
                    .list_credentials(api::ListCredentialsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "UpdateCredential",
            code(
                client
                    .update_credential(api::UpdateCredentialRequest {
                        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
                        description: Some("changed".into()),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "VerifyCredential",
            code(
                client
                    .verify_credential(verify_by_name(name))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetCredentialHeaders",
            code(
                client
                    .get_credential_headers(headers_by_name(name))
                    .await
                    .map(drop),
            ),
        ),
        (
            "DeleteCredential",
            code(
                client
                    .delete_credential(api::DeleteCredentialRequest {
                        force: false,
                        r#ref: Some(api::delete_credential_request::Ref::Name(name.into())),
                        expected_version: None,
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "RewrapCredentials",
            code(
                match client
                    .rewrap_credentials(api::RewrapCredentialsRequest::default())
                    .await
                {
                    Ok(stream) => drain(stream.into_inner()).await,
                    Err(status) => Err(status),
                },
            ),
        ),
        (
            "BackupVault",
            code(
                match client.backup_vault(api::BackupVaultRequest {}).await {
                    Ok(stream) => drain(stream.into_inner()).await,
                    Err(status) => Err(status),
                },
            ),
        ),
    ]
}

/// Reads a server stream to its end; the first error ends it.
async fn drain<T>(mut stream: tonic::Streaming<T>) -> Result<(), tonic::Status> {
    while stream.message().await?.is_some() {}
    Ok(())
}

fn expect(allowed: &[&str]) -> Vec<(&'static str, Code)> {
    [
        "CreateCredential",
        "GetCredential",
        "ListCredentials",
        "UpdateCredential",
        "VerifyCredential",
        "GetCredentialHeaders",
        "DeleteCredential",
        "RewrapCredentials",
        "BackupVault",
    ]
    .into_iter()
    .map(|rpc| {
        (
            rpc,
            if allowed.contains(&rpc) {
                Code::Ok
            } else {
                Code::PermissionDenied
            },
        )
    })
    .collect()
}

#[tokio::test]
async fn every_permission_boundary() {
    let fake = FakeFleetio::start(vec![(
        "key-00000001",
        Behaviour::Accounts {
            tokens: vec!["acct".into()],
            bare: false,
        },
    )])
    .await;
    let server = TestServer::start_with(Options {
        fleetio_base_url: fake.base_url.clone(),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let t = &server.tokens;
    let roles: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "reader",
            &t.reader,
            vec!["GetCredential", "ListCredentials"],
        ),
        (
            "writer",
            &t.writer,
            vec!["CreateCredential", "UpdateCredential", "DeleteCredential"],
        ),
        ("verifier", &t.verifier, vec!["VerifyCredential"]),
        ("worker", &t.worker, vec!["GetCredentialHeaders"]),
        ("nobody", &t.nobody, vec![]),
        (
            "admin",
            &t.admin,
            vec![
                "CreateCredential",
                "GetCredential",
                "ListCredentials",
                "UpdateCredential",
                "VerifyCredential",
                "GetCredentialHeaders",
                "DeleteCredential",
                "RewrapCredentials",
                "BackupVault",
            ],
        ),
    ];
    for (role, token, allowed) in roles {
        create(&mut admin, role, "key-00000001", "acct").await;
        let mut client = server.client_with(Some(token)).await;
        assert_eq!(
            codes(&mut client, role).await,
            expect(&allowed),
            "role {role}"
        );
    }
}

#[tokio::test]
async fn a_writer_cannot_read_back_secrets() {
    let server = TestServer::start().await;
    let mut writer = server.client_with(Some(&server.tokens.writer)).await;
    create(&mut writer, "written", "key-00000001", "acct").await;
    let status = writer
        .get_credential_headers(headers_by_name("written"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("headers.read"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn missing_unknown_and_malformed_tokens_are_unauthenticated() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "guarded", "key-00000001", "acct").await;

    let mut anonymous = server.client_with(None).await;
    let status = anonymous
        .get_credential_headers(headers_by_name("guarded"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{}", status.message());

    let mut wrong = server.client_with(Some("cv_not-a-real-token")).await;
    assert_eq!(
        wrong
            .list_credentials(api::ListCredentialsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // A token sent without the Bearer scheme.
    let channel = server.channel().await;
    let raw = server.tokens.admin.parse().unwrap();
    let mut no_scheme = credvault::api::credential_vault_service_client::CredentialVaultServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", tonic::metadata::MetadataValue::clone(&raw));
            Ok(req)
        },
    );
    let status = no_scheme
        .get_credential(by_name_get("guarded"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Refusals reveal nothing about the credential, and write nothing.
    let status = wrong
        .create_credential(api::CreateCredentialRequest {
            name: "sneaky".into(),
            description: String::new(),
            secret: Some(credvault::api::create_credential_request::Secret::Fleetio(
                FleetioSecret {
                    api_key: "key-00000002".into(),
                    account_token: "acct".into(),
                    api_version: String::new(),
                },
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        admin
            .get_credential(by_name_get("sneaky"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}
