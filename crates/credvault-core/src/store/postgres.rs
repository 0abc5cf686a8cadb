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

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use tokio_postgres::error::SqlState;

use super::{Entries, ListItem, Snapshot, Store, StoreError};
use crate::record::{CredentialRecord, Usage};

/// The schema migrations, in order; each runs once, in a transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "credentials, names, metadata, seal reservations and last uses",
        r#"
CREATE TABLE credvault_credentials (
    id       text COLLATE "C" PRIMARY KEY,
    name     text COLLATE "C" NOT NULL,
    version  bigint NOT NULL,
    revision bigint NOT NULL,
    record   bytea NOT NULL
);
CREATE UNIQUE INDEX credvault_credentials_name ON credvault_credentials (name);
CREATE TABLE credvault_meta (
    key   text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE credvault_seals (
    key_id   text COLLATE "C" PRIMARY KEY,
    reserved bigint NOT NULL
);
CREATE TABLE credvault_usage (
    id    text COLLATE "C" PRIMARY KEY REFERENCES credvault_credentials (id) ON DELETE CASCADE,
    value bytea NOT NULL
);
"#,
    ),
    (
        2,
        "a row per running server, written every second to tell whether the database takes writes",
        r#"
CREATE TABLE credvault_write_probe (
    instance text COLLATE "C" PRIMARY KEY,
    at       timestamptz NOT NULL
);
"#,
    ),
    (
        3,
        "the audit trail of every replica",
        r#"
CREATE TABLE credvault_audit (
    seq             bigserial PRIMARY KEY,
    time            timestamptz NOT NULL,
    caller          text COLLATE "C" NOT NULL,
    credential_id   text COLLATE "C" NOT NULL,
    credential_name text COLLATE "C" NOT NULL,
    event           text NOT NULL
);
CREATE INDEX credvault_audit_time ON credvault_audit (time);
CREATE INDEX credvault_audit_credential_id ON credvault_audit (credential_id, seq);
CREATE INDEX credvault_audit_credential_name ON credvault_audit (credential_name, seq);
CREATE INDEX credvault_audit_caller ON credvault_audit (caller, seq);
"#,
    ),
    (
        4,
        "a notification on every credential write, for watch streams on every replica",
        r#"
CREATE FUNCTION credvault_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('credvault_changes', OLD.id || ' ' || OLD.name);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('credvault_changes', NEW.id || ' ' || NEW.name);
    RETURN NEW;
END
$$;
CREATE TRIGGER credvault_credentials_changed
    AFTER INSERT OR UPDATE OR DELETE ON credvault_credentials
    FOR EACH ROW EXECUTE FUNCTION credvault_notify_change();
"#,
    ),
    (
        5,
        "pauses of provider accounts and request budget counters, shared by every replica",
        r#"
CREATE TABLE credvault_pauses (
    account  bytea PRIMARY KEY,
    until_ms bigint NOT NULL
);
CREATE TABLE credvault_budgets (
    account         bytea PRIMARY KEY,
    window_start_ms bigint NOT NULL,
    granted         bigint NOT NULL,
    last_grant      bigint NOT NULL
);
"#,
    ),
    (
        6,
        "erasable keys of sealed versions, and deleted credentials kept until purged",
        r#"
CREATE TABLE credvault_erasable_keys (
    id   text COLLATE "C" NOT NULL,
    seal bigint NOT NULL,
    key  bytea NOT NULL,
    PRIMARY KEY (id, seal)
);
CREATE TABLE credvault_deleted (
    id       text COLLATE "C" PRIMARY KEY,
    name     text COLLATE "C" NOT NULL,
    revision bigint NOT NULL,
    purge_at bigint NOT NULL,
    record   bytea NOT NULL
);
"#,
    ),
    (
        7,
        "when each erasable key was made, so that a sweep erases only keys no write is still using",
        r#"
ALTER TABLE credvault_erasable_keys ADD COLUMN created timestamptz NOT NULL DEFAULT now();
"#,
    ),
    (
        8,
        "each audit row's place in its writer's hash chain, and whether it is a digest or marks line",
        r#"
ALTER TABLE credvault_audit
    ADD COLUMN chain     text COLLATE "C" NOT NULL DEFAULT '',
    ADD COLUMN chain_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN proof     boolean NOT NULL DEFAULT false;
CREATE INDEX credvault_audit_chain ON credvault_audit (chain, chain_seq) WHERE proof;
"#,
    ),
];

