//! Secret hygiene, proven: at the most verbose log level, every RPC (successes
//! and failures) is driven, and no secret value or token appears in stdout,
//! stderr, the audit log, any error message, or any List/Get/other response.

use crate::common::*;
use credvault::api;

const KEY: &str = "key-LOGCANARY-0001";
const TOKEN: &str = "acct-LOGCANARY-2";
const NEW_KEY: &str = "key-LOGCANARY-0005";

#[tokio::test]
async fn no_secret_or_token_leaks_anywhere() {
    let fake = FakeFleetio::start(vec![(
        KEY,
        Behaviour::Accounts {
            tokens: vec![TOKEN.into()],
            bare: false,
        },
    )])
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let (key_file, tokens) = (&setup.key, &setup.tokens);
    let mut args = setup.args.clone();
    args.extend([
        "--provider-base-url".into(),
        format!("fleetio={}", fake.base_url),
        "--log-level".into(),
        "trace".into(),
    ]);
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&tokens.admin).await;
    let mut worker = process.client(&tokens.worker).await;
    let mut intruder = process.client("cv_LOGCANARY-wrong-token").await;
    let mut seen = Vec::<String>::new();
    let mut note = |r: Result<String, tonic::Status>| match r {
        Ok(text) => seen.push(text),
        Err(status) => seen.push(format!("{:?} {}", status.code(), status.message())),
    };

    // Every RPC, succeeding.
    note(
        admin
            .create_credential(api::CreateCredentialRequest {
                name: "canary".into(),
                secret: Some(fleetio(KEY, TOKEN, "2024-03-15")),
                verify: true,
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .get_credential(by_name_get("canary"))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .list_credentials(api::ListCredentialsRequest::default())
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    let headers = worker
        .get_credential_headers(headers_by_name("canary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        headers.headers[0].value,
        format!("Token {KEY}"),
        "the one place a secret may appear"
    );
    note(
        admin
            .verify_credential(verify_by_name("canary"))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Name("canary".into())),
                secret: Some(api::update_credential_request::Secret::Fleetio(
                    api::FleetioSecret {
                        api_key: NEW_KEY.into(),
                        account_token: TOKEN.into(),
                        api_version: String::new(),
                    },
                )),
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .list_audit_events(api::ListAuditEventsRequest::default())
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    // A watch stream: its first message carries the headers (the other place a
    // secret may appear), then a budget, a lease, and a worker's reports.
    let mut watch = worker
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("canary".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.headers[0].value, format!("Token {NEW_KEY}"));
    note(
        admin
            .update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Name("canary".into())),
                request_budget_per_minute: Some(60),
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        worker
            .acquire_request_tokens(api::AcquireRequestTokensRequest {
                r#ref: Some(api::acquire_request_tokens_request::Ref::Name(
                    "canary".into(),
                )),
                count: 5,
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    for (status, retry_after) in [(429, 30), (401, 0), (0, 0)] {
        note(
            worker
                .report_provider_response(api::ReportProviderResponseRequest {
                    r#ref: Some(api::report_provider_response_request::Ref::Name(
                        "canary".into(),
                    )),
                    http_status: status,
                    retry_after_seconds: retry_after,
                    version: 0,
                })
                .await
                .map(|r| format!("{:?}", r.into_inner())),
        );
    }
    // The pause and the verification the reports made reach the stream (in one
    // message or two), without a secret.
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
            .await
            .expect("a watch message")
            .unwrap()
            .unwrap();
        assert!(m.headers.is_empty());
        note(Ok(format!("{m:?}")));
        let rejected = m
            .last_verification
            .as_ref()
            .is_some_and(|v| v.status() == api::VerificationStatus::ApiKeyRejected);
        if rejected && m.paused_until.is_some() {
            break;
        }
    }
    drop(watch);

    // A rewrap's reports, and a backup's bytes as text: sealed secrets only.
    note(Ok(format!("{:?}", rewrap_all(&mut admin, 1).await)));
    let mut backup = String::new();
    let mut stream = admin
        .backup_vault(api::BackupVaultRequest {})
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = stream.message().await.unwrap() {
        backup.push_str(&String::from_utf8_lossy(&m.chunk));
    }
    assert!(backup.contains("canary"), "names are in the clear");
    note(Ok(backup));

    // And failing: bad secrets, rejected verification, wrong and missing tokens,
    // missing permissions, unknown credentials, conflicts.
    note(
        admin
            .create_credential(api::CreateCredentialRequest {
                name: "bad".into(),
                secret: Some(fleetio(
                    "key-LOGCANARY-0003 with space",
                    "acct-LOGCANARY-4",
                    "",
                )),
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .create_credential(api::CreateCredentialRequest {
                name: "rejected".into(),
                secret: Some(fleetio("key-LOGCANARY-0006", "acct-LOGCANARY-7", "")),
                verify: true,
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .create_credential(api::CreateCredentialRequest {
                name: "canary".into(),
                secret: Some(fleetio(KEY, TOKEN, "")),
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        intruder
            .get_credential_headers(headers_by_name("canary"))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        worker
            .list_credentials(api::ListCredentialsRequest::default())
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        worker
            .list_audit_events(api::ListAuditEventsRequest::default())
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .get_credential_headers(headers_by_name("ghost"))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .verify_credential(verify_by_name("ghost"))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Name("canary".into())),
                expected_version: Some(99),
                description: Some("x".into()),
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    // History: the versions, a rollback to the first secret, and its old copy destroyed.
    note(
        admin
            .list_credential_versions(api::ListCredentialVersionsRequest {
                r#ref: Some(api::list_credential_versions_request::Ref::Name(
                    "canary".into(),
                )),
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .rollback_credential(api::RollbackCredentialRequest {
                r#ref: Some(api::rollback_credential_request::Ref::Name("canary".into())),
                version: 1,
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .destroy_credential_version(api::DestroyCredentialVersionRequest {
                r#ref: Some(api::destroy_credential_version_request::Ref::Name(
                    "canary".into(),
                )),
                version: 1,
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    let id = admin
        .get_credential(by_name_get("canary"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
        .id;
    note(
        admin
            .delete_credential(api::DeleteCredentialRequest {
                force: false,
                r#ref: Some(api::delete_credential_request::Ref::Name("canary".into())),
                expected_version: None,
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .list_credentials(api::ListCredentialsRequest {
                deleted: true,
                ..Default::default()
            })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    note(
        admin
            .undelete_credential(api::UndeleteCredentialRequest { id })
            .await
            .map(|r| format!("{:?}", r.into_inner())),
    );
    process.terminate().await;

    let logs = format!("{}{}", process.stdout(), process.stderr());
    assert!(logs.lines().count() > 50, "trace logging is on");
    // Every RPC of the service, so a new one must be driven here too.
    for method in credvault::gate::VAULT_METHODS {
        assert!(
            logs.contains(&format!("\"method\":\"{method}\"")),
            "{method} was not driven"
        );
    }
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(audit.lines().count() >= 15);
    let responses = seen.join("\n");
    let master_key = std::fs::read_to_string(key_file).unwrap();
    let all_tokens = [
        &tokens.admin,
        &tokens.worker,
        &tokens.reader,
        &tokens.writer,
        &tokens.verifier,
        &tokens.nobody,
    ];
    for (place, text) in [
        ("logs", &logs),
        ("audit log", &audit),
        ("responses and errors", &responses),
    ] {
        assert!(
            !text.contains("LOGCANARY"),
            "{place} leak a secret or token"
        );
        assert!(
            !text.contains(master_key.trim()),
            "{place} leak the master key"
        );
        for token in all_tokens {
            assert!(
                !text.contains(token.as_str()),
                "{place} leak a caller token"
            );
        }
    }
}
