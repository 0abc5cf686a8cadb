//! PostgreSQL beyond the shared API suite: replicas on one database, a database
//! restart under traffic, schema migrations, and copying a sled store over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::postgres::PgCluster;
use crate::common::*;
use credvault::api;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

async fn replica(database_url: &str, key: &str) -> TestServer {
    TestServer::start_with(Options {
        database_url: Some(database_url.to_owned()),
        key_b64: key.to_owned(),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn two_replicas_on_one_database_behave_as_one_vault() {
    let a = TestServer::start_on(TestStore::Postgres).await;
    let url = a.database_url.clone().unwrap();
    let b = replica(&url, &a.key_b64).await;
    // Each replica has its own callers file; each client is an admin of its replica.
    let (mut on_a, mut on_b) = (a.admin().await, b.admin().await);

    create(&mut on_a, "shared", "key-00000001", "acct").await;
    assert_eq!(
        authorization(&mut on_b, "shared").await,
        "Token key-00000001"
    );

    // A rotation through one replica is what the very next read on the other sees.
    for round in 0..20 {
        let (writer, reader) = if round % 2 == 0 {
            (&mut on_a, &mut on_b)
        } else {
            (&mut on_b, &mut on_a)
        };
        let api_key = format!("key-round-{round:04}");
        writer
            .update_credential(rotation("shared", &api_key, "acct"))
            .await
            .unwrap();
        let h = reader
            .get_credential_headers(headers_by_name("shared"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.headers[0].value,
            format!("Token {api_key}"),
            "round {round}"
        );
        assert_eq!(h.version, round as u64 + 2);
    }

    // Check-and-set across replicas: of two updates expecting the same version, one wins.
    let version = on_a
        .get_credential(by_name_get("shared"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
        .version;
    let cas = |mut c: Client, description: &'static str| async move {
        c.update_credential(api::UpdateCredentialRequest {
            r#ref: Some(api::update_credential_request::Ref::Name("shared".into())),
            description: Some(description.into()),
            expected_version: Some(version),
            ..Default::default()
        })
        .await
    };
    let (x, y) = tokio::join!(cas(on_a.clone(), "from a"), cas(on_b.clone(), "from b"));
    let codes = [x.map(drop), y.map(drop)].map(|r| r.map_or_else(|s| s.code(), |()| Code::Ok));
    assert!(
        codes.contains(&Code::Ok) && codes.contains(&Code::Aborted),
        "{codes:?}"
    );

    // One name, created on both at once: one wins, the other is told it exists.
    let make = |mut c: Client| async move {
        c.create_credential(api::CreateCredentialRequest {
            name: "raced".into(),
            secret: Some(fleetio("key-00000002", "acct", "")),
            ..Default::default()
        })
        .await
    };
    let (x, y) = tokio::join!(make(on_a.clone()), make(on_b.clone()));
    let codes = [x.map(drop), y.map(drop)].map(|r| r.map_or_else(|s| s.code(), |()| Code::Ok));
    assert!(
        codes.contains(&Code::Ok) && codes.contains(&Code::AlreadyExists),
        "{codes:?}"
    );

    // Concurrent writers on both replicas: every create lands exactly once.
    let mut tasks = Vec::new();
    for (r, client) in [on_a.clone(), on_b.clone()].into_iter().enumerate() {
        for w in 0..4 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    create(&mut c, &format!("r{r}-w{w}-{i}"), "key-00000003", "acct").await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let listed = on_b
        .list_credentials(api::ListCredentialsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert_eq!(listed.len(), 2 + 2 * 4 * 15);
    let mut ids: Vec<_> = listed.iter().map(|c| c.id.clone()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted, "one time order across replicas");
    ids.dedup();
    assert_eq!(ids.len(), listed.len());
    drop((on_a, on_b));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

async fn wait_for_health(server: &TestServer, want: ServingStatus) -> Duration {
    let start = std::time::Instant::now();
    while server.health("credvault.v1.CredentialVaultService").await != want {
        assert!(start.elapsed() < Duration::from_secs(20), "never {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_database_restart_under_traffic_turns_health_and_back_without_a_crash() {
    // A cluster of its own, since this test stops it.
    let cluster = PgCluster::start();
    let url = cluster.new_database().await;
    let server = TestServer::start_with(Options {
        database_url: Some(url),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "steady", "key-00000001", "acct").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, unavailable, other) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let traffic = {
        let (mut c, stop) = (admin.clone(), stop.clone());
        let (ok, unavailable, other) = (ok.clone(), unavailable.clone(), other.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get_credential_headers(headers_by_name("steady")).await {
                    Ok(h) => {
                        assert_eq!(h.into_inner().headers[0].value, "Token key-00000001");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) if s.code() == Code::Unavailable => {
                        assert!(!s.message().contains("postgres://"), "{s:?}");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => {
                        eprintln!("unexpected: {s:?}");
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0);

    cluster.stop();
    let down = wait_for_health(&server, ServingStatus::NotServing).await;
    // The store's own health follows within its next probe (once a second).
    let start = std::time::Instant::now();
    while server.health("credvault.store").await != ServingStatus::NotServing {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "credvault.store stayed SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Liveness stays SERVING: the process is fine, only its database is away.
    assert_eq!(server.health("").await, ServingStatus::Serving);
    let write = admin
        .create_credential(api::CreateCredentialRequest {
            name: "during-outage".into(),
            secret: Some(fleetio("key-00000002", "acct", "")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.restart();
    let up = wait_for_health(&server, ServingStatus::Serving).await;
    let after = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(ok.load(Ordering::Relaxed) > after, "reads work again");
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "the outage was seen"
    );
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "only UNAVAILABLE during the outage"
    );
    create(&mut admin, "after-outage", "key-00000003", "acct").await;
    eprintln!(
        "NOT_SERVING {down:?} after the database stopped, SERVING {up:?} after it started; {} ok, {} unavailable",
        ok.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed)
    );
    drop(admin);
    server.stop().await.unwrap();
    cluster.stop();
}

/// Every audit event the server lists (all pages), filtered by credential name.
async fn audit_of(client: &mut Client, name: &str) -> Vec<api::AuditEvent> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(api::ListAuditEventsRequest {
                credential_name: name.into(),
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn every_replica_lists_one_audit_trail_and_a_restart_loses_nothing() {
    let a = TestServer::start_on(TestStore::Postgres).await;
    let url = a.database_url.clone().unwrap();
    let b = replica(&url, &a.key_b64).await;
    let mut admin_a = a.admin().await;
    create(&mut admin_a, "audited", "key-00000001", "acct").await;
    let mut worker_a = a.client_with(Some(&a.tokens.worker)).await;
    let mut worker_b = b.client_with(Some(&b.tokens.worker)).await;
    for _ in 0..3 {
        worker_a
            .get_credential_headers(headers_by_name("audited"))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        worker_b
            .get_credential_headers(headers_by_name("audited"))
            .await
            .unwrap();
    }
    // B lists what was read through A, and the other way round: one trail.
    let reads = |events: &[api::AuditEvent]| {
        events
            .iter()
            .filter(|e| e.method == "GetCredentialHeaders" && e.code == "OK")
            .count()
    };
    let mut admin_b = b.admin().await;
    let seen_by_b = audit_of(&mut admin_b, "audited").await;
    assert_eq!(reads(&seen_by_b), 5, "{seen_by_b:#?}");
    assert!(seen_by_b.iter().any(|e| e.method == "CreateCredential"));
    let fingerprints: std::collections::HashSet<_> = seen_by_b
        .iter()
        .filter(|e| e.method == "GetCredentialHeaders")
        .map(|e| e.secret_fingerprint.clone())
        .collect();
    assert_eq!(
        fingerprints.len(),
        1,
        "one secret, one fingerprint across replicas"
    );
    assert_eq!(reads(&audit_of(&mut admin_a, "audited").await), 5);
    // No file on the replica's disk: the database is the trail.
    assert!(!a.data_dir.join("audit.jsonl").exists());
    // A replica goes away and comes back: nothing is lost.
    drop((admin_a, worker_a));
    let (stopped, _tmp, _dir, key) = a.stop_keep().await;
    stopped.unwrap();
    let a = replica(&url, &key).await;
    let mut admin_a = a.admin().await;
    assert_eq!(reads(&audit_of(&mut admin_a, "audited").await), 5);
    drop((admin_a, admin_b, worker_b));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn after_sigkill_every_answered_read_is_in_the_database() {
    let url = PgCluster::shared().new_database().await;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(["--store".to_owned(), "postgres".to_owned()]);
    let process = Process::serve(
        &args,
        &[("CREDVAULT_DATABASE_URL", url.as_str())],
        dir.path(),
    )
    .await
    .unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "read-often", "key-00000001", "acct").await;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut worker = process.client(&setup.tokens.worker).await;
        let answered = Arc::clone(&answered);
        workers.push(tokio::spawn(async move {
            while worker
                .get_credential_headers(headers_by_name("read-often"))
                .await
                .is_ok()
            {
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    process.signal("KILL");
    for w in workers {
        w.await.unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);
    let client = crate::common::postgres::connect(&url).await;
    let events: i64 = client
        .query_one(
            r#"SELECT count(*) FROM credvault_audit
               WHERE event LIKE '%"method":"GetCredentialHeaders"%' AND event LIKE '%"code":"OK"%'"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("{answered} reads answered, {events} events in the database");
    assert!(answered > 50, "only {answered} reads answered");
    assert!(
        events as usize >= answered,
        "{answered} answered, {events} audited"
    );
}

#[tokio::test]
async fn old_audit_events_are_pruned_from_the_database() {
    let server = TestServer::start_with(Options {
        store: TestStore::Postgres,
        audit_retention: Duration::from_secs(2),
        // Events go once a digest after them is past the cutoff too.
        audit_digests: credvault::trail::DigestPolicy {
            events: 1000,
            interval: Duration::from_secs(1),
        },
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "short-lived", "key-00000001", "acct").await;
    for _ in 0..3 {
        admin
            .get_credential_headers(headers_by_name("short-lived"))
            .await
            .unwrap();
    }
    assert!(audit_of(&mut admin, "short-lived").await.len() >= 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !audit_of(&mut admin, "short-lived").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "old events were never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New events are kept.
    admin
        .get_credential_headers(headers_by_name("short-lived"))
        .await
        .unwrap();
    assert_eq!(audit_of(&mut admin, "short-lived").await.len(), 1);
    let key = admin
        .list_audit_events(api::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_public_key;
    drop(admin);
    let url = server.database_url.clone().unwrap();
    server.stop().await.unwrap();
    // Pruning keeps each chain's last digest before the cutoff: what is left
    // begins with a signed checkpoint and verifies.
    let out = std::process::Command::new(binary())
        .args(["audit", "verify", "--database", "--database-url", &url])
        .args(["--public-key", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("verdict: intact") && text.contains("closing digest"),
        "{text}"
    );
}

#[tokio::test]
async fn a_listing_reads_the_last_uses_of_a_page_in_one_query() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let url = server.database_url.clone().unwrap();
    let mut admin = server.admin().await;
    create_numbered(&mut admin, 60, |i| format!("used-{i:02}")).await;
    for i in 0..60 {
        admin
            .get_credential_headers(headers_by_name(&format!("used-{i:02}")))
            .await
            .unwrap();
    }
    // The last uses reach the database (they are written every 10 s, and at shutdown).
    let (result, tmp, dir, key) = server.stop_keep().await;
    result.unwrap();
    let server = TestServer::start_with(Options {
        data_dir: Some(dir),
        key_b64: key,
        database_url: Some(url.clone()),
        ..Options::default()
    })
    .await;
    let _tmp = tmp;
    let mut admin = server.admin().await;
    // Statements the server's sessions committed (one transaction each); backends
    // report them within a second.
    let client = crate::common::postgres::connect(&url).await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let committed = || async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let n: i64 = client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = committed().await;
    let start = std::time::Instant::now();
    let page = admin
        .list_credentials(api::ListCredentialsRequest {
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed = committed().await - before;
    // The background's own statements in as long again (a loaded machine lists slowly).
    let took = start.elapsed();
    let idle = committed().await;
    tokio::time::sleep(took).await;
    let quiet = committed().await - idle;
    assert_eq!(page.credentials.len(), 50);
    assert!(page.credentials.iter().all(|c| c.last_used_by == "admin"));
    println!("a page of 50: {listed} statements; {quiet} in as long without a listing");
    // The listing (records, then their last uses: not one query per row, which
    // would be 50 more) plus the background's own probes and audit inserts.
    assert!(
        listed <= quiet + 15,
        "{listed} statements for a page of 50 ({quiet} when idle)"
    );
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_scoped_caller_hears_unavailable_not_denied_while_the_store_is_down() {
    // A cluster of its own, since this test stops it.
    let cluster = PgCluster::start();
    let token = credvault::auth::mint_token().as_str().to_owned();
    let server = TestServer::start_with(Options {
        database_url: Some(cluster.new_database().await),
        extra_callers: credvault::auth::callers_entry(
            "acme-reader",
            &token,
            &[credvault::auth::Permission::CredentialsRead],
        ) + "credentials = [\"fleetio-acme-*\"]\n",
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let c = create(&mut admin, "fleetio-acme-1", "key-00000001", "acct").await;
    let mut scoped = server.client_with(Some(&token)).await;
    scoped.get_credential(by_id_get(&c.id)).await.unwrap();
    cluster.stop();
    // By id, the scope check must read the record: the store's failure is the answer.
    let status = scoped.get_credential(by_id_get(&c.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop((admin, scoped));
    let _ = server.stop().await;
}

#[tokio::test]
async fn a_database_that_stops_taking_writes_takes_the_vault_out_of_readiness_and_back() {
    let url = PgCluster::shared().new_database().await;
    let server = TestServer::start_with(Options {
        database_url: Some(url.clone()),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "fleetio-acme", "key-00000001", "acct").await;
    wait_for_health(&server, ServingStatus::Serving).await;
    // The database turns read-only (as a failed-over replica or a full disk would):
    // its sessions are ended so that the pool's new ones take the setting.
    let db = url.rsplit('/').next().unwrap().to_owned();
    // Changed from the maintenance database, which stays writable.
    let maintenance = format!("{}/postgres", url.rsplit_once('/').unwrap().0);
    let sessions =
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'");
    crate::common::postgres::execute(
        &maintenance,
        &format!("ALTER DATABASE {db} SET default_transaction_read_only = on; {sessions}"),
    )
    .await;
    let out = wait_for_health(&server, ServingStatus::NotServing).await;
    assert_eq!(server.health("").await, ServingStatus::Serving);
    assert_eq!(
        server.health("credvault.store").await,
        ServingStatus::NotServing
    );
    let write = admin
        .update_credential(rotation("fleetio-acme", "key-00000002", "acct"))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");
    // Metadata reads go on; secret reads fail closed, since their audit events
    // cannot be written to the read-only database either.
    admin
        .get_credential(by_name_get("fleetio-acme"))
        .await
        .unwrap();
    let read = admin
        .get_credential_headers(headers_by_name("fleetio-acme"))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    crate::common::postgres::execute(
        &maintenance,
        &format!("ALTER DATABASE {db} RESET default_transaction_read_only; {sessions}"),
    )
    .await;
    let back = wait_for_health(&server, ServingStatus::Serving).await;
    eprintln!("NOT_SERVING {out:?} after the database turned read-only, SERVING {back:?} after it took writes again");
    admin
        .update_credential(rotation("fleetio-acme", "key-00000003", "acct"))
        .await
        .unwrap();
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn migrate_store_copies_a_sled_store_to_postgres_and_back() {
    let tmp = tempfile::TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let mut process = Process::serve(&setup.args, &[], tmp.path()).await.unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    create_numbered(&mut client, 25, |i| format!("m{i:02}")).await;
    client
        .update_credential(rotation("m03", "key-rotated3", "acct"))
        .await
        .unwrap();
    process.terminate().await;

    let url = PgCluster::shared().new_database().await;
    let data = tmp.path().join("data");
    let migrate = run_cli(&["migrate"], &[("CREDVAULT_DATABASE_URL", &url)]).await;
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(String::from_utf8_lossy(&migrate.stdout)
        .contains("applied schema migrations [1, 2, 3, 4, 5, 6, 7, 8]"));
    let again = run_cli(&["migrate"], &[("CREDVAULT_DATABASE_URL", &url)]).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));

    let from = format!("sled:{}", data.display());
    let out = run_cli(
        &["migrate-store", "--from", &from, "--to", "postgres"],
        &[("CREDVAULT_DATABASE_URL", &url)],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("copied 25 credentials"), "{stdout}");
    assert!(
        stdout.contains("verified the copy byte for byte"),
        "{stdout}"
    );
    // A second copy into the same database is refused; it holds data now.
    let twice = run_cli(
        &[
            "migrate-store",
            "--from",
            &from,
            "--to",
            &format!("postgres:{url}"),
        ],
        &[],
    )
    .await;
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already holds data"));

    // The same binary and key serve the copy from PostgreSQL.
    let mut args = setup.args.clone();
    args.extend(["--store".into(), "postgres".into()]);
    let mut process = Process::serve(&args, &[("CREDVAULT_DATABASE_URL", &url)], tmp.path())
        .await
        .unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    for i in 0..25 {
        let want = if i == 3 {
            "key-rotated3".to_owned()
        } else {
            format!("key-{i:08}")
        };
        assert_eq!(
            authorization(&mut client, &format!("m{i:02}")).await,
            format!("Token {want}")
        );
    }
    let logs = process.stderr();
    assert!(!logs.contains(&url), "the database URL is never logged");
    process.terminate().await;

    // And back into a new sled directory.
    let back = tmp.path().join("back");
    let out = run_cli(
        &[
            "migrate-store",
            "--from",
            &format!("postgres:{url}"),
            "--to",
            &format!("sled:{}", back.display()),
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = TestServer::reopen(back, std::fs::read_to_string(&setup.key).unwrap()).await;
    let h = server
        .client_with(Some(&server.tokens.admin))
        .await
        .get_credential_headers(headers_by_name("m03"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.headers[0].value, "Token key-rotated3");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_database_sees_names_and_metadata_but_never_a_secret() {
    let server = TestServer::start_on(TestStore::Postgres).await;
    let mut admin = server.admin().await;
    create(
        &mut admin,
        "dba-visible",
        "key-SECRETVALUE-0001",
        "acct-SECRETTOKEN",
    )
    .await;
    let url = server.database_url.clone().unwrap();
    let client = crate::common::postgres::connect(&url).await;
    let mut everything: Vec<u8> = Vec::new();
    for (query, text_columns, byte_columns) in [
        ("SELECT id, name, record FROM credvault_credentials", 2, 1),
        ("SELECT key, value FROM credvault_meta", 1, 1),
        ("SELECT id, value FROM credvault_usage", 1, 1),
        ("SELECT key_id FROM credvault_seals", 1, 0),
    ] {
        for row in client.query(query, &[]).await.unwrap() {
            for i in 0..text_columns {
                everything.extend_from_slice(row.get::<_, String>(i).as_bytes());
            }
            for i in text_columns..text_columns + byte_columns {
                everything.extend_from_slice(&row.get::<_, Vec<u8>>(i));
            }
        }
    }
    let text = String::from_utf8_lossy(&everything);
    assert!(text.contains("dba-visible"), "names are in the clear");
    for secret in ["SECRETVALUE", "SECRETTOKEN", server.key_b64.as_str()] {
        assert!(
            !contains(&everything, secret.as_bytes()),
            "{secret} in the database"
        );
    }
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tls_to_the_database_is_verified_against_the_given_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let cluster = PgCluster::start_tls(&cert.pem(), &key.serialize_pem());
    let tmp = tempfile::TempDir::new().unwrap();
    let ca_file = tmp.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // The test helper connects without TLS (sslmode=prefer falls back); credvault requires it.
    let plain = cluster.new_database().await;
    let url = format!(
        "{}?sslmode=require&application_name=credvault-tls-test",
        plain.replace("127.0.0.1", "localhost")
    );

    let server = TestServer::start_with(Options {
        database_url: Some(url.clone()),
        database_ca_file: Some(ca_file),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "over-tls", "key-00000001", "acct").await;
    let client = crate::common::postgres::connect(&plain).await;
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE a.application_name = 'credvault-tls-test'",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "credvault is connected");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "every connection uses TLS"
    );
    drop(admin);
    server.stop().await.unwrap();

    // Without that CA the certificate is not trusted: startup fails, saying why.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = credvault::config::PostgresSettings {
        url: url.into(),
        pool: credvault::store::PgSettings::default(),
        startup_wait: Duration::ZERO,
    };
    let err = credvault::server::open_store(
        &credvault::config::StoreConfig::Postgres(settings),
        &credvault::config::parse_keyring(&credvault::crypto::MasterKey::generate_base64(), None)
            .unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    drop(listener);
    eprintln!("without the CA: {err}");
    assert!(err.contains("certificate"), "{err}");
    cluster.stop();
}

#[tokio::test]
async fn a_rewrap_never_retires_a_key_another_replica_still_wraps_with() {
    let (k1, k2) = (
        credvault::crypto::MasterKey::generate_base64()
            .as_str()
            .to_owned(),
        credvault::crypto::MasterKey::generate_base64()
            .as_str()
            .to_owned(),
    );
    // B has not picked up the new key yet: it still wraps with k1. A wraps with k2.
    let b = TestServer::start_with(Options {
        store: TestStore::Postgres,
        key_b64: format!("k1 = {k1}"),
        ..Options::default()
    })
    .await;
    // B is up (its key check for k1 written) before A brings k2: a replica started later
    // with a keyring that lacks a key the data already needs would rightly be refused.
    let mut on_b = b.admin().await;
    create(&mut on_b, "via-b", "key-00000002", "acct").await;
    let url = b.database_url.clone().unwrap();
    let a = replica(&url, &format!("k1 = {k1}\nk2 = {k2}")).await;
    let mut on_a = a.admin().await;
    create(&mut on_a, "via-a", "key-00000001", "acct").await;

    let report = rewrap_all(&mut on_a, 10).await;
    let last = report.last().unwrap();
    assert_eq!(last.active_key_id, "k2");
    assert_eq!(last.key_id_credentials.get("k2"), Some(&2));
    assert!(
        last.retired_key_ids.is_empty(),
        "replica B still wraps with k1, so k1 stays: {last:?}"
    );
    // B keeps writing with k1, and everything still opens on both.
    create(&mut on_b, "via-b-later", "key-00000003", "acct").await;
    assert_eq!(
        authorization(&mut on_a, "via-b-later").await,
        "Token key-00000003"
    );

    // B stops (and withdraws its announcement): the next rewrap moves its record and retires k1.
    drop(on_b);
    b.stop().await.unwrap();
    let last = rewrap_all(&mut on_a, 10).await.pop().unwrap();
    assert_eq!(last.rewrapped, 1);
    assert_eq!(last.retired_key_ids, vec!["k1".to_owned()]);
    drop(on_a);
    a.stop().await.unwrap();
}
