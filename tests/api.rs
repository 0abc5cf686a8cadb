//! The vault API end to end: every RPC's success and error paths through the
//! real server, run once on each store (sled, and PostgreSQL on a real server).

use crate::common::*;
use credvault::api::{self, update_credential_request as upd, FleetioSecret};
use tonic::Code;

fn update_by_name(name: &str) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(upd::Ref::Name(name.into())),
        ..Default::default()
    }
}

fn new_secret(api_key: &str, account_token: &str, api_version: &str) -> upd::Secret {
    upd::Secret::Fleetio(FleetioSecret {
        api_key: api_key.into(),
        account_token: account_token.into(),
        api_version: api_version.into(),
    })
}

async fn create_get_and_headers(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let created = admin
        .create_credential(api::CreateCredentialRequest {
            name: "fleetio-acme".into(),
            description: "Acme's fleet".into(),
            secret: Some(fleetio("key-acme-0000abcd", "acct-acme", "2024-03-15")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert!(created.id.starts_with("cred_"));
    assert_eq!(created.name, "fleetio-acme");
    assert_eq!(created.description, "Acme's fleet");
    assert_eq!(created.provider, "fleetio");
    assert_eq!(created.api_key_hint, "abcd");
    assert_eq!(created.version, 1);
    assert!(created.create_time.is_some() && created.create_time == created.update_time);
    assert!(created.last_verification.is_none());

    let by_id = admin
        .get_credential(by_id_get(&created.id))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    let by_name = admin
        .get_credential(by_name_get("fleetio-acme"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(by_id, created);
    assert_eq!(by_name, created);

    let headers = admin
        .get_credential_headers(headers_by_id(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pairs(&headers.headers),
        vec![
            (
                "Authorization".to_owned(),
                "Token key-acme-0000abcd".to_owned()
            ),
            ("Account-Token".to_owned(), "acct-acme".to_owned()),
            ("X-Api-Version".to_owned(), "2024-03-15".to_owned()),
        ]
    );
    assert_eq!(headers.base_url, "http://127.0.0.1:9/api");
    assert_eq!(headers.credential_id, created.id);
    assert_eq!(headers.version, 1);

    // Without an api_version there is no X-Api-Version header.
    create(&mut admin, "fleetio-beta", "key-beta-00001234", "acct-beta").await;
    let beta = admin
        .get_credential_headers(headers_by_name("fleetio-beta"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pairs(&beta.headers),
        vec![
            (
                "Authorization".to_owned(),
                "Token key-beta-00001234".to_owned()
            ),
            ("Account-Token".to_owned(), "acct-beta".to_owned()),
        ]
    );
}

async fn create_rejects_bad_input_and_duplicates(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    create(&mut admin, "taken", "key-00000001", "acct").await;

    let cases: Vec<(api::CreateCredentialRequest, Code, &str)> = vec![
        (
            api::CreateCredentialRequest {
                name: "".into(),
                secret: Some(fleetio("key-00000001", "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "name is required",
        ),
        (
            api::CreateCredentialRequest {
                name: "Upper".into(),
                secret: Some(fleetio("key-00000001", "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "lowercase",
        ),
        (
            api::CreateCredentialRequest {
                name: "a".repeat(64),
                secret: Some(fleetio("key-00000001", "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "at most 63",
        ),
        (
            api::CreateCredentialRequest {
                name: "no-secret".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "secret is required",
        ),
        (
            api::CreateCredentialRequest {
                name: "empty-key".into(),
                secret: Some(fleetio("", "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "fleetio.api_key is required",
        ),
        (
            api::CreateCredentialRequest {
                name: "empty-token".into(),
                secret: Some(fleetio("key-00000001", "", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "fleetio.account_token is required",
        ),
        (
            api::CreateCredentialRequest {
                name: "crlf".into(),
                secret: Some(fleetio("key-0000\r\nX-Evil: 1", "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "visible ASCII",
        ),
        (
            api::CreateCredentialRequest {
                name: "huge-key".into(),
                secret: Some(fleetio(&"k".repeat(513), "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "512",
        ),
        (
            api::CreateCredentialRequest {
                name: "bad-version".into(),
                secret: Some(fleetio("key-00000001", "a", "v2")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "api_version",
        ),
        (
            api::CreateCredentialRequest {
                name: "long-desc".into(),
                description: "d".repeat(1025),
                secret: Some(fleetio("key-00000001", "a", "")),
                ..Default::default()
            },
            Code::InvalidArgument,
            "description",
        ),
        (
            api::CreateCredentialRequest {
                name: "taken".into(),
                secret: Some(fleetio("key-00000002", "b", "")),
                ..Default::default()
            },
            Code::AlreadyExists,
            "exists already",
        ),
    ];
    for (req, code, text) in cases {
        let name = req.name.clone();
        let status = admin.create_credential(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(text),
            "{name}: {}",
            status.message()
        );
        assert!(
            !status.message().contains("key-0000"),
            "error echoes a secret: {}",
            status.message()
        );
    }
    // Nothing half-made was stored.
    let all = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.credentials.len(), 1);
}

async fn oversized_messages_are_invalid_argument(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let status = admin
        .create_credential(api::CreateCredentialRequest {
            name: "big".into(),
            description: "x".repeat(200 * 1024),
            secret: Some(fleetio("key-00000001", "a", "")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    // The server is fine afterwards.
    create(&mut admin, "small", "key-00000001", "a").await;
}

async fn get_unknown_and_malformed_refs(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let missing = admin.get_credential(by_name_get("nope")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing_id = admin
        .get_credential(by_id_get("cred_0123456789abcdef0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(missing_id.code(), Code::NotFound);
    let malformed = admin
        .get_credential(by_id_get("../../etc/passwd"))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    let no_ref = admin
        .get_credential(api::GetCredentialRequest { r#ref: None })
        .await
        .unwrap_err();
    assert_eq!(no_ref.code(), Code::InvalidArgument);
    assert!(no_ref.message().contains("id or name"));
    let headers = admin
        .get_credential_headers(headers_by_name("nope"))
        .await
        .unwrap_err();
    assert_eq!(headers.code(), Code::NotFound);
}

async fn list_paginates_in_stable_creation_order(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(
            create(&mut admin, &format!("cred-{i:03}"), "key-00000001", "acct")
                .await
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_credentials(api::ListCredentialsRequest {
                page_size: 50,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.credentials.len() <= 50);
        seen.extend(page.credentials.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every credential once, in creation order");

    // Default page size is 50; sizes above 1000 are served as 1000.
    let default = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.credentials.len(), 50);
    let capped = admin
        .list_credentials(api::ListCredentialsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.credentials.len(), 120);
    assert!(capped.next_page_token.is_empty());

    for bad in [
        api::ListCredentialsRequest {
            page_size: -1,
            ..Default::default()
        },
        api::ListCredentialsRequest {
            page_size: 10,
            page_token: "not-a-token".into(),
            ..Default::default()
        },
    ] {
        let status = admin.list_credentials(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

async fn update_rotates_secret_and_checks_versions(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let created = create(&mut admin, "rotate-me", "key-old-00001111", "acct-old").await;

    // Description only.
    let v2 = admin
        .update_credential(api::UpdateCredentialRequest {
            description: Some("new words".into()),
            ..update_by_name("rotate-me")
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.description, "new words");
    assert_eq!(v2.create_time, created.create_time);
    let secs = |t: &Option<prost_types::Timestamp>| {
        let t = t.unwrap();
        (t.seconds, t.nanos)
    };
    assert!(secs(&v2.update_time) > secs(&created.update_time));

    // Check-and-set with a stale version is ABORTED and changes nothing.
    let stale = admin
        .update_credential(api::UpdateCredentialRequest {
            expected_version: Some(1),
            secret: Some(new_secret("key-new-00002222", "acct-new", "")),
            ..update_by_name("rotate-me")
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let headers = admin
        .get_credential_headers(headers_by_name("rotate-me"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(headers.headers[0].value, "Token key-old-00001111");

    // With the right version the secret is replaced whole.
    let v3 = admin
        .update_credential(api::UpdateCredentialRequest {
            expected_version: Some(2),
            secret: Some(new_secret("key-new-00002222", "acct-new", "2024-03-15")),
            ..update_by_name("rotate-me")
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(v3.api_key_hint, "2222");
    assert_eq!(v3.description, "new words");
    let headers = admin
        .get_credential_headers(headers_by_name("rotate-me"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pairs(&headers.headers),
        vec![
            (
                "Authorization".to_owned(),
                "Token key-new-00002222".to_owned()
            ),
            ("Account-Token".to_owned(), "acct-new".to_owned()),
            ("X-Api-Version".to_owned(), "2024-03-15".to_owned()),
        ]
    );
    assert_eq!(headers.version, 3);

    // Nothing to change, a bad secret, an unknown credential.
    let empty = admin
        .update_credential(update_by_name("rotate-me"))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let bad = admin
        .update_credential(api::UpdateCredentialRequest {
            secret: Some(new_secret("short", "a", "")),
            ..update_by_name("rotate-me")
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let unknown = admin
        .update_credential(api::UpdateCredentialRequest {
            description: Some("x".into()),
            ..update_by_name("ghost")
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let current = admin
        .get_credential(by_name_get("rotate-me"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(current.version, 3);
}

async fn concurrent_updates_without_version_all_apply(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    create(&mut admin, "busy", "key-00000001", "acct").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = server.admin().await;
        tasks.push(tokio::spawn(async move {
            c.update_credential(api::UpdateCredentialRequest {
                description: Some(format!("writer {i}")),
                ..update_by_name("busy")
            })
            .await
            .map(|r| r.into_inner().credential.unwrap().version)
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(
            t.await
                .unwrap()
                .expect("update without expected_version retries"),
        );
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=9).collect::<Vec<u64>>(),
        "each update got its own version"
    );
}

async fn delete_removes_for_good(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let c = create(&mut admin, "short-lived", "key-00000001", "acct").await;

    let stale = admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Id(c.id.clone())),
            expected_version: Some(7),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Id(c.id.clone())),
            expected_version: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(
        admin
            .get_credential(by_id_get(&c.id))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        admin
            .get_credential(by_name_get("short-lived"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        admin
            .get_credential_headers(headers_by_id(&c.id))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let again = admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name(
                "short-lived".into(),
            )),
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // The name is free again, under a new id.
    let reborn = create(&mut admin, "short-lived", "key-00000002", "acct").await;
    assert_ne!(reborn.id, c.id);
    let list = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.credentials
            .iter()
            .map(|c| c.id.clone())
            .collect::<Vec<_>>(),
        vec![reborn.id]
    );
}

async fn listings_and_metadata_never_carry_secrets(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    create(
        &mut admin,
        "secretive",
        "key-topsecret-9999",
        "acct-topsecret",
    )
    .await;
    let list = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let get = admin
        .get_credential(by_name_get("secretive"))
        .await
        .unwrap()
        .into_inner();
    for text in [format!("{list:?}"), format!("{get:?}")] {
        assert!(!text.contains("topsecret"), "{text}");
    }
    assert_eq!(list.credentials[0].api_key_hint, "9999");
}

/// Many writers at once: every create is acknowledged (sled's own async flush
/// deadlocked here; the store now groups flushes itself).
async fn many_concurrent_writers_all_complete(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mut c = server.admin().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                create(&mut c, &format!("w{w}-{i}"), "key-00000001", "acct").await;
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), all)
        .await
        .expect("concurrent creates hung");
    let mut admin = server.admin().await;
    let list = admin
        .list_credentials(api::ListCredentialsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.credentials.len(), 320);
}

on_every_store!(
    create_get_and_headers,
    create_rejects_bad_input_and_duplicates,
    oversized_messages_are_invalid_argument,
    get_unknown_and_malformed_refs,
    list_paginates_in_stable_creation_order,
    update_rotates_secret_and_checks_versions,
    concurrent_updates_without_version_all_apply,
    delete_removes_for_good,
    listings_and_metadata_never_carry_secrets,
    many_concurrent_writers_all_complete,
);
