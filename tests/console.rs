//! The operator console (`--console-listen`): a real browser session (Debian
//! chromium + chromedriver, driven by selenium from a fresh virtual environment) as
//! an operator and as a viewer, then plain HTTP for what a browser would not do:
//! forms without their CSRF token or from another origin, a viewer's writes, an
//! expired session, and a scan of every page, header, redirect, log line and audit
//! event for the secrets that were typed in.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use credvault::api;

use super::common::*;

const KEY_OK: &str = "key-CONSOLE-SECRET-0001";
const TOKEN_OK: &str = "acct-CONSOLE-SECRET-0002";
const TOKEN_BAD: &str = "acct-CONSOLE-SECRET-0003";
const KEY_ROTATED: &str = "key-CONSOLE-SECRET-0004";
const TOKEN_ROTATED: &str = "acct-CONSOLE-SECRET-0005";
const SECRETS: [&str; 5] = [KEY_OK, TOKEN_OK, TOKEN_BAD, KEY_ROTATED, TOKEN_ROTATED];

async fn fake_fleetio() -> FakeFleetio {
    FakeFleetio::start(vec![
        (
            KEY_OK,
            Behaviour::Accounts {
                tokens: vec![TOKEN_OK.into()],
                bare: false,
            },
        ),
        (
            KEY_ROTATED,
            Behaviour::Accounts {
                tokens: vec![TOKEN_ROTATED.into()],
                bare: false,
            },
        ),
    ])
    .await
}

/// A server with the console on, and the console's address from its start-up log.
async fn start(dir: &Path, fake: &FakeFleetio, extra: &[&str]) -> (Process, Setup, String) {
    let setup = write_config(dir);
    let mut args = setup.args.clone();
    args.extend(
        [
            "--console-listen",
            "127.0.0.1:0",
            "--provider-base-url",
            &format!("fleetio={}", fake.base_url),
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let process = Process::serve(&args, &[], dir).await.unwrap();
    let log = process.wait_for_log(&["credvault serving"]).await;
    let console = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "credvault serving")
        .and_then(|v| v["console"].as_str().map(str::to_owned))
        .expect("the console's address is logged");
    (process, setup, format!("http://{console}"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Where the browser test saves its screenshots and pages (kept after the run).
fn artifacts() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} holds a secret ({s})");
    }
}

#[tokio::test]
async fn an_operator_works_the_console_in_a_real_browser() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let (process, setup, console) = start(tmp.path(), &fake, &[]).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    // One that expires within 30 days, and enough for two pages.
    let soon = SystemTime::now() + Duration::from_secs(10 * 86_400);
    admin
        .create_credential(api::CreateCredentialRequest {
            name: "fleet-expiring".into(),
            secret: Some(fleetio("key-expiring-0000", "acct", "")),
            expire_time: Some(credvault::record::timestamp(soon)),
            ..Default::default()
        })
        .await
        .unwrap();
    create_numbered(&mut admin, 27, |i| format!("bulk-{i:02}")).await;

    let venv = tmp.path().join("venv");
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    let python = venv.join("bin/python");
    let requirements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser/requirements.txt");
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
        "pip install selenium pytest",
    );
    let shots = artifacts();
    let out = tokio::process::Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/console_browser",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CONSOLE_URL", &console)
        .env("ADMIN_TOKEN", &setup.tokens.admin)
        .env("READER_TOKEN", &setup.tokens.reader)
        .env("ARTIFACTS", &shots)
        .env("KEY_OK", KEY_OK)
        .env("TOKEN_OK", TOKEN_OK)
        .env("TOKEN_BAD", TOKEN_BAD)
        .env("KEY_ROTATED", KEY_ROTATED)
        .env("TOKEN_ROTATED", TOKEN_ROTATED)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}\nscreenshots: {}", shots.display());
    assert!(out.status.success(), "the browser tests failed:\n{text}");

    // Every page the browser was shown, every log line and the audit trail: no secret.
    let mut pages = 0;
    for entry in std::fs::read_dir(&shots).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "html") {
            assert_no_secret(
                &path.display().to_string(),
                &std::fs::read_to_string(&path).unwrap(),
            );
            pages += 1;
        } else {
            assert!(
                std::fs::metadata(&path).unwrap().len() > 1000,
                "{} is a real screenshot",
                path.display()
            );
        }
    }
    assert!(pages >= 13, "{pages} pages saved");
    assert_no_secret("the server's log", &(process.stderr() + &process.stdout()));
    let audit = audit_when(tmp.path(), |a| a.contains("\"ConsoleSignOut\"")).await;
    assert_no_secret("the audit trail", &audit);
    // The console's calls are the RPCs, audited with the console as their channel.
    let console_events: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["channel"] == "console")
        .collect();
    for (method, code) in [
        ("ConsoleSignIn", "OK"),
        ("CreateCredential", "OK"),
        ("CreateCredential", "FAILED_PRECONDITION"),
        ("UpdateCredential", "OK"),
        ("VerifyCredential", "OK"),
        ("RollbackCredential", "OK"),
        ("DeleteCredential", "OK"),
        ("ConsoleSignOut", "OK"),
    ] {
        assert!(
            console_events
                .iter()
                .any(|v| v["method"] == method && v["code"] == code && v["caller"] == "admin"),
            "no console event {method} {code}: {console_events:?}"
        );
    }
    // The rejected pair was never stored; the deleted one is gone.
    let listed = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .credentials
        .iter()
        .all(|c| c.name != "fleet-bad" && c.name != "fleet-main"));
}

