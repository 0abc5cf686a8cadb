//! The command line, part of the binary (not of the library): `serve`, `keygen`, `token`,
//! `healthcheck`, `rewrap`, `backup`, `restore`, `migrate`, `migrate-store` and `audit`, each flag also
//! read from `CREDVAULT_<FLAG>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;

mod audit;
use clap::{Args, Parser, Subcommand};

use credvault::auth::{self, Permission};
use credvault::config::KeyringSource;
use credvault::config::{self, Config, TlsSettings};
use credvault::crypto::{Keyring, MasterKey};
use credvault::provider::{fleetio, ProviderSettings};
use credvault::reverify::ReverifySettings;
use credvault::store::Store;
use credvault::telemetry::{self, LogFormat};
use secrecy::ExposeSecret;

/// credvault: the encrypted credential vault for data-ingestion workers.
#[derive(Debug, Parser)]
#[command(name = "credvault", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gRPC server.
    Serve(Box<ServeArgs>),
    /// Prints a fresh random master key (32 bytes, base64) for --master-key-file.
    Keygen,
    /// Mints a caller token, prints it once, and prints its callers.toml entry.
    Token(TokenArgs),
    /// Asks a server's gRPC health service; exits 0 only when it answers SERVING.
    Healthcheck(HealthcheckArgs),
    /// Re-seals every data key under the active master key, in a stopped server's
    /// data directory (a running one: the RewrapCredentials RPC).
    Rewrap(RewrapArgs),
    /// Writes a backup file (still encrypted, with a checksum) from a running server
    /// (--server, with CREDVAULT_TOKEN) or a stopped server's data directory.
    Backup(BackupArgs),
    /// Restores a backup file into a new data directory, after checking the keyring opens it.
    Restore(RestoreArgs),
    /// Checks a providers file as `serve --providers-file` reads it and lists what it
    /// declares; exits non-zero naming the line of the first problem.
    CheckProviders(CheckProvidersArgs),
    /// Applies the PostgreSQL schema migrations (`serve --store postgres` also does at startup).
    Migrate(DatabaseArgs),
    /// Copies every record, still encrypted, from one store to another (which must be
    /// empty) and verifies the copy, e.g. --from sled:/var/lib/credvault --to postgres.
    MigrateStore(MigrateStoreArgs),
    /// The auditor's commands: the digests' public keys, and verifying a trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

#[derive(Debug, Args)]
struct CheckProvidersArgs {
    /// The providers file (TOML).
    #[arg(long, env = "CREDVAULT_PROVIDERS_FILE")]
    providers_file: PathBuf,
}

