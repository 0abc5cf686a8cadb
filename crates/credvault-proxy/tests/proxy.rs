//! credvault-proxy end to end: the real vault, the real proxy binary, curl (the
//! real binary) and raw TCP as workers, a fake provider over HTTPS.

// A test fails by panicking (unwrap is how it says so); its helpers are one crate's (pub is pub(crate)).
#![allow(clippy::unwrap_used, unreachable_pub)]

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
    bench_with(dir, &[]).await
}

/// [`bench`] with more arguments for the proxy.
async fn bench_with(dir: &std::path::Path, extra: &[&str]) -> (Fake, Vault, Admin, ProxyProcess) {
    let fake = Fake::start().await;
    let vault = Vault::start(&fake).await;
    let mut admin = vault.admin().await;
    create(&mut admin, "fleetio-acme", "key-ACME-0000001", "acct-ACME").await;
    let proxy = ProxyProcess::start(&vault, &fake, &dir.join("a"), ROUTES, extra).await;
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
async fn a_provider_the_proxy_cannot_verify_or_reach_is_a_502_that_says_why() {
    let dir = tempfile::TempDir::new().unwrap();
    let fake = Fake::start().await;
    let vault = Vault::start(&fake).await;
    let mut admin = vault.admin().await;
    create(&mut admin, "fleetio-acme", "key-ACME-0000001", "acct-ACME").await;
    // This proxy trusts another CA than the one that signed the fake's certificate.
    let stranger = Fake::start().await;
    let proxy = ProxyProcess::start(
        &vault,
        &stranger,
        &dir.path().join("a"),
        ROUTES,
        &["--threads", "1"],
    )
    .await;
    let url = format!("http://{}/c/fleetio-acme/v1/users/me", proxy.addr);
    let (_, out, _) = curl(&["-sS", "-w", "\n%{http_code}", &url]).await;
    assert!(out.ends_with("\n502"), "{out}");
    assert!(
        out.contains("could not be reached") && out.contains("certificate"),
        "{out}"
    );
    assert!(
        fake.seen().is_empty(),
        "a request went to an unverified provider"
    );
    // A provider that is not listening: refused at once, the same way.
    drop(fake);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = Fake::start().await;
    let vault = Vault::start_with_base_url(&format!("http://127.0.0.1:{port}/api")).await;
    let mut admin = vault.admin().await;
    create(&mut admin, "fleetio-acme", "key-ACME-0000001", "acct-ACME").await;
    let proxy = ProxyProcess::start(&vault, &unreachable, &dir.path().join("b"), ROUTES, &[]).await;
    let url = format!("http://{}/c/fleetio-acme/v1/users/me", proxy.addr);
    let (_, out, _) = curl(&["-sS", "-w", "\n%{http_code}", &url]).await;
    assert!(out.ends_with("\n502"), "{out}");
    assert!(
        out.contains("could not be reached") && out.contains("refused"),
        "{out}"
    );
    let logs = proxy.stderr();
    assert!(!logs.contains("key-ACME"), "{logs}");
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

#[tokio::test]
async fn python_requests_and_httpx_through_https_proxy_without_our_package() {
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, _vault, _admin, proxy) = bench(dir.path()).await;
    let url = format!("https://localhost:{}/api/v1/users/me", fake.addr.port());
    let script = r#"
import os, sys
import requests, httpx
url, ca = sys.argv[1], sys.argv[2]
# requests reads HTTPS_PROXY from the environment; the proxy's CA is the trust store.
r = requests.get(url, verify=ca, headers={"Authorization": "Token WORKER-OWN"})
assert r.status_code == 200 and r.json() == {"ok": True}, (r.status_code, r.text)
with httpx.Client(verify=ca, trust_env=True) as c:
    h = c.get(url)
    assert h.status_code == 200 and h.json() == {"ok": True}, (h.status_code, h.text)
print("both ok")
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &url, proxy.ca_file().to_str().unwrap()])
        .env("HTTPS_PROXY", format!("http://{}", proxy.addr))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("both ok"),
        "{text}\n{}",
        proxy.stderr()
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for s in seen {
        assert_eq!(s.values("authorization"), ["Token key-ACME-0000001"]);
    }
}

