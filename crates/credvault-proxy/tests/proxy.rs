//! credvault-proxy end to end: the real vault, the real proxy binary, curl (the
//! real binary) and raw TCP as workers, a fake provider over HTTPS.

mod common;

use std::time::Duration;

use common::*;

const ROUTES: &str = r#"
[[route]]
host = "localhost"
path_prefix = "/api"
credential = "fleetio-acme"
"#;

/// The bench: a fake provider, the vault with `fleetio-acme`, one proxy.
async fn bench(dir: &std::path::Path) -> (Fake, Vault, Admin, ProxyProcess) {
    let fake = Fake::start().await;
    let vault = Vault::start(&fake).await;
    let mut admin = vault.admin().await;
    create(&mut admin, "fleetio-acme", "key-ACME-0000001", "acct-ACME").await;
    let proxy = ProxyProcess::start(&vault, &fake, &dir.join("a"), ROUTES, &[]).await;
    (fake, vault, admin, proxy)
}

#[tokio::test]
async fn curl_through_both_forms_gets_the_providers_answer_with_only_the_held_headers() {
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, _vault, _admin, proxy) = bench(dir.path()).await;

    // Base-URL form: the worker's own Authorization is replaced, not passed on.
    let url = format!("http://{}/c/fleetio-acme/v1/users/me?page=2", proxy.addr);
    let (ok, body, err) = curl(&[
        "-H",
        "Authorization: Token WORKER-OWN",
        "-H",
        "X-Trace: t1",
        &url,
    ])
    .await;
    assert!(ok, "{err}\n{}", proxy.stderr());
    assert_eq!(body, "{\"ok\":true}");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/v1/users/me?page=2");
    assert_eq!(seen[0].values("authorization"), ["Token key-ACME-0000001"]);
    assert_eq!(seen[0].values("account-token"), ["acct-ACME"]);
    assert_eq!(seen[0].values("x-trace"), ["t1"]);

    // Proxy form: HTTPS through CONNECT, the worker trusting the proxy's CA.
    let target = format!("https://localhost:{}/api/v1/vehicles", fake.addr.port());
    let (ok, body, err) = curl(&[
        "--proxy",
        &format!("http://{}", proxy.addr),
        "--cacert",
        proxy.ca_file().to_str().unwrap(),
        "-H",
        "Authorization: Token WORKER-OWN",
        "-H",
        "Account-Token: worker-own",
        &target,
    ])
    .await;
    assert!(ok, "{err}\n{}", proxy.stderr());
    assert_eq!(body, "{\"ok\":true}");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].target, "/api/v1/vehicles");
    assert_eq!(seen[1].values("authorization"), ["Token key-ACME-0000001"]);
    assert_eq!(seen[1].values("account-token"), ["acct-ACME"]);
    assert!(seen[1].values("proxy-authorization").is_empty());
    // One log line per request, never a header value.
    let logs = proxy.stderr();
    assert!(logs.contains("credential=fleetio-acme"), "{logs}");
    assert!(
        !logs.contains("key-ACME") && !logs.contains("WORKER-OWN"),
        "{logs}"
    );
}

#[tokio::test]
async fn ways_out_and_smuggling_are_refused_and_nothing_reaches_the_provider() {
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, _vault, _admin, proxy) = bench(dir.path()).await;
    let host = format!("127.0.0.1:{}", proxy.addr.port());
    for path in [
        "/c/fleetio-acme/../admin",
        "/c/fleetio-acme/v1/../../x",
        "/c/fleetio-acme/%2e%2e/admin",
        "/c/fleetio-acme/%2E%2e/admin",
        "/c/fleetio-acme/.%2e/admin",
        "/c/fleetio-acme/%252e%252e/admin",
        "/c/fleetio-acme/v1%2f..%2fadmin",
        "/c/fleetio-acme/v1%5c..%5cadmin",
        "/c/fleetio-acme//evil.example/x",
        "/c/fleetio-acme/v1%0d%0aX-Injected:%20yes",
        "/c/fleetio-acme/v1?x=%0d%0aX-Injected:%20yes",
        "/c/fleetio-acme@evil.example/x",
        "/c/..%2f..%2fadmin/x",
        "/other/path",
    ] {
        let status = raw(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            status.starts_with("HTTP/1.1 4"),
            "{path}: {status:?}\n{}",
            proxy.stderr()
        );
    }
    // Absolute form to a host no route names; a Host header that disagrees; CONNECT elsewhere.
    for request in [
        "GET http://evil.example/api/x HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_owned(),
        format!(
            "GET http://localhost:{}/api/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            fake.addr.port()
        ),
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_owned(),
        format!("CONNECT localhost:{} HTTP/1.1\r\nHost: localhost\r\n\r\n", fake.addr.port() + 1),
        "GET /c/fleetio-acme/v1 HTTP/1.1\r\nHost: x\r\nHost: y\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_owned(),
    ] {
        let status = raw(proxy.addr, request.as_bytes()).await;
        assert!(status.starts_with("HTTP/1.1 4"), "{request:?}: {status:?}");
    }
    // A path outside the credential's base path in proxy form.
    let outside = format!("http://localhost:{}/admin", fake.addr.port());
    let (_, body, _) = curl(&["--proxy", &format!("http://{}", proxy.addr), &outside]).await;
    assert!(body.contains("credvault-proxy"), "{body}");
    assert!(fake.seen().is_empty(), "the provider saw {:?}", fake.seen());
}

