//! The command line, part of the binary (not of the library): `serve`, `keygen`, `token`,
//! `healthcheck`, `rewrap`, `backup`, `restore`, `migrate`, `migrate-store`, `pkcs11-keygen`
//! and `audit`, each flag also read from `CREDVAULT_<FLAG>`.
//!
//! Here the commands and their dispatch; `serve` (its flags and how they resolve),
//! `keys` (the key file and the key roots), `offline` (the store commands), `tools`
//! (tokens, the health probe, the HSM's key), `audit`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};

use credvault::auth::{self, Permission};
use credvault::config::KeyringSource;
use credvault::config::{self, Config, TlsSettings};
use credvault::crypto::{Keyring, MasterKey};
use credvault::keyroot;
use credvault::provider::{fleetio, ProviderSettings};
use credvault::reverify::ReverifySettings;
use credvault::store::prelude::*;
use credvault::telemetry::{self, LogFormat};
use secrecy::ExposeSecret;

mod audit;
mod keys;
mod offline;
mod serve;
mod tools;

use keys::*;
use offline::*;
use serve::*;
use tools::*;

/// credvault: the encrypted credential vault for data-ingestion workers.
#[derive(Debug, Parser)]
#[command(name = "credvault", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gRPC server.
    Serve(Box<ServeArgs>),
    /// Prints a fresh random master key (32 bytes, base64) for --master-key-file.
    Keygen,
    /// Mints a caller token, prints it once, and prints its callers.toml entry.
    Token(TokenArgs),
    /// Asks a server's gRPC health service; exits 0 only when it answers SERVING.
    Healthcheck(HealthcheckArgs),
    /// Re-seals every data key under the active master key, in a stopped server's
    /// data directory (a running one: the RewrapCredentials RPC).
    Rewrap(RewrapArgs),
    /// Writes a backup file (still encrypted, with a checksum) from a running server
    /// (--server, with CREDVAULT_TOKEN) or a stopped server's data directory.
    Backup(BackupArgs),
    /// Restores a backup file into a new data directory, after checking the keyring opens it.
    Restore(RestoreArgs),
    /// Checks a providers file as `serve --providers-file` reads it and lists what it
    /// declares; exits non-zero naming the line of the first problem.
    CheckProviders(CheckProvidersArgs),
    /// Applies the PostgreSQL schema migrations (`serve --store postgres` also does at startup).
    Migrate(DatabaseArgs),
    /// Copies every record, still encrypted, from one store to another (which must be
    /// empty) and verifies the copy, e.g. --from sled:/var/lib/credvault --to postgres.
    MigrateStore(MigrateStoreArgs),
    /// Makes the AES-256 key that seals master keys in a PKCS#11 token (non-extractable,
    /// sensitive, encrypt/decrypt only), for `serve --key-provider pkcs11`.
    Pkcs11Keygen(Pkcs11KeygenArgs),
    /// The auditor's commands: the digests' public keys, and verifying a trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

/// Parses the command line and runs it.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Keygen => {
            println!("{}", MasterKey::generate_base64().as_str());
            Ok(())
        }
        Command::Token(args) => token(&args),
        Command::Healthcheck(args) => healthcheck(&args),
        Command::Rewrap(args) => rewrap(&args),
        Command::Backup(args) => backup(&args),
        Command::Restore(args) => restore(&args),
        Command::CheckProviders(args) => check_providers(&args),
        Command::Migrate(args) => migrate(&args),
        Command::MigrateStore(args) => migrate_store(&args),
        Command::Pkcs11Keygen(args) => pkcs11_keygen(&args),
        Command::Audit { command } => audit::run(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("credvault: {message}");
            ExitCode::FAILURE
        }
    }
}
