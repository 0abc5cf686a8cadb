//! Reloading the callers file and the keyring without a restart: on change and
//! on SIGHUP; a bad file keeps the previous one; in-flight calls finish.

use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api;
use credvault::auth::{callers_entry, Permission};
use tonic::Code;

const SLOW: &str = "key-slow-0000007";

async fn until_refused(client: &mut Client) -> Duration {
    let start = Instant::now();
    loop {
        match client
            .list_credentials(api::ListCredentialsRequest::default())
            .await
        {
            Err(s) if s.code() == Code::Unauthenticated => return start.elapsed(),
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the revoked token kept working"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn revoked_tokens_stop_working_without_a_restart() {
    let fake = FakeFleetio::start(vec![(SLOW, Behaviour::Slow(Duration::from_millis(1500)))]).await;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let t = &setup.tokens;
    let mut args = setup.args.clone();
    let metrics = format!("127.0.0.1:{}", free_port());
    args.extend(
        [
            "--fleetio-base-url",
            &fake.base_url,
            "--metrics-listen",
            &metrics,
        ]
        .map(String::from),
    );
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&t.admin).await;
    let mut reader = process.client(&t.reader).await;
    create(&mut admin, "slow", SLOW, "acct").await;
    reader
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap();

    // A slow call by admin is in flight when admin is revoked: it still completes.
    let mut in_flight_client = process.client(&t.admin).await;
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .verify_credential(verify_by_name("slow"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keep_reader = callers_entry("reader", &t.reader, &[Permission::CredentialsRead]);
    std::fs::write(&setup.callers, &keep_reader).unwrap();
    let took = until_refused(&mut admin).await;
    eprintln!("revoked token refused {took:?} after the callers file changed");
    in_flight
        .await
        .unwrap()
        .expect("the in-flight call finished");
    reader
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap();

    // A file that does not parse keeps the previous callers, and says why.
    std::fs::write(
        &setup.callers,
        "[[caller]]\nname = \"broken\"\npermissions = [\"root\"]\n",
    )
    .unwrap();
    wait_for_metric(
        &metrics,
        r#"credvault_reloads_total{file="callers",outcome="failed"}"#,
        1.0,
    )
    .await;
    process.wait_for_log(&["callers reload failed"]).await;
    reader
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap();

    // A blank file (a write caught halfway) keeps the previous callers too.
    std::fs::write(&setup.callers, "").unwrap();
    wait_for_metric(
        &metrics,
        r#"credvault_reloads_total{file="callers",outcome="failed"}"#,
        2.0,
    )
    .await;
    process.wait_for_log(&["a write in progress?"]).await;
    reader
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap();

    // A rewrite that keeps the modification time is still seen: the watch keys on
    // the content (a truncate and a write within one tick of the file system's clock).
    let stamp = std::fs::metadata(&setup.callers)
        .unwrap()
        .modified()
        .unwrap();
    let with_writer = format!(
        "{keep_reader}\n{}",
        callers_entry("writer", &t.writer, &[Permission::CredentialsWrite])
    );
    let aside = setup.callers.with_extension("next");
    std::fs::write(&aside, with_writer).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&aside)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    std::fs::rename(&aside, &setup.callers).unwrap();
    assert_eq!(
        std::fs::metadata(&setup.callers)
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
    let mut writer = process.client(&t.writer).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = writer
            .delete_credential(api::DeleteCredentialRequest {
                force: false,
                r#ref: Some(api::delete_credential_request::Ref::Name("slow".into())),
                expected_version: None,
            })
            .await;
        if r.is_ok() {
            break;
        }
        let code = r.unwrap_err().code();
        assert_eq!(code, Code::Unauthenticated, "not reloaded yet, or taken");
        assert!(Instant::now() < deadline, "the rewrite was not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGHUP reads the file at once, changed or not.
    process.signal("HUP");
    process
        .wait_for_log(&["callers reloaded", "\"reason\":\"SIGHUP\""])
        .await;
    process.terminate().await;
}

#[tokio::test]
async fn a_keyring_without_a_key_the_data_needs_is_refused_and_the_old_one_kept() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let key = || {
        credvault::crypto::MasterKey::generate_base64()
            .as_str()
            .to_owned()
    };
    let (k1, k2) = (key(), key());
    std::fs::write(&setup.key, format!("k1 = {k1}\n")).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = setup.args.clone();
    args.extend(["--metrics-listen", &metrics].map(String::from));
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "sealed-by-k1", "key-00000001", "acct").await;

    // k1 is gone from the new file: refused, as the metric and the log say.
    std::fs::write(&setup.key, format!("k2 = {k2}\n")).unwrap();
    let failed = r#"credvault_reloads_total{file="keyring",outcome="failed"}"#;
    wait_for_metric(&metrics, failed, 1.0).await;
    let line = process.wait_for_log(&["keyring reload failed", "k1"]).await;
    assert!(!line.contains(&k1) && !line.contains(&k2), "{line}");
    // The previous keyring stays: what k1 sealed still opens, and new secrets seal under k1.
    assert_eq!(
        authorization(&mut admin, "sealed-by-k1").await,
        "Token key-00000001"
    );
    create(&mut admin, "sealed-later", "key-00000002", "acct").await;
    let report = rewrap_all(&mut admin, 10).await;
    let last = report.last().unwrap();
    assert_eq!(last.active_key_id, "k1");
    assert_eq!(last.key_id_credentials.get("k1"), Some(&2), "{last:?}");

    // With k1 kept beside it, k2 becomes active without a restart.
    std::fs::write(&setup.key, format!("k1 = {k1}\nk2 = {k2}\n")).unwrap();
    wait_for_metric(
        &metrics,
        r#"credvault_reloads_total{file="keyring",outcome="reloaded"}"#,
        1.0,
    )
    .await;
    process
        .wait_for_log(&["keyring reloaded", "\"key_id\":\"k2\""])
        .await;
    assert_eq!(metric(&metrics, failed).await, 1.0, "one refusal, no more");
    process.terminate().await;
}
