//! `serve`: its flags (store, keys, transport, watch, feedback, audit), how they
//! resolve into a [`Config`], and the run until a signal.

use super::*;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "CREDVAULT_LISTEN", default_value = "127.0.0.1:50051")]
    pub(super) listen: SocketAddr,
    /// Directory of the store [default: credvault-data, or .credvault-dev with --dev].
    #[arg(long, env = "CREDVAULT_DATA_DIR")]
    pub(super) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(super) keys: KeyArgs,
    #[command(flatten)]
    pub(super) store: StoreArgs,
    /// TOML file listing the callers, their token digests and permissions.
    #[arg(long, env = "CREDVAULT_CALLERS_FILE")]
    pub(super) callers_file: Option<PathBuf>,
    /// Append audit events (JSON lines) here [default: <data-dir>/audit.jsonl; with
    /// --store postgres the database holds the trail, and a file is a second device
    /// only when named here].
    #[arg(long, env = "CREDVAULT_AUDIT_LOG")]
    pub(super) audit_log: Option<PathBuf>,
    /// Serve secret reads even while the audit log cannot be written (default: refuse them).
    #[arg(long, env = "CREDVAULT_AUDIT_FAIL_OPEN")]
    pub(super) audit_fail_open: bool,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key).
    #[arg(long, env = "CREDVAULT_TLS_CERT", requires = "tls_key")]
    pub(super) tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC port (with --tls-cert).
    #[arg(long, env = "CREDVAULT_TLS_KEY", requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates: enables mutual TLS (callers may then be
    /// identified by `tls_subject`); token callers keep working.
    #[arg(long, env = "CREDVAULT_CLIENT_CA", requires = "tls_cert")]
    pub(super) client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists (one or more) of the --client-ca CAs: a client
    /// certificate they revoke is refused at the handshake, and so is one whose CA has
    /// no list here (fail closed). Read at start.
    #[arg(long, env = "CREDVAULT_CLIENT_CRL", requires = "client_ca")]
    pub(super) client_crl: Option<PathBuf>,
    /// A plaintext address serving only gRPC health, for probes when TLS is on.
    #[arg(long, env = "CREDVAULT_HEALTH_LISTEN")]
    pub(super) health_listen: Option<SocketAddr>,
    /// A provider's API base URL over its default, as NAME=URL (repeatable, or
    /// comma-separated in the environment), e.g. fleetio=http://127.0.0.1:8080/api.
    #[arg(long = "provider-base-url", env = "CREDVAULT_PROVIDER_BASE_URL", value_name = "NAME=URL", value_delimiter = ',', value_parser = parse_base_url)]
    pub(super) provider_base_urls: Vec<(String, String)>,
    /// TOML file declaring providers beyond the built-in ones (their fields,
    /// header templates and verification); re-read on SIGHUP and when it
    /// changes. See deploy/providers.example.toml.
    #[arg(long, env = "CREDVAULT_PROVIDERS_FILE")]
    pub(super) providers_file: Option<PathBuf>,
    /// The same as --provider-base-url fleetio=URL (the older flag, still read).
    #[arg(long, env = "CREDVAULT_FLEETIO_BASE_URL", value_name = "URL")]
    pub(super) fleetio_base_url: Option<String>,
    /// Longest wait for a connection to a provider, e.g. 5s.
    #[arg(long, env = "CREDVAULT_PROVIDER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) provider_connect_timeout: Duration,
    /// Longest wait for a whole provider check, e.g. 10s.
    #[arg(long, env = "CREDVAULT_PROVIDER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) provider_timeout: Duration,
    /// Mean time between background re-verifications of every credential (jittered ±10 %); 0s turns them off.
    #[arg(long, env = "CREDVAULT_REVERIFY_INTERVAL", default_value = "6h", value_parser = humantime::parse_duration)]
    pub(super) reverify_interval: Duration,
    /// How many background provider checks may run at once.
    #[arg(long, env = "CREDVAULT_REVERIFY_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(super) reverify_concurrency: u16,
    /// After SIGTERM: how long health answers NOT_SERVING while calls are still served, so
    /// load balancers and Kubernetes readiness stop routing here before connections close.
    #[arg(long, env = "CREDVAULT_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) drain_delay: Duration,
    /// How long the audit trail may stay unwritable while the store takes writes (a
    /// stuck writer: no secret read can be answered, and only a restart heals it)
    /// before liveness turns NOT_SERVING so that Kubernetes restarts the server.
    #[arg(long, env = "CREDVAULT_LIVENESS_STUCK_AFTER", default_value = "2m", value_parser = humantime::parse_duration)]
    pub(super) liveness_stuck_after: Duration,
    /// Serve Prometheus metrics on this address (HTTP, /metrics), e.g. 0.0.0.0:9090.
    #[arg(long, env = "CREDVAULT_METRICS_LISTEN")]
    pub(super) metrics_listen: Option<SocketAddr>,
    /// Serve the operator console (a web page) on this address, e.g. 127.0.0.1:8080:
    /// HTTP, or HTTPS with the server's certificate when --tls-cert is set. Off unless set.
    #[arg(long, env = "CREDVAULT_CONSOLE_LISTEN")]
    pub(super) console_listen: Option<SocketAddr>,
    /// How long a console session lasts after sign-in.
    #[arg(long, env = "CREDVAULT_CONSOLE_SESSION_TTL", default_value = "8h", value_parser = humantime::parse_duration)]
    pub(super) console_session_ttl: Duration,
    /// Secret versions kept per credential, the current one included: an update of the
    /// secret keeps the one it replaces; the oldest beyond this are destroyed.
    #[arg(long, env = "CREDVAULT_KEEP_VERSIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(super) keep_versions: u32,
    /// How long a deleted credential stays recoverable by UndeleteCredential before it is
    /// purged for good (0s: deletes are final at once).
    #[arg(long, env = "CREDVAULT_RECOVERY_WINDOW", default_value = "7d", value_parser = humantime::parse_duration)]
    pub(super) recovery_window: Duration,
    /// Console sessions open at once, server-wide (a sign-in beyond it is refused).
    #[arg(long, env = "CREDVAULT_CONSOLE_MAX_SESSIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(super) console_max_sessions: u32,
    /// Longest wait for in-flight calls to finish once connections stop being accepted.
    #[arg(long, env = "CREDVAULT_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub(super) shutdown_grace: Duration,
    /// Rotate the audit log when it would grow past this size, e.g. 64MiB (0: never).
    #[arg(long, env = "CREDVAULT_AUDIT_MAX_FILE_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub(super) audit_max_file_size: u64,
    /// Rotated audit files kept beside the log (<audit-log>.1 is the newest); older ones
    /// are deleted (0: keep all, for an outside tool to prune).
    #[arg(long, env = "CREDVAULT_AUDIT_MAX_FILES", default_value_t = credvault::audit::DEFAULT_MAX_FILES)]
    pub(super) audit_max_files: usize,
    /// What a secret read waits for before its answer goes out: its audit event
    /// written to the operating system (write), or also fsynced (fsync: the trail
    /// survives a power loss; slower).
    #[arg(
        long,
        env = "CREDVAULT_AUDIT_SYNC",
        value_enum,
        default_value = "write"
    )]
    pub(super) audit_sync: credvault::audit::AuditSync,
    /// Write a signed digest of the audit chain after this many lines...
    #[arg(long, env = "CREDVAULT_AUDIT_DIGEST_EVENTS", default_value_t = credvault::trail::DEFAULT_DIGEST_EVENTS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(super) audit_digest_events: u64,
    /// ...or this long after the first line not yet covered by one, e.g. 5s: the
    /// most that a crash leaves unsigned at the trail's end.
    #[arg(long, env = "CREDVAULT_AUDIT_DIGEST_INTERVAL", default_value = "5s", value_parser = parse_digest_interval)]
    pub(super) audit_digest_interval: Duration,
    /// With --store postgres: delete events older than this from the database's trail
    /// (checked at start and then every quarter of it, at most hourly), e.g. 400d; 0s keeps all.
    #[arg(long, env = "CREDVAULT_AUDIT_RETENTION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub(super) audit_retention: Duration,
    #[command(flatten)]
    pub(super) transport: TransportArgs,
    #[command(flatten)]
    pub(super) watch: WatchArgs,
    #[command(flatten)]
    pub(super) feedback: FeedbackArgs,
    /// Log line format.
    #[arg(long, env = "CREDVAULT_LOG_FORMAT", value_enum, default_value = "text")]
    pub(super) log_format: LogFormat,
    /// Log level or tracing directives, e.g. `info` or `credvault=debug`.
    #[arg(long, env = "CREDVAULT_LOG_LEVEL", default_value = "info")]
    pub(super) log_level: String,
    /// Development mode: makes a data dir, a key file and an all-permissions token on first run.
    #[arg(long, env = "CREDVAULT_DEV")]
    pub(super) dev: bool,
}

