//! Workers holding their headers (credvault-client over WatchCredentialHeaders):
//! a cache hit in process beside the RPC it replaces, propagation of an update and
//! of a reported 429's pause to many watching clients, the cost of many idle
//! streams, and propagation from one PostgreSQL replica to watchers on another.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::{channels, cpu_time, rss_mb, vault_clients, Args, Row, Seeded, Server, Vault};
use credvault::api;

/// A histogram in nanoseconds, 1 ns to 100 s.
fn histogram_ns() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

fn client(addr: &str, token: &str) -> credvault_client::Client {
    credvault_client::Client::builder(format!("http://{addr}"))
        .token(token)
        .build()
        .expect("a client")
}

async fn create(vault: &Vault, name: &str) {
    vault
        .clone()
        .create_credential(api::CreateCredentialRequest {
            name: name.into(),
            secret: Some(api::create_credential_request::Secret::Fleetio(
                api::FleetioSecret {
                    api_key: "key-watch-000001".into(),
                    account_token: "acct-watch".into(),
                    api_version: String::new(),
                },
            )),
            ..Default::default()
        })
        .await
        .expect("create the watched credential");
}

/// A new version of `name` (a description change), acknowledged.
async fn touch(vault: &Vault, name: &str, round: usize) {
    vault
        .clone()
        .update_credential(api::UpdateCredentialRequest {
            r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
            description: Some(format!("round {round}")),
            ..Default::default()
        })
        .await
        .expect("update the watched credential");
}

/// Waits until every client's watch stream is up.
async fn all_connected(clients: &[credvault_client::Client]) {
    let start = Instant::now();
    while !clients.iter().all(credvault_client::Client::is_connected) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "watch streams did not come up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads from memory for `duration` from `tasks` tasks: reads/s and latency in ns.
async fn cache_hits(
    client: &credvault_client::Client,
    name: &str,
    tasks: usize,
    duration: Duration,
) -> Value {
    let until = Instant::now() + duration;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, name) = (client.clone(), name.to_owned());
        handles.push(tokio::spawn(async move {
            let mut hist = histogram_ns();
            let mut reads = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let h = client.headers(&name).await.expect("a cache hit");
                std::hint::black_box(h);
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let _ = hist.record(ns.max(1));
                reads += 1;
                // Let the runtime run other tasks now and then, as a worker would.
                if reads.is_multiple_of(4096) {
                    tokio::task::yield_now().await;
                }
            }
            (hist, reads)
        }));
    }
    let mut hist = histogram_ns();
    let mut reads = 0;
    for h in handles {
        let (h, n) = h.await.expect("a reader task");
        hist.add(h).expect("same bounds");
        reads += n;
    }
    json!({
        "tasks": tasks,
        "reads_per_s": reads as f64 / duration.as_secs_f64(),
        "p50_ns": hist.value_at_quantile(0.5),
        "p99_ns": hist.value_at_quantile(0.99),
        "p999_ns": hist.value_at_quantile(0.999),
        "max_ns": hist.max(),
    })
}

/// Waits until `holds` is true of every client, asking each in turn and yielding
/// between passes; records each client's lag since `since` in `each`, and the
/// whole round's in `all`.
async fn until_all_hold<F, Fut>(
    clients: &[credvault_client::Client],
    since: Instant,
    what: &str,
    each: &mut Histogram<u64>,
    all: &mut Histogram<u64>,
    holds: F,
) where
    F: Fn(credvault_client::Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut pending: Vec<usize> = (0..clients.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::with_capacity(pending.len());
        for i in pending {
            // A clone is an `Arc`'s: the check owns its client.
            if holds(clients[i].clone()).await {
                let _ = each.record(since.elapsed().as_nanos() as u64);
            } else {
                still.push(i);
            }
        }
        pending = still;
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{} watchers never held {what}",
            pending.len()
        );
        tokio::task::yield_now().await;
    }
    let _ = all.record(since.elapsed().as_nanos() as u64);
}

/// Per-client lags and per-round "all hold" times of `rounds` rounds, in ms.
fn lags(watchers: usize, rounds: usize, each: &Histogram<u64>, all: &Histogram<u64>) -> Value {
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    json!({
        "watchers": watchers,
        "rounds": rounds,
        "each_p50_ms": ms(each, 0.5),
        "each_p99_ms": ms(each, 0.99),
        "all_hold_p50_ms": ms(all, 0.5),
        "all_hold_p99_ms": ms(all, 0.99),
        "all_hold_max_ms": all.max() as f64 / 1e6,
    })
}