#[derive(Debug, Args)]
struct MigrateStoreArgs {
    /// The source: `sled:DIR` (a stopped server's data directory) or `postgres[:URL]`.
    #[arg(long)]
    from: String,
    /// The target: `sled:DIR` or `postgres[:URL]` (without a URL: --database-url or
    /// CREDVAULT_DATABASE_URL); it must hold no credential yet.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// A store named on the command line.
enum Location {
    Sled(PathBuf),
    Postgres(config::PostgresSettings),
}

impl Location {
    fn parse(text: &str, database: &DatabaseArgs) -> anyhow::Result<Self> {
        match text.split_once(':').unwrap_or((text, "")) {
            ("sled", dir) if !dir.is_empty() => Ok(Location::Sled(PathBuf::from(dir))),
            ("postgres" | "postgresql", url) => {
                let url = (!url.is_empty()).then(|| {
                    // `postgres://...` itself, or `postgres:` followed by a URL.
                    if url.starts_with("//") {
                        text.to_owned()
                    } else {
                        url.to_owned()
                    }
                });
                Ok(Location::Postgres(database.settings(url.as_deref())?))
            }
            _ => Err(anyhow!(
                "{text:?} names no store: use sled:DIR or postgres[:URL]"
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Location::Sled(dir) => format!("sled store in {}", dir.display()),
            Location::Postgres(_) => "PostgreSQL database".to_owned(),
        }
    }

    async fn snapshot(&self) -> anyhow::Result<credvault::store::Snapshot> {
        let snapshot = match self {
            Location::Sled(dir) => open_offline(dir, None).await?.snapshot().await,
            Location::Postgres(pg) => migrated(pg).await?.snapshot().await,
        };
        Ok(snapshot?)
    }

    async fn restore(&self, snapshot: &credvault::store::Snapshot) -> anyhow::Result<()> {
        let restored = match self {
            Location::Sled(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow!("cannot make {}: {e}", dir.display()))?;
                open_offline(dir, None).await?.restore(snapshot).await
            }
            Location::Postgres(pg) => migrated(pg).await?.restore(snapshot).await,
        };
        restored.map_err(|e| match e {
            credvault::store::StoreError::NotEmpty => {
                anyhow!(
                    "the target ({}) already holds data; migrate into an empty store",
                    self.describe()
                )
            }
            e => e.into(),
        })
    }
}

#[derive(Debug, Args)]
struct RewrapArgs {
    /// The stopped server's data directory.
    #[arg(long, env = "CREDVAULT_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// Credentials per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch_size: u32,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// The file to write (refused if it exists); readable by its owner only.
    #[arg(long)]
    out: PathBuf,
    /// A running server's gRPC address, host:port; the token comes from CREDVAULT_TOKEN.
    #[arg(long, conflicts_with = "data_dir")]
    server: Option<String>,
    /// A stopped server's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTls,
    /// With --data-dir: the keyring, whose active key authenticates the backup
    /// (a running server uses its own).
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The new data directory to restore into (must hold no store yet).
    #[arg(long)]
    data_dir: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// Restore a format 1 backup, which carries a checksum only and cannot prove
    /// it was not edited (format 2 backups are authenticated and need no flag).
    #[arg(long)]
    allow_unauthenticated: bool,
}

#[derive(Debug, Args)]
struct HealthcheckArgs {
    /// The server's gRPC address, host:port.
    #[arg(
        long,
        env = "CREDVAULT_HEALTHCHECK_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    addr: String,
    /// The service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Longest wait for the connection and the answer together.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: ClientTls,
}

/// How a client command reaches a server: plaintext, or TLS.
#[derive(Debug, Args)]
struct ClientTls {
    /// Connect with TLS (public roots, or --ca-file).
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA that signed the server's certificate (implies --tls).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The name to expect in the server's certificate, when it differs from the host in the address.
    #[arg(long)]
    tls_server_name: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "CREDVAULT_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the store [default: credvault-data, or .credvault-dev with --dev].
    #[arg(long, env = "CREDVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// TOML file listing the callers, their token digests and permissions.
    #[arg(long, env = "CREDVAULT_CALLERS_FILE")]
    callers_file: Option<PathBuf>,
    /// Append audit events (JSON lines) here [default: <data-dir>/audit.jsonl; with
    /// --store postgres the database holds the trail, and a file is a second device
    /// only when named here].
    #[arg(long, env = "CREDVAULT_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Serve secret reads even while the audit log cannot be written (default: refuse them).
    #[arg(long, env = "CREDVAULT_AUDIT_FAIL_OPEN")]
    audit_fail_open: bool,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key).
    #[arg(long, env = "CREDVAULT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC port (with --tls-cert).
    #[arg(long, env = "CREDVAULT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates: enables mutual TLS (callers may then be
    /// identified by `tls_subject`); token callers keep working.
    #[arg(long, env = "CREDVAULT_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists (one or more) of the --client-ca CAs: a client
    /// certificate they revoke is refused at the handshake, and so is one whose CA has
    /// no list here (fail closed). Read at start.
    #[arg(long, env = "CREDVAULT_CLIENT_CRL", requires = "client_ca")]
    client_crl: Option<PathBuf>,
    /// A plaintext address serving only gRPC health, for probes when TLS is on.
    #[arg(long, env = "CREDVAULT_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// A provider's API base URL over its default, as NAME=URL (repeatable, or
    /// comma-separated in the environment), e.g. fleetio=http://127.0.0.1:8080/api.
    #[arg(long = "provider-base-url", env = "CREDVAULT_PROVIDER_BASE_URL", value_name = "NAME=URL", value_delimiter = ',', value_parser = parse_base_url)]
    provider_base_urls: Vec<(String, String)>,
    /// TOML file declaring providers beyond the built-in ones (their fields,
    /// header templates and verification); re-read on SIGHUP and when it
    /// changes. See deploy/providers.example.toml.
    #[arg(long, env = "CREDVAULT_PROVIDERS_FILE")]
    providers_file: Option<PathBuf>,
    /// The same as --provider-base-url fleetio=URL (the older flag, still read).
    #[arg(long, env = "CREDVAULT_FLEETIO_BASE_URL", value_name = "URL")]
    fleetio_base_url: Option<String>,
    /// Longest wait for a connection to a provider, e.g. 5s.
    #[arg(long, env = "CREDVAULT_PROVIDER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    provider_connect_timeout: Duration,
    /// Longest wait for a whole provider check, e.g. 10s.
    #[arg(long, env = "CREDVAULT_PROVIDER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    provider_timeout: Duration,
    /// Mean time between background re-verifications of every credential (jittered ±10 %); 0s turns them off.
    #[arg(long, env = "CREDVAULT_REVERIFY_INTERVAL", default_value = "6h", value_parser = humantime::parse_duration)]
    reverify_interval: Duration,
    /// How many background provider checks may run at once.
    #[arg(long, env = "CREDVAULT_REVERIFY_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    reverify_concurrency: u16,
    /// After SIGTERM: how long health answers NOT_SERVING while calls are still served, so
    /// load balancers and Kubernetes readiness stop routing here before connections close.
    #[arg(long, env = "CREDVAULT_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// How long the audit trail may stay unwritable while the store takes writes (a
    /// stuck writer: no secret read can be answered, and only a restart heals it)
    /// before liveness turns NOT_SERVING so that Kubernetes restarts the server.
    #[arg(long, env = "CREDVAULT_LIVENESS_STUCK_AFTER", default_value = "2m", value_parser = humantime::parse_duration)]
    liveness_stuck_after: Duration,
    /// Serve Prometheus metrics on this address (HTTP, /metrics), e.g. 0.0.0.0:9090.
    #[arg(long, env = "CREDVAULT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the operator console (a web page) on this address, e.g. 127.0.0.1:8080:
    /// HTTP, or HTTPS with the server's certificate when --tls-cert is set. Off unless set.
    #[arg(long, env = "CREDVAULT_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// How long a console session lasts after sign-in.
    #[arg(long, env = "CREDVAULT_CONSOLE_SESSION_TTL", default_value = "8h", value_parser = humantime::parse_duration)]
    console_session_ttl: Duration,
    /// Secret versions kept per credential, the current one included: an update of the
    /// secret keeps the one it replaces; the oldest beyond this are destroyed.
    #[arg(long, env = "CREDVAULT_KEEP_VERSIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    keep_versions: u32,
    /// How long a deleted credential stays recoverable by UndeleteCredential before it is
    /// purged for good (0s: deletes are final at once).
    #[arg(long, env = "CREDVAULT_RECOVERY_WINDOW", default_value = "7d", value_parser = humantime::parse_duration)]
    recovery_window: Duration,
    /// Console sessions open at once, server-wide (a sign-in beyond it is refused).
    #[arg(long, env = "CREDVAULT_CONSOLE_MAX_SESSIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    console_max_sessions: u32,
    /// Longest wait for in-flight calls to finish once connections stop being accepted.
    #[arg(long, env = "CREDVAULT_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Rotate the audit log when it would grow past this size, e.g. 64MiB (0: never).
    #[arg(long, env = "CREDVAULT_AUDIT_MAX_FILE_SIZE", default_value = "64MiB", value_parser = parse_size)]
    audit_max_file_size: u64,
    /// Rotated audit files kept beside the log (<audit-log>.1 is the newest); older ones
    /// are deleted (0: keep all, for an outside tool to prune).
    #[arg(long, env = "CREDVAULT_AUDIT_MAX_FILES", default_value_t = credvault::audit::DEFAULT_MAX_FILES)]
    audit_max_files: usize,
    /// What a secret read waits for before its answer goes out: its audit event
    /// written to the operating system (write), or also fsynced (fsync: the trail
    /// survives a power loss; slower).
    #[arg(
        long,
        env = "CREDVAULT_AUDIT_SYNC",
        value_enum,
        default_value = "write"
    )]
    audit_sync: credvault::audit::AuditSync,
    /// Write a signed digest of the audit chain after this many lines...
    #[arg(long, env = "CREDVAULT_AUDIT_DIGEST_EVENTS", default_value_t = credvault::trail::DEFAULT_DIGEST_EVENTS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    audit_digest_events: u64,
    /// ...or this long after the first line not yet covered by one, e.g. 5s: the
    /// most that a crash leaves unsigned at the trail's end.
    #[arg(long, env = "CREDVAULT_AUDIT_DIGEST_INTERVAL", default_value = "5s", value_parser = parse_digest_interval)]
    audit_digest_interval: Duration,
    /// With --store postgres: delete events older than this from the database's trail
    /// (checked at start and then every quarter of it, at most hourly), e.g. 400d; 0s keeps all.
    #[arg(long, env = "CREDVAULT_AUDIT_RETENTION", default_value = "0s", value_parser = humantime::parse_duration)]
    audit_retention: Duration,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    feedback: FeedbackArgs,
    /// Log line format.
    #[arg(long, env = "CREDVAULT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or tracing directives, e.g. `info` or `credvault=debug`.
    #[arg(long, env = "CREDVAULT_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Development mode: makes a data dir, a key file and an all-permissions token on first run.
    #[arg(long, env = "CREDVAULT_DEV")]
    dev: bool,
}

