//! credvault: the one place the API secrets of data-ingestion workers live.
//!
//! A gRPC service (tonic) that keeps provider credentials sealed with
//! AES-256-GCM in an embedded sled database (or PostgreSQL, shared by replicas)
//! and hands authorised workers the exact HTTP headers to send. A secret goes
//! request → [`gate`] (authentication) → [`service`] (proto to domain, permission)
//! → [`vault`] (scope, check-and-set) → [`sealing`] and [`store`] → [`vault`] →
//! [`service`]. The parts:
//!
//! - [`api`]: the generated `credvault.v1` gRPC types and descriptor set;
//! - [`config`]: resolved server settings, keyring and callers loading, `--dev`;
//! - [`crypto`]: master keys, the keyring and envelope encryption with record-bound associated data;
//! - [`keys`]: the keyring against the store: key checks, seal counts, rewrap reports;
//! - [`record`]: the stored record format (prost, versioned);
//! - [`sealing`]: a record's secret sealed, opened and rewrapped, with the associated data of each format;
//! - [`store`]: the engine-neutral store trait, its sled and PostgreSQL implementations, and
//!   [`store::open`], which opens the configured one;
//! - [`auth`]: callers, permissions, scopes, reload, and constant-time bearer-token checks;
//! - [`gate`]: the tower layer in front of every service: authentication before the body,
//!   refusals, caps on unauthenticated streams, the request timeout;
//! - [`refusals`]: floods of refused calls recorded per peer in summaries, not line by line;
//! - [`transport`]: connection hardening: the accept loop and its cap, handshake deadlines, TLS;
//! - [`audit`]: the audit trail of every RPC, with secret-read fingerprints;
//! - [`trail`]: the trail's tamper evidence: hash chains, signed digests, the
//!   credentials' high-water marks, and the verifier `credvault audit verify` runs;
//! - [`provider`]: the [`provider::Provider`] trait (a secret's fields, headers, base URL,
//!   verification) and its registry: one module per built-in API ([`provider::fleetio`]), and
//!   providers declared in the providers file ([`provider::declared`]), both in the reloadable
//!   [`provider::Catalog`];
//! - [`validate`]: request validation;
//! - [`page_token`]: ListCredentials page tokens, sealed and bound to the caller and query;
//! - [`escape`]: caller-sent values escaped and capped before a log line, an audit event or a message names them;
//! - [`vault`]: the domain: create, update, delete, list and read credentials within a
//!   caller's scope, one check-and-set loop, secret versions (rollback, destroy), the
//!   recovery window of deletes and its purge, rewrap, provider checks and their results;
//! - [`backup`]: consistent, still-encrypted backups and their restore;
//! - [`reverify`]: the background re-verifier;
//! - [`feedback`]: workers' reports of the providers' answers: paused accounts,
//!   debounced re-verification, request budgets shared through leases;
//! - [`feed`]: the change feed the vault publishes to: who watches which credential
//!   and which changes (local writes, other replicas', resyncs) are not yet read;
//! - [`watch`]: watch streams: the one reader of the feed and the streams that push
//!   each change to workers holding headers in memory;
//! - [`convert`]: domain types as the API shows them, for the service and the streams;
//! - [`service`]: the gRPC service itself;
//! - [`console`]: the operator console, a web page on its own listener whose every action is
//!   an RPC of [`service`] called as the signed-in caller (sessions, CSRF, the HTML);
//! - [`server`]: [`run`], which serves the vault, health and reflection until shutdown;
//! - [`error`]: the error enum and its mapping onto gRPC status codes;
//! - [`telemetry`] and [`metrics`]: logging and Prometheus metrics, served on their own
//!   port by [`metrics_endpoint`].
//!
//! The command line lives in the binary (`src/main.rs`, `src/cli/`).

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
pub mod console;
pub mod convert;
pub mod crypto;
pub mod error;
pub mod escape;
pub mod feed;
pub mod feedback;
pub mod gate;
pub mod keys;
pub mod metrics;
pub mod metrics_endpoint;
pub mod page_token;
pub mod provider;
pub mod record;
pub mod refusals;
pub mod reverify;
pub mod sealing;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod trail;
pub mod transport;
pub mod validate;
pub mod vault;
pub mod watch;

pub use config::Config;
pub use error::Error;
pub use server::run;
