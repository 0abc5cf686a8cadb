//! The vault's operations against a real sled store in a temporary directory, with
//! no gRPC in sight: what the server's RPCs rest on, tested below them.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::sync::Arc;

use credvault_core::auth::{callers_entry, Caller, Callers, Permission};
use credvault_core::crypto::{Keyring, MasterKey};
use credvault_core::error::Error;
use credvault_core::keys::{self, SealCounter};
use credvault_core::provider::{fleetio, ProviderSettings, Providers};
use credvault_core::record::CredentialRecord;
use credvault_core::store::SledStore;
use credvault_core::vault::{
    self, Change, CheckOnWrite, CredentialRef, Expiry, ListFilter, NewCredential, Report,
    ReportAction, Vault,
};

/// A vault over the sled store under `dir`.
async fn vault(dir: &std::path::Path) -> Arc<Vault<SledStore>> {
    let keyring = Keyring::single(MasterKey::from_bytes(&[7; 32]));
    let store = SledStore::open(dir).unwrap();
    keys::check_keyring(&store, &keyring).await.unwrap();
    let seals = SealCounter::load(&store).await.unwrap();
    let providers = Providers::new(&ProviderSettings::default()).unwrap();
    Arc::new(Vault::new(Arc::new(store), keyring, seals, providers))
}

/// A caller with every permission, scoped to `globs` when given.
fn caller(globs: Option<&[&str]>) -> Arc<Caller> {
    let mut entry = callers_entry("tester", "token-for-tests", &Permission::ALL);
    if let Some(globs) = globs {
        let list: Vec<String> = globs.iter().map(|g| format!("{g:?}")).collect();
        entry.push_str(&format!("credentials = [{}]\n", list.join(", ")));
    }
    Callers::from_toml(&entry)
        .unwrap()
        .find("token-for-tests")
        .unwrap()
}

fn new(name: &str, key: &str) -> NewCredential {
    NewCredential {
        name: name.into(),
        description: String::new(),
        expire_time: None,
        secret: fleetio::secret(key.into(), "acct-1".into(), String::new()).unwrap(),
        check: CheckOnWrite::No,
        request_budget_per_minute: 0,
    }
}

fn rotate(key: &str) -> Change {
    Change {
        description: None,
        expiry: Expiry::Keep,
        secret: Some(fleetio::secret(key.into(), "acct-1".into(), String::new()).unwrap()),
        check: CheckOnWrite::No,
        expected_version: None,
        request_budget_per_minute: None,
        rollback_of: None,
    }
}

/// The value of header `name` among `headers` ("" when absent).
fn header<'a>(headers: &'a [(Cow<'static, str>, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// The Authorization header the vault hands out for `record` now.
fn authorization<S: credvault_core::store::Store>(
    vault: &Vault<S>,
    record: &CredentialRecord,
) -> String {
    let read = vault.read_headers(record, "worker").unwrap();
    header(&read.headers.headers, "Authorization").to_owned()
}

#[tokio::test]
async fn create_rotate_read_roll_back_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path()).await;
    let me = caller(None);
    let created = vault
        .create(&me, new("fleet-a", "key-00000001"))
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    let at = vault
        .locate(&me, &CredentialRef::Name("fleet-a".into()))
        .await
        .unwrap();
    let record = vault.record(&at).await.unwrap();
    let read = vault.read_headers(&record, "worker").unwrap();
    assert_eq!(
        header(&read.headers.headers, "Authorization"),
        "Token key-00000001"
    );
    assert_eq!(header(&read.headers.headers, "Account-Token"), "acct-1");

    let rotated = vault
        .update(&at, rotate("key-00000002"), "tester")
        .await
        .unwrap();
    assert_eq!(rotated.version, 2);
    let record = vault.record(&at).await.unwrap();
    assert_eq!(authorization(&vault, &record), "Token key-00000002");

    // A stale expectation is refused and changes nothing.
    let mut stale = rotate("key-00000003");
    stale.expected_version = Some(1);
    assert!(matches!(
        vault.update(&at, stale, "tester").await,
        Err(Error::Aborted(_))
    ));
    let record = vault.record(&at).await.unwrap();
    assert_eq!(authorization(&vault, &record), "Token key-00000002");

    let back = vault
        .rollback(&at, 1, None, CheckOnWrite::No, "tester")
        .await
        .unwrap();
    assert_eq!(back.version, 3);
    let record = vault.record(&at).await.unwrap();
    assert_eq!(authorization(&vault, &record), "Token key-00000001");

    let purge = vault.delete(&at, Some(3), false, "tester").await.unwrap();
    assert!(purge.is_some(), "kept for the recovery window");
    assert!(matches!(
        vault
            .locate(&me, &CredentialRef::Name("fleet-a".into()))
            .await,
        Err(Error::NotFound(_))
    ));
    let undeleted = vault.undelete(&me, &created.id).await.unwrap();
    assert_eq!(undeleted.name, "fleet-a");
    assert_eq!(authorization(&vault, &undeleted), "Token key-00000001");
}