/// Limits and timing of WatchCredentialHeaders streams (docs/workers.md).
#[derive(Clone, Debug, Args)]
struct WatchArgs {
    /// Credentials one watch stream may name.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_CREDENTIALS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    watch_max_credentials: u32,
    /// Watch streams one caller may hold open on this server at once.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_STREAMS_PER_CALLER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    watch_max_streams_per_caller: u32,
    /// Credentials one caller may watch, summed over all its streams on this server.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_KEYS_PER_CALLER", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    watch_max_keys_per_caller: u32,
    /// Credentials watched on this server at most, summed over every stream of every caller.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    watch_max_keys: u32,
    /// How often every watched credential is read again whatever was heard: the
    /// longest a lost change notification (PostgreSQL) leaves a watcher stale.
    #[arg(long, env = "CREDVAULT_WATCH_RESYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    watch_resync_interval: Duration,
}

/// Workers' reports of the providers' answers and shared request budgets (docs/workers.md).
#[derive(Clone, Debug, Args)]
struct FeedbackArgs {
    /// A credential that workers report rejected (401 / 403) is verified again at
    /// most once per this, however many report it.
    #[arg(long, env = "CREDVAULT_REPORT_VERIFY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    report_verify_interval: Duration,
    /// The window request budgets are counted over (aligned on the clock; Fleetio's
    /// resets at the minute). A shorter one spreads a minute's budget more evenly.
    #[arg(long, env = "CREDVAULT_BUDGET_WINDOW", default_value = "60s", value_parser = parse_budget_window)]
    budget_window: Duration,
}

