//! Master-key rotation: keyrings, online reload, rewrap under load, the CLI
//! rewrap, and the refusal of keyrings that lack a key the data needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use credvault::api;
use credvault::crypto::MasterKey;
use credvault::keys::KeyringError;
use credvault::record::{CredentialRecord, RECORD_FORMAT_DIRECT};
use credvault::sealing::direct_secret_aad;
use credvault::server::ServeError;

fn key() -> String {
    MasterKey::generate_base64().as_str().to_owned()
}

/// Starts a server whose keyring is read from `ring` (and re-read when it changes).
async fn with_ring(ring: &std::path::Path, data_dir: Option<std::path::PathBuf>) -> TestServer {
    TestServer::start_with(Options {
        keyring_file: Some(ring.to_owned()),
        data_dir,
        ..Options::default()
    })
    .await
}

/// Runs rewraps until one ran wholly after the keyring reload (it comes within a
/// second) made `active` active. A run that overlapped the reload rightly reports
/// records it saw while the old key was still active; it is run again.
async fn rewrap_once_active(
    client: &mut Client,
    active: &str,
    batch: u32,
) -> Vec<api::RewrapCredentialsResponse> {
    let mut last = None;
    for _ in 0..50 {
        let all = rewrap_all(client, batch).await;
        let report = all.last().unwrap();
        let only_active = report.key_id_credentials.keys().all(|k| k == active);
        if report.active_key_id == active && only_active {
            return all;
        }
        last = Some(report.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no rewrap left every credential on {active}; the last: {last:?}");
}

#[tokio::test]
async fn rotation_rewraps_every_data_key_online_under_load() {
    let tmp = tempfile::TempDir::new().unwrap();
    let ring = tmp.path().join("keyring");
    let (k1, k2) = (key(), key());
    std::fs::write(&ring, format!("# credvault keyring\nk1 = {k1}\n")).unwrap();
    let data = tmp.path().join("data");
    let server = with_ring(&ring, Some(data.clone())).await;
    let mut admin = server.admin().await;
    const N: usize = 120;
    create_numbered(&mut admin, N, |i| format!("c{i:03}")).await;

    // Load during the whole rotation: readers check the untouched half exactly;
    // writers rotate the secrets of the other half.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, writes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for r in 0..3 {
        let (mut c, stop, reads) = (admin.clone(), stop.clone(), reads.clone());
        load.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let n = i % (N / 2);
                let h = c
                    .get_credential_headers(headers_by_name(&format!("c{n:03}")))
                    .await
                    .expect("reads go on during the rotation")
                    .into_inner();
                assert_eq!(h.headers[0].value, format!("Token key-{n:08}"));
                reads.fetch_add(1, Ordering::Relaxed);
                i += 7;
            }
            HashMap::new()
        }));
    }
    for w in 0..2 {
        let (mut c, stop, writes) = (admin.clone(), stop.clone(), writes.clone());
        load.push(tokio::spawn(async move {
            let mut last = HashMap::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                for n in (N / 2 + w..N).step_by(2) {
                    let name = format!("c{n:03}");
                    let api_key = format!("key-{n:04}-{round:04}");
                    c.update_credential(rotation(&name, &api_key, "acct"))
                        .await
                        .expect("writes go on during the rotation");
                    last.insert(name, api_key);
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                round += 1;
            }
            last
        }));
    }

    // (A keyring that lacks k1, which the data needs, is refused: tests/reload.rs
    // shows it with the reload metric of the real binary.)
    // Add k2 as the last (active) key; the server picks it up without a restart.
    std::fs::write(&ring, format!("k1 = {k1}\nk2 = {k2}\n")).unwrap();
    let messages = rewrap_once_active(&mut admin, "k2", 25).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected = HashMap::new();
    for task in load {
        expected.extend(task.await.unwrap());
    }
    let last = messages.last().unwrap();
    assert!(last.done);
    assert!(
        messages.len() >= 3,
        "progress after each batch of 25: {messages:?}"
    );
    for pair in messages.windows(2) {
        assert!(pair[0].scanned <= pair[1].scanned, "progress only grows");
    }
    assert!(last.scanned >= N as u64 && last.failed_credential_ids.is_empty());
    assert!(last.rewrapped > 0 && last.rewrapped <= N as u64);
    assert_eq!(
        last.key_id_credentials,
        HashMap::from([("k2".to_owned(), last.scanned)]),
        "every credential depends on k2 alone"
    );
    assert_eq!(last.retired_key_ids, vec!["k1".to_owned()]);
    assert!(reads.load(Ordering::Relaxed) > 0 && writes.load(Ordering::Relaxed) > 0);
    eprintln!(
        "rewrapped {} of {} during {} reads and {} writes",
        last.rewrapped,
        last.scanned,
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed)
    );

    // A second rewrap has nothing to do.
    let again = rewrap_all(&mut admin, 100).await;
    assert_eq!(again.last().unwrap().rewrapped, 0);
    drop(admin);
    server.stop().await.unwrap();

    // k1 may now leave the keyring: a restart with k2 alone opens everything.
    std::fs::write(&ring, format!("k2 = {k2}\n")).unwrap();
    let server = with_ring(&ring, Some(data.clone())).await;
    let mut admin = server.admin().await;
    for n in 0..N {
        let name = format!("c{n:03}");
        let want = expected
            .get(&name)
            .cloned()
            .unwrap_or_else(|| format!("key-{n:08}"));
        assert_eq!(
            authorization(&mut admin, &name).await,
            format!("Token {want}"),
            "{name}"
        );
    }
    drop(admin);
    server.stop().await.unwrap();

    // And a keyring of k1 alone no longer opens it: refused, naming k2.
    std::fs::write(&ring, format!("k1 = {k1}\n")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = bare_config(&data, &format!("k1 = {k1}"));
    let err = credvault::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    match &err {
        ServeError::Keys(KeyringError::MissingKey { needed, .. }) => assert_eq!(needed, "k2"),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("k2") && !text.contains(&k1) && !text.contains(&k2));
}

