//! Storage: restarts, the master-key check, encryption at rest and tampering (crashes: faults.rs).

use crate::common::*;
use credvault::api;
use credvault::crypto::MasterKey;
use credvault::record::CredentialRecord;
use credvault::server::ServeError;
use tonic::Code;

#[tokio::test]
async fn restart_with_the_same_key_keeps_everything() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let a = create(&mut admin, "keep-a", "key-keep-0000aaaa", "acct-a").await;
    let b = create(&mut admin, "keep-b", "key-keep-0000bbbb", "acct-b").await;
    drop(admin);
    let server = server.restart().await;
    let mut admin = server.admin().await;
    assert_eq!(
        admin
            .get_credential(by_id_get(&a.id))
            .await
            .unwrap()
            .into_inner()
            .credential
            .unwrap(),
        a
    );
    let headers = admin
        .get_credential_headers(headers_by_name("keep-b"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(headers.credential_id, b.id);
    assert_eq!(headers.headers[0].value, "Token key-keep-0000bbbb");
    let list = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.credentials.len(), 2);
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn another_master_key_refuses_to_start() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "locked", "key-locked-000001", "acct").await;
    drop(admin);
    let (result, _tmp, dir, key) = server.stop_keep().await;
    result.unwrap();

    let other = MasterKey::generate_base64().as_str().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = bare_config(&dir, &other);
    let err = credvault::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Keys(credvault::keys::KeyringError::MissingKey { .. })
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("master key does not open this data directory"),
        "{message}"
    );
    assert!(
        message.contains(MasterKey::from_base64(&key).unwrap().id()),
        "names the key it needs: {message}"
    );
    assert!(
        !message.contains(&other) && !message.contains(&key),
        "never the key itself"
    );

    // Refusing lost nothing: the right key still opens it.
    let server = TestServer::reopen(dir, key).await;
    let mut admin = server.admin().await;
    admin
        .get_credential_headers(headers_by_name("locked"))
        .await
        .unwrap();
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_plaintext_secret_lies_in_the_data_dir() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let secrets = ["key-PLAINTEXT-CANARY-1", "acct-PLAINTEXT-CANARY-2"];
    create(&mut admin, "canary", secrets[0], secrets[1]).await;
    admin
        .update_credential(rotation(
            "canary",
            "key-PLAINTEXT-CANARY-3",
            "acct-PLAINTEXT-CANARY-4",
        ))
        .await
        .unwrap();
    drop(admin);
    let (result, _tmp, dir, key) = server.stop_keep().await;
    result.unwrap();
    let files = all_files(&dir);
    assert!(!files.is_empty());
    // The metadata is there (proving we read the right files); no secret or key is.
    assert!(files.iter().any(|(_, bytes)| contains(bytes, b"canary")));
    for (path, bytes) in &files {
        for needle in ["PLAINTEXT-CANARY", key.trim()] {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{} holds {needle:?} in plain text",
                path.display()
            );
        }
    }
}

/// Rewrites a stored record's raw bytes with the server stopped.
fn tamper(dir: &std::path::Path, id: &str, change: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("credentials").unwrap();
    let bytes = tree.get(id).unwrap().unwrap().to_vec();
    tree.insert(id, change(bytes)).unwrap();
    db.flush().unwrap();
}

fn record(dir: &std::path::Path, id: &str) -> CredentialRecord {
    let db = sled::open(dir.join("db")).unwrap();
    let bytes = db
        .open_tree("credentials")
        .unwrap()
        .get(id)
        .unwrap()
        .unwrap();
    CredentialRecord::from_bytes(id, &bytes).unwrap()
}

#[tokio::test]
async fn tampered_records_answer_data_loss_alone() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let flipped = create(&mut admin, "flipped", "key-flip-00000001", "acct").await;
    let key_swapped = create(&mut admin, "key-swapped", "key-kswp-00000005", "acct").await;
    let swapped = create(&mut admin, "swapped", "key-swap-00000002", "acct").await;
    let truncated = create(&mut admin, "truncated", "key-trun-00000003", "acct").await;
    let healthy = create(&mut admin, "healthy", "key-heal-00000004", "acct").await;
    drop(admin);
    let (result, _tmp, dir, key) = server.stop_keep().await;
    result.unwrap();

    use prost::Message;
    tamper(&dir, &flipped.id, |bytes| {
        let mut r = CredentialRecord::from_bytes(&flipped.id, &bytes).unwrap();
        r.secret.as_mut().unwrap().ciphertext[3] ^= 0x40;
        r.encode_to_vec()
    });
    let donor = record(&dir, &healthy.id).secret;
    tamper(&dir, &swapped.id, |bytes| {
        let mut r = CredentialRecord::from_bytes(&swapped.id, &bytes).unwrap();
        r.secret = donor;
        r.encode_to_vec()
    });
    // The data key of another record, even with that record's secret, does not open here.
    let donor_record = record(&dir, &healthy.id);
    tamper(&dir, &key_swapped.id, |bytes| {
        let mut r = CredentialRecord::from_bytes(&key_swapped.id, &bytes).unwrap();
        r.data_key = donor_record.data_key;
        r.secret = donor_record.secret;
        r.encode_to_vec()
    });
    tamper(&dir, &truncated.id, |bytes| {
        bytes[..bytes.len() / 2].to_vec()
    });

    let server = TestServer::reopen(dir, key).await;
    let mut admin = server.admin().await;
    for name in ["flipped", "swapped", "key-swapped", "truncated"] {
        let status = admin
            .get_credential_headers(headers_by_name(name))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{name}: {status:?}");
        assert!(!status.message().contains("key-"), "{}", status.message());
    }
    // A record changed in the store fails its MAC: its metadata is not served either.
    assert_eq!(
        admin
            .get_credential(by_name_get("flipped"))
            .await
            .unwrap_err()
            .code(),
        Code::DataLoss
    );
    assert_eq!(
        admin
            .get_credential(by_name_get("truncated"))
            .await
            .unwrap_err()
            .code(),
        Code::DataLoss
    );
    // Everything else keeps working, and the listing skips the changed and unreadable records.
    let h = admin
        .get_credential_headers(headers_by_name("healthy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.headers[0].value, "Token key-heal-00000004");
    let list = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.credentials.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["healthy"]);
    // A damaged record can be deleted, freeing its name.
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name(
                "truncated".into(),
            )),
            expected_version: None,
        })
        .await
        .unwrap();
    create(&mut admin, "truncated", "key-trun-00000005", "acct").await;
    drop(admin);
    server.stop().await.unwrap();
}