/// The prefix of a pause's notification on [`CHANGES_CHANNEL`]: `!pause <account hex> <until ms>`
/// (a credential id never starts with `!`).
const PAUSE_NOTICE: &str = "!pause ";

/// The channel credential writes are announced on (`LISTEN credvault_changes`):
/// the payload is the record's id and name, separated by a space.
pub(super) const CHANGES_CHANNEL: &str = "credvault_changes";

/// An arbitrary constant that names credvault's migration lock.
const MIGRATION_LOCK: i64 = 0x6372_6564_7661_756c;

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

/// A PostgreSQL-backed [`Store`].
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

/// Whether every host `config` names is this machine: a Unix socket, `localhost`
/// or a loopback address.
fn only_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let local = |name: &str| {
        name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let hosts = config.get_hosts();
    !hosts.is_empty()
        && hosts.iter().all(|h| match h {
            Host::Tcp(name) => local(name),
            Host::Unix(_) => true,
        })
        && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
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

/// The TLS connector: rustls with ring, verifying the server against `ca_file` or the web roots.
fn tls(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|e| {
                    StoreError::Io(format!(
                        "cannot read the database CA file {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Io(format!(
                    "the database CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Io(format!("tls setup failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
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
        let tls = tls(settings.ca_file.as_deref())?;
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

    /// Listens for credential writes on a connection of its own, telling `sink`
    /// of each; after every (re)connection, asks for a resync, since writes made
    /// while it was away were not heard. Reconnects with a backoff up to 10 s.
    async fn listen(
        self: Arc<Self>,
        sink: super::ChangeSink,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use futures_util::StreamExt;
        let mut backoff = Duration::from_millis(100);
        let mut was_down = false;
        loop {
            let (config, tls) = &*self.connect;
            let connected = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                c = config.connect(tls.clone()) => c,
            };
            let (client, mut connection) = match connected {
                Ok(c) => c,
                Err(e) => {
                    if !was_down {
                        tracing::warn!(error = %db(e), "the change listener cannot reach the database; watchers on this replica hear only its own writes until it can");
                        was_down = true;
                    }
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let ready = {
                let statement = format!("LISTEN {CHANGES_CHANNEL}");
                // The connection must be polled for LISTEN to complete.
                let mut listen = std::pin::pin!(client.batch_execute(&statement));
                loop {
                    tokio::select! {
                        r = &mut listen => break r.map_err(db),
                        m = messages.next() => match m {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break Err(db(e)),
                            None => break Err(StoreError::Unreachable("the listening connection closed".into())),
                        },
                    }
                }
            };
            if let Err(e) = ready {
                tracing::warn!(error = %e, "the change listener could not LISTEN; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            if was_down {
                tracing::info!(
                    "the change listener is back: watchers hear other replicas' writes again"
                );
            }
            backoff = Duration::from_millis(100);
            // Writes made while no one listened were not heard.
            sink(super::StoreChange::Resync);
            loop {
                let message = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    m = messages.next() => m,
                };
                match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if let Some(pause) = n.payload().strip_prefix(PAUSE_NOTICE) {
                            if let Some((account, until_ms)) = parse_pause(pause) {
                                sink(super::StoreChange::Pause { account, until_ms });
                            }
                        } else if let Some((id, name)) = n.payload().split_once(' ') {
                            sink(super::StoreChange::Record { id, name });
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %db(e), "the change listener lost its connection; reconnecting");
                        was_down = true;
                        break;
                    }
                    None => {
                        tracing::warn!("the change listener's connection closed; reconnecting");
                        was_down = true;
                        break;
                    }
                }
            }
            drop(client);
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies the migrations not yet applied; returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS credvault_schema_migrations (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM credvault_schema_migrations", &[])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(newer) = applied.iter().find(|v| **v > MIGRATIONS.len() as i32) {
            return Err(StoreError::Io(format!(
                "the database schema is at version {newer}, newer than this credvault knows ({}); upgrade credvault",
                MIGRATIONS.len()
            )));
        }
        let mut done = Vec::new();
        for (version, description, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO credvault_schema_migrations (version, description) VALUES ($1, $2)",
                &[version, description],
            )
            .await
            .map_err(db)?;
            done.push(*version);
        }
        tx.commit().await.map_err(db)?;
        Ok(done)
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

/// Events deleted per statement when pruning (short transactions, no long locks).
const PRUNE_BATCH: i64 = 10_000;

impl super::AuditTable for PgStore {
    fn append_audit(
        &self,
        rows: Vec<super::AuditRow>,
    ) -> super::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let mut times = Vec::with_capacity(rows.len());
            let (mut callers, mut ids, mut names, mut lines) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut chains, mut seqs, mut proofs) = (Vec::new(), Vec::new(), Vec::new());
            for row in rows {
                times.push(row.time);
                callers.push(row.caller);
                ids.push(row.credential_id);
                names.push(row.credential_name);
                lines.push(row.line);
                chains.push(row.chain);
                seqs.push(row.chain_seq);
                proofs.push(row.proof);
            }
            // One statement for the group, in the order the events were recorded.
            self.client()
                .await?
                .execute(
                    "INSERT INTO credvault_audit (time, caller, credential_id, credential_name, event, chain, chain_seq, proof)
                     SELECT time, caller, credential_id, credential_name, event, chain, chain_seq, proof
                     FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::bigint[], $8::boolean[])
                     WITH ORDINALITY AS r(time, caller, credential_id, credential_name, event, chain, chain_seq, proof, n)
                     ORDER BY n",
                    &[&times, &callers, &ids, &names, &lines, &chains, &seqs, &proofs],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn list_audit(
        &self,
        filter: super::AuditFilter,
        after: i64,
        limit: usize,
    ) -> super::BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT seq, event FROM credvault_audit
                     WHERE seq > $1 AND ($8 OR NOT proof)
                       AND ($2::text IS NULL OR credential_id = $2)
                       AND ($3::text IS NULL OR credential_name = $3)
                       AND ($4::text IS NULL OR caller = $4)
                       AND ($5::timestamptz IS NULL OR time >= $5)
                       AND ($6::timestamptz IS NULL OR time < $6)
                     ORDER BY seq LIMIT $7",
                    &[
                        &after,
                        &filter.credential_id,
                        &filter.credential_name,
                        &filter.caller,
                        &filter.start,
                        &filter.end,
                        &limit,
                        &filter.proofs,
                    ],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn prune_audit(
        &self,
        before: std::time::SystemTime,
    ) -> super::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut pruned = 0;
            loop {
                let n = client
                    .execute(
                        // Each chain keeps its last digest from before the cutoff and
                        // what follows: a signed checkpoint the rest verifies from.
                        "DELETE FROM credvault_audit WHERE seq IN (
                             SELECT a.seq FROM credvault_audit a
                             WHERE a.time < $1
                               AND (a.chain = '' OR a.chain_seq < (
                                   SELECT max(d.chain_seq) FROM credvault_audit d
                                   WHERE d.proof AND d.chain = a.chain AND d.time < $1
                                     AND d.event LIKE '{\"kind\":\"digest\"%'))
                             ORDER BY a.seq LIMIT $2)",
                        &[&before, &PRUNE_BATCH],
                    )
                    .await
                    .map_err(db)?;
                pruned += n;
                if n < PRUNE_BATCH as u64 {
                    return Ok(pruned);
                }
            }
        })
    }

    fn probe_audit(&self) -> super::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute(
                "INSERT INTO credvault_audit (time, caller, credential_id, credential_name, event)
                 VALUES (now(), '', '', '', '{}')",
                &[],
            )
            .await
            .map_err(db)?;
            tx.rollback().await.map_err(db)
        })
    }
}