#[tokio::test]
async fn twenty_workers_through_two_proxies_keep_the_accounts_budget() {
    let dir = tempfile::TempDir::new().unwrap();
    let fake = Fake::start().await;
    let vault = Vault::start(&fake).await;
    let mut admin = vault.admin().await;
    admin
        .create_credential(credvault::api::CreateCredentialRequest {
            name: "fleetio-acme".into(),
            secret: Some(credvault::api::create_credential_request::Secret::Fleetio(
                credvault::api::FleetioSecret {
                    api_key: "key-ACME-0000001".into(),
                    account_token: "acct-ACME".into(),
                    api_version: String::new(),
                },
            )),
            request_budget_per_minute: 25,
            ..Default::default()
        })
        .await
        .unwrap();
    let a = ProxyProcess::start(&vault, &fake, &dir.path().join("a"), ROUTES, &[]).await;
    let b = ProxyProcess::start(&vault, &fake, &dir.path().join("b"), ROUTES, &[]).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut workers = Vec::new();
    for i in 0..20 {
        let url = format!(
            "http://{}/c/fleetio-acme/v1/vehicles",
            if i % 2 == 0 { a.addr } else { b.addr }
        );
        let http = http.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut paced) = (0, 0);
            for _ in 0..4 {
                let status = http.get(&url).send().await.unwrap().status().as_u16();
                match status {
                    200 => ok += 1,
                    429 => paced += 1,
                    other => panic!("status {other}"),
                }
            }
            (ok, paced)
        }));
    }
    let (mut ok, mut paced) = (0, 0);
    for w in workers {
        let (o, p) = w.await.unwrap();
        ok += o;
        paced += p;
    }
    // 80 asks, 25 a minute allowed: the rest answered by the proxies, none reached the provider.
    assert_eq!(ok + paced, 80);
    assert!(ok <= 25, "{ok} requests went out on a budget of 25");
    assert!(ok >= 10, "only {ok} went out");
    assert_eq!(fake.seen().len(), ok);
}

/// The resident set of process `pid`, in MB (Linux).
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test]
async fn a_large_download_and_upload_stream_through_with_the_proxys_memory_bounded() {
    const SIZE: u64 = 1 << 30;
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, _vault, _admin, proxy) = bench(dir.path()).await;
    let pid = proxy.child.id().unwrap();
    let url = format!("http://{}/c/fleetio-acme/v1/export", proxy.addr);
    fake.answer(Answer {
        body_bytes: SIZE,
        ..Answer::default()
    });
    // A slow reader: the proxy reads from the provider only as fast as the worker takes it.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let now = (rss_mb(pid) * 10.0) as u64;
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    assert_eq!(got, SIZE);
    // An upload of the same size, streamed from the worker.
    fake.answer(Answer::default());
    let chunk = bytes::Bytes::from(vec![b'u'; 64 * 1024]);
    let body = futures_util::stream::iter(
        (0..SIZE / (64 * 1024)).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let status = http
        .post(&url)
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(fake.seen().last().unwrap().body_bytes, SIZE);
    watch.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 10.0;
    println!(
        "proxy peak RSS {peak:.1} MB while 2 × {} MB streamed",
        SIZE >> 20
    );
    assert!(peak < 64.0, "the proxy's RSS reached {peak:.1} MB");
}