/// A cookie-keeping HTTP client that does not follow redirects, keeping every answer.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
    seen: Vec<String>,
}

struct Page {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    fn new(base: &str) -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: HashMap::new(),
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let res = req.header("cookie", cookie).send().await.unwrap();
        let status = res.status().as_u16();
        let mut headers = String::new();
        for (name, value) in res.headers() {
            let value = value.to_str().unwrap_or_default();
            headers.push_str(&format!("{name}: {value}\n"));
            if name == "set-cookie" {
                let pair = value.split(';').next().unwrap();
                let (k, v) = pair.split_once('=').unwrap();
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = res.text().await.unwrap();
        self.seen.push(format!("{status}\n{headers}\n{body}"));
        Page {
            status,
            location,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    async fn sign_in(&mut self, token: &str) -> String {
        let page = self.get("/sign-in").await;
        let sign_in = hidden(&page.body, "sign_in");
        let done = self
            .post("/sign-in", &[("sign_in", &sign_in), ("token", token)], &[])
            .await;
        assert_eq!(
            (done.status, done.location.as_str()),
            (303, "/credentials"),
            "{}",
            done.body
        );
        let list = self.get("/credentials").await;
        assert_eq!(list.status, 200);
        hidden(&list.body, "csrf")
    }
}

/// The value of the first hidden input named `name`.
fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn forms_without_their_token_from_another_origin_or_by_a_viewer_are_refused() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let (process, setup, console) = start(tmp.path(), &fake, &["--metrics-listen", &metrics]).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    let kept = create(&mut admin, "kept", KEY_OK, TOKEN_OK).await;

    let mut b = Browser::new(&console);
    let csrf = b.sign_in(&setup.tokens.admin).await;
    let form = |csrf: &'static str| {
        vec![
            ("csrf", csrf),
            ("provider", "fleetio"),
            ("name", "sneaky"),
            ("api_key", KEY_OK),
            ("account_token", TOKEN_OK),
        ]
    };
    let refused = b.post("/credentials/new", &form(""), &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("CSRF token is missing or stale"));
    let csrf: &'static str = Box::leak(csrf.into_boxed_str());
    let forged = b
        .post(
            "/credentials/new",
            &form("forged-token-forged-token-forged-token-0"),
            &[],
        )
        .await;
    assert_eq!(forged.status, 403);
    for header in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let page = b.post("/credentials/new", &form(csrf), &[header]).await;
        assert_eq!(page.status, 403, "{header:?}");
        assert!(
            page.body.contains("not sent from this console"),
            "{}",
            page.body
        );
    }
    let deleted = b
        .post(
            &format!("/credentials/{}/delete", kept.id),
            &[("confirm_name", "kept")],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(deleted.status, 403);
    // With its token and from its own origin the same form works.
    let origin = console.clone();
    let ok = b
        .post("/credentials/new", &form(csrf), &[("origin", &origin)])
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);

