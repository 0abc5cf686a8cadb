//! The audit log's unit tests.

use super::*;

fn key() -> MasterKey {
    MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
}

fn entry() -> AuditEntry<'static> {
    AuditEntry {
        method: "GetCredentialHeaders",
        code: "OK",
        ..AuditEntry::new(SystemTime::now(), "anonymous", None)
    }
}

fn open(path: &Path, fail_open: bool) -> AuditLog {
    AuditLog::open(
        &AuditSettings {
            fail_open,
            ..AuditSettings::new(path.to_owned())
        },
        None,
        &key(),
    )
    .unwrap()
}

#[test]
fn an_entry_is_written_as_the_event_it_reads_back_as() {
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_331_200_123_456);
    let full = AuditEntry {
        time,
        caller: "ingest \"eu\"",
        peer: Peer::Addr(Some("127.0.0.1:4242".parse().unwrap())),
        credential_id: "cred_1",
        credential_name: "fleetio-acme",
        secret_fingerprint: "00ff",
        ..entry()
    };
    let expected = AuditEvent {
        time: humantime::format_rfc3339_micros(time).to_string(),
        caller: "ingest \"eu\"".into(),
        peer: "127.0.0.1:4242".into(),
        method: "GetCredentialHeaders".into(),
        credential_id: "cred_1".into(),
        credential_name: "fleetio-acme".into(),
        code: "OK".into(),
        secret_fingerprint: "00ff".into(),
        ..Default::default()
    };
    let line = serde_json::to_string(&full).unwrap();
    assert_eq!(line, serde_json::to_string(&expected).unwrap());
    assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), expected);
    // Empty fields are left out, and a missing peer is "unknown", as before.
    let bare = serde_json::to_string(&AuditEntry { time, ..entry() }).unwrap();
    let expected = AuditEvent {
        time: humantime::format_rfc3339_micros(time).to_string(),
        caller: "anonymous".into(),
        peer: "unknown".into(),
        method: "GetCredentialHeaders".into(),
        code: "OK".into(),
        ..Default::default()
    };
    assert_eq!(bare, serde_json::to_string(&expected).unwrap());
    // A summary of refusals names its peer, reason and count.
    let summary = AuditEntry {
        time,
        peer: Peer::Label("10.0.0.7"),
        code: "UNAUTHENTICATED",
        reason: "invalid bearer token",
        count: 4242,
        ..entry()
    };
    let read: AuditEvent = serde_json::from_str(&serde_json::to_string(&summary).unwrap()).unwrap();
    assert_eq!((read.peer.as_str(), read.count), ("10.0.0.7", 4242));
    assert_eq!(read.reason, "invalid bearer token");
}

#[tokio::test]
async fn events_round_trip_with_filters_and_paging() {
    let dir = tempfile::TempDir::new().unwrap();
    let log = open(&dir.path().join("audit.jsonl"), false);
    for i in 0..10 {
        log.record(&AuditEntry {
            caller: if i % 2 == 0 { "even" } else { "odd" },
            credential_id: &format!("cred_{i}"),
            ..entry()
        })
        .await;
    }
    assert!(log.flush().await);
    let q = || AuditQuery {
        caller: Some("even".into()),
        ..Default::default()
    };
    let (page, next) = log.list(q(), None, 3).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|e| e.credential_id.as_str())
            .collect::<Vec<_>>(),
        ["cred_0", "cred_2", "cred_4"]
    );
    let (rest, end) = log.list(q(), next, 3).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert!(end.is_none());
}

