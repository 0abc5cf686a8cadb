//! The workers' client crate (`credvault_client`) against the real server: headers
//! held in memory and pushed on every change, one fetch however many ask, a
//! kill -9 and restart, bounded staleness, and what is never served again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api;
use credvault::auth::{callers_entry, mint_token, Permission};
use credvault_client::Error as ClientError;

fn authorization(h: &credvault_client::CredentialHeaders) -> String {
    h.iter()
        .find(|(n, _)| n.as_str() == "authorization")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

async fn get_headers_events(admin: &mut Client, caller: &str) -> usize {
    admin
        .list_audit_events(api::ListAuditEventsRequest {
            caller: caller.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .iter()
        .filter(|e| e.method == "GetCredentialHeaders")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_hold_headers_and_follow_every_change() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    let clients: Vec<_> = (0..50)
        .map(|_| worker_client(&server.url(), &server.tokens.worker))
        .collect();
    for c in &clients {
        let h = c.headers("acme").await.unwrap();
        assert_eq!(
            (h.version(), authorization(&h).as_str()),
            (1, "Token key-00000001")
        );
        assert!(!format!("{h:?}").contains("key-00000001"), "Debug redacts");
    }
    until(Duration::from_secs(10), "every stream up", || async {
        clients.iter().all(credvault_client::Client::is_connected)
    })
    .await;

    // Acknowledged: from then on, every client's memory gets the new headers.
    admin
        .update_credential(rotation("acme", "key-00000002", "acct"))
        .await
        .unwrap();
    let acked = Instant::now();
    let mut lags = Vec::new();
    for c in &clients {
        until(
            Duration::from_secs(10),
            "the rotation reaches a client",
            || async { c.headers("acme").await.unwrap().version() == 2 },
        )
        .await;
        lags.push(acked.elapsed());
    }
    let all = acked.elapsed();
    eprintln!(
        "update acknowledged -> all 50 clients hold version 2 after {all:?} (first {:?})",
        lags[0]
    );
    for c in &clients {
        let h = c.headers("acme").await.unwrap();
        assert_eq!(authorization(&h), "Token key-00000002");
        let stats = c.stats();
        assert_eq!(stats.fetches, 1, "one fetch, then memory: {stats:?}");
    }

    // Deleted: every client says so, and never serves the old headers again.
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name("acme".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let deleted = Instant::now();
    for c in &clients {
        until(
            Duration::from_secs(10),
            "the deletion reaches a client",
            || async { matches!(c.headers("acme").await, Err(ClientError::Deleted(_))) },
        )
        .await;
    }
    eprintln!(
        "delete acknowledged -> all 50 clients refuse after {:?}",
        deleted.elapsed()
    );
    // Created again under the name: served again, as the new credential it is.
    let again = create(&mut admin, "acme", "key-00000003", "acct").await;
    for c in &clients {
        until(
            Duration::from_secs(10),
            "the new credential reaches a client",
            || async {
                c.headers("acme")
                    .await
                    .is_ok_and(|h| h.credential_id() == again.id)
            },
        )
        .await;
    }
}

#[tokio::test]
async fn concurrent_first_asks_share_one_fetch_and_later_asks_are_memory_reads() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    let client = worker_client(&server.url(), &server.tokens.worker);
    let asks = (0..20).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.headers("acme").await })
    });
    for ask in futures_util::future::join_all(asks).await {
        assert_eq!(ask.unwrap().unwrap().version(), 1);
    }
    until(Duration::from_secs(10), "the stream up", || async {
        client.is_connected()
    })
    .await;
    for _ in 0..1000 {
        client.headers("acme").await.unwrap();
    }
    assert_eq!(client.stats().fetches, 1, "{:?}", client.stats());
    // The server agrees: one GetCredentialHeaders, and the watch sent no headers
    // again for the version fetched.
    assert_eq!(get_headers_events(&mut admin, "worker").await, 1);
    let watch_reads = admin
        .list_audit_events(api::ListAuditEventsRequest {
            caller: "worker".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.method == "WatchCredentialHeaders" && !e.secret_fingerprint.is_empty())
        .count();
    assert_eq!(watch_reads, 0);

    // Not found is an answer too: it is remembered (and watched), not asked again.
    for _ in 0..5 {
        assert!(matches!(
            client.headers("nope").await,
            Err(ClientError::NotFound(_))
        ));
    }
    assert_eq!(client.stats().fetches, 2);
    create(&mut admin, "nope", "key-00000002", "acct").await;
    until(
        Duration::from_secs(10),
        "a created credential is pushed",
        || async { client.headers("nope").await.is_ok() },
    )
    .await;
    assert_eq!(client.stats().fetches, 2);
}

