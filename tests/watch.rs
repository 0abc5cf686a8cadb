//! WatchCredentialHeaders, through the generated client and raw HTTP/2: the first
//! state and every change, resume, audit, scopes, limits, a callers reload and
//! shutdown that end streams, a slow reader, and replicas on one database.

use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api::{self, WatchState};
use credvault::auth::{callers_entry, mint_token, Permission};
use prost::Message;
use tonic::{Code, Streaming};

type Watch = Streaming<api::WatchCredentialHeadersResponse>;

fn by_name(name: &str) -> api::WatchedCredential {
    api::WatchedCredential {
        r#ref: Some(api::watched_credential::Ref::Name(name.into())),
        ..Default::default()
    }
}

fn by_id(id: &str) -> api::WatchedCredential {
    api::WatchedCredential {
        r#ref: Some(api::watched_credential::Ref::Id(id.into())),
        ..Default::default()
    }
}

async fn watch(client: &mut Client, credentials: Vec<api::WatchedCredential>) -> Watch {
    client
        .watch_credential_headers(api::WatchCredentialHeadersRequest { credentials })
        .await
        .unwrap()
        .into_inner()
}

/// The next message, within 10 s.
async fn next(stream: &mut Watch) -> api::WatchCredentialHeadersResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch message within 10 s")
        .expect("the stream goes on")
        .expect("a message, not the end")
}

/// Nothing more arrives within `wait`.
async fn quiet(stream: &mut Watch, wait: Duration) {
    if let Ok(m) = tokio::time::timeout(wait, stream.message()).await {
        panic!("expected nothing more, got {m:?}");
    }
}

/// How the stream ends, within 10 s.
async fn ended(stream: &mut Watch) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends within 10 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

