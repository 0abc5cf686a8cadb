//! Providers declared in a file (`--providers-file`): a declared Fleetio
//! against the built-in one, two declared providers end to end through grpcurl
//! and the generated client (with no secret leaking anywhere), and reloads that
//! add, break and change declarations without losing a stored secret, and a
//! declared credential through the watch stream.

use std::path::Path;

use crate::common::*;
use credvault::api;
use tonic::Code;

fn generic(provider: &str, fields: &[(&str, &str)]) -> api::GenericSecret {
    api::GenericSecret {
        provider: provider.into(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn create_generic(
    name: &str,
    secret: api::GenericSecret,
    verify: bool,
) -> api::CreateCredentialRequest {
    api::CreateCredentialRequest {
        name: name.into(),
        secret: Some(api::create_credential_request::Secret::Generic(secret)),
        verify,
        ..Default::default()
    }
}

fn update_generic(
    name: &str,
    secret: api::GenericSecret,
    verify: bool,
) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
        secret: Some(api::update_credential_request::Secret::Generic(secret)),
        verify,
        ..Default::default()
    }
}

async fn headers(
    client: &mut Client,
    name: &str,
) -> Result<(Vec<(String, String)>, String), tonic::Status> {
    let out = client
        .get_credential_headers(headers_by_name(name))
        .await?
        .into_inner();
    Ok((pairs(&out.headers), out.base_url))
}

async fn verify(client: &mut Client, name: &str) -> api::Verification {
    client
        .verify_credential(verify_by_name(name))
        .await
        .unwrap_or_else(|s| panic!("verify {name}: {s:?}"))
        .into_inner()
        .verification
        .unwrap()
}

async fn get(client: &mut Client, name: &str) -> api::Credential {
    client
        .get_credential(by_name_get(name))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
}

/// Writes `text` to `path` in one step (a reload never sees half a file).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_declared_fleetio_matches_the_builtin_one() {
    let accounts = || Behaviour::Accounts {
        tokens: vec!["acct-1".into()],
        bare: false,
    };
    let fake = FakeFleetio::start(vec![
        ("key-valid-0001", accounts()),
        ("key-forbid-002", Behaviour::Status(403)),
        ("key-limit-0003", Behaviour::Status(429)),
        ("key-broken-004", Behaviour::Status(500)),
    ])
    .await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/providers.example.toml");
    let server = TestServer::start_with(Options {
        fleetio_base_url: fake.base_url.clone(),
        providers_file: Some(example),
        base_urls: vec![("fleetio-declared".into(), fake.base_url.clone())],
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mut worker = server.client_with(Some(&server.tokens.worker)).await;
    // Fleetio's own two statuses are the generic SECRET_REJECTED with the field named.
    let outcome = |v: &api::Verification| {
        use api::VerificationStatus as S;
        let status = match v.status() {
            S::ApiKeyRejected | S::AccountTokenRejected => S::SecretRejected,
            s => s,
        };
        (
            status,
            v.http_status,
            v.retry_after_seconds,
            v.rejected_field.clone(),
        )
    };
    let cases = [
        (
            "key-valid-0001",
            "acct-1",
            "",
            api::VerificationStatus::Valid,
        ),
        (
            "key-valid-0001",
            "acct-1",
            "2024-03-15",
            api::VerificationStatus::Valid,
        ),
        (
            "key-valid-0001",
            "acct-9",
            "",
            api::VerificationStatus::SecretRejected,
        ),
        (
            "key-unknown-05",
            "acct-1",
            "",
            api::VerificationStatus::SecretRejected,
        ),
        (
            "key-forbid-002",
            "acct-1",
            "",
            api::VerificationStatus::Forbidden,
        ),
        (
            "key-limit-0003",
            "acct-1",
            "",
            api::VerificationStatus::RateLimited,
        ),
        (
            "key-broken-004",
            "acct-1",
            "2024-03-15",
            api::VerificationStatus::ProviderError,
        ),
    ];
    for (n, (key, token, version, want)) in cases.into_iter().enumerate() {
        admin
            .create_credential(api::CreateCredentialRequest {
                name: format!("builtin-{n}"),
                secret: Some(fleetio(key, token, version)),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut fields = vec![("api_key", key), ("account_token", token)];
        if !version.is_empty() {
            fields.push(("api_version", version));
        }
        let declared = admin
            .create_credential(create_generic(
                &format!("declared-{n}"),
                generic("fleetio-declared", &fields),
                false,
            ))
            .await
            .unwrap()
            .into_inner()
            .credential
            .unwrap();
        assert_eq!(declared.provider, "fleetio-declared");
        assert_eq!(declared.api_key_hint, &key[key.len() - 4..]);

        let builtin_headers = headers(&mut worker, &format!("builtin-{n}")).await.unwrap();
        let declared_headers = headers(&mut worker, &format!("declared-{n}"))
            .await
            .unwrap();
        assert_eq!(
            builtin_headers, declared_headers,
            "case {n}: byte-identical headers"
        );
        assert_eq!(declared_headers.1, fake.base_url);

        // Both send the same requests: the same paths, the same headers.
        let requests = |from: usize| {
            fake.seen()[from..]
                .iter()
                .map(|s| {
                    (
                        s.path.clone(),
                        s.authorization.clone(),
                        s.account_token.clone(),
                        s.api_version.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mark = fake.seen().len();
        let b = verify(&mut admin, &format!("builtin-{n}")).await;
        let builtin_requests = requests(mark);
        let mark = fake.seen().len();
        let d = verify(&mut admin, &format!("declared-{n}")).await;
        assert_eq!(builtin_requests, requests(mark), "case {n}");
        assert_eq!(outcome(&b), outcome(&d), "case {n}: {b:?} / {d:?}");
        assert_eq!(d.status(), want, "case {n}: {d:?}");
        // Fleetio's second request: /v1/accounts with the key alone, after a 401.
        let second = builtin_requests
            .iter()
            .any(|r| r.0 == "/api/v1/accounts" && r.2.is_none());
        assert_eq!(
            second,
            want == api::VerificationStatus::SecretRejected,
            "case {n}"
        );
    }
    // The rejections name the field the built-in one names; 429 carries Retry-After.
    let rejected_key = verify(&mut admin, "declared-3").await;
    assert_eq!(rejected_key.rejected_field, "api_key");
    assert_eq!(
        verify(&mut admin, "declared-2").await.rejected_field,
        "account_token"
    );
    assert_eq!(
        verify(&mut admin, "declared-5").await.retry_after_seconds,
        7
    );

    // Unreachable alike: nothing listens at either base URL.
    let closed = closed_port_url().await;
    let server = TestServer::start_with(Options {
        fleetio_base_url: closed.clone(),
        providers_file: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/providers.example.toml"),
        ),
        base_urls: vec![("fleetio-declared".into(), closed)],
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    create(&mut admin, "builtin", "key-valid-0001", "acct-1").await;
    let fields = [("api_key", "key-valid-0001"), ("account_token", "acct-1")];
    admin
        .create_credential(create_generic(
            "declared",
            generic("fleetio-declared", &fields),
            false,
        ))
        .await
        .unwrap();
    let (b, d) = (
        verify(&mut admin, "builtin").await,
        verify(&mut admin, "declared").await,
    );
    assert_eq!(d.status(), api::VerificationStatus::Unreachable, "{d:?}");
    assert_eq!(outcome(&b), outcome(&d));
}

/// Two declared providers: one bearer token; and two secret headers plus a
/// version header (default or set, also in the check's path) with a second
/// request telling which of the two values is wrong.
const PROVIDERS: &str = r#"
[[provider]]
name = "bearer"
base_url = "http://127.0.0.1:9"

[[provider.field]]
name = "token"
allowed = "A-Za-z0-9_"

[[provider.header]]
name = "Authorization"
value = "Bearer {token}"

[provider.verify]
path = "/v1/me"
retry_after_header = "X-RateLimit-Reset"

[[provider]]
name = "duo"
base_url = "http://127.0.0.1:9"
hint_field = "app_id"

[[provider.field]]
name = "app_id"

[[provider.field]]
name = "app_secret"
min_length = 8

[[provider.field]]
name = "version"
secret = false
required = false
default = "2025-01-01"
allowed = "0-9-"

[[provider.header]]
name = "X-App-Id"
value = "{app_id}"

[[provider.header]]
name = "X-App-Secret"
value = "{app_secret}"

[[provider.header]]
name = "X-Api-Version"
value = "{version}"

[provider.verify]
path = "/v2/{version}/whoami"

[provider.verify.diagnose]
path = "/v2/apps/self"
headers = ["X-App-Id"]
rejected_field = { "200" = "app_secret", "404" = "app_id" }
"#;

/// Answers as the two providers' APIs would for the values the tests use.
async fn fake_api() -> FakeApi {
    FakeApi::start(|r| match r.path.as_str() {
        "/v1/me" => match r.header("authorization") {
            "Bearer tokCANARYvalid" | "Bearer tokCANARYnext" => Answer::status(200),
            "Bearer tokCANARYforbid" => Answer::status(403),
            "Bearer tokCANARYlimit" => Answer::status(429).with_header("x-ratelimit-reset", "9"),
            "Bearer tokCANARYbroken" => Answer::status(500),
            _ => Answer::status(401),
        },
        p if p.starts_with("/v2/") && p.ends_with("/whoami") => {
            if r.header("x-app-id") == "appCANARY1" && r.header("x-app-secret") == "secCANARY1xx" {
                Answer::status(200)
            } else {
                Answer::status(401)
            }
        }
        "/v2/apps/self" if r.header("x-app-id") == "appCANARY1" => Answer::status(200),
        _ => Answer::status(404),
    })
    .await
}

/// Serves the real binary with `providers` (its file in `dir`) and `extra` flags.
async fn serve(
    dir: &Path,
    providers: &str,
    extra: &[&str],
) -> (Process, Setup, std::path::PathBuf) {
    let setup = write_config(dir);
    let file = dir.join("providers.toml");
    std::fs::write(&file, providers).unwrap();
    let mut args = setup.args.clone();
    args.extend(["--providers-file".to_owned(), file.display().to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let process = Process::serve(&args, &[], dir).await.unwrap();
    (process, setup, file)
}

#[tokio::test]
async fn two_declared_providers_end_to_end_and_no_secret_leaks() {
    let fake = fake_api().await;
    let dir = tempfile::TempDir::new().unwrap();
    // The declared base URLs, overridden as for a built-in provider.
    let urls = format!("bearer={0},duo={0}", fake.base_url);
    let flags = ["--log-level", "trace", "--provider-base-url", &urls];
    let (mut process, setup, _) = serve(dir.path(), PROVIDERS, &flags).await;
    let addr = process.addr.to_string();
    let auth = format!("authorization: Bearer {}", setup.tokens.admin);
    let mut admin = process.client(&setup.tokens.admin).await;
    let mut worker = process.client(&setup.tokens.worker).await;
    let mut seen = Vec::<String>::new();
    let rpc = |name: &str| format!("credvault.v1.CredentialVaultService/{name}");

    // An operator creates, reads and lists them with grpcurl.
    for (name, body) in [
        (
            "b1",
            r#"{"name": "b1", "generic": {"provider": "bearer", "fields": {"token": "tokCANARYvalid"}}, "verify": true}"#,
        ),
        (
            "d1",
            r#"{"name": "d1", "generic": {"provider": "duo", "fields": {"app_id": "appCANARY1", "app_secret": "secCANARY1xx"}}, "verify": true}"#,
        ),
    ] {
        let out = grpcurl(&[
            "-plaintext",
            "-H",
            &auth,
            "-d",
            body,
            &addr,
            &rpc("CreateCredential"),
        ])
        .await;
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(
            text(&out).contains("VERIFICATION_STATUS_VALID"),
            "{}",
            text(&out)
        );
        seen.push(text(&out));
    }
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"name": "d1"}"#,
        &addr,
        &rpc("GetCredential"),
    ])
    .await;
    assert!(
        // Its hint field, a 10-character secret, is too short to hint at.
        text(&out).contains(r#""provider": "duo""#) && !text(&out).contains("apiKeyHint"),
        "{}",
        text(&out)
    );
    seen.push(text(&out));
    let out = grpcurl(&["-plaintext", "-H", &auth, &addr, &rpc("ListCredentials")]).await;
    assert!(
        text(&out).contains(r#""provider": "bearer""#),
        "{}",
        text(&out)
    );
    seen.push(text(&out));
    // The default version went into the check's path.
    assert!(fake
        .seen()
        .iter()
        .any(|r| r.path == "/v2/2025-01-01/whoami"));

    // A worker gets exactly the headers to send, and where.
    let base = fake.base_url.clone();
    assert_eq!(
        headers(&mut worker, "b1").await.unwrap(),
        (
            vec![("Authorization".into(), "Bearer tokCANARYvalid".into())],
            base.clone()
        )
    );
    assert_eq!(
        headers(&mut worker, "d1").await.unwrap().0,
        [
            ("X-App-Id".to_owned(), "appCANARY1".to_owned()),
            ("X-App-Secret".to_owned(), "secCANARY1xx".to_owned()),
            ("X-Api-Version".to_owned(), "2025-01-01".to_owned()),
        ]
    );

    // Every outcome of the bearer provider's check.
    use api::VerificationStatus as S;
    for (token, status, http, field, retry) in [
        ("tokCANARYforbid", S::Forbidden, 403, "", 0),
        ("tokCANARYlimit", S::RateLimited, 429, "", 9),
        ("tokCANARYbroken", S::ProviderError, 500, "", 0),
        ("tokCANARYrevoked", S::SecretRejected, 401, "token", 0),
        ("tokCANARYvalid", S::Valid, 200, "", 0),
    ] {
        let updated = admin
            .update_credential(update_generic(
                "b1",
                generic("bearer", &[("token", token)]),
                false,
            ))
            .await
            .unwrap();
        seen.push(format!("{:?}", updated.into_inner()));
        let v = verify(&mut admin, "b1").await;
        assert_eq!(
            (
                v.status(),
                v.http_status,
                v.rejected_field.as_str(),
                v.retry_after_seconds
            ),
            (status, http, field, retry),
            "{token}: {v:?}"
        );
        seen.push(format!("{v:?}"));
    }
    // The second request tells a wrong app secret from a wrong app id, and
    // carries only the id (a set version replaces the default in path and header).
    for (id, secret, field) in [
        ("appCANARY1", "secCANARYbad", "app_secret"),
        ("appCANARYzz", "secCANARY1xx", "app_id"),
    ] {
        let secret = generic(
            "duo",
            &[
                ("app_id", id),
                ("app_secret", secret),
                ("version", "2024-06-01"),
            ],
        );
        admin
            .update_credential(update_generic("d1", secret, false))
            .await
            .unwrap();
        let v = verify(&mut admin, "d1").await;
        assert_eq!(
            (v.status(), v.rejected_field.as_str(), v.http_status),
            (S::SecretRejected, field, 401),
            "{v:?}"
        );
        seen.push(format!("{v:?}"));
    }
    let requests = fake.seen();
    assert!(requests
        .iter()
        .any(|r| r.path == "/v2/2024-06-01/whoami" && r.header("x-api-version") == "2024-06-01"));
    let diagnoses: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/v2/apps/self")
        .collect();
    assert!(
        !diagnoses.is_empty()
            && diagnoses
                .iter()
                .all(|r| r.header("x-app-secret").is_empty())
    );

    // A rejected secret with verify stores nothing and names the field.
    let refused = admin
        .create_credential(create_generic(
            "b2",
            generic("bearer", &[("token", "tokCANARYrevoked")]),
            true,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("token"), "{}", refused.message());
    seen.push(refused.message().to_owned());
    assert_eq!(
        admin
            .get_credential(by_name_get("b2"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Bad input is refused by name, never echoing a value.
    for (secret, want) in [
        (
            generic("nope", &[("token", "tokCANARYvalid")]),
            "no provider is named \"nope\"",
        ),
        (
            generic("bearer", &[("token", "tokCANARYvalid"), ("tokn", "x")]),
            "bearer has no field \"tokn\"",
        ),
        (generic("bearer", &[]), "bearer.token is required"),
        (
            generic("bearer", &[("token", "tok-CANARY-dash")]),
            "bearer.token holds a character",
        ),
        (
            generic(
                "duo",
                &[("app_id", "appCANARY1"), ("app_secret", "sCANARY")],
            ),
            "duo.app_secret must be 8 to 512",
        ),
        (
            generic("fleetio", &[("api_key", "keyCANARY0001")]),
            "is built in",
        ),
        (generic("", &[]), "generic.provider is required"),
    ] {
        let err = admin
            .create_credential(create_generic("bad", secret, false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{}", err.message());
        seen.push(err.message().to_owned());
    }
    let wrong_kind = admin
        .update_credential(api::UpdateCredentialRequest {
            r#ref: Some(api::update_credential_request::Ref::Name("b1".into())),
            secret: Some(api::update_credential_request::Secret::Generic(generic(
                "duo",
                &[("app_id", "appCANARY1"), ("app_secret", "secCANARY1xx")],
            ))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_kind.code(), Code::FailedPrecondition);
    seen.push(wrong_kind.message().to_owned());

    // Rotation: verified first, a new version, new headers at once.
    let before = get(&mut admin, "b1").await.version;
    let rotated = admin
        .update_credential(update_generic(
            "b1",
            generic("bearer", &[("token", "tokCANARYnext")]),
            true,
        ))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(rotated.version, before + 1);
    assert_eq!(rotated.last_verification.unwrap().status(), S::Valid);
    assert_eq!(
        headers(&mut worker, "b1").await.unwrap().0[0].1,
        "Bearer tokCANARYnext"
    );

    // Deleted with grpcurl: the headers are gone.
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"name": "b1"}"#,
        &addr,
        &rpc("DeleteCredential"),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        headers(&mut worker, "b1").await.unwrap_err().code(),
        Code::NotFound
    );
    let trail = admin
        .list_audit_events(api::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Each headers read of a declared provider's secret left its event, fingerprinted.
    let reads: Vec<_> = trail
        .events
        .iter()
        .filter(|e| e.method.ends_with("GetCredentialHeaders") && e.code == "OK")
        .collect();
    assert!(
        reads.len() >= 3
            && reads
                .iter()
                .all(|e| e.caller == "worker" && !e.secret_fingerprint.is_empty()),
        "{reads:?}"
    );
    assert!(reads.iter().any(|e| e.credential_name == "d1"));
    seen.push(format!("{trail:?}"));

    // No secret value appears in any response, error, log line, the audit
    // trail or any file on disk (the provider declarations included).
    process.terminate().await;
    let logs = format!("{}{}", process.stdout(), process.stderr());
    assert!(
        logs.contains("GetCredentialHeaders"),
        "the logs are the trace-level ones"
    );
    let mut texts: Vec<(String, Vec<u8>)> = vec![("logs".into(), logs.into_bytes())];
    texts.extend(
        seen.into_iter()
            .map(|s| ("a response".to_owned(), s.into_bytes())),
    );
    texts.extend(
        all_files(dir.path())
            .into_iter()
            .map(|(p, b)| (p.display().to_string(), b)),
    );
    assert!(texts.len() > 30);
    for (what, bytes) in &texts {
        assert!(!contains(bytes, b"CANARY"), "a secret value is in {what}");
    }
}

#[tokio::test]
async fn reloads_add_break_and_change_providers_without_losing_a_secret() {
    let fake = fake_api().await;
    let dir = tempfile::TempDir::new().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    // Each declaration names the fake as its base URL.
    let at = |text: &str| text.replace("http://127.0.0.1:9", &fake.base_url);
    let bearer_only = at(&PROVIDERS[..PROVIDERS.find("[[provider]]\nname = \"duo\"").unwrap()]);
    let (mut process, setup, file) =
        serve(dir.path(), &bearer_only, &["--metrics-listen", &metrics]).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    let mut worker = process.client(&setup.tokens.worker).await;
    let reloaded = r#"credvault_reloads_total{file="providers",outcome="reloaded"}"#;
    let failed = r#"credvault_reloads_total{file="providers",outcome="failed"}"#;
    admin
        .create_credential(create_generic(
            "b",
            generic("bearer", &[("token", "tokCANARYvalid")]),
            false,
        ))
        .await
        .unwrap();
    let unknown = admin
        .create_credential(create_generic(
            "d",
            generic(
                "duo",
                &[("app_id", "appCANARY1"), ("app_secret", "secCANARY1xx")],
            ),
            false,
        ))
        .await
        .unwrap_err();
    assert!(
        unknown.message().contains("no provider is named \"duo\""),
        "{unknown:?}"
    );

    // Added: usable at once, without a restart.
    replace_file(&file, &at(PROVIDERS));
    wait_for_metric(&metrics, reloaded, 1.0).await;
    process.wait_for_log(&["providers reloaded", "duo"]).await;
    let duo = generic(
        "duo",
        &[
            ("app_id", "appCANARY1"),
            ("app_secret", "secCANARY1xx"),
            ("version", "2024-06-01"),
        ],
    );
    admin
        .create_credential(create_generic("d", duo, true))
        .await
        .unwrap();
    let d_headers = headers(&mut worker, "d").await.unwrap();
    assert_eq!(d_headers.0.len(), 3);

    // Broken: refused with file, line and problem; the last good set keeps working.
    replace_file(
        &file,
        &at(PROVIDERS).replace("value = \"{app_secret}\"", "value = \"{app_secert}\""),
    );
    wait_for_metric(&metrics, failed, 1.0).await;
    let line = process
        .wait_for_log(&[
            "providers reload failed",
            "providers.toml line 43",
            "unknown field \\\"app_secert\\\"",
        ])
        .await;
    assert!(!line.contains("CANARY"), "{line}");
    assert_eq!(headers(&mut worker, "d").await.unwrap(), d_headers);
    assert_eq!(
        headers(&mut worker, "b").await.unwrap().0[0].1,
        "Bearer tokCANARYvalid"
    );
    admin
        .create_credential(create_generic(
            "d2",
            generic(
                "duo",
                &[("app_id", "appCANARY1"), ("app_secret", "secCANARY1xx")],
            ),
            false,
        ))
        .await
        .unwrap();

    // Changed: bearer gone and duo without its version field. Nothing is lost:
    // both are reported, b's headers wait, d's are sent without the dropped field.
    let narrowed = PROVIDERS[PROVIDERS.find("[[provider]]\nname = \"duo\"").unwrap()..]
        .replace("[[provider.field]]\nname = \"version\"\nsecret = false\nrequired = false\ndefault = \"2025-01-01\"\nallowed = \"0-9-\"\n", "")
        .replace("[[provider.header]]\nname = \"X-Api-Version\"\nvalue = \"{version}\"\n", "")
        .replace("/v2/{version}/whoami", "/v2/2025-01-01/whoami");
    replace_file(&file, &at(&narrowed));
    wait_for_metric(&metrics, reloaded, 2.0).await;
    let b = get(&mut admin, "b").await;
    assert!(b.provider_undeclared, "{b:?}");
    let refused = headers(&mut worker, "b").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("\"bearer\"") && refused.message().contains("declared again"),
        "{}",
        refused.message()
    );
    let d = get(&mut admin, "d").await;
    assert_eq!(
        (d.undeclared_fields.as_slice(), d.provider_undeclared),
        (&["version".to_owned()][..], false),
        "{d:?}"
    );
    assert_eq!(headers(&mut worker, "d").await.unwrap().0, d_headers.0[..2]);
    assert!(
        get(&mut admin, "d2").await.undeclared_fields.is_empty(),
        "d2 never set a version"
    );

    // A newly required field is reported and holds the headers back until an update.
    replace_file(&file, &at(PROVIDERS).replace("[provider.verify]\npath = \"/v2/", "[[provider.field]]\nname = \"region\"\nsecret = false\n\n[provider.verify]\npath = \"/v2/"));
    wait_for_metric(&metrics, reloaded, 3.0).await;
    assert_eq!(get(&mut admin, "d").await.missing_fields, ["region"]);
    let waits = headers(&mut worker, "d").await.unwrap_err();
    assert_eq!(waits.code(), Code::FailedPrecondition);
    assert!(
        waits.message().contains("duo.region"),
        "{}",
        waits.message()
    );

    // Declared as before: every stored value is back, the dropped one included.
    replace_file(&file, &at(PROVIDERS));
    wait_for_metric(&metrics, reloaded, 4.0).await;
    assert_eq!(headers(&mut worker, "d").await.unwrap(), d_headers);
    assert_eq!(
        headers(&mut worker, "b").await.unwrap().0[0].1,
        "Bearer tokCANARYvalid"
    );
    let d = get(&mut admin, "d").await;
    assert!(
        d.undeclared_fields.is_empty() && d.missing_fields.is_empty() && !d.provider_undeclared
    );
    assert_eq!(metric(&metrics, failed).await, 1.0, "one refusal, no more");
    // SIGHUP reads the file again too.
    process.signal("HUP");
    wait_for_metric(&metrics, reloaded, 5.0).await;
    process
        .wait_for_log(&["providers reloaded", "\"reason\":\"SIGHUP\""])
        .await;
    process.terminate().await;
}

#[tokio::test]
async fn a_bad_providers_file_stops_the_start_with_its_line() {
    let dir = tempfile::TempDir::new().unwrap();
    let setup = write_config(dir.path());
    for (text, want) in [
        (
            PROVIDERS.replace("path = \"/v1/me\"", "path = \"/v1/me?key={token}\""),
            "line 15: bearer: verify.path would put secret field \"token\" in a url",
        ),
        (
            format!("{PROVIDERS}\n[[provider]]\nname = \"bearer\"\n"),
            "line 57: missing field `base_url`",
        ),
        (
            PROVIDERS.replace("name = \"duo\"", "name = \"bearer\""),
            "line 19: provider \"bearer\" is declared twice",
        ),
        (
            PROVIDERS.replace("\"200\" = \"app_secret\"", "\"200\" = \"app_scret\""),
            "line 55: duo: verify.diagnose.rejected_field names unknown field \"app_scret\"",
        ),
    ] {
        let file = dir.path().join("providers.toml");
        std::fs::write(&file, text).unwrap();
        let mut args = setup.args.clone();
        args.extend(["--providers-file".to_owned(), file.display().to_string()]);
        let err = Process::serve(&args, &[], dir.path())
            .await
            .err()
            .expect("refused");
        assert!(
            err.contains("providers file") && err.contains(want),
            "{err}"
        );
    }
}

#[test]
fn the_shipped_declarations_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("deploy/providers.example.toml")).unwrap();
    let names: Vec<_> = credvault::provider::declared::parse(&example)
        .unwrap()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(names, ["fleetio-declared", "samsara"]);
    // The ConfigMap's file (its block under `providers.toml: |`) parses, and
    // uncommented it declares the provider it shows.
    let map =
        std::fs::read_to_string(root.join("deploy/kubernetes/providers-configmap.yaml")).unwrap();
    let block: String = map
        .lines()
        .skip_while(|l| !l.contains("providers.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(credvault::provider::declared::parse(&block)
        .unwrap()
        .is_empty());
    let uncommented = block.replace("# ", "").replace("#\n", "\n");
    assert_eq!(
        credvault::provider::declared::parse(&uncommented).unwrap()[0].name(),
        "samsara"
    );
}

/// The next watch message, within 10 s.
async fn next_watched(
    stream: &mut tonic::Streaming<api::WatchCredentialHeadersResponse>,
) -> api::WatchCredentialHeadersResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("a watch message within 10 s")
        .expect("the stream goes on")
        .expect("a message, not the end")
}

#[tokio::test]
async fn a_declared_credential_is_watched_like_a_fleetio_one() {
    let fake = fake_api().await;
    let dir = tempfile::TempDir::new().unwrap();
    let urls = format!("bearer={0},duo={0}", fake.base_url);
    let (process, setup, _) = serve(dir.path(), PROVIDERS, &["--provider-base-url", &urls]).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    let mut worker = process.client(&setup.tokens.worker).await;
    let secret = |token: &str| generic("bearer", &[("token", token)]);
    admin
        .create_credential(create_generic("b1", secret("tokCANARYvalid"), false))
        .await
        .unwrap();

    let mut stream = worker
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("b1".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    // The first state: exactly what GetCredentialHeaders gives.
    let first = next_watched(&mut stream).await;
    assert_eq!(first.state(), api::WatchState::Present);
    assert!(first.synced);
    assert_eq!(
        (pairs(&first.headers), first.base_url.clone()),
        headers(&mut worker, "b1").await.unwrap()
    );
    assert_eq!(
        pairs(&first.headers),
        vec![("Authorization".into(), "Bearer tokCANARYvalid".into())]
    );

    // A rotation pushes the new headers, at a higher version.
    admin
        .update_credential(update_generic("b1", secret("tokCANARYnext"), false))
        .await
        .unwrap();
    let rotated = next_watched(&mut stream).await;
    assert_eq!(rotated.state(), api::WatchState::Present);
    assert!(rotated.version > first.version);
    assert_eq!(
        pairs(&rotated.headers),
        vec![("Authorization".into(), "Bearer tokCANARYnext".into())]
    );

    // Rotated to a value the provider rejects, then verified: the watcher learns of it.
    admin
        .update_credential(update_generic("b1", secret("tokCANARYrevoked"), false))
        .await
        .unwrap();
    let revoked = next_watched(&mut stream).await;
    assert_eq!(
        pairs(&revoked.headers),
        vec![("Authorization".into(), "Bearer tokCANARYrevoked".into())]
    );
    assert_eq!(
        verify(&mut admin, "b1").await.status(),
        api::VerificationStatus::SecretRejected
    );
    let status = next_watched(&mut stream).await;
    assert_eq!(
        status.last_verification.as_ref().map(|v| v.status()),
        Some(api::VerificationStatus::SecretRejected),
        "{status:?}"
    );
    assert!(
        status.headers.is_empty(),
        "a new status alone re-sends no secret"
    );

    // A deletion ends the headers for good.
    admin
        .delete_credential(api::DeleteCredentialRequest {
            force: false,
            r#ref: Some(api::delete_credential_request::Ref::Name("b1".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let gone = next_watched(&mut stream).await;
    assert_eq!(gone.state(), api::WatchState::Deleted);
    assert!(gone.headers.is_empty());
}

/// A watch of `name` resumed with the headers held: version, id and revision.
async fn resume(
    client: &mut Client,
    name: &str,
    held: &api::WatchCredentialHeadersResponse,
) -> api::WatchCredentialHeadersResponse {
    let mut stream = client
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name(name.into())),
                known_version: held.version,
                known_credential_id: held.credential_id.clone(),
                known_headers_revision: held.headers_revision,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    next_watched(&mut stream).await
}

#[tokio::test]
async fn a_providers_reload_reaches_every_watcher_of_the_credentials_it_changes() {
    let fake = fake_api().await;
    let dir = tempfile::TempDir::new().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let at = |text: &str| text.replace("http://127.0.0.1:9", &fake.base_url);
    let bearer_only = at(&PROVIDERS[..PROVIDERS.find("[[provider]]\nname = \"duo\"").unwrap()]);
    // A long resync: what reaches the watchers is the reload itself.
    let (process, setup, file) = serve(
        dir.path(),
        &bearer_only,
        &[
            "--metrics-listen",
            &metrics,
            "--watch-resync-interval",
            "1h",
        ],
    )
    .await;
    let reloaded = r#"credvault_reloads_total{file="providers",outcome="reloaded"}"#;
    let mut admin = process.client(&setup.tokens.admin).await;
    let mut worker = process.client(&setup.tokens.worker).await;
    admin
        .create_credential(create_generic(
            "acme-w",
            generic("bearer", &[("token", "tokCANARYvalid")]),
            false,
        ))
        .await
        .unwrap();
    let mut stream = worker
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("acme-w".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_watched(&mut stream).await;
    assert_eq!(
        pairs(&first.headers),
        vec![("Authorization".into(), "Bearer tokCANARYvalid".into())]
    );
    let rust_worker = worker_client(&process.url(), &setup.tokens.worker);
    let held = rust_worker.headers("acme-w").await.unwrap();
    assert_eq!(held.headers_revision(), first.headers_revision);

    // The template changes: the same version, new headers, a new revision, pushed.
    replace_file(
        &file,
        &bearer_only.replace("Bearer {token}", "Token {token}"),
    );
    wait_for_metric(&metrics, reloaded, 1.0).await;
    let changed = next_watched(&mut stream).await;
    assert_eq!(changed.state(), api::WatchState::Present);
    assert_eq!(changed.version, first.version);
    assert_ne!(changed.headers_revision, first.headers_revision);
    assert_eq!(
        pairs(&changed.headers),
        vec![("Authorization".into(), "Token tokCANARYvalid".into())]
    );
    let unary = worker
        .get_credential_headers(headers_by_name("acme-w"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unary.headers_revision, changed.headers_revision);
    assert_eq!(pairs(&unary.headers), pairs(&changed.headers));
    until(
        std::time::Duration::from_secs(10),
        "the Rust client holds the new headers",
        || {
            let c = rust_worker.clone();
            async move {
                c.headers("acme-w").await.is_ok_and(|h| {
                    h.iter().any(|(_, v)| v == "Token tokCANARYvalid")
                        && h.headers_revision() == changed.headers_revision
                })
            }
        },
    )
    .await;
    // A resume with the old revision gets the new headers; with the new one, none.
    let resumed = resume(&mut worker, "acme-w", &first).await;
    assert_eq!(pairs(&resumed.headers), pairs(&changed.headers));
    let resumed = resume(&mut worker, "acme-w", &changed).await;
    assert!(resumed.headers.is_empty() && resumed.state() == api::WatchState::Present);

    // A newly required field: the headers cannot be made; every watcher hears why.
    let required = bearer_only.replace(
        "[[provider.header]]",
        "[[provider.field]]\nname = \"region\"\nsecret = false\n\n[[provider.header]]",
    );
    replace_file(&file, &required);
    wait_for_metric(&metrics, reloaded, 2.0).await;
    let unavailable = next_watched(&mut stream).await;
    assert_eq!(
        unavailable.state(),
        api::WatchState::Unavailable,
        "{unavailable:?}"
    );
    assert!(unavailable.headers.is_empty());
    assert!(
        unavailable.message.contains("region"),
        "{}",
        unavailable.message
    );
    let refused = worker
        .get_credential_headers(headers_by_name("acme-w"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let resumed = resume(&mut worker, "acme-w", &changed).await;
    assert_eq!(resumed.state(), api::WatchState::Unavailable, "{resumed:?}");

    // The provider is removed: the same, for the open watch and a resumed one.
    replace_file(
        &file,
        &at(&PROVIDERS[PROVIDERS.find("[[provider]]\nname = \"duo\"").unwrap()..]),
    );
    wait_for_metric(&metrics, reloaded, 3.0).await;
    let gone = next_watched(&mut stream).await;
    assert_eq!(gone.state(), api::WatchState::Unavailable, "{gone:?}");
    assert!(gone.message.contains("bearer"), "{}", gone.message);
    let resumed = resume(&mut worker, "acme-w", &changed).await;
    assert_eq!(resumed.state(), api::WatchState::Unavailable, "{resumed:?}");
    let new_watch = resume(
        &mut worker,
        "acme-w",
        &api::WatchCredentialHeadersResponse::default(),
    )
    .await;
    assert_eq!(new_watch.state(), api::WatchState::Unavailable);
}
