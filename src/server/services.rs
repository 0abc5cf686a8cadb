//! The services struct, wired once: the store, the vault over it, the audit log,
//! the callers, the refusals, the gRPC service and the gate in front of it, each
//! built from the configuration in the order they depend on each other; then the
//! background tasks that keep them, and the console beside them.

use super::*;

/// Everything the server serves from, shared by its listeners and tasks.
pub(super) struct Services<S: Store> {
    /// The store, shared with the vault.
    pub(super) store: Arc<S>,
    /// The domain over the store.
    pub(super) vault: Arc<Vault<S>>,
    /// The audit trail (file, database, or both).
    pub(super) audit: Arc<AuditLog>,
    /// The callers in force.
    pub(super) callers: Arc<CallerRegistry>,
    /// Refused calls, summarized per peer.
    pub(super) refusals: Arc<Refusals>,
    /// The gRPC service.
    pub(super) service: Arc<VaultService<S>>,
    /// Authentication in front of every service.
    pub(super) gate: Gate,
    /// Credentials stored at start.
    pub(super) count: usize,
}

impl<S: Store> Services<S> {
    /// Builds every service over `store` (whose keyring check has passed): the
    /// vault with its feedback, history and marks, the audit log, the callers;
    /// reads what the store kept from before this start (pauses, records still
    /// without a MAC) and announces this server's active key.
    pub(super) async fn wire(
        store: S,
        config: &Config,
        keyring: Arc<Keyring>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, ServeError> {
        let store = Arc::new(store);
        let seals = SealCounter::load(&*store).await?;
        let providers = Providers::new(&config.providers)?;
        let count = store.count().await?;
        // With a database, it keeps the trail of every replica; a file is a second
        // device when --audit-log names one. Without, the file is the trail.
        let table = store.audit_table();
        let audit_path = match (&config.audit_log, &table) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(config.data_dir.join("audit.jsonl")),
        };
        // The highest revision seen of each credential: the vault refuses a record
        // below it, and the audit trail records them under its signed digests.
        let marks = Arc::new(crate::trail::Marks::default());
        let audit = Arc::new(AuditLog::open(
            &AuditSettings {
                path: audit_path,
                fail_open: config.audit_fail_open,
                max_file_size: config.audit_max_file_size,
                max_files: config.audit_max_files,
                sync: config.audit_sync,
                queue: crate::audit::DEFAULT_QUEUE,
                digests: config.audit_digests,
                marks: Some(Arc::clone(&marks)),
            },
            table,
            keyring.active(),
        )?);
        let vault = Arc::new(
            Vault::new(Arc::clone(&store), keyring, seals, providers)
                .with_feedback(config.feedback.clone())
                .with_history(config.keep_versions, config.recovery_window)
                .with_marks(marks),
        );
        // Pauses of provider accounts reported before this start (they outlive a restart).
        if let Err(e) = vault.resync_pauses().await {
            tracing::warn!(error = %e, "the pauses of provider accounts could not be read at start");
        }
        authenticate_records(&vault).await;
        // This server's announcement of its active key (see `keys::announce_active`).
        keys::announce_active(&*store, vault.instance(), vault.keyring().active().id()).await?;
        let callers = Arc::new(CallerRegistry::new(
            Arc::clone(&config.callers),
            config.callers_file.clone(),
        ));
        let refusals = Arc::new(Refusals::new());
        let gate = Gate::new(
            Arc::clone(&callers),
            Arc::clone(&audit),
            Arc::clone(&refusals),
            config.transport.request_timeout,
        );
        let service = VaultService::new(
            Arc::clone(&vault),
            crate::watch::WatchContext {
                audit: Arc::clone(&audit),
                callers: Arc::clone(&callers),
                settings: config.watch.clone(),
                stopping: stop.clone(),
            },
        )
        .with_refusals(Arc::clone(&refusals));
        Ok(Services {
            store,
            vault,
            audit,
            callers,
            refusals,
            service: Arc::new(service),
            gate,
            count,
        })
    }

