//! Shared test helpers, by concern: the in-process server and its clients
//! (`server`), request builders (`requests`), the real binary and grpcurl
//! (`process`), a fake Fleetio over real HTTP (`fleetio`), a fake API of any
//! other provider (`fake_api`), file scans (`files`), raw HTTP/2 frames
//! (`h2raw`), PostgreSQL clusters (`postgres`), OpenBao and SoftHSM2 (`kms`), a store that fails on demand
//! (`faulty`) and the client crate as workers use it (`workers`). Everything is
//! re-exported here, so tests `use crate::common::*`.

#![allow(dead_code)]

// The imports the helper modules share (each says `use super::*`).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credvault::api::credential_vault_service_client::CredentialVaultServiceClient;
use credvault::api::{self, FleetioSecret};
use credvault::auth::{callers_entry, mint_token, Callers, Permission};
use credvault::crypto::MasterKey;
use credvault::provider::ProviderSettings;
use credvault::server::ServeError;
use credvault::Config;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

pub mod faulty;
pub mod h2raw;
pub mod postgres;

mod fake_api;
mod files;
mod fleetio;
mod kms;
mod process;
mod requests;
mod server;
mod workers;

/// At most 200 characters of `text`, for assertion messages about long values.
pub fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        format!("{cut}… ({} bytes)", text.len())
    } else {
        cut
    }
}

/// Runs each test of a suite on both stores: `sled::name` and `postgres::name`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod sled {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::TestStore::Sled).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::TestStore::Postgres).await
            })*
        }
    };
}

pub use fake_api::*;
pub use files::*;
pub use fleetio::*;
pub use kms::*;
pub use process::*;
pub use requests::*;
pub use server::*;
pub use workers::*;