/// Limits and timing of WatchCredentialHeaders streams (docs/workers.md).
#[derive(Clone, Debug, Args)]
pub(super) struct WatchArgs {
    /// Credentials one watch stream may name.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_CREDENTIALS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(super) watch_max_credentials: u32,
    /// Watch streams one caller may hold open on this server at once.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_STREAMS_PER_CALLER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) watch_max_streams_per_caller: u32,
    /// Credentials one caller may watch, summed over all its streams on this server.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_KEYS_PER_CALLER", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) watch_max_keys_per_caller: u32,
    /// Credentials watched on this server at most, summed over every stream of every caller.
    #[arg(long, env = "CREDVAULT_WATCH_MAX_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) watch_max_keys: u32,
    /// How often every watched credential is read again whatever was heard: the
    /// longest a lost change notification (PostgreSQL) leaves a watcher stale.
    #[arg(long, env = "CREDVAULT_WATCH_RESYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(super) watch_resync_interval: Duration,
}

/// Workers' reports of the providers' answers and shared request budgets (docs/workers.md).
#[derive(Clone, Debug, Args)]
pub(super) struct FeedbackArgs {
    /// A credential that workers report rejected (401 / 403) is verified again at
    /// most once per this, however many report it.
    #[arg(long, env = "CREDVAULT_REPORT_VERIFY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(super) report_verify_interval: Duration,
    /// The window request budgets are counted over (aligned on the clock; Fleetio's
    /// resets at the minute). A shorter one spreads a minute's budget more evenly.
    #[arg(long, env = "CREDVAULT_BUDGET_WINDOW", default_value = "60s", value_parser = parse_budget_window)]
    pub(super) budget_window: Duration,
}

