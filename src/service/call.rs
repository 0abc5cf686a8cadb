//! The one call path every RPC takes ([`VaultService::rpc`]): the caller and what the
//! call touched ([`Call`]), permission, the audit event before the answer (a secret
//! leaves only once its event is written), metrics, per-caller refusal summaries and
//! the log line.

use super::*;

/// One call in progress: who makes it, and what it touched (for the audit trail).
pub(super) struct Call {
    pub(super) caller: Arc<Caller>,
    /// What the caller proved (for a stream that re-checks it on reload).
    pub(super) identity: Identity,
    pub(super) peer: Option<std::net::SocketAddr>,
    pub(super) target: Mutex<Target>,
}

#[derive(Default)]
pub(super) struct Target {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) fingerprint: String,
    pub(super) verification: &'static str,
    /// What the call did, for the audit trail (a report: what was reported and done).
    pub(super) note: String,
}

impl Call {
    /// Notes what the call named, as the audit trail and the log may record it
    /// (a caller's raw value escaped and capped: it may not be valid yet).
    pub(super) fn touch(&self, id: &str, name: &str) {
        let mut t = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        crate::escape::shown(id).as_ref().clone_into(&mut t.id);
        crate::escape::shown(name).as_ref().clone_into(&mut t.name);
    }

    pub(super) fn verified(&self, v: &Verification) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .verification = status_name(v);
    }

    pub(super) fn note(&self, note: String) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note = note;
    }

    pub(super) fn read_secret(&self, fingerprint: String) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fingerprint = fingerprint;
    }
}

impl<S: Store> VaultService<S> {
    /// Runs one RPC: authenticate, authorise, handle; then one log event, one
    /// audit event and the metrics.
    pub(super) async fn rpc<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        permission: Permission,
        request: Request<Req>,
        handle: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Arc<Call>, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>>,
    {
        let start = Instant::now();
        let via = request.extensions().get::<Via>().copied();
        let peer = request.remote_addr().or(via.and_then(|v| v.peer));
        let channel = via.map_or("", |v| v.channel);
        // One event per call, with every field on it (no span: entering and
        // recording one per call would cost the hot path for nothing).
        let mut call = None;
        let result = async {
            // The gate authenticated the call from its headers, before its body was read.
            let Some(Authenticated(caller, identity)) =
                request.extensions().get::<Authenticated>().cloned()
            else {
                return Err(Error::Internal(
                    "a call reached the vault service without passing the gate".into(),
                ));
            };
            let this = Arc::new(Call {
                caller: Arc::clone(&caller),
                identity,
                peer,
                target: Mutex::default(),
            });
            call = Some(Arc::clone(&this));
            caller.require(permission)?;
            handle(this, request.into_inner()).await
        }
        .await;
        let target = call.as_ref().map_or_else(Target::default, |call| {
            std::mem::take(&mut *call.target.lock().unwrap_or_else(PoisonError::into_inner))
        });
        let caller = call
            .as_ref()
            .map_or("anonymous", |c| c.caller.name.as_str());
        // A known caller's refusals are recorded one by one only a few per interval;
        // the rest are counted into the interval's summary (one line, one event).
        if let (Some(_), Err(e)) = (&call, &result) {
            if summarized_refusal(convert::code(e))
                && !self
                    .refusals
                    .admit_caller(caller, method, metrics::code_name(convert::code(e)))
            {
                let code = convert::code(e);
                metrics::rpc(method, code, start.elapsed());
                metrics::refusal_summarized();
                return Err(convert::status(result.err().unwrap_or_else(|| {
                    Error::Internal("a refusal without an error".into())
                })));
            }
        }
        let entry = AuditEntry {
            method,
            credential_id: &target.id,
            credential_name: &target.name,
            code: metrics::code_name(result.as_ref().err().map_or(Code::Ok, convert::code)),
            secret_fingerprint: &target.fingerprint,
            reason: &target.note,
            channel,
            ..AuditEntry::new(SystemTime::now(), caller, peer)
        };
        // A secret leaves only once its event has reached the operating system (or
        // the disk, with --audit-sync fsync); if it cannot be written, it does not
        // leave. Every other event is queued and written moments later.
        let result = if result.is_ok() && !target.fingerprint.is_empty() {
            match self.audit.record_secret_read(&entry).await {
                Ok(()) => result,
                Err(e) => Err(e),
            }
        } else {
            self.audit.record(&entry).await;
            result
        };
        let elapsed = start.elapsed();
        let code = result.as_ref().err().map_or(Code::Ok, convert::code);
        metrics::rpc(method, code, elapsed);
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let (verification, credential_id) = (target.verification, target.id.as_str());
        macro_rules! rpc_event {
            ($level:ident, $message:literal $(, $extra:tt)*) => {
                tracing::$level!(
                    method,
                    caller,
                    credential_id,
                    verification,
                    code = ?code,
                    latency_us,
                    $($extra,)*
                    $message
                )
            };
        }
        match &result {
            Ok(_) => rpc_event!(info, "rpc done"),
            Err(e @ (Error::DataLoss(_) | Error::Internal(_) | Error::Unavailable(_))) => {
                let error = e.to_string();
                rpc_event!(error, "rpc failed", error)
            }
            Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                let error = e.to_string();
                rpc_event!(warn, "rpc refused", error)
            }
            Err(e) => {
                let error = e.to_string();
                rpc_event!(info, "rpc rejected", error)
            }
        }
        result.map(Response::new).map_err(convert::status)
    }
}

/// The codes of refusals that are summarized per caller past the first few: the
/// caller's request was at fault, nothing was read or changed.
pub(super) fn summarized_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::InvalidArgument
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unauthenticated
    )
}
