//! Faults: a full disk, a read-only data dir, and crashes (kill -9) at random
//! moments during concurrent creates and updates.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use credvault::api;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// A small tmpfs mounted for one test (needs root, as CI runs); unmounted on drop.
struct SmallDisk {
    path: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<Self> {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { path, _tmp: tmp })
    }

    /// Fills the disk with a file until no byte is left.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        for _ in 0..64 {
            if f.write_all(&[0u8; 512]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

async fn store_health(server: &TestServer) -> ServingStatus {
    server.health("credvault.store").await
}

/// Waits (up to 10 s) for `service` to show `want`; how long it took.
async fn turns(server: &TestServer, service: &str, want: ServingStatus) -> Duration {
    let start = std::time::Instant::now();
    while server.health(service).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{service:?} never turned {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

const VAULT: &str = "credvault.v1.CredentialVaultService";

#[tokio::test]
async fn a_full_disk_fails_writes_with_unavailable_and_reads_go_on() {
    let Some(disk) = SmallDisk::mount(64) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let audit = tempfile::TempDir::new().unwrap();
    let key = credvault::crypto::MasterKey::generate_base64()
        .as_str()
        .to_owned();
    let data = disk.path.join("data");
    let server = TestServer::start_with(Options {
        data_dir: Some(data.clone()),
        key_b64: key.clone(),
        audit_log: Some(audit.path().join("audit.jsonl")),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let (name, api_key) = (format!("before-{i}"), format!("key-{i:08}"));
        create(&mut admin, &name, &api_key, "acct").await;
        acked.push((name, api_key));
    }
    assert_eq!(store_health(&server).await, ServingStatus::Serving);
    let filler = disk.fill();
    let mut failure = None;
    for i in 0..5000 {
        let (name, api_key) = (format!("full-{i}"), format!("key-full-{i:06}"));
        let r = admin
            .create_credential(api::CreateCredentialRequest {
                name: name.clone(),
                secret: Some(fleetio(&api_key, "acct", "")),
                description: "x".repeat(1000),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => acked.push((name, api_key)),
            Err(status) => {
                failure = Some(status);
                break;
            }
        }
    }
    let status = failure.expect("writes fail once the disk is full");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("No space left on device"),
        "a clear message: {status:?}"
    );
    // Updates fail alike; reads of everything acknowledged go on.
    let update = admin
        .update_credential(rotation("before-1", "key-new-00001", "acct"))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::Unavailable, "{update:?}");
    for (name, api_key) in &acked {
        let h = admin
            .get_credential_headers(headers_by_name(name))
            .await
            .expect("reads go on")
            .into_inner();
        assert_eq!(&h.headers[0].value, &format!("Token {api_key}"));
    }
    // The store's own health service tells operators; the server itself still serves reads.
    let mut turned = false;
    for _ in 0..50 {
        if store_health(&server).await == ServingStatus::NotServing {
            turned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(turned, "credvault.store turns NOT_SERVING");
    // Readiness tells the truth: the vault service is out while writes fail; the
    // server itself (liveness) stays SERVING while a restart would not help.
    turns(&server, VAULT, ServingStatus::NotServing).await;
    assert_eq!(server.health("").await, ServingStatus::Serving);
    // Space freed: sled keeps its write error until a restart, so now liveness
    // turns NOT_SERVING for a supervisor to restart the server.
    std::fs::remove_file(filler).unwrap();
    let took = turns(&server, "", ServingStatus::NotServing).await;
    eprintln!("liveness asked for a restart {took:?} after the space was freed");
    assert_eq!(server.health(VAULT).await, ServingStatus::NotServing);
    drop(admin);
    let stopped = server.stop().await;
    eprintln!("stop after a full disk: {stopped:?}");

    // Restarted: every acknowledged write is there and opens.
    let server = TestServer::start_with(Options {
        data_dir: Some(data),
        key_b64: key,
        audit_log: Some(audit.path().join("audit.jsonl")),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    for (name, api_key) in &acked {
        let h = admin
            .get_credential_headers(headers_by_name(name))
            .await
            .unwrap_or_else(|s| panic!("{name} after the restart: {s:?}"))
            .into_inner();
        assert_eq!(&h.headers[0].value, &format!("Token {api_key}"));
    }
    create(&mut admin, "after", "key-after-001", "acct").await;
    assert_eq!(store_health(&server).await, ServingStatus::Serving);
    assert_eq!(server.health(VAULT).await, ServingStatus::Serving);
    eprintln!("{} acknowledged writes survived the full disk", acked.len());
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_audit_log_on_a_full_disk_takes_the_vault_out_of_readiness_until_space_returns() {
    let Some(disk) = SmallDisk::mount(8) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let server = TestServer::start_with(Options {
        audit_log: Some(disk.path.join("audit.jsonl")),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "fleetio-acme", "key-00000001", "acct").await;
    admin
        .get_credential_headers(headers_by_name("fleetio-acme"))
        .await
        .unwrap();
    assert_eq!(server.health(VAULT).await, ServingStatus::Serving);
    let filler = disk.fill();
    // Calls go on writing events; the first that cannot be written breaks the log.
    let mut refused = None;
    for _ in 0..2000 {
        match admin
            .get_credential_headers(headers_by_name("fleetio-acme"))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("secret reads are refused once the audit log is full");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let out = turns(&server, VAULT, ServingStatus::NotServing).await;
    assert_eq!(
        server.health("credvault.audit").await,
        ServingStatus::NotServing
    );
    // Metadata calls go on (their events wait for the disk), and liveness stays.
    admin
        .get_credential(by_name_get("fleetio-acme"))
        .await
        .unwrap();
    assert_eq!(server.health("").await, ServingStatus::Serving);
    // Space back: the writer retries by itself and readiness returns, no restart.
    std::fs::remove_file(filler).unwrap();
    let back = turns(&server, VAULT, ServingStatus::Serving).await;
    eprintln!("NOT_SERVING {out:?} after the refusal; SERVING {back:?} after the space was freed");
    assert_eq!(
        server.health("credvault.audit").await,
        ServingStatus::Serving
    );
    admin
        .get_credential_headers(headers_by_name("fleetio-acme"))
        .await
        .unwrap();
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_read_only_data_dir_refuses_to_start_with_a_clear_message() {
    let Some(disk) = SmallDisk::mount(16) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let setup = write_config(disk.path.as_path());
    let mut process = Process::serve(&setup.args, &[], &disk.path).await.unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    create(&mut client, "kept", "key-00000001", "acct").await;
    process.terminate().await;
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.path)
        .status()
        .unwrap();
    assert!(remount.success());
    let err = Process::serve(&setup.args, &[], &disk.path)
        .await
        .err()
        .unwrap();
    assert!(err.contains("cannot open the data directory"), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
}

/// What a crash-round writer knows of one credential: the last acknowledged
/// API key, and one sent but not acknowledged when the process died.
#[derive(Clone, Debug, Default)]
struct Known {
    acked: String,
    in_flight: Option<String>,
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_no_acknowledged_write() {
    use rand::Rng;
    let tmp = tempfile::TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let (args, tokens) = (&setup.args, &setup.tokens);
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut rng = rand::thread_rng();
    for round in 0..4 {
        let mut process = Process::serve(args, &[], tmp.path()).await.unwrap();
        let mut client = process.client(&tokens.admin).await;
        check_all(&mut client, &known, round).await;
        // Creates and secret rotations in flight while the process dies.
        let mut tasks = Vec::new();
        for w in 0..4 {
            let mut c = client.clone();
            let mine: Vec<String> = known
                .keys()
                .filter(|n| n.ends_with(&format!("-w{w}")))
                .cloned()
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut seen: HashMap<String, Known> = HashMap::new();
                for i in 0.. {
                    let result = if i % 2 == 0 || mine.is_empty() {
                        let name = format!("r{round}-{i}-w{w}");
                        let key = format!("key-{round}-{w}-{i:06}");
                        seen.insert(
                            name.clone(),
                            Known {
                                acked: String::new(),
                                in_flight: Some(key.clone()),
                            },
                        );
                        c.create_credential(api::CreateCredentialRequest {
                            name: name.clone(),
                            secret: Some(fleetio(&key, "acct", "")),
                            ..Default::default()
                        })
                        .await
                        .map(|_| (name, key))
                    } else {
                        let name = mine[i % mine.len()].clone();
                        let key = format!("rot-{round}-{w}-{i:06}");
                        seen.entry(name.clone()).or_default().in_flight = Some(key.clone());
                        c.update_credential(rotation(&name, &key, "acct"))
                            .await
                            .map(|_| (name, key))
                    };
                    match result {
                        Ok((name, key)) => {
                            let k = seen.entry(name).or_default();
                            k.acked = key;
                            k.in_flight = None;
                        }
                        Err(_) => break,
                    }
                }
                seen
            }));
        }
        let moment = rng.gen_range(150..900);
        tokio::time::sleep(Duration::from_millis(moment)).await;
        process.signal("KILL");
        let _ = process.child.wait().await;
        for t in tasks {
            for (name, k) in t.await.unwrap() {
                let entry = known.entry(name).or_default();
                if !k.acked.is_empty() {
                    entry.acked = k.acked;
                }
                entry.in_flight = k.in_flight;
            }
        }
        eprintln!(
            "round {round}: killed after {moment} ms; {} credentials known",
            known.len()
        );
    }
    let mut process = Process::serve(args, &[], tmp.path()).await.unwrap();
    let mut client = process.client(&tokens.admin).await;
    check_all(&mut client, &known, 4).await;
    process.terminate().await;
}

/// Every acknowledged write is there and opens; an unacknowledged one is either
/// wholly there or wholly absent; listing shows no damaged record.
async fn check_all(client: &mut Client, known: &HashMap<String, Known>, round: usize) {
    for (name, k) in known {
        match client.get_credential_headers(headers_by_name(name)).await {
            Ok(h) => {
                let value = h.into_inner().headers[0].value.clone();
                let allowed: Vec<String> = [Some(&k.acked), k.in_flight.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("Token {v}"))
                    .collect();
                assert!(
                    allowed.contains(&value),
                    "round {round}: {name} = {value}, allowed {allowed:?}"
                );
            }
            Err(s) => {
                assert!(
                    k.acked.is_empty() && s.code() == Code::NotFound,
                    "round {round}: {name} (acknowledged {:?}) answered {s:?}",
                    k.acked
                );
            }
        }
    }
    let mut token = String::new();
    loop {
        let page = client
            .list_credentials(api::ListCredentialsRequest {
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("no half-written record is visible")
            .into_inner();
        for c in &page.credentials {
            assert!(
                known.contains_key(&c.name),
                "round {round}: unknown {}",
                c.name
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
}
