//! Graceful shutdown of the real binary under concurrent load: SIGTERM turns
//! health NOT_SERVING at once, calls keep being served during the drain delay,
//! in-flight calls complete, new connections are refused afterwards, the store
//! is flushed and the process exits 0.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api::VerificationStatus as V;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SLOW: &str = "key-slow-0000007";

#[tokio::test]
async fn sigterm_drains_under_load_and_exits_zero() {
    let fake = FakeFleetio::start(vec![(SLOW, Behaviour::Slow(Duration::from_millis(1500)))]).await;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(
        [
            "--provider-base-url",
            &format!("fleetio={}", fake.base_url),
            "--provider-timeout",
            "10s",
        ]
        .map(String::from),
    );
    let drain = Duration::from_secs(1);
    let mut process = Process::serve(&args, &[("CREDVAULT_DRAIN_DELAY", "1s")], dir.path())
        .await
        .unwrap();
    let token = setup.tokens.admin.clone();
    let mut admin = process.client(&token).await;
    for i in 0..20 {
        create(
            &mut admin,
            &format!("load-{i}"),
            &format!("key-load-{i:08}"),
            "acct",
        )
        .await;
    }
    create(&mut admin, "slow", SLOW, "acct").await;

    // Load: 8 clients on their own connections, each reading headers until its connection goes.
    let ok = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(20);
    let mut load = Vec::new();
    for w in 0..8 {
        let mut client = process.client(&token).await;
        let ok = Arc::clone(&ok);
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut i = w;
            while Instant::now() < stop_at {
                match client
                    .get_credential_headers(headers_by_name(&format!("load-{}", i % 20)))
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.into_inner().headers.len(), 2);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        errors.push((Instant::now(), status));
                        break;
                    }
                }
                i += 1;
            }
            errors
        }));
    }
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(process.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let check = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status())
        }
    };
    assert_eq!(check(&mut health).await.unwrap(), ServingStatus::Serving);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sigterm = Instant::now();
    process.signal("TERM");
    // NOT_SERVING at once (well within the drain delay).
    loop {
        if check(&mut health).await.unwrap() == ServingStatus::NotServing {
            break;
        }
        assert!(
            sigterm.elapsed() < Duration::from_millis(500),
            "health still SERVING after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let served_before = ok.load(Ordering::Relaxed);
    // During the drain delay new connections are still served...
    let mut late = process.client(&token).await;
    late.get_credential_headers(headers_by_name("load-1"))
        .await
        .unwrap();
    // ...and a slow call started now outlives the drain delay yet completes.
    let mut slow_client = process.client(&token).await;
    let in_flight =
        tokio::spawn(async move { slow_client.verify_credential(verify_by_name("slow")).await });
    tokio::time::sleep(drain + Duration::from_millis(300)).await;

    // After the drain delay, new connections are refused.
    let refused = tonic::transport::Channel::from_shared(process.url())
        .unwrap()
        .connect()
        .await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after the drain delay"
    );

    let verification = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completed")
        .into_inner();
    assert_eq!(verification.verification.unwrap().status(), V::Valid);

    let status = process.child.wait().await.unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        process.stderr()
    );
    let logs = process.stderr();
    assert!(logs.contains("store flushed"), "{logs}");

    // The load was served until the drain ended; no call failed before it.
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "calls were served during the drain delay"
    );
    for task in load {
        for (at, status) in task.await.unwrap() {
            assert!(
                at >= sigterm + drain,
                "a call failed {:?} after SIGTERM, inside the drain delay: {status:?}",
                at - sigterm
            );
        }
    }
}