#[tokio::test]
async fn a_scoped_caller_sees_and_touches_only_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path()).await;
    let admin = caller(None);
    let scoped = caller(Some(&["team-a-*"]));
    vault
        .create(&admin, new("team-a-1", "key-aaaaaaa1"))
        .await
        .unwrap();
    let other = vault
        .create(&admin, new("team-b-1", "key-bbbbbbb1"))
        .await
        .unwrap();
    assert!(matches!(
        vault.create(&scoped, new("team-b-2", "key-bbbbbbb2")).await,
        Err(Error::PermissionDenied(_))
    ));
    // An id outside the scope is not told from an unknown one.
    let hidden = vault.locate(&scoped, &CredentialRef::Id(other.id)).await;
    assert!(matches!(hidden, Err(Error::PermissionDenied(_))));
    let unknown = vault
        .locate(&scoped, &CredentialRef::Id("0123456789abcdef".into()))
        .await;
    assert!(matches!(unknown, Err(Error::PermissionDenied(_))));
    let page = vault
        .list(&scoped, &ListFilter::default(), None, 10)
        .await
        .unwrap();
    let names: Vec<&str> = page.records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["team-a-1"]);
}

#[tokio::test]
async fn reports_pause_the_account_and_stale_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path()).await;
    let me = caller(None);
    let record = Arc::new(
        vault
            .create(&me, new("fleet-r", "key-rrrrrrr1"))
            .await
            .unwrap(),
    );
    let report = |http_status, retry_after_seconds, version| Report {
        http_status,
        retry_after_seconds,
        version,
    };
    assert!(matches!(
        report(42, 0, 0).check(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        report(429, 10_000_000, 0).check(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(vault::check_lease(0).is_err() && vault::check_lease(1).is_ok());

    let outcome = vault
        .report(Arc::clone(&record), report(500, 0, 1))
        .await
        .unwrap();
    assert_eq!(outcome.action, ReportAction::Ignored);
    assert_eq!(outcome.paused_until_ms, None);

    // A 401 for version 1 of a credential at version 2: rotated since.
    let newer = Arc::new(CredentialRecord {
        version: 2,
        ..(*record).clone()
    });
    let outcome = vault.report(newer, report(401, 0, 1)).await.unwrap();
    assert_eq!(outcome.action, ReportAction::Stale);

    let outcome = vault
        .report(Arc::clone(&record), report(429, 30, 1))
        .await
        .unwrap();
    assert_eq!(outcome.action, ReportAction::Paused);
    let until = outcome.paused_until_ms.unwrap();
    assert_eq!(vault.paused_until(&record), Some(until));
    // Every worker of the account is held: a lease gets nothing until the pause ends.
    let grant = vault.take_tokens(&record, 5).await.unwrap();
    assert_eq!((grant.granted, grant.paused_until_ms), (0, Some(until)));
    let read = vault.read_headers(&record, "worker").unwrap();
    assert_eq!(read.paused_until_ms, Some(until));
}

#[tokio::test]
async fn a_store_opened_with_another_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vault = vault(dir.path()).await;
        vault
            .create(&caller(None), new("fleet-k", "key-kkkkkkk1"))
            .await
            .unwrap();
        vault.flush().await.unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let other = Keyring::single(MasterKey::from_bytes(&[8; 32]));
    assert!(keys::check_keyring(&store, &other).await.is_err());
}
