//! The streaming reads: a worker's watch of its headers, and the audit trail's listing.

use super::*;

impl<S: Store> VaultService<S> {
    /// Opens a watch stream of the request's credentials (see [`crate::watch`]).
    pub(super) async fn watch(
        &self,
        call: Arc<Call>,
        req: api::WatchCredentialHeadersRequest,
    ) -> Result<WatchStream, Error> {
        if let [only] = req.credentials.as_slice() {
            match &only.r#ref {
                Some(api::watched_credential::Ref::Id(id)) => call.touch(id, ""),
                Some(api::watched_credential::Ref::Name(name)) => call.touch("", name),
                None => {}
            }
        }
        let watcher = Watcher {
            caller: Arc::clone(&call.caller),
            identity: call.identity.clone(),
            peer: call.peer,
        };
        watch::open(&self.vault, &self.watch, watcher, req)
    }

    pub(super) async fn audit_events(
        &self,
        call: Arc<Call>,
        req: api::ListAuditEventsRequest,
    ) -> Result<api::ListAuditEventsResponse, Error> {
        let size = match req.page_size {
            n if n < 0 => return Err(Error::invalid("page_size must not be negative")),
            0 => 100,
            n => (n as usize).min(1000),
        };
        let from = crate::audit::parse_audit_token(&req.page_token)?;
        let time = |t: Option<prost_types::Timestamp>| -> Result<Option<SystemTime>, Error> {
            t.map(validate::timestamp).transpose().map(|t| {
                t.and_then(|t| {
                    SystemTime::UNIX_EPOCH
                        .checked_add(std::time::Duration::new(t.seconds as u64, t.nanos as u32))
                })
            })
        };
        // Filters reach the database as query values: checked first, like any name.
        if !req.credential_id.is_empty() {
            validate::id(&req.credential_id)?;
        }
        if !req.credential_name.is_empty() {
            validate::name(&req.credential_name)?;
        }
        validate::caller_name(&req.caller)?;
        let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
        let query = AuditQuery {
            credential_id: nonempty(req.credential_id),
            credential_name: nonempty(req.credential_name),
            caller: nonempty(req.caller),
            start: time(req.start_time)?,
            end: time(req.end_time)?,
        };
        // A scoped auditor sees events of its credentials only; it reads page by page
        // until it has a page of those, or the log ends.
        let mut events = Vec::new();
        let mut cursor = from;
        let next = loop {
            let (batch, next) = self.audit.list(query_clone(&query), cursor, size).await?;
            for e in batch {
                if call.caller.in_scope(&e.credential_name) || !call.caller.is_scoped() {
                    events.push(audit_to_api(e));
                }
            }
            match next {
                Some(n) if events.len() < size => cursor = Some(n),
                other => break other,
            }
        };
        Ok(api::ListAuditEventsResponse {
            events,
            next_page_token: next.map(crate::audit::audit_token).unwrap_or_default(),
            audit_public_key: self.audit.public_key().to_string(),
        })
    }
}
