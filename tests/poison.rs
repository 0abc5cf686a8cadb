//! No request can silence the vault: hostile values in every string field of every
//! RPC (on sled, and on PostgreSQL with the audit trail in the database), a row the
//! database refuses, an audit writer that stays stuck, and repeated 429s. Each
//! time an honest worker must go on reading its headers, each read audited.

use std::time::Duration;

use crate::common::*;
use credvault::api;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Values no honest caller sends: NUL, controls, bidirectional marks, `%00`,
/// long UTF-8, 8 KB and 1 MB of text.
fn known_hostile() -> Vec<String> {
    vec![
        "\0".into(),
        "fleet\0io".into(),
        "cred_\0".into(),
        "%00".into(),
        "\u{202e}lanigiro".into(),
        "\x1b[31mred\r\nforged: log line".into(),
        "\u{feff}\u{200f}".into(),
        "x".repeat(8 * 1024),
        "é".repeat(40_000),
        "💥".repeat(2_000),
        "y".repeat(1 << 20),
        format!("acme-{}", "\u{7f}".repeat(70)),
    ]
}

/// Random strings of any characters, 0 to 2,000 of them (a fixed seed: a failure
/// is reproduced by running the test again).
fn random_hostile(n: usize) -> Vec<String> {
    let strategy =
        proptest::collection::vec(proptest::char::any(), 0..2_000).prop_map(String::from_iter);
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// Answers a hostile call may get: OK or a clear refusal of the request, never
/// an error of the vault itself, and never a long or raw echo of the value.
fn clear(what: &str, result: Result<(), tonic::Status>) {
    let Err(status) = result else { return };
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::PermissionDenied
                | Code::ResourceExhausted
                | Code::OutOfRange
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::Aborted
        ),
        "{what}: {:?} {}",
        status.code(),
        shorten(status.message())
    );
    assert!(
        status.message().len() <= 1024 && !status.message().contains('\0'),
        "{what}: the message echoes the value: {}",
        shorten(status.message())
    );
}