/// A budget window: 100 ms to 1 hour.
fn parse_budget_window(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{value} is out of range: 100ms to 1h"));
    }
    Ok(d)
}

/// The limits that protect the server from its clients (docs/platform.md: Hardening).
#[derive(Clone, Debug, Args)]
struct TransportArgs {
    /// HTTP/2 streams one connection may hold open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "CREDVAULT_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    http2_max_concurrent_streams: u32,
    /// Resets a client may provoke on one connection by its protocol errors before the
    /// server answers GOAWAY ENHANCE_YOUR_CALM (CVE-2025-8671).
    #[arg(long, env = "CREDVAULT_HTTP2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    http2_max_local_error_resets: u64,
    /// Longest time from a request's headers to its response's: a whole unary RPC, or the
    /// start of a streaming one (whose stream then lives on, kept alive by pings); 0s: off.
    #[arg(long, env = "CREDVAULT_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Send an HTTP/2 PING on a connection this long silent; 0s: never (not advised).
    #[arg(long, env = "CREDVAULT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    http2_keepalive_interval: Duration,
    /// Close a connection whose client does not answer a PING within this.
    #[arg(long, env = "CREDVAULT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    http2_keepalive_timeout: Duration,
    /// A new connection must finish TLS and send the HTTP/2 preface within this (its first bytes).
    #[arg(long, env = "CREDVAULT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Open connections at most; further ones are closed at once. Lowered at start to
    /// stay below the file descriptor limit.
    #[arg(long, env = "CREDVAULT_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// The listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "CREDVAULT_LISTEN_BACKLOG", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    listen_backlog: u32,
    /// How often refused calls that were only counted (a flood from one peer) are
    /// written as one summary line and audit event per peer.
    #[arg(long, env = "CREDVAULT_REFUSAL_SUMMARY_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    refusal_summary_interval: Duration,
}

impl TransportArgs {
    fn settings(&self) -> credvault::transport::TransportSettings {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        credvault::transport::TransportSettings {
            max_concurrent_streams: self.http2_max_concurrent_streams,
            max_local_error_resets: size(self.http2_max_local_error_resets),
            request_timeout: self.request_timeout,
            keepalive_interval: self.http2_keepalive_interval,
            keepalive_timeout: self.http2_keepalive_timeout,
            handshake_timeout: self.handshake_timeout,
            max_connections: size(self.max_connections),
            listen_backlog: self.listen_backlog,
        }
    }
}

/// Parses a size such as `64MiB`, `1 GB` or `4096`.
fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{text:?} is not a size such as 64MiB: {e}"))
}

/// A digest interval between 100 ms and one hour.
fn parse_digest_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is outside 100ms..1h"));
    }
    Ok(d)
}

/// Which store holds the credentials.
#[derive(Clone, Debug, Args)]
struct StoreArgs {
    /// The store: `sled` (embedded, in --data-dir, one replica) or `postgres`
    /// (--database-url, any number of replicas).
    #[arg(long, env = "CREDVAULT_STORE", value_enum, default_value = "sled")]
    store: StoreKind,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Sled,
    Postgres,
}

