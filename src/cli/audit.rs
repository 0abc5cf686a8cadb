//! `credvault audit`: the auditor's commands. `public-key` prints the keys that
//! verify the trail's signed digests; `verify` checks a trail (files or the
//! database) with those keys alone and, with `--store`, the store against the
//! revisions the trail signed.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Args, Subcommand};

use credvault::trail::{self, PublicKey, Report};

use super::{DatabaseArgs, KeyArgs, Location};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Prints the public key of each master key of the keyring (`<key id> <base64>`),
    /// the keys that verify the trail's digests: keep them where an auditor can.
    PublicKey(PublicKeyArgs),
    /// Verifies an audit trail with the public keys only: every line in its
    /// chain, every digest's signature. Exits 1 naming each line edited, deleted,
    /// inserted or reordered; with --store, also each record older than the trail signed.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(super) struct PublicKeyArgs {
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// The audit log as the server writes it: its rotated files (`<log>.N` … `<log>.1`)
    /// are read first, oldest first, then the log itself.
    #[arg(long, conflicts_with_all = ["file", "database"])]
    log: Option<PathBuf>,
    /// Audit files to read in this order (e.g. ones an outside tool rotated).
    #[arg(long, conflicts_with = "database")]
    file: Vec<PathBuf>,
    /// Read the trail from the PostgreSQL database (--database-url) instead: every
    /// replica's chain.
    #[arg(long)]
    database: bool,
    /// A file of public keys, `<key id> <base64>` a line, as `credvault audit public-key` prints them.
    #[arg(long, required_unless_present = "public_key")]
    public_key_file: Option<PathBuf>,
    /// A public key, `<key id> <base64>` (repeatable).
    #[arg(long)]
    public_key: Vec<String>,
    /// Also check a store against the revisions the trail signed: `sled:DIR` (a
    /// stopped server's data directory) or `postgres[:URL]`.
    #[arg(long)]
    store: Option<String>,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Runs an audit subcommand.
pub(super) fn run(command: &AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::PublicKey(args) => public_key(args),
        AuditCommand::Verify(args) => verify(args),
    }
}

fn public_key(args: &PublicKeyArgs) -> anyhow::Result<()> {
    let keyring = args.keys.file_keyring()?;
    let active = keyring.active().id().to_owned();
    println!("# credvault audit public keys (key id, Ed25519 public key); active: {active}");
    for id in keyring.ids() {
        if let Some(key) = keyring.get(id) {
            println!("{}", trail::Signer::derive(key).public_key());
        }
    }
    Ok(())
}

/// The rotated set of `log`, oldest first, then `log` itself.
fn rotated_set(log: &Path) -> Vec<PathBuf> {
    let mut n = 1;
    let mut rotated = Vec::new();
    loop {
        let mut name = log.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let path = PathBuf::from(name);
        if !path.exists() {
            break;
        }
        rotated.push(path);
        n += 1;
    }
    rotated.reverse();
    rotated.push(log.to_owned());
    rotated
}

fn read_files(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = Vec::new();
    for file in files {
        let text =
            std::fs::read(file).map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
        let text = String::from_utf8_lossy(&text);
        let name = file.display().to_string();
        for (i, line) in text.lines().enumerate() {
            if !line.is_empty() {
                lines.push((format!("{name}:{}", i + 1), line.to_owned()));
            }
        }
    }
    Ok(lines)
}

