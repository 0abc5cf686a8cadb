//! Whoever can write the database cannot change what the vault serves unnoticed:
//! a credential's row put back as it was before its last rotation (from a
//! snapshot, a backup, an old dump) while the vault runs is refused, never served
//! and never pushed to a watcher.

use std::time::Duration;

use crate::common::*;
use credvault::api;
use tonic::Code;

#[tokio::test]
async fn a_replayed_row_is_refused_and_never_pushed() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let url = server.database_url.clone().unwrap();
    let sql = crate::common::postgres::connect(&url).await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let made = create(&mut admin, "replayed", "key-REPLAY-000001", "acct").await;
    create(&mut admin, "other", "key-OTHER-0000001", "acct").await;
    admin
        .update_credential(rotation("replayed", "key-REPLAY-000002", "acct"))
        .await
        .unwrap();
    assert_eq!(
        authorization(&mut worker, "replayed").await,
        "Token key-REPLAY-000002"
    );
    // The row as it was at version 2, kept by whoever can read the database.
    let old = sql
        .query_one(
            "SELECT version, revision, record FROM credvault_credentials WHERE id = $1",
            &[&made.id],
        )
        .await
        .unwrap();
    let (version, revision, record): (i64, i64, Vec<u8>) = (old.get(0), old.get(1), old.get(2));
    admin
        .update_credential(rotation("replayed", "key-REPLAY-000003", "acct"))
        .await
        .unwrap();
    let mut stream = worker
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("replayed".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(pairs(&first.headers)[0].1, "Token key-REPLAY-000003");

    // Put back behind the vault's back (the change notification fires as for any write).
    sql.execute(
        "UPDATE credvault_credentials SET version = $2, revision = $3, record = $4 WHERE id = $1",
        &[&made.id, &version, &revision, &record],
    )
    .await
    .unwrap();
    let refused = worker
        .get_credential_headers(headers_by_name("replayed"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(
        refused.message().contains("put back"),
        "{}",
        refused.message()
    );
    // Nothing of it reaches the watcher; other credentials are served.
    if let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
        assert!(
            pairs(&m.headers).iter().all(|(_, v)| !v.contains("000002")),
            "the replayed key was pushed: {m:?}"
        );
    }
    assert_eq!(
        authorization(&mut worker, "other").await,
        "Token key-OTHER-0000001"
    );
    // Writes on top of the replayed row are refused too, until it is repaired.
    let write = admin
        .update_credential(rotation("replayed", "key-REPLAY-000004", "acct"))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::DataLoss);
    let key = admin
        .list_audit_events(api::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_public_key;
    // A restarted server has not seen the later revision (its marks begin again):
    // the trail's signed marks are what an offline check compares the store with.
    let server = server.restart().await;
    server.stop().await.unwrap();
    let out = std::process::Command::new(binary())
        .args([
            "audit",
            "verify",
            "--database",
            "--database-url",
            &url,
            "--store",
            &format!("postgres:{url}"),
            "--public-key",
            &key,
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("credential {} is at revision {revision}", made.id))
            && text.contains("replayed"),
        "{text}"
    );
    // Two chains (one a start), both closed; only the replayed record is named.
    assert!(text.contains("2 chain(s)"), "{text}");
    assert_eq!(text.matches("PROBLEM").count(), 1, "{text}");
}

/// Rewrites the stored row of credential `id` with `edit` applied to its record,
/// the MAC left as it was (what whoever can write the database can do).
async fn edit_row(
    sql: &tokio_postgres::Client,
    id: &str,
    edit: impl FnOnce(&mut credvault::record::CredentialRecord),
) {
    let row = sql
        .query_one(
            "SELECT record FROM credvault_credentials WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let mut record = credvault::record::CredentialRecord::from_bytes(id, row.get(0)).unwrap();
    edit(&mut record);
    let name = record.name.clone();
    sql.execute(
        "UPDATE credvault_credentials SET record = $2, name = $3 WHERE id = $1",
        &[&id, &record.to_bytes(), &name],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_field_the_vault_acts_on_is_authenticated() {
    let token = credvault::auth::mint_token().as_str().to_owned();
    let server = TestServer::start_with(Options {
        store: TestStore::Postgres,
        extra_callers: credvault::auth::callers_entry(
            "acme-worker",
            &token,
            &[credvault::auth::Permission::HeadersRead],
        ) + "credentials = [\"acme-*\"]\n",
        ..Options::default()
    })
    .await;
    let sql = crate::common::postgres::connect(server.database_url.as_deref().unwrap()).await;
    let mut admin = server.admin().await;
    let mut acme = server.client_with(Some(&token)).await;
    let prod = create(&mut admin, "prod-fleet", "key-PROD-00000001", "acct").await;
    let honest = create(&mut admin, "acme-honest", "key-ACME-00000001", "acct").await;
    // Rename: prod's row renamed into the scoped caller's names.
    edit_row(&sql, &prod.id, |r| r.name = "acme-fleet".into()).await;
    let refused = acme
        .get_credential_headers(headers_by_name("acme-fleet"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::DataLoss,
        "the rename attack: {refused:?}"
    );
    assert!(!refused.message().contains("PROD"), "{}", refused.message());

    // Silent rollback: a kept version promoted to current in the row.
    let rolled = create(&mut admin, "acme-rolled", "key-ROLL-00000001", "acct").await;
    admin
        .update_credential(rotation("acme-rolled", "key-ROLL-00000002", "acct"))
        .await
        .unwrap();
    edit_row(&sql, &rolled.id, |r| {
        let old = r.history.remove(0);
        r.secret = old.secret;
        r.data_key = old.data_key;
        r.seal_id = old.seal_id;
        r.secret_version = old.version;
    })
    .await;
    let refused = acme
        .get_credential_headers(headers_by_name("acme-rolled"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::DataLoss,
        "the silent rollback: {refused:?}"
    );

    // Each other field the vault acts on, one credential each.
    type Edit = fn(&mut credvault::record::CredentialRecord);
    let edits: [(&str, Edit); 7] = [
        // A forged verification where there was none.
        ("verification", |r| {
            r.last_verification = Some(Default::default())
        }),
        ("expiry", |r| {
            r.expire_time = Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            })
        }),
        ("budget", |r| r.request_budget_per_minute = 9999),
        ("revision", |r| r.revision += 100),
        ("version", |r| r.version += 1),
        ("provider", |r| r.provider = "fleetio-declared".into()),
        ("mac stripped", |r| {
            r.mac.clear();
            r.mac_key_id.clear();
        }),
    ];
    for (i, (what, edit)) in edits.iter().enumerate() {
        let name = format!("acme-field-{i}");
        let made = create(&mut admin, &name, "key-FIELD-0000001", "acct").await;
        admin
            .update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Name(name.clone())),
                description: Some("seen".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        edit_row(&sql, &made.id, *edit).await;
        let answer = acme.get_credential_headers(headers_by_name(&name)).await;
        let refused = answer.err().unwrap_or_else(|| panic!("{what}: served"));
        assert_eq!(refused.code(), Code::DataLoss, "{what}: {refused:?}");
    }
    // Only those: the honest credential is served, and listed; none of the changed ones is.
    assert_eq!(
        authorization(&mut acme, "acme-honest").await,
        "Token key-ACME-00000001"
    );
    let listed: Vec<String> = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .credentials
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&honest.id));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn records_written_before_macs_are_authenticated_at_start() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let url = server.database_url.clone().unwrap();
    let key = server.key_b64.clone();
    let sql = crate::common::postgres::connect(&url).await;
    let mut admin = server.admin().await;
    let old = create(&mut admin, "old", "key-OLD-000000001", "acct").await;
    drop(admin);
    server.stop().await.unwrap();
    // As an older version wrote it: no MAC.
    edit_row(&sql, &old.id, |r| {
        r.mac.clear();
        r.mac_key_id.clear();
    })
    .await;
    let server = TestServer::start_with(Options {
        database_url: Some(url.clone()),
        key_b64: key,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    assert_eq!(
        authorization(&mut admin, "old").await,
        "Token key-OLD-000000001"
    );
    let row = sql
        .query_one(
            "SELECT record FROM credvault_credentials WHERE id = $1",
            &[&old.id],
        )
        .await
        .unwrap();
    let stored = credvault::record::CredentialRecord::from_bytes(&old.id, row.get(0)).unwrap();
    assert_eq!(stored.mac.len(), 32, "authenticated at start");
    server.stop().await.unwrap();
}