fn authorization_of(m: &api::WatchCredentialHeadersResponse) -> String {
    pairs(&m.headers)
        .into_iter()
        .find(|(n, _)| n == "Authorization")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

async fn watch_reads(admin: &mut Client) -> Vec<api::AuditEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_audit_events(api::ListAuditEventsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(
            page.events
                .into_iter()
                .filter(|e| e.method == "WatchCredentialHeaders" && !e.credential_id.is_empty()),
        );
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn the_first_state_then_every_change_each_delivery_audited() {
    // Any other key is unknown to the fake: 401, a rejected key.
    let fake = FakeFleetio::start(vec![(
        "key-valid-0001",
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
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let made = create(&mut admin, "acme", "key-valid-0001", "acct").await;

    let mut stream = watch(
        &mut worker,
        vec![by_name("acme"), by_name("later"), by_id(&made.id)],
    )
    .await;
    let mut first: Vec<_> = Vec::new();
    for _ in 0..3 {
        first.push(next(&mut stream).await);
    }
    first.sort_by_key(|m| m.index);
    assert_eq!(first[0].state(), WatchState::Present);
    assert_eq!(
        (first[0].credential_id.as_str(), first[0].version),
        (made.id.as_str(), 1)
    );
    assert_eq!(authorization_of(&first[0]), "Token key-valid-0001");
    assert_eq!(first[0].base_url, fake.base_url);
    assert_eq!(first[1].state(), WatchState::NotFound);
    assert_eq!(first[2].state(), WatchState::Present);
    assert_eq!(first[2].name, "acme", "a watched id names its credential");
    assert_eq!(
        first.iter().filter(|m| m.synced).count(),
        1,
        "one message completes the first report"
    );

    // A rotation: new headers for both watches of it, at a higher version.
    admin
        .update_credential(rotation("acme", "key-revoked-02", "acct"))
        .await
        .unwrap();
    for _ in 0..2 {
        let m = next(&mut stream).await;
        assert!(m.index == 0 || m.index == 2, "{m:?}");
        assert_eq!((m.state(), m.version), (WatchState::Present, 2));
        assert_eq!(authorization_of(&m), "Token key-revoked-02");
    }

    // The provider now rejects the key: the verdict alone, without headers.
    let verdict = admin
        .verify_credential(verify_by_name("acme"))
        .await
        .unwrap()
        .into_inner()
        .verification
        .unwrap();
    assert_eq!(verdict.status(), api::VerificationStatus::ApiKeyRejected);
    for _ in 0..2 {
        let m = next(&mut stream).await;
        assert_eq!((m.state(), m.version), (WatchState::Present, 2));
        assert!(m.headers.is_empty(), "no headers for a verdict: {m:?}");
        assert_eq!(
            m.last_verification.unwrap().status(),
            api::VerificationStatus::ApiKeyRejected
        );
    }
    // A description change is a new version: headers again (the client's are older).
    admin
        .update_credential(api::UpdateCredentialRequest {
            r#ref: Some(api::update_credential_request::Ref::Name("acme".into())),
            description: Some("described".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(next(&mut stream).await.version, 3);
    }

    // A credential created under a watched name is reported.
    let later = create(&mut admin, "later", "key-valid-0001", "acct").await;
    let m = next(&mut stream).await;
    assert_eq!(
        (m.index, m.state(), m.credential_id.as_str()),
        (1, WatchState::Present, later.id.as_str())
    );

    // Deleted: both watches of it say so, and the id's watch says no more.
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name("acme".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let m = next(&mut stream).await;
        assert_eq!(
            (m.state(), m.credential_id.as_str()),
            (WatchState::Deleted, made.id.as_str())
        );
        assert!(m.headers.is_empty());
    }
    // Created again under the name: a new id, at version 1; the id's watch is silent.
    let again = create(&mut admin, "acme", "key-valid-0001", "acct").await;
    let m = next(&mut stream).await;
    assert_eq!(
        (m.index, m.credential_id.as_str(), m.version),
        (0, again.id.as_str(), 1)
    );
    assert_ne!(again.id, made.id);
    quiet(&mut stream, Duration::from_millis(300)).await;

    // Resume: the version held is not sent again; a version behind it is; a
    // credential deleted while the client was away is reported deleted.
    let brief = create(&mut admin, "brief", "key-valid-0001", "acct").await;
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name("brief".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut resumed = watch(
        &mut worker,
        vec![
            api::WatchedCredential {
                known_version: 1,
                known_credential_id: again.id.clone(),
                ..by_name("acme")
            },
            api::WatchedCredential {
                known_version: 1,
                known_credential_id: "cred_00000000000000000000000000000000".into(),
                ..by_name("later")
            },
            api::WatchedCredential {
                known_version: 1,
                known_credential_id: brief.id.clone(),
                ..by_name("brief")
            },
        ],
    )
    .await;
    let mut back = [
        next(&mut resumed).await,
        next(&mut resumed).await,
        next(&mut resumed).await,
    ];
    back.sort_by_key(|m| m.index);
    assert_eq!(
        (back[2].state(), back[2].credential_id.as_str()),
        (WatchState::Deleted, brief.id.as_str()),
        "{:?}",
        back[2]
    );
    assert!(back[0].headers.is_empty() && back[0].state() == WatchState::Present);
    assert_eq!(
        authorization_of(&back[1]),
        "Token key-valid-0001",
        "headers held for another id are not these"
    );

    // Every message that carried headers is one audit event with a fingerprint.
    drop((stream, resumed));
    let reads = watch_reads(&mut admin).await;
    // 2 first + 2 rotated + 2 described + later + acme again + later on resume.
    assert_eq!(reads.len(), 9, "{reads:#?}");
    assert!(reads
        .iter()
        .all(|e| e.caller == "worker" && e.code == "OK" && !e.secret_fingerprint.is_empty()));
    // The reads are noted as last uses too.
    let shown = admin
        .get_credential(by_name_get("later"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(shown.last_used_by, "worker");
}

#[tokio::test]
async fn bad_watches_are_refused_and_limits_hold() {
    let server = TestServer::start_with(Options {
        watch: credvault::watch::WatchSettings {
            max_credentials: 3,
            max_streams_per_caller: 2,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    create(&mut admin, "a", "key-00000001", "acct").await;
    let worker_for_refusals = worker.clone();
    let refused = |credentials: Vec<api::WatchedCredential>| {
        let mut worker = worker_for_refusals.clone();
        async move {
            worker
                .watch_credential_headers(api::WatchCredentialHeadersRequest { credentials })
                .await
                .unwrap_err()
        }
    };
    for (credentials, want) in [
        (vec![], "credentials is empty"),
        (
            vec![by_name("a"), by_name("b"), by_name("c"), by_name("d")],
            "at most 3 credentials",
        ),
        (vec![by_name("a"), by_name("a")], "repeats a credential"),
        (
            vec![api::WatchedCredential::default()],
            "credentials[0]: set id or name",
        ),
        (vec![by_name("Not A Name")], "credentials[0]:"),
        (vec![by_id("nope")], "credentials[0]:"),
        (
            vec![api::WatchedCredential {
                known_version: 3,
                ..by_name("a")
            }],
            "needs known_credential_id",
        ),
    ] {
        let status = refused(credentials).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(want), "{}", status.message());
    }
    // headers.read is needed.
    let mut reader = server.client_with(Some(&server.tokens.reader)).await;
    let denied = reader
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![by_name("a")],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Two streams per caller; a third waits for one to close.
    let one = watch(&mut worker, vec![by_name("a")]).await;
    let _two = watch(&mut worker, vec![by_name("a")]).await;
    let third = refused(vec![by_name("a")]).await;
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("--watch-max-streams-per-caller"));
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match worker
            .watch_credential_headers(api::WatchCredentialHeadersRequest {
                credentials: vec![by_name("a")],
            })
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("a closed stream frees its place: {s:?}"),
        }
    }
}

#[tokio::test]
async fn a_scoped_caller_watches_only_its_scope() {
    let token = mint_token().as_str().to_owned();
    let entry = callers_entry("acme-worker", &token, &[Permission::HeadersRead])
        + "credentials = [\"fleetio-acme-*\"]\n";
    let server = TestServer::start_with(Options {
        extra_callers: entry,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mine = create(&mut admin, "fleetio-acme-1", "key-00000001", "acct").await;
    let other = create(&mut admin, "fleetio-beta", "key-00000002", "acct").await;
    let mut scoped = server.client_with(Some(&token)).await;
    let mut stream = watch(
        &mut scoped,
        vec![
            by_name("fleetio-acme-1"),
            by_name("fleetio-beta"),
            by_id(&other.id),
            by_id("cred_00000000000000000000000000000000"),
            by_name("fleetio-acme-9"),
        ],
    )
    .await;
    let mut seen: Vec<_> = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut stream).await);
    }
    seen.sort_by_key(|m| m.index);
    let states: Vec<_> = seen.iter().map(|m| m.state()).collect();
    assert_eq!(
        states,
        [
            WatchState::Present,
            WatchState::PermissionDenied,
            WatchState::PermissionDenied,
            // An unknown id and a hidden one answer alike.
            WatchState::PermissionDenied,
            WatchState::NotFound,
        ]
    );
    assert_eq!(seen[0].credential_id, mine.id);
    assert!(seen[1..4]
        .iter()
        .all(|m| m.headers.is_empty() && m.credential_id.is_empty()));
    // Changes outside the scope are never told.
    admin
        .update_credential(rotation("fleetio-beta", "key-00000003", "acct"))
        .await
        .unwrap();
    quiet(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_callers_reload_ends_the_streams_of_a_removed_or_narrowed_caller() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let t = &setup.tokens;
    let scoped_token = mint_token().as_str().to_owned();
    let scoped = |patterns: &str| {
        callers_entry("scoped", &scoped_token, &[Permission::HeadersRead])
            + &format!("credentials = [{patterns}]\n")
    };
    let base = t.callers_toml();
    std::fs::write(
        &setup.callers,
        format!("{base}\n{}", scoped("\"a\", \"b\"")),
    )
    .unwrap();
    let mut process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&t.admin).await;
    create(&mut admin, "a", "key-00000001", "acct").await;
    create(&mut admin, "b", "key-00000002", "acct").await;
    let mut worker = process.client(&t.worker).await;
    let mut scoped_client = process.client(&scoped_token).await;
    let mut workers = watch(&mut worker, vec![by_name("a")]).await;
    let mut scoped_stream = watch(&mut scoped_client, vec![by_name("a"), by_name("b")]).await;
    next(&mut workers).await;
    next(&mut scoped_stream).await;
    next(&mut scoped_stream).await;

    // The scope loses "b": the scoped caller's stream ends, PERMISSION_DENIED.
    let start = Instant::now();
    std::fs::write(&setup.callers, format!("{base}\n{}", scoped("\"a\""))).unwrap();
    let status = ended(&mut scoped_stream).await;
    let narrowed = start.elapsed();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"b\""), "{}", status.message());
    // A new stream gets "a" and is told "b" is denied.
    let mut again = watch(&mut scoped_client, vec![by_name("a"), by_name("b")]).await;
    let mut states = [next(&mut again).await, next(&mut again).await];
    states.sort_by_key(|m| m.index);
    assert_eq!(
        (states[0].state(), states[1].state()),
        (WatchState::Present, WatchState::PermissionDenied)
    );

    // The worker is removed: its stream ends, UNAUTHENTICATED; the others go on.
    let start = Instant::now();
    let without_worker: String = base
        .split("[[caller]]")
        .filter(|e| !e.contains("name = \"worker\""))
        .filter(|e| !e.trim().is_empty())
        .map(|e| format!("[[caller]]{e}"))
        .collect();
    std::fs::write(
        &setup.callers,
        format!("{without_worker}\n{}", scoped("\"a\"")),
    )
    .unwrap();
    let status = ended(&mut workers).await;
    let removed = start.elapsed();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    eprintln!("stream ended {narrowed:?} after the scope narrowed, {removed:?} after the caller was removed");
    // The file is polled twice a second: well within a second, with room for a busy machine.
    assert!(narrowed < Duration::from_secs(3) && removed < Duration::from_secs(3));
    admin
        .update_credential(rotation("a", "key-00000009", "acct"))
        .await
        .unwrap();
    assert_eq!(next(&mut again).await.version, 2);
    process.terminate().await;
}

#[tokio::test]
async fn sigterm_ends_watch_streams_with_unavailable_at_once() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut process = Process::serve(&setup.args, &[("CREDVAULT_DRAIN_DELAY", "2s")], dir.path())
        .await
        .unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "a", "key-00000001", "acct").await;
    let mut worker = process.client(&setup.tokens.worker).await;
    let mut stream = watch(&mut worker, vec![by_name("a")]).await;
    next(&mut stream).await;
    let start = Instant::now();
    process.signal("TERM");
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"));
    // Ended when the shutdown began, not after the drain delay.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // New watches are refused while draining (clients go elsewhere), other calls are served.
    let refused = worker
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![by_name("a")],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    worker
        .get_credential_headers(headers_by_name("a"))
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(15), process.child.wait())
        .await
        .expect("the server exits: no watch stream holds the drain")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A gRPC message framed for a request body.
fn grpc_message(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0];
    out.extend((body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

#[tokio::test]
async fn a_reader_that_stalls_gets_the_latest_state_and_costs_no_memory() {
    use crate::common::h2raw::*;
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "busy", "key-00000000", "acct").await;

    // A raw client that opens a watch and then never opens its stream window.
    let mut raw = RawH2::tcp(process.addr).await;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let mut settings = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(0u32.to_be_bytes());
    let auth = format!("Bearer {}", setup.tokens.worker);
    let request = api::WatchCredentialHeadersRequest {
        credentials: vec![by_name("busy")],
    };
    assert!(
        raw.send(
            &[
                PREFACE,
                &frame(SETTINGS, 0, 0, &settings),
                &grpc_headers(
                    1,
                    "/credvault.v1.CredentialVaultService/WatchCredentialHeaders",
                    &[("authorization", &auth)],
                    false
                ),
                &frame(DATA, END_STREAM, 1, &grpc_message(&request)),
            ]
            .concat()
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = process.rss_mb();
    // Many changes while it reads nothing; writers are not held up by it.
    const UPDATES: usize = 2000;
    let start = Instant::now();
    for i in 1..=UPDATES {
        admin
            .update_credential(rotation("busy", &format!("key-{i:08}"), "acct"))
            .await
            .unwrap();
    }
    let writes = start.elapsed();
    let after = process.rss_mb();

    // Now it reads: a handful of messages, the last with the latest headers.
    assert!(raw.send(&window_update(0, 1 << 30)).await);
    assert!(raw.send(&window_update(1, 1 << 30)).await);
    let mut body = Vec::new();
    while let Some(f) = raw.next_frame(Duration::from_secs(1)).await {
        if f.kind == DATA && f.stream == 1 {
            body.extend(&f.payload);
        }
        if f.kind == PING && f.flags & ACK == 0 {
            raw.send(&frame(PING, ACK, 0, &f.payload)).await;
        }
    }
    let mut messages = Vec::new();
    let mut at = 0;
    while at + 5 <= body.len() {
        let len = u32::from_be_bytes(body[at + 1..at + 5].try_into().unwrap()) as usize;
        messages.push(
            api::WatchCredentialHeadersResponse::decode(&body[at + 5..at + 5 + len]).unwrap(),
        );
        at += 5 + len;
    }
    let last = messages.last().expect("messages once the window opens");
    eprintln!(
        "{UPDATES} updates in {writes:?} while the reader stalled: {} messages then, RSS {before:.1} -> {after:.1} MB",
        messages.len()
    );
    assert_eq!(last.version, UPDATES as u64 + 1);
    assert_eq!(
        authorization_of(last),
        format!("Token key-{UPDATES:08}"),
        "the latest state wins"
    );
    assert!(
        messages.len() <= 4,
        "at most a few buffered messages, not one per change: {}",
        messages.len()
    );
    assert!(
        after - before < 32.0,
        "RSS grew {before:.1} -> {after:.1} MB"
    );
    process.terminate().await;
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_watchers_on_another() {
    let a = TestServer::start_with(Options {
        store: TestStore::Postgres,
        watch: credvault::watch::WatchSettings {
            resync_interval: Duration::from_secs(1),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let url = a.database_url.clone().unwrap();
    let b = TestServer::start_with(Options {
        database_url: Some(url.clone()),
        key_b64: a.key_b64.clone(),
        watch: credvault::watch::WatchSettings {
            resync_interval: Duration::from_secs(1),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let mut on_a = a.admin().await;
    create(&mut on_a, "shared", "key-00000000", "acct").await;
    let mut worker_b = b.client_with(Some(&b.tokens.worker)).await;
    let mut stream = watch(&mut worker_b, vec![by_name("shared"), by_name("new")]).await;
    next(&mut stream).await;
    next(&mut stream).await;

    // Through A, heard on B: rotations, a creation and a deletion.
    let mut lags = Vec::new();
    for i in 1..=5 {
        let start = Instant::now();
        on_a.update_credential(rotation("shared", &format!("key-{i:08}"), "acct"))
            .await
            .unwrap();
        let m = next(&mut stream).await;
        lags.push(start.elapsed());
        assert_eq!(
            (m.version, authorization_of(&m)),
            (i + 1, format!("Token key-{i:08}"))
        );
    }
    create(&mut on_a, "new", "key-00000000", "acct").await;
    assert_eq!(next(&mut stream).await.state(), WatchState::Present);
    on_a.delete_credential(api::DeleteCredentialRequest {
        force: false,
        r#ref: Some(api::delete_credential_request::Ref::Name("new".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(next(&mut stream).await.state(), WatchState::Deleted);
    eprintln!("replica A's write reached a watcher on B after {lags:?}");

    // A write no notification announced (the trigger off) is caught by the resync.
    let client = crate::common::postgres::connect(&url).await;
    client
        .batch_execute(
            "ALTER TABLE credvault_credentials DISABLE TRIGGER credvault_credentials_changed",
        )
        .await
        .unwrap();
    let start = Instant::now();
    on_a.update_credential(rotation("shared", "key-silent-01", "acct"))
        .await
        .unwrap();
    let m = next(&mut stream).await;
    eprintln!(
        "an unannounced write reached B's watcher after {:?} (resync every 1 s)",
        start.elapsed()
    );
    assert_eq!(authorization_of(&m), "Token key-silent-01");
    client
        .batch_execute(
            "ALTER TABLE credvault_credentials ENABLE TRIGGER credvault_credentials_changed",
        )
        .await
        .unwrap();
    drop(stream);
    let _ = b.stop().await;
    let _ = a.stop().await;
}
