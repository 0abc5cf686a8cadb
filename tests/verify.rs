//! VerifyCredential against a fake Fleetio served over real HTTP on loopback.

use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api::{self, VerificationStatus as V};
use tonic::Code;

const GOOD_KEY: &str = "key-good-00000001";
const BARE_KEY: &str = "key-bare-00000002";

async fn setup() -> (FakeFleetio, TestServer, Client) {
    let fake = FakeFleetio::start(vec![
        (
            GOOD_KEY,
            Behaviour::Accounts {
                tokens: vec!["acct-1".into(), "acct-2".into()],
                bare: false,
            },
        ),
        (
            BARE_KEY,
            Behaviour::Accounts {
                tokens: vec!["acct-3".into()],
                bare: true,
            },
        ),
        ("key-forbidden-03", Behaviour::Status(403)),
        ("key-limited-0004", Behaviour::Status(429)),
        ("key-broken-00005", Behaviour::Status(500)),
        ("key-redirect-006", Behaviour::Status(302)),
        ("key-slow-0000007", Behaviour::Slow(Duration::from_secs(5))),
    ])
    .await;
    let server = TestServer::start_with(Options {
        fleetio_base_url: fake.base_url.clone(),
        request_timeout: Duration::from_millis(600),
        ..Options::default()
    })
    .await;
    let admin = server.admin().await;
    (fake, server, admin)
}

async fn verify(client: &mut Client, name: &str) -> (api::Verification, api::Credential) {
    let r = client
        .verify_credential(verify_by_name(name))
        .await
        .unwrap()
        .into_inner();
    (r.verification.unwrap(), r.credential.unwrap())
}

#[tokio::test]
async fn each_provider_answer_maps_to_a_status() {
    let (fake, _server, mut admin) = setup().await;
    let cases: Vec<(&str, &str, &str, V, i32)> = vec![
        ("valid", GOOD_KEY, "acct-2", V::Valid, 200),
        (
            "bare-list-token-rejected",
            BARE_KEY,
            "acct-9",
            V::AccountTokenRejected,
            401,
        ),
        (
            "token-rejected",
            GOOD_KEY,
            "acct-unknown",
            V::AccountTokenRejected,
            401,
        ),
        (
            "key-rejected",
            "key-unknown-0008",
            "acct-1",
            V::ApiKeyRejected,
            401,
        ),
        ("forbidden", "key-forbidden-03", "acct-1", V::Forbidden, 403),
        ("limited", "key-limited-0004", "acct-1", V::RateLimited, 429),
        (
            "broken",
            "key-broken-00005",
            "acct-1",
            V::ProviderError,
            500,
        ),
        (
            "redirected",
            "key-redirect-006",
            "acct-1",
            V::ProviderError,
            302,
        ),
    ];
    for (name, key, token, status, http) in cases {
        create(&mut admin, name, key, token).await;
        let (v, credential) = verify(&mut admin, name).await;
        assert_eq!(v.status(), status, "{name}: {v:?}");
        assert_eq!(v.http_status, http, "{name}");
        assert!(v.check_time.is_some(), "{name}");
        assert!(!v.message.is_empty(), "{name}");
        assert!(
            !v.message.contains(key) && !v.message.contains(token),
            "{name}: message leaks: {}",
            v.message
        );
        if status == V::RateLimited {
            assert_eq!(v.retry_after_seconds, 7);
        }
        // A rejection names the refused field, as the generic form reads it.
        let field = match status {
            V::ApiKeyRejected => "api_key",
            V::AccountTokenRejected => "account_token",
            _ => "",
        };
        assert_eq!(v.rejected_field, field, "{name}");
        // Stored as last_verification, visible to readers.
        assert_eq!(credential.last_verification.as_ref(), Some(&v), "{name}");
        let got = admin
            .get_credential(by_name_get(name))
            .await
            .unwrap()
            .into_inner()
            .credential
            .unwrap();
        assert_eq!(got.last_verification, Some(v), "{name}");
        assert_eq!(got.version, 1, "verification does not bump the version");
    }

    // The fake saw exactly the headers workers would send, and our User-Agent.
    let seen = fake.seen();
    let me: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/api/v1/users/me")
        .collect();
    assert!(me.iter().all(|s| s
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Token "))));
    assert!(me.iter().all(|s| s.account_token.is_some()));
    assert!(me.iter().all(|s| s
        .user_agent
        .as_deref()
        .is_some_and(|u| u.starts_with("credvault/"))));
    // The accounts list is asked with the Authorization header alone.
    let accounts: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/api/v1/accounts")
        .collect();
    assert!(!accounts.is_empty());
    assert!(accounts
        .iter()
        .all(|s| s.account_token.is_none() && s.authorization.is_some()));
    // A redirect is not followed.
    assert!(seen.iter().all(|s| s.path.starts_with("/api/v1/")));
}

#[tokio::test]
async fn api_version_is_sent_when_set() {
    let (fake, _server, mut admin) = setup().await;
    admin
        .create_credential(api::CreateCredentialRequest {
            name: "pinned".into(),
            description: String::new(),
            secret: Some(fleetio(GOOD_KEY, "acct-1", "2024-03-15")),
            ..Default::default()
        })
        .await
        .unwrap();
    let (v, _) = verify(&mut admin, "pinned").await;
    assert_eq!(v.status(), V::Valid);
    let seen = fake.seen();
    assert_eq!(
        seen.last().unwrap().api_version.as_deref(),
        Some("2024-03-15")
    );
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some(&*format!("Token {GOOD_KEY}"))
    );
    assert_eq!(
        seen.last().unwrap().account_token.as_deref(),
        Some("acct-1")
    );
}

#[tokio::test]
async fn a_slow_provider_times_out_instead_of_hanging() {
    let (_fake, _server, mut admin) = setup().await;
    create(&mut admin, "slow", "key-slow-0000007", "acct-1").await;
    let start = Instant::now();
    let (v, _) = verify(&mut admin, "slow").await;
    assert_eq!(v.status(), V::Unreachable, "{v:?}");
    assert_eq!(v.http_status, 0);
    assert!(v.message.contains("did not answer"), "{}", v.message);
    // Bounded by the configured 600 ms timeout, well before the fake's 5 s answer.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "verify took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_reported() {
    let server = TestServer::start_with(Options {
        fleetio_base_url: closed_port_url().await,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "nowhere", GOOD_KEY, "acct-1").await;
    let (v, credential) = verify(&mut admin, "nowhere").await;
    assert_eq!(v.status(), V::Unreachable, "{v:?}");
    assert!(v.message.contains("could not connect"), "{}", v.message);
    assert_eq!(credential.last_verification, Some(v));
}

#[tokio::test]
async fn rotation_clears_the_old_verification_and_unknown_ids_fail() {
    let (_fake, _server, mut admin) = setup().await;
    create(&mut admin, "rotating", GOOD_KEY, "acct-1").await;
    let (v, _) = verify(&mut admin, "rotating").await;
    assert_eq!(v.status(), V::Valid);
    let updated = admin
        .update_credential(rotation("rotating", "key-unknown-0008", "acct-1"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert!(
        updated.last_verification.is_none(),
        "a new secret is unverified"
    );
    let (v, _) = verify(&mut admin, "rotating").await;
    assert_eq!(v.status(), V::ApiKeyRejected);

    let status = admin
        .verify_credential(verify_by_name("ghost"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
