//! Scoped callers: globs on credential names limit what a caller may touch, and
//! a scoped caller cannot tell a hidden credential from a missing one.

use crate::common::*;
use credvault::api;
use credvault::auth::{callers_entry, mint_token, Permission};
use tonic::Code;

async fn setup() -> (TestServer, Client, Vec<api::Credential>) {
    let token = mint_token().as_str().to_owned();
    let entry = callers_entry("acme-worker", &token, &Permission::ALL)
        + "credentials = [\"fleetio-acme-*\", \"fleetio-beta\"]\n";
    let server = TestServer::start_with(Options {
        extra_callers: entry,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mut made = Vec::new();
    for name in [
        "fleetio-acme-1",
        "fleetio-acme-2",
        "fleetio-beta",
        "fleetio-gamma",
        "other",
    ] {
        made.push(create(&mut admin, name, "key-00000001", "acct").await);
    }
    let scoped = server.client_with(Some(&token)).await;
    (server, scoped, made)
}

#[tokio::test]
async fn in_scope_credentials_work_and_others_are_denied_alike() {
    let (_server, mut scoped, made) = setup().await;
    scoped
        .get_credential(by_name_get("fleetio-acme-1"))
        .await
        .unwrap();
    scoped
        .get_credential_headers(headers_by_name("fleetio-beta"))
        .await
        .unwrap();
    scoped
        .get_credential_headers(headers_by_id(&made[1].id))
        .await
        .unwrap();

    // Out of scope by name and by id, and missing by name and by id: one answer.
    let gamma_id = made[3].id.clone();
    let missing_id = "cred_0123456789abcdef0123456789abcdef".to_owned();
    let mut messages = Vec::new();
    for (shown, status) in [
        (
            "fleetio-gamma",
            scoped
                .get_credential_headers(headers_by_name("fleetio-gamma"))
                .await
                .unwrap_err(),
        ),
        (
            "no-such-name",
            scoped
                .get_credential_headers(headers_by_name("no-such-name"))
                .await
                .unwrap_err(),
        ),
        (
            gamma_id.as_str(),
            scoped
                .get_credential_headers(headers_by_id(&gamma_id))
                .await
                .unwrap_err(),
        ),
        (
            missing_id.as_str(),
            scoped
                .get_credential_headers(headers_by_id(&missing_id))
                .await
                .unwrap_err(),
        ),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{shown}: {status:?}");
        messages.push(status.message().replace(shown, "<ref>"));
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "answers differ: {messages:?}"
    );

    for status in [
        scoped
            .get_credential(by_name_get("other"))
            .await
            .unwrap_err(),
        scoped
            .verify_credential(verify_by_name("other"))
            .await
            .unwrap_err(),
        scoped
            .update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Name("other".into())),
                description: Some("mine now".into()),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        scoped
            .delete_credential(api::DeleteCredentialRequest {
                force: false,
                r#ref: Some(api::delete_credential_request::Ref::Id(made[4].id.clone())),
                expected_version: None,
            })
            .await
            .unwrap_err(),
        scoped
            .create_credential(api::CreateCredentialRequest {
                name: "elsewhere".into(),
                secret: Some(fleetio("key-00000001", "acct", "")),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // In scope, creating works.
    create(&mut scoped, "fleetio-acme-3", "key-00000001", "acct").await;
}

#[tokio::test]
async fn listings_leave_out_what_the_caller_may_not_see() {
    let (server, mut scoped, _) = setup().await;
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = scoped
            .list_credentials(api::ListCredentialsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.credentials.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["fleetio-acme-1", "fleetio-acme-2", "fleetio-beta"]);
    let mut admin = server.admin().await;
    let all = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.credentials.len(), 5);
}

#[tokio::test]
async fn whole_store_operations_are_refused_to_scoped_callers() {
    let (_server, mut scoped, _) = setup().await;
    let rewrap = scoped
        .rewrap_credentials(api::RewrapCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(rewrap.code(), Code::PermissionDenied);
    assert!(
        rewrap.message().contains("covers every credential"),
        "{rewrap:?}"
    );
    let backup = scoped
        .backup_vault(api::BackupVaultRequest {})
        .await
        .unwrap_err();
    assert_eq!(backup.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn page_tokens_reveal_nothing_and_serve_only_their_caller_and_query() {
    let token = mint_token().as_str().to_owned();
    let entry = callers_entry("acme-reader", &token, &[Permission::CredentialsRead])
        + "credentials = [\"acme-*\"]\n";
    let server = TestServer::start_with(Options {
        extra_callers: entry,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    // prod-* interleaved with acme-*: a scoped listing stops after prod ids.
    let mut prod_ids = Vec::new();
    for i in 0..6 {
        create(&mut admin, &format!("acme-{i}"), "key-00000001", "acct").await;
        for j in 0..3 {
            let p = create(&mut admin, &format!("prod-{i}-{j}"), "key-00000001", "acct").await;
            prod_ids.push(p.id);
        }
    }
    let mut scoped = server.client_with(Some(&token)).await;
    let list = |page_token: String| api::ListCredentialsRequest {
        page_size: 1,
        page_token,
        ..Default::default()
    };
    let mut names = Vec::new();
    let mut tokens = Vec::new();
    let mut next = String::new();
    loop {
        let page = scoped
            .list_credentials(list(next))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.credentials.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        next = page.next_page_token.clone();
        tokens.push(page.next_page_token);
    }
    assert_eq!(
        names,
        (0..6).map(|i| format!("acme-{i}")).collect::<Vec<_>>()
    );
    // No token holds an id, in any encoding a caller might try.
    for t in &tokens {
        let decoded = base64_decode(t);
        for id in &prod_ids {
            let hex = &id[5..];
            assert!(!t.contains(hex), "{t}");
            assert!(!contains(&decoded, hex.as_bytes()), "{t}");
        }
    }
    // Another caller, or another query, cannot use it; an edited one is refused.
    let stolen = admin
        .list_credentials(list(tokens[0].clone()))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::InvalidArgument);
    let other_query = scoped
        .list_credentials(api::ListCredentialsRequest {
            page_token: tokens[0].clone(),
            deleted: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other_query.code(), Code::InvalidArgument);
    let mut edited = tokens[0].clone().into_bytes();
    let last = edited.len() - 2;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    let refused = scoped.list_credentials(list(edited)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    server.stop().await.unwrap();
}

/// The bytes of a URL-safe base64 text without padding (empty when it is not base64).
fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_default()
}
