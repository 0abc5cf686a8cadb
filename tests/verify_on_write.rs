//! Check on write (`verify` / `verify_best_effort`), redirects, expiry and the list filters.

use crate::common::*;
use credvault::api::{self, VerificationStatus as V};
use prost_types::Timestamp;
use tonic::Code;

const GOOD: &str = "key-good-00000001";

async fn setup() -> (FakeFleetio, TestServer, Client) {
    let fake = FakeFleetio::start(vec![
        (
            GOOD,
            Behaviour::Accounts {
                tokens: vec!["acct-1".into()],
                bare: false,
            },
        ),
        ("key-forbidden-03", Behaviour::Status(403)),
        ("key-limited-0004", Behaviour::Status(429)),
        ("key-broken-00005", Behaviour::Status(500)),
    ])
    .await;
    let server = TestServer::start_with(Options {
        fleetio_base_url: fake.base_url.clone(),
        ..Options::default()
    })
    .await;
    let admin = server.admin().await;
    (fake, server, admin)
}

fn checked(name: &str, key: &str, token: &str, best_effort: bool) -> api::CreateCredentialRequest {
    api::CreateCredentialRequest {
        name: name.into(),
        secret: Some(fleetio(key, token, "")),
        verify: true,
        verify_best_effort: best_effort,
        ..Default::default()
    }
}

async fn absent(client: &mut Client, name: &str) -> bool {
    matches!(client.get_credential(by_name_get(name)).await, Err(s) if s.code() == Code::NotFound)
}

#[tokio::test]
async fn definite_rejections_store_nothing_and_name_the_value() {
    let (_fake, _server, mut admin) = setup().await;
    for (name, key, token, names) in [
        ("bad-key", "key-unknown-0009", "acct-1", "api_key"),
        ("bad-token", GOOD, "acct-other", "account_token"),
        ("forbidden", "key-forbidden-03", "acct-1", "forbidden"),
    ] {
        for best_effort in [false, true] {
            let status = admin
                .create_credential(checked(name, key, token, best_effort))
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{name}: {status:?}"
            );
            assert!(
                status.message().contains(names),
                "{name}: {}",
                status.message()
            );
            assert!(
                status.message().contains("nothing was stored"),
                "{}",
                status.message()
            );
            assert!(!status.message().contains(key) && !status.message().contains(token));
            assert!(absent(&mut admin, name).await, "{name} was stored");
        }
    }
}

#[tokio::test]
async fn a_valid_secret_is_stored_with_its_verification() {
    let (_fake, _server, mut admin) = setup().await;
    let c = admin
        .create_credential(checked("good", GOOD, "acct-1", false))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    let v = c.last_verification.unwrap();
    assert_eq!(v.status(), V::Valid);
    assert_eq!(v.http_status, 200);
}

