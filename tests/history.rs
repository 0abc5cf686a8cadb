//! Version history, rollback, destroyed versions and the recovery window of
//! deletes, on sled and PostgreSQL: what the API shows, that a destroyed or
//! purged version's ciphertext and erasable key are gone from the store (and its
//! key from every file of the data directory), that rewrap covers old and deleted
//! versions before a key retires, and that backups carry all of it.

use std::time::Duration;

use crate::common::*;
use credvault::api;
use credvault::store::Snapshot;
use tonic::Code;

fn versions_req(name: &str) -> api::ListCredentialVersionsRequest {
    api::ListCredentialVersionsRequest {
        r#ref: Some(api::list_credential_versions_request::Ref::Name(
            name.into(),
        )),
    }
}

async fn versions(client: &mut Client, name: &str) -> Vec<api::CredentialVersion> {
    client
        .list_credential_versions(versions_req(name))
        .await
        .unwrap()
        .into_inner()
        .versions
}

fn rollback(name: &str, version: u64) -> api::RollbackCredentialRequest {
    api::RollbackCredentialRequest {
        r#ref: Some(api::rollback_credential_request::Ref::Name(name.into())),
        version,
        ..Default::default()
    }
}

fn destroy(name: &str, version: u64) -> api::DestroyCredentialVersionRequest {
    api::DestroyCredentialVersionRequest {
        r#ref: Some(api::destroy_credential_version_request::Ref::Name(
            name.into(),
        )),
        version,
    }
}

fn delete(name: &str, force: bool) -> api::DeleteCredentialRequest {
    api::DeleteCredentialRequest {
        r#ref: Some(api::delete_credential_request::Ref::Name(name.into())),
        expected_version: None,
        force,
    }
}

/// The store as a backup holds it, decoded.
async fn snapshot(client: &mut Client) -> Snapshot {
    let mut stream = client
        .backup_vault(api::BackupVaultRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&m.chunk);
    }
    credvault::backup::inspect(&bytes).unwrap().0
}

/// A record of a snapshot (live or deleted), decoded.
fn stored(snap: &Snapshot, id: &str) -> Option<credvault::record::CredentialRecord> {
    snap.records
        .iter()
        .chain(&snap.deleted)
        .find(|(k, _)| k == id)
        .map(|(_, v)| credvault::record::CredentialRecord::from_bytes(id, v).unwrap())
}

/// The erasable keys a snapshot holds for credential `id`, by seal id.
fn keys_of(snap: &Snapshot, id: &str) -> Vec<(u64, Vec<u8>)> {
    snap.erasable
        .iter()
        .filter_map(|(k, v)| {
            let (of, seal) = credvault::store::parse_erasable_entry_key(k)?;
            (of == id).then(|| (seal, v.clone()))
        })
        .collect()
}

/// Whether `needle` appears in the store's records, deleted records or keys.
fn in_store(snap: &Snapshot, needle: &[u8]) -> bool {
    [&snap.records, &snap.deleted, &snap.erasable]
        .iter()
        .any(|entries| entries.iter().any(|(_, v)| contains(v, needle)))
}

/// Whether `needle` appears anywhere in the snapshot or, on sled, in any file of the data dir.
fn anywhere(server: &TestServer, snap: &Snapshot, needle: &[u8]) -> bool {
    let in_snapshot = [&snap.records, &snap.deleted, &snap.erasable, &snap.meta]
        .iter()
        .any(|entries| entries.iter().any(|(_, v)| contains(v, needle)));
    let on_disk = server.database_url.is_none()
        && all_files(&server.data_dir)
            .iter()
            .any(|(_, bytes)| contains(bytes, needle));
    in_snapshot || on_disk
}

