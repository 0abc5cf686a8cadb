//! Reloading the callers file without a restart: on change and on SIGHUP; a bad
//! file keeps the previous callers; in-flight calls finish.

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
    args.extend(["--fleetio-base-url", &fake.base_url].map(String::from));
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process.stderr().contains("callers reload failed") {
        assert!(Instant::now() < deadline, "no reload error was logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap();

    // SIGHUP reloads even when the file's modification time did not move.
    let stamp = std::fs::metadata(&setup.callers)
        .unwrap()
        .modified()
        .unwrap();
    let with_writer = format!(
        "{keep_reader}\n{}",
        callers_entry("writer", &t.writer, &[Permission::CredentialsWrite])
    );
    // Written aside with the old mtime, then renamed in: the watch never sees a new mtime.
    let aside = setup.callers.with_extension("next");
    std::fs::write(&aside, with_writer).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&aside)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    std::fs::rename(&aside, &setup.callers).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut writer = process.client(&t.writer).await;
    assert_eq!(
        writer
            .delete_credential(api::DeleteCredentialRequest {
                r#ref: Some(api::delete_credential_request::Ref::Name("slow".into())),
                expected_version: None,
            })
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated,
        "not reloaded yet: the watch keys on the modification time"
    );
    process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = writer
            .delete_credential(api::DeleteCredentialRequest {
                r#ref: Some(api::delete_credential_request::Ref::Name("slow".into())),
                expected_version: None,
            })
            .await;
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
        .wait_for_log(&["callers reloaded", "\"reason\":\"SIGHUP\""])
        .await;
    process.terminate().await;
}