/// How to reach PostgreSQL.
#[derive(Clone, Debug, Args)]
struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://credvault@db:5432/credvault (prefer the environment
    /// variable when it holds a password).
    #[arg(long, env = "CREDVAULT_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the PostgreSQL URL (e.g. a mounted Secret); instead of --database-url.
    #[arg(
        long,
        env = "CREDVAULT_DATABASE_URL_FILE",
        conflicts_with = "database_url"
    )]
    database_url_file: Option<PathBuf>,
    /// Most database connections this process opens.
    #[arg(long, env = "CREDVAULT_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    database_max_connections: usize,
    /// PEM file of the CA that signed the database's certificate (TLS follows the URL's
    /// sslmode; the certificate is always verified, by default against the web roots).
    #[arg(long, env = "CREDVAULT_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// Longest wait for a database connection.
    #[arg(long, env = "CREDVAULT_DATABASE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    database_timeout: Duration,
    /// How long startup waits for the database to answer.
    #[arg(long, env = "CREDVAULT_DATABASE_STARTUP_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    database_startup_wait: Duration,
}

impl DatabaseArgs {
    fn settings(&self, url: Option<&str>) -> anyhow::Result<config::PostgresSettings> {
        let from_file = match &self.database_url_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let url = url
            .map(str::to_owned)
            .or_else(|| self.database_url.clone())
            .or(from_file)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| anyhow!("PostgreSQL needs --database-url or --database-url-file (or CREDVAULT_DATABASE_URL[_FILE])"))?;
        Ok(config::PostgresSettings {
            url: url.into(),
            pool: credvault::store::PgSettings {
                max_connections: self.database_max_connections,
                timeout: self.database_timeout,
                ca_file: self.database_ca_file.clone(),
            },
            startup_wait: self.database_startup_wait,
        })
    }
}

impl StoreArgs {
    fn resolve(&self, data_dir: &std::path::Path) -> anyhow::Result<config::StoreConfig> {
        match self.store {
            StoreKind::Sled => Ok(config::StoreConfig::Sled {
                dir: data_dir.to_owned(),
            }),
            StoreKind::Postgres => Ok(config::StoreConfig::Postgres(self.database.settings(None)?)),
        }
    }
}

/// Where the master keys come from.
#[derive(Clone, Debug, Args)]
struct KeyArgs {
    /// The keyring: a file with one base64 master key or `id = base64` lines, or a
    /// directory of key files named `<id>` or `<id>.key` (or set CREDVAULT_MASTER_KEY
    /// to a key file's text). Re-read on SIGHUP and when it changes.
    #[arg(long, env = "CREDVAULT_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The key id that wraps new data keys [default: the last key of the file, or
    /// the last file name of the directory].
    #[arg(long, env = "CREDVAULT_ACTIVE_KEY_ID")]
    active_key_id: Option<String>,
}

impl KeyArgs {
    /// Reads the keyring from the environment or the key file (`fallback` when neither is given).
    fn keyring(
        &self,
        fallback: Option<PathBuf>,
    ) -> anyhow::Result<(Keyring, Option<KeyringSource>)> {
        Ok(config::resolve_keyring(
            self.master_key_file.as_deref(),
            self.active_key_id.as_deref(),
            fallback.as_deref(),
        )?)
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The caller's name, as logs will show it.
    #[arg(long)]
    name: String,
    /// Comma-separated permissions: credentials.read, credentials.write, credentials.verify,
    /// headers.read, audit.read, keys.manage, backup.read.
    #[arg(long, value_delimiter = ',', required = true)]
    permissions: Vec<String>,
}

/// Parses the command line and runs it.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Keygen => {
            println!("{}", MasterKey::generate_base64().as_str());
            Ok(())
        }
        Command::Token(args) => token(&args),
        Command::Healthcheck(args) => healthcheck(&args),
        Command::Rewrap(args) => rewrap(&args),
        Command::Backup(args) => backup(&args),
        Command::Restore(args) => restore(&args),
        Command::CheckProviders(args) => check_providers(&args),
        Command::Migrate(args) => migrate(&args),
        Command::MigrateStore(args) => migrate_store(&args),
        Command::Audit { command } => audit::run(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("credvault: {message}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let name = args.name.trim();
    if name.is_empty() {
        return Err(anyhow!("--name must not be empty"));
    }
    let permissions = args
        .permissions
        .iter()
        .map(|p| Permission::parse(p.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let token = auth::mint_token();
    println!("# token for {name:?} (shown once; give it to the caller, store it nowhere else):");
    println!("# {}", token.as_str());
    println!("{}", auth::callers_entry(name, &token, &permissions));
    Ok(())
}

fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    let endpoint = args
        .tls
        .endpoint(&args.addr)?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let status = runtime()?.block_on(async {
        let ask = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| anyhow!("cannot connect to {}: {e}", args.addr))?;
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: args.service.clone(),
                })
                .await
                .map(|r| r.into_inner().status())
                .map_err(|s| anyhow!("health check failed: {:?}: {}", s.code(), s.message()))
        };
        tokio::time::timeout(args.timeout, ask)
            .await
            .map_err(|_| anyhow!("no answer from {} within {:?}", args.addr, args.timeout))?
    })?;
    let name = if args.service.is_empty() {
        "the server"
    } else {
        args.service.as_str()
    };
    if status == ServingStatus::Serving {
        println!("SERVING");
        Ok(())
    } else {
        Err(anyhow!("{name} is {}", status.as_str_name()))
    }
}

