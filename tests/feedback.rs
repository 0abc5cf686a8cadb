//! Workers' reports of the providers' answers and the shared request budget:
//! one 429 pauses every worker of the account (through their streams and in
//! GetCredentialHeaders) until the pause ends; twenty 401 reports make one
//! verification that every watcher hears; bad reports change nothing; twenty
//! workers against a rate-limited fake Fleetio with the budget off and on; and
//! replicas on one PostgreSQL database sharing pauses and budgets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use credvault::api::{self, ReportAction, WatchState};
use credvault::auth::{callers_entry, mint_token, Permission};
use credvault_client::proto::ReportAction as Action;
use credvault_client::Error as ClientError;
use tonic::Code;

fn report(name: &str, status: u32, retry_after: u32) -> api::ReportProviderResponseRequest {
    api::ReportProviderResponseRequest {
        r#ref: Some(api::report_provider_response_request::Ref::Name(
            name.into(),
        )),
        http_status: status,
        retry_after_seconds: retry_after,
        version: 0,
    }
}

fn lease(name: &str, count: u32) -> api::AcquireRequestTokensRequest {
    api::AcquireRequestTokensRequest {
        r#ref: Some(api::acquire_request_tokens_request::Ref::Name(name.into())),
        count,
    }
}

fn budget(name: &str, per_minute: u32) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
        request_budget_per_minute: Some(per_minute),
        ..Default::default()
    }
}

fn time_of(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*t).unwrap()
}

