//! The background re-verifier, run by the real binary against the fake Fleetio:
//! it keeps last_verification current, logs status changes, honours Retry-After
//! and stops cleanly on SIGTERM with a check in flight.

use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api::VerificationStatus as V;

const GOOD: &str = "key-good-00000001";
const LIMITED: &str = "key-limited-0004";
const SLOW: &str = "key-slow-0000007";

async fn status_of(client: &mut Client, name: &str) -> Option<V> {
    let c = client
        .get_credential(by_name_get(name))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    c.last_verification.map(|v| v.status())
}

async fn wait_for(client: &mut Client, name: &str, want: V) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(client, name).await != Some(want) {
        assert!(Instant::now() < deadline, "{name} never reached {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_reverifier_keeps_verifications_current() {
    let fake = FakeFleetio::start(vec![
        (
            GOOD,
            Behaviour::Accounts {
                tokens: vec!["acct-1".into()],
                bare: false,
            },
        ),
        (LIMITED, Behaviour::Status(429)),
        (SLOW, Behaviour::Slow(Duration::from_secs(60))),
    ])
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(
        [
            "--fleetio-base-url",
            &fake.base_url,
            "--reverify-interval",
            "200ms",
            "--reverify-concurrency",
            "2",
            "--provider-timeout",
            "30s",
        ]
        .map(String::from),
    );
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "good", GOOD, "acct-1").await;
    create(&mut admin, "limited", LIMITED, "acct-2").await;

    // Picked up without anyone calling VerifyCredential.
    wait_for(&mut admin, "good", V::Valid).await;
    wait_for(&mut admin, "limited", V::RateLimited).await;

    // The fake asked for 7 s: no further check of that account meanwhile, while others go on.
    let good_before = fake.checks_of(GOOD);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.checks_of(LIMITED), 1, "Retry-After was not honoured");
    assert!(
        fake.checks_of(GOOD) >= good_before + 3,
        "sweeps went on: {} -> {}",
        good_before,
        fake.checks_of(GOOD)
    );

    // Fleetio revokes the key: the next sweep notices, and says so in the log.
    fake.revoke(GOOD);
    wait_for(&mut admin, "good", V::ApiKeyRejected).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    process
        .wait_for_log(&[
            "verification status changed",
            "ApiKeyRejected",
            "\"name\":\"good\"",
        ])
        .await;

    // SIGTERM with a 60 s check in flight: the process still stops at once, cleanly.
    create(&mut admin, "slow", SLOW, "acct-3").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.checks_of(SLOW) == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow credential was never checked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(admin);
    let start = Instant::now();
    process.signal("TERM");
    let status = process.child.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        start.elapsed()
    );
    let logs = process.stderr();
    assert!(
        logs.contains("background re-verification stopped"),
        "{logs}"
    );
    for secret in [GOOD, LIMITED, SLOW, "acct-1", "acct-2"] {
        assert!(!logs.contains(secret), "logs leak {secret}");
    }
}