impl ClientTls {
    /// A gRPC endpoint for `addr` (host:port), with TLS if asked or if a CA file is given.
    fn endpoint(&self, addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let tls = self.tls || self.ca_file.is_some();
        let url = format!("{}://{addr}", if tls { "https" } else { "http" });
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| anyhow!("address {addr:?} is not a host:port: {e}"))?;
        if tls {
            let mut config = ClientTlsConfig::new().with_webpki_roots();
            if let Some(file) = &self.ca_file {
                let pem = std::fs::read(file)
                    .map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(name) = &self.tls_server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| anyhow!("bad tls settings: {e}"))?;
        }
        Ok(endpoint)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the runtime: {e}"))
}

/// Opens a stopped server's store, explaining the lock error a running one causes.
async fn open_offline(
    data_dir: &std::path::Path,
    keyring: Option<&Keyring>,
) -> anyhow::Result<credvault::store::AnyStore> {
    let config = config::StoreConfig::Sled {
        dir: data_dir.to_owned(),
    };
    let opened = match keyring {
        Some(keyring) => credvault::server::open_store(&config, keyring).await,
        None => credvault::store::open(&config).await.map_err(|source| {
            credvault::server::ServeError::Open {
                dir: data_dir.display().to_string(),
                source,
            }
        }),
    };
    opened.map_err(|e| match e {
        credvault::server::ServeError::Open {
            source: credvault::store::StoreError::Locked(_),
            ..
        } => anyhow!("{e} (is a server still running on it? stop it first, or use the RPC)"),
        e => e.into(),
    })
}

fn rewrap(args: &RewrapArgs) -> anyhow::Result<()> {
    let (keyring, _) = args.keys.keyring(None)?;
    let batch = usize::try_from(args.batch_size).unwrap_or(100);
    runtime()?.block_on(async {
        let store = open_offline(&args.data_dir, Some(&keyring)).await?;
        let seals = credvault::keys::SealCounter::load(&store).await?;
        let providers = credvault::provider::Providers::new(&ProviderSettings::default())?;
        let vault =
            credvault::vault::Vault::new(std::sync::Arc::new(store), keyring, seals, providers);
        let report = vault
            .rewrap(batch, |p| {
                eprintln!(
                    "scanned {}/{}, rewrapped {}, failed {}",
                    p.scanned,
                    p.total,
                    p.rewrapped,
                    p.failed.len()
                );
                true
            })
            .await?;
        vault.flush().await?;
        println!(
            "rewrap done: {} of {} credentials rewrapped under master key {}",
            report.progress.rewrapped, report.progress.scanned, report.active_key_id
        );
        for (id, count) in &report.referenced {
            println!("key {id}: {count} credentials depend on it");
        }
        for id in &report.retired {
            println!("key {id}: no credential depends on it any more; it may leave the keyring");
        }
        if report.progress.failed.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "{} credentials could not be opened and were left as they were: {}",
                report.progress.failed.len(),
                report.progress.failed.join(", ")
            ))
        }
    })
}

fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let bytes = runtime()?.block_on(async {
        match (&args.data_dir, &args.server) {
            (Some(dir), None) => {
                let (keyring, _) = args.keys.keyring(None)?;
                let store = open_offline(dir, None).await?;
                credvault::keys::check_keyring(&store, &keyring).await?;
                let snapshot = store.snapshot().await?;
                Ok(credvault::backup::encode(snapshot, keyring.active()))
            }
            (None, Some(addr)) => backup_from_server(args, addr).await,
            _ => Err(anyhow!(
                "give --server ADDR (a running server) or --data-dir DIR (a stopped one)"
            )),
        }
    })?;
    // What it holds, for the report (restore authenticates it with the keyring).
    let (_, summary) = credvault::backup::inspect(&bytes)?;
    if args.out.exists() {
        return Err(anyhow!(
            "{} exists already; choose another --out",
            args.out.display()
        ));
    }
    // Written whole under another name, then renamed: never a half-written backup.
    let partial = args.out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    config::write_private_file(&partial, &bytes)
        .map_err(|e| anyhow!("cannot write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, &args.out)
        .map_err(|e| anyhow!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "backup written to {}: {} credentials, {} bytes, master key ids needed: {}",
        args.out.display(),
        summary.credentials,
        bytes.len(),
        summary.key_ids.join(", ")
    );
    Ok(())
}

async fn backup_from_server(args: &BackupArgs, addr: &str) -> anyhow::Result<Vec<u8>> {
    use credvault::api::credential_vault_service_client::CredentialVaultServiceClient;
    let token = std::env::var("CREDVAULT_TOKEN")
        .map_err(|_| anyhow!("set CREDVAULT_TOKEN to a token with the backup.read permission"))?;
    let channel = args
        .tls
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| anyhow!("cannot connect to {addr}: {e}"))?;
    let mut request = tonic::Request::new(credvault::api::BackupVaultRequest {});
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| anyhow!("CREDVAULT_TOKEN is not a valid header value"))?;
    request.metadata_mut().insert("authorization", value);
    let failed = |s: tonic::Status| anyhow!("backup failed: {:?}: {}", s.code(), s.message());
    let mut stream = CredentialVaultServiceClient::new(channel)
        .max_decoding_message_size(4 << 20)
        .backup_vault(request)
        .await
        .map_err(failed)?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(failed)? {
        bytes.extend_from_slice(&chunk.chunk);
    }
    Ok(bytes)
}

fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let (keyring, _) = args.keys.keyring(None)?;
    let bytes = std::fs::read(&args.from)
        .map_err(|e| anyhow!("cannot read {}: {e}", args.from.display()))?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| anyhow!("cannot make {}: {e}", args.data_dir.display()))?;
    let report = runtime()?
        .block_on(credvault::backup::restore(
            &bytes,
            &args.data_dir,
            keyring,
            args.allow_unauthenticated,
        ))
        .map_err(|e| anyhow!("restore refused: {e}"))?;
    println!(
        "restored {} credentials (snapshot of {}) into {}; {} secrets opened with the keyring",
        report.summary.credentials,
        report.summary.create_time,
        args.data_dir.display(),
        report.opened
    );
    if report.damaged.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} credentials were already damaged in the backup and do not open: {}",
            report.damaged.len(),
            report.damaged.join(", ")
        ))
    }
}

/// A pool for the database of `pg` (connecting lazily).
fn postgres(pg: &config::PostgresSettings) -> anyhow::Result<credvault::store::PgStore> {
    Ok(credvault::store::PgStore::connect(
        pg.url.expose_secret(),
        &pg.pool,
    )?)
}

/// The database of `pg`, its schema migrated.
async fn migrated(pg: &config::PostgresSettings) -> anyhow::Result<credvault::store::PgStore> {
    let store = postgres(pg)?;
    store.migrate().await?;
    Ok(store)
}

fn check_providers(args: &CheckProvidersArgs) -> anyhow::Result<()> {
    let declared = credvault::provider::declared::read_file(&args.providers_file)?;
    for provider in &declared {
        println!("{}", provider.summary());
    }
    println!(
        "{}: {} provider(s) declared, beside the built-in {}",
        args.providers_file.display(),
        declared.len(),
        credvault::provider::Catalog::builtin().names()
    );
    Ok(())
}

fn migrate(args: &DatabaseArgs) -> anyhow::Result<()> {
    let settings = args.settings(None)?;
    let applied =
        runtime()?.block_on(async { anyhow::Ok(postgres(&settings)?.migrate().await?) })?;
    if applied.is_empty() {
        println!("the database schema is up to date");
    } else {
        println!("applied schema migrations {applied:?}");
    }
    Ok(())
}

fn migrate_store(args: &MigrateStoreArgs) -> anyhow::Result<()> {
    let from = Location::parse(&args.from, &args.database)?;
    let to = Location::parse(&args.to, &args.database)?;
    runtime()?.block_on(async {
        let source = from.snapshot().await?;
        to.restore(&source).await?;
        let copy = to.snapshot().await?;
        // Verify: every readable record byte for byte, and the metadata.
        let copied: std::collections::HashMap<&str, &Vec<u8>> =
            copy.records.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut damaged = Vec::new();
        for (id, bytes) in &source.records {
            match copied.get(id.as_str()) {
                Some(c) if *c == bytes => {}
                _ if credvault::record::CredentialRecord::from_bytes(id, bytes).is_err() => {
                    damaged.push(id.clone())
                }
                _ => return Err(anyhow!("verification failed: credential {id} differs in the copy")),
            }
        }
        let sorted = |mut e: credvault::store::Entries| {
            e.sort();
            e
        };
        if sorted(source.meta.clone()) != sorted(copy.meta.clone()) {
            return Err(anyhow!("verification failed: the key checks or seal counts differ in the copy"));
        }
        println!(
            "copied {} credentials from the {} to the {}, still encrypted, and verified the copy byte for byte",
            copy.records.len(),
            from.describe(),
            to.describe()
        );
        if damaged.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "{} credentials were already damaged and could not be copied: {}",
                damaged.len(),
                damaged.join(", ")
            ))
        }
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _log = telemetry::init(args.log_format, &args.log_level)?;
    let config = resolve(args.dev, &args)?;
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| anyhow!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let listener = credvault::transport::bind(args.listen, args.transport.listen_backlog)
            .map_err(|e| anyhow!("cannot listen on {}: {e}", args.listen))?;
        Ok(credvault::run(listener, config, shutdown_signal()).await?)
    })
}

