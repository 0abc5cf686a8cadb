//! Whoever can write the database cannot change what the vault serves unnoticed:
//! a credential's row put back as it was before its last rotation (from a
//! snapshot, a backup, an old dump) while the vault runs is refused, never served
//! and never pushed to a watcher.

use std::time::Duration;

use crate::common::*;
use credvault::api;
use tonic::Code;

async fn db(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_replayed_row_is_refused_and_never_pushed() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let url = server.database_url.clone().unwrap();
    let sql = db(&url).await;
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
    server.stop().await.unwrap();
}
