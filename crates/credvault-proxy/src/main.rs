//! The `credvault-proxy` binary: `serve`, `check` (the routes file) and `ca`
//! (the CA certificate workers trust for `HTTPS_PROXY`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use credvault_proxy::authority::Authority;
use credvault_proxy::routes::Routes;
use credvault_proxy::{Proxy, Settings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "credvault-proxy",
    version,
    about = "Attaches credvault's headers to workers' HTTP requests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves workers: base-URL form (/c/<credential>/<path>) and proxy form (HTTP_PROXY/HTTPS_PROXY).
    Serve(Box<ServeArgs>),
    /// Checks a routes file and lists its routes; exits non-zero naming the first problem.
    Check(CheckArgs),
    /// Prints the proxy's CA certificate (PEM), making the CA first if there is none.
    Ca(CaArgs),
    /// Mints a worker's token, prints it once, and prints its tokens-file entry.
    Token(TokenArgs),
    /// Asks a running proxy whether it is ready (every routed credential held); exits 0 only then.
    Ready(ReadyArgs),
}

#[derive(Debug, Args)]
struct ReadyArgs {
    /// The proxy's address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The worker's name, as the proxy's logs show it.
    #[arg(long)]
    name: String,
    /// Credential names or globs the worker may use (comma-separated), e.g. fleetio-*.
    #[arg(long, value_delimiter = ',', required = true)]
    credentials: Vec<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Where workers connect: a loopback address (the proxy beside its workers), or
    /// any with --tokens-file (a shared egress proxy).
    #[arg(long, env = "CREDVAULT_PROXY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Workers' tokens (TOML; `credvault-proxy token` makes entries): every request
    /// then needs one, scoped to credential names. Re-read on SIGHUP.
    #[arg(long, env = "CREDVAULT_PROXY_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// The vault: host:port, http://host:port or https://host:port.
    #[arg(long, env = "CREDVAULT_ADDR")]
    vault: String,
    /// The proxy's token for the vault (headers.read on the routed credentials).
    #[arg(
        long,
        env = "CREDVAULT_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding that token (e.g. a mounted Secret); instead of --token.
    #[arg(long, env = "CREDVAULT_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// PEM CA of the vault's TLS certificate (https:// vault addresses; default: the web roots).
    #[arg(long, env = "CREDVAULT_PROXY_VAULT_CA_FILE")]
    vault_ca_file: Option<PathBuf>,
    /// The routes file (TOML): which credential a request in proxy form uses.
    #[arg(long, env = "CREDVAULT_PROXY_ROUTES_FILE")]
    routes_file: Option<PathBuf>,
    #[command(flatten)]
    ca: CaArgs,
    /// Also write the CA certificate (PEM, no key) here at start, for the workers'
    /// trust store (e.g. a volume the worker's container mounts).
    #[arg(long, env = "CREDVAULT_PROXY_EXPORT_CA")]
    export_ca: Option<PathBuf>,
    /// More PEM CAs to trust for the providers (a private provider, a test); the web roots stay trusted.
    #[arg(long, env = "CREDVAULT_PROXY_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<PathBuf>,
    /// How long a request may wait for a paused account or a spent budget (0s: answered 429 at once).
    #[arg(long, env = "CREDVAULT_PROXY_MAX_WAIT", default_value = "0s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// Connections from workers open at once at most [default: the descriptor limit,
    /// raised to its hard value, less 256, at most 65,536].
    #[arg(long, env = "CREDVAULT_PROXY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Threads serving workers, each with its own connections to the providers
    /// [default: the CPUs this process may use].
    #[arg(long, env = "CREDVAULT_PROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Serve Prometheus metrics at /metrics on this address (off when not given).
    #[arg(long, env = "CREDVAULT_PROXY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// `text` or `json` log lines (stderr).
    #[arg(long, env = "CREDVAULT_PROXY_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// A level or tracing directives.
    #[arg(long, env = "CREDVAULT_PROXY_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The routes file (TOML).
    #[arg(long, env = "CREDVAULT_PROXY_ROUTES_FILE")]
    routes_file: PathBuf,
}

