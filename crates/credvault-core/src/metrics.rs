//! The vault's metrics, recorded through the `metrics` facade: credentials stored,
//! seals per master key, provider checks, reports, pauses and budgets, watched
//! credentials, records refused and rows set aside. A no-op until the server
//! installs a recorder (it serves them on `--metrics-listen`).

use metrics::{counter, describe_counter, describe_gauge, gauge};

const CREDENTIALS: &str = "credvault_credentials";
const VERIFICATIONS: &str = "credvault_verifications_total";
const SEALS: &str = "credvault_master_key_seals";
const WATCH_STREAMS: &str = "credvault_watch_streams";
const REPORTS: &str = "credvault_provider_reports_total";
const PAUSES: &str = "credvault_account_pauses_total";
const BUDGET_GRANTED: &str = "credvault_budget_requests_granted_total";
const BUDGET_REFUSED: &str = "credvault_budget_requests_refused_total";
const SET_ASIDE: &str = "credvault_rows_set_aside_total";
const WATCH_KEYS: &str = "credvault_watch_keys";
const PAUSES_UNCHANGED: &str = "credvault_account_pause_reports_unchanged_total";
const RECORDS_REFUSED: &str = "credvault_records_refused_total";

/// Where a verification was asked for.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// `VerifyCredential`.
    Rpc,
    /// `verify: true` on a create or update.
    Write,
    /// The background re-verifier.
    Background,
    /// A worker reported a 401 or 403 (`ReportProviderResponse`).
    Report,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Rpc => "rpc",
            Source::Write => "write",
            Source::Background => "background",
            Source::Report => "report",
        }
    }
}

/// Describes the metrics of this crate to the installed recorder.
pub fn describe() {
    describe_gauge!(CREDENTIALS, "credentials stored");
    describe_counter!(
        SET_ASIDE,
        "rows a batched database writer set aside because the database refused their values (SQLSTATE 22/54), by writer; the rest of each batch was written"
    );
    describe_gauge!(
        WATCH_KEYS,
        "credentials watched, summed over every open watch stream"
    );
    describe_counter!(
        RECORDS_REFUSED,
        "stored records refused and not served, by reason (replayed: older than one this server has seen)"
    );
    describe_counter!(
        PAUSES_UNCHANGED,
        "reported 429s that moved no pause's end by a second or more: nothing written, nothing pushed"
    );
    describe_gauge!(
        SEALS,
        "data keys sealed by each master key (rotate well before 2^32)"
    );
    describe_counter!(
        VERIFICATIONS,
        "provider checks, by provider, status and source"
    );
    describe_gauge!(WATCH_STREAMS, "WatchCredentialHeaders streams open");
    describe_counter!(
        REPORTS,
        "provider answers reported by workers, by status class (2xx, 401, 403, 429, 4xx, 5xx) and action (ignored, paused, verifying, already_verified, stale)"
    );
    describe_counter!(
        PAUSES,
        "provider account pauses started or extended by this server's reports"
    );
    describe_counter!(
        BUDGET_GRANTED,
        "requests granted from request budgets through AcquireRequestTokens"
    );
    describe_counter!(
        BUDGET_REFUSED,
        "requests asked for through AcquireRequestTokens and not granted (the window's budget was spent)"
    );
}

/// Sets the number of open watch streams.
pub fn watch_streams(open: usize) {
    gauge!(WATCH_STREAMS).set(open as f64);
}

/// Sets the number of stored credentials.
pub fn set_credentials(count: usize) {
    gauge!(CREDENTIALS).set(count as f64);
}

/// Adds `delta` to the number of stored credentials.
pub fn credentials_changed(delta: f64) {
    gauge!(CREDENTIALS).increment(delta);
}

/// Sets how many data keys a master key has sealed.
pub fn set_seals(key_id: &str, seals: u64) {
    gauge!(SEALS, "key_id" => key_id.to_owned()).set(seals as f64);
}

/// Counts a row a batched writer (`audit`, `usage`) set aside for its values.
pub fn row_set_aside(writer: &'static str) {
    counter!(SET_ASIDE, "writer" => writer).increment(1);
}

/// The credentials watched over all open streams.
pub fn watch_keys(n: usize) {
    gauge!(WATCH_KEYS).set(n as f64);
}

/// Counts a stored record refused (`replayed`).
pub fn record_refused(reason: &'static str) {
    counter!(RECORDS_REFUSED, "reason" => reason).increment(1);
}

/// Counts a reported 429 that did not move its account's pause.
pub fn pause_unchanged() {
    counter!(PAUSES_UNCHANGED).increment(1);
}

/// Records one provider check.
pub fn verification(provider: &str, status: &'static str, source: Source) {
    counter!(VERIFICATIONS, "provider" => provider.to_owned(), "status" => status, "source" => source.as_str()).increment(1);
}

/// A worker reported a provider's answer: its status class and what was done.
pub fn report(status_class: &'static str, action: &'static str) {
    counter!(REPORTS, "status" => status_class, "action" => action).increment(1);
}

/// A report paused (or extended the pause of) a provider account.
pub fn pause() {
    counter!(PAUSES).increment(1);
}

/// A lease asked for `want` budgeted requests and got `granted`.
pub fn budget_tokens(granted: u32, want: u32) {
    counter!(BUDGET_GRANTED).increment(u64::from(granted));
    counter!(BUDGET_REFUSED).increment(u64::from(want.saturating_sub(granted)));
}