async fn read_database(db: &DatabaseArgs) -> anyhow::Result<Vec<(String, String)>> {
    use credvault::store::AuditTable;
    let settings = db.settings(None)?;
    let store = super::postgres(&settings)?;
    let mut lines = Vec::new();
    let mut after = 0i64;
    loop {
        let rows = store
            .list_audit(
                credvault::store::AuditFilter {
                    proofs: true,
                    ..Default::default()
                },
                after,
                10_000,
            )
            .await
            .map_err(|e| anyhow!("cannot read the audit trail: {e}"))?;
        let done = rows.len() < 10_000;
        for (seq, line) in rows {
            after = seq;
            lines.push((format!("row {seq}"), line));
        }
        if done {
            return Ok(lines);
        }
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    if let Some(path) = &args.public_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        keys.extend(PublicKey::parse_all(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?);
    }
    for key in &args.public_key {
        keys.extend(PublicKey::parse_all(key).map_err(|e| anyhow!("--public-key: {e}"))?);
    }
    let runtime = super::runtime()?;
    let lines = if args.database {
        runtime.block_on(read_database(&args.db))?
    } else if let Some(log) = &args.log {
        read_files(&rotated_set(log))?
    } else if !args.file.is_empty() {
        read_files(&args.file)?
    } else {
        return Err(anyhow!(
            "name the trail: --log PATH, --file FILE... or --database"
        ));
    };
    let report = trail::verify(lines, &keys);
    print_report(&report);
    let mut problems = report.problems.len();
    if let Some(store) = &args.store {
        let location = Location::parse(store, &args.db)?;
        problems += runtime.block_on(check_store(&location, &report))?;
    }
    if problems == 0 {
        println!("verdict: intact");
        Ok(())
    } else {
        Err(anyhow!(
            "verdict: TAMPERED: {problems} problem(s), each named above"
        ))
    }
}

fn print_report(report: &Report) {
    println!(
        "{} lines read, {} chain(s){}",
        report.lines,
        report.chains.len(),
        if report.unchained > 0 {
            format!(
                "; {} lines from before the trail was chained (not verifiable)",
                report.unchained
            )
        } else {
            String::new()
        }
    );
    for chain in &report.chains {
        let end = if chain.closed {
            "ends with the server's closing digest".to_owned()
        } else if chain.unsigned_tail == 0 {
            "ends with a digest (not the closing one: the server was stopped hard, or is running)"
                .to_owned()
        } else {
            format!(
                "{} line(s) after the last digest are not signed yet (a running server, a server killed before its next digest, or a cut tail)",
                chain.unsigned_tail
            )
        };
        let begins = if chain.first_seq > 1 {
            " (it begins at a signed checkpoint: older lines were removed by retention)"
        } else {
            ""
        };
        println!(
            "chain {}: seq {}..{}{begins}, {} events, {} valid digests, signed up to seq {}{}; {end}",
            chain.id,
            chain.first_seq,
            chain.last_seq,
            chain.events,
            chain.digests,
            chain.signed_seq,
            if chain.signed_place.is_empty() {
                String::new()
            } else {
                format!(" ({})", chain.signed_place)
            },
        );
    }
    for problem in &report.problems {
        println!("PROBLEM {problem}");
    }
}

/// Compares every live record's revision with the last one the trail signed:
/// a lower one was put back behind the vault's back. How many were.
async fn check_store(location: &Location, report: &Report) -> anyhow::Result<usize> {
    let snapshot = location.snapshot().await?;
    let (mut checked, mut unsigned, mut replayed) = (0, 0, 0);
    for (id, bytes) in &snapshot.records {
        let record = match credvault::record::CredentialRecord::from_bytes(id, bytes) {
            Ok(r) => r,
            Err(e) => {
                println!(
                    "PROBLEM store: credential {}: the record does not decode: {e}",
                    credvault::escape::shown(id)
                );
                replayed += 1;
                continue;
            }
        };
        checked += 1;
        match report.marks.get(id) {
            None => unsigned += 1,
            Some((time, signed)) if record.revision < *signed => {
                replayed += 1;
                println!(
                    "PROBLEM store: credential {} is at revision {} but the trail signed revision {signed} ({}): its row was put back behind the vault's back (replayed)",
                    credvault::escape::shown(id),
                    record.revision,
                    humantime::format_rfc3339_seconds(*time)
                );
            }
            Some(_) => {}
        }
    }
    println!(
        "store ({}): {checked} records checked against the revisions the trail signed; {unsigned} not yet in a signed digest; {replayed} put back",
        location.describe()
    );
    Ok(replayed)
}
