//! The schema: the embedded migrations, applied in order, once, under an advisory
//! lock (replicas may start together).

use super::*;

/// The schema migrations, in order; each runs once, in a transaction.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
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

/// An arbitrary constant that names credvault's migration lock.
pub(super) const MIGRATION_LOCK: i64 = 0x6372_6564_7661_756c;

impl PgStore {
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
}