#[tokio::test]
async fn inconclusive_checks_refuse_unless_best_effort() {
    let (_fake, _server, mut admin) = setup().await;
    for (name, key, status) in [
        ("limited", "key-limited-0004", V::RateLimited),
        ("broken", "key-broken-00005", V::ProviderError),
    ] {
        let refused = admin
            .create_credential(checked(name, key, "acct-1", false))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{name}: {refused:?}");
        assert!(
            refused.message().contains("verify_best_effort"),
            "{}",
            refused.message()
        );
        assert!(absent(&mut admin, name).await);
        let stored = admin
            .create_credential(checked(name, key, "acct-1", true))
            .await
            .unwrap()
            .into_inner()
            .credential
            .unwrap();
        assert_eq!(stored.last_verification.unwrap().status(), status, "{name}");
    }

    let server = TestServer::start_with(Options {
        fleetio_base_url: closed_port_url().await,
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let refused = admin
        .create_credential(checked("offline", GOOD, "acct-1", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(absent(&mut admin, "offline").await);
    let stored = admin
        .create_credential(checked("offline", GOOD, "acct-1", true))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(stored.last_verification.unwrap().status(), V::Unreachable);
}

#[tokio::test]
async fn update_with_verify_keeps_the_old_secret_when_refused() {
    let (_fake, _server, mut admin) = setup().await;
    create(&mut admin, "rotating", GOOD, "acct-1").await;
    let rotate = |key: &str, token: &str| api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name("rotating".into())),
        secret: Some(api::update_credential_request::Secret::Fleetio(
            api::FleetioSecret {
                api_key: key.into(),
                account_token: token.into(),
                api_version: String::new(),
            },
        )),
        verify: true,
        ..Default::default()
    };
    let refused = admin
        .update_credential(rotate("key-unknown-0009", "acct-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("api_key"));
    let h = admin
        .get_credential_headers(headers_by_name("rotating"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.headers[0].value, format!("Token {GOOD}"));
    assert_eq!(h.version, 1);

    let refused = admin
        .update_credential(rotate("key-limited-0004", "acct-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);

    let ok = admin
        .update_credential(rotate(GOOD, "acct-1"))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(ok.version, 2);
    assert_eq!(ok.last_verification.unwrap().status(), V::Valid);

    let no_secret = admin
        .update_credential(api::UpdateCredentialRequest {
            r#ref: Some(api::update_credential_request::Ref::Name("rotating".into())),
            description: Some("x".into()),
            verify: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_secret.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_redirect_to_another_host_gets_no_secret() {
    let elsewhere = FakeFleetio::start(vec![(
        GOOD,
        Behaviour::Accounts {
            tokens: vec!["acct-1".into()],
            bare: false,
        },
    )])
    .await;
    let (fake, _server, mut admin) = setup().await;
    fake.set(
        GOOD,
        Behaviour::Redirect(format!("{}/v1/users/me", elsewhere.base_url)),
    );
    create(&mut admin, "redirected", GOOD, "acct-1").await;
    let v = admin
        .verify_credential(verify_by_name("redirected"))
        .await
        .unwrap()
        .into_inner()
        .verification
        .unwrap();
    assert_eq!(v.status(), V::ProviderError);
    assert_eq!(v.http_status, 302);
    assert!(v.message.contains("redirect"), "{}", v.message);
    assert!(
        elsewhere.seen().is_empty(),
        "the other host saw {:?}",
        elsewhere.seen()
    );
    // And on write, a redirect is no definite answer: refused without best effort.
    let refused = admin
        .create_credential(checked("redirected-2", GOOD, "acct-1", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(elsewhere.seen().is_empty());
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

#[tokio::test]
async fn list_filters_by_status_and_expiry() {
    let (_fake, _server, mut admin) = setup().await;
    // valid-a, valid-b: verified VALID; limited: RATE_LIMITED; never: not verified.
    for name in ["valid-a", "valid-b"] {
        admin
            .create_credential(checked(name, GOOD, "acct-1", false))
            .await
            .unwrap();
    }
    admin
        .create_credential(checked("limited", "key-limited-0004", "acct-1", true))
        .await
        .unwrap();
    create(&mut admin, "never", GOOD, "acct-1").await;
    // Expiry: set on create and by update; cleared by update.
    admin
        .create_credential(api::CreateCredentialRequest {
            name: "expiring".into(),
            secret: Some(fleetio(GOOD, "acct-1", "")),
            expire_time: at(1_900_000_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let update = |name: &str, expire_time, clear| api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
        expire_time,
        clear_expire_time: clear,
        ..Default::default()
    };
    let c = admin
        .update_credential(update("valid-a", at(1_800_000_000), false))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(c.expire_time, at(1_800_000_000));
    assert_eq!(c.version, 2, "an expiry change is a change");
    admin
        .update_credential(update("valid-b", at(2_000_000_000), false))
        .await
        .unwrap();
    let c = admin
        .update_credential(update("valid-b", None, true))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(c.expire_time, None);
    let both = admin
        .update_credential(update("valid-b", at(1), true))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let bad = admin
        .update_credential(update(
            "valid-b",
            Some(Timestamp {
                seconds: -5,
                nanos: 0,
            }),
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    async fn names(admin: &mut Client, req: api::ListCredentialsRequest) -> Vec<String> {
        // Page by page, one at a time, to prove tokens carry the filter through.
        let mut out = Vec::new();
        let mut req = api::ListCredentialsRequest {
            page_size: 1,
            ..req
        };
        loop {
            let page = admin
                .list_credentials(req.clone())
                .await
                .unwrap()
                .into_inner();
            out.extend(page.credentials.into_iter().map(|c| c.name));
            if page.next_page_token.is_empty() {
                return out;
            }
            req.page_token = page.next_page_token;
        }
    }
    let by_status = |statuses: &[V]| api::ListCredentialsRequest {
        verification_statuses: statuses.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    };
    assert_eq!(
        names(&mut admin, by_status(&[V::Valid])).await,
        ["valid-a", "valid-b"]
    );
    assert_eq!(
        names(&mut admin, by_status(&[V::RateLimited, V::ApiKeyRejected])).await,
        ["limited"]
    );
    assert_eq!(
        names(&mut admin, by_status(&[V::Unspecified])).await,
        ["never", "expiring"]
    );
    let expiring = api::ListCredentialsRequest {
        expire_before: at(1_950_000_000),
        ..Default::default()
    };
    assert_eq!(names(&mut admin, expiring).await, ["valid-a", "expiring"]);
    let both = api::ListCredentialsRequest {
        expire_before: at(1_950_000_000),
        ..by_status(&[V::Valid])
    };
    assert_eq!(names(&mut admin, both).await, ["valid-a"]);
    assert_eq!(
        names(&mut admin, api::ListCredentialsRequest::default())
            .await
            .len(),
        5
    );
    let unknown = admin
        .list_credentials(api::ListCredentialsRequest {
            verification_statuses: vec![42],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
}