impl Store for PgStore {
    async fn meta(&self, prefix: &str) -> Result<Entries, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT key, value FROM credvault_meta WHERE starts_with(key, $1) ORDER BY key",
                &[&prefix],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO credvault_meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM credvault_meta WHERE key = $1", &[&key])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let client = self.client().await?;
        // One round trip, one row: the record and its erasable keys.
        let statement = client
            .prepare_cached(
                "SELECT c.record,
                        ARRAY(SELECT k.seal FROM credvault_erasable_keys k WHERE k.id = c.id ORDER BY k.seal),
                        ARRAY(SELECT k.key FROM credvault_erasable_keys k WHERE k.id = c.id ORDER BY k.seal)
                 FROM credvault_credentials c WHERE c.id = $1",
            )
            .await
            .map_err(db)?;
        let Some(row) = client.query_opt(&statement, &[&id]).await.map_err(db)? else {
            return Ok(None);
        };
        let mut record = decode(id, row.get(0))?;
        let (seals, keys): (Vec<i64>, Vec<Vec<u8>>) = (row.get(1), row.get(2));
        record.erasable = seals
            .into_iter()
            .zip(keys)
            .map(|(s, key)| crate::record::ErasableKey {
                seal_id: seal_id(s),
                key,
            })
            .collect();
        Ok(Some(record))
    }

    async fn id_for_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT id FROM credvault_credentials WHERE name = $1")
            .await
            .map_err(db)?;
        let row = client.query_opt(&statement, &[&name]).await.map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ListItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // Two statements, so each page is an index range scan (a generic plan of
        // `$1 IS NULL OR id > $1` cannot use the primary key).
        let rows = match after {
            Some(after) => {
                let statement = client
                    .prepare_cached(
                        "SELECT id, record FROM credvault_credentials WHERE id > $1 ORDER BY id LIMIT $2",
                    )
                    .await
                    .map_err(db)?;
                client.query(&statement, &[&after, &limit]).await
            }
            None => {
                let statement = client
                    .prepare_cached(
                        "SELECT id, record FROM credvault_credentials ORDER BY id LIMIT $1",
                    )
                    .await
                    .map_err(db)?;
                client.query(&statement, &[&limit]).await
            }
        }
        .map_err(db)?;
        self.attach(items(&rows)).await
    }

    async fn count(&self) -> Result<usize, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM credvault_credentials", &[])
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn insert(&self, record: &CredentialRecord) -> Result<(), StoreError> {
        let result = self
            .client()
            .await?
            .execute(
                "INSERT INTO credvault_credentials (id, name, version, revision, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &record.id,
                    &record.name,
                    &signed(record.version),
                    &signed(record.revision),
                    &record.to_bytes(),
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::NameTaken(record.name.clone()))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn replace(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE credvault_credentials SET version = $2, revision = $3, record = $4
                 WHERE id = $1 AND revision = $5",
                &[
                    &record.id,
                    &signed(record.version),
                    &signed(record.revision),
                    &record.to_bytes(),
                    &signed(expected_revision),
                ],
            )
            .await
            .map_err(db)?;
        if updated == 1 {
            return Ok(());
        }
        match self.exists(&record.id).await? {
            None => Err(StoreError::NotFound(record.id.clone())),
            Some(_) => Err(StoreError::Conflict(record.id.clone())),
        }
    }

    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
        let expected = expected_version.map(signed);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let deleted = tx
            .execute(
                "DELETE FROM credvault_credentials
                 WHERE id = $1 AND ($2::bigint IS NULL OR version = $2)",
                &[&id, &expected],
            )
            .await
            .map_err(db)?;
        if deleted == 1 {
            tx.execute("DELETE FROM credvault_erasable_keys WHERE id = $1", &[&id])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(());
        }
        drop(tx);
        match (self.exists(id).await?, expected_version) {
            (Some((actual, _)), Some(expected)) => Err(StoreError::VersionMismatch {
                id: id.to_owned(),
                expected,
                actual,
            }),
            _ => Err(StoreError::NotFound(id.to_owned())),
        }
    }

    async fn delete_keeping(
        &self,
        id: &str,
        expected_version: Option<u64>,
        deletion: &super::Deletion,
        stamp: &super::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = tx
            .query_opt(
                "SELECT record FROM credvault_credentials WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let mut record = decode(id, row.get(0))?;
        if let Some(expected) = expected_version {
            if record.version != expected {
                return Err(StoreError::VersionMismatch {
                    id: id.to_owned(),
                    expected,
                    actual: record.version,
                });
            }
        }
        record.mark_deleted(
            deletion.delete_time,
            deletion.purge_time,
            &deletion.deleted_by,
        );
        stamp(&mut record);
        tx.execute(
            "INSERT INTO credvault_deleted (id, name, revision, purge_at, record)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &id,
                &record.name,
                &signed(record.revision),
                &deletion.purge_time.seconds,
                &record.to_bytes(),
            ],
        )
        .await
        .map_err(db)?;
        tx.execute("DELETE FROM credvault_credentials WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut items = self.attach(vec![(id.to_owned(), Ok(record))]).await?;
        items
            .pop()
            .map_or_else(|| Err(StoreError::NotFound(id.to_owned())), |(_, r)| r)
    }

    async fn deleted(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT record FROM credvault_deleted WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let record = decode(id, row.get(0));
        let mut items = self.attach(vec![(id.to_owned(), record)]).await?;
        items.pop().map(|(_, r)| r).transpose()
    }

    async fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, record FROM credvault_deleted WHERE ($1::text IS NULL OR id > $1)
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(db)?;
        self.attach(items(&rows)).await
    }

    async fn undelete(
        &self,
        id: &str,
        stamp: &super::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = tx
            .query_opt(
                "SELECT record FROM credvault_deleted WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let mut record = decode(id, row.get(0))?;
        record.mark_undeleted();
        stamp(&mut record);
        let inserted = tx
            .execute(
                "INSERT INTO credvault_credentials (id, name, version, revision, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id,
                    &record.name,
                    &signed(record.version),
                    &signed(record.revision),
                    &record.to_bytes(),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::NameTaken(record.name.clone()))
            }
            Err(e) => return Err(db(e)),
        }
        tx.execute("DELETE FROM credvault_deleted WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut items = self.attach(vec![(id.to_owned(), Ok(record))]).await?;
        items
            .pop()
            .map_or_else(|| Err(StoreError::NotFound(id.to_owned())), |(_, r)| r)
    }

    async fn replace_deleted(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE credvault_deleted SET revision = $2, record = $3
                 WHERE id = $1 AND revision = $4",
                &[
                    &record.id,
                    &signed(record.revision),
                    &record.to_bytes(),
                    &signed(expected_revision),
                ],
            )
            .await
            .map_err(db)?;
        match updated {
            1 => Ok(()),
            _ => Err(StoreError::Conflict(record.id.clone())),
        }
    }

    async fn purge(&self, id: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let gone = tx
            .execute("DELETE FROM credvault_deleted WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        if gone == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        tx.execute("DELETE FROM credvault_erasable_keys WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn put_erasable(&self, id: &str, seal_id: u64, key: &[u8; 32]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO credvault_erasable_keys (id, seal, key) VALUES ($1, $2, $3)
                 ON CONFLICT (id, seal) DO UPDATE SET key = EXCLUDED.key",
                &[&id, &seal_column(seal_id), &key.as_slice()],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn erase(&self, id: &str, seal_ids: &[u64]) -> Result<(), StoreError> {
        let seals: Vec<i64> = seal_ids.iter().map(|s| seal_column(*s)).collect();
        self.client()
            .await?
            .execute(
                "DELETE FROM credvault_erasable_keys WHERE id = $1 AND seal = ANY($2)",
                &[&id, &seals],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn sweep_erasable(&self, grace: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let secs = grace.as_secs_f64();
        let ids = client
            .query(
                "SELECT DISTINCT id FROM credvault_erasable_keys
                 WHERE created < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await
            .map_err(db)?;
        let mut erased = 0;
        for row in ids {
            let id: String = row.get(0);
            let record = match self.get(&id).await {
                Ok(Some(record)) => Some(record),
                Ok(None) => match self.deleted(&id).await {
                    Ok(found) => found,
                    // A damaged record may still be repaired from a backup: keep its keys.
                    Err(StoreError::Corrupt { .. }) => continue,
                    Err(e) => return Err(e),
                },
                Err(StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            let referenced: Vec<i64> = record
                .map(|r| r.seal_ids().into_iter().map(seal_column).collect())
                .unwrap_or_default();
            // Keys made within the grace may belong to a write under way (a key is
            // stored before the record that refers to it): never these.
            erased += client
                .execute(
                    "DELETE FROM credvault_erasable_keys
                     WHERE id = $1 AND created < now() - make_interval(secs => $2)
                       AND NOT (seal = ANY($3))",
                    &[&id, &secs, &referenced],
                )
                .await
                .map_err(db)?;
        }
        Ok(erased)
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value FROM credvault_usage WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        // Usage is advisory: an unreadable entry reads as none.
        Ok(row.and_then(|r| prost::Message::decode(r.get::<_, &[u8]>(0)).ok()))
    }

    async fn usages(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Usage>, StoreError> {
        if ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, value FROM credvault_usage WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(db)?;
        // Usage is advisory: an unreadable entry reads as none.
        Ok(rows
            .iter()
            .filter_map(|r| {
                let usage = prost::Message::decode(r.get::<_, &[u8]>(1)).ok()?;
                Some((r.get::<_, String>(0), usage))
            })
            .collect())
    }

    async fn record_usage(&self, batch: &[(String, Usage)]) -> Result<(), StoreError> {
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let values: Vec<Vec<u8>> = batch
            .iter()
            .map(|(_, u)| prost::Message::encode_to_vec(u))
            .collect();
        // Ids no longer stored are skipped by the join.
        self.client()
            .await?
            .execute(
                "INSERT INTO credvault_usage (id, value)
                 SELECT u.id, u.value FROM unnest($1::text[], $2::bytea[]) AS u(id, value)
                 JOIN credvault_credentials c ON c.id = u.id
                 ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                &[&ids, &values],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn put_pause(
        &self,
        account: &[u8; 32],
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let account = account.as_slice();
        let notice = format!("{PAUSE_NOTICE}{} ", hex::encode(account));
        // The row and the notification commit together; expired rows are reused.
        let row = self
            .client()
            .await?
            .query_one(
                "WITH up AS (
                     INSERT INTO credvault_pauses AS p (account, until_ms) VALUES ($1, $2)
                     ON CONFLICT (account) DO UPDATE SET until_ms = GREATEST(p.until_ms, EXCLUDED.until_ms)
                     RETURNING until_ms
                 )
                 SELECT until_ms, pg_notify('credvault_changes', $3 || until_ms::text) FROM up",
                &[&account, &until_ms, &notice],
            )
            .await
            .map_err(db)?;
        Ok(Some(row.get(0)))
    }

    async fn pauses(&self, now_ms: i64) -> Result<Vec<([u8; 32], i64)>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM credvault_pauses WHERE until_ms <= $1",
                &[&now_ms],
            )
            .await
            .map_err(db)?;
        let rows = client
            .query("SELECT account, until_ms FROM credvault_pauses", &[])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get::<_, &[u8]>(0).try_into().ok()?, r.get(1))))
            .collect())
    }

    async fn take_budget(
        &self,
        account: &[u8; 32],
        window_start_ms: i64,
        want: u32,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        let (want, limit) = (i64::from(want), i64::from(limit));
        // One statement under the row's lock: replicas never grant past the limit.
        // A row of an older window starts over; a replica whose clock runs behind
        // counts in the newer window it finds.
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO credvault_budgets AS b (account, window_start_ms, granted, last_grant)
                 VALUES ($1, $2::bigint, LEAST($3::bigint, $4::bigint), LEAST($3::bigint, $4::bigint))
                 ON CONFLICT (account) DO UPDATE SET
                     last_grant = CASE WHEN b.window_start_ms >= $2
                         THEN LEAST($3, GREATEST($4 - b.granted, 0)) ELSE LEAST($3, $4) END,
                     granted = CASE WHEN b.window_start_ms >= $2
                         THEN b.granted + LEAST($3, GREATEST($4 - b.granted, 0)) ELSE LEAST($3, $4) END,
                     window_start_ms = GREATEST(b.window_start_ms, $2)
                 RETURNING last_grant",
                &[&account.as_slice(), &window_start_ms, &want, &limit],
            )
            .await
            .map_err(db)?;
        Ok(Some(u32::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
    }

    async fn reserve_seals(&self, key_id: &str, count: u64) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO credvault_seals (key_id, reserved) VALUES ($1, $2)
                 ON CONFLICT (key_id) DO UPDATE SET reserved = credvault_seals.reserved + $2
                 RETURNING reserved",
                &[&key_id, &signed(count)],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn seal_reservations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT key_id, reserved FROM credvault_seals", &[])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        // One repeatable-read transaction sees one instant; writers are not blocked.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let entries = |rows: Vec<tokio_postgres::Row>| -> Entries {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let records = tx
            .query(
                "SELECT id, record FROM credvault_credentials ORDER BY id",
                &[],
            )
            .await
            .map_err(db)?;
        let mut meta = entries(
            tx.query("SELECT key, value FROM credvault_meta ORDER BY key", &[])
                .await
                .map_err(db)?,
        );
        for row in tx
            .query("SELECT key_id, reserved FROM credvault_seals", &[])
            .await
            .map_err(db)?
        {
            let (id, reserved): (String, i64) = (row.get(0), row.get(1));
            meta.push((
                format!("{}{id}", super::SEALS_META_PREFIX),
                (reserved as u64).to_be_bytes().to_vec(),
            ));
        }
        let usage = tx
            .query("SELECT id, value FROM credvault_usage ORDER BY id", &[])
            .await
            .map_err(db)?;
        let deleted = tx
            .query("SELECT id, record FROM credvault_deleted ORDER BY id", &[])
            .await
            .map_err(db)?;
        let keys = tx
            .query("SELECT id, seal, key FROM credvault_erasable_keys", &[])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut erasable: Entries = keys
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                (super::erasable_entry_key(&id, seal_id(r.get(1))), r.get(2))
            })
            .collect();
        erasable.sort();
        Ok(Snapshot {
            records: entries(records),
            meta,
            usage: entries(usage),
            deleted: entries(deleted),
            erasable,
        })
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let held: i64 = tx
            .query_one(
                "SELECT (SELECT count(*) FROM credvault_credentials) + (SELECT count(*) FROM credvault_meta)
                      + (SELECT count(*) FROM credvault_deleted)",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if held > 0 {
            return Err(StoreError::NotEmpty);
        }
        for (id, bytes) in &snapshot.records {
            // A record damaged before the snapshot cannot be indexed by name; it is skipped.
            let Ok(record) = decode(id, bytes) else {
                continue;
            };
            tx.execute(
                "INSERT INTO credvault_credentials (id, name, version, revision, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    id,
                    &record.name,
                    &signed(record.version),
                    &signed(record.revision),
                    bytes,
                ],
            )
            .await
            .map_err(db)?;
        }
        for (key, value) in &snapshot.meta {
            if let Some(id) = key.strip_prefix(super::SEALS_META_PREFIX) {
                let reserved = <[u8; 8]>::try_from(value.as_slice())
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX >> 1);
                tx.execute(
                    "INSERT INTO credvault_seals (key_id, reserved) VALUES ($1, $2)",
                    &[&id, &signed(reserved)],
                )
                .await
                .map_err(db)?;
            } else {
                tx.execute(
                    "INSERT INTO credvault_meta (key, value) VALUES ($1, $2)",
                    &[key, value],
                )
                .await
                .map_err(db)?;
            }
        }
        for (id, value) in &snapshot.usage {
            tx.execute(
                "INSERT INTO credvault_usage (id, value)
                 SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM credvault_credentials WHERE id = $1)",
                &[id, value],
            )
            .await
            .map_err(db)?;
        }
        for (id, bytes) in &snapshot.deleted {
            let Ok(record) = decode(id, bytes) else {
                continue;
            };
            let purge_at = record.purge_time.map_or(0, |t| t.seconds);
            tx.execute(
                "INSERT INTO credvault_deleted (id, name, revision, purge_at, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[id, &record.name, &signed(record.revision), &purge_at, bytes],
            )
            .await
            .map_err(db)?;
        }
        for (key, value) in &snapshot.erasable {
            let Some((id, seal)) = super::parse_erasable_entry_key(key) else {
                return Err(StoreError::Corrupt {
                    id: key.clone(),
                    reason: "not an erasable key".into(),
                });
            };
            tx.execute(
                "INSERT INTO credvault_erasable_keys (id, seal, key) VALUES ($1, $2, $3)",
                &[&id, &seal_column(seal), value],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every statement above committed (synchronous_commit) before it returned.
        Ok(())
    }

    fn write_error(&self) -> Option<String> {
        None
    }

    fn audit_table(self: &std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn super::AuditTable>> {
        Some(std::sync::Arc::clone(self) as std::sync::Arc<dyn super::AuditTable>)
    }

    fn listen_changes(
        self: &Arc<Self>,
        sink: super::ChangeSink,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(Arc::clone(self).listen(sink, stop)))
    }

    async fn probe_write(&self, instance: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "WITH gone AS (DELETE FROM credvault_write_probe
                               WHERE at < now() - interval '10 minutes' AND instance <> $1)
                 INSERT INTO credvault_write_probe (instance, at) VALUES ($1, now())
                 ON CONFLICT (instance) DO UPDATE SET at = EXCLUDED.at",
                &[&instance],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// Reads a pause notice's `<account hex> <until ms>`.
fn parse_pause(text: &str) -> Option<([u8; 32], i64)> {
    let (account, until) = text.split_once(' ')?;
    let account = hex::decode(account).ok()?.try_into().ok()?;
    Some((account, until.parse().ok()?))
}

#[cfg(test)]
mod tls_defaults {
    use super::*;
    use tokio_postgres::config::SslMode;

    fn mode(url: &str) -> SslMode {
        PgStore::connect(url, &PgSettings::default())
            .unwrap()
            .connect
            .0
            .get_ssl_mode()
    }

    #[tokio::test]
    async fn tls_is_required_off_this_machine_unless_the_url_says() {
        assert_eq!(mode("postgres://u@db.example:5432/v"), SslMode::Require);
        assert_eq!(mode("postgres://u@10.0.0.5/v"), SslMode::Require);
        assert_eq!(mode("postgres://u@127.0.0.1:5432/v"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@localhost/v"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@[::1]:5432/v"), SslMode::Prefer);
        assert_eq!(
            mode("host=/var/run/postgresql user=u dbname=v"),
            SslMode::Prefer
        );
        assert_eq!(
            mode("postgres://u@db.example/v?sslmode=disable"),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://u@127.0.0.1/v?sslmode=require"),
            SslMode::Require
        );
    }
}