#[tokio::test]
async fn the_log_rotates_by_size_keeps_its_last_files_and_lists_across_them() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(
        &AuditSettings {
            max_file_size: 4_000,
            max_files: 3,
            ..AuditSettings::new(path.clone())
        },
        None,
        &key(),
    )
    .unwrap();
    let id = |i: usize| format!("cred_{i:04}");
    // About 280 bytes an event with its chain fields, and a signed
    // checkpoint and digest a file: 11 a file, so 100 events make 9 files.
    let (mut first_page, mut next) = (None, None);
    for i in 0..100 {
        log.record(&AuditEntry {
            credential_id: &id(i),
            ..entry()
        })
        .await;
        if i == 20 {
            // A listing begun before rotations goes on across them.
            assert!(log.flush().await);
            let (page, n) = log.list(AuditQuery::default(), None, 5).await.unwrap();
            first_page = Some(page);
            next = n;
        }
    }
    assert!(log.flush().await);
    let sizes: Vec<u64> = (1..=3)
        .map(|n| std::fs::metadata(rotated_path(&path, n)).unwrap().len())
        .collect();
    assert!(sizes.iter().all(|&s| s <= 4_000), "{sizes:?}");
    assert!(
        !rotated_path(&path, 4).exists(),
        "only 3 rotated files are kept"
    );
    assert!(std::fs::metadata(&path).unwrap().len() <= 4_000);
    // What retention kept still verifies: the oldest file begins with a
    // signed checkpoint, each one ends signed.
    let lines: Vec<(String, String)> = [3, 2, 1]
        .iter()
        .map(|&n| rotated_path(&path, n))
        .chain([path.clone()])
        .flat_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.display().to_string();
            text.lines()
                .enumerate()
                .map(|(i, l)| (format!("{name}:{}", i + 1), l.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let report = crate::trail::verify(lines, &[log.public_key()]);
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.chains.len(), 1);
    // Everything still kept is listed, oldest first, in one run of pages.
    let mut all = Vec::new();
    let mut from = None;
    loop {
        let (page, n) = log.list(AuditQuery::default(), from, 7).await.unwrap();
        all.extend(page.into_iter().map(|e| e.credential_id));
        match n {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    assert_eq!(all.last().unwrap(), &id(99));
    let firstkept: usize = all[0][5..].parse().unwrap();
    assert_eq!(all, (firstkept..100).map(id).collect::<Vec<_>>());
    assert!(all.len() >= 3 * 10, "{} kept", all.len());
    // The page token from before the rotations: its file was deleted since, so
    // the listing starts again at the oldest event kept.
    assert_eq!(first_page.unwrap().len(), 5);
    let (resumed, _) = log.list(AuditQuery::default(), next, 1).await.unwrap();
    assert_eq!(resumed[0].credential_id, id(firstkept));
}

#[tokio::test]
async fn a_reopen_follows_an_outside_rotation() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, false);
    log.record(&AuditEntry {
        credential_id: "before",
        ..entry()
    })
    .await;
    assert!(log.flush().await);
    std::fs::rename(&path, rotated_path(&path, 1)).unwrap();
    log.reopen();
    log.record(&AuditEntry {
        credential_id: "after",
        ..entry()
    })
    .await;
    assert!(log.flush().await);
    let current = std::fs::read_to_string(&path).unwrap();
    assert!(current.contains("after") && !current.contains("before"));
    let (all, _) = log.list(AuditQuery::default(), None, 10).await.unwrap();
    let ids: Vec<_> = all.iter().map(|e| e.credential_id.as_str()).collect();
    assert_eq!(ids, ["before", "after"]);
}

#[tokio::test]
async fn an_unwritable_log_fails_closed_unless_open() {
    for fail_open in [false, true] {
        let log = open(Path::new("/dev/full"), fail_open);
        log.record(&entry()).await;
        assert!(!log.flush().await);
        assert!(!log.healthy());
        assert_eq!(log.admit_secret_read().is_ok(), fail_open);
    }
}

#[tokio::test]
async fn a_stalled_writer_makes_recording_wait_not_pile_up() {
    let dir = tempfile::TempDir::new().unwrap();
    let log = AuditLog::open(
        &AuditSettings {
            max_file_size: 1,
            queue: 4,
            ..AuditSettings::new(dir.path().join("audit.jsonl"))
        },
        None,
        &key(),
    )
    .unwrap();
    log.record(&entry()).await;
    assert!(log.flush().await);
    // The next event rotates the file, and the writer waits for the rotation
    // lock, held here: a disk that does not answer.
    let stall = Arc::clone(&log.file.as_ref().unwrap().rotation);
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _held = stall.lock().unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
    });
    locked.recv().unwrap();
    let log = Arc::new(log);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.record_secret_read(&entry()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One event is with the writer, four wait in the queue, the rest wait for room.
    assert_eq!(log.file.as_ref().unwrap().places.available_permits(), 0);
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "no read was answered"
    );
    drop(release);
    holder.join().unwrap();
    for r in readers {
        assert!(r.await.unwrap().is_ok());
    }
    // Every place is given back once the writer has let go of the group.
    for _ in 0..100 {
        if log.file.as_ref().unwrap().places.available_permits() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(log.file.as_ref().unwrap().places.available_permits(), 4);
}

#[test]
fn fingerprints_correlate_without_revealing() {
    let dir = tempfile::TempDir::new().unwrap();
    let log = open(&dir.path().join("a"), false);
    let other = open(&dir.path().join("b"), false);
    assert_eq!(log.fingerprint(b"secret"), log.fingerprint(b"secret"));
    assert_ne!(log.fingerprint(b"secret"), log.fingerprint(b"secret2"));
    assert_ne!(log.fingerprint(b"secret"), other.fingerprint(b"secret"));
    assert_eq!(log.fingerprint(b"secret").len(), 32);
}