/// Every RPC with `v` in each string field it has.
async fn every_rpc(admin: &mut Client, v: &str) {
    use api::*;
    macro_rules! call {
        ($what:expr, $rpc:ident, $req:expr) => {
            clear($what, admin.$rpc($req).await.map(|_| ()))
        };
    }
    macro_rules! by_ref {
        ($rpc:ident, $req:ident, $module:ident, $extra:expr) => {
            for r in [
                $module::Ref::Id(v.to_owned()),
                $module::Ref::Name(v.to_owned()),
            ] {
                // Some requests have no field but the reference.
                #[allow(clippy::needless_update)]
                let req = $req {
                    r#ref: Some(r),
                    ..$extra
                };
                call!(stringify!($rpc), $rpc, req);
            }
        };
    }
    let secret = |key: &str, token: &str, version: &str| fleetio(key, token, version);
    // Create: the value as name, description and each secret field.
    call!(
        "create name",
        create_credential,
        CreateCredentialRequest {
            name: v.to_owned(),
            secret: Some(secret("hostile-key-0001", "acct", "")),
            ..Default::default()
        }
    );
    let fresh = format!("h-{}", uuid_like());
    call!(
        "create description",
        create_credential,
        CreateCredentialRequest {
            name: fresh.clone(),
            description: v.to_owned(),
            secret: Some(secret("hostile-key-0002", "acct", "")),
            ..Default::default()
        }
    );
    for (k, t, ver) in [
        (v, "acct", ""),
        ("hostile-key-0003", v, ""),
        ("hostile-key-0004", "acct", v),
    ] {
        call!(
            "create secret",
            create_credential,
            CreateCredentialRequest {
                name: format!("h-{}", uuid_like()),
                secret: Some(secret(k, t, ver)),
                ..Default::default()
            }
        );
    }
    call!(
        "create generic",
        create_credential,
        CreateCredentialRequest {
            name: format!("h-{}", uuid_like()),
            secret: Some(create_credential_request::Secret::Generic(GenericSecret {
                provider: v.to_owned(),
                fields: [(v.to_owned(), v.to_owned())].into_iter().collect(),
            })),
            ..Default::default()
        }
    );
    by_ref!(
        get_credential,
        GetCredentialRequest,
        get_credential_request,
        GetCredentialRequest::default()
    );
    call!(
        "list page token",
        list_credentials,
        ListCredentialsRequest {
            page_token: v.to_owned(),
            ..Default::default()
        }
    );
    by_ref!(
        update_credential,
        UpdateCredentialRequest,
        update_credential_request,
        UpdateCredentialRequest {
            description: Some("changed".into()),
            ..Default::default()
        }
    );
    call!(
        "update description",
        update_credential,
        UpdateCredentialRequest {
            r#ref: Some(update_credential_request::Ref::Name(fresh.clone())),
            description: Some(v.to_owned()),
            ..Default::default()
        }
    );
    by_ref!(
        verify_credential,
        VerifyCredentialRequest,
        verify_credential_request,
        VerifyCredentialRequest::default()
    );
    by_ref!(
        get_credential_headers,
        GetCredentialHeadersRequest,
        get_credential_headers_request,
        GetCredentialHeadersRequest::default()
    );
    by_ref!(
        report_provider_response,
        ReportProviderResponseRequest,
        report_provider_response_request,
        ReportProviderResponseRequest {
            http_status: 429,
            retry_after_seconds: 5,
            ..Default::default()
        }
    );
    by_ref!(
        acquire_request_tokens,
        AcquireRequestTokensRequest,
        acquire_request_tokens_request,
        AcquireRequestTokensRequest {
            count: 1,
            ..Default::default()
        }
    );
    by_ref!(
        list_credential_versions,
        ListCredentialVersionsRequest,
        list_credential_versions_request,
        ListCredentialVersionsRequest::default()
    );
    by_ref!(
        rollback_credential,
        RollbackCredentialRequest,
        rollback_credential_request,
        RollbackCredentialRequest {
            version: 1,
            ..Default::default()
        }
    );
    by_ref!(
        destroy_credential_version,
        DestroyCredentialVersionRequest,
        destroy_credential_version_request,
        DestroyCredentialVersionRequest {
            version: 1,
            ..Default::default()
        }
    );
    by_ref!(
        delete_credential,
        DeleteCredentialRequest,
        delete_credential_request,
        DeleteCredentialRequest::default()
    );
    call!(
        "undelete",
        undelete_credential,
        UndeleteCredentialRequest { id: v.to_owned() }
    );
    for watched in [
        watched_credential::Ref::Id(v.to_owned()),
        watched_credential::Ref::Name(v.to_owned()),
    ] {
        let req = WatchCredentialHeadersRequest {
            credentials: vec![WatchedCredential {
                r#ref: Some(watched),
                ..Default::default()
            }],
        };
        clear(
            "watch",
            admin.watch_credential_headers(req).await.map(|_| ()),
        );
    }
    let req = WatchCredentialHeadersRequest {
        credentials: vec![WatchedCredential {
            r#ref: Some(watched_credential::Ref::Name(fresh.clone())),
            known_version: 1,
            known_credential_id: v.to_owned(),
            ..Default::default()
        }],
    };
    clear(
        "watch known id",
        admin.watch_credential_headers(req).await.map(|_| ()),
    );
    for req in [
        ListAuditEventsRequest {
            credential_id: v.to_owned(),
            ..Default::default()
        },
        ListAuditEventsRequest {
            credential_name: v.to_owned(),
            ..Default::default()
        },
        ListAuditEventsRequest {
            caller: v.to_owned(),
            ..Default::default()
        },
        ListAuditEventsRequest {
            page_token: v.to_owned(),
            ..Default::default()
        },
    ] {
        call!("audit listing", list_audit_events, req);
    }
}

/// A name no other call of this test uses.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The honest worker reads its headers; the read is answered and audited.
async fn honest_read(worker: &mut Client, id: &str) {
    let headers = worker
        .get_credential_headers(headers_by_id(id))
        .await
        .unwrap_or_else(|s| panic!("an honest read was refused: {s:?}"));
    assert!(!headers.into_inner().headers.is_empty());
}