    // A viewer (credentials.read only): no write controls, and the server refuses anyway.
    let mut viewer = Browser::new(&console);
    let csrf = viewer.sign_in(&setup.tokens.reader).await;
    let page = viewer.get(&format!("/credentials/{}", kept.id)).await;
    assert!(
        !page.body.contains("/delete")
            && !page.body.contains("/rotate")
            && !page.body.contains("Add credential")
    );
    let create = viewer
        .post(
            "/credentials/new",
            &[
                ("csrf", &csrf),
                ("provider", "fleetio"),
                ("name", "viewer-made"),
                ("api_key", KEY_OK),
                ("account_token", TOKEN_OK),
            ],
            &[],
        )
        .await;
    assert_eq!(create.status, 403, "{}", create.body);
    assert!(create.body.contains("credentials.write"), "{}", create.body);
    let delete = viewer
        .post(
            &format!("/credentials/{}/delete", kept.id),
            &[("csrf", &csrf), ("confirm_name", "kept")],
            &[],
        )
        .await;
    assert_eq!(delete.status, 403, "{}", delete.body);
    let names: Vec<String> = admin
        .list_credentials(api::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .credentials
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        ["kept", "sneaky"],
        "only the proper form stored anything"
    );

    // The refusals are counted; two sessions are open.
    let refused = metric(&metrics, "credvault_console_requests_total{status=\"403\"}").await;
    assert!(refused >= 6.0, "{refused} refusals counted");
    assert_eq!(metric(&metrics, "credvault_console_sessions").await, 2.0);

    // A wrong token signs nobody in, and is audited.
    let mut stranger = Browser::new(&console);
    let page = stranger.get("/sign-in").await;
    let sign_in = hidden(&page.body, "sign_in");
    let no = stranger
        .post(
            "/sign-in",
            &[("sign_in", &sign_in), ("token", "not-a-token")],
            &[],
        )
        .await;
    assert_eq!(no.status, 401);
    assert!(no.body.contains("invalid bearer token"));
    assert_eq!(stranger.get("/credentials").await.location, "/sign-in");
    let audit = audit_when(tmp.path(), |a| a.contains("UNAUTHENTICATED")).await;
    assert!(audit.lines().any(|l| l.contains("\"ConsoleSignIn\"")
        && l.contains("UNAUTHENTICATED")
        && l.contains("\"console\"")));
}

#[tokio::test]
async fn an_expired_session_goes_back_to_sign_in() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let (_process, setup, console) =
        start(tmp.path(), &fake, &["--console-session-ttl", "1s"]).await;
    let mut b = Browser::new(&console);
    let csrf = b.sign_in(&setup.tokens.admin).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let page = b.get("/credentials").await;
    assert_eq!(
        (page.status, page.location.as_str()),
        (303, "/sign-in?expired=1")
    );
    assert!(
        !b.cookies.contains_key("credvault_session"),
        "the stale cookie is removed"
    );
    let form = b.get("/sign-in?expired=1").await;
    assert!(form.body.contains("Your session expired"));
    // A form of the old session goes to sign-in too, and does nothing.
    let post = b
        .post(
            "/credentials/new",
            &[("csrf", &csrf), ("name", "late")],
            &[],
        )
        .await;
    assert_eq!(post.status, 303);
    assert!(post.location.starts_with("/sign-in"));
}

