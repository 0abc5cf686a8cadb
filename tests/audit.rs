//! The audit trail: one event per RPC, allowed or denied, read back with
//! ListAuditEvents; secret-read fingerprints; last use; failing closed.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::common::*;
use credvault::api;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn events(client: &mut Client, req: api::ListAuditEventsRequest) -> Vec<api::AuditEvent> {
    let mut out = Vec::new();
    let mut req = req;
    loop {
        let page = client
            .list_audit_events(req.clone())
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn every_call_is_audited_with_fingerprints_of_secret_reads() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    let mut anonymous = server.client_with(None).await;
    let c = create(&mut admin, "audited", "key-AUDIT-0000001", "acct-AUDIT").await;
    worker
        .get_credential_headers(headers_by_name("audited"))
        .await
        .unwrap();
    worker
        .get_credential_headers(headers_by_id(&c.id))
        .await
        .unwrap();
    let denied = worker
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let _ = anonymous
        .get_credential_headers(headers_by_name("audited"))
        .await
        .unwrap_err();
    admin
        .update_credential(rotation("audited", "key-AUDIT-0000002", "acct-AUDIT"))
        .await
        .unwrap();
    worker
        .get_credential_headers(headers_by_name("audited"))
        .await
        .unwrap();
    let _ = admin
        .get_credential(by_name_get("missing"))
        .await
        .unwrap_err();

    // Paging through a live trail: each page read is itself audited (and seen by later pages).
    let all: Vec<_> = events(
        &mut admin,
        api::ListAuditEventsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .filter(|e| e.method != "ListAuditEvents")
    .collect();
    let summary: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|e| (e.method.as_str(), e.caller.as_str(), e.code.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("CreateCredential", "admin", "OK"),
            ("GetCredentialHeaders", "worker", "OK"),
            ("GetCredentialHeaders", "worker", "OK"),
            ("ListCredentials", "worker", "PERMISSION_DENIED"),
            ("GetCredentialHeaders", "anonymous", "UNAUTHENTICATED"),
            ("UpdateCredential", "admin", "OK"),
            ("GetCredentialHeaders", "worker", "OK"),
            ("GetCredential", "admin", "NOT_FOUND"),
        ]
    );
    for e in &all {
        assert!(
            e.time.is_some() && e.peer.starts_with("127.0.0.1:"),
            "{e:?}"
        );
    }
    let reads: Vec<_> = all
        .iter()
        .filter(|e| e.method == "GetCredentialHeaders" && e.code == "OK")
        .collect();
    assert!(reads
        .iter()
        .all(|e| e.credential_id == c.id && e.credential_name == "audited"));
    assert_eq!(
        reads[0].secret_fingerprint, reads[1].secret_fingerprint,
        "same secret, same fingerprint"
    );
    assert_ne!(
        reads[1].secret_fingerprint, reads[2].secret_fingerprint,
        "rotation shows"
    );
    assert_eq!(reads[0].secret_fingerprint.len(), 32);
    assert!(all
        .iter()
        .filter(|e| e.method != "GetCredentialHeaders" || e.code != "OK")
        .all(|e| e.secret_fingerprint.is_empty()));

    // Filters: credential, caller, time range.
    let by_caller = events(
        &mut admin,
        api::ListAuditEventsRequest {
            caller: "worker".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_caller.len(), 4);
    let by_cred = events(
        &mut admin,
        api::ListAuditEventsRequest {
            credential_id: c.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_cred.len(), 5, "create, three reads, update");
    let by_name = events(
        &mut admin,
        api::ListAuditEventsRequest {
            credential_name: "missing".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_name.len(), 1);
    let future =
        prost_types::Timestamp::from(SystemTime::now() + std::time::Duration::from_secs(3600));
    let none = events(
        &mut admin,
        api::ListAuditEventsRequest {
            start_time: Some(future),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let past = events(
        &mut admin,
        api::ListAuditEventsRequest {
            end_time: Some(future),
            caller: "admin".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(past.len() >= 3);

    // Reading the trail needs audit.read.
    let mut reader = server.client_with(Some(&server.tokens.reader)).await;
    let status = reader
        .list_audit_events(api::ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The file holds JSON lines and no secret.
    let log = std::fs::read_to_string(server.data_dir.join("audit.jsonl")).unwrap();
    assert!(log.lines().count() >= all.len());
    assert!(log
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    for secret in [
        "AUDIT-000",
        "acct-AUDIT",
        &server.tokens.admin,
        &server.tokens.worker,
    ] {
        assert!(!log.contains(secret), "audit log leaks {secret}");
    }
}

#[tokio::test]
async fn last_use_is_shown_and_survives_a_restart() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    create(&mut admin, "used", "key-00000001", "acct").await;
    let fresh = admin
        .get_credential(by_name_get("used"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert!(fresh.last_used_time.is_none() && fresh.last_used_by.is_empty());
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    worker
        .get_credential_headers(headers_by_name("used"))
        .await
        .unwrap();
    let used = admin
        .get_credential(by_name_get("used"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(used.last_used_by, "worker");
    assert!(used.last_used_time.is_some());
    let listed = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials[0].last_used_by, "worker");
    drop((admin, worker));
    let server = server.restart().await;
    let mut admin = server.admin().await;
    let after = admin
        .get_credential(by_name_get("used"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(after.last_used_by, "worker");
    assert_eq!(after.last_used_time, used.last_used_time);
}

#[tokio::test]
async fn secret_reads_fail_closed_when_the_audit_log_cannot_be_written() {
    for fail_open in [false, true] {
        let server = TestServer::start_with(Options {
            audit_log: Some(PathBuf::from("/dev/full")),
            audit_fail_open: fail_open,
            ..Options::default()
        })
        .await;
        let mut admin = server.admin().await;
        create(&mut admin, "guarded", "key-00000001", "acct").await;
        // The writer has now failed on /dev/full; the audit health says so.
        let mut health = HealthClient::new(server.channel().await);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: "credvault.audit".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status();
            if status == tonic_health::pb::health_check_response::ServingStatus::NotServing {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "audit health never turned NOT_SERVING"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let read = admin
            .get_credential_headers(headers_by_name("guarded"))
            .await;
        if fail_open {
            read.unwrap();
        } else {
            let status = read.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
            assert!(
                status.message().contains("audit log"),
                "{}",
                status.message()
            );
        }
        // Metadata reads go on either way.
        admin.get_credential(by_name_get("guarded")).await.unwrap();
    }
}

#[tokio::test]
async fn the_log_rotates_by_size_and_is_reopened_on_sighup() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(["--audit-max-file-size", "8KiB", "--audit-max-files", "2"].map(String::from));
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "rotated", "key-00000001", "acct").await;
    let mut worker = process.client(&setup.tokens.worker).await;
    for _ in 0..100 {
        worker
            .get_credential_headers(headers_by_name("rotated"))
            .await
            .unwrap();
    }
    let audit = dir.path().join("data/audit.jsonl");
    let file = |suffix: &str| PathBuf::from(format!("{}{suffix}", audit.display()));
    let listed = events(&mut admin, api::ListAuditEventsRequest::default()).await;
    // The current file and two rotated ones, each at most 8 KiB; older ones deleted.
    let mut kept = 0;
    for suffix in ["", ".1", ".2"] {
        let text = std::fs::read_to_string(file(suffix)).unwrap();
        assert!(text.len() <= 8192, "{suffix}: {} bytes", text.len());
        kept += text
            .lines()
            .filter(|l| !l.starts_with(r#"{"kind""#))
            .count();
    }
    assert!(!file(".3").exists());
    // A listing reads them all, oldest first: the newest reads, then this listing.
    assert!(
        listed.len() >= kept - 1 && kept >= 40,
        "{} listed, {kept} kept",
        listed.len()
    );
    assert_eq!(listed.last().unwrap().method, "GetCredentialHeaders");
    let times: Vec<_> = listed.iter().map(|e| e.time.unwrap().seconds).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));

    let key = public_key(&mut admin).await;
    // An outside logrotate moves the file away and sends SIGHUP: a new file is begun.
    std::fs::rename(&audit, file(".old")).unwrap();
    process.signal("HUP");
    process.wait_for_log(&["audit log reopened"]).await;
    worker
        .get_credential_headers(headers_by_name("rotated"))
        .await
        .unwrap();
    process.terminate().await;
    let fresh = std::fs::read_to_string(&audit).unwrap();
    let fresh_events: Vec<_> = fresh
        .lines()
        .filter(|l| !l.starts_with(r#"{"kind""#))
        .collect();
    assert_eq!(fresh_events.len(), 1, "{fresh}");
    assert!(fresh_events[0].contains("GetCredentialHeaders"));
    // What rotation and retention kept, and the file moved away, verify as one
    // chain: the oldest kept file begins with a signed checkpoint, each new file
    // too, and the last ends with the server's closing digest.
    let files = [file(".2"), file(".1"), file(".old"), audit.clone()];
    let mut verify = vec!["audit", "verify", "--public-key", &key];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    for name in &names {
        verify.extend(["--file", name]);
    }
    let (ok, out) = run_cli(&verify);
    assert!(ok, "{out}");
    assert!(
        out.contains("verdict: intact") && out.contains("closing digest"),
        "{out}"
    );
    assert!(out.contains("1 chain(s)"), "{out}");
}

/// The audit public key a server answers with its listing.
async fn public_key(admin: &mut Client) -> String {
    let key = admin
        .list_audit_events(api::ListAuditEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .audit_public_key;
    assert!(
        key.split_once(' ')
            .is_some_and(|(id, k)| !id.is_empty() && k.len() == 44),
        "{key}"
    );
    key
}

/// Runs the `credvault` binary with `args`: whether it exited 0, and its output.
fn run_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Writes `lines` as an audit file in `dir` and verifies it with `key`.
fn verify_lines(dir: &std::path::Path, name: &str, lines: &[&str], key: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    run_cli(&[
        "audit",
        "verify",
        "--file",
        path.to_str().unwrap(),
        "--public-key",
        key,
    ])
}

#[tokio::test]
async fn the_trail_proves_its_own_completeness_to_an_auditor_with_the_public_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let mut args = setup.args.clone();
    args.extend(["--audit-digest-events", "8"].map(String::from));
    let mut process = Process::serve(&args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "chained", "key-00000001", "acct").await;
    let mut worker = process.client(&setup.tokens.worker).await;
    for _ in 0..30 {
        worker
            .get_credential_headers(headers_by_name("chained"))
            .await
            .unwrap();
    }
    let key = public_key(&mut admin).await;
    // The printed key is the one the server answers with.
    let printed = run_cli(&[
        "audit",
        "public-key",
        "--master-key-file",
        dir.path().join("master.key").to_str().unwrap(),
    ]);
    assert!(printed.0 && printed.1.contains(&key), "{printed:?}");
    process.terminate().await;
    let trail = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    let lines: Vec<&str> = trail.lines().collect();
    let (ok, out) = verify_lines(dir.path(), "intact", &lines, &key);
    assert!(ok && out.contains("verdict: intact"), "{out}");
    assert!(out.contains("closing digest"), "{out}");

    // Each kind of tampering is named, with its place.
    let event = |n: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("GetCredentialHeaders"))
            .nth(n)
            .unwrap()
            .0
    };
    let tampered = |name: &str, lines: Vec<&str>| {
        let (ok, out) = verify_lines(dir.path(), name, &lines, &key);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains("TAMPERED"), "{name}: {out}");
        out
    };
    let mut deleted = lines.clone();
    deleted.remove(event(10));
    let out = tampered("deleted", deleted);
    assert!(out.contains("was deleted"), "{out}");

    let mut edited = lines.clone();
    let changed = edited[event(5)].replacen("worker", "wOrker", 1);
    edited[event(5)] = &changed;
    let out = tampered("edited", edited);
    assert!(
        out.contains(&format!("edited:{}: the event at seq", event(5) + 1))
            && out.contains("was edited"),
        "{out}"
    );

    let mut swapped = lines.clone();
    swapped.swap(event(3), event(4));
    let out = tampered("swapped", swapped);
    assert!(out.contains("out of order"), "{out}");

    let mut inserted = lines.clone();
    inserted.insert(event(7), lines[event(2)]);
    let out = tampered("inserted", inserted);
    assert!(out.contains("appears again"), "{out}");

    // A dropped tail: no closing digest, and the unsigned lines are named.
    let cut = &lines[..lines.len() - 3];
    let (ok, out) = verify_lines(dir.path(), "cut", cut, &key);
    assert!(ok, "{out}");
    assert!(!out.contains("closing digest"), "{out}");

    // Another server's events spliced in.
    let other_dir = tempfile::TempDir::new().unwrap();
    let other_setup = write_config(other_dir.path());
    let mut other = Process::serve(&other_setup.args, &[], other_dir.path())
        .await
        .unwrap();
    let mut other_admin = other.client(&other_setup.tokens.admin).await;
    create(&mut other_admin, "elsewhere", "key-00000009", "acct").await;
    let other_key = public_key(&mut other_admin).await;
    other.terminate().await;
    let foreign = std::fs::read_to_string(other_dir.path().join("data/audit.jsonl")).unwrap();
    let foreign_event = foreign
        .lines()
        .find(|l| l.contains("CreateCredential"))
        .unwrap();
    let mut spliced = lines.clone();
    spliced.insert(event(12), foreign_event);
    let out = tampered("spliced", spliced);
    assert!(out.contains("spliced"), "{out}");

    // With another server's public key, no digest verifies.
    let (ok, out) = verify_lines(dir.path(), "intact", &lines, &other_key);
    assert!(!ok && out.contains("not among the public keys"), "{out}");
}

#[tokio::test]
async fn the_trail_of_a_killed_server_verifies_up_to_its_last_event() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "killed", "key-00000001", "acct").await;
    let key = public_key(&mut admin).await;
    let mut worker = process.client(&setup.tokens.worker).await;
    for _ in 0..50 {
        worker
            .get_credential_headers(headers_by_name("killed"))
            .await
            .unwrap();
    }
    process.signal("KILL");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let trail = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    let lines: Vec<&str> = trail.lines().collect();
    let events = lines
        .iter()
        .filter(|l| l.contains("GetCredentialHeaders"))
        .count();
    assert_eq!(events, 50);
    let (ok, out) = verify_lines(dir.path(), "killed", &lines, &key);
    assert!(ok && out.contains("verdict: intact"), "{out}");
    assert!(!out.contains("closing digest"), "{out}");
    // A restart goes on with the same chain, from a signed start digest.
    let mut process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut worker = process.client(&setup.tokens.worker).await;
    worker
        .get_credential_headers(headers_by_name("killed"))
        .await
        .unwrap();
    process.terminate().await;
    let (ok, out) = run_cli(&[
        "audit",
        "verify",
        "--log",
        dir.path().join("data/audit.jsonl").to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    assert!(
        ok && out.contains("1 chain(s)") && out.contains("closing digest"),
        "{out}"
    );
}

#[tokio::test]
async fn after_sigkill_every_answered_secret_read_has_its_event() {
    for sync in ["write", "fsync"] {
        let dir = tempfile::TempDir::new().unwrap();
        let setup = write_config(dir.path());
        let mut args = setup.args.clone();
        args.extend(["--audit-sync".to_owned(), sync.to_owned()]);
        let process = Process::serve(&args, &[], dir.path()).await.unwrap();
        let mut admin = process.client(&setup.tokens.admin).await;
        create(&mut admin, "read-often", "key-00000001", "acct").await;
        // Eight workers read headers as fast as they can; the server is killed under them.
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..8 {
            let mut worker = process.client(&setup.tokens.worker).await;
            let answered = std::sync::Arc::clone(&answered);
            workers.push(tokio::spawn(async move {
                while worker
                    .get_credential_headers(headers_by_name("read-often"))
                    .await
                    .is_ok()
                {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        process.signal("KILL");
        for w in workers {
            w.await.unwrap();
        }
        let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
        let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
        let events = audit
            .lines()
            .filter(|l| {
                l.contains(r#""method":"GetCredentialHeaders""#) && l.contains(r#""code":"OK""#)
            })
            .count();
        println!("--audit-sync {sync}: {answered} reads answered, {events} events in the trail");
        assert!(answered > 100, "only {answered} reads were answered");
        // An event may outlive an answer lost with the process, never the other way.
        assert!(events >= answered, "{answered} answered, {events} audited");
    }
}