    /// Starts the background tasks, each ending when `stop` turns true; with a
    /// store other replicas write too, the task that hears their changes.
    pub(super) fn spawn_tasks(
        &self,
        config: &Config,
        reporter: &HealthReporter,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let vault = &self.vault;
        let mut tasks = vec![
            tokio::spawn(reverify::run(
                Arc::clone(vault),
                config.reverify.clone(),
                stop.clone(),
            )),
            tokio::spawn(reload_callers(
                Arc::clone(&self.callers),
                Hangups::new(),
                stop.clone(),
            )),
            tokio::spawn(reload_providers(
                Arc::clone(vault),
                Hangups::new(),
                stop.clone(),
            )),
            tokio::spawn(reload_keyring(
                Arc::clone(vault),
                config.keyring_source.clone(),
                Hangups::new(),
                stop.clone(),
            )),
            tokio::spawn(flush_usage(Arc::clone(vault), stop.clone())),
            tokio::spawn(purge_deleted(Arc::clone(vault), stop.clone())),
            tokio::spawn(announce_active(Arc::clone(vault), stop.clone())),
            tokio::spawn(reopen_audit(
                Arc::clone(&self.audit),
                Hangups::new(),
                stop.clone(),
            )),
            tokio::spawn(prune_audit(
                Arc::clone(&self.audit),
                config.audit_retention,
                stop.clone(),
            )),
            tokio::spawn(summarize_refusals(
                Arc::clone(&self.refusals),
                Arc::clone(&self.audit),
                config.refusal_summary_interval,
                stop.clone(),
            )),
            tokio::spawn(crate::watch::run_hub(
                Arc::clone(vault),
                config.watch.resync_interval,
                stop.clone(),
            )),
            tokio::spawn(watch_readiness(
                Arc::clone(&self.store),
                Arc::clone(&self.audit),
                vault.instance().to_owned(),
                config.liveness_stuck_after,
                config.key_roots.clone(),
                reporter.clone(),
                stop.clone(),
            )),
        ];
        if let Some(roots) = &config.key_roots {
            tasks.push(tokio::spawn(crate::keyroot::watch(
                Arc::clone(&roots.roots),
                Arc::clone(&self.store),
                roots.check_interval,
                stop.clone(),
            )));
        }
        tasks.extend(self.listen_to_replicas(stop));
        tasks
    }

    /// Other replicas' writes reach this server's watchers through the database.
    fn listen_to_replicas(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let vault = Arc::clone(&self.vault);
        self.store.listen_changes(
            Arc::new(move |change: store::StoreChange<'_>| match change {
                store::StoreChange::Record { id, name } => vault.hub().changed(id, name),
                store::StoreChange::Pause { account, until_ms } => {
                    vault.heard_pause(account, until_ms);
                }
                store::StoreChange::Resync => {
                    vault.hub().resync();
                    let vault = Arc::clone(&vault);
                    tokio::spawn(async move {
                        if let Err(e) = vault.resync_pauses().await {
                            tracing::warn!(error = %e, "the pauses of provider accounts could not be read");
                        }
                    });
                }
            }),
            stop.clone(),
        )
    }

    /// Starts the web console on its own listener when one is configured: its
    /// address and task.
    pub(super) fn start_console(
        &self,
        config: &Config,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, ServeError> {
        let Some(settings) = &config.console else {
            return Ok(None);
        };
        let listener =
            transport::bind(settings.listen, config.transport.listen_backlog).map_err(|e| {
                ServeError::Transport(format!("cannot listen on {}: {e}", settings.listen))
            })?;
        let bound = listener
            .local_addr()
            .map_err(|e| ServeError::Transport(e.to_string()))?;
        let tls = config
            .tls
            .as_ref()
            .map(|t| transport::tls_acceptor_for(t, b"http/1.1"))
            .transpose()?;
        let catalog: crate::console::CatalogSource = {
            let vault = Arc::clone(&self.vault);
            Arc::new(move || vault.providers().current())
        };
        let console = Arc::new(crate::console::Console::new(
            Arc::clone(&self.service),
            Arc::clone(&self.callers),
            catalog,
            Arc::clone(&self.audit),
            Arc::clone(&self.refusals),
            settings,
            config.transport.request_timeout,
            tls.is_some(),
        ));
        let task = tokio::spawn(console.serve(
            listener,
            tls,
            config.transport.handshake_timeout,
            stop.clone(),
        ));
        Ok(Some((bound, task)))
    }
}

/// Records written before records carried MACs are authenticated once; from then
/// on a record without one is refused as changed behind the vault's back. Until a
/// pass succeeds, such records keep being served, and a pass is retried every 10 s.
async fn authenticate_records<S: Store>(vault: &Arc<Vault<S>>) {
    let Err(e) = vault.authenticate_all().await else {
        return;
    };
    tracing::warn!(error = %e, "records written before MACs could not all be authenticated at start; retried every 10 s");
    let vault = Arc::clone(vault);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            match vault.authenticate_all().await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "records could not be authenticated yet; retried in 10 s")
                }
            }
        }
    });
}
