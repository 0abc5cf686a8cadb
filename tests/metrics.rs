//! Prometheus metrics on `--metrics-listen`, scraped over HTTP from the real binary.

use crate::common::*;
use credvault::api;

#[tokio::test]
async fn metrics_show_requests_latency_credentials_and_verifications() {
    let fake = FakeFleetio::start(vec![(
        "key-good-00000001",
        Behaviour::Accounts {
            tokens: vec!["acct-1".into()],
            bare: false,
        },
    )])
    .await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics_addr = format!("127.0.0.1:{port}");
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(
        [
            "--provider-base-url",
            &format!("fleetio={}", fake.base_url),
            "--metrics-listen",
            &metrics_addr,
        ]
        .map(String::from),
    );
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    assert!(
        process
            .stderr()
            .contains(&format!("\"metrics\":\"{metrics_addr}\"")),
        "{}",
        process.stderr()
    );

    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "one", "key-good-00000001", "acct-1").await;
    create(&mut admin, "two", "key-good-00000001", "acct-1").await;
    create(&mut admin, "three", "key-good-00000001", "acct-1").await;
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name("three".into())),
            expected_version: None,
        })
        .await
        .unwrap();
    for _ in 0..5 {
        admin
            .get_credential_headers(headers_by_name("one"))
            .await
            .unwrap();
    }
    let _ = admin
        .get_credential_headers(headers_by_name("ghost"))
        .await
        .unwrap_err();
    admin
        .verify_credential(verify_by_name("two"))
        .await
        .unwrap();
    let mut worker = process.client(&setup.tokens.worker).await;
    let _ = worker
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap_err();
    // Reports (a 429 and a 500) and leases of a budget of 60 a minute (a lease is at most 6).
    for (status, retry_after) in [(429, 30), (500, 0)] {
        worker
            .report_provider_response(api::ReportProviderResponseRequest {
                r#ref: Some(api::report_provider_response_request::Ref::Name(
                    "two".into(),
                )),
                http_status: status,
                retry_after_seconds: retry_after,
                version: 0,
            })
            .await
            .unwrap();
    }
    let lease = |name: &str| api::AcquireRequestTokensRequest {
        r#ref: Some(api::acquire_request_tokens_request::Ref::Name(name.into())),
        count: 10,
    };
    let budget = |name: &str| api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
        request_budget_per_minute: Some(60),
        ..Default::default()
    };
    admin.update_credential(budget("one")).await.unwrap();
    // "one" shares the paused account of "two": nothing until the pause ends.
    let paused = worker
        .acquire_request_tokens(lease("one"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.granted, 0);
    assert!(paused.paused_until.is_some());
    create(&mut admin, "four", "key-good-00000001", "acct-2").await;
    admin.update_credential(budget("four")).await.unwrap();
    // 60 a minute, at most 6 a lease: ten leases spend the window, the eleventh gets none.
    let mut granted = Vec::new();
    for _ in 0..11 {
        let g = worker
            .acquire_request_tokens(lease("four"))
            .await
            .unwrap()
            .into_inner();
        granted.push(g.granted);
    }
    // (Were a minute to turn during the loop, the new window would grant again.)
    let window_turned = granted.iter().sum::<u32>() > 60;

    let body = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"credvault_requests_total{method="CreateCredential",code="OK"} 4"#,
        r#"credvault_requests_total{method="GetCredentialHeaders",code="OK"} 5"#,
        r#"credvault_requests_total{method="GetCredentialHeaders",code="NOT_FOUND"} 1"#,
        r#"credvault_requests_total{method="ListCredentials",code="PERMISSION_DENIED"} 1"#,
        r#"credvault_request_duration_seconds_bucket{method="GetCredentialHeaders",le="+Inf"} 6"#,
        r#"credvault_request_duration_seconds_count{method="VerifyCredential"} 1"#,
        "credvault_credentials 3",
        r#"credvault_verifications_total{provider="fleetio",status="VERIFICATION_STATUS_VALID",source="rpc"} 1"#,
        "# TYPE credvault_request_duration_seconds histogram",
        "# HELP credvault_credentials credentials stored",
        r#"credvault_provider_reports_total{status="429",action="paused"} 1"#,
        r#"credvault_provider_reports_total{status="5xx",action="ignored"} 1"#,
        "credvault_account_pauses_total 1",
    ] {
        assert!(body.contains(series), "missing {series:?} in\n{body}");
    }
    if !window_turned {
        assert_eq!(granted, [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 0]);
        for series in [
            "credvault_budget_requests_granted_total 60",
            "credvault_budget_requests_refused_total 6",
        ] {
            assert!(body.contains(series), "missing {series:?} in\n{body}");
        }
    }
    assert!(
        !body.contains("key-good") && !body.contains("acct-1"),
        "metrics leak a secret"
    );
    process.terminate().await;
}

#[tokio::test]
async fn audit_write_failures_are_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(
        [
            "--audit-log",
            "/dev/full",
            "--metrics-listen",
            &metrics_addr,
        ]
        .map(String::from),
    );
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "one", "key-00000001", "acct").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let body = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let failures = body
            .lines()
            .find_map(|l| l.strip_prefix("credvault_audit_write_failures_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if failures.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit failure counted:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    process
        .wait_for_log(&["the audit log cannot be written"])
        .await;
    process.terminate().await;
}

/// `/metrics` has a real shutdown: `run` returns only once the metrics port is
/// closed, so a server stopped in process leaves no listener behind. (In process,
/// unlike the tests above: the recorder is installed into this test binary once.)
#[tokio::test]
async fn the_metrics_port_closes_with_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = credvault::crypto::MasterKey::generate_base64();
    let mut config = bare_config(dir.path(), &key);
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    config.metrics_listen = Some(metrics_addr);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(credvault::run(listener, config, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{metrics_addr}/metrics");
    let mut scraped = None;
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(&url).await {
            scraped = Some(response.text().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let scraped = scraped.expect("/metrics answers while the server runs");
    assert!(scraped.contains("credvault_credentials"), "{scraped}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let after = tokio::net::TcpStream::connect(metrics_addr).await;
    assert!(
        after.is_err(),
        "the metrics port is still open after run returned"
    );
}