fn resolve(dev: bool, args: &ServeArgs) -> anyhow::Result<Config> {
    let layout = config::layout(dev, args.data_dir.as_deref(), args.callers_file.as_deref())?;
    if let Some(files) = &layout.dev {
        tracing::warn!(
            data_dir = %files.data_dir.display(),
            "DEVELOPMENT MODE: the master key and an all-permissions token lie beside the data; never use --dev in production"
        );
        let token = std::fs::read_to_string(&files.token_file).unwrap_or_default();
        println!(
            "credvault --dev: token with every permission (also in {}):",
            files.token_file.display()
        );
        println!("{}", token.trim());
    }
    let config::Layout {
        data_dir,
        dev_key_file: key_file,
        callers_file,
        ..
    } = layout;
    let (keyring, keyring_source) = args.keys.keyring(key_file)?;
    let callers = config::load_callers(callers_file.as_deref())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
            client_crl: args.client_crl.clone(),
        }),
        _ => None,
    };
    let store = args.store.resolve(&data_dir)?;
    if args.transport.request_timeout <= 2 * args.provider_timeout {
        tracing::warn!(
            request_timeout = %humantime::format_duration(args.transport.request_timeout),
            provider_timeout = %humantime::format_duration(args.provider_timeout),
            "--request-timeout is not above twice --provider-timeout: a VerifyCredential (or a create with verify) that asks the provider twice may answer DEADLINE_EXCEEDED first"
        );
    }
    Ok(Config {
        store,
        // Default: <data-dir>/audit.jsonl on sled; on PostgreSQL the database holds the trail.
        audit_log: args.audit_log.clone(),
        audit_retention: args.audit_retention,
        data_dir,
        keyring,
        keyring_source,
        callers,
        callers_file,
        audit_fail_open: args.audit_fail_open,
        audit_max_file_size: args.audit_max_file_size,
        audit_max_files: args.audit_max_files,
        audit_sync: args.audit_sync,
        audit_digests: credvault::trail::DigestPolicy {
            events: args.audit_digest_events,
            interval: args.audit_digest_interval,
        },
        transport: args.transport.settings(),
        refusal_summary_interval: args.transport.refusal_summary_interval,
        tls,
        health_listen: args.health_listen,
        providers: ProviderSettings {
            base_urls: base_urls(args)?,
            connect_timeout: args.provider_connect_timeout,
            request_timeout: args.provider_timeout,
            file: args.providers_file.clone(),
        },
        reverify: ReverifySettings {
            interval: args.reverify_interval,
            concurrency: usize::from(args.reverify_concurrency),
        },
        drain_delay: args.drain_delay,
        liveness_stuck_after: args.liveness_stuck_after,
        shutdown_grace: args.shutdown_grace,
        metrics_listen: args.metrics_listen,
        keep_versions: args.keep_versions as usize,
        recovery_window: args.recovery_window,
        console: args
            .console_listen
            .map(|listen| credvault::console::ConsoleSettings {
                listen,
                session_ttl: args.console_session_ttl,
                max_sessions: args.console_max_sessions as usize,
            }),
        watch: credvault::watch::WatchSettings {
            max_credentials: args.watch.watch_max_credentials as usize,
            max_streams_per_caller: args.watch.watch_max_streams_per_caller as usize,
            max_keys_per_caller: args.watch.watch_max_keys_per_caller as usize,
            max_keys: args.watch.watch_max_keys as usize,
            resync_interval: args.watch.watch_resync_interval,
        },
        feedback: credvault::feedback::FeedbackSettings {
            verify_interval: args.feedback.report_verify_interval,
            budget_window: args.feedback.budget_window,
        },
    })
}

/// `NAME=URL`, as --provider-base-url takes it.
fn parse_base_url(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, url)) if !name.is_empty() && !url.is_empty() => {
            Ok((name.trim().to_owned(), url.trim().to_owned()))
        }
        _ => Err(format!("{value:?} is not NAME=URL")),
    }
}

/// The base URLs by provider: --provider-base-url, and --fleetio-base-url as
/// the older spelling of `fleetio=URL`; one provider named twice is an error.
fn base_urls(args: &ServeArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let legacy = args
        .fleetio_base_url
        .iter()
        .map(|url| (fleetio::NAME.to_owned(), url.clone()));
    let mut urls = BTreeMap::new();
    for (name, url) in args.provider_base_urls.iter().cloned().chain(legacy) {
        if urls.insert(name.clone(), url).is_some() {
            return Err(anyhow!("the base url of provider {name} is set twice"));
        }
    }
    Ok(urls)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