async fn paused_until(worker: &mut Client, name: &str) -> Option<SystemTime> {
    worker
        .get_credential_headers(headers_by_name(name))
        .await
        .unwrap()
        .into_inner()
        .paused_until
        .as_ref()
        .map(time_of)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_429_pauses_every_worker_of_the_account_until_it_ends() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    // Two credentials of one Fleetio account, one of another.
    create(&mut admin, "acme-etl", "key-0000000a", "acct-acme").await;
    create(&mut admin, "acme-sync", "key-0000000b", "acct-acme").await;
    create(&mut admin, "beta", "key-0000000c", "acct-beta").await;
    let workers: Vec<_> = (0..6)
        .map(|_| worker_client(&server.url(), &server.tokens.worker))
        .collect();
    for (i, w) in workers.iter().enumerate() {
        let name = ["acme-etl", "acme-sync", "beta"][i % 3];
        assert!(w.try_acquire(name).await.is_ok(), "nothing paused yet");
    }
    until(Duration::from_secs(10), "every stream up", || async {
        workers.iter().all(credvault_client::Client::is_connected)
    })
    .await;
    let mut stream = worker
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("acme-sync".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.paused_until, None);

    // One worker hits Fleetio's limit and reports it.
    let reported = Instant::now();
    let got = workers[0]
        .report("acme-etl", 429, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(got.action, Action::Paused, "{got:?}");
    let until_at = got.paused_until.expect("the pause's end");
    let left = until_at.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_millis(1000) && left <= Duration::from_secs(2),
        "{left:?}"
    );

    // Every worker of that account learns it from its stream; the other account goes on.
    for (i, w) in workers.iter().enumerate() {
        let name = ["acme-etl", "acme-sync", "beta"][i % 3];
        if name == "beta" {
            assert!(
                w.try_acquire(name).await.is_ok(),
                "another account is not paused"
            );
            continue;
        }
        until(Duration::from_secs(5), "the pause reaches a worker", || async {
            matches!(w.try_acquire(name).await, Err(ClientError::Paused { until }) if until == until_at)
        })
        .await;
    }
    let heard = reported.elapsed();
    eprintln!("a 429 report (sent, answered) reached every worker of the account within {heard:?}");
    let pushed = stream.message().await.unwrap().unwrap();
    assert_eq!(pushed.state(), WatchState::Present);
    assert!(pushed.headers.is_empty(), "a pause re-sends no secret");
    assert_eq!(pushed.paused_until.as_ref().map(time_of), Some(until_at));
    // Workers without the crate see it in GetCredentialHeaders.
    assert_eq!(paused_until(&mut worker, "acme-etl").await, Some(until_at));
    assert_eq!(paused_until(&mut worker, "beta").await, None);
    // A second report cannot shorten it.
    let again = workers[1]
        .report("acme-sync", 429, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(again.paused_until, Some(until_at));

    // A worker that will not wait that long hears until when, at once.
    let impatient = credvault_client::Client::builder(server.url())
        .token(&server.tokens.worker)
        .acquire_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    // (Had it waited for the pause to end, it would have got the headers.)
    match impatient.acquire("acme-sync").await {
        Err(ClientError::Paused { until }) => assert_eq!(until, until_at),
        other => panic!("expected Paused, got {other:?}"),
    }

    // acquire() waits it out, and the pause ends on time.
    let waited = Instant::now();
    let h = workers[0].acquire("acme-etl").await.unwrap();
    assert!(
        SystemTime::now() >= until_at,
        "acquire returned before the pause ended"
    );
    assert_eq!(h.name(), "acme-etl");
    eprintln!(
        "acquire() waited {:?} for the pause to end",
        waited.elapsed()
    );
    assert_eq!(paused_until(&mut worker, "acme-sync").await, None);
    assert!(workers[1].try_acquire("acme-sync").await.is_ok());

    // The reports are in the audit trail: who reported what.
    let events = admin
        .list_audit_events(api::ListAuditEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let reports: Vec<_> = events
        .iter()
        .filter(|e| e.method == "ReportProviderResponse")
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[0].caller, "worker");
    assert_eq!(reports[0].credential_name, "acme-etl");
    assert_eq!(reports[0].reason, "reported 429 (retry-after 2s): paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_401_reports_make_one_verification_that_every_watcher_hears() {
    let fake = FakeFleetio::start(vec![(
        "key-revoked-01",
        Behaviour::Accounts {
            tokens: vec!["acct".into()],
            bare: false,
        },
    )])
    .await;
    let server = TestServer::start_with(Options {
        fleetio_base_url: fake.base_url.clone(),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "acme", "key-revoked-01", "acct").await;
    let workers: Vec<_> = (0..20)
        .map(|_| worker_client(&server.url(), &server.tokens.worker))
        .collect();
    for w in &workers {
        w.headers("acme").await.unwrap();
    }
    until(Duration::from_secs(10), "every stream up", || async {
        workers.iter().all(credvault_client::Client::is_connected)
    })
    .await;

    // Fleetio revokes the key; all twenty workers get a 401 and report it at once.
    fake.revoke("key-revoked-01");
    let reported = Instant::now();
    let reports =
        futures_util::future::join_all(workers.iter().map(|w| w.report("acme", 401, None))).await;
    let actions: Vec<_> = reports.into_iter().map(|r| r.unwrap().action).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == Action::Verifying).count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == Action::AlreadyVerified)
            .count(),
        19
    );
    // Every worker learns which value Fleetio rejects, and stops.
    for w in &workers {
        until(Duration::from_secs(5), "the rejection reaches a worker", || async {
            matches!(w.headers("acme").await, Err(ClientError::Rejected(m)) if m.contains("api_key"))
        })
        .await;
    }
    eprintln!(
        "twenty 401 reports -> every worker refuses the key after {:?}",
        reported.elapsed()
    );
    assert_eq!(
        fake.checks_of("key-revoked-01"),
        1,
        "one verification, not twenty"
    );
    let stored = admin
        .get_credential(by_name_get("acme"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(
        stored.last_verification.unwrap().status(),
        api::VerificationStatus::ApiKeyRejected
    );
    // More reports within the interval call no one.
    let more = workers[3].report("acme", 403, None).await.unwrap();
    assert_eq!(more.action, Action::AlreadyVerified);
    assert_eq!(fake.checks_of("key-revoked-01"), 1);

    // An admin rotates the key: served again; a late 401 about the old version is stale.
    fake.set(
        "key-rotated-02",
        Behaviour::Accounts {
            tokens: vec!["acct".into()],
            bare: false,
        },
    );
    admin
        .update_credential(rotation("acme", "key-rotated-02", "acct"))
        .await
        .unwrap();
    for w in &workers {
        until(
            Duration::from_secs(5),
            "the rotation reaches a worker",
            || async { w.headers("acme").await.is_ok_and(|h| h.version() == 2) },
        )
        .await;
    }
    let mut raw = server.client_with(Some(&server.tokens.worker)).await;
    let stale = raw
        .report_provider_response(api::ReportProviderResponseRequest {
            version: 1,
            ..report("acme", 401, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.action(), ReportAction::Stale, "{}", stale.message);
    assert_eq!(fake.checks_of("key-rotated-02"), 0);

    // Verified VALID a moment ago, then revoked: a 401 about the new version is
    // news, and verified at once, though the last one was within the interval.
    let verified = admin
        .verify_credential(verify_by_name("acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verified.verification.unwrap().status(),
        api::VerificationStatus::Valid
    );
    fake.revoke("key-rotated-02");
    let fresh = workers[0].report("acme", 401, None).await.unwrap();
    assert_eq!(fresh.action, Action::Verifying, "{fresh:?}");
    for w in &workers {
        until(
            Duration::from_secs(5),
            "the new rejection reaches a worker",
            || async { matches!(w.headers("acme").await, Err(ClientError::Rejected(_))) },
        )
        .await;
    }
    assert_eq!(
        fake.checks_of("key-rotated-02"),
        2,
        "the Verify call and one for the reports"
    );
}

#[tokio::test]
async fn bad_reports_and_leases_get_clear_errors_and_change_nothing() {
    let token = mint_token().as_str().to_owned();
    let entry = callers_entry("acme-worker", &token, &[Permission::HeadersRead])
        + "credentials = [\"acme-*\"]\n";
    let server = TestServer::start_with(Options {
        extra_callers: entry,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let mut scoped = server.client_with(Some(&token)).await;
    let mut writer = server.client_with(Some(&server.tokens.writer)).await;
    let before = create(&mut admin, "beta", "key-00000001", "acct").await;

    let code = |r: Result<tonic::Response<api::ReportProviderResponseResponse>, tonic::Status>| {
        r.map(|_| ()).unwrap_err()
    };
    let s = code(
        worker
            .report_provider_response(report("nope", 429, 5))
            .await,
    );
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let s = code(
        scoped
            .report_provider_response(report("beta", 429, 5))
            .await,
    );
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = code(
        writer
            .report_provider_response(report("beta", 429, 5))
            .await,
    );
    assert_eq!(
        s.code(),
        Code::PermissionDenied,
        "headers.read is needed: {s:?}"
    );
    let s = code(
        worker
            .report_provider_response(report("beta", 429, 9_999_999))
            .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("retry_after_seconds"),
        "{}",
        s.message()
    );
    for status in [0, 99, 600, 70_000] {
        let s = code(
            worker
                .report_provider_response(report("beta", status, 0))
                .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument, "{status}: {s:?}");
    }
    let s = code(
        worker
            .report_provider_response(api::ReportProviderResponseRequest {
                r#ref: None,
                ..report("beta", 429, 5)
            })
            .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    // A success, a 404 and a 500 are counted and change nothing.
    for status in [200, 404, 500] {
        let r = worker
            .report_provider_response(report("beta", status, 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.action(), ReportAction::Ignored, "{status}");
        assert_eq!(r.paused_until, None);
    }
    // A 429 with an hour and more is capped at an hour (on another credential).
    create(&mut admin, "acme-1", "key-00000002", "acct-other").await;
    let r = scoped
        .report_provider_response(report("acme-1", 429, 86_400))
        .await
        .unwrap()
        .into_inner();
    let left = time_of(&r.paused_until.unwrap())
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3590),
        "{left:?}"
    );

    // Leases: a count of 0 or too many, a budget too large.
    let s = worker
        .acquire_request_tokens(lease("beta", 0))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let s = worker
        .acquire_request_tokens(lease("beta", 10_001))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let s = scoped
        .acquire_request_tokens(lease("beta", 1))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = admin
        .update_credential(budget("beta", 2_000_000))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    // Without a budget, what is asked for is granted.
    let g = worker
        .acquire_request_tokens(lease("beta", 7))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((g.granted, g.request_budget_per_minute), (7, 0));

    // Nothing about beta changed: same version, no verification, not paused.
    let after = admin
        .get_credential(by_name_get("beta"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(after.version, before.version);
    assert_eq!(after.last_verification, None);
    assert_eq!(paused_until(&mut worker, "beta").await, None);

    // A budget is set without a new version, and shows in listings and headers.
    let set = admin
        .update_credential(budget("beta", 120))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(
        (set.version, set.request_budget_per_minute),
        (before.version, 120)
    );
    let h = worker
        .get_credential_headers(headers_by_name("beta"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.request_budget_per_minute, 120);
    // 120 a minute: 120 in this 60 s window, at most 12 per lease.
    let g = worker
        .acquire_request_tokens(lease("beta", 50))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.granted, 12);
    assert!(g.valid_for_ms > 0 && g.valid_for_ms <= 60_000);
}

/// What twenty workers got from the fake Fleetio in one run.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    limited: u64,
}

/// Twenty client-crate workers call the rate-limited fake for `run`: each
/// acquires, sends, and reports a 429. The fake allows `per_second` requests a second.
async fn twenty_workers(server: &TestServer, base_url: &str, run: Duration) -> Tally {
    let ok = std::sync::Arc::new(AtomicU64::new(0));
    let limited = std::sync::Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let stop = Instant::now() + run;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = worker_client(&server.url(), &server.tokens.worker);
            let (ok, limited, http) = (ok.clone(), limited.clone(), http.clone());
            let url = format!("{base_url}/v1/vehicles");
            tokio::spawn(async move {
                while Instant::now() < stop {
                    let headers = match client.acquire("acme").await {
                        Ok(h) => h,
                        Err(e) => panic!("acquire: {e}"),
                    };
                    if Instant::now() >= stop {
                        break;
                    }
                    let answer = http
                        .get(&url)
                        .headers(headers.to_header_map())
                        .send()
                        .await
                        .unwrap();
                    match answer.status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            let wait = credvault_client::retry_after(answer.headers());
                            client.report("acme", 429, wait).await.unwrap();
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("the fake answered {other}"),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Tally {
        ok: ok.load(Ordering::Relaxed),
        limited: limited.load(Ordering::Relaxed),
    }
}

/// A fake Fleetio that allows `per_second` requests in each clock second (as
/// Fleetio's window resets at the minute), then answers 429 with Retry-After.
async fn rate_limited_fleetio(per_second: u64) -> FakeApi {
    let window = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    FakeApi::start(move |r| {
        if r.header("authorization") != "Token key-budget-01" || r.header("account-token") != "acct"
        {
            return Answer::status(401);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let mut w = window.lock().unwrap();
        if w.0 != now.as_secs() {
            *w = (now.as_secs(), 0);
        }
        w.1 += 1;
        if w.1 > per_second {
            Answer::status(429)
                .with_header("retry-after", "1")
                .with_body(r#"{"error":"Too many requests detected from your account token"}"#)
        } else {
            Answer::status(200).with_body(r#"{"records":[]}"#)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_workers_under_a_shared_budget_stay_under_the_limit() {
    let fake = rate_limited_fleetio(10).await;
    let server = TestServer::start_with(Options {
        fleetio_base_url: fake.base_url.clone(),
        feedback: credvault::feedback::FeedbackSettings {
            budget_window: Duration::from_secs(1),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "acme", "key-budget-01", "acct").await;
    let run = Duration::from_secs(3);

    // Budget off: the workers find the limit by hitting it (reports still pause them).
    let off = twenty_workers(&server, &fake.base_url, run).await;
    // Budget on: 600 a minute is the fake's 10 a second.
    admin.update_credential(budget("acme", 600)).await.unwrap();
    // Past the pause the last run may have left.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let on = twenty_workers(&server, &fake.base_url, run).await;
    eprintln!(
        "20 workers, 3 s, fake limit 10/s: budget off {} ok, {} 429s; budget on {} ok, {} 429s",
        off.ok, off.limited, on.ok, on.limited
    );
    assert!(
        off.limited > 0,
        "without a budget the limit is hit: {off:?}"
    );
    assert!(
        on.limited * 4 <= off.limited,
        "the budget keeps the 429s down: {on:?} against {off:?}"
    );
    // No more than the limit allows, and most of it used (3 windows of 10, plus edges).
    assert!(on.ok <= 40, "{on:?}");
    assert!(on.ok >= 15, "{on:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_pauses_and_budgets_through_postgresql() {
    let a = TestServer::start_with(Options {
        store: TestStore::Postgres,
        ..Options::default()
    })
    .await;
    let b = TestServer::start_with(Options {
        database_url: a.database_url.clone(),
        key_b64: a.key_b64.clone(),
        ..Options::default()
    })
    .await;
    let mut admin = a.admin().await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    admin.update_credential(budget("acme", 600)).await.unwrap();

    // The budget: 600 a minute, leases of at most 60, taken through both replicas.
    let mut on_a = a.client_with(Some(&a.tokens.worker)).await;
    let mut on_b = b.client_with(Some(&b.tokens.worker)).await;
    let mut granted = 0;
    let mut window_ms = None;
    for i in 0..30 {
        let client = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let g = client
            .acquire_request_tokens(lease("acme", 100))
            .await
            .unwrap()
            .into_inner();
        assert!(g.granted <= 60, "{g:?}");
        // Count one window only: stop if one ended meanwhile.
        let ends = Instant::now() + Duration::from_millis(u64::from(g.valid_for_ms));
        if g.granted == 0 {
            break;
        }
        if window_ms.is_some_and(|w: Instant| ends > w + Duration::from_millis(50)) {
            granted = 0;
        }
        window_ms = Some(ends);
        granted += g.granted;
    }
    assert_eq!(granted, 600, "both replicas together grant the budget once");

    // A pause reported on A reaches a worker watching on B.
    let watcher = worker_client(&b.url(), &b.tokens.worker);
    watcher.headers("acme").await.unwrap();
    until(Duration::from_secs(10), "the stream up", || async {
        watcher.is_connected()
    })
    .await;
    let r = on_a
        .report_provider_response(report("acme", 429, 30))
        .await
        .unwrap()
        .into_inner();
    let until_at = time_of(&r.paused_until.unwrap());
    let took = until(Duration::from_secs(5), "the pause reaches B's watcher", || async {
        matches!(watcher.try_acquire("acme").await, Err(ClientError::Paused { until }) if until == until_at)
    })
    .await;
    eprintln!("a pause reported on replica A reached a watcher on B after {took:?}");
    assert_eq!(paused_until(&mut on_b, "acme").await, Some(until_at));
    let g = on_b
        .acquire_request_tokens(lease("acme", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.granted, 0);
    assert_eq!(g.paused_until.as_ref().map(time_of), Some(until_at));

    // A replica started later reads the pause from the database.
    let c = TestServer::start_with(Options {
        database_url: a.database_url.clone(),
        key_b64: a.key_b64.clone(),
        ..Options::default()
    })
    .await;
    let mut on_c = c.client_with(Some(&c.tokens.worker)).await;
    let start = Instant::now();
    loop {
        let g = on_c
            .acquire_request_tokens(lease("acme", 1))
            .await
            .unwrap()
            .into_inner();
        if g.paused_until.as_ref().map(time_of) == Some(until_at) {
            assert_eq!(g.granted, 0);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "replica C never knew the pause"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_acknowledged_pause_survives_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    let mut worker = process.client(&setup.tokens.worker).await;
    let r = worker
        .report_provider_response(report("acme", 429, 120))
        .await
        .unwrap()
        .into_inner();
    let until_at = time_of(&r.paused_until.unwrap());

    process.child.kill().await.unwrap();
    let process = Process::serve_on(process.addr, &setup.args, &[], dir.path())
        .await
        .unwrap();
    let mut worker = process.client(&setup.tokens.worker).await;
    assert_eq!(paused_until(&mut worker, "acme").await, Some(until_at));
    let watcher = worker_client(&process.url(), &setup.tokens.worker);
    match watcher.try_acquire("acme").await {
        Err(ClientError::Paused { until }) => assert_eq!(until, until_at),
        other => panic!("expected the pause after the restart, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_key_rotation_a_pause_still_reaches_every_watcher() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let key = || {
        credvault::crypto::MasterKey::generate_base64()
            .as_str()
            .to_owned()
    };
    let (k1, k2) = (key(), key());
    std::fs::write(&setup.key, format!("k1 = {k1}\n")).unwrap();
    let process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "acme-etl", "key-0000000a", "acct-acme").await;
    create(&mut admin, "acme-sync", "key-0000000b", "acct-acme").await;
    let watcher = worker_client(&process.url(), &setup.tokens.worker);
    watcher.headers("acme-sync").await.unwrap();
    until(Duration::from_secs(10), "the stream up", || async {
        watcher.is_connected()
    })
    .await;

    // Account fingerprints are keyed from the active master key: k2 from the reload
    // on. Nothing else is written meanwhile (a rewrap would let the hub re-read).
    std::fs::write(&setup.key, format!("k1 = {k1}\nk2 = {k2}\n")).unwrap();
    process.wait_for_log(&["keyring reloaded"]).await;
    let reporter = worker_client(&process.url(), &setup.tokens.worker);
    let got = reporter
        .report("acme-etl", 429, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let until_at = got.paused_until.unwrap();
    until(Duration::from_secs(5), "the pause reaches the watcher", || async {
        matches!(watcher.try_acquire("acme-sync").await, Err(ClientError::Paused { until }) if until == until_at)
    })
    .await;
}