#[tokio::test]
async fn hostile_workers_do_not_starve_an_honest_one() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::TempDir::new().unwrap();
    let (_fake, _vault, _admin, proxy) = bench(dir.path()).await;
    let pid = proxy.child.id().unwrap();
    // 2,000 idle connections (10,000 by hand: CREDVAULT_PROXY_TEST_IDLE=10000), as
    // many as this process may open.
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let wanted = std::env::var("CREDVAULT_PROXY_TEST_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let n = usize::try_from(soft.saturating_sub(512))
        .unwrap_or(0)
        .min(wanted);
    let mut idle = Vec::with_capacity(n);
    let began = std::time::Instant::now();
    while idle.len() < n {
        let batch = (n - idle.len()).min(500);
        let opened = futures_util::future::join_all(
            (0..batch).map(|_| tokio::net::TcpStream::connect(proxy.addr)),
        )
        .await;
        let before = idle.len();
        idle.extend(opened.into_iter().filter_map(Result::ok));
        if idle.len() == before {
            break;
        }
    }
    println!("{} connections opened in {:?}", idle.len(), began.elapsed());
    // Slowloris: headers a byte at a time; and headers of a megabyte.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /c/fleetio-acme/v1 HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let huge = format!(
        "GET /c/fleetio-acme/v1 HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(1 << 20)
    );
    let mut big = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let _ = big.write_all(huge.as_bytes()).await;
    // The honest worker is served at once.
    let url = format!("http://{}/c/fleetio-acme/v1/users/me", proxy.addr);
    let began = std::time::Instant::now();
    let (ok, body, err) = curl(&["--fail", &url]).await;
    let took = began.elapsed();
    assert!(ok && body == "{\"ok\":true}", "{err}");
    println!(
        "{} idle + 50 slowloris + 1 MB headers: honest request in {took:?}, proxy RSS {:.1} MB",
        idle.len(),
        rss_mb(pid)
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        idle.len() >= 1000,
        "only {} connections could be opened",
        idle.len()
    );
    // The idle ones are closed once the header timeout passes (10 s): memory is given back.
    drop(slow);
}

/// Mints a worker's token with the binary: (token, tokens-file entry).
fn mint(name: &str, credentials: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credvault-proxy"))
        .args(["token", "--name", name, "--credentials", credentials])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("# ")
        .to_owned();
    let entry = text.lines().skip(2).collect::<Vec<_>>().join("\n") + "\n";
    assert!(!entry.contains(&token));
    (token, entry)
}

#[tokio::test]
async fn with_a_tokens_file_every_worker_needs_its_token_scoped_and_reloaded_on_sighup() {
    let dir = tempfile::TempDir::new().unwrap();
    let (ingest, ingest_entry) = mint("ingest", "fleetio-*");
    let (other, other_entry) = mint("other", "stripe-*");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("{ingest_entry}\n{other_entry}")).unwrap();
    let (fake, _vault, _admin, proxy) =
        bench_with(dir.path(), &["--tokens-file", tokens.to_str().unwrap()]).await;
    let url = format!("http://{}/c/fleetio-acme/v1/users/me", proxy.addr);
    let status = |token: Option<String>| {
        let url = url.clone();
        async move {
            let mut args = vec![
                "-o".to_owned(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}".into(),
            ];
            if let Some(t) = token {
                args.extend(["-H".into(), format!("Proxy-Authorization: Bearer {t}")]);
            }
            args.push(url);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&refs).await.1
        }
    };
    assert_eq!(status(None).await, "407");
    assert_eq!(status(Some("not-a-token".into())).await, "407");
    assert_eq!(status(Some(other.clone())).await, "403");
    assert_eq!(status(Some(ingest.clone())).await, "200");
    // HTTPS_PROXY with the token as the password.
    let target = format!("https://localhost:{}/api/v1/vehicles", fake.addr.port());
    let (ok, body, err) = curl(&[
        "--proxy",
        &format!("http://ingest:{ingest}@{}", proxy.addr),
        "--cacert",
        proxy.ca_file().to_str().unwrap(),
        &target,
    ])
    .await;
    assert!(ok && body == "{\"ok\":true}", "{err}");
    assert_eq!(
        fake.seen().len(),
        2,
        "only the authorized requests went out"
    );
    // The ingest worker is removed; SIGHUP reloads the file.
    std::fs::write(&tokens, &other_entry).unwrap();
    let pid = proxy.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status(Some(ingest.clone())).await != "407" {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed token still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_listener_beyond_loopback_needs_a_tokens_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credvault-proxy"))
        .args(["serve", "--listen", "0.0.0.0:0", "--vault", "127.0.0.1:9"])
        .env("CREDVAULT_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokens-file"));
}