/// A budget window: 100 ms to 1 hour.
pub(super) fn parse_budget_window(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{value} is out of range: 100ms to 1h"));
    }
    Ok(d)
}

/// The limits that protect the server from its clients (docs/platform.md: Hardening).
#[derive(Clone, Debug, Args)]
pub(super) struct TransportArgs {
    /// HTTP/2 streams one connection may hold open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "CREDVAULT_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) http2_max_concurrent_streams: u32,
    /// Resets a client may provoke on one connection by its protocol errors before the
    /// server answers GOAWAY ENHANCE_YOUR_CALM (CVE-2025-8671).
    #[arg(long, env = "CREDVAULT_HTTP2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) http2_max_local_error_resets: u64,
    /// Longest time from a request's headers to its response's: a whole unary RPC, or the
    /// start of a streaming one (whose stream then lives on, kept alive by pings); 0s: off.
    #[arg(long, env = "CREDVAULT_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(super) request_timeout: Duration,
    /// Send an HTTP/2 PING on a connection this long silent; 0s: never (not advised).
    #[arg(long, env = "CREDVAULT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(super) http2_keepalive_interval: Duration,
    /// Close a connection whose client does not answer a PING within this.
    #[arg(long, env = "CREDVAULT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) http2_keepalive_timeout: Duration,
    /// A new connection must finish TLS and send the HTTP/2 preface within this (its first bytes).
    #[arg(long, env = "CREDVAULT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) handshake_timeout: Duration,
    /// Open connections at most; further ones are closed at once. Lowered at start to
    /// stay below the file descriptor limit.
    #[arg(long, env = "CREDVAULT_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) max_connections: u64,
    /// The listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "CREDVAULT_LISTEN_BACKLOG", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) listen_backlog: u32,
    /// How often refused calls that were only counted (a flood from one peer) are
    /// written as one summary line and audit event per peer.
    #[arg(long, env = "CREDVAULT_REFUSAL_SUMMARY_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) refusal_summary_interval: Duration,
}

