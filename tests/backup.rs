//! Backups and restores: a consistent, still-encrypted snapshot taken while the
//! server serves, restored with the real CLI; wrong keyrings and damaged files
//! are refused without touching the target.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;
use credvault::api;
use credvault::crypto::MasterKey;
use tonic::Code;

/// Reads a whole backup stream.
async fn backup_bytes(client: &mut Client) -> Vec<u8> {
    let mut stream = client
        .backup_vault(api::BackupVaultRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        assert!(m.chunk.len() <= 64 * 1024);
        bytes.extend_from_slice(&m.chunk);
    }
    bytes
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_every_acknowledged_write() {
    let tmp = tempfile::TempDir::new().unwrap();
    let key = MasterKey::generate_base64().as_str().to_owned();
    let server = TestServer::start_with(Options {
        key_b64: key.clone(),
        data_dir: Some(tmp.path().join("live")),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create_numbered(&mut admin, 300, |i| format!("b{i:03}")).await;
    admin
        .update_credential(rotation("b007", "key-rotated7", "acct2"))
        .await
        .unwrap();
    // Writers keep going while the backup is taken through the real CLI.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut c, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                create(&mut c, &format!("during-{n:05}"), "key-during1", "acct").await;
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let file = tmp.path().join("vault.backup");
    let out = run_cli(
        &[
            "backup",
            "--server",
            &server.addr.to_string(),
            "--out",
            file.to_str().unwrap(),
        ],
        &[("CREDVAULT_TOKEN", &server.tokens.admin)],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("backup written to"), "{stdout}");
    assert!(during > 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the backup is private");
    }
    let bytes = std::fs::read(&file).unwrap();
    for secret in ["key-00000001", "key-rotated7", "acct2", key.as_str()] {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{secret} in the clear"
        );
    }
    // What the server held when the backup began: listed now, minus later creates.
    drop(admin);
    server.stop().await.unwrap();

    // Restore with the real CLI into a new directory and serve it.
    let key_file = tmp.path().join("master.key");
    std::fs::write(&key_file, &key).unwrap();
    let restored = tmp.path().join("restored");
    let out = restore(&key_file, &file, &restored).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("secrets opened with the keyring"),
        "{stdout}"
    );

    let server = TestServer::reopen(restored.clone(), key.clone()).await;
    let mut admin = server.admin().await;
    for i in 0..300 {
        let want = if i == 7 {
            "key-rotated7".to_owned()
        } else {
            format!("key-{i:08}")
        };
        assert_eq!(
            authorization(&mut admin, &format!("b{i:03}")).await,
            format!("Token {want}")
        );
    }
    // The creates made during the backup are a prefix: all of them up to some point, none after.
    let mut present = Vec::new();
    for n in 0..during {
        present.push(
            admin
                .get_credential(by_name_get(&format!("during-{n:05}")))
                .await
                .is_ok(),
        );
    }
    let cut = present.iter().position(|p| !p).unwrap_or(present.len());
    assert!(
        present[cut..].iter().all(|p| !p),
        "a consistent snapshot: writes present up to {cut}, then none: {present:?}"
    );
    // The restored vault takes writes; its names are indexed.
    let dup = admin
        .create_credential(api::CreateCredentialRequest {
            name: "b001".into(),
            secret: Some(fleetio("key-00000099", "acct", "")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    create(&mut admin, "after-restore", "key-00000100", "acct").await;
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn restores_with_the_wrong_keyring_or_a_damaged_file_are_refused() {
    let tmp = tempfile::TempDir::new().unwrap();
    let key = MasterKey::generate_base64().as_str().to_owned();
    let server = TestServer::start_with(Options {
        key_b64: key.clone(),
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "one", "key-00000001", "acct").await;
    let bytes = backup_bytes(&mut admin).await;
    let file = tmp.path().join("one.backup");
    std::fs::write(&file, &bytes).unwrap();

    // Another key: refused, naming the key id the backup needs; nothing is written.
    let other = tmp.path().join("other.key");
    std::fs::write(&other, MasterKey::generate_base64().as_str()).unwrap();
    let target = tmp.path().join("target");
    let out = restore(&other, &file, &target).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("restore refused"), "{err}");
    assert!(
        err.contains(MasterKey::from_base64(&key).unwrap().id()),
        "{err}"
    );
    assert!(!target.join("db").exists(), "nothing written");

    // One flipped byte: its section's MAC catches it.
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let damaged_file = tmp.path().join("damaged.backup");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let right = tmp.path().join("right.key");
    std::fs::write(&right, &key).unwrap();
    let out = restore(&right, &damaged_file, &target).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not valid from section"), "{err}");
    // Cut short, and not a backup at all.
    let short = tmp.path().join("short.backup");
    std::fs::write(&short, &bytes[..bytes.len() - 10]).unwrap();
    assert!(!restore(&right, &short, &target).await.status.success());
    let junk = tmp.path().join("junk.backup");
    std::fs::write(&junk, b"hello").unwrap();
    let out = restore(&right, &junk, &target).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a credvault backup"));
    assert!(!target.join("db").exists(), "nothing written");

    // The right key restores it; a second restore into the same directory is refused.
    assert!(restore(&right, &file, &target).await.status.success());
    let again = restore(&right, &file, &target).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a credvault store"));
    drop(admin);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_cli_backs_up_a_stopped_servers_data_dir() {
    let tmp = tempfile::TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let mut process = Process::serve(&setup.args, &[], tmp.path()).await.unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    create(&mut client, "offline", "key-00000001", "acct").await;
    process.terminate().await;
    let file = tmp.path().join("offline.backup");
    let data = tmp.path().join("data");
    let args = [
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
        // Its active key authenticates the file.
        "--master-key-file",
        setup.key.to_str().unwrap(),
    ];
    let out = run_cli(&args, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 credentials"));
    // An existing file is never overwritten.
    let again = run_cli(&args, &[]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}

/// Runs `credvault restore --from <from> --data-dir <to> --master-key-file <key_file>`.
async fn restore(
    key_file: &std::path::Path,
    from: &std::path::Path,
    to: &std::path::Path,
) -> std::process::Output {
    run_cli(
        &[
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--data-dir",
            to.to_str().unwrap(),
            "--master-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
    )
    .await
}

/// The frames of a format 2 backup after its magic line: (length + payload + MAC) each.
fn frames(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let magic = b"credvault-backup\n".len();
    let mut rest = &bytes[magic..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(rest[..4 + len + 32].to_vec());
        rest = &rest[4 + len + 32..];
    }
    (bytes[..magic].to_vec(), out)
}

fn joined(magic: &[u8], frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = magic.to_vec();
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

/// A backup of a running server holding `names`, through the CLI: its bytes and key file.
async fn backup_of(dir: &std::path::Path, names: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let setup = write_config(dir);
    let mut process = Process::serve(&setup.args, &[], dir).await.unwrap();
    let mut client = process.client(&setup.tokens.admin).await;
    for name in names {
        create(&mut client, name, "key-00000001", "acct").await;
    }
    let file = dir.join("vault.backup");
    let out = run_cli(
        &[
            "backup",
            "--server",
            &process.addr.to_string(),
            "--out",
            file.to_str().unwrap(),
        ],
        &[("CREDVAULT_TOKEN", &setup.tokens.admin)],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    process.terminate().await;
    (std::fs::read(&file).unwrap(), setup.key)
}

#[tokio::test]
async fn restore_refuses_an_edited_reordered_spliced_or_cut_backup_and_says_where() {
    let tmp = tempfile::TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (bytes, key) = backup_of(&a, &["one", "two", "three"]).await;
    let (other, _) = backup_of(&b, &["one", "two", "three"]).await;
    let (magic, frames) = self::frames(&bytes);
    let (_, other_frames) = self::frames(&other);
    // Head, 3 records, then meta and the rest, then the tail.
    assert!(frames.len() >= 5);
    let mut flipped = frames.clone();
    let middle = flipped[2].len() / 2;
    flipped[2][middle] ^= 1;
    let mut removed = frames.clone();
    removed.remove(2);
    let mut swapped = frames.clone();
    swapped.swap(1, 2);
    let mut cut = frames.clone();
    cut.pop();
    let mut spliced = frames.clone();
    spliced[2] = other_frames[2].clone();
    let cases = [
        ("a flipped byte", joined(&magic, &flipped), "section 2"),
        (
            "a removed credential",
            joined(&magic, &removed),
            "section 2",
        ),
        (
            "two credentials swapped",
            joined(&magic, &swapped),
            "section 1",
        ),
        ("a cut file", joined(&magic, &cut), "cut short"),
        (
            "a section of another backup",
            joined(&magic, &spliced),
            "section 2",
        ),
        (
            "a file cut inside a frame",
            bytes[..bytes.len() - 10].to_vec(),
            "ends inside",
        ),
    ];
    for (i, (what, tampered, place)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("tampered-{i}.backup"));
        std::fs::write(&file, tampered).unwrap();
        let target = tmp.path().join(format!("restored-{i}"));
        let out = restore(&key, &file, &target).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} was restored");
        assert!(stderr.contains(place), "{what}: {stderr}");
        assert!(!target.join("db").exists(), "{what}: a store was made");
    }
    // The file as written restores.
    let file = tmp.path().join("intact.backup");
    std::fs::write(&file, &bytes).unwrap();
    let out = restore(&key, &file, &tmp.path().join("restored-ok")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