#[tokio::test]
async fn a_key_with_a_known_id_but_other_bytes_is_refused() {
    let tmp = tempfile::TempDir::new().unwrap();
    let k1 = key();
    let server = TestServer::start_with(Options {
        key_b64: format!("k1 = {k1}"),
        data_dir: Some(tmp.path().to_owned()),
        ..Options::default()
    })
    .await;
    create(&mut server.admin().await, "one", "key-00000001", "acct").await;
    server.stop().await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = bare_config(tmp.path(), &format!("k1 = {}", key()));
    let err = credvault::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServeError::Keys(KeyringError::WrongKey { id }) if id == "k1"),
        "{err:?}"
    );
    // Refusing lost nothing.
    let server = TestServer::reopen(tmp.path().to_owned(), format!("k1 = {k1}")).await;
    let h = server
        .admin()
        .await
        .get_credential_headers(headers_by_name("one"))
        .await
        .unwrap();
    assert_eq!(h.into_inner().headers[0].value, "Token key-00000001");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn records_sealed_directly_by_the_master_key_still_open_and_are_upgraded() {
    let tmp = tempfile::TempDir::new().unwrap();
    let k = key();
    let server = TestServer::reopen(tmp.path().to_owned(), k.clone()).await;
    let id = create(&mut server.admin().await, "old", "key-0000old1", "acct")
        .await
        .id;
    server.stop().await.unwrap();

    // Rewrite the record as format 1 wrote it: the secret sealed by the master key itself.
    {
        let db = sled::open(tmp.path().join("db")).unwrap();
        let tree = db.open_tree("credentials").unwrap();
        let mut record =
            CredentialRecord::from_bytes(&id, &tree.get(&id).unwrap().unwrap()).unwrap();
        let master = MasterKey::from_base64(&k).unwrap();
        let plaintext = credvault::convert::create_secret(
            &credvault::provider::Catalog::builtin(),
            fleetio("key-0000old1", "acct", ""),
        )
        .unwrap()
        .to_plaintext();
        record.format = RECORD_FORMAT_DIRECT;
        record.data_key = None;
        // Format 1 records carried no MAC (the server authenticates them at start).
        record.mac.clear();
        record.mac_key_id.clear();
        record.secret =
            Some(master.seal(&direct_secret_aad(&id, "fleetio", master.id()), &plaintext));
        tree.insert(id.as_bytes(), record.to_bytes()).unwrap();
        db.flush().unwrap();
    }

    let server = TestServer::reopen(tmp.path().to_owned(), k.clone()).await;
    let mut admin = server.admin().await;
    assert_eq!(authorization(&mut admin, "old").await, "Token key-0000old1");
    let report = rewrap_all(&mut admin, 10).await;
    assert_eq!(
        report.last().unwrap().rewrapped,
        1,
        "the format 1 record is upgraded"
    );
    assert_eq!(authorization(&mut admin, "old").await, "Token key-0000old1");
    drop(admin);
    server.stop().await.unwrap();
    let db = sled::open(tmp.path().join("db")).unwrap();
    let bytes = db
        .open_tree("credentials")
        .unwrap()
        .get(&id)
        .unwrap()
        .unwrap();
    let record = CredentialRecord::from_bytes(&id, &bytes).unwrap();
    assert_eq!(record.format, credvault::record::RECORD_FORMAT);
    assert!(record.data_key.is_some());
}

