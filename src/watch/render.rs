//! A stream's offers rendered into messages: present (with headers only when the
//! client does not hold that version's, audited as a secret read), deleted, not
//! found, denied.

use super::*;

impl<S: Store> Stream<S> {
    pub(super) fn base(
        &self,
        slot: usize,
        state: api::WatchState,
    ) -> api::WatchCredentialHeadersResponse {
        let name = match &self.slots[slot].key {
            Key::Name(name) => name.clone(),
            Key::Id(_) => self.slots[slot]
                .current
                .as_ref()
                .map(|(_, n)| n.clone())
                .unwrap_or_default(),
        };
        api::WatchCredentialHeadersResponse {
            index: u32::try_from(slot).unwrap_or(u32::MAX),
            state: state as i32,
            name,
            ..Default::default()
        }
    }

    pub(super) fn denied(&mut self, slot: usize) -> Rendered {
        let shown = match &self.slots[slot].key {
            Key::Id(id) | Key::Name(id) => id.clone(),
        };
        let s = &mut self.slots[slot];
        s.denied = true;
        s.held = None;
        s.current = None;
        let message = api::WatchCredentialHeadersResponse {
            message: format!(
                "caller {:?} may not access credential {shown:?}",
                self.watcher.caller.name
            ),
            ..self.base(slot, api::WatchState::PermissionDenied)
        };
        Some((message, Reported::Denied))
    }

    /// A deletion of the credential the slot follows.
    pub(super) fn deleted(&mut self, slot: usize, id: String) -> Rendered {
        let message = api::WatchCredentialHeadersResponse {
            credential_id: id.clone(),
            message: format!("credential {id} was deleted"),
            ..self.base(slot, api::WatchState::Deleted)
        };
        let s = &mut self.slots[slot];
        s.held = None;
        s.current = None;
        s.ended = matches!(s.key, Key::Id(_));
        Some((message, Reported::Deleted(id)))
    }

    /// The message an offer makes for a slot, if it says anything new.
    pub(super) async fn render(&mut self, slot: usize, seen: Seen) -> Result<Rendered, Error> {
        let s = &self.slots[slot];
        if s.ended || (s.denied && s.reported.is_some()) {
            return Ok(None);
        }
        match seen {
            Seen::Denied => Ok(self.denied(slot)),
            Seen::Present(record) => {
                if !self.watcher.caller.in_scope(&record.name) {
                    // Only a watched id can lead outside the scope.
                    return Ok(self.denied(slot));
                }
                self.present(slot, &record).await
            }
            Seen::Gone(id) => {
                let s = &mut self.slots[slot];
                if s.current.as_ref().is_some_and(|(c, _)| *c == id) {
                    return Ok(self.deleted(slot, id));
                }
                match (&s.key, &s.reported) {
                    // A watched id that is not there: for a scoped caller, the same
                    // answer as for one outside its scope.
                    (Key::Id(_), None) if self.watcher.caller.is_scoped() => Ok(self.denied(slot)),
                    (Key::Id(_), None) => {
                        s.ended = true;
                        let message = api::WatchCredentialHeadersResponse {
                            message: format!("credential {id} not found"),
                            ..self.base(slot, api::WatchState::NotFound)
                        };
                        Ok(Some((message, Reported::NotFound)))
                    }
                    // The deletion of a credential this slot does not follow.
                    _ => Ok(None),
                }
            }
            Seen::Absent => {
                let s = &mut self.slots[slot];
                if let Some((id, _)) = s.current.clone() {
                    // Its deletion was not heard of (a lost notification): say it now.
                    return Ok(self.deleted(slot, id));
                }
                if let (Key::Name(_), Some((id, _, _)), None) = (&s.key, &s.held, &s.reported) {
                    // A resume of a name whose credential (the one the client holds)
                    // was deleted while it was away: names never change, so it is gone.
                    let id = id.clone();
                    return Ok(self.deleted(slot, id));
                }
                if matches!(s.reported, Some(Reported::NotFound | Reported::Deleted(_))) {
                    return Ok(None);
                }
                s.held = None;
                let name = match &s.key {
                    Key::Name(n) | Key::Id(n) => n.clone(),
                };
                let message = api::WatchCredentialHeadersResponse {
                    message: format!("no credential is named {name:?}"),
                    ..self.base(slot, api::WatchState::NotFound)
                };
                Ok(Some((message, Reported::NotFound)))
            }
        }
    }