#[tokio::test]
async fn a_429_through_one_proxy_pauses_the_workers_behind_another() {
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, vault, _admin, a) = bench(dir.path()).await;
    let b = ProxyProcess::start(&vault, &fake, &dir.path().join("b"), ROUTES, &[]).await;
    let via = |p: &ProxyProcess| format!("http://{}/c/fleetio-acme/v1/users/me", p.addr);
    // Both hold the headers first.
    for p in [&a, &b] {
        let (ok, _, err) = curl(&["--fail", &via(p)]).await;
        assert!(ok, "{err}");
    }
    fake.answer(Answer {
        status: 429,
        retry_after: Some(3),
        ..Answer::default()
    });
    let (_, _, _) = curl(&[&via(&a)]).await;
    let reached = fake.seen().len();
    fake.answer(Answer::default());
    // The pause reaches proxy B through the vault: answered 429 at once, the provider untouched.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut paused = false;
    while std::time::Instant::now() < deadline {
        let (_, out, _) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{retry-after}",
            &via(&b),
        ])
        .await;
        if out.starts_with("429") {
            paused = true;
            let retry: u64 = out
                .split(' ')
                .nth(1)
                .unwrap_or("0")
                .trim()
                .parse()
                .unwrap_or(0);
            assert!((1..=3).contains(&retry), "{out}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(paused, "proxy B never answered 429\n{}", b.stderr());
    assert_eq!(
        fake.seen().len(),
        reached,
        "a paused request reached the provider"
    );
    // Once Retry-After has passed, requests go again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, _, err) = curl(&["--fail", &via(&b)]).await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn a_rotation_applies_to_the_next_request_and_a_deletion_refuses_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, _vault, mut admin, proxy) = bench(dir.path()).await;
    let url = format!("http://{}/c/fleetio-acme/v1/users/me", proxy.addr);
    assert!(curl(&["--fail", &url]).await.0);
    rotate(&mut admin, "fleetio-acme", "key-ACME-0000002", "acct-ACME").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        assert!(curl(&["--fail", &url]).await.0);
        let last = fake.seen().last().cloned().unwrap();
        if last.values("authorization") == ["Token key-ACME-0000002"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin
        .delete_credential(credvault::api::DeleteCredentialRequest {
            r#ref: Some(credvault::api::delete_credential_request::Ref::Name(
                "fleetio-acme".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = fake.seen().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, out, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]).await;
        if out == "410" || out == "404" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted credential was still served: {out}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled = fake.seen().len();
    let (_, out, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]).await;
    assert!(out == "410" || out == "404", "{out}");
    assert_eq!(
        fake.seen().len(),
        settled,
        "a request for a deleted credential was sent"
    );
    assert!(settled - before <= 1);
}

#[tokio::test]
async fn check_names_a_bad_route_and_ca_prints_the_certificate() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("good.toml"), ROUTES).unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[route]]\nhost = \"localhost\"\ncredential = \"no spaces\"\n",
    )
    .unwrap();
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_credvault-proxy"))
            .args(args)
            .output()
            .unwrap()
    };
    let good = run(vec![
        "check".into(),
        "--routes-file".into(),
        dir.path().join("good.toml").display().to_string(),
    ]);
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).contains("localhost/api/* -> fleetio-acme"));
    let bad = run(vec![
        "check".into(),
        "--routes-file".into(),
        dir.path().join("bad.toml").display().to_string(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("route 1"),
        "{:?}",
        bad
    );
    let ca = run(vec![
        "ca".into(),
        "--ca-dir".into(),
        dir.path().join("ca").display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&ca.stdout).starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
}
