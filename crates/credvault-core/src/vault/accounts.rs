//! Provider accounts: pauses (a 429 heard by one worker holds every worker of the
//! account) and the request budget's leases.

use super::*;

impl<S: Store> Vault<S> {
    /// The provider account a secret speaks for.
    pub fn account_of(&self, secret: &ProviderSecret) -> Account {
        self.feedback.account(secret)
    }

    /// The end of the pause of the account `record` speaks for, while one is in
    /// force (opens the secret only when some account is paused).
    pub fn paused_until(&self, record: &CredentialRecord) -> Option<i64> {
        if !self.feedback.any_paused() {
            return None;
        }
        self.paused_for(&self.open(record).ok()?)
    }

    /// The end of the pause of the account `secret` speaks for, while one is in force.
    pub(super) fn paused_for(&self, secret: &ProviderSecret) -> Option<i64> {
        if !self.feedback.any_paused() {
            return None;
        }
        self.feedback
            .paused_until(&self.account_of(secret), feedback::now_ms())
    }

    /// Pauses `account` until `until_ms` for every server sharing the store and
    /// every watcher of its credentials; the end in force. A store that cannot
    /// take the pause leaves it in force on this server alone.
    pub async fn pause(&self, account: Account, until_ms: i64) -> i64 {
        // The same 429 reported by many workers (or again and again) moves the end
        // by milliseconds: news only when it moves by a second or more.
        if let Some(current) = self.feedback.paused_until(&account, feedback::now_ms()) {
            if until_ms < current + PAUSE_MOVES_MS {
                metrics::pause_unchanged();
                return current;
            }
        }
        let until = match self.store.put_pause(&account, until_ms).await {
            Ok(stored) => stored.unwrap_or(until_ms),
            Err(e) => {
                // Still paused here: this replica's workers stop at once.
                tracing::warn!(error = %e, "a pause could not be shared with the other replicas; it holds on this one");
                until_ms
            }
        };
        if self.feedback.note_pause(account, until) {
            self.hub.account_changed(account);
        }
        self.feedback
            .paused_until(&account, feedback::now_ms())
            .unwrap_or(until)
    }

    /// Takes in a pause another server made (heard through the store).
    pub fn heard_pause(&self, account: Account, until_ms: i64) {
        if self.feedback.note_pause(account, until_ms) {
            self.hub.account_changed(account);
        }
    }

    /// Reads the pauses a shared store holds, for any this server missed.
    pub async fn resync_pauses(&self) -> Result<(), Error> {
        let stored = self.store.pauses(feedback::now_ms()).await?;
        for account in self.feedback.merge_pauses(&stored) {
            self.hub.account_changed(account);
        }
        Ok(())
    }

    /// Takes up to `want` requests from the budget of `record`'s account: for
    /// every replica when the store is shared, else in this process's memory.
    pub async fn take_tokens(&self, record: &CredentialRecord, want: u32) -> Result<Grant, Error> {
        let account = self.account_of(&self.open(record)?);
        let now = feedback::now_ms();
        let ms = |d: i64| u32::try_from(d.max(0)).unwrap_or(u32::MAX);
        if let Some(until) = self.feedback.paused_until(&account, now) {
            return Ok(Grant {
                granted: 0,
                valid_for_ms: 0,
                retry_after_ms: ms(until - now),
                paused_until_ms: Some(until),
            });
        }
        let window = self.feedback.window(now);
        let per_minute = record.request_budget_per_minute;
        if per_minute == 0 {
            // No budget: everything asked for, until the window ends.
            return Ok(Grant {
                granted: want,
                valid_for_ms: ms(window.end_ms - now),
                retry_after_ms: 0,
                paused_until_ms: None,
            });
        }
        let limit = self.feedback.per_window(per_minute);
        let want = want.min(Feedback::lease_cap(limit));
        let granted = match self
            .store
            .take_budget(&account, window.start_ms, want, limit)
            .await?
        {
            Some(granted) => granted,
            None => self.feedback.take_local(account, window, want, limit),
        };
        metrics::budget_tokens(granted, want);
        Ok(Grant {
            granted,
            valid_for_ms: if granted > 0 {
                ms(window.end_ms - now)
            } else {
                0
            },
            retry_after_ms: if granted > 0 {
                0
            } else {
                ms(window.end_ms - now).max(1)
            },
            paused_until_ms: None,
        })
    }
}
