//! credvault: the one place the API secrets of data-ingestion workers live.
//!
//! A gRPC service (tonic) that keeps provider credentials sealed with
//! AES-256-GCM in an embedded sled database (or PostgreSQL, shared by replicas)
//! and hands authorised workers the exact HTTP headers to send. A secret goes
//! request → [`gate`] (authentication) → `service` (proto to domain, permission)
//! → [`vault`] (scope, check-and-set) → [`sealing`] and [`store`] → [`vault`] →
//! `service`.
//!
//! The domain is the `credvault-core` crate (no gRPC in it), re-exported here under
//! its module names: [`crypto`], [`record`], [`trail`], [`store`], [`keys`], [`sealing`],
//! [`error`], [`auth`], [`provider`], [`validate`], [`page_token`], [`feedback`],
//! [`feed`], [`vault`], [`backup`], [`reverify`] and [`escape`]. This package is
//! the server around it:
//!
//! - [`api`]: the generated `credvault.v1` gRPC types and descriptor set;
//! - [`convert`]: proto ↔ domain in one place: domain types as the API shows them, a
//!   request's secret onto a provider's, and the domain's error onto a gRPC status;
//! - `service`: the gRPC service itself;
//! - [`watch`]: watch streams: the one reader of the feed and the streams that push
//!   each change to workers holding headers in memory;
//! - [`gate`]: the tower layer in front of every service: authentication before the body,
//!   refusals, caps on unauthenticated streams, the request timeout;
//! - [`refusals`]: floods of refused calls recorded per peer in summaries, not line by line;
//! - [`audit`]: the audit trail of every RPC, with secret-read fingerprints;
//! - [`transport`]: connection hardening: the accept loop and its cap, handshake deadlines, TLS;
//! - [`console`]: the operator console, a web page on its own listener whose every action is
//!   an RPC of `service` called as the signed-in caller (sessions, CSRF, the HTML);
//! - [`config`]: resolved server settings, keyring and callers loading, `--dev`;
//! - [`keyroot`]: key roots that keep the master keys off the host: OpenBao/Vault
//!   Transit or a PKCS#11 HSM seals them, the store keeps them sealed;
//! - [`server`]: [`run`], which serves the vault, health and reflection until shutdown;
//! - [`telemetry`] and [`metrics`]: logging and Prometheus metrics (the server's own, and
//!   the core's re-exported), served on their own port by `metrics_endpoint`.
//!
//! The command line lives in the binary (`src/main.rs`, `src/cli/`).

pub mod api;
pub mod audit;
pub mod config;
pub mod console;
pub mod convert;
pub mod gate;
pub mod keyroot;
pub mod metrics;
pub(crate) mod metrics_endpoint;
pub mod refusals;
pub mod server;
pub(crate) mod service;
pub mod telemetry;
pub mod transport;
pub mod watch;

pub use credvault_core::{
    auth, backup, crypto, error, escape, feed, feedback, keys, page_token, provider, record,
    reverify, sealing, store, trail, validate, vault,
};

pub use config::Config;
pub use error::Error;
pub use server::run;