/// `rounds` updates through `writer`; after each acknowledgement, how long until
/// each of `clients` holds the new version.
async fn propagation(
    writer: &Vault,
    clients: &[credvault_client::Client],
    name: &str,
    rounds: usize,
) -> Value {
    let (mut each, mut all) = (histogram_ns(), histogram_ns());
    let mut version = clients[0].headers(name).await.expect("held").version();
    for round in 0..rounds {
        touch(writer, name, round).await;
        let acked = Instant::now();
        version += 1;
        let what = format!("version {version}");
        until_all_hold(clients, acked, &what, &mut each, &mut all, |c| async move {
            c.headers(name).await.is_ok_and(|h| h.version() >= version)
        })
        .await;
        // Rounds apart, so each measures one update.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lags(clients.len(), rounds, &each, &all)
}

/// `rounds` 429 reports through `clients[0]`, each asking for a longer pause; from
/// when each is sent, how long until each client holds the pause (its
/// `try_acquire` says `Paused`).
async fn pause_propagation(
    clients: &[credvault_client::Client],
    name: &str,
    rounds: usize,
) -> Value {
    let (mut each, mut all) = (histogram_ns(), histogram_ns());
    for round in 0..rounds {
        let retry_after = Duration::from_secs(60 + round as u64);
        let sent = Instant::now();
        let report = clients[0]
            .report(name, 429, Some(retry_after))
            .await
            .expect("the report");
        let until = report.paused_until.expect("a pause");
        until_all_hold(clients, sent, "the pause", &mut each, &mut all, |c| async move {
            matches!(c.try_acquire(name).await, Err(credvault_client::Error::Paused { until: held }) if held >= until)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lags(clients.len(), rounds, &each, &all)
}

/// `n` clients, each on its own connection, holding `name`'s headers and watching it.
async fn watching_clients(
    addr: &str,
    token: &str,
    name: &str,
    n: usize,
) -> Vec<credvault_client::Client> {
    let clients: Vec<_> = (0..n).map(|_| client(addr, token)).collect();
    for batch in clients.chunks(50) {
        let asks = batch.iter().map(|c| c.headers(name));
        for got in futures_util::future::join_all(asks).await {
            got.expect("first headers");
        }
    }
    all_connected(&clients).await;
    clients
}

/// Opens `n` watch streams of one credential each (ids taken in turn) over
/// connections of 100 streams, and waits for each stream's first message.
async fn idle_streams(
    addr: &str,
    token: &str,
    ids: &[String],
    n: usize,
) -> Vec<tonic::Streaming<api::WatchCredentialHeadersResponse>> {
    let chans = channels(addr, n.div_ceil(100)).await;
    let vaults = vault_clients(&chans, token);
    let mut streams = Vec::with_capacity(n);
    for start in (0..n).step_by(200) {
        let opened = (start..(start + 200).min(n)).map(|i| {
            let mut v = vaults[i / 100].clone();
            let id = ids[i % ids.len()].clone();
            async move {
                let mut s = v
                    .watch_credential_headers(api::WatchCredentialHeadersRequest {
                        credentials: vec![api::WatchedCredential {
                            r#ref: Some(api::watched_credential::Ref::Id(id)),
                            ..Default::default()
                        }],
                    })
                    .await
                    .expect("a watch stream")
                    .into_inner();
                let first = s
                    .message()
                    .await
                    .expect("a first message")
                    .expect("not the end");
                assert!(first.synced);
                s
            }
        });
        streams.extend(futures_util::future::join_all(opened).await);
    }
    streams
}

/// The CPU share of one core the process used over `window`.
async fn cpu_share(pid: Option<u32>, window: Duration) -> Option<f64> {
    let pid = pid?;
    let before = cpu_time(pid)?;
    tokio::time::sleep(window).await;
    let after = cpu_time(pid)?;
    Some(after.checked_sub(before)?.as_secs_f64() / window.as_secs_f64())
}

/// The watch figures on the main server (sled), with the hot-path rows for ratios.
pub(crate) async fn figures(
    args: &Args,
    main: &Seeded,
    token: &str,
    rows: &[Row],
) -> Map<String, Value> {
    let mut out = Map::new();
    let addr = &main.server.addr;
    let writer = &main.vaults[0];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // 1. A cache hit, in process, beside the RPC it replaces.
    create(writer, "watch-hit").await;
    let hit = client(addr, token);
    hit.headers("watch-hit").await.expect("first headers");
    all_connected(std::slice::from_ref(&hit)).await;
    for tasks in [1, cores] {
        let figures = cache_hits(&hit, "watch-hit", tasks, args.duration).await;
        // Beside the RPC: at one in flight for one task, else at its best concurrency.
        let rpc = rows
            .iter()
            .filter(|r| r.step == "hot GetCredentialHeaders" && (tasks > 1 || r.concurrency == 1))
            .map(|r| r.rps)
            .fold(None, |best: Option<f64>, rps| {
                Some(best.map_or(rps, |b| b.max(rps)))
            });
        let ratio = rpc.map(|rps| figures["reads_per_s"].as_f64().unwrap_or(0.0) / rps);
        eprintln!(
            "client cache hit, {tasks} task(s): {:.0} reads/s, p50 {} ns, p99 {} ns ({}x the GetCredentialHeaders RPC's req/s)",
            figures["reads_per_s"].as_f64().unwrap_or(0.0),
            figures["p50_ns"],
            figures["p99_ns"],
            ratio.map_or("-".into(), |r| format!("{r:.0}"))
        );
        out.insert(
            format!("cache_hit_tasks_{tasks}"),
            json!({"figures": figures, "rpc_rps": rpc, "over_rpc_rps": ratio}),
        );
    }
    drop(hit);

    // 2. Propagation to many watching clients.
    create(writer, "watch-propagation").await;
    let rss_before = main.server.pid().and_then(rss_mb);
    let clients = watching_clients(addr, token, "watch-propagation", args.watchers).await;
    let rss_watching = main.server.pid().and_then(rss_mb);
    let rounds = if args.smoke { 3 } else { 20 };
    let figures = propagation(writer, &clients, "watch-propagation", rounds).await;
    eprintln!(
        "propagation to {} watching clients: {figures}",
        args.watchers
    );
    out.insert(
        "propagation".into(),
        json!({"figures": figures, "server_rss_before_mb": rss_before, "server_rss_with_watchers_mb": rss_watching}),
    );
    // A worker's 429 report: its pause pushed to the same watchers (#16), timed from
    // when the report was sent.
    let figures = pause_propagation(&clients, "watch-propagation", rounds.min(10)).await;
    eprintln!(
        "a 429 report's pause to {} watching clients: {figures}",
        args.watchers
    );
    out.insert("pause_propagation".into(), json!({ "figures": figures }));
    drop(clients);

    // 3. Many idle streams on one server: memory and idle CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = main.server.pid().and_then(rss_mb);
    let opened_at = Instant::now();
    let streams = idle_streams(addr, token, &main.ids, args.idle_streams).await;
    let open_s = opened_at.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_streams = main.server.pid().and_then(rss_mb);
    let idle_cpu = cpu_share(main.server.pid(), args.duration).await;
    let per_stream_kb = rss_before
        .zip(rss_streams)
        .map(|(a, b)| (b - a) * 1024.0 / args.idle_streams as f64);
    eprintln!(
        "{} idle watch streams: server RSS {:?} -> {:?} MB ({:?} KB per stream), idle CPU {:?} of a core, opened in {open_s:.1} s",
        args.idle_streams, rss_before, rss_streams, per_stream_kb, idle_cpu
    );
    out.insert(
        "idle_streams".into(),
        json!({
            "streams": streams.len(),
            "server_rss_before_mb": rss_before,
            "server_rss_with_streams_mb": rss_streams,
            "per_stream_kb": per_stream_kb,
            "idle_cpu_share_of_a_core": idle_cpu,
            "open_all_s": open_s,
        }),
    );
    drop(streams);
    out
}

/// Propagation from a write through PostgreSQL replica A to watchers on replica B.
pub(crate) async fn postgres_figures(
    args: &Args,
    a: &Seeded,
    a_dir: &Path,
    token: &str,
    url: &str,
) -> Value {
    let b_dir = a_dir.with_file_name("vault-postgres-b");
    std::fs::create_dir_all(&b_dir).expect("replica b's dir");
    for file in ["master.key", "callers.toml"] {
        std::fs::copy(a_dir.join(file), b_dir.join(file))
            .expect("replica b shares a's key and callers");
    }
    let b = Server::start(
        &args.server_bin,
        &b_dir,
        token,
        &args.server_log_level,
        Some(url),
        &args.server_arg,
    )
    .await;
    create(&a.vaults[0], "watch-replicas").await;
    let watchers = args.watchers.min(100);
    let clients = watching_clients(&b.addr, token, "watch-replicas", watchers).await;
    let rounds = if args.smoke { 3 } else { 20 };
    let figures = propagation(&a.vaults[0], &clients, "watch-replicas", rounds).await;
    eprintln!("postgres: replica A's write to {watchers} watchers on replica B: {figures}");
    drop(clients);
    b.stop().await;
    figures
}
