//! No caller holds what every caller shares, against the real binary: one peer's
//! slow or idle connections leave the console and the metrics port to the others,
//! a flood of refused calls writes a few bytes of log and audit per call, and a
//! caller watching its whole budget of keys neither keeps memory once its streams
//! close nor holds back another worker's pushes.
//!
//! The attacker speaks from 127.0.0.2, the honest user from 127.0.0.1: two peers
//! on this machine's loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use credvault::api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// Whether the server keeps `conn` open for a moment (a connection over a cap is closed at once).
async fn held(conn: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf))
        .await
        .is_err()
}

async fn serve_with(dir: &std::path::Path, extra: &[String]) -> (Process, Setup) {
    let setup = write_config(dir);
    let mut args = setup.args.clone();
    args.extend(extra.iter().cloned());
    let server = Process::serve(&args, &[], dir).await.unwrap();
    (server, setup)
}

#[tokio::test]
async fn one_peer_cannot_hold_the_console_or_the_metrics_port() {
    let dir = tempfile::tempdir().unwrap();
    let console: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (server, _setup) = serve_with(
        dir.path(),
        &[
            format!("--console-listen={console}"),
            format!("--metrics-listen={metrics}"),
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |http: reqwest::Client| async move {
        http.get(format!("http://{console}/sign-in"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(page(http.clone()).await);

    // The attacker: 300 requests that send one header byte a second to the console,
    // and 16 idle connections to the metrics port.
    let mut slow = Vec::new();
    for _ in 0..300 {
        if let Ok(mut conn) = connect_from("127.0.0.2", console).await {
            if conn
                .write_all(b"GET /sign-in HTTP/1.1\r\nX-Slow: ")
                .await
                .is_ok()
            {
                slow.push(conn);
            }
        }
    }
    let mut idle = Vec::new();
    for _ in 0..16 {
        if let Ok(conn) = connect_from("127.0.0.2", metrics).await {
            idle.push(conn);
        }
    }
    // Checked at once, all together (a connection over a cap is closed at once;
    // one held lives until its header deadline).
    let held_console = futures_util::future::join_all(slow.iter_mut().map(held))
        .await
        .into_iter()
        .filter(|h| *h)
        .count();
    let held_metrics = futures_util::future::join_all(idle.iter_mut().map(held))
        .await
        .into_iter()
        .filter(|h| *h)
        .count();
    let drip = tokio::spawn(async move {
        for _ in 0..8 {
            for conn in &mut slow {
                let _ = conn.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    // The operator and Prometheus, meanwhile.
    let mut pages = 0;
    let mut scrapes = 0;
    for _ in 0..31 {
        pages += usize::from(page(http.clone()).await);
    }
    for _ in 0..21 {
        let scraped = http
            .get(format!("http://{metrics}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        scrapes += usize::from(scraped);
    }
    eprintln!(
        "one peer: {held_console} of 300 slow console connections held, {held_metrics} of 16 idle metrics connections held; operator pages served {pages}/31, scrapes {scrapes}/21"
    );
    assert_eq!(pages, 31, "every operator page is served");
    assert_eq!(scrapes, 21, "every scrape is served");
    assert!(
        held_console <= credvault::console::MAX_CONNECTIONS_PER_PEER,
        "{held_console}"
    );
    assert!(
        held_metrics <= credvault::metrics::METRICS_CONNECTIONS_PER_PEER,
        "{held_metrics}"
    );
    let refused = metric(
        &metrics.to_string(),
        "credvault_connections_refused_total{listener=\"console\",reason=\"peer_limit\"}",
    )
    .await;
    assert!(refused >= 200.0, "{refused}");
    drip.abort();

    // Unauthenticated noise writes no log: a 60,000-character path, 2,000 unknown
    // session cookies.
    let before = server.stderr().len();
    let mut conn = connect_from("127.0.0.1", console).await.unwrap();
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "p".repeat(60_000)
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    for i in 0..2000 {
        let r = http
            .get(format!("http://{console}/credentials"))
            .header("cookie", format!("credvault_session={i:064x}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = server.stderr().len() - before;
    eprintln!("log bytes for a 60 KB path and 2,000 unknown cookies: {written}");
    assert!(written < 2_000, "{written} bytes of log");
}

/// Log and audit bytes the server has written so far.
fn written(server: &Process, dir: &std::path::Path) -> usize {
    let audit = std::fs::metadata(dir.join("data/audit.jsonl")).map_or(0, |m| m.len());
    server.stderr().len() + audit as usize
}

#[tokio::test]
async fn refused_calls_of_a_known_caller_cost_a_few_bytes_each() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, setup) = serve_with(dir.path(), &[]).await;
    let mut worker = server.client(&setup.tokens.worker).await;
    let mut admin = server.client(&setup.tokens.admin).await;
    let honest = create(&mut admin, "honest", "honest-key-0001", "acct").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = written(&server, dir.path());
    const DENIED: usize = 5_000;
    const INVALID: usize = 2_000;
    for _ in 0..DENIED {
        // A worker may read headers only.
        let refused = worker
            .list_credentials(api::ListCredentialsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let long = "x".repeat(8 * 1024);
    for _ in 0..INVALID {
        let refused = worker
            .get_credential_headers(headers_by_name(&long))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    // Honest reads in between are audited one by one as ever.
    worker
        .get_credential_headers(headers_by_id(&honest.id))
        .await
        .unwrap();
    // The interval's summaries are written at shutdown at the latest.
    server.terminate().await;
    let after = written(&server, dir.path());
    let per_call = (after - before) as f64 / (DENIED + INVALID) as f64;
    eprintln!(
        "{} refused calls wrote {} bytes of log and audit: {per_call:.2} B per call",
        DENIED + INVALID,
        after - before
    );
    assert!(per_call < 5.0, "{per_call:.2} bytes per refused call");
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    let summary = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["caller"] == "worker"
                && e["code"] == "PERMISSION_DENIED"
                && e["count"].as_u64().is_some()
        })
        .expect("a summary event of the worker's refusals");
    let full = audit
        .lines()
        .filter(|l| l.contains("\"PERMISSION_DENIED\"") && !l.contains("\"count\""))
        .count() as u64;
    assert_eq!(summary["count"].as_u64().unwrap() + full, DENIED as u64);
}

#[tokio::test]
async fn a_flood_of_watched_keys_is_refused_at_its_budget_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (server, setup) = serve_with(
        dir.path(),
        &[
            "--watch-resync-interval=1s".to_owned(),
            format!("--metrics-listen={metrics}"),
        ],
    )
    .await;
    let mut admin = server.client(&setup.tokens.admin).await;
    create(&mut admin, "honest", "honest-key-0001", "acct").await;
    let mut honest = server.client(&setup.tokens.admin).await;
    let mut honest_stream = honest
        .watch_credential_headers(api::WatchCredentialHeadersRequest {
            credentials: vec![api::WatchedCredential {
                r#ref: Some(api::watched_credential::Ref::Name("honest".into())),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    honest_stream.message().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_mb();

    // The worker asks for 1,000 distinct unknown names per stream until refused.
    let mut flood = flood_to_budget(&server, &setup.tokens.worker).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_flood = server.rss_mb();

    // Resyncs of 10,000 keys run every second; the honest watcher's pushes go first.
    let mut latencies = Vec::new();
    for i in 0..10 {
        let update = rotation("honest", &format!("honest-key-{:04}", i + 2), "acct");
        let start = Instant::now();
        admin.update_credential(update).await.unwrap();
        let message = tokio::time::timeout(Duration::from_secs(10), honest_stream.message())
            .await
            .expect("a push within 10 s")
            .unwrap()
            .unwrap();
        latencies.push(start.elapsed());
        assert!(message.version >= 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    latencies.sort();
    // Closed, the streams give back every key; the memory goes back to the
    // allocator, which keeps it for the next one: four more floods reuse it.
    drop(flood);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&metrics, "credvault_watch_keys").await, 1.0);
    let rss_closed = server.rss_mb();
    for _ in 0..4 {
        flood = flood_to_budget(&server, &setup.tokens.worker).await;
        drop(flood);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&metrics, "credvault_watch_keys").await, 1.0);
    assert_eq!(metric(&metrics, "credvault_watch_streams").await, 1.0);
    let rss_after = server.rss_mb();
    eprintln!(
        "watched-key flood: RSS {rss_before:.1} MB -> {rss_flood:.1} MB with 10,000 keys -> {rss_closed:.1} MB closed -> {rss_after:.1} MB after four more floods; honest pushes during resyncs p50 {:?} max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    assert!(
        latencies.last().unwrap() < &Duration::from_secs(5),
        "{latencies:?}"
    );
    assert!(
        rss_flood - rss_before < 40.0,
        "a caller's whole budget took {:.1} MB",
        rss_flood - rss_before
    );
    // Four floods that kept their memory would add four times a flood's cost.
    assert!(
        rss_after - rss_closed < rss_flood - rss_before,
        "memory grew with each flood: {rss_before:.1} -> {rss_flood:.1}, closed {rss_closed:.1} -> {rss_after:.1} MB"
    );
}

/// Opens watch streams of 1,000 distinct unknown names each as `token` until the
/// caller's budget refuses one: the default budget is 10,000 keys.
async fn flood_to_budget(
    server: &Process,
    token: &str,
) -> Vec<(
    Client,
    tonic::Streaming<api::WatchCredentialHeadersResponse>,
)> {
    let mut flood = Vec::new();
    let refused = loop {
        let mut worker = server.client(token).await;
        let from = flood.len() * 1000;
        let request = api::WatchCredentialHeadersRequest {
            credentials: (from..from + 1000)
                .map(|i| api::WatchedCredential {
                    r#ref: Some(api::watched_credential::Ref::Name(format!("no-such-{i}"))),
                    ..Default::default()
                })
                .collect(),
        };
        match worker.watch_credential_headers(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                // Held: its first message came.
                stream.message().await.unwrap().unwrap();
                flood.push((worker, stream));
            }
            Err(status) => break status,
        }
        assert!(flood.len() <= 1024, "never refused");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--watch-max-keys-per-caller"));
    assert_eq!(flood.len(), 10, "the default budget: 10,000 keys a caller");
    flood
}

#[tokio::test]
async fn one_429_reported_again_and_again_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (server, setup) = serve_with(dir.path(), &[format!("--metrics-listen={metrics}")]).await;
    let mut admin = server.client(&setup.tokens.admin).await;
    create(&mut admin, "paced", "key-PACED-0000001", "acct").await;
    let mut worker = server.client(&setup.tokens.worker).await;
    const REPORTS: u32 = 300;
    for _ in 0..REPORTS {
        worker
            .report_provider_response(api::ReportProviderResponseRequest {
                r#ref: Some(api::report_provider_response_request::Ref::Name(
                    "paced".into(),
                )),
                http_status: 429,
                retry_after_seconds: 3600,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Every report after the first moved the pause's end by milliseconds: not written.
    let unchanged = metric(&metrics, "credvault_account_pause_reports_unchanged_total").await;
    eprintln!(
        "{REPORTS} reports of one 429: {} written, {unchanged} not",
        f64::from(REPORTS) - unchanged
    );
    assert_eq!(unchanged, f64::from(REPORTS - 1));
}
