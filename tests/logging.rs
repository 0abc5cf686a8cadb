//! Log hygiene: at the most verbose level, no secret or token reaches the logs.

mod common;

use common::*;
use credvault::api;

#[tokio::test]
async fn trace_logs_carry_no_secret() {
    let fake = FakeFleetio::start(vec![(
        "key-LOGCANARY-0001",
        Behaviour::Accounts {
            tokens: vec!["acct-LOGCANARY-2".into()],
            bare: false,
        },
    )])
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let (key, tokens) = (&setup.key, &setup.tokens);
    let mut args = setup.args.clone();
    args.extend([
        "--fleetio-base-url".into(),
        fake.base_url.clone(),
        "--log-level".into(),
        "trace".into(),
    ]);
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&tokens.admin).await;
    create(
        &mut admin,
        "canary",
        "key-LOGCANARY-0001",
        "acct-LOGCANARY-2",
    )
    .await;
    admin
        .get_credential_headers(headers_by_name("canary"))
        .await
        .unwrap();
    admin
        .verify_credential(verify_by_name("canary"))
        .await
        .unwrap();
    // Failures too: a bad secret, a wrong token, an unknown credential.
    let _ = admin
        .create_credential(api::CreateCredentialRequest {
            name: "bad".into(),
            description: String::new(),
            secret: Some(fleetio(
                "key-LOGCANARY-0003 with space",
                "acct-LOGCANARY-4",
                "",
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut intruder = process.client("cv_LOGCANARY-wrong-token").await;
    let _ = intruder
        .get_credential_headers(headers_by_name("canary"))
        .await
        .unwrap_err();
    let _ = admin
        .get_credential_headers(headers_by_name("ghost"))
        .await
        .unwrap_err();
    process.signal("TERM");
    assert!(process.child.wait().await.unwrap().success());

    let logs = format!("{}{}", process.stdout(), process.stderr());
    assert!(logs.lines().count() > 20, "trace logging is on: {logs}");
    assert!(logs.contains("\"method\":\"GetCredentialHeaders\""));
    for secret in [
        "LOGCANARY",
        &tokens.admin,
        &std::fs::read_to_string(key).unwrap(),
    ] {
        assert!(!logs.contains(secret.trim()), "logs leak {secret:?}");
    }
}