    /// The message for a credential that exists: headers when the client lacks
    /// this version's, else the state alone when it is news to the client.
    pub(super) async fn present(
        &mut self,
        slot: usize,
        record: &CredentialRecord,
    ) -> Result<Rendered, Error> {
        self.slots[slot].current = Some((record.id.clone(), record.name.clone()));
        let paused_until_ms = self.vault.paused_until(record);
        let mut message = api::WatchCredentialHeadersResponse {
            credential_id: record.id.clone(),
            version: record.version,
            last_verification: record
                .last_verification
                .as_ref()
                .map(convert::verification_to_api),
            paused_until: paused_until_ms
                .map(|ms| crate::record::timestamp(crate::feedback::from_ms(ms))),
            request_budget_per_minute: record.request_budget_per_minute,
            ..self.base(slot, api::WatchState::Present)
        };
        // A providers reload can change the headers of the same version: what the
        // client holds counts only at the revision its headers were made at.
        let revision = self
            .vault
            .providers()
            .current()
            .headers_revision(&record.provider);
        message.headers_revision = revision;
        let s = &self.slots[slot];
        let holds = s
            .held
            .as_ref()
            .is_some_and(|(id, v, r)| *id == record.id && *v == record.version && *r == revision);
        let reported = Reported::Present {
            id: record.id.clone(),
            version: record.version,
            revision,
            verification: record
                .last_verification
                .as_ref()
                .map(|v| (v.status, v.http_status, v.rejected_field.clone())),
            paused_until_ms,
            budget: record.request_budget_per_minute,
        };
        if holds {
            if s.reported.as_ref() == Some(&reported) {
                return Ok(None);
            }
            return Ok(Some((message, reported)));
        }
        let unavailable = Reported::Unavailable {
            id: record.id.clone(),
            revision: record.revision,
            headers_revision: revision,
        };
        if s.reported.as_ref() == Some(&unavailable) {
            return Ok(None);
        }
        let audit = &self.audit;
        audit.admit_secret_read()?;
        let caller = &self.watcher.caller.name;
        let crate::vault::HeadersRead {
            headers, plaintext, ..
        } = match self.vault.read_headers(record, caller) {
            Ok(read) => read,
            Err(e @ (Error::FailedPrecondition(_) | Error::DataLoss(_))) => {
                tracing::warn!(credential_id = %record.id, error = %e, "a watched credential's headers cannot be made");
                message.state = api::WatchState::Unavailable as i32;
                message.message = e.to_string();
                return Ok(Some((message, unavailable)));
            }
            Err(e) => return Err(e),
        };
        let fingerprint = audit.fingerprint(&plaintext);
        drop(plaintext);
        let entry = AuditEntry {
            method: METHOD,
            credential_id: &record.id,
            credential_name: &record.name,
            code: "OK",
            secret_fingerprint: &fingerprint,
            ..AuditEntry::new(SystemTime::now(), caller, self.watcher.peer)
        };
        audit.record_secret_read(&entry).await?;
        message.headers = headers
            .headers
            .into_iter()
            .map(|(name, value)| api::Header {
                name: name.into_owned(),
                value,
            })
            .collect();
        message.base_url = headers.base_url;
        message.headers_revision = headers.revision;
        self.slots[slot].held = Some((record.id.clone(), record.version, headers.revision));
        Ok(Some((message, reported)))
    }
}

pub(super) fn state_name(state: api::WatchState) -> &'static str {
    match state {
        api::WatchState::Present => "present",
        api::WatchState::NotFound => "not_found",
        api::WatchState::Deleted => "deleted",
        api::WatchState::PermissionDenied => "permission_denied",
        api::WatchState::Unavailable => "unavailable",
        api::WatchState::Unspecified => "unspecified",
    }
}
