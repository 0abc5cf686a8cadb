//! The background re-verifier: re-checks every credential on a jittered
//! interval with bounded concurrency, honours each provider account's
//! `Retry-After`, logs status changes, and stops promptly on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::record::{CredentialRecord, Verification, VerificationStatus};
use crate::store::Store;
use crate::vault::Vault;

/// How many records a sweep reads from the store at a time.
const SWEEP_BATCH: usize = 256;
/// The pause after a 429 that came without a usable `Retry-After`.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// When and how hard to re-verify.
#[derive(Clone, Debug)]
pub struct ReverifySettings {
    /// The mean time between sweeps (each wait is jittered by ±10 %); zero turns it off.
    pub interval: Duration,
    /// How many provider checks may run at once.
    pub concurrency: usize,
}

impl Default for ReverifySettings {
    fn default() -> Self {
        ReverifySettings {
            interval: Duration::from_secs(6 * 3600),
            concurrency: 4,
        }
    }
}

/// What one check found, for the sweep's bookkeeping.
struct Checked {
    account: [u8; 32],
    pause: Option<Duration>,
}

/// Runs sweeps until `stop` turns true (or its sender is dropped).
pub async fn run<S: Store>(
    vault: Arc<Vault<S>>,
    settings: ReverifySettings,
    mut stop: watch::Receiver<bool>,
) {
    if settings.interval.is_zero() {
        tracing::info!("background re-verification is off");
        return;
    }
    tracing::info!(interval = ?settings.interval, concurrency = settings.concurrency, "background re-verification on");
    // Provider accounts that asked us to wait, and until when.
    let mut paused: HashMap<[u8; 32], Instant> = HashMap::new();
    loop {
        let wait = jittered(settings.interval);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                tracing::info!("background re-verification stopped");
                return;
            }
        }
        if stopped(&stop) || !sweep(&vault, &settings, &mut paused, &mut stop).await {
            tracing::info!("background re-verification stopped");
            return;
        }
    }
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

/// Checks every credential once; false when stopped midway.
async fn sweep<S: Store>(
    vault: &Arc<Vault<S>>,
    settings: &ReverifySettings,
    paused: &mut HashMap<[u8; 32], Instant>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let started = Instant::now();
    let mut running: JoinSet<Option<Checked>> = JoinSet::new();
    let (mut checked, mut skipped) = (0usize, 0usize);
    let mut cursor: Option<String> = None;
    loop {
        let items = match vault.scan(cursor.as_deref(), SWEEP_BATCH).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "re-verification sweep could not list credentials");
                break;
            }
        };
        let read = items.len();
        for (id, record) in items {
            cursor = Some(id.clone());
            let Ok(record) = record else { continue };
            let secret = match vault.open(&record) {
                Ok(secret) => secret,
                Err(e) => {
                    tracing::error!(credential_id = %id, error = %e, "re-verification skipped an unreadable credential");
                    continue;
                }
            };
            let account = secret.account_key();
            // Workers reported a 429 for this account: its limit is not spent on checks.
            let reported_paused = vault
                .feedback()
                .paused_until(&vault.account_of(&secret), crate::feedback::now_ms())
                .is_some();
            drop(secret);
            paused.retain(|_, until| *until > Instant::now());
            if reported_paused || paused.contains_key(&account) {
                skipped += 1;
                continue;
            }
            while running.len() >= settings.concurrency.max(1) {
                match next_done(&mut running, stop).await {
                    Some(done) => note(done, paused),
                    None => return false,
                }
            }
            if stopped(stop) {
                return false;
            }
            checked += 1;
            let vault = Arc::clone(vault);
            running.spawn(async move { check(&vault, record, account).await });
        }
        if read < SWEEP_BATCH {
            break;
        }
    }
    while !running.is_empty() {
        match next_done(&mut running, stop).await {
            Some(done) => note(done, paused),
            None => return false,
        }
    }
    tracing::info!(checked, skipped_rate_limited = skipped, took = ?started.elapsed(), "re-verification sweep done");
    true
}

/// The next finished check, or `None` when stopped (in-flight checks are then aborted).
async fn next_done(
    running: &mut JoinSet<Option<Checked>>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Option<Checked>> {
    tokio::select! {
        done = running.join_next() => Some(done.and_then(Result::ok).flatten()),
        _ = stop.changed() => {
            running.abort_all();
            None
        }
    }
}

fn note(done: Option<Checked>, paused: &mut HashMap<[u8; 32], Instant>) {
    if let Some(Checked {
        account,
        pause: Some(pause),
    }) = done
    {
        paused.insert(account, Instant::now() + pause);
    }
}

async fn check<S: Store>(
    vault: &Vault<S>,
    record: CredentialRecord,
    account: [u8; 32],
) -> Option<Checked> {
    let before = record.last_verification.as_ref().map(Verification::status);
    match vault
        .verify_record(&record, crate::metrics::Source::Background)
        .await
    {
        Ok((verification, _)) => {
            let after = verification.status();
            if before != Some(after) {
                tracing::warn!(
                    credential_id = %record.id,
                    name = %record.name,
                    from = ?before.unwrap_or(VerificationStatus::Unspecified),
                    to = ?after,
                    detail = %verification.message,
                    "verification status changed"
                );
            }
            let pause = (after == VerificationStatus::RateLimited).then(|| {
                match verification.retry_after_seconds {
                    0 => DEFAULT_RATE_LIMIT_PAUSE,
                    s => Duration::from_secs(u64::from(
                        s.min(crate::provider::MAX_RETRY_AFTER_SECONDS),
                    )),
                }
            });
            Some(Checked { account, pause })
        }
        Err(e) => {
            tracing::warn!(credential_id = %record.id, error = %e, "re-verification could not record its result");
            None
        }
    }
}