#[tokio::test]
async fn the_cli_rewraps_a_stopped_servers_data_and_refuses_a_running_one() {
    let tmp = tempfile::TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let old = std::fs::read_to_string(&setup.key).unwrap();
    let old_id = MasterKey::from_base64(&old).unwrap().id().to_owned();
    let mut process = Process::serve(&setup.args, &[], tmp.path()).await.unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    create_numbered(&mut client, 30, |i| format!("cli-{i:02}")).await;

    // A keyring directory: the old key under its id, and the new key after it.
    let ring = tmp.path().join("keys");
    std::fs::create_dir(&ring).unwrap();
    std::fs::write(ring.join(format!("{old_id}.key")), &old).unwrap();
    std::fs::write(ring.join("zz-2026-11.key"), key()).unwrap();
    std::fs::write(ring.join(".hidden"), "not a key").unwrap();
    let data = tmp.path().join("data");
    let args = [
        "rewrap",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        ring.to_str().unwrap(),
        "--batch-size",
        "7",
    ];
    let running = run_cli(&args, &[]).await;
    assert!(!running.status.success());
    let err = String::from_utf8_lossy(&running.stderr);
    assert!(err.contains("still running"), "{err}");

    process.terminate().await;
    let out = run_cli(&args, &[]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("30 of 30 credentials rewrapped under master key zz-2026-11"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("key {old_id}: no credential depends on it")),
        "{stdout}"
    );
    assert!(
        stderr.contains("scanned 7/30"),
        "progress per batch: {stderr}"
    );

    // The old key may go: the new one alone serves everything.
    std::fs::remove_file(ring.join(format!("{old_id}.key"))).unwrap();
    let mut serve_args = setup.args.clone();
    let at = serve_args
        .iter()
        .position(|a| a == "--master-key-file")
        .unwrap();
    serve_args[at + 1] = ring.to_str().unwrap().to_owned();
    let mut process = Process::serve(&serve_args, &[], tmp.path()).await.unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    for i in 0..30 {
        assert_eq!(
            authorization(&mut client, &format!("cli-{i:02}")).await,
            format!("Token key-{i:08}")
        );
    }
    let line = process.wait_for_log(&["credvault serving"]).await;
    assert!(line.contains("zz-2026-11"), "{line}");
    process.terminate().await;
}