#[tokio::test]
async fn no_secret_is_in_a_page_header_redirect_or_log_line() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let (process, setup, console) = start(tmp.path(), &fake, &[]).await;
    let mut b = Browser::new(&console);
    let csrf = b.sign_in(&setup.tokens.admin).await;
    let add = |name: &'static str, key: &'static str, token: &'static str, csrf: String| {
        vec![
            ("csrf".to_owned(), csrf),
            ("provider".to_owned(), "fleetio".to_owned()),
            ("name".to_owned(), name.to_owned()),
            ("description".to_owned(), "scan".to_owned()),
            ("api_key".to_owned(), key.to_owned()),
            ("account_token".to_owned(), token.to_owned()),
            ("api_version".to_owned(), "2024-03-15".to_owned()),
            ("verify".to_owned(), "1".to_owned()),
        ]
    };
    // Rejected (re-shown with the error), then saved, then rotated and verified.
    let bad = add("scan", KEY_OK, TOKEN_BAD, csrf.clone());
    let page = b.post("/credentials/new", &refs(&bad), &[]).await;
    assert_eq!(page.status, 422);
    assert!(
        page.body.contains("value=\"2024-03-15\""),
        "the plain API version is kept"
    );
    let good = add("scan", KEY_OK, TOKEN_OK, csrf.clone());
    let saved = b.post("/credentials/new", &refs(&good), &[]).await;
    assert_eq!(saved.status, 303);
    let at = saved.location.split('?').next().unwrap().to_owned();
    b.get(&saved.location).await;
    let rotated = b
        .post(
            &format!("{at}/rotate"),
            &[
                ("csrf", &csrf),
                ("api_key", KEY_ROTATED),
                ("account_token", TOKEN_ROTATED),
                ("verify", "1"),
            ],
            &[],
        )
        .await;
    assert_eq!(rotated.status, 303, "{}", rotated.body);
    let wrong = b
        .post(
            &format!("{at}/rotate"),
            &[
                ("csrf", &csrf),
                ("api_key", KEY_OK),
                ("account_token", TOKEN_BAD),
                ("verify", "1"),
            ],
            &[],
        )
        .await;
    assert_eq!(wrong.status, 422);
    assert!(
        wrong.body.contains("id=\"err-account_token\""),
        "{}",
        wrong.body
    );
    b.post(&format!("{at}/verify"), &[("csrf", &csrf)], &[])
        .await;
    b.get(&at).await;
    b.get("/credentials").await;
    assert!(b.seen.len() >= 8);
    for (i, answer) in b.seen.iter().enumerate() {
        assert_no_secret(&format!("answer {i}"), answer);
    }
    assert_no_secret("the server's log", &(process.stderr() + &process.stdout()));
    let audit = audit_when(tmp.path(), |a| a.contains("\"VerifyCredential\"")).await;
    assert_no_secret("the audit trail", &audit);
    // The secret went where it belongs: Fleetio saw it, and a worker gets it.
    let mut worker = process.client(&setup.tokens.admin).await;
    let headers = worker
        .get_credential_headers(api::GetCredentialHeadersRequest {
            r#ref: Some(api::get_credential_headers_request::Ref::Name(
                "scan".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(headers
        .headers
        .iter()
        .any(|h| h.value == format!("Token {KEY_ROTATED}")));
    assert!(fake
        .seen()
        .iter()
        .any(|s| s.account_token.as_deref() == Some(TOKEN_BAD)));
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn over_tls_the_console_signs_in_by_client_certificate_with_secure_cookies() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "console test ca");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |cn: &str, sans: &[&str], usage| {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
    };
    let server = leaf(
        "credvault",
        &["credvault.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let operator = leaf(
        "ops.internal",
        &["ops.internal"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let tls = [
        "--tls-cert".to_owned(),
        file("server.pem", &server.0),
        "--tls-key".to_owned(),
        file("server.key", &server.1),
        "--client-ca".to_owned(),
        file("ca.pem", &ca.pem()),
    ];
    let fake = fake_fleetio().await;
    let setup = write_config(dir);
    let mut callers = std::fs::read_to_string(&setup.callers).unwrap();
    callers.push_str("\n[[caller]]\nname = \"ops\"\ntls_subject = \"ops.internal\"\npermissions = [\"credentials.read\"]\n");
    std::fs::write(&setup.callers, callers).unwrap();
    let mut args = setup.args.clone();
    args.extend(tls);
    args.extend(["--console-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    args.extend([
        "--provider-base-url".to_owned(),
        format!("fleetio={}", fake.base_url),
    ]);
    let process = Process::serve(&args, &[], dir).await.unwrap();
    let log = process.wait_for_log(&["credvault serving"]).await;
    let addr: std::net::SocketAddr = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "credvault serving")
        .and_then(|v| v["console"].as_str().and_then(|a| a.parse().ok()))
        .unwrap();

    let https = |identity: Option<&(String, String)>| {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .resolve("credvault.test", addr);
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let base = format!("https://credvault.test:{}", addr.port());
    // Plain HTTP to the TLS port is not served.
    assert!(reqwest::get(format!("http://{addr}/sign-in"))
        .await
        .map_or(true, |r| !r.status().is_success()));

    let mut b = Browser::new(&base);
    b.http = https(Some(&operator));
    let page = b.get("/sign-in").await;
    assert!(page.body.contains("Continue as ops"), "{}", page.body);
    let sign_in = hidden(&page.body, "sign_in");
    let done = b
        .post(
            "/sign-in",
            &[("sign_in", &sign_in), ("use_certificate", "1")],
            &[],
        )
        .await;
    assert_eq!((done.status, done.location.as_str()), (303, "/credentials"));
    let headers = b.seen.last().unwrap();
    assert!(
        headers.contains("; Secure") && headers.contains("strict-transport-security"),
        "{headers}"
    );
    let list = b.get("/credentials").await;
    assert!(list.body.contains("Signed in as <strong>ops</strong>"));
    assert!(!list.body.contains("Add credential"), "ops may only read");

    // Without a client certificate there is no certificate sign-in, and a token still works.
    let mut t = Browser::new(&base);
    t.http = https(None);
    let page = t.get("/sign-in").await;
    assert!(!page.body.contains("Continue as"));
    let sign_in = hidden(&page.body, "sign_in");
    let refused = t
        .post(
            "/sign-in",
            &[("sign_in", &sign_in), ("use_certificate", "1")],
            &[],
        )
        .await;
    assert_eq!(refused.status, 401);
    t.sign_in(&setup.tokens.admin).await;
}

#[tokio::test]
async fn a_declared_providers_form_is_drawn_from_its_declaration() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let providers = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/providers.example.toml");
    let (process, setup, console) = start(
        tmp.path(),
        &fake,
        &[
            "--providers-file",
            providers.to_str().unwrap(),
            "--provider-base-url",
            &format!("fleetio-declared={}", fake.base_url),
        ],
    )
    .await;
    let mut b = Browser::new(&console);
    let csrf = b.sign_in(&setup.tokens.admin).await;
    let picker = b.get("/credentials/new").await;
    assert!(
        picker.body.contains("<option value=\"fleetio-declared\">"),
        "{}",
        picker.body
    );
    let form = b.get("/credentials/new?provider=fleetio-declared").await;
    assert!(form.body.contains("fleetio-declared secret"));
    for field in ["f-api_key", "f-account_token", "f-api_version"] {
        assert!(form.body.contains(&format!("id=\"{field}\"")), "{field}");
    }
    let saved = b
        .post(
            "/credentials/new",
            &[
                ("csrf", &csrf),
                ("provider", "fleetio-declared"),
                ("name", "declared"),
                ("api_key", KEY_OK),
                ("account_token", TOKEN_OK),
                ("verify", "1"),
            ],
            &[],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let page = b.get(&saved.location).await;
    assert!(
        page.body.contains("fleetio-declared secret") && page.body.contains(">valid<"),
        "{}",
        page.body
    );
    // Edit: a description and an expiry date, checked and stored as the RPC stores them.
    let at = saved.location.split('?').next().unwrap().to_owned();
    let version = hidden(&page.body, "version");
    let edited = b
        .post(
            &format!("{at}/edit"),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("description", "edited"),
                ("expire_date", "2031-01-31"),
            ],
            &[],
        )
        .await;
    assert_eq!(edited.status, 303, "{}", edited.body);
    let page = b.get(&edited.location).await;
    let (was, now) = (
        hidden(&page.body, "was_description"),
        hidden(&page.body, "was_expire_date"),
    );
    assert_eq!((was.as_str(), now.as_str()), ("edited", "2031-01-31"));
    let current = hidden(&page.body, "version");
    let unchanged = b
        .post(
            &format!("{at}/edit"),
            &[
                ("csrf", &csrf),
                ("version", &current),
                ("description", "edited"),
                ("was_description", "edited"),
                ("expire_date", "2031-01-31"),
                ("was_expire_date", "2031-01-31"),
            ],
            &[],
        )
        .await;
    assert!(
        unchanged.location.ends_with("?done=unchanged"),
        "an unchanged form makes no new version"
    );
    let bad = b
        .post(
            &format!("{at}/edit"),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("description", "stale"),
                ("expire_date", ""),
            ],
            &[],
        )
        .await;
    assert_eq!(bad.status, 409, "an edit of an older version is refused");
    assert!(bad.body.contains("expected 1"), "{}", bad.body);
    let mut admin = process.client(&setup.tokens.admin).await;
    let stored = admin
        .get_credential(api::GetCredentialRequest {
            r#ref: Some(api::get_credential_request::Ref::Name("declared".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(
        (stored.provider.as_str(), stored.description.as_str()),
        ("fleetio-declared", "edited")
    );
    assert_eq!(stored.expire_time.unwrap().seconds, 1_927_670_399);
}

#[tokio::test]
async fn a_flood_of_wrong_sign_ins_and_oversized_forms_stay_bounded() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let (_process, setup, console) = start(tmp.path(), &fake, &[]).await;
    let mut b = Browser::new(&console);
    let page = b.get("/sign-in").await;
    let sign_in = hidden(&page.body, "sign_in");
    for i in 0..200 {
        let token = format!("cv_wrong-{i}");
        let no = b
            .post("/sign-in", &[("sign_in", &sign_in), ("token", &token)], &[])
            .await;
        assert_eq!(no.status, 401);
    }
    audit_when(tmp.path(), |a| a.contains("UNAUTHENTICATED")).await;
    // Whatever was queued is written by now; a flood adds no more lines one by one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = std::fs::read_to_string(tmp.path().join("data/audit.jsonl")).unwrap();
    let audited = audit
        .lines()
        .filter(|l| l.contains("\"ConsoleSignIn\"") && l.contains("UNAUTHENTICATED"))
        .count();
    assert!(
        (1..=credvault::refusals::FULL_PER_PEER as usize).contains(&audited),
        "{audited} refusals audited one by one; the rest are summarized"
    );
    // A form past 64 KiB is refused before it is read whole; sign-in still works.
    let huge = "x".repeat(100 * 1024);
    let big = b
        .post("/sign-in", &[("sign_in", &sign_in), ("token", &huge)], &[])
        .await;
    assert_eq!(big.status, 413);
    b.sign_in(&setup.tokens.admin).await;
}

/// The audit file once `ready` holds of it (events without a secret are written
/// moments after their call is answered).
async fn audit_when(dir: &Path, ready: impl Fn(&str) -> bool) -> String {
    let path = dir.join("data/audit.jsonl");
    let mut text = String::new();
    until(Duration::from_secs(10), "the audit events", || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        std::future::ready(ready(&text))
    })
    .await;
    text
}

