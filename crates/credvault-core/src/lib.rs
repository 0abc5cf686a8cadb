//! credvault's domain, with no gRPC in it: what a credential is, how its secret is
//! sealed and stored, what a provider is, and the vault's operations on them. The
//! server package (`credvault`) adapts it to the API; Cargo keeps every arrow
//! pointing here, never back. The parts, lowest first:
//!
//! - [`escape`]: caller-sent values escaped and capped before a log line, an audit event or a message names them;
//! - [`crypto`]: master keys, the keyring and envelope encryption with record-bound associated data;
//! - [`record`]: the stored record format (prost, versioned);
//! - [`trail`]: the audit trail's tamper evidence: hash chains, signed digests, the
//!   credentials' high-water marks, and the verifier `credvault audit verify` runs;
//! - [`store`]: the engine-neutral store trait, its sled and PostgreSQL implementations, and
//!   [`store::open`], which opens the configured one;
//! - [`metrics`]: the vault's metrics, recorded through the `metrics` facade (the server
//!   installs the exporter);
//! - [`keys`]: the keyring against the store: key checks, seal counts, rewrap reports;
//! - [`sealing`]: a record's secret sealed, opened and rewrapped, with the associated data of each format;
//! - [`error`]: the domain's error, which knows nothing of gRPC (the server maps it onto status codes);
//! - [`auth`]: callers, permissions, scopes, reload, and constant-time bearer-token checks;
//! - [`provider`]: the [`provider::Provider`] trait (a secret's fields, headers, base URL,
//!   verification) and its registry: one module per built-in API ([`provider::fleetio`]), and
//!   providers declared in the providers file ([`provider::declared`]), both in the reloadable
//!   [`provider::Catalog`];
//! - [`validate`]: names, ids and descriptions checked before they reach a store;
//! - [`page_token`]: list page tokens, sealed and bound to the caller and query;
//! - [`feedback`]: workers' reports of the providers' answers: paused accounts,
//!   debounced re-verification, request budgets shared through leases;
//! - [`feed`]: the change feed the vault publishes to: who watches which credential
//!   and which changes (local writes, other replicas', resyncs) are not yet read;
//! - [`vault`]: create, update, delete, list and read credentials within a caller's
//!   scope, one check-and-set loop, secret versions (rollback, destroy), the recovery
//!   window of deletes and its purge, rewrap, provider checks and their results;
//! - [`backup`]: consistent, still-encrypted backups and their restore;
//! - [`reverify`]: the background re-verifier.

pub mod auth;
pub mod backup;
pub mod crypto;
pub mod error;
pub mod escape;
pub mod feed;
pub mod feedback;
pub mod keys;
pub mod metrics;
pub mod page_token;
pub mod provider;
pub mod record;
pub mod reverify;
pub mod sealing;
pub mod store;
pub mod trail;
pub mod validate;
pub mod vault;

pub use error::Error;
