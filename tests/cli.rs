//! The command line: keygen, token, and clear refusals when configuration is missing.

use std::process::Command;

use crate::common::*;
use credvault::crypto::MasterKey;

fn run(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .env_remove("CREDVAULT_MASTER_KEY")
        .output()
        .unwrap()
}

#[test]
fn keygen_prints_a_fresh_32_byte_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = run(&["keygen"], dir.path());
    let b = run(&["keygen"], dir.path());
    assert!(a.status.success());
    let a = String::from_utf8(a.stdout).unwrap();
    assert!(MasterKey::from_base64(&a).is_ok(), "{a}");
    assert_ne!(a, String::from_utf8(b.stdout).unwrap());
}

#[tokio::test]
async fn a_minted_token_works_with_exactly_its_permissions() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run(
        &[
            "token",
            "--name",
            "ingest-worker",
            "--permissions",
            "headers.read,credentials.read",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("# ")
        .to_owned();
    assert!(token.starts_with("cv_"));
    let entry: String = text.lines().skip(2).map(|l| format!("{l}\n")).collect();
    assert!(
        entry.contains("permissions = [\"credentials.read\", \"headers.read\"]")
            || entry.contains("permissions = [\"headers.read\", \"credentials.read\"]"),
        "{entry}"
    );
    assert!(!entry.contains(&token), "the entry holds only the digest");

    let setup = write_config(dir.path());
    std::fs::write(&setup.callers, entry).unwrap();
    let mut process = Process::serve(&setup.args, &[], dir.path()).await.unwrap();
    let mut client = process.client(&token).await;
    client
        .list_credentials(credvault::api::ListCredentialsRequest::default())
        .await
        .unwrap();
    let denied = client
        .create_credential(credvault::api::CreateCredentialRequest {
            name: "x".into(),
            description: String::new(),
            secret: Some(fleetio("key-00000001", "acct", "")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    process
        .wait_for_log(&["\"caller\":\"ingest-worker\""])
        .await;
    process.terminate().await;
}

#[test]
fn token_refuses_unknown_permissions() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run(
        &["token", "--name", "x", "--permissions", "root"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown permission"));
}

#[test]
fn provider_base_urls_are_checked_before_serving() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend(setup.args.iter().map(String::as_str));
        args.extend(extra);
        let out = run(&args, dir.path());
        assert!(!out.status.success(), "{extra:?} served");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&["--provider-base-url", "acme=http://127.0.0.1:9"]);
    assert!(
        err.contains("no provider is named \"acme\"") && err.contains("fleetio"),
        "{err}"
    );
    let err = serve(&["--provider-base-url", "fleetio"]);
    assert!(err.contains("is not NAME=URL"), "{err}");
    let err = serve(&[
        "--provider-base-url",
        "fleetio=http://127.0.0.1:9/api",
        "--fleetio-base-url",
        "http://127.0.0.1:9/api",
    ]);
    assert!(err.contains("provider fleetio is set twice"), "{err}");
    let err = serve(&["--provider-base-url", "fleetio=ftp://example.com"]);
    assert!(
        err.contains("fleetio base url \"ftp://example.com\" must be an http(s) url"),
        "{err}"
    );
}

#[test]
fn serve_without_key_or_callers_says_how_to_make_them() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run(&["serve", "--listen", "127.0.0.1:0"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no master key") && err.contains("credvault keygen"),
        "{err}"
    );

    let key = dir.path().join("master.key");
    std::fs::write(&key, MasterKey::generate_base64().as_str()).unwrap();
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--master-key-file",
            key.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no callers file") && err.contains("credvault token"),
        "{err}"
    );

    std::fs::write(&key, "bm90IDMyIGJ5dGVz").unwrap();
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--master-key-file",
            key.to_str().unwrap(),
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("must be 32 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn the_master_key_may_come_from_the_environment() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    let tokens = &setup.tokens;
    let key = MasterKey::generate_base64().as_str().to_owned();
    let data = dir.path().join("data");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--callers-file",
        setup.callers.to_str().unwrap(),
    ];
    let mut process = Process::serve(&args, &[("CREDVAULT_MASTER_KEY", &key)], dir.path())
        .await
        .unwrap();
    let mut client = process.client(&tokens.admin).await;
    create(&mut client, "env-keyed", "key-00000001", "acct").await;
    process.terminate().await;

    // Another key in the environment: refused, naming the key id it needs.
    let other = MasterKey::generate_base64().as_str().to_owned();
    let err = Process::serve(&args, &[("CREDVAULT_MASTER_KEY", &other)], dir.path())
        .await
        .err()
        .unwrap();
    assert!(
        err.contains(MasterKey::from_base64(&key).unwrap().id()),
        "{err}"
    );
    assert!(!err.contains(&key) && !err.contains(&other));
}

#[tokio::test]
async fn dev_mode_keeps_its_key_and_token_across_restarts() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut first = Process::serve(&["--dev"], &[], dir.path()).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join(".credvault-dev/dev-token")).unwrap();
    let mut client = first.client(token.trim()).await;
    create(&mut client, "dev-cred", "key-00000001", "acct").await;
    first.terminate().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(".credvault-dev/master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let mut second = Process::serve(&["--dev"], &[], dir.path()).await.unwrap();
    let mut client = second.client(token.trim()).await;
    client
        .get_credential(by_name_get("dev-cred"))
        .await
        .unwrap();
    second.terminate().await;
}

#[test]
fn check_providers_lists_the_declarations_or_names_the_bad_line() {
    let dir = tempfile::TempDir::new().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/providers.example.toml")
        .display()
        .to_string();
    let out = run(
        &["check-providers", "--providers-file", &example],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("fleetio-declared at https://secure.fleetio.com/api: fields api_key (secret), account_token (secret), api_version (plain, optional); headers Authorization, Account-Token, X-Api-Version; verify GET /v1/users/me, after a rejection GET /v1/accounts"),
        "{text}"
    );
    assert!(
        text.contains("samsara at https://api.samsara.com"),
        "{text}"
    );
    assert!(
        text.contains("2 provider(s) declared, beside the built-in fleetio"),
        "{text}"
    );

    let bad = dir.path().join("providers.toml");
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "value = \"Bearer {api_token}\"",
        "value = \"Bearer {api_tokn}\"",
    );
    std::fs::write(&bad, text).unwrap();
    let out = run(
        &[
            "check-providers",
            "--providers-file",
            &bad.display().to_string(),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("providers.toml line") && err.contains("unknown field \"api_tokn\""),
        "{err}"
    );
}