/// Rolls `rolled.0` back to version 1 (whose key is `rolled.1`) and undeletes
/// `deleted.0`: both then serve their headers.
async fn old_and_deleted_open(
    admin: &mut Client,
    rolled: (&str, &str),
    deleted: (&api::Credential, &str),
) {
    admin
        .rollback_credential(rollback(rolled.0, 1))
        .await
        .unwrap();
    assert_eq!(
        authorization(admin, rolled.0).await,
        format!("Token {}", rolled.1)
    );
    admin
        .undelete_credential(api::UndeleteCredentialRequest {
            id: deleted.0.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        authorization(admin, &deleted.0.name).await,
        format!("Token {}", deleted.1)
    );
}

/// Counts rows of the database whose bytes hold `needle` (records, deleted records, keys).
async fn rows_holding(url: &str, needle: &[u8]) -> i64 {
    let client = crate::common::postgres::connect(url).await;
    client
        .query_one(
            "SELECT (SELECT count(*) FROM credvault_credentials WHERE position($1 in record) > 0)
                  + (SELECT count(*) FROM credvault_deleted WHERE position($1 in record) > 0)
                  + (SELECT count(*) FROM credvault_erasable_keys WHERE position($1 in key) > 0)",
            &[&needle],
        )
        .await
        .unwrap()
        .get(0)
}

async fn rotate_three_times_then_roll_back_to_the_first(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    create(&mut admin, "fleet", "key-VERSION-0001", "acct-1").await;
    for (key, acct) in [
        ("key-VERSION-0002", "acct-2"),
        ("key-VERSION-0003", "acct-3"),
        ("key-VERSION-0004", "acct-4"),
    ] {
        admin
            .update_credential(rotation("fleet", key, acct))
            .await
            .unwrap();
    }
    // What a kept version costs in the record (a fresh credential for comparison).
    let fresh = create(&mut admin, "fresh", "key-VERSION-9999", "acct-9").await;
    let snap = snapshot(&mut admin).await;
    let size = |name: &str| {
        snap.records
            .iter()
            .map(|(id, v)| (stored(&snap, id).unwrap().name, v.len()))
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    };
    let (one, four) = (size(&fresh.name), size("fleet"));
    eprintln!(
        "record of 1 version: {one} bytes; of 4 versions: {four} bytes ({} bytes per kept version), plus 40 bytes of erasable key each",
        (four - one) / 3
    );
    let listed = versions(&mut admin, "fleet").await;
    let seen: Vec<(u64, &str, bool)> = listed
        .iter()
        .map(|v| (v.version, v.api_key_hint.as_str(), v.current))
        .collect();
    assert_eq!(
        seen,
        [
            (4, "0004", true),
            (3, "0003", false),
            (2, "0002", false),
            (1, "0001", false)
        ]
    );
    assert!(listed
        .iter()
        .all(|v| v.created_by == "admin" && v.create_time.is_some()));
    let shown = format!("{listed:?}");
    assert!(
        !shown.contains("key-VERSION") && !shown.contains("acct-"),
        "{shown}"
    );

    // Back to version 1's secret, as a new, higher version: pushed to a watching worker.
    let mut watch = admin
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("fleet".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().version, 4);
    let rolled = admin
        .rollback_credential(rollback("fleet", 1))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!((rolled.version, rolled.api_key_hint.as_str()), (5, "0001"));
    let pushed = watch.message().await.unwrap().unwrap();
    assert_eq!(pushed.version, 5);
    assert_eq!(pushed.headers[0].value, "Token key-VERSION-0001");
    let headers = admin
        .get_credential_headers(headers_by_name("fleet"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(headers.version, 5);
    let got = pairs(&headers.headers);
    let got: Vec<(&str, &str)> = got.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        got,
        [
            ("Authorization", "Token key-VERSION-0001"),
            ("Account-Token", "acct-1")
        ]
    );
    let listed = versions(&mut admin, "fleet").await;
    let seen: Vec<(u64, &str)> = listed
        .iter()
        .map(|v| (v.version, v.api_key_hint.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (5, "0001"),
            (4, "0004"),
            (3, "0003"),
            (2, "0002"),
            (1, "0001")
        ]
    );

    // Clear refusals.
    let code = |r: Result<tonic::Response<api::RollbackCredentialResponse>, tonic::Status>| {
        r.unwrap_err().code()
    };
    assert_eq!(
        code(admin.rollback_credential(rollback("fleet", 5)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(admin.rollback_credential(rollback("fleet", 99)).await),
        Code::NotFound
    );
    assert_eq!(
        code(admin.rollback_credential(rollback("fleet", 0)).await),
        Code::InvalidArgument
    );
    let stale = api::RollbackCredentialRequest {
        expected_version: Some(3),
        ..rollback("fleet", 2)
    };
    assert_eq!(code(admin.rollback_credential(stale).await), Code::Aborted);
    let mut reader = server.client_with(Some(&server.tokens.reader)).await;
    assert_eq!(
        code(reader.rollback_credential(rollback("fleet", 2)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        versions(&mut reader, "fleet").await.len(),
        5,
        "reading versions needs credentials.read"
    );
    server.stop().await.unwrap();
}

async fn at_most_keep_versions_are_kept(store: TestStore) {
    let server = TestServer::start_with(Options {
        store,
        keep_versions: 3,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "kept", "key-KEPT-00000001", "acct").await;
    let first = snapshot(&mut admin).await;
    let (first_seal, first_key) = keys_of(&first, &made.id).pop().unwrap();
    for i in 2..=5 {
        admin
            .update_credential(rotation("kept", &format!("key-KEPT-{i:08}"), "acct"))
            .await
            .unwrap();
    }
    let listed: Vec<u64> = versions(&mut admin, "kept")
        .await
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(listed, [5, 4, 3], "the current one and two before it");
    let snap = snapshot(&mut admin).await;
    assert_eq!(
        keys_of(&snap, &made.id).len(),
        3,
        "one erasable key per kept version"
    );
    assert!(keys_of(&snap, &made.id)
        .iter()
        .all(|(s, _)| *s != first_seal));
    assert!(
        !anywhere(&server, &snap, &first_key),
        "a dropped version's key is gone"
    );
    server.stop().await.unwrap();
}

async fn destroyed_versions_are_gone_for_good(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "leaky", "key-LEAKED-000001", "acct-1").await;
    admin
        .update_credential(rotation("leaky", "key-FRESH-0000002", "acct-2"))
        .await
        .unwrap();
    let before = snapshot(&mut admin).await;
    let record = stored(&before, &made.id).unwrap();
    let old = record.history[0].clone();
    let ciphertext = old.secret.as_ref().unwrap().ciphertext.clone();
    let (_, old_key) = keys_of(&before, &made.id)
        .into_iter()
        .find(|(s, _)| *s == old.seal_id)
        .unwrap();
    assert!(anywhere(&server, &before, &ciphertext) && anywhere(&server, &before, &old_key));

    let destroyed = admin
        .destroy_credential_version(destroy("leaky", 1))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert!(destroyed.destroyed && destroyed.destroy_time.is_some());
    assert_eq!(destroyed.destroyed_by, "admin");
    // Again: nothing left to do, the same answer.
    assert!(admin
        .destroy_credential_version(destroy("leaky", 1))
        .await
        .is_ok());
    let err = admin
        .rollback_credential(rollback("leaky", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("destroyed"), "{}", err.message());
    let err = admin
        .destroy_credential_version(destroy("leaky", 2))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "the current version is not destroyed"
    );
    let listed = versions(&mut admin, "leaky").await;
    assert!(listed[1].destroyed && !listed[0].destroyed);

    // Its ciphertext is in no record, its key in no record, file or row. (sled may
    // keep the old record bytes in its log segments until it reuses them: without
    // the key, which is in no file of the data directory, that copy opens no more.)
    let after = snapshot(&mut admin).await;
    assert!(
        !in_store(&after, &ciphertext),
        "the ciphertext is gone from the store"
    );
    assert!(
        !anywhere(&server, &after, &old_key),
        "the erasable key is gone from disk"
    );
    if let Some(url) = &server.database_url {
        assert_eq!(rows_holding(url, &ciphertext).await, 0);
        assert_eq!(rows_holding(url, &old_key).await, 0);
    }
    // The current one still serves.
    assert_eq!(
        authorization(&mut admin, "leaky").await,
        "Token key-FRESH-0000002"
    );
    server.stop().await.unwrap();
}

async fn delete_undelete_force_and_purge(store: TestStore) {
    let server = TestServer::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "oops", "key-DELETED-00001", "acct-1").await;
    admin
        .update_credential(rotation("oops", "key-DELETED-00002", "acct-2"))
        .await
        .unwrap();
    let answer = admin
        .delete_credential(delete("oops", false))
        .await
        .unwrap()
        .into_inner();
    let purge = answer.purge_time.expect("a purge time");
    let now = credvault::record::timestamp(std::time::SystemTime::now()).seconds;
    assert!(
        (purge.seconds - now - 7 * 86_400).abs() < 60,
        "seven days by default"
    );
    // Served no more, and its name is free.
    let err = admin
        .get_credential_headers(headers_by_name("oops"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.credentials.is_empty());
    let deleted = admin
        .list_credentials(api::ListCredentialsRequest {
            deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (deleted[0].id.as_str(), deleted[0].purge_time),
        (made.id.as_str(), Some(purge))
    );
    let other = create(&mut admin, "oops", "key-OTHER-0000001", "acct").await;
    let undelete = |id: &str| api::UndeleteCredentialRequest { id: id.into() };
    let err = admin
        .undelete_credential(undelete(&made.id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("oops"), "{}", err.message());
    admin.delete_credential(delete("oops", true)).await.unwrap();
    // The other one went with force: nothing of it to undelete.
    let err = admin
        .undelete_credential(undelete(&other.id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The first comes back with its history.
    let back = admin
        .undelete_credential(undelete(&made.id))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!((back.name.as_str(), back.version), ("oops", 2));
    assert_eq!(
        authorization(&mut admin, "oops").await,
        "Token key-DELETED-00002"
    );
    assert_eq!(versions(&mut admin, "oops").await.len(), 2);
    admin
        .rollback_credential(rollback("oops", 1))
        .await
        .unwrap();
    assert_eq!(
        authorization(&mut admin, "oops").await,
        "Token key-DELETED-00001"
    );
    // Force leaves nothing: no record, no key.
    let before = snapshot(&mut admin).await;
    let keys: Vec<Vec<u8>> = keys_of(&before, &made.id)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(keys.len(), 3);
    admin.delete_credential(delete("oops", true)).await.unwrap();
    let after = snapshot(&mut admin).await;
    assert!(stored(&after, &made.id).is_none());
    for key in &keys {
        assert!(
            !anywhere(&server, &after, key),
            "a force-deleted credential's key is gone"
        );
    }
    assert_eq!(
        admin
            .undelete_credential(undelete(&made.id))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    server.stop().await.unwrap();

    // A short window: the purge destroys every version.
    let server = TestServer::start_with(Options {
        store,
        recovery_window: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "brief", "key-PURGED-000001", "acct").await;
    admin
        .update_credential(rotation("brief", "key-PURGED-000002", "acct"))
        .await
        .unwrap();
    let before = snapshot(&mut admin).await;
    let record = stored(&before, &made.id).unwrap();
    let ciphertexts = [
        record.secret.as_ref().unwrap().ciphertext.clone(),
        record.history[0]
            .secret
            .as_ref()
            .unwrap()
            .ciphertext
            .clone(),
    ];
    let keys: Vec<Vec<u8>> = keys_of(&before, &made.id)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(keys.len(), 2);
    admin
        .delete_credential(delete("brief", false))
        .await
        .unwrap();
    // Purged: the record, then its keys (on sled a moment later, in their own files).
    let waited = until(Duration::from_secs(10), "the purge", || {
        let mut admin = admin.clone();
        let (server, keys) = (&server, &keys);
        async move {
            let snap = snapshot(&mut admin).await;
            snap.deleted.is_empty() && keys.iter().all(|k| !anywhere(server, &snap, k))
        }
    })
    .await;
    let err = admin
        .undelete_credential(api::UndeleteCredentialRequest {
            id: made.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "nothing to undelete after the purge"
    );
    eprintln!("purged {waited:?} after a 1 s window");
    let after = snapshot(&mut admin).await;
    for ciphertext in &ciphertexts {
        assert!(
            !in_store(&after, ciphertext),
            "no sealed version of a purged credential is left"
        );
    }
    for needle in ciphertexts.iter().chain(&keys) {
        if let Some(url) = &server.database_url {
            assert_eq!(rows_holding(url, needle).await, 0);
        }
    }
    for key in &keys {
        assert!(
            !anywhere(&server, &after, key),
            "no key of a purged credential is left"
        );
    }
    server.stop().await.unwrap();
}

async fn backups_keep_history_and_deleted_credentials(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    create(&mut admin, "kept", "key-BACKUP-000001", "acct-1").await;
    admin
        .update_credential(rotation("kept", "key-BACKUP-000002", "acct-2"))
        .await
        .unwrap();
    let gone = create(&mut admin, "gone", "key-BACKUP-000003", "acct-3").await;
    admin
        .delete_credential(delete("gone", false))
        .await
        .unwrap();
    let mut stream = admin
        .backup_vault(api::BackupVaultRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&m.chunk);
    }
    let key_b64 = server.key_b64.clone();
    drop(admin);
    server.stop().await.unwrap();

    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("restored");
    let keyring = credvault::crypto::Keyring::single(
        credvault::crypto::MasterKey::from_base64(&key_b64).unwrap(),
    );
    let report = credvault::backup::restore(&bytes, &dir, keyring, false)
        .await
        .unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
    let restored = TestServer::reopen(dir, key_b64).await;
    let mut admin = restored.admin().await;
    assert_eq!(versions(&mut admin, "kept").await.len(), 2);
    old_and_deleted_open(
        &mut admin,
        ("kept", "key-BACKUP-000001"),
        (&gone, "key-BACKUP-000003"),
    )
    .await;
    restored.stop().await.unwrap();
}

on_every_store!(
    rotate_three_times_then_roll_back_to_the_first,
    at_most_keep_versions_are_kept,
    destroyed_versions_are_gone_for_good,
    delete_undelete_force_and_purge,
    backups_keep_history_and_deleted_credentials,
    a_recovery_window_ends_at_its_purge_time,
    force_purges_a_credential_in_its_recovery_window,
);

#[tokio::test]
async fn a_key_retires_only_once_old_and_deleted_versions_are_rewrapped() {
    let tmp = tempfile::TempDir::new().unwrap();
    let ring = tmp.path().join("keyring");
    let key = || {
        credvault::crypto::MasterKey::generate_base64()
            .as_str()
            .to_owned()
    };
    let (k1, k2) = (key(), key());
    std::fs::write(&ring, format!("k1 = {k1}\n")).unwrap();
    let data = tmp.path().join("data");
    let start = || {
        TestServer::start_with(Options {
            keyring_file: Some(ring.clone()),
            data_dir: Some(data.clone()),
            ..Options::default()
        })
    };
    let server = start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "rotated", "key-RETIRE-000001", "acct").await;
    let gone = create(&mut admin, "deleted", "key-RETIRE-000002", "acct").await;
    admin
        .delete_credential(delete("deleted", false))
        .await
        .unwrap();
    // k2 becomes active; the rotation seals the current secret under it, the old stays on k1.
    std::fs::write(&ring, format!("k1 = {k1}\nk2 = {k2}\n")).unwrap();
    until(Duration::from_secs(10), "the keyring reload", || {
        let mut admin = admin.clone();
        async move {
            snapshot(&mut admin)
                .await
                .meta
                .iter()
                .any(|(k, v)| k.starts_with("active/") && v.starts_with(b"k2 "))
        }
    })
    .await;
    admin
        .update_credential(rotation("rotated", "key-RETIRE-000003", "acct"))
        .await
        .unwrap();
    drop(admin);
    server.stop().await.unwrap();
    // Without a rewrap, k1 is still needed (an old version and a deleted one): refused.
    std::fs::write(&ring, format!("k2 = {k2}\n")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = credvault::run(
        listener,
        bare_config(&data, &format!("k2 = {k2}")),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("k1"), "{err}");
    // With both keys, a rewrap moves every version, old and deleted, to k2 and retires k1.
    std::fs::write(&ring, format!("k1 = {k1}\nk2 = {k2}\n")).unwrap();
    let server = start().await;
    let mut admin = server.admin().await;
    let report = rewrap_all(&mut admin, 10).await;
    let last = report.last().unwrap();
    assert_eq!(
        last.key_id_credentials.keys().collect::<Vec<_>>(),
        ["k2"],
        "{last:?}"
    );
    assert_eq!(last.retired_key_ids, ["k1"]);
    drop(admin);
    server.stop().await.unwrap();
    // Now k2 alone opens everything: the old version and the deleted credential too.
    std::fs::write(&ring, format!("k2 = {k2}\n")).unwrap();
    let server = start().await;
    let mut admin = server.admin().await;
    old_and_deleted_open(
        &mut admin,
        ("rotated", "key-RETIRE-000001"),
        (&gone, "key-RETIRE-000002"),
    )
    .await;
    server.stop().await.unwrap();
}

fn by_id_delete(id: &str, force: bool) -> api::DeleteCredentialRequest {
    api::DeleteCredentialRequest {
        r#ref: Some(api::delete_credential_request::Ref::Id(id.into())),
        expected_version: None,
        force,
    }
}

/// Whether `ListCredentials {deleted: true}` lists `id`.
async fn listed_deleted(client: &mut Client, id: &str) -> bool {
    client
        .list_credentials(api::ListCredentialsRequest {
            deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credentials
        .iter()
        .any(|c| c.id == id)
}

async fn a_recovery_window_ends_at_its_purge_time(store: TestStore) {
    let server = TestServer::start_with(Options {
        store,
        recovery_window: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "brief", "key-WINDOW-000001", "acct").await;
    let deleted = admin
        .delete_credential(delete("brief", false))
        .await
        .unwrap()
        .into_inner();
    let purge_time = deleted.purge_time.unwrap();
    assert!(listed_deleted(&mut admin, &made.id).await);
    // Past the purge time, whether or not the background purge came by yet.
    let end =
        std::time::UNIX_EPOCH + Duration::new(purge_time.seconds as u64, purge_time.nanos as u32);
    if let Ok(wait) = end.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
    }
    assert!(!listed_deleted(&mut admin, &made.id).await);
    let refused = admin
        .undelete_credential(api::UndeleteCredentialRequest {
            id: made.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    // Never served again.
    assert_eq!(
        admin
            .get_credential_headers(headers_by_id(&made.id))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    server.stop().await.unwrap();
}

async fn force_purges_a_credential_in_its_recovery_window(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "leaked", "key-LEAKED-000001", "acct").await;
    admin
        .update_credential(rotation("leaked", "key-LEAKED-000002", "acct"))
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = keys_of(&snapshot(&mut admin).await, &made.id)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(keys.len(), 2);
    admin
        .delete_credential(delete("leaked", false))
        .await
        .unwrap();
    assert!(listed_deleted(&mut admin, &made.id).await);
    // The key leaked: purge it now, by id (its name is free already).
    let by_name = admin
        .delete_credential(delete("leaked", true))
        .await
        .unwrap_err();
    assert_eq!(by_name.code(), Code::NotFound);
    assert!(by_name.message().contains("by id"), "{}", by_name.message());
    let purged = admin
        .delete_credential(by_id_delete(&made.id, true))
        .await
        .unwrap()
        .into_inner();
    assert!(purged.purge_time.is_none());
    assert!(!listed_deleted(&mut admin, &made.id).await);
    let refused = admin
        .undelete_credential(api::UndeleteCredentialRequest {
            id: made.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    until(Duration::from_secs(10), "the keys are erased", || {
        let mut admin = admin.clone();
        let (server, keys) = (&server, &keys);
        async move {
            let snap = snapshot(&mut admin).await;
            keys.iter().all(|k| !anywhere(server, &snap, k))
        }
    })
    .await;
    // Again: nothing left to purge.
    let again = admin
        .delete_credential(by_id_delete(&made.id, true))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_destroy_retried_after_its_key_file_failed_really_erases_the_key() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let made = create(&mut admin, "kept", "key-RETRY-0000001", "acct").await;
    admin
        .update_credential(rotation("kept", "key-RETRY-0000002", "acct"))
        .await
        .unwrap();
    let keys = keys_of(&snapshot(&mut admin).await, &made.id);
    let record = stored(&snapshot(&mut admin).await, &made.id).unwrap();
    let old_seal = record.history[0].seal_id;
    let old_key = keys.iter().find(|(s, _)| *s == old_seal).unwrap().1.clone();
    // The key file's rewrite fails once: its temporary file's path is taken.
    let dir = server.data_dir.join("db").join("erasable");
    let blocker = dir.join(format!(".{}.tmp", made.id));
    std::fs::create_dir(&blocker).unwrap();
    let failed = admin
        .destroy_credential_version(destroy("kept", 1))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("retry"), "{}", failed.message());
    std::fs::remove_dir(&blocker).unwrap();
    admin
        .destroy_credential_version(destroy("kept", 1))
        .await
        .unwrap();
    let file = std::fs::read(dir.join(&made.id)).unwrap();
    assert!(
        !contains(&file, &old_key),
        "the retried destroy left the key on disk"
    );
    let snap = snapshot(&mut admin).await;
    assert!(!anywhere(&server, &snap, &old_key));
    // The current version still opens.
    admin
        .get_credential_headers(headers_by_id(&made.id))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn postgres_sweeps_erasable_keys_no_record_refers_to() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let url = server.database_url.clone().unwrap();
    let mut admin = server.admin().await;
    let made = create(&mut admin, "swept", "key-SWEPT-0000001", "acct").await;
    let client = crate::common::postgres::connect(&url).await;
    // A key a crash left behind (an hour old, no record refers to it), and one
    // a write under way just stored (no record refers to it yet).
    client
        .batch_execute(&format!(
            "INSERT INTO credvault_erasable_keys (id, seal, key, created)
               VALUES ('{0}', 999001, '\\x{1}', now() - interval '1 hour'),
                      ('{0}', 999002, '\\x{2}', now());",
            made.id,
            "aa".repeat(32),
            "bb".repeat(32)
        ))
        .await
        .unwrap();
    // The store as the server opens it (`AnyStore`, which must pass the sweep on).
    let store = credvault::store::open(&credvault::store::StoreConfig::Postgres(
        credvault::store::PostgresSettings {
            url: secrecy::SecretString::from(url.clone()),
            pool: Default::default(),
            startup_wait: Duration::from_secs(5),
        },
    ))
    .await
    .unwrap();
    use credvault::store::prelude::*;
    let erased = store
        .sweep_erasable(Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(erased, 1);
    let seals: Vec<i64> = client
        .query(
            "SELECT seal FROM credvault_erasable_keys WHERE id = $1 ORDER BY seal",
            &[&made.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(seals.contains(&999002), "a fresh key is kept: {seals:?}");
    assert!(
        !seals.contains(&999001),
        "an old unreferenced key goes: {seals:?}"
    );
    // The credential's own keys stay: it still opens.
    admin
        .get_credential_headers(headers_by_id(&made.id))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_rollback_carries_the_versions_verification_forward() {
    let fake = FakeFleetio::start(vec![(
        "key-VERIFIED-00001",
        Behaviour::Accounts {
            tokens: vec!["acct-1".into()],
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
    admin
        .create_credential(api::CreateCredentialRequest {
            name: "rolled".into(),
            secret: Some(fleetio("key-VERIFIED-00001", "acct-1", "")),
            verify: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // A rotation nobody verified, then back to the verified version 1.
    admin
        .update_credential(rotation("rolled", "key-UNCHECKED-0002", "acct-1"))
        .await
        .unwrap();
    let rotated = admin
        .get_credential(by_name_get("rolled"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert!(rotated.last_verification.is_none());
    let back = admin
        .rollback_credential(rollback("rolled", 1))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    let carried = back.last_verification.expect("version 1's verification");
    assert_eq!(carried.status(), api::VerificationStatus::Valid);
    let v1 = versions(&mut admin, "rolled").await;
    let recorded = v1
        .iter()
        .find(|v| v.version == 1)
        .and_then(|v| v.verification.clone())
        .unwrap();
    assert_eq!(
        recorded.check_time, carried.check_time,
        "the same check, carried"
    );
    server.stop().await.unwrap();
}
