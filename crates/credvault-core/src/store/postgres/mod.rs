//! The PostgreSQL store, for several replicas sharing one database.
//!
//! Same semantics as the sled store: unique names (a unique index), check-and-set
//! on the record's revision, time-ordered pagination (ids compared bytewise, in
//! the `C` collation), and a write is acknowledged once PostgreSQL committed it.
//! The database holds the same encrypted record bytes as sled: a DBA with full
//! read access sees names and metadata, never a secret. Nothing is cached, so a
//! write through one replica is what the next read on any replica sees.
//!
//! The binary owns the schema: [`PgStore::migrate`] applies the embedded
//! migrations in order, once, under an advisory lock (replicas may start together).
//!
//! TLS (rustls) follows the URL's `sslmode` (`disable`, `prefer` by default,
//! `require`); when TLS is used the server's certificate is always verified,
//! against the public web roots or the CA given in the settings.
//!
//! Here the pool, its settings and the helpers the parts share; `schema` (the
//! migrations), `tls`, then one file per store capability (`records`, `history`,
//! `usages`, `accounts`, `meta`, `backups`, `health`, `replicas`: the change feed)
//! and `audit` (the audit table every replica writes).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use tokio_postgres::error::SqlState;

use super::{
    Accounts, Backups, Entries, Health, History, ListItem, Meta, Records, Replicas, Snapshot,
    StoreError, Usages,
};
use crate::record::{CredentialRecord, Usage};

mod accounts;
mod backups;
mod health;
mod history;
mod meta;
mod records;
mod replicas;
mod schema;
mod tls;
mod usages;

use self::tls::{connector, only_local};
mod audit;

/// The prefix of a pause's notification on [`CHANGES_CHANNEL`]: `!pause <account hex> <until ms>`
/// (a credential id never starts with `!`).
const PAUSE_NOTICE: &str = "!pause ";

/// The channel credential writes are announced on (`LISTEN credvault_changes`):
/// the payload is the record's id and name, separated by a space.
pub(super) const CHANGES_CHANNEL: &str = "credvault_changes";

/// How the pool reaches the database.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// Most connections this process opens.
    pub max_connections: usize,
    /// Longest wait for a connection (opening one, or a free one from the pool).
    pub timeout: Duration,
    /// PEM file of the CA that signed the database's certificate (default: the public web roots).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            max_connections: 16,
            timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

/// A PostgreSQL-backed [`Store`](super::Store).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// How to open a connection of its own (the change listener's).
    connect: Arc<(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    )>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    // Display of a database error names the failure, never the connection password.
    match e.as_db_error() {
        // Data exceptions (22: a NUL byte, a bad encoding, a value out of range) and
        // program limits (54: an index row too large) are the value's fault, not
        // the database's: a batch isolates the row (see `write_isolating`).
        Some(d) if matches!(&d.code().code()[..2], "22" | "54") => {
            StoreError::Rejected(format!("{} (SQLSTATE {})", d.message(), d.code().code()))
        }
        Some(d) => StoreError::Io(format!("database error: {}", d.message())),
        None => {
            // The cause (e.g. "invalid peer certificate: UnknownIssuer") is in the source chain.
            let mut text = format!("the database is unreachable: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            StoreError::Unreachable(text)
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        deadpool_postgres::PoolError::Timeout(_) => StoreError::Unreachable(
            "the database is unreachable: no connection within the timeout".into(),
        ),
        e => StoreError::Unreachable(format!("the database is unreachable: {e}")),
    }
}

fn decode(id: &str, bytes: &[u8]) -> Result<CredentialRecord, StoreError> {
    CredentialRecord::from_bytes(id, bytes).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A seal id (any u64) as the bigint column holds it, and back: bit for bit.
fn seal_column(seal_id: u64) -> i64 {
    i64::from_be_bytes(seal_id.to_be_bytes())
}

fn seal_id(column: i64) -> u64 {
    u64::from_be_bytes(column.to_be_bytes())
}

/// Listing items from rows of (id, record).
fn items(rows: &[tokio_postgres::Row]) -> Vec<ListItem> {
    rows.iter()
        .map(|r| {
            let id: String = r.get(0);
            let record = decode(&id, r.get(1));
            (id, record)
        })
        .collect()
}

/// Erasable keys from rows of (id, seal, key), by credential id.
fn keys_by_id(
    rows: &[tokio_postgres::Row],
) -> std::collections::HashMap<String, Vec<crate::record::ErasableKey>> {
    let mut out: std::collections::HashMap<String, Vec<crate::record::ErasableKey>> =
        std::collections::HashMap::new();
    for r in rows {
        out.entry(r.get(0))
            .or_default()
            .push(crate::record::ErasableKey {
                seal_id: seal_id(r.get(1)),
                key: r.get(2),
            });
    }
    out
}

/// The record `sql` (a `SELECT record … WHERE id = $1 FOR UPDATE`) finds for `id`,
/// locked until the transaction ends; `NotFound` when there is none.
async fn locked_record(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    id: &str,
) -> Result<CredentialRecord, StoreError> {
    let row = tx
        .query_opt(sql, &[&id])
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    decode(id, row.get(0))
}

impl PgStore {
    /// A pool for the database at `url` (a libpq URL or key=value string). Connects lazily.
    pub fn connect(url: &str, settings: &PgSettings) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Io(
                "the database URL is not valid (postgres://user:password@host:port/database)"
                    .into(),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("credvault");
        }
        // TLS is required unless the URL says otherwise or every host is this
        // machine (a loopback address or a Unix socket): libpq's default,
        // `prefer`, falls back to plain text when a server (or an attacker in the
        // middle) offers no TLS.
        if !url.contains("sslmode") && !only_local(&config) {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let tls = connector(settings.ca_file.as_deref())?;
        let connect = Arc::new((config.clone(), tls.clone()));
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections.max(1))
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Io(format!("cannot build the connection pool: {e}")))?;
        Ok(PgStore { pool, connect })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// The erasable keys of the records among `items`, attached.
    async fn attach(&self, mut items: Vec<ListItem>) -> Result<Vec<ListItem>, StoreError> {
        let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
        if ids.is_empty() {
            return Ok(items);
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT id, seal, key FROM credvault_erasable_keys WHERE id = ANY($1)")
            .await
            .map_err(db)?;
        let rows = client.query(&statement, &[&ids]).await.map_err(db)?;
        let mut keys = keys_by_id(&rows);
        for (id, record) in &mut items {
            if let Ok(record) = record {
                record.erasable = keys.remove(id.as_str()).unwrap_or_default();
            }
        }
        Ok(items)
    }

    async fn exists(&self, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT version, revision FROM credvault_credentials WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
    }
}