#[tokio::test]
async fn idle_and_stalled_console_connections_keep_no_worker_from_its_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = fake_fleetio().await;
    let (process, setup, console) = start(tmp.path(), &fake, &[]).await;
    let mut admin = process.client(&setup.tokens.admin).await;
    create(&mut admin, "held", KEY_OK, TOKEN_OK).await;
    let addr = console.trim_start_matches("http://").to_owned();
    let rss_before = process.rss_mb();

    // 300 idle connections: the console's cap (256) holds, the rest are closed at once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut closed = 0;
    for conn in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(20), conn.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 44, "{closed} of 300 closed at once");
    idle.truncate(256);
    // The worker's hot path is another port, untouched.
    let mut worker = process.client(&setup.tokens.admin).await;
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        worker.get_credential_headers(api::GetCredentialHeadersRequest {
            r#ref: Some(api::get_credential_headers_request::Ref::Name(
                "held".into(),
            )),
        }),
    )
    .await
    .expect("headers while the console is flooded")
    .unwrap();
    assert_eq!(read.into_inner().headers.len(), 2);
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A request whose headers never end, and a form body that stalls.
    let mut headers = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    headers
        .write_all(b"GET /sign-in HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    body.write_all(b"POST /sign-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nsign_in=").await.unwrap();
    let deadline = Duration::from_secs(15);
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(deadline, headers.read_to_end(&mut answer)).await;
    assert!(
        ended.is_ok(),
        "a request whose headers never end is closed (10 s deadline)"
    );
    let mut answer = String::new();
    tokio::time::timeout(deadline, body.read_to_string(&mut answer))
        .await
        .expect("a stalled form body is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Memory stayed put, and the console serves again.
    let grown = process.rss_mb() - rss_before;
    assert!(grown < 20.0, "RSS grew {grown:.1} MB");
    let mut b = Browser::new(&console);
    assert_eq!(b.get("/sign-in").await.status, 200);
}