#[tokio::test]
async fn metrics_count_requests_and_refusals_with_bounded_labels() {
    let dir = tempfile::TempDir::new().unwrap();
    let (_fake, _vault, _admin, proxy) =
        bench_with(dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = proxy
                .stderr()
                .lines()
                .find_map(|l| l.strip_prefix("credvault-proxy metrics on "))
            {
                break format!("http://{addr}/metrics");
            }
            assert!(std::time::Instant::now() < deadline, "{}", proxy.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let base = format!("http://{}", proxy.addr);
    assert!(
        curl(&["--fail", &format!("{base}/c/fleetio-acme/v1/users/me")])
            .await
            .0
    );
    // Refused: a way out, and a credential the vault does not have (no label of its name).
    curl(&[&format!("{base}/c/fleetio-acme/%2e%2e/x")]).await;
    curl(&[&format!("{base}/c/no-such-credential-{}/x", "z".repeat(40))]).await;
    let (ok, text, err) = curl(&["--fail", &metrics]).await;
    assert!(ok, "{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("credvault_proxy_requests_total")
                && l.contains("credential=\"fleetio-acme\"")
                && l.contains("code=\"2xx\"")
                && l.contains("form=\"base\"")),
        "{text}"
    );
    assert!(
        text.contains("credvault_proxy_refused_total{reason=\"target\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("credvault_proxy_refused_total{reason=\"vault\"} 1"),
        "{text}"
    );
    assert!(!text.contains("no-such-credential"), "{text}");
    assert!(
        text.contains("credvault_proxy_response_bytes_total 11"),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_waits_for_every_routed_credential_and_the_ca_is_exported() {
    let dir = tempfile::TempDir::new().unwrap();
    let fake = Fake::start().await;
    let vault = Vault::start(&fake).await;
    let mut admin = vault.admin().await;
    let exported = dir.path().join("exported-ca.pem");
    let proxy = ProxyProcess::start(
        &vault,
        &fake,
        &dir.path().join("p"),
        ROUTES,
        &["--export-ca", exported.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&exported).unwrap(),
        std::fs::read_to_string(proxy.ca_file()).unwrap()
    );
    let ready = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_credvault-proxy"))
            .args(["ready", "--addr", &proxy.addr.to_string()])
            .output()
            .unwrap()
    };
    // The routed credential does not exist yet: NOT_SERVING, naming it.
    let out = ready();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_SERVING: fleetio-acme"),
        "{out:?}"
    );
    create(&mut admin, "fleetio-acme", "key-ACME-0000001", "acct-ACME").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = ready();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_max_wait_a_request_waits_out_the_pause_instead_of_answering_429() {
    let dir = tempfile::TempDir::new().unwrap();
    let (fake, _vault, _admin, proxy) = bench_with(dir.path(), &["--max-wait", "10s"]).await;
    let url = format!("http://{}/c/fleetio-acme/v1/users/me", proxy.addr);
    fake.answer(Answer {
        status: 429,
        retry_after: Some(2),
        ..Answer::default()
    });
    let (_, out, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]).await;
    assert_eq!(out, "429", "the provider's own 429 is passed back");
    fake.answer(Answer::default());
    // The report reaches the vault, which pauses the account; the next request waits it out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = std::time::Instant::now();
    let (_, out, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]).await;
    let waited = began.elapsed();
    assert_eq!(out, "200", "{}", proxy.stderr());
    assert!(
        waited >= Duration::from_millis(1000),
        "it did not wait: {waited:?}"
    );
    assert_eq!(
        fake.seen().len(),
        2,
        "one request during the pause, sent after it"
    );
}