/// The honest worker's audited reads of `id`.
async fn audited_reads(admin: &mut Client, id: &str) -> usize {
    let mut count = 0;
    let mut token = String::new();
    loop {
        let page = admin
            .list_audit_events(api::ListAuditEventsRequest {
                credential_id: id.into(),
                page_token: token,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        count += page
            .events
            .iter()
            .filter(|e| {
                e.method == "GetCredentialHeaders"
                    && e.caller == "worker"
                    && e.code == "OK"
                    && !e.secret_fingerprint.is_empty()
            })
            .count();
        if page.next_page_token.is_empty() {
            return count;
        }
        token = page.next_page_token;
    }
}

async fn hostile_values_in_every_field_never_silence_the_vault(store: TestStore) {
    let server = TestServer::start_on(store).await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let honest = create(&mut admin, "honest", "honest-key-0001", "acct").await;
    let mut reads = 0;
    let values: Vec<String> = known_hostile()
        .into_iter()
        .chain(random_hostile(12))
        .collect();
    for v in &values {
        every_rpc(&mut admin, v).await;
        // Every refused call is behind it: the worker is still served, at once.
        honest_read(&mut worker, &honest.id).await;
        reads += 1;
    }
    for _ in 0..20 {
        honest_read(&mut worker, &honest.id).await;
        reads += 1;
    }
    assert_eq!(
        audited_reads(&mut admin, &honest.id).await,
        reads,
        "each honest read has its audit event"
    );
    assert_eq!(
        server.health("credvault.v1.CredentialVaultService").await,
        ServingStatus::Serving
    );
    assert_eq!(server.health("").await, ServingStatus::Serving);
    server.stop().await.unwrap();
}

on_every_store!(hostile_values_in_every_field_never_silence_the_vault);

#[tokio::test]
async fn a_row_the_database_refuses_costs_that_row_only() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let url = server.database_url.clone().unwrap();
    let mut admin = server.admin().await;
    let honest = create(&mut admin, "honest", "honest-key-0001", "acct").await;
    create(&mut admin, "marked", "marked-key-0001", "acct").await;
    // The database refuses every audit row of the credential named `marked`, as it
    // would a bad value (SQLSTATE 22023, a data exception).
    crate::common::postgres::execute(
        &url,
        "CREATE FUNCTION refuse_marked() RETURNS trigger AS $$
         BEGIN
           IF NEW.credential_name = 'marked' THEN
             RAISE EXCEPTION 'marked row' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER refuse_marked BEFORE INSERT ON credvault_audit
           FOR EACH ROW EXECUTE FUNCTION refuse_marked();",
    )
    .await;
    // Honest and marked reads at once, so that they share the writer's groups.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut worker = server.client_with(Some(&server.tokens.worker)).await;
        let id = honest.id.clone();
        tasks.push(tokio::spawn(async move {
            let name = if i % 4 == 0 { "marked" } else { "honest" };
            let result = worker.get_credential_headers(headers_by_name(name)).await;
            (name, id, result.map(|_| ()).map_err(|s| s.code()))
        }));
    }
    let mut honest_reads = 0;
    for task in tasks {
        let (name, _, result) = task.await.unwrap();
        match name {
            "honest" => {
                result.expect("an honest read is answered while another row is refused");
                honest_reads += 1;
            }
            // Its own event could not be recorded: that read alone fails closed.
            _ => assert_eq!(result, Err(Code::Unavailable)),
        }
    }
    // The trail stays healthy: later reads, and readiness.
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    for _ in 0..10 {
        honest_read(&mut worker, &honest.id).await;
        honest_reads += 1;
    }
    assert_eq!(audited_reads(&mut admin, &honest.id).await, honest_reads);
    assert_eq!(
        server.health("credvault.v1.CredentialVaultService").await,
        ServingStatus::Serving
    );
    let key = admin
        .list_audit_events(api::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_public_key;
    server.stop().await.unwrap();
    // The rows set aside left no hole: each row is linked as it is written.
    let out = std::process::Command::new(binary())
        .args(["audit", "verify", "--database", "--database-url", &url])
        .args(["--public-key", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("verdict: intact"),
        "{text}"
    );
}

#[tokio::test]
async fn an_audit_trail_stuck_while_the_store_takes_writes_fails_liveness_until_it_heals() {
    let server = TestServer::start_with(Options {
        store: TestStore::Postgres,
        liveness_stuck_after: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let url = server.database_url.clone().unwrap();
    let mut admin = server.admin().await;
    let honest = create(&mut admin, "honest", "honest-key-0001", "acct").await;
    assert_eq!(server.health("").await, ServingStatus::Serving);
    // Every audit insert fails, not for a value (SQLSTATE P0001): the trail's
    // writer cannot go on, while the credentials table still takes writes.
    crate::common::postgres::execute(
        &url,
        "CREATE FUNCTION refuse_all() RETURNS trigger AS $$
         BEGIN RAISE EXCEPTION 'the trail is stuck'; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER refuse_all BEFORE INSERT ON credvault_audit
           FOR EACH ROW EXECUTE FUNCTION refuse_all();",
    )
    .await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let refused = worker
        .get_credential_headers(headers_by_id(&honest.id))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unavailable);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.health("").await == ServingStatus::Serving {
        assert!(
            std::time::Instant::now() < deadline,
            "liveness never turned NOT_SERVING for a stuck trail"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        server.health("credvault.v1.CredentialVaultService").await,
        ServingStatus::NotServing
    );
    // Healed (by hand here; by the restart it asks for in a cluster): serving again.
    crate::common::postgres::execute(&url, "DROP TRIGGER refuse_all ON credvault_audit;").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.health("").await != ServingStatus::Serving
        || server.health("credvault.v1.CredentialVaultService").await != ServingStatus::Serving
    {
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    honest_read(&mut worker, &honest.id).await;
    server.stop().await.unwrap();
}

/// A watch of `name`'s credential, and its first message.
async fn watch_one(
    client: &mut Client,
    name: &str,
) -> tonic::Streaming<api::WatchCredentialHeadersResponse> {
    let mut stream = client
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name(name.into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    stream
}

#[tokio::test]
async fn one_429_reported_again_and_again_pauses_once_and_pushes_once() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "paced", "paced-key-0001", "acct").await;
    let mut watcher = server.client_with(Some(&server.tokens.worker)).await;
    let mut stream = watch_one(&mut watcher, "paced").await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    for _ in 0..300 {
        let answer = worker
            .report_provider_response(api::ReportProviderResponseRequest {
                r#ref: Some(api::report_provider_response_request::Ref::Name(
                    "paced".into(),
                )),
                http_status: 429,
                retry_after_seconds: 3600,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.action(), api::ReportAction::Paused);
    }
    // The first report paused the account and was pushed; the other 299 moved its
    // end by milliseconds: nothing written, nothing pushed.
    let mut pushes = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .map(|m| m.transpose())
    {
        assert!(m.paused_until.is_some());
        pushes += 1;
    }
    assert_eq!(pushes, 1, "one pause, one push");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn watched_keys_are_budgeted_per_caller_and_per_server_and_given_back() {
    let server = TestServer::start_with(Options {
        watch: credvault::watch::WatchSettings {
            max_keys_per_caller: 1500,
            max_keys: 2500,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let unknown = |from: usize, n: usize| api::WatchCredentialHeadersRequest {
        credentials: (from..from + n)
            .map(|i| api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name(format!("nothing-{i}"))),
                ..Default::default()
            })
            .collect(),
    };
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let mut admin = server.admin().await;
    let first = worker
        .watch_credential_headers(unknown(0, 1000))
        .await
        .unwrap();
    let refused = worker
        .watch_credential_headers(unknown(1000, 1000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--watch-max-keys-per-caller"),
        "{}",
        refused.message()
    );
    let second = worker
        .watch_credential_headers(unknown(1000, 500))
        .await
        .unwrap();
    // The server's budget: 1,500 of 2,500 taken by the worker.
    let admins = admin
        .watch_credential_headers(unknown(0, 1000))
        .await
        .unwrap();
    let refused = admin
        .watch_credential_headers(unknown(5000, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--watch-max-keys"),
        "{}",
        refused.message()
    );
    // Closed streams give their keys back.
    drop((first, second));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut again = Vec::new();
    loop {
        match worker.watch_credential_headers(unknown(0, 1000)).await {
            Ok(stream) => {
                again.push(stream);
                // The whole budget is back: 1,000 + 500 again.
                again.push(
                    worker
                        .watch_credential_headers(unknown(1000, 500))
                        .await
                        .unwrap(),
                );
                break;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the keys never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop((admins, again));
    server.stop().await.unwrap();
}
