//! Key roots against real key services: OpenBao's Transit (`bao server -dev`) and
//! a SoftHSM2 token. The master keys move file → Transit → HSM → file with
//! nothing lost; Transit that is late, dies or revokes the vault; a wrong key
//! name or PIN refuses the start; no master key reaches the data directory.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use credvault::api;
use credvault::crypto::MasterKey;
use tempfile::TempDir;
use tonic_health::pb::health_check_response::ServingStatus;

/// The health of `service` at `addr`, or the error of the call.
async fn health(addr: std::net::SocketAddr, service: &str) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_err(|s| s.to_string())?;
    Ok(answer.into_inner().status())
}

/// Waits (up to 15 s) until `service` at `addr` answers `want`.
async fn wait_for_health(addr: std::net::SocketAddr, service: &str, want: ServingStatus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = health(addr, service).await;
        if now == Ok(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health of {service:?} stayed {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flags that configure `bao` as the Transit root with `token_file`.
fn transit_args(bao: &Bao, token_file: &Path) -> Vec<String> {
    vec![
        "--transit-address".into(),
        bao.address.clone(),
        "--transit-token-file".into(),
        token_file.to_str().unwrap().into(),
    ]
}

/// `--data-dir` and `--callers-file` of `setup`, without its key file.
fn without_key(setup: &Setup) -> Vec<String> {
    let mut args = Vec::new();
    let mut it = setup.args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap();
        if flag != "--master-key-file" {
            args.extend([flag.clone(), value.clone()]);
        }
    }
    args
}

fn flags(parts: &[&[String]], extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    all.extend(extra.iter().map(|s| (*s).to_owned()));
    all
}

/// A vault set up for Transit: a directory with a callers file (and a key file
/// the flags leave out), OpenBao with a token bound to the policy of
/// docs/key-roots.md, and the token itself.
struct TransitVault {
    tmp: TempDir,
    setup: Setup,
    bao: Bao,
    token: String,
    /// The Transit flags alone (the root configured, not necessarily the provider).
    transit: Vec<String>,
    /// `--data-dir`, `--callers-file`, the Transit flags and `--key-provider transit`.
    args: Vec<String>,
}

impl TransitVault {
    async fn new() -> TransitVault {
        let tmp = TempDir::new().unwrap();
        let setup = write_config(tmp.path());
        let bao = Bao::start().await;
        let (token, token_file) = bao.token_file(tmp.path()).await;
        let transit = transit_args(&bao, &token_file);
        let args = flags(
            &[&without_key(&setup), &transit],
            &["--key-provider", "transit"],
        );
        TransitVault {
            tmp,
            setup,
            bao,
            token,
            transit,
            args,
        }
    }

    /// Its flags, then `extra`.
    fn with(&self, extra: &[&str]) -> Vec<String> {
        flags(&[&self.args], extra)
    }
}

/// Every credential `names` gives exactly the header it was created with.
async fn all_readable(client: &mut Client, names: &[String]) {
    for name in names {
        assert_eq!(
            authorization(client, name).await,
            format!("Token key-of-{name}"),
            "{name}"
        );
    }
}

/// Rewraps everything under the active key: the report of the last batch.
async fn rewrap(client: &mut Client) -> api::RewrapCredentialsResponse {
    rewrap_all(client, 100).await.pop().unwrap()
}

#[tokio::test]
async fn master_keys_move_from_a_file_to_transit_to_an_hsm_and_back_with_nothing_lost() {
    let TransitVault {
        tmp,
        setup,
        bao,
        transit,
        ..
    } = TransitVault::new().await;
    let hsm = SoftHsm::start().await;
    let envs = hsm.envs();
    let mut names: Vec<String> = Vec::new();
    let add = |names: &mut Vec<String>, n: usize| {
        let name = format!("c{n:02}");
        names.push(name.clone());
        name
    };

    // 1. The key file, as before.
    let mut server = Process::serve(&setup.args, &envs, tmp.path())
        .await
        .unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    for n in 0..3 {
        let name = add(&mut names, n);
        create(&mut client, &name, &format!("key-of-{name}"), "acct").await;
    }
    let file_key = rewrap(&mut client).await.active_key_id;
    server.terminate().await;

    // 2. File -> Transit: the first start makes a master key sealed by Transit; the
    // file's key opens the older data until the rewrap moves it, then retires.
    let args = flags(
        &[&setup.args, &transit],
        &[
            "--key-provider",
            "transit",
            "--log-level",
            "info,credvault=debug",
        ],
    );
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    server
        .wait_for_log(&["made a new master key", "transit"])
        .await;
    // A re-read of the key file (SIGHUP) keeps the keys the root unsealed, and its active key.
    server.signal("HUP");
    server
        .wait_for_log(&["keyring read again; unchanged"])
        .await;
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
    let report = rewrap(&mut client).await;
    let transit_key = report.active_key_id.clone();
    assert_ne!(transit_key, file_key);
    // Where each key comes from, as an operator sees it in the rewrap's answer.
    assert_eq!(
        report.key_sources[&transit_key],
        "transit:transit/credvault"
    );
    assert_eq!(report.key_sources[&file_key], "file");
    assert_eq!(
        report.retired_key_ids,
        std::slice::from_ref(&file_key),
        "{report:?}"
    );
    server.terminate().await;

    // 3. Transit alone: no key file at all.
    let args = flags(
        &[&without_key(&setup), &transit],
        &[
            "--key-provider",
            "transit",
            "--key-root-check-interval",
            "200ms",
        ],
    );
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
    let name = add(&mut names, 3);
    create(&mut client, &name, &format!("key-of-{name}"), "acct").await;
    // The Transit key is rotated: the vault rewraps its sealed key to the new version...
    bao.rotate().await;
    server
        .wait_for_log(&["follows the Transit key's new version", "version"])
        .await;
    server.terminate().await;
    // ...so that the old version may be retired, and a restart still opens.
    bao.call(
        "POST",
        "transit/keys/credvault/config",
        serde_json::json!({"min_decryption_version": 2}),
    )
    .await;
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
    server.terminate().await;

    // 4. Transit -> PKCS#11: both roots configured, the HSM seals the new active key.
    let args = flags(
        &[&without_key(&setup), &transit, &hsm.args()],
        &["--key-provider", "pkcs11"],
    );
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    server
        .wait_for_log(&["made a new master key", "pkcs11"])
        .await;
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
    let report = rewrap(&mut client).await;
    let hsm_key = report.active_key_id.clone();
    assert_eq!(report.key_sources[&hsm_key], "pkcs11:credvault-root");
    assert_eq!(
        report.retired_key_ids,
        std::slice::from_ref(&transit_key),
        "{report:?}"
    );
    let name = add(&mut names, 4);
    create(&mut client, &name, &format!("key-of-{name}"), "acct").await;
    server.terminate().await;

    // The HSM alone opens everything; Transit is no longer needed.
    let args = flags(
        &[&without_key(&setup), &hsm.args()],
        &["--key-provider", "pkcs11"],
    );
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
    assert_eq!(rewrap(&mut client).await.active_key_id, hsm_key);
    server.terminate().await;

    // 5. PKCS#11 -> a new key file, and the HSM retired.
    let new_key = tmp.path().join("new.key");
    std::fs::write(&new_key, MasterKey::generate_base64().as_str()).unwrap();
    let file_args = flags(
        &[&without_key(&setup)],
        &["--master-key-file", new_key.to_str().unwrap()],
    );
    let args = flags(&[&file_args, &hsm.args()], &[]);
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    let report = rewrap(&mut client).await;
    assert_eq!(
        report.retired_key_ids,
        std::slice::from_ref(&hsm_key),
        "{report:?}"
    );
    server.terminate().await;
    let mut server = Process::serve(&file_args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
    server.terminate().await;

    // The old key file alone no longer opens the data: it was retired.
    let err = Process::serve(&setup.args, &envs, tmp.path())
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("the master key does not open this data directory"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_transit_at_start_keeps_the_vault_not_serving_until_it_answers() {
    let tmp = TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let bao_port = free_port();
    let token_file = tmp.path().join("bao-token");
    std::fs::write(&token_file, BAO_ROOT_TOKEN).unwrap();
    let args = vec![
        "--transit-address".to_owned(),
        format!("http://127.0.0.1:{bao_port}"),
        "--transit-token-file".into(),
        token_file.to_str().unwrap().into(),
        "--key-provider".into(),
        "transit".into(),
    ];
    let health_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let health_flag = health_addr.to_string();
    let args = flags(
        &[&without_key(&setup), &args],
        &["--health-listen", &health_flag],
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tmp.path().to_owned();
    let starting = tokio::spawn(async move { Process::serve_on(addr, &args, &[], &dir).await });

    // Nothing answers on the Transit port: the process lives (liveness SERVING, on
    // the health-only port too, which Kubernetes' startup and liveness probes ask),
    // the vault service is NOT_SERVING and its calls are UNAVAILABLE.
    wait_for_health(addr, "", ServingStatus::Serving).await;
    wait_for_health(health_addr, "", ServingStatus::Serving).await;
    wait_for_health(addr, api::SERVICE_NAME, ServingStatus::NotServing).await;
    wait_for_health(health_addr, api::SERVICE_NAME, ServingStatus::NotServing).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = api::credential_vault_service_client::CredentialVaultServiceClient::new(channel)
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("key root"), "{status:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // OpenBao comes up: the next try unseals, and the vault serves.
    let _bao = Bao::start_on(bao_port).await;
    let server = starting.await.unwrap().unwrap();
    assert!(
        server.stderr().contains("waiting for the key root"),
        "{}",
        server.stderr()
    );
    wait_for_health(addr, api::SERVICE_NAME, ServingStatus::Serving).await;
    wait_for_health(health_addr, api::SERVICE_NAME, ServingStatus::Serving).await;
    let mut client = server.client(&setup.tokens.admin).await;
    create(&mut client, "late", "key-of-late", "acct").await;
    assert_eq!(
        authorization(&mut client, "late").await,
        "Token key-of-late"
    );
}

#[tokio::test]
async fn a_transit_that_dies_while_serving_leaves_reads_working_within_the_bound_given() {
    let TransitVault {
        tmp,
        setup,
        mut bao,
        args,
        ..
    } = TransitVault::new().await;
    let args = flags(
        &[&args],
        &[
            "--key-root-check-interval",
            "200ms",
            "--key-root-max-unconfirmed",
            "2s",
        ],
    );
    let server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    create(&mut client, "before", "key-of-before", "acct").await;

    bao.kill().await;
    server.wait_for_log(&["the key root does not answer"]).await;
    // Reads and writes go on from the master key held in memory: no call to Transit.
    assert_eq!(
        authorization(&mut client, "before").await,
        "Token key-of-before"
    );
    create(&mut client, "during", "key-of-during", "acct").await;
    assert_eq!(
        authorization(&mut client, "during").await,
        "Token key-of-during"
    );
    assert_eq!(
        health(server.addr, api::SERVICE_NAME).await,
        Ok(ServingStatus::Serving)
    );
    // Past --key-root-max-unconfirmed, readiness and liveness turn NOT_SERVING, so a
    // supervisor restarts the process and the keys held in memory are gone.
    wait_for_health(server.addr, "", ServingStatus::NotServing).await;
    wait_for_health(server.addr, api::SERVICE_NAME, ServingStatus::NotServing).await;
    server
        .wait_for_log(&["liveness is NOT_SERVING so that a restart drops the keys"])
        .await;
}

#[tokio::test]
async fn a_revoked_token_turns_readiness_off_with_its_cause_and_approle_logs_in() {
    let vault = TransitVault::new().await;
    let (tmp, setup, bao, token) = (&vault.tmp, &vault.setup, &vault.bao, vault.token.as_str());
    let metrics = format!("127.0.0.1:{}", free_port());
    let args = vault.with(&[
        "--key-root-check-interval",
        "200ms",
        "--metrics-listen",
        &metrics,
    ]);
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    create(&mut client, "one", "key-of-one", "acct").await;
    assert_eq!(
        health(server.addr, api::SERVICE_NAME).await,
        Ok(ServingStatus::Serving)
    );
    let confirmed = "credvault_key_root_last_confirmed_timestamp_seconds";
    assert!(metric(&metrics, confirmed).await > 1.7e9);
    let unready = "credvault_unready{cause=\"key_root\"}";
    assert_eq!(metric(&metrics, unready).await, 0.0);

    bao.revoke(token).await;
    wait_for_health(server.addr, api::SERVICE_NAME, ServingStatus::NotServing).await;
    let line = server
        .wait_for_log(&["the key root refuses this vault", "permission denied"])
        .await;
    assert!(!line.contains(token), "the token is never logged: {line}");
    wait_for_metric(&metrics, unready, 1.0).await;
    assert!(!server.stderr().contains(token));
    // A new token in the file (what an operator or an agent does) turns it back on.
    let (_, _) = bao.token_file(tmp.path()).await;
    wait_for_health(server.addr, api::SERVICE_NAME, ServingStatus::Serving).await;
    server.terminate().await;

    // AppRole instead of a token file opens the same sealed key.
    bao.call(
        "POST",
        "sys/auth/approle",
        serde_json::json!({"type": "approle"}),
    )
    .await;
    bao.call(
        "POST",
        "auth/approle/role/credvault",
        serde_json::json!({"token_policies": ["credvault"], "token_ttl": "1h"}),
    )
    .await;
    let role_id = bao
        .call(
            "GET",
            "auth/approle/role/credvault/role-id",
            serde_json::json!(null),
        )
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .call(
            "POST",
            "auth/approle/role/credvault/secret-id",
            serde_json::json!({}),
        )
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_file = tmp.path().join("secret-id");
    std::fs::write(&secret_file, &secret_id).unwrap();
    let args = flags(
        &[&without_key(setup)],
        &[
            "--key-provider",
            "transit",
            "--transit-address",
            &bao.address,
            "--transit-approle-role-id",
            &role_id,
            "--transit-approle-secret-id-file",
            secret_file.to_str().unwrap(),
        ],
    );
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    assert_eq!(authorization(&mut client, "one").await, "Token key-of-one");
    assert!(!server.stderr().contains(&secret_id));
    server.terminate().await;
}

#[tokio::test]
async fn a_wrong_transit_key_name_or_a_wrong_pin_refuses_to_start() {
    let vault = TransitVault::new().await;
    let (tmp, setup, bao) = (&vault.tmp, &vault.setup, &vault.bao);
    let args = vault.with(&["--transit-key", "no-such-key"]);
    let err = Process::serve(&args, &[], tmp.path()).await.err().unwrap();
    // Refused at once, not waited on: the start stops with the root's answer.
    assert!(
        err.contains("the key root cannot unseal the master keys"),
        "{err}"
    );
    assert!(!err.contains("waiting for the key root"), "{err}");
    assert!(err.contains("no-such-key"), "{err}");
    assert!(err.contains("its policy does not allow this path"), "{err}");
    // A token whose policy reaches every path (here the root token) hears 404.
    let root_token = tmp.path().join("root-token");
    std::fs::write(&root_token, BAO_ROOT_TOKEN).unwrap();
    let args = flags(
        &[&without_key(setup), &transit_args(bao, &root_token)],
        &["--key-provider", "transit", "--transit-key", "no-such-key"],
    );
    let err = Process::serve(&args, &[], tmp.path()).await.err().unwrap();
    assert!(
        err.contains("there is no Transit key \"no-such-key\""),
        "{err}"
    );

    let hsm = SoftHsm::start().await;
    std::fs::write(&hsm.pin_file, "9999").unwrap();
    let envs = hsm.envs();
    let args = flags(
        &[&without_key(setup), &hsm.args()],
        &["--key-provider", "pkcs11"],
    );
    let err = Process::serve(&args, &envs, tmp.path())
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("the key root cannot unseal the master keys"),
        "{err}"
    );
    assert!(!err.contains("waiting for the key root"), "{err}");
    assert!(err.contains("PIN is wrong"), "{err}");
    assert!(!err.contains("9999"), "the PIN is never shown: {err}");
}

#[tokio::test]
async fn no_master_key_of_a_root_reaches_the_data_directory_in_plain_text() {
    let TransitVault {
        tmp,
        setup,
        bao,
        args,
        ..
    } = TransitVault::new().await;
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    create(&mut client, "one", "key-of-one", "acct").await;
    server.terminate().await;

    // The sealed key as the store keeps it, opened with OpenBao's root token.
    let store = credvault::store::open(&credvault::config::StoreConfig::Sled {
        dir: tmp.path().join("data"),
    })
    .await
    .unwrap();
    use credvault::store::prelude::*;
    let sealed = store
        .meta(credvault::keys::SEALED_KEY_PREFIX)
        .await
        .unwrap();
    assert_eq!(sealed.len(), 1);
    let entry =
        <credvault::keyroot::SealedKey as prost::Message>::decode(sealed[0].1.as_slice()).unwrap();
    let ciphertext = String::from_utf8(entry.blob).unwrap();
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
    drop(store);
    let opened = bao
        .call(
            "POST",
            "transit/decrypt/credvault",
            serde_json::json!({ "ciphertext": ciphertext }),
        )
        .await;
    let b64 = opened["data"]["plaintext"].as_str().unwrap().to_owned();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .unwrap();
    assert_eq!(raw.len(), 32);
    for (path, bytes) in all_files(tmp.path()) {
        assert!(
            !contains(&bytes, &raw),
            "raw master key in {}",
            path.display()
        );
        assert!(
            !contains(&bytes, b64.as_bytes()),
            "base64 master key in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn replicas_on_postgresql_share_the_master_key_sealed_by_transit() {
    let vault = TransitVault::new().await;
    let (tmp, setup) = (&vault.tmp, &vault.setup);
    let url = postgres::PgCluster::shared().new_database().await;
    let args = vault.with(&["--store", "postgres", "--database-url", &url]);
    let first = Process::serve(&args, &[], tmp.path()).await.unwrap();
    first.wait_for_log(&["made a new master key"]).await;
    let mut client = first.client(&setup.tokens.admin).await;
    create(&mut client, "shared", "key-of-shared", "acct").await;

    // The second replica finds the sealed key in the database: no key of its own.
    let second = Process::serve(&args, &[], tmp.path()).await.unwrap();
    assert!(
        !second.stderr().contains("made a new master key"),
        "{}",
        second.stderr()
    );
    let mut other = second.client(&setup.tokens.admin).await;
    assert_eq!(
        authorization(&mut other, "shared").await,
        "Token key-of-shared"
    );
    create(&mut other, "from-b", "key-of-from-b", "acct").await;
    assert_eq!(
        authorization(&mut client, "from-b").await,
        "Token key-of-from-b"
    );
    let a = rewrap(&mut client).await;
    assert_eq!(a.active_key_id, rewrap(&mut other).await.active_key_id);
    assert!(a.retired_key_ids.is_empty(), "{a:?}");
}

#[tokio::test]
async fn a_backup_of_a_transit_vault_restores_and_an_offline_rewrap_moves_it_to_the_hsm() {
    // OpenBao lives as long as `_bao` (its process dies with the value).
    let TransitVault {
        tmp,
        setup,
        bao: _bao,
        transit,
        args,
        ..
    } = TransitVault::new().await;
    let hsm = SoftHsm::start().await;
    let envs = hsm.envs();
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    let names = vec!["a".to_owned(), "b".to_owned()];
    for name in &names {
        create(&mut client, name, &format!("key-of-{name}"), "acct").await;
    }
    let transit_key = rewrap(&mut client).await.active_key_id;
    server.terminate().await;

    // The offline backup and restore unseal the key through Transit: no key file.
    let backup = tmp.path().join("vault.backup");
    let data = tmp.path().join("data");
    let restored = tmp.path().join("restored");
    let cli = |parts: Vec<String>| async move {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let out = run_cli(&parts, &envs).await;
        assert!(out.status.success(), "{:?}: {}", parts, text(&out));
        text(&out)
    };
    let mut command = vec![
        "backup".to_owned(),
        "--data-dir".into(),
        data.to_str().unwrap().into(),
    ];
    command.extend(["--out".into(), backup.to_str().unwrap().into()]);
    cli(flags(&[&command, &transit], &[])).await;
    let mut command = vec![
        "restore".to_owned(),
        "--from".into(),
        backup.to_str().unwrap().into(),
    ];
    command.extend(["--data-dir".into(), restored.to_str().unwrap().into()]);
    let said = cli(flags(&[&command, &transit], &[])).await;
    assert!(said.contains("restored 2 credentials"), "{said}");

    // An offline rewrap of the restored copy moves it to the HSM and retires Transit's key.
    let mut command = vec![
        "rewrap".to_owned(),
        "--data-dir".into(),
        restored.to_str().unwrap().into(),
    ];
    command.extend(["--key-provider".into(), "pkcs11".into()]);
    let said = cli(flags(&[&command, &transit, &hsm.args()], &[])).await;
    assert!(
        said.contains(&format!(
            "key {transit_key}: no credential depends on it any more"
        )),
        "{said}"
    );
    let mut restored_args = vec!["--data-dir".to_owned(), restored.to_str().unwrap().into()];
    restored_args.extend([
        "--callers-file".into(),
        setup.callers.to_str().unwrap().into(),
    ]);
    let args = flags(
        &[&restored_args, &hsm.args()],
        &["--key-provider", "pkcs11"],
    );
    let server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &names).await;
}

#[tokio::test]
async fn an_oversized_or_redirecting_transit_answer_is_refused_not_followed() {
    use credvault::keyroot::{RootError, Transit, TransitAuth, TransitSettings};
    // A hostile (or misplaced) server where OpenBao should be.
    let app = axum::Router::new()
        .route(
            "/v1/auth/token/lookup-self",
            axum::routing::get(|| async { " ".repeat(1 << 20) + "{}" }),
        )
        .route(
            "/v1/transit/keys/credvault",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(
                        "location",
                        "http://attacker.invalid/v1/transit/keys/credvault",
                    )],
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let tmp = TempDir::new().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s.secret-token").unwrap();
    let transit = Transit::new(TransitSettings {
        address,
        mount: "transit".into(),
        key: "credvault".into(),
        auth: TransitAuth::TokenFile(token_file),
        ca_file: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let err = transit.renew().await.unwrap_err();
    assert!(
        matches!(&err, RootError::Unreachable { why, .. } if why.contains("over 65536 bytes")),
        "{err}"
    );
    let err = transit.key_version().await.unwrap_err();
    assert!(
        matches!(&err, RootError::Unreachable { why, .. } if why.contains("not followed")),
        "{err}"
    );
    assert!(!err.to_string().contains("s.secret-token"));
}

#[tokio::test]
async fn a_root_that_hangs_gets_the_ports_opened_meanwhile_sighup_is_ignored_and_sigterm_stops_the_wait(
) {
    let tmp = TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let token_file = tmp.path().join("bao-token");
    std::fs::write(&token_file, BAO_ROOT_TOKEN).unwrap();
    // Connections to "OpenBao" are taken by the kernel and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--key-provider",
            "transit",
        ])
        .args(["--transit-address", &format!("http://{silent_addr}")])
        .args(["--transit-timeout", "60s"])
        .arg("--transit-token-file")
        .arg(&token_file)
        .args(without_key(&setup))
        .env_remove("CREDVAULT_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The first try hangs for a minute; the ports answer long before.
    wait_for_health(addr, "", ServingStatus::Serving).await;
    wait_for_health(addr, api::SERVICE_NAME, ServingStatus::NotServing).await;
    let pid = child.id().unwrap().to_string();
    // A SIGHUP meanwhile (a logrotate's, say) is no reason to stop.
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended the wait");
    wait_for_health(addr, "", ServingStatus::Serving).await;
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("it stops within 10 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(silent);
}

#[tokio::test]
async fn a_new_transit_key_name_or_mount_makes_a_new_master_key_and_the_rewrap_retires_the_old() {
    let tmp = TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let bao = Bao::start().await;
    let token_file = tmp.path().join("root-token");
    std::fs::write(&token_file, BAO_ROOT_TOKEN).unwrap();
    let transit = transit_args(&bao, &token_file);
    let args = flags(
        &[&without_key(&setup), &transit],
        &["--key-provider", "transit"],
    );
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    create(&mut client, "a", "key-of-a", "acct").await;
    let old = rewrap(&mut client).await.active_key_id;
    server.terminate().await;

    bao.call("POST", "transit/keys/credvault-2027", serde_json::json!({}))
        .await;
    let args = flags(
        &[&without_key(&setup), &transit],
        &[
            "--key-provider",
            "transit",
            "--transit-key",
            "credvault-2027",
        ],
    );
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    server
        .wait_for_log(&["made a new master key", "credvault-2027"])
        .await;
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &["a".to_owned()]).await;
    let report = rewrap(&mut client).await;
    assert_ne!(report.active_key_id, old);
    assert_eq!(
        report.retired_key_ids,
        std::slice::from_ref(&old),
        "{report:?}"
    );
    let second = report.active_key_id;
    server.terminate().await;
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &["a".to_owned()]).await;
    server.terminate().await;

    // Another Transit mount: each sealed key remembers the mount that opens it.
    bao.call(
        "POST",
        "sys/mounts/transit-b",
        serde_json::json!({"type": "transit"}),
    )
    .await;
    bao.call("POST", "transit-b/keys/credvault", serde_json::json!({}))
        .await;
    let args = flags(
        &[&without_key(&setup), &transit],
        &["--key-provider", "transit", "--transit-mount", "transit-b"],
    );
    let mut server = Process::serve(&args, &[], tmp.path()).await.unwrap();
    server.wait_for_log(&["made a new master key"]).await;
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &["a".to_owned()]).await;
    let report = rewrap(&mut client).await;
    assert_eq!(
        report.retired_key_ids,
        std::slice::from_ref(&second),
        "{report:?}"
    );
    server.terminate().await;
}

#[tokio::test]
async fn a_new_hsm_key_label_makes_a_new_master_key_and_the_rewrap_retires_the_old() {
    let tmp = TempDir::new().unwrap();
    let setup = write_config(tmp.path());
    let hsm = SoftHsm::start().await;
    let envs = hsm.envs();
    let args = flags(
        &[&without_key(&setup), &hsm.args()],
        &["--key-provider", "pkcs11"],
    );
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    let mut client = server.client(&setup.tokens.admin).await;
    create(&mut client, "a", "key-of-a", "acct").await;
    let old = rewrap(&mut client).await.active_key_id;
    server.terminate().await;

    // A second key in the same token, and the vault pointed at it.
    let out = run_cli(
        &[
            "pkcs11-keygen",
            "--module",
            SOFTHSM_MODULE,
            "--key-label",
            "credvault-root-2",
            "--pin-file",
            hsm.pin_file.to_str().unwrap(),
        ],
        &envs,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let args = flags(&[&args], &["--pkcs11-key-label", "credvault-root-2"]);
    let mut server = Process::serve(&args, &envs, tmp.path()).await.unwrap();
    server
        .wait_for_log(&["made a new master key", "credvault-root-2"])
        .await;
    let mut client = server.client(&setup.tokens.admin).await;
    all_readable(&mut client, &["a".to_owned()]).await;
    let report = rewrap(&mut client).await;
    assert_eq!(
        report.retired_key_ids,
        std::slice::from_ref(&old),
        "{report:?}"
    );
    assert_eq!(
        report.key_sources[&report.active_key_id],
        "pkcs11:credvault-root-2"
    );
    server.terminate().await;
}