/// Starts the real binary of `setup` on `addr`.
async fn serve_on(addr: SocketAddr, setup: &Setup, dir: &std::path::Path) -> Process {
    Process::serve_on(addr, &setup.args, &[], dir)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_and_a_restart_clients_converge_on_what_changed_meanwhile() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut process = serve_on(addr, &setup, dir.path()).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    let url = format!("http://{addr}");
    let clients: Vec<_> = (0..5)
        .map(|_| worker_client(&url, &setup.tokens.worker))
        .collect();
    for c in &clients {
        c.headers("acme").await.unwrap();
    }
    until(Duration::from_secs(10), "every stream up", || async {
        clients.iter().all(credvault_client::Client::is_connected)
    })
    .await;

    process.child.kill().await.unwrap();
    until(
        Duration::from_secs(10),
        "every client sees the stream gone",
        || async { clients.iter().all(|c| !c.is_connected()) },
    )
    .await;
    // Meanwhile the last good headers are served.
    for c in &clients {
        assert_eq!(c.headers("acme").await.unwrap().version(), 1);
    }
    // An update while they are away (the store through a server elsewhere).
    let mut elsewhere = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = elsewhere.client(&setup.tokens.admin).await;
    admin
        .update_credential(rotation("acme", "key-00000002", "acct"))
        .await
        .unwrap();
    elsewhere.terminate().await;

    // Back where they look: they reconnect, resume, and hold the update.
    let mut process = serve_on(addr, &setup, dir.path()).await;
    let back = until(
        Duration::from_secs(15),
        "every client converges",
        || async {
            let mut all = true;
            for c in &clients {
                all &= c.headers("acme").await.unwrap().version() == 2;
            }
            all
        },
    )
    .await;
    eprintln!("clients converged {back:?} after the restart");
    for c in &clients {
        assert_eq!(
            authorization(&c.headers("acme").await.unwrap()),
            "Token key-00000002"
        );
        assert!(
            c.stats().streams >= 2 && c.stats().fetches == 1,
            "{:?}",
            c.stats()
        );
    }
    process.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_headers_are_served_up_to_the_bound_then_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut process = serve_on(addr, &setup, dir.path()).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    let max = Duration::from_millis(1500);
    let client = credvault_client::Client::builder(format!("http://{addr}"))
        .token(&setup.tokens.worker)
        .max_staleness(max)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    client.headers("acme").await.unwrap();
    until(Duration::from_secs(10), "the stream up", || async {
        client.is_connected()
    })
    .await;
    // While connected, age does not matter.
    tokio::time::sleep(max + Duration::from_millis(200)).await;
    client.headers("acme").await.unwrap();

    process.child.kill().await.unwrap();
    until(Duration::from_secs(10), "the stream gone", || async {
        !client.is_connected()
    })
    .await;
    let lost = Instant::now();
    client.headers("acme").await.unwrap();
    let refused = until(Duration::from_secs(10), "stale headers refused", || async {
        matches!(client.headers("acme").await, Err(ClientError::Stale { .. }))
    })
    .await;
    let served_for = lost.elapsed();
    eprintln!("stale headers served for {served_for:?} (bound {max:?}), then refused");
    assert!(
        served_for >= max - Duration::from_millis(100),
        "{served_for:?}"
    );
    assert!(refused <= max + Duration::from_secs(1));
    let err = client.headers("acme").await.unwrap_err();
    assert!(err.to_string().contains("maximum staleness"), "{err}");

    // Back: served again once the stream is.
    let mut process = serve_on(addr, &setup, dir.path()).await;
    until(Duration::from_secs(10), "served again", || async {
        client.headers("acme").await.is_ok()
    })
    .await;
    process.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_no_longer_permitted_credential_is_never_served_again() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let token = mint_token().as_str().to_owned();
    let base = setup.tokens.callers_toml();
    let scoped = |patterns: &str| {
        format!(
            "{base}\n{}credentials = [{patterns}]\n",
            callers_entry("scoped", &token, &[Permission::HeadersRead])
        )
    };
    std::fs::write(&setup.callers, scoped("\"a\", \"b\", \"c\"")).unwrap();
    let mut process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    for name in ["a", "b", "c"] {
        create(&mut admin, name, "key-00000001", "acct").await;
    }
    let client = worker_client(&process.url(), &token);
    for name in ["a", "b", "c"] {
        client.headers(name).await.unwrap();
    }
    until(Duration::from_secs(10), "the stream up", || async {
        client.is_connected()
    })
    .await;

    // "c" deleted, "b" out of scope.
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name("c".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "the deletion reaches the client",
        || async { matches!(client.headers("c").await, Err(ClientError::Deleted(_))) },
    )
    .await;
    std::fs::write(&setup.callers, scoped("\"a\", \"c\"")).unwrap();
    until(
        Duration::from_secs(10),
        "the narrowed scope reaches the client",
        || async {
            matches!(
                client.headers("b").await,
                Err(ClientError::PermissionDenied(_))
            )
        },
    )
    .await;
    until(
        Duration::from_secs(10),
        "the in-scope credential served again",
        || async { client.headers("a").await.is_ok() },
    )
    .await;

    // The server gone: "a" is served (stale, within the bound); "b" and "c" never.
    process.child.kill().await.unwrap();
    until(Duration::from_secs(10), "the stream gone", || async {
        !client.is_connected()
    })
    .await;
    for _ in 0..50 {
        assert!(client.headers("a").await.is_ok());
        assert!(matches!(
            client.headers("b").await,
            Err(ClientError::PermissionDenied(_))
        ));
        assert!(matches!(
            client.headers("c").await,
            Err(ClientError::Deleted(_))
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The example worker's binary, built with the client crate's examples.
fn example_worker() -> std::path::PathBuf {
    // target/<profile>/deps/integration-... -> target/<profile>/examples/fleetio_worker
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = examples.join("fleetio_worker");
    if !path.exists() {
        // `cargo test` in the workspace builds it; a lone `-p credvault` run does not.
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "credvault-client",
                "--example",
                "fleetio_worker",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    path
}

#[tokio::test]
async fn the_example_worker_lists_vehicles_with_pushed_headers() {
    // The second call is rate limited for a second.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let fleetio = FakeApi::start(move |r| {
        if r.path == "/api/v1/vehicles"
            && r.header("authorization") == "Token key-00000001"
            && r.header("account-token") == "acct"
        {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                return Answer::status(429).with_header("retry-after", "1");
            }
            Answer::status(200)
                .with_body(r#"[{"id": 1, "name": "Truck 7"}, {"id": 2, "name": "Van 3"}]"#)
        } else {
            Answer::status(401)
        }
    })
    .await;
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "fleetio-acme", "key-00000001", "acct").await;
    let out = tokio::process::Command::new(example_worker())
        .args([
            "--vault",
            &server.url(),
            "--credential",
            "fleetio-acme",
            "--base-url",
            &format!("{}/api", fleetio.base_url),
            "--calls",
            "3",
            "--every",
            "100ms",
        ])
        .env("CREDVAULT_TOKEN", &server.tokens.worker)
        .output()
        .await
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("-> 200 (2 vehicles) with fleetio-acme version 1")
            .count(),
        2,
        "{text}"
    );
    assert!(text.contains("-> 429"), "{text}");
    assert!(
        text.contains("reported 429: the fleetio account of credential"),
        "the worker reported the 429 and the vault paused the account: {text}"
    );
    assert!(text.contains("fetched 1 time(s)"), "{text}");
    assert!(!text.contains("key-00000001"), "no secret printed: {text}");
    let seen = fleetio.seen();
    assert_eq!(seen.len(), 3);
    // The report is in the audit trail (queued events are written moments later).
    let reported = |events: Vec<api::AuditEvent>| {
        events
            .into_iter()
            .filter(|e| e.method == "ReportProviderResponse")
            .map(|e| e.reason)
            .collect::<Vec<_>>()
    };
    let mut reasons = Vec::new();
    for _ in 0..100 {
        let page = admin
            .list_audit_events(api::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        reasons = reported(page.events);
        if !reasons.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reasons, ["reported 429 (retry-after 1s): paused"]);
}

#[tokio::test]
async fn a_bare_host_port_works_and_headers_are_read_by_name() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "acme", "key-00000001", "acct").await;
    let client = credvault_client::Client::builder(server.addr.to_string())
        .token(&server.tokens.worker)
        .build()
        .unwrap();
    let headers = client.headers("acme").await.unwrap();
    assert_eq!(headers.get("AUTHORIZATION"), Some("Token key-00000001"));
    assert_eq!(headers.get("account-token"), Some("acct"));
    assert_eq!(headers.get("x-api-version"), None);
    let refused = credvault_client::Client::builder("unix:///run/credvault.sock").build();
    assert!(matches!(
        refused,
        Err(credvault_client::Error::InvalidArgument(_))
    ));
    server.stop().await.unwrap();
}
