//! The commands on a store, offline or through the server: rewrap, backup, restore,
//! check a providers file, migrate a database, move between stores.

use super::*;

#[derive(Debug, Args)]
pub(super) struct CheckProvidersArgs {
    /// The providers file (TOML).
    #[arg(long, env = "CREDVAULT_PROVIDERS_FILE")]
    pub(super) providers_file: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct MigrateStoreArgs {
    /// The source: `sled:DIR` (a stopped server's data directory) or `postgres[:URL]`.
    #[arg(long)]
    pub(super) from: String,
    /// The target: `sled:DIR` or `postgres[:URL]` (without a URL: --database-url or
    /// CREDVAULT_DATABASE_URL); it must hold no credential yet.
    #[arg(long)]
    pub(super) to: String,
    #[command(flatten)]
    pub(super) database: DatabaseArgs,
}

/// A store named on the command line.
pub(super) enum Location {
    Sled(PathBuf),
    Postgres(config::PostgresSettings),
}

impl Location {
    pub(super) fn parse(text: &str, database: &DatabaseArgs) -> anyhow::Result<Self> {
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

    pub(super) fn describe(&self) -> String {
        match self {
            Location::Sled(dir) => format!("sled store in {}", dir.display()),
            Location::Postgres(_) => "PostgreSQL database".to_owned(),
        }
    }

    pub(super) async fn snapshot(&self) -> anyhow::Result<credvault::store::Snapshot> {
        let snapshot = match self {
            Location::Sled(dir) => open_offline(dir, None).await?.snapshot().await,
            Location::Postgres(pg) => migrated(pg).await?.snapshot().await,
        };
        Ok(snapshot?)
    }

    pub(super) async fn restore(
        &self,
        snapshot: &credvault::store::Snapshot,
    ) -> anyhow::Result<()> {
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
pub(super) struct RewrapArgs {
    /// The stopped server's data directory.
    #[arg(long, env = "CREDVAULT_DATA_DIR")]
    pub(super) data_dir: PathBuf,
    #[command(flatten)]
    pub(super) keys: KeyArgs,
    /// Credentials per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) batch_size: u32,
}

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    /// The file to write (refused if it exists); readable by its owner only.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// A running server's gRPC address, host:port; the token comes from CREDVAULT_TOKEN.
    #[arg(long, conflicts_with = "data_dir")]
    pub(super) server: Option<String>,
    /// A stopped server's data directory.
    #[arg(long)]
    pub(super) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(super) tls: ClientTls,
    /// With --data-dir: the keyring, whose active key authenticates the backup
    /// (a running server uses its own).
    #[command(flatten)]
    pub(super) keys: KeyArgs,
}

#[derive(Debug, Args)]
pub(super) struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub(super) from: PathBuf,
    /// The new data directory to restore into (must hold no store yet).
    #[arg(long)]
    pub(super) data_dir: PathBuf,
    #[command(flatten)]
    pub(super) keys: KeyArgs,
    /// Restore a format 1 backup, which carries a checksum only and cannot prove
    /// it was not edited (format 2 backups are authenticated and need no flag).
    #[arg(long)]
    pub(super) allow_unauthenticated: bool,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the runtime: {e}"))
}

/// Opens a stopped server's store, explaining the lock error a running one causes.
pub(super) async fn open_offline(
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

pub(super) fn rewrap(args: &RewrapArgs) -> anyhow::Result<()> {
    let batch = usize::try_from(args.batch_size).unwrap_or(100);
    runtime()?.block_on(async {
        let store = open_offline(&args.data_dir, None).await?;
        let keyring = args.keys.keyring_for(&store, true).await?;
        credvault::keys::check_keyring(&store, &keyring).await?;
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

pub(super) fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let bytes = runtime()?.block_on(async {
        match (&args.data_dir, &args.server) {
            (Some(dir), None) => {
                let store = open_offline(dir, None).await?;
                let keyring = args.keys.keyring_for(&store, false).await?;
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

pub(super) async fn backup_from_server(args: &BackupArgs, addr: &str) -> anyhow::Result<Vec<u8>> {
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

pub(super) fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.from)
        .map_err(|e| anyhow!("cannot read {}: {e}", args.from.display()))?;
    let runtime = runtime()?;
    let keyring = runtime.block_on(args.keys.keyring_for_backup(&bytes))?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| anyhow!("cannot make {}: {e}", args.data_dir.display()))?;
    let report = runtime
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
pub(super) fn postgres(pg: &config::PostgresSettings) -> anyhow::Result<credvault::store::PgStore> {
    Ok(credvault::store::PgStore::connect(
        pg.url.expose_secret(),
        &pg.pool,
    )?)
}

/// The database of `pg`, its schema migrated.
pub(super) async fn migrated(
    pg: &config::PostgresSettings,
) -> anyhow::Result<credvault::store::PgStore> {
    let store = postgres(pg)?;
    store.migrate().await?;
    Ok(store)
}

pub(super) fn check_providers(args: &CheckProvidersArgs) -> anyhow::Result<()> {
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

pub(super) fn migrate(args: &DatabaseArgs) -> anyhow::Result<()> {
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

pub(super) fn migrate_store(args: &MigrateStoreArgs) -> anyhow::Result<()> {
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