#[derive(Debug, Args)]
struct CaArgs {
    /// The directory of the proxy's CA (ca.pem, ca.key, made on first start; keep it private).
    #[arg(
        long,
        env = "CREDVAULT_PROXY_CA_DIR",
        default_value = "credvault-proxy-ca"
    )]
    ca_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => check(&args),
        Command::Ca(args) => Authority::load_or_create(&args.ca_dir)
            .map(|ca| print!("{}", ca.ca_pem()))
            .map_err(|e| e.to_string()),
        Command::Ready(args) => ready(args.addr),
        Command::Token(args) => {
            let (token, entry) = credvault_proxy::workers::mint(&args.name, &args.credentials);
            println!(
                "# token for {:?} (shown once; give it to the worker, store it nowhere else):",
                args.name
            );
            println!("# {token}");
            print!("{entry}");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("credvault-proxy: {message}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &CheckArgs) -> Result<(), String> {
    let routes = Routes::read(&args.routes_file).map_err(|e| e.to_string())?;
    for r in routes.iter() {
        println!(
            "{}{}{} -> {}",
            r.host,
            r.port.map(|p| format!(":{p}")).unwrap_or_default(),
            if r.path_prefix.is_empty() {
                "/*".to_owned()
            } else {
                format!("{}/*", r.path_prefix)
            },
            r.credential
        );
    }
    println!(
        "{}: {} route(s)",
        args.routes_file.display(),
        routes.iter().count()
    );
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("invalid log level {:?}: {e}", args.log_level))?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    if !args.listen.ip().is_loopback() && args.tokens_file.is_none() {
        return Err(format!(
            "--listen {} is not a loopback address: a proxy shared beyond this host needs --tokens-file (each worker's token, scoped to credentials)",
            args.listen
        ));
    }
    let workers = match &args.tokens_file {
        Some(path) => {
            Some(credvault_proxy::workers::Workers::read(path).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let routes = match &args.routes_file {
        Some(path) => Routes::read(path).map_err(|e| e.to_string())?,
        None => Routes::default(),
    };
    let authority =
        Arc::new(Authority::load_or_create(&args.ca.ca_dir).map_err(|e| e.to_string())?);
    if let Some(path) = &args.export_ca {
        std::fs::write(path, authority.ca_pem())
            .map_err(|e| format!("cannot write the CA certificate to {}: {e}", path.display()))?;
    }
    // A redirect is the worker's to follow (through the proxy again), never the proxy's;
    // the proxy's own environment may name a proxy: it is never read.
    let upstream = credvault_proxy::upstream::Upstream::new(
        args.upstream_ca_file.as_deref(),
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())?;
    // This runtime accepts, talks to the vault and serves metrics; the workers'
    // connections are served on --threads threads of their own (`run`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => return Err("give --token or --token-file".into()),
        };
        let mut vault = credvault_client::Client::builder(&args.vault).token(token);
        if let Some(path) = &args.vault_ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            vault = vault.tls(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            );
        }
        let vault = vault.build().map_err(|e| e.to_string())?;
        if let Some(addr) = args.metrics_listen {
            let bound = credvault_proxy::metrics::install(addr)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(metrics = %bound, "metrics at /metrics");
            eprintln!("credvault-proxy metrics on {bound}");
        }
        let settings = Settings {
            routes,
            max_wait: args.max_wait,
            max_connections: args.max_connections.unwrap_or_else(default_max_connections),
            threads: args.threads.map_or(Settings::default().threads, usize::from),
            ..Settings::default()
        };
        let mut proxy = Proxy::new(vault, settings, authority, upstream);
        if let Some(workers) = workers {
            tracing::info!(workers = workers.len(), "workers' tokens required");
            proxy = proxy.with_workers(workers);
        }
        let proxy = Arc::new(proxy);
        // SIGHUP reloads the tokens file, if any; it never ends the proxy.
        let hangups = hangups();
        if let Some(path) = args.tokens_file.clone() {
            tokio::spawn(reload_on_hangup(Arc::clone(&proxy), path, hangups));
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // Hold every routed credential before saying so.
        let warm = Arc::clone(&proxy);
        tokio::spawn(async move {
            match warm.ready().await {
                Ok(()) => tracing::info!("every routed credential is held"),
                Err(e) => tracing::warn!(error = %e, "a routed credential is not held yet; readiness is NOT_SERVING"),
            }
        });
        let shutdown = shutdown();
        tracing::info!(listen = %addr, vault = %args.vault, "credvault-proxy serving");
        println!("credvault-proxy listening on {addr}");
        credvault_proxy::run(listener, proxy, shutdown).await.map_err(|e| e.to_string())?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The connection cap when none is given: what the descriptor limit (raised to
/// its hard value) leaves, less room for the vault's and providers' connections.
fn default_max_connections() -> usize {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    usize::try_from(soft.saturating_sub(256).clamp(64, 65_536)).unwrap_or(1024)
}

/// `credvault-proxy ready`: GET /_credvault/readyz, exit 0 on 200.
fn ready(addr: SocketAddr) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot reach the proxy at {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                credvault_proxy::READY_PATH
            )
            .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = stream.take(4096).read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or("");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if status.starts_with("HTTP/1.1 200") {
        println!("{body}");
        Ok(())
    } else {
        Err(format!("not ready: {body}"))
    }
}

/// SIGHUP from now on (made before the proxy announces itself: a SIGHUP that came
/// before any handler would end the process); `None` where there are no signals.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangups() -> Hangups {
    #[cfg(unix)]
    return tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    None
}

/// Re-reads the tokens file on SIGHUP; a file with a problem leaves the tokens as they were.
async fn reload_on_hangup(proxy: Arc<Proxy>, path: PathBuf, hangups: Hangups) {
    #[cfg(unix)]
    {
        let Some(mut hangups) = hangups else {
            return;
        };
        while hangups.recv().await.is_some() {
            match credvault_proxy::workers::Workers::read(&path) {
                Ok(workers) => {
                    tracing::info!(workers = workers.len(), "workers' tokens reloaded");
                    proxy.reload_workers(workers);
                }
                Err(e) => {
                    tracing::error!(error = %e, "the tokens file could not be reloaded; the tokens in use stay")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (proxy, path, hangups);
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are in place when this returns,
/// before the proxy announces itself: a SIGTERM that came before them would end
/// the process at once, with nothing drained.
fn shutdown() -> impl std::future::Future<Output = ()> {
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
                () = next(interrupt) => {}
                () = next(terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