impl TransportArgs {
    pub(super) fn settings(&self) -> credvault::transport::TransportSettings {
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
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{text:?} is not a size such as 64MiB: {e}"))
}

/// A digest interval between 100 ms and one hour.
pub(super) fn parse_digest_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is outside 100ms..1h"));
    }
    Ok(d)
}

/// Which store holds the credentials.
#[derive(Clone, Debug, Args)]
pub(super) struct StoreArgs {
    /// The store: `sled` (embedded, in --data-dir, one replica) or `postgres`
    /// (--database-url, any number of replicas).
    #[arg(long, env = "CREDVAULT_STORE", value_enum, default_value = "sled")]
    pub(super) store: StoreKind,
    #[command(flatten)]
    pub(super) database: DatabaseArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum StoreKind {
    Sled,
    Postgres,
}

/// How to reach PostgreSQL.
#[derive(Clone, Debug, Args)]
pub(super) struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://credvault@db:5432/credvault (prefer the environment
    /// variable when it holds a password).
    #[arg(long, env = "CREDVAULT_DATABASE_URL", hide_env_values = true)]
    pub(super) database_url: Option<String>,
    /// A file holding the PostgreSQL URL (e.g. a mounted Secret); instead of --database-url.
    #[arg(
        long,
        env = "CREDVAULT_DATABASE_URL_FILE",
        conflicts_with = "database_url"
    )]
    pub(super) database_url_file: Option<PathBuf>,
    /// Most database connections this process opens.
    #[arg(long, env = "CREDVAULT_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub(super) database_max_connections: usize,
    /// PEM file of the CA that signed the database's certificate (TLS follows the URL's
    /// sslmode; the certificate is always verified, by default against the web roots).
    #[arg(long, env = "CREDVAULT_DATABASE_CA_FILE")]
    pub(super) database_ca_file: Option<PathBuf>,
    /// Longest wait for a database connection.
    #[arg(long, env = "CREDVAULT_DATABASE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) database_timeout: Duration,
    /// How long startup waits for the database to answer.
    #[arg(long, env = "CREDVAULT_DATABASE_STARTUP_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(super) database_startup_wait: Duration,
}

impl DatabaseArgs {
    pub(super) fn settings(&self, url: Option<&str>) -> anyhow::Result<config::PostgresSettings> {
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
    pub(super) fn resolve(
        &self,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<config::StoreConfig> {
        match self.store {
            StoreKind::Sled => Ok(config::StoreConfig::Sled {
                dir: data_dir.to_owned(),
            }),
            StoreKind::Postgres => Ok(config::StoreConfig::Postgres(self.database.settings(None)?)),
        }
    }
}

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<()> {
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

pub(super) fn resolve(dev: bool, args: &ServeArgs) -> anyhow::Result<Config> {
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
    let key_roots = args.keys.roots.settings()?;
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
        keyring: keyring.map(std::sync::Arc::new),
        keyring_source,
        key_roots,
        callers: callers.into(),
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
pub(super) fn parse_base_url(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, url)) if !name.is_empty() && !url.is_empty() => {
            Ok((name.trim().to_owned(), url.trim().to_owned()))
        }
        _ => Err(format!("{value:?} is not NAME=URL")),
    }
}

/// The base URLs by provider: --provider-base-url, and --fleetio-base-url as
/// the older spelling of `fleetio=URL`; one provider named twice is an error.
pub(super) fn base_urls(args: &ServeArgs) -> anyhow::Result<BTreeMap<String, String>> {
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

/// Resolves on SIGINT or SIGTERM. The handlers are in place when this returns,
/// before the server announces itself: a signal that came before them would end
/// the process at once, with nothing drained or flushed.
pub(super) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let next = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = next(interrupt) => tracing::info!("SIGINT received"),
                () = next(terminate) => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received");
            } else {
                std::future::pending::<()>().await;
            }
        }
    }
}
